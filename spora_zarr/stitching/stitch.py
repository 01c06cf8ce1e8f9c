"""Stitch a folder of tiles into a cohort store: ``<modality>/images/<tissue_id>`` and, with labels, ``segmentations/<kind>/<tissue_id>``.

Everything is checked before the store is touched (the offsets table, every
tile's header, label tiles); then the mosaic source streams through the one
writer, which gives the pyramid, ``omero``, staging and resume. With
``register`` the refined offsets are written to
``<modality>/stitching/<tissue_id>/offsets.parquet`` (with the measured pairs in
``pairs.parquet``). A tileset of more than one plane (an offsets table with a
``z`` column, stacked tiles) is written as a z stack: axes ``c, z, y, x``, levels
downsampled in y and x only, streamed plane by plane.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..access.resolution import parse_resolution
from ..errors import InvalidInputError
from ..store.layout import (
    MASK_KINDS,
    image_group_path,
    label_group_path,
    modality_dir,
    validate_modality,
    validate_tissue_id,
)
from ..store.location import Location
from ..store.lock import writes_store
from ..write.options import WriteOptions
from ..write.writer import WriteResult
from .labels import LabelMosaicSource, find_overlapping_blobs, number_objects
from .mosaic import BLENDS, MosaicSource
from .tiles import Tileset

__all__ = ["StitchOptions", "StitchResult", "get_centroids", "stitch", "stitching_dir"]

log = logging.getLogger("spora_zarr")


@dataclass
class StitchResult:
    """What :func:`stitch` wrote: the image (and label) group results, the offsets used, the object counts.

    ``objects`` is the number of objects in the stitched label image (ids ``1..objects``); ``hidden`` the
    objects of the label tiles left out because later tiles cover them wholly (the last tile wins).
    """

    image: WriteResult
    labels: WriteResult | None = None
    offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    objects: int | None = None
    pairs_kept: int | None = None
    hidden: int | None = None


def stitching_dir(modality: str, tissue_id: str) -> str:
    """Where a stitched tissue's refined offsets go: ``<modality>/stitching/<tissue_id>``."""
    return f"{modality_dir(modality)}/stitching/{validate_tissue_id(tissue_id)}"


@dataclass(frozen=True, kw_only=True)
class StitchOptions:
    """What :func:`stitch` makes of a tile folder: where the image goes, its pixel size, and how tiles are put together.

    Attributes
    ----------
    modality, tissue_id, mpp
        Where the image goes and its pixel size (microns per output pixel).
    z_mpp
        Microns between planes of a stack (default ``mpp``); the z offsets are in planes.
    blend
        ``none`` (last tile in table order wins), ``max`` or ``linear``.
    labels
        A mask kind (``cell_masks``, ``tissue_masks``): stitch the table's ``labels`` column too.
    register
        Refine the offsets by phase correlation and least squares first.
    offset_unit
        Unit of the table's ``x``, ``y``: ``pixel`` or ``micrometer``.
    channel_names
        Names of the image's channels (default ``channel_<i>``).
    min_iou, min_correlation
        Label objects overlapping by at least this IoU are one object; registration keeps pairs at least this correlated.
    allow_outside
        Let the table name files outside ``tiles_dir`` (absolute, ``..``, links out); refused otherwise.
    allow_sparse
        Stitch a mosaic over ``SPARSE_LIMIT`` (16) times the tiles' total area (mostly empty); refused otherwise, as a wrong unit.
    """

    modality: str
    tissue_id: str
    mpp: float
    z_mpp: float | None = None
    blend: str = "none"
    labels: str | None = None
    register: bool = False
    offset_unit: str = "pixel"
    channel_names: tuple[str, ...] | None = None
    min_iou: float = 0.5
    min_correlation: float = 0.5
    allow_outside: bool = False
    allow_sparse: bool = False

    def __post_init__(self) -> None:
        if self.channel_names is not None:
            object.__setattr__(self, "channel_names", tuple(self.channel_names))


