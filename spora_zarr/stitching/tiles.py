"""``Tile`` and ``Tileset``: fields of view with their offsets, read window by window.

Offsets are kept as the seed's stitcher keeps them: ``(x, y, z)`` in output
pixels (``voxel_size`` microns per output pixel along x, y, z). A tile's pixels
are never held by the tileset: each read opens (or reuses, among a bounded
number kept open) the tile's file and reads only the window asked for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError, NotFoundError, reason
from ..store.guard import resolve_inside
from .readers import ArrayReader, OpenReaders, PlaneReader, StackReader, TileReader, tiff_geometry

__all__ = ["Tile", "Tileset", "read_offsets_table"]


@dataclass
class Tile:
    """One field of view: its file, offset ``(x, y, z)`` in output pixels and geometry.

    Attributes
    ----------
    fovnum
        Position of the tile in its tileset (the table order, which is the blending order).
    path
        The tile's file.
    offset
        Top-left(-front) corner ``(x, y, z)`` in output pixels.
    channels, size, dtype
        Channel count, ``(depth, height, width)`` in pixels, and pixel type.
    labels
        The file of the tile's label image (per-tile object ids), when there is one.
    loader, reader
        A decoder of the whole tile ``(C, Z, H, W)`` (JPEG 2000, downscaled tiles), or a factory of a
        window reader (BDV H5, nd2); TIFF tiles have neither.
    """

    fovnum: int
    path: str
    offset: np.ndarray
    channels: int
    size: tuple[int, int, int]
    dtype: np.dtype
    labels: str | None = None
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    reader: Callable[[], TileReader] | None = field(default=None, repr=False)

    @property
    def origin(self) -> tuple[int, int, int]:
        """The offset rounded to whole output pixels, as ``(z, y, x)``."""
        x, y, z = (int(round(float(v))) for v in self.offset)
        return z, y, x

    @property
    def box(self) -> tuple[int, int, int, int, int, int]:
        """``(z0, y0, x0, z1, y1, x1)`` of the tile in output pixels."""
        z, y, x = self.origin
        depth, height, width = self.size
        return z, y, x, z + depth, y + height, x + width

    def open(self, ndim: int) -> TileReader:
        """A reader of the tile's pixels (the caller closes it)."""
        if self.loader is not None:
            return ArrayReader(self.loader)
        if self.reader is not None:
            return self.reader()
        return StackReader(self.path) if ndim == 3 else PlaneReader(self.path)

    def find_intensity_scale(self, ndim: int = 2, samples: int = 512) -> tuple[float, float]:
        """The 1st and 99th percentiles of the tile's intensities (on a strided sample of about ``samples``² pixels)."""
        reader = self.open(ndim)
        try:
            depth, height, width = self.size
            step = max(1, math.ceil(max(height, width) / samples))
            values = reader.read(0, depth, 0, height, 0, width)[..., ::step, ::step]
        finally:
            reader.close()
        low, high = np.percentile(values, [1, 99])
        return float(low), float(high)


