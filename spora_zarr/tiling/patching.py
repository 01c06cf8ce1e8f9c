"""Patch and tile specifications (careamics' ``PatchSpecs`` family) and their generators.

- :class:`PatchSpecs` names one patch: which image (``data_idx``), which
  sample in it (``sample_idx``), its top-left ``coords`` and ``patch_size``
  (2 values for 2D, 3 for 3D, z first).
- :class:`TileSpecs` adds where the tile is cropped (``crop_coords``,
  ``crop_size``, relative to the tile) and where the crop goes back into the
  image (``stitch_coords``), plus ``total_tiles``.
- :class:`UncorrelatedPatchSpecs` gives each channel its own location.

:func:`tile_specs` covers a whole image: tiles step by ``tile_size -
overlap``, the last tile of each axis is anchored at the image end, inner
edges are cropped by half the overlap between neighbours, and the crops
partition the image exactly. An image smaller than a tile gets one tile of
``tile_size`` (read zero-padded past the image) whose crop is the image.

:func:`random_patch_specs` and :func:`sequential_patch_specs` draw patches
over the tissues of a :class:`~spora_zarr.access.TissueSource` (a spora
dataset, :mod:`spora_zarr.datasets`), optionally from its tile table or where
its tissue mask holds tissue.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, TypeGuard

import numpy as np

from ..access.window import Window
from ..errors import InvalidInputError
from .tilers import MAX_TILE_EDGE

if TYPE_CHECKING:
    import pandas as pd

    from ..access.tissue import TissueSource

__all__ = [
    "PatchSpecs",
    "TileSpecs",
    "UncorrelatedPatchSpecs",
    "AxisTiles",
    "axis_tiles",
    "check_tiling",
    "is_tile_specs",
    "is_uncorrelated_specs",
    "random_patch_specs",
    "sequential_patch_specs",
    "tile_specs",
]


class PatchSpecs(TypedDict):
    """One patch of a series of images.

    Attributes
    ----------
    data_idx
        Which image (tissue) of the series the patch belongs to.
    sample_idx
        Which sample of that image (0 for a spora tissue).
    coords
        Top-left corner (first z-slice first in 3D), 2 or 3 values.
    patch_size
        Size of the patch, 2 or 3 values.
    """

    data_idx: int
    sample_idx: int
    coords: Sequence[int]
    patch_size: Sequence[int]


class TileSpecs(PatchSpecs):
    """A patch that is one tile of a tiling of the whole image.

    Attributes
    ----------
    crop_coords
        Top-left corner of the kept crop, relative to the tile.
    crop_size
        Size of the kept crop.
    stitch_coords
        Where the crop goes in the image (image coordinates).
    total_tiles
        Number of tiles of the same image.
    """

    crop_coords: Sequence[int]
    crop_size: Sequence[int]
    stitch_coords: Sequence[int]
    total_tiles: int


class UncorrelatedPatchSpecs(PatchSpecs):
    """A patch whose channels come from different locations (MicroSplit training).

    Attributes
    ----------
    principal_channel
        The channel the main ``coords`` describe.
    all_data_idx
        The image of each channel patch.
    all_sample_idx
        The sample of each channel patch.
    all_coords
        The top-left corner of each channel patch.
    """

    principal_channel: int
    all_data_idx: Sequence[int]
    all_sample_idx: Sequence[int]
    all_coords: Sequence[Sequence[int]]


def is_tile_specs(specs: PatchSpecs) -> TypeGuard[TileSpecs]:
    """Whether ``specs`` is a :class:`TileSpecs` (has its crop and stitch fields)."""
    return all(key in specs for key in ("crop_coords", "crop_size", "stitch_coords", "total_tiles"))


def is_uncorrelated_specs(specs: PatchSpecs) -> TypeGuard[UncorrelatedPatchSpecs]:
    """Whether ``specs`` holds the uncorrelated per-channel metadata."""
    return all(key in specs for key in ("principal_channel", "all_data_idx", "all_sample_idx", "all_coords"))


# -- tiling a whole image ------------------------------------------------------------
@dataclass(frozen=True)
class AxisTiles:
    """The tiles of one axis: starts, and the crop ``[crop_start, crop_stop)`` each keeps (image coordinates)."""

    length: int
    tile_size: int
    starts: tuple[int, ...]
    crop_starts: tuple[int, ...]
    crop_stops: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.starts)

    def covering(self, lo: int, hi: int) -> range:
        """Indices of the tiles whose crop meets ``[lo, hi)``."""
        first = int(np.searchsorted(self.crop_stops, lo, side="right"))
        last = int(np.searchsorted(self.crop_starts, hi, side="left"))
        return range(first, last)

    def touching(self, lo: int, hi: int) -> range:
        """Indices of the tiles whose whole window meets ``[lo, hi)``."""
        starts = np.asarray(self.starts)
        first = int(np.searchsorted(starts + self.tile_size, lo, side="right"))
        last = int(np.searchsorted(starts, hi, side="left"))
        return range(first, last)


def check_tiling(tile_size: int, overlap: int, where: str = "") -> tuple[int, int]:
    """``(tile_size, overlap)`` as ints: a tile size >= 1 and an overlap in ``[0, tile_size)``, else an ``InvalidInputError``."""
    prefix = f"{where}: " if where else ""
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or not 1 <= tile_size <= MAX_TILE_EDGE:
        raise InvalidInputError(f"{prefix}tile size must be a whole number in [1, {MAX_TILE_EDGE:,}] px, got {tile_size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < tile_size:
        raise InvalidInputError(f"{prefix}overlap must be a whole number in [0, tile size {tile_size}), got {overlap!r}")
    return int(tile_size), int(overlap)


def axis_tiles(length: int, tile_size: int, overlap: int) -> AxisTiles:
    """Tile one axis of ``length`` pixels.

    Tiles start every ``tile_size - overlap`` pixels; the last starts at
    ``length - tile_size`` (so it may overlap its neighbour by more). Each
    pair of neighbours splits its overlap in the middle: the left one keeps
    ``floor(overlap / 2)`` of it. An axis shorter than a tile has one tile at
    0 whose crop is the whole axis.
    """
    tile_size, overlap = check_tiling(tile_size, overlap)
    if length < 1:
        raise InvalidInputError(f"cannot tile an axis of length {length}")
    if length <= tile_size:
        return AxisTiles(length, tile_size, (0,), (0,), (length,))
    step = tile_size - overlap
    count = math.ceil((length - tile_size) / step) + 1
    starts = [i * step for i in range(count - 1)] + [length - tile_size]
    cuts = [starts[i + 1] + (starts[i] + tile_size - starts[i + 1]) // 2 for i in range(count - 1)]
    return AxisTiles(length, tile_size, tuple(starts), (0, *cuts), (*cuts, length))


def tile_specs(
    shape: Sequence[int], tile_size: int | Sequence[int], overlap: int | Sequence[int], *, data_idx: int = 0, sample_idx: int = 0
) -> list[TileSpecs]:
    """The :class:`TileSpecs` covering an image of spatial ``shape`` ((Y, X) or (Z, Y, X)), row-major.

    Parameters
    ----------
    shape
        Spatial shape, 2 or 3 values.
    tile_size, overlap
        One value for every axis, or one per axis; ``0 <= overlap < tile_size``.
    data_idx, sample_idx
        Copied into every spec.

    Returns
    -------
    list of TileSpecs
        Their crops (``stitch_coords`` + ``crop_size``) partition the image.
    """
    dims = len(shape)
    if dims not in (2, 3):
        raise InvalidInputError(f"tile specs need a 2D or 3D spatial shape, got {tuple(shape)}")
    sizes = _per_axis(tile_size, dims, "tile size")
    overlaps = _per_axis(overlap, dims, "overlap")
    axes = [axis_tiles(int(n), s, o) for n, s, o in zip(shape, sizes, overlaps)]
    sizes = [a.tile_size for a in axes]
    total = math.prod(len(a) for a in axes)
    specs: list[TileSpecs] = []
    for index in np.ndindex(*(len(a) for a in axes)):
        starts = [a.starts[i] for a, i in zip(axes, index)]
        crop_lo = [a.crop_starts[i] for a, i in zip(axes, index)]
        crop_hi = [a.crop_stops[i] for a, i in zip(axes, index)]
        specs.append(
            TileSpecs(
                data_idx=data_idx,
                sample_idx=sample_idx,
                coords=tuple(starts),
                patch_size=tuple(sizes),
                crop_coords=tuple(lo - s for lo, s in zip(crop_lo, starts)),
                crop_size=tuple(hi - lo for lo, hi in zip(crop_lo, crop_hi)),
                stitch_coords=tuple(crop_lo),
                total_tiles=total,
            )
        )
    return specs


def _per_axis(value: int | Sequence[int], dims: int, what: str) -> list[int]:
    values: list[int] = list(value) if isinstance(value, (list, tuple)) else [value] * dims  # type: ignore[list-item]
    if len(values) != dims:
        raise InvalidInputError(f"{what} needs 1 or {dims} values, got {value!r}")
    return values  # each is checked by axis_tiles


# -- patches over the tissues of a dataset -----------------------------------------------
def _dataset_shapes(dataset: TissueSource, tissues: Sequence[str] | None) -> list[tuple[int, str, tuple[int, int]]]:
    ids = list(dataset.tissue_ids)
    wanted = ids if tissues is None else list(tissues)
    out = []
    for tissue_id in wanted:
        if tissue_id not in ids:
            raise InvalidInputError(f"{dataset.name}: unknown tissue {tissue_id!r}")
        height, width = (int(n) for n in dataset.image_shape(tissue_id)[-2:])
        out.append((ids.index(tissue_id), tissue_id, (height, width)))
    return out


def _has_tissue(dataset: TissueSource, tissue_id: str, y: int, x: int, size: int, min_tissue: float | None) -> bool:
    if min_tissue is None:
        return True
    mask = dataset.read_mask(tissue_id, Window.from_corner(y, x, size, size), "tissue_masks", pad=True)
    return float((mask != 0).mean()) >= min_tissue


def _tile_table(dataset: TissueSource) -> pd.DataFrame:
    """The tile table of ``dataset`` (the spora datasets have one; a bare ``TissueReader`` has none)."""
    table = getattr(dataset, "tile_coordinates", None)
    if table is None:
        raise InvalidInputError(f"{dataset.name}: from_tile_table needs a dataset with a tile table, got a {type(dataset).__name__}")
    return table


def sequential_patch_specs(
    dataset: TissueSource,
    patch_size: int,
    *,
    stride: int | None = None,
    tissues: Sequence[str] | None = None,
    from_tile_table: bool = False,
    min_tissue: float | None = None,
) -> Iterator[PatchSpecs]:
    """Patches in order over the tissues of ``dataset``: a grid of ``stride`` (default ``patch_size``) inside each image.

    ``from_tile_table`` takes the rows of the dataset's tile table instead of a
    grid; ``min_tissue`` keeps only patches whose tissue-mask fraction is at
    least that (the mask is read patch by patch through the fast path).
    ``data_idx`` is the tissue's index in ``dataset.tissue_ids``.
    """
    step = int(stride or patch_size)
    if patch_size < 1 or step < 1:
        raise InvalidInputError(f"patch size and stride must be >= 1, got {patch_size} and {step}")
    for data_idx, tissue_id, (height, width) in _dataset_shapes(dataset, tissues):
        if from_tile_table:
            table = _tile_table(dataset)
            rows = table[table.tissue_id == tissue_id]
            positions: Iterator[tuple[int, int]] = iter(zip(rows.row.astype(int), rows.col.astype(int)))
        else:
            ys, xs = range(0, max(1, height - patch_size + 1), step), range(0, max(1, width - patch_size + 1), step)
            positions = ((y, x) for y in ys for x in xs)
        for y, x in positions:
            if _has_tissue(dataset, tissue_id, int(y), int(x), patch_size, min_tissue):
                yield PatchSpecs(data_idx=data_idx, sample_idx=0, coords=(int(y), int(x)), patch_size=(patch_size, patch_size))


def random_patch_specs(
    dataset: TissueSource,
    patch_size: int,
    count: int,
    *,
    seed: int | None = None,
    tissues: Sequence[str] | None = None,
    from_tile_table: bool = False,
    min_tissue: float | None = None,
    max_tries: int = 100,
) -> list[PatchSpecs]:
    """``count`` random patches over the tissues of ``dataset`` (tissues drawn by area).

    ``from_tile_table`` draws rows of the dataset's tile table; ``min_tissue``
    redraws (up to ``max_tries`` times per patch) until the patch's
    tissue-mask fraction reaches it. Seeded by ``seed``.
    """
    if patch_size < 1 or count < 0:
        raise InvalidInputError(f"patch size must be >= 1 and count >= 0, got {patch_size} and {count}")
    rng = np.random.default_rng(seed)
    shapes = _dataset_shapes(dataset, tissues)
    if not shapes:
        return []
    specs: list[PatchSpecs] = []
    if from_tile_table:
        table = _tile_table(dataset)
        table = table[table.tissue_id.isin([t for _, t, _ in shapes])]
        if len(table) == 0:
            raise InvalidInputError(f"{dataset.name}: the tile table has no tiles of these tissues")
        index = {t: i for i, t, _ in shapes}
    areas = np.array([h * w for _, _, (h, w) in shapes], dtype=float)
    for _ in range(count):
        for _attempt in range(max_tries):
            if from_tile_table:
                row = table.iloc[int(rng.integers(len(table)))]
                data_idx, tissue_id, y, x = index[row.tissue_id], str(row.tissue_id), int(row.row), int(row.col)
            else:
                data_idx, tissue_id, (height, width) = shapes[int(rng.choice(len(shapes), p=areas / areas.sum()))]
                y = int(rng.integers(0, max(1, height - patch_size + 1)))
                x = int(rng.integers(0, max(1, width - patch_size + 1)))
            if _has_tissue(dataset, tissue_id, y, x, patch_size, min_tissue):
                specs.append(PatchSpecs(data_idx=data_idx, sample_idx=0, coords=(y, x), patch_size=(patch_size, patch_size)))
                break
        else:
            raise InvalidInputError(f"no patch with tissue fraction >= {min_tissue} found in {max_tries} draws")
    return specs