@writes_store("stitch", "dest")
def stitch(
    tiles_dir: str | os.PathLike[str],
    offsets: str | os.PathLike[str],
    dest: str | Location,
    options: StitchOptions,
    *,
    write: WriteOptions | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int], None] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> StitchResult:
    """Stitch the tiles of ``tiles_dir`` placed by ``offsets`` into the cohort store ``dest`` (created if missing).

    Parameters
    ----------
    tiles_dir, offsets
        The tile folder and the offsets table (CSV or parquet, ``file, x, y[, z][, labels]``).
    dest
        The cohort store.
    options
        Where the image goes and how the tiles are put together (:class:`StitchOptions`).
    write, overwrite
        As for :func:`~spora_zarr.write.writer.write_image`.
    progress
        Called with ``("image" | "labels", bytes read)`` as the writer advances.
    storage_options
        fsspec options of ``dest``.
    """
    from ..store.metadata import staged_root_document
    from ..store.staging import Staging
    from ..store.tables import modality_panel, table_bytes, tissue_table_updates
    from ..write.writer import write_image, write_labels

    o = options
    modality, tissue_id, mpp, z_mpp, labels = o.modality, o.tissue_id, o.mpp, o.z_mpp, o.labels
    validate_tissue_id(tissue_id, source=os.fspath(offsets))
    validate_modality(modality, source=os.fspath(offsets))
    if not (isinstance(mpp, (int, float)) and 0 < mpp < float("inf")):
        raise InvalidInputError(f"{os.fspath(offsets)}: mpp={mpp!r} is not a positive number of microns per pixel")
    if z_mpp is not None and not (isinstance(z_mpp, (int, float)) and 0 < z_mpp < float("inf")):
        raise InvalidInputError(f"{os.fspath(offsets)}: z_mpp={z_mpp!r} is not a positive number of microns between planes")
    if o.blend not in BLENDS:
        raise InvalidInputError(f"blend={o.blend!r} is not one of {', '.join(BLENDS)}")
    if labels is not None and labels not in MASK_KINDS:
        raise InvalidInputError(f"unknown mask kind {labels!r}; expected one of {', '.join(MASK_KINDS)}")
    with Tileset.from_offsets_table(
        tiles_dir, offsets, offset_unit=o.offset_unit, mpp=mpp, allow_outside=o.allow_outside, allow_sparse=o.allow_sparse
    ) as tileset:
        tileset.voxel_size[2] = z_mpp or mpp
        if labels is not None and tileset.tiles[0].labels is None:
            raise InvalidInputError(f"{os.fspath(offsets)}: labels={labels!r} needs a 'labels' column naming each tile's label image")
        names = list(o.channel_names) if o.channel_names else [f"channel_{i}" for i in range(tileset.channels)]
        if len(names) != tileset.channels:
            raise InvalidInputError(f"{os.fspath(offsets)}: the tiles have {tileset.channels} channels but {len(names)} names were given")
        dst = Location.parse(dest, storage_options)
        pairs = None
        if o.register:
            from .register import register_tileset

            _, pairs = register_tileset(tileset, min_correlation=o.min_correlation)
        tables, hidden = None, 0
        if labels is not None:
            tables, hidden = number_objects(tileset, find_overlapping_blobs(tileset, min_iou=o.min_iou))
        staging = Staging(dst)
        staging.recover()
        target = image_group_path(modality, tissue_id)
        updates = tissue_table_updates(dst, os.fspath(offsets), modality, tissue_id, names, multiplex=True)
        files = {rel: table_bytes(table) for rel, table in updates.items()}  # promoted with the image, in one step
        files.update(staged_root_document(dst, modalities={modality: [parse_resolution(mpp).name]}))
        source = MosaicSource(tileset, blend=o.blend, mpp=mpp, channel_names=names, name=os.fspath(tiles_dir))
        spora = {"tissue_id": tissue_id, "modality": modality}
        image = write_image(
            dst,
            target,
            {float(mpp): source},
            channel_names=names,
            panel=modality_panel(dst, modality),
            spora=spora,
            options=write,
            overwrite=overwrite,
            progress=(lambda n: progress("image", n)) if progress else None,
            z_mpp=z_mpp,
            files=files,
        )
        if pairs is not None:
            _write_offsets(dst, stitching_dir(modality, tissue_id), tileset, pairs, o.min_correlation)
        kept = None if pairs is None else sum(p.correlation >= o.min_correlation for p in pairs)
        result = StitchResult(image, offsets=tileset.offsets, pairs_kept=kept)
        if labels is not None and tables is not None:
            mask_path = label_group_path(labels, tissue_id)
            label_source = LabelMosaicSource(tileset, tables, name=os.fspath(tiles_dir))
            result.labels = write_labels(
                dst,
                mask_path,
                {float(mpp): label_source},
                source_image=f"../../../{target}",
                spora={"tissue_id": tissue_id, "mask_kind": labels},
                options=write,
                overwrite=overwrite,
                progress=(lambda n: progress("labels", n)) if progress else None,
                z_mpp=z_mpp,
                files=staged_root_document(dst, mask_kinds=[labels]),
            )
            result.objects, result.hidden = max((int(t.max()) for t in tables), default=0), hidden
            if hidden:
                log.info(
                    "%s: %d label object(s) lie wholly under later tiles (the last tile wins) and are left out; %d numbered",
                    os.fspath(offsets),
                    hidden,
                    result.objects,
                )
    return result