class Tileset:
    """A set of tiles and their offsets, with the seed stitcher's methods.

    Parameters
    ----------
    voxel_size
        Microns per output pixel along ``(x, y, z)``.
    orig_size
        The tiles' original ``(x, y, z)`` size before any downscaling, when known.
    ndim
        2 for planes, 3 for stacks.
    max_open
        Tiles kept open at once by readers of this tileset.
    """

    def __init__(
        self, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), orig_size: Sequence[int] | None = None, *, ndim: int = 2, max_open: int = 16
    ) -> None:
        if ndim not in (2, 3):
            raise InvalidInputError(f"a tileset is 2-D or 3-D, got ndim={ndim}")
        self.tiles: list[Tile] = []
        self.voxel_size = np.asarray(voxel_size, dtype=float)
        self.original_xyz_size = None if orig_size is None else np.asarray(orig_size)
        self.ndim = ndim
        self.intensity: tuple[float, float] | None = None
        self.readers = OpenReaders(max_open)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_offsets_table(
        cls,
        tiles_dir: str | os.PathLike[str],
        table: str | os.PathLike[str],
        *,
        offset_unit: str = "pixel",
        mpp: float | None = None,
        allow_outside: bool = False,
        allow_sparse: bool = False,
    ) -> Tileset:
        """Tiles of ``tiles_dir`` placed by an offsets table (CSV or parquet: ``file, x, y[, z][, labels]``).

        ``offset_unit="micrometer"`` converts the offsets with ``mpp``. Every
        tile's header is read and checked (present, same dtype and channel
        count) before the tileset is returned. The table's files must lie
        inside ``tiles_dir`` unless ``allow_outside`` (see :func:`read_offsets_table`);
        the tiles must cover at least ``1 / SPARSE_LIMIT`` of the mosaic their
        offsets span unless ``allow_sparse`` (see :meth:`check_coverage`).
        """
        rows, has_z = read_offsets_table(table, tiles_dir, offset_unit=offset_unit, mpp=mpp, allow_outside=allow_outside)
        tileset = cls((mpp or 1.0, mpp or 1.0, 1.0), ndim=3 if has_z else 2)
        tileset.init_from_tiff_files([path for path, _, _ in rows])
        tileset.set_offsets(np.array([offset for _, offset, _ in rows], dtype=float))
        if not allow_sparse:
            tileset.check_coverage(os.fspath(table))
        for tile, (_, _, labels) in zip(tileset.tiles, rows):
            tile.labels = labels
        tileset.check_labels()
        return tileset

    def init_from_tiff_files(
        self, filelist: Iterable[str | os.PathLike[str]], downscale: Sequence[int] = (1, 1, 1), progress: bool = False
    ) -> None:
        """Tiles from TIFF files (offsets zero until set); ``downscale`` ``(z, y, x)`` factors decode each tile whole when read."""
        factors = _factors(downscale)
        for path in (os.fspath(f) for f in filelist):
            channels, size, dtype = tiff_geometry(path, self.ndim)
            loader = None
            if factors != (1, 1, 1):
                loader = _downscaled_loader(lambda p=path: _read_tiff(p, self.ndim), factors, dtype)  # type: ignore[misc]
                size = _shrunk(size, factors)
            self._append(path, channels, size, dtype, loader)
        self.check_tiles()

    def init_from_jp2(
        self, files_list: Sequence[str | os.PathLike[str]], offsets_file: str | os.PathLike[str], downscale: Sequence[int] = (1, 1, 1)
    ) -> None:
        """Tiles from JPEG 2000 files and a ``.npy`` offsets file (first row: the original tile size, then one ``(x, y, z)`` row per tile).

        Decoded through ``imagecodecs``; each tile is decoded whole when read.
        """
        try:
            import imagecodecs
        except ImportError:
            raise InvalidInputError("JPEG 2000 tiles need imagecodecs: pip install imagecodecs") from None
        if not getattr(imagecodecs.JPEG2K, "available", False):
            raise InvalidInputError("this imagecodecs build does not decode JPEG 2000")
        if not os.path.isfile(offsets_file):
            raise NotFoundError(f"{os.fspath(offsets_file)}: offsets file not found")
        offsets = np.load(offsets_file)
        if offsets.ndim != 2 or offsets.shape[0] != len(files_list) + 1:
            raise InvalidInputError(
                f"{os.fspath(offsets_file)}: expected 1 + {len(files_list)} rows (size, then offsets), got {offsets.shape}"
            )
        self.original_xyz_size = offsets[0]
        factors = _factors(downscale)
        for path in (os.fspath(f) for f in files_list):
            if not os.path.isfile(path):
                raise NotFoundError(f"{path}: tile file not found")
            with open(path, "rb") as handle:
                head = imagecodecs.jpeg2k_decode(handle.read())
            array = _as_czyx(head)
            loader = _downscaled_loader(lambda p=path: _as_czyx(imagecodecs.jpeg2k_decode(_read_bytes(p))), factors, array.dtype)  # type: ignore[misc]
            self._append(path, array.shape[0], _shrunk(array.shape[1:], factors), array.dtype, loader)
        self.check_tiles()
        scale = np.array([factors[2], factors[1], factors[0]], dtype=float)
        self.set_offsets(_xyz(offsets[1:]) / scale)

    def init_from_bdv(self, filename: str | os.PathLike[str], tiles: Sequence[str | os.PathLike[str]] | None = None) -> None:
        """Tiles and offsets from a BigDataViewer dataset (the ``.xml``, or the ``.h5`` next to it).

        The offsets are the view registrations' translations. Pixels are read
        from the BDV H5 the XML names (needs ``h5py``), window by window, one
        tile per view setup (setups sharing a ``tile`` attribute are its
        channels); or from ``tiles``, one TIFF file per view.
        """
        from .bdv import bdv_tiles, get_offsets, require_h5py

        self.tiles = []
        if tiles is not None:
            offsets = get_offsets(filename)
            if len(tiles) != len(offsets):
                raise InvalidInputError(f"{os.fspath(filename)}: {len(offsets)} views but {len(tiles)} tiles")
            self.init_from_tiff_files(tiles)
            self.set_offsets(offsets)
            return
        views = bdv_tiles(filename)
        require_h5py(os.fspath(filename))
        self._append_h5(views)
        self.set_offsets(np.array([view.offset for view in views]))

    def init_from_h5(self, filename: str | os.PathLike[str], downscale: Sequence[int] = (1, 1, 1), progress: bool = False) -> None:
        """Tiles from a BigDataViewer-layout H5 without its XML (``t00000/s{setup:02d}/0/cells``), offsets zero until set.

        Set them with :meth:`update_offsets` or :meth:`set_offsets`; ``downscale``
        ``(z, y, x)`` factors decode each tile whole when read.
        """
        from .bdv import bdv_h5_tiles, require_h5py

        require_h5py(os.fspath(filename))
        self.tiles = []
        self._append_h5(bdv_h5_tiles(filename), _factors(downscale))

    def init_from_nd2(self, nd2: str | os.PathLike[str]) -> None:
        """Tiles from an nd2 file: one per XY position (first timepoint), offsets from the stage positions, pixels read per frame.

        Needs the ``nd2`` package. ``voxel_size`` becomes the file's; a file
        with z planes needs ``ndim=3``.
        """
        from .nikon import nd2_tiles
        from .readers import Nd2Reader

        path = os.fspath(nd2)
        found = nd2_tiles(path, self.ndim)
        self.tiles = []
        self.voxel_size = np.asarray(found.voxel_size, dtype=float)
        for frames in found.frames:
            self._append(path, found.channels, found.size, found.dtype, None, reader=lambda f=frames: Nd2Reader(path, f))  # type: ignore[misc]
        self.check_tiles()
        self.set_offsets(found.offsets)

    def _append_h5(self, views: Sequence[Any], factors: tuple[int, int, int] = (1, 1, 1)) -> None:
        """One tile per BDV view (``h5``, ``datasets``), its geometry checked from the H5 headers."""
        from .readers import H5Reader, h5_geometry

        for view in views:
            channels, size, dtype = h5_geometry(view.h5, view.datasets, self.ndim)
            reader = lambda v=view: H5Reader(v.h5, v.datasets)  # noqa: E731
            loader = None
            if factors != (1, 1, 1):
                loader = _downscaled_loader(lambda r=reader, s=size: _read_all(r(), s), factors, dtype)  # type: ignore[misc]
                size = _shrunk(size, factors)
            self._append(f"{view.h5}:{view.datasets[0]}", channels, size, dtype, loader, reader=reader)
        self.check_tiles()

    def update_offsets(self, xml_file: str | os.PathLike[str], scale_factor: Sequence[float] | None = None) -> None:
        """Replace the offsets by those of a BDV XML (times ``scale_factor``, ``(x, y, z)``); pixels untouched.

        One offset per view, or per tile when the tileset's tiles group the views' channels.
        """
        from .bdv import get_offsets, tile_offsets

        offsets = get_offsets(xml_file)
        if len(offsets) != len(self.tiles):
            offsets = tile_offsets(xml_file)
        if len(offsets) != len(self.tiles):
            raise InvalidInputError(f"{os.fspath(xml_file)}: {len(offsets)} views but the tileset has {len(self.tiles)} tiles")
        self.set_offsets(offsets * (np.asarray(scale_factor, float) if scale_factor is not None else 1.0))

    def _append(
        self,
        path: str,
        channels: int,
        size: Sequence[int],
        dtype: np.dtype,
        loader: Callable[[], np.ndarray] | None,
        reader: Callable[[], TileReader] | None = None,
    ) -> None:
        depth, height, width = (int(n) for n in size)
        self.tiles.append(
            Tile(len(self.tiles), path, np.zeros(3), int(channels), (depth, height, width), np.dtype(dtype), loader=loader, reader=reader)
        )

    def check_tiles(self) -> None:
        """One error naming the first tile whose dtype or channel count differs from the first tile's."""
        if not self.tiles:
            raise InvalidInputError("a tileset needs at least one tile")
        first = self.tiles[0]
        for tile in self.tiles[1:]:
            if tile.dtype != first.dtype:
                raise InvalidInputError(f"{tile.path}: dtype {tile.dtype}, but {first.path} has {first.dtype}; tiles share one dtype")
            if tile.channels != first.channels:
                raise InvalidInputError(
                    f"{tile.path}: {tile.channels} channels, but {first.path} has {first.channels}; tiles must share their channels"
                )

    def check_labels(self) -> None:
        """Label tiles, when given, exist for every tile and match its size."""
        given = [t for t in self.tiles if t.labels is not None]
        if not given:
            return
        for tile in self.tiles:
            if tile.labels is None:
                raise InvalidInputError(f"{tile.path}: no label file given while other tiles have one")
            channels, size, dtype = tiff_geometry(tile.labels, self.ndim)
            if channels != 1 or not np.issubdtype(dtype, np.integer):
                raise InvalidInputError(f"{tile.labels}: a label tile must be one channel of integers, found {channels} x {dtype}")
            if size != tile.size:
                raise InvalidInputError(f"{tile.labels}: size {size} differs from its tile {tile.path} {tile.size}")

    def set_offsets(self, offsets: np.ndarray) -> None:
        """Set the ``(x, y[, z])`` offsets in output pixels, one row per tile; negative or non-finite ones are errors."""
        offsets = _xyz(np.asarray(offsets, dtype=float))
        if len(offsets) != len(self.tiles):
            raise InvalidInputError(f"{len(offsets)} offsets for {len(self.tiles)} tiles")
        for tile, offset in zip(self.tiles, offsets):
            if not np.all(np.isfinite(offset)) or np.any(np.round(offset) < 0):
                raise InvalidInputError(f"{tile.path}: offset {tuple(offset.tolist())} must be finite and not negative")
            tile.offset = offset.copy()

    def check_coverage(self, source: str) -> None:
        """One error when the mosaic the offsets span is over :data:`SPARSE_LIMIT` times the tiles' total area.

        Area is voxels for a stack. The message names ``source`` (the offsets
        table), the mosaic size, the tiles' total area and the tile lying
        farthest out (its row), which is where a wrong unit or a stray row shows.
        """
        depth, height, width = self.shape
        spanned = depth * height * width
        covered = sum(math.prod(tile.size) for tile in self.tiles)
        if spanned <= SPARSE_LIMIT * covered:
            return
        n = max(range(len(self.tiles)), key=lambda i: float(np.linalg.norm(self.tiles[i].offset)))
        far = self.tiles[n]
        axes = ("x", "y", "z") if self.ndim == 3 else ("x", "y")
        at = ", ".join(f"{axis}={value:,.0f}" for axis, value in zip(axes, far.offset))
        size = f"{width:,} x {height:,} px" + (f" x {depth:,} planes" if self.ndim == 3 else "")
        unit = "voxels" if self.ndim == 3 else "px"
        share = np.format_float_positional(100 * covered / spanned, precision=2, fractional=False)
        raise InvalidInputError(
            f"{source}: the tiles cover {share}% of the {size} mosaic their offsets span ({len(self.tiles)} tiles, {covered:,} {unit} "
            f"in all; the farthest, row {n + 1} {os.path.basename(far.path)}, at {at}): check the offsets' unit and origin, "
            f"or pass allow_sparse=True for a mosaic mostly empty on purpose"
        )

    # -- the seed's helpers ------------------------------------------------------------------
    def __getitem__(self, i: int) -> Tile:
        return self.tiles[i]

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def offsets(self) -> np.ndarray:
        """The ``(N, 3)`` offsets ``(x, y, z)`` in output pixels."""
        return np.array([t.offset for t in self.tiles], dtype=float).reshape(-1, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(depth, height, width)`` of the stitched output."""
        boxes = np.array([t.box for t in self.tiles])
        return int(boxes[:, 3].max()), int(boxes[:, 4].max()), int(boxes[:, 5].max())

    @property
    def channels(self) -> int:
        return self.tiles[0].channels

    @property
    def dtype(self) -> np.dtype:
        """The output dtype: the tiles', or ``uint8`` once :meth:`scale_intensity` was called."""
        return np.dtype(np.uint8) if self.intensity is not None else self.tiles[0].dtype

    def scale_offset(self, scale: Sequence[float] = (1, 1, 1)) -> None:
        """Multiply every offset by ``scale`` ``(x, y, z)``."""
        self.set_offsets(self.offsets * np.asarray(scale, dtype=float))

    def read_tile(
        self, i: int, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int, *, labels: bool = False, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Tile ``i``'s window ``(C, z, h, w)`` in tile-local pixels (its label image with ``labels``), into ``out`` when given.

        A 2-D TIFF tile is read straight into ``out`` (no intermediate window); other readers' windows are copied into it.
        """
        tile = self.tiles[i]
        if labels:
            if tile.labels is None:
                raise InvalidInputError(f"{tile.path}: no label tile")
            path = tile.labels
            reader = self.readers.get(-1 - i, lambda: StackReader(path) if self.ndim == 3 else PlaneReader(path))
        else:
            reader = self.readers.get(i, lambda: tile.open(self.ndim))
        if out is not None and isinstance(reader, PlaneReader):
            return reader.read(z0, z1, y0, y1, x0, x1, out=out)
        window = reader.read(z0, z1, y0, y1, x0, x1)
        if out is None:
            return window
        out[...] = window
        return out

    def get_slice(self, fovnum: int, z: int) -> np.ndarray:
        """Plane ``z`` of tile ``fovnum`` as ``(C, H, W)``; reads only that plane."""
        depth, height, width = self.tiles[fovnum].size
        if not 0 <= z < depth:
            raise InvalidInputError(f"{self.tiles[fovnum].path}: z {z} outside 0..{depth - 1}")
        return self.read_tile(fovnum, z, z + 1, 0, height, 0, width)[:, 0]

    def local_to_global(self, coords: np.ndarray) -> np.ndarray:
        """Rows ``(i, x, y, z)``: microns inside tile ``i`` -> ``(x, y, z)`` microns in the stitched output."""
        coords = np.asarray(coords, dtype=float)
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise InvalidInputError(f"local_to_global expects (n, 4) rows (i, x, y, z), got shape {coords.shape}")
        index = coords[:, 0].astype(int)
        if len(index) and (index.min() < 0 or index.max() >= len(self.tiles)):
            raise InvalidInputError(f"local_to_global: tile index outside 0..{len(self.tiles) - 1}")
        value: np.ndarray = coords[:, 1:] + self.offsets[index] * self.voxel_size
        return value

    def find_intensity_scale(self, progress: bool = False) -> tuple[float, float]:
        """The 1st and 99th percentiles of intensities over the tiles (the median of the tiles' percentiles)."""
        scales = np.array([tile.find_intensity_scale(self.ndim) for tile in self.tiles])
        return float(np.median(scales[:, 0])), float(np.median(scales[:, 1]))

    def scale_intensity(self, p1p99: tuple[float, float] | None = None, progress: bool = False) -> None:
        """Map intensities ``p1..p99`` to 0..255: the stitched output becomes ``uint8`` (applied when read, tiles untouched)."""
        low, high = p1p99 if p1p99 is not None else self.find_intensity_scale(progress)
        if not high > low:
            raise InvalidInputError(f"intensity scale needs p99 > p1, got {low}, {high}")
        self.intensity = (float(low), float(high))

    def close(self) -> None:
        """Close the tiles kept open."""
        self.readers.close()

    def __enter__(self) -> Tileset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: The largest offset taken (px, or planes along z): 2**20 px is 26 cm at 0.25 um a pixel, beyond any slide.
MAX_OFFSET = 2**20

#: The most the mosaic an offsets table spans (voxels for a stack) may exceed the tiles' total area. A
#: tile grid covers its box (overlaps make the sum larger), an irregular tissue outline or scattered cores
#: leave a third to a half of it empty; past 16x, over 15/16 of the written pixels are fill: a wrong unit
#: (nm or mm for um, um read as px: 2-1000x per axis) or a stray row, which would write for minutes.
SPARSE_LIMIT = 16


def read_offsets_table(
    table: str | os.PathLike[str],
    tiles_dir: str | os.PathLike[str],
    *,
    offset_unit: str = "pixel",
    mpp: float | None = None,
    allow_outside: bool = False,
) -> tuple[list[tuple[str, np.ndarray, str | None]], bool]:
    """Rows ``(tile path, (x, y, z) offset in output pixels, label path or None)`` of an offsets table, and whether it has ``z``.

    Every row is checked before returning: a named file that exists, numeric,
    finite, non-negative offsets. A ``file`` or ``labels`` entry is a path
    relative to ``tiles_dir`` that stays inside it, symbolic links resolved
    (:func:`~spora_zarr.store.guard.resolve_inside`); ``allow_outside`` lets it
    be absolute or lead out of ``tiles_dir``.
    """
    path = os.fspath(table)
    if not os.path.isfile(path):
        raise NotFoundError(f"{path}: offsets table not found")
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            columns = pq.read_table(path).to_pydict()
        else:
            import pyarrow.csv as pacsv

            names = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={})).column_names
            strings = pacsv.ConvertOptions(column_types=dict.fromkeys(names, "string"), strings_can_be_null=True)
            columns = pacsv.read_csv(path, convert_options=strings).to_pydict()
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"{path}: unreadable offsets table ({reason(exc)})") from None
    missing = [c for c in ("file", "x", "y") if c not in columns]
    if missing:
        raise InvalidInputError(f"{path}: offsets table lacks column(s) {', '.join(missing)} (has {', '.join(columns)})")
    if offset_unit not in ("pixel", "micrometer"):
        raise InvalidInputError(f"offset unit must be 'pixel' or 'micrometer', got {offset_unit!r}")
    if offset_unit == "micrometer" and not (mpp and mpp > 0):
        raise InvalidInputError(f"{path}: micrometer offsets need a positive mpp")
    has_z = "z" in columns
    rows = []
    for n, name in enumerate(columns["file"]):
        where = f"{path}: row {n + 1}"
        if name is None or not str(name).strip():
            raise InvalidInputError(f"{where} names no file")
        values = []
        for axis in ("x", "y", "z") if has_z else ("x", "y"):
            raw = columns[axis][n]
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise InvalidInputError(f"{where} ({name}): offset {axis}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"{where} ({name}): offset {axis}={raw!r} must be finite and not negative")
            value = value / mpp if offset_unit == "micrometer" and axis != "z" and mpp else value
            if value > MAX_OFFSET:  # a mosaic that wide is a wrong unit or a damaged table, and would not fit an int
                raise InvalidInputError(f"{where} ({name}): offset {axis}={raw!r} is beyond {MAX_OFFSET:,} px, wider than any slide")
            values.append(value)
        tile = _tile_file(tiles_dir, str(name).strip(), "file", where, allow_outside)
        if not os.path.isfile(tile):
            raise NotFoundError(f"{tile}: tile file not found (row {n + 1} of {path})")
        labels = columns.get("labels", [None] * (n + 1))[n]
        label_path = _tile_file(tiles_dir, str(labels).strip(), "labels file", where, allow_outside) if labels else None
        if label_path is not None and not os.path.isfile(label_path):
            raise NotFoundError(f"{label_path}: label tile not found (row {n + 1} of {path})")
        rows.append((tile, np.array([*values, 0.0][:3]), label_path))
    if not rows:
        raise InvalidInputError(f"{path}: the offsets table has no rows")
    return rows, has_z


def _tile_file(tiles_dir: str | os.PathLike[str], name: str, what: str, where: str, allow_outside: bool) -> str:
    """The path of a file the offsets table names: inside ``tiles_dir`` unless ``allow_outside``."""
    if allow_outside:
        return os.path.join(os.fspath(tiles_dir), name)
    try:
        return resolve_inside(tiles_dir, name, what=what, source=where)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc}; pass allow_outside=True to read files outside the tiles folder") from None


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _xyz(offsets: np.ndarray) -> np.ndarray:
    """``(N, 2)`` or ``(N, 3)`` offsets as ``(N, 3)`` ``(x, y, z)``."""
    if offsets.ndim != 2 or offsets.shape[1] not in (2, 3):
        raise InvalidInputError(f"offsets must be (N, 2) or (N, 3) rows (x, y[, z]), got shape {offsets.shape}")
    return offsets if offsets.shape[1] == 3 else np.column_stack([offsets, np.zeros(len(offsets))])