def _write_offsets(location: Location, where: str, tileset: Tileset, pairs: Sequence[Any], min_correlation: float) -> None:
    import pyarrow as pa

    from ..store.tables import write_table

    offsets = tileset.offsets
    write_table(
        location,
        f"{where}/offsets.parquet",
        pa.table(
            {
                "file": [os.path.basename(t.path) for t in tileset.tiles],
                "x": offsets[:, 0],
                "y": offsets[:, 1],
                "z": offsets[:, 2],
            }
        ),
    )
    write_table(
        location,
        f"{where}/pairs.parquet",
        pa.table(
            {
                "i": [p.i for p in pairs],
                "j": [p.j for p in pairs],
                "dx": [float(p.relative[0]) for p in pairs],
                "dy": [float(p.relative[1]) for p in pairs],
                "dz": [float(p.relative[2]) for p in pairs],
                "correlation": [p.correlation for p in pairs],
                "kept": [p.correlation >= min_correlation for p in pairs],
            }
        ),
    )


def get_centroids(store: str | Location, kind: str, tissue_id: str, *, band: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Ids and ``(x, y)`` centroids (``(x, y, z)`` for a stack; level-0 pixels) of a stored label image's objects, read band by band.

    Memory holds one band (of every plane) and per-id sums (proportional to the number of objects, never the image).
    """
    from ..read.levels import open_level
    from ..store.staging import Staging

    location = Location.parse(store)
    path = label_group_path(kind, tissue_id)
    attributes = Staging(location).read_attributes(path)
    if attributes is None:
        from ..errors import NotFoundError

        raise NotFoundError(f"{location}: no labels {path}")
    first = attributes["ome"]["multiscales"][0]["datasets"][0]["path"]
    reader = open_level(location, f"{path}/{first}")
    height, width = reader.shape[-2:]
    axes = 3 if len(reader.shape) == 3 else 2  # (z, y, x) labels of a stack, or (y, x)
    sums = np.zeros((0, 1 + axes))
    for y in range(0, height, band):
        window = np.asarray(reader.read(y, 0, min(band, height - y), width))
        ids = window.ravel().astype(np.int64)
        top = int(np.max(ids, initial=0))
        if top == 0:
            continue
        if top >= len(sums):
            sums = np.vstack([sums, np.zeros((top + 1 - len(sums), 1 + axes))])
        position = np.unravel_index(np.arange(ids.size), window.shape)
        sums[:, 0] += np.bincount(ids, minlength=len(sums))
        for column, (coords, start) in enumerate(zip(position[::-1], (0, y, 0)), start=1):  # x, y[, z]
            sums[:, column] += np.bincount(ids, weights=coords + start, minlength=len(sums))
    present = np.flatnonzero(sums[:, 0])
    present = present[present > 0]
    return present, sums[present, 1:] / sums[present, :1]