def _factors(downscale: Sequence[int]) -> tuple[int, int, int]:
    factors = tuple(int(f) for f in downscale)
    if len(factors) != 3 or min(factors) < 1:
        raise InvalidInputError(f"downscale must be three whole factors >= 1 (z, y, x), got {tuple(downscale)}")
    return factors


def _shrunk(size: Sequence[int], factors: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(n) // f if f > 1 else int(n) for n, f in zip(size, factors))  # type: ignore[return-value]


def _read_tiff(path: str, ndim: int) -> np.ndarray:
    return _read_all(StackReader(path) if ndim == 3 else PlaneReader(path), tiff_geometry(path, ndim)[1])


def _read_all(reader: TileReader, size: Sequence[int]) -> np.ndarray:
    """The whole tile ``(C, Z, H, W)`` of ``size`` ``(depth, height, width)`` from ``reader``, which is closed."""
    try:
        depth, height, width = size
        return reader.read(0, depth, 0, height, 0, width)
    finally:
        reader.close()


def _as_czyx(array: np.ndarray) -> np.ndarray:
    """A decoded plane ``(H, W)`` / ``(H, W, S)`` or stack ``(Z, H, W)`` as ``(C, Z, H, W)``."""
    if array.ndim == 2:
        return array[None, None]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return np.moveaxis(array, -1, 0)[:, None]
    return array[None]


def _downscaled_loader(load: Callable[[], np.ndarray], factors: tuple[int, int, int], dtype: np.dtype) -> Callable[[], np.ndarray]:
    """``load`` followed by a block mean over ``factors`` ``(z, y, x)`` (the tile cut to whole blocks), in ``dtype``."""

    def loader() -> np.ndarray:
        array = load()
        if factors == (1, 1, 1):
            return array
        fz, fy, fx = (f if f <= n else 1 for f, n in zip(factors, array.shape[1:]))
        c, z, y, x = array.shape
        cut = array[:, : z // fz * fz, : y // fy * fy, : x // fx * fx]
        means = cut.reshape(c, z // fz, fz, y // fy, fy, x // fx, fx).mean(axis=(2, 4, 6))
        value: np.ndarray = np.rint(means).astype(dtype) if np.issubdtype(dtype, np.integer) else means.astype(dtype)
        return value

    return loader
