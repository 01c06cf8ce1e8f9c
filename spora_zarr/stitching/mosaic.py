"""The stitched mosaic as an ``ImageSource``: each window composed from only the tiles that overlap it.

Blending modes: ``none`` (the last tile in table order wins: overlaps keep
original values), ``max``, and ``linear`` (feathering: each tile weighted by
its distance to its own edge). The seed's in-memory helpers live here too:
:func:`overlapping`, :func:`get_tiles_overlaps`, :func:`blend`, :func:`preview`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from ..access.window import Window
from ..errors import InvalidInputError
from ..sources.base import ImageSource, SourceInfo
from .readers import prefetch
from .tiles import Tileset

__all__ = ["BLENDS", "MosaicSource", "blend", "get_tiles_overlaps", "overlapping", "preview"]

BLENDS = ("none", "max", "linear")


def overlapping(t1: Sequence[float], t2: Sequence[float], tile_size: Sequence[int]) -> bool:
    """Whether two tiles of ``tile_size`` placed at ``t1`` and ``t2`` (same axis order) overlap."""
    return all(abs(float(a) - float(b)) < float(n) for a, b, n in zip(t1, t2, tile_size))


def get_tiles_overlaps(transforms: np.ndarray, tile_size: Sequence[int]) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, of tiles of ``tile_size`` placed at rows of ``transforms`` that overlap."""
    transforms = np.asarray(transforms, dtype=float)
    return {(i, j) for i, j in combinations(range(len(transforms)), 2) if overlapping(transforms[i], transforms[j], tile_size)}


def blend(
    offsets: np.ndarray, pictures: Sequence[np.ndarray], indices: Sequence[int] | None = None, inverts: Sequence[int] | None = None
) -> np.ndarray:
    """Composite in-memory tiles (2-D ``(H, W)`` or 3-D ``(Z, H, W)``) at integer ``(x, y[, z])`` offsets; later tiles win.

    ``indices`` gives the order; ``inverts`` an axis (of the tile array) to flip per tile, or -1 for none.
    For mosaics larger than memory use :class:`MosaicSource`.
    """
    order = list(indices) if indices is not None else list(range(len(pictures)))
    offsets = np.asarray(offsets)
    ndim = pictures[order[0]].ndim
    origins = [tuple(int(round(float(v))) for v in offsets[i][:ndim][::-1]) for i in order]  # (z,) y, x
    shape = tuple(max(o[a] + pictures[i].shape[a] for o, i in zip(origins, order)) for a in range(ndim))
    out = np.zeros(shape, pictures[order[0]].dtype)
    for origin, i in zip(origins, order):
        picture = pictures[i]
        if inverts is not None and inverts[i] is not None and inverts[i] >= 0:
            picture = np.flip(picture, axis=inverts[i])
        out[tuple(slice(o, o + n) for o, n in zip(origin, picture.shape))] = picture
    return out


def _edge_weight(length: int, start: int, stop: int) -> np.ndarray:
    """Distance (>= 1) to the nearer end of a tile of ``length`` pixels, for local pixels ``start..stop``."""
    index = np.arange(start, stop, dtype=np.float32)
    return np.minimum(index + 1, length - index)


class MosaicSource(ImageSource):
    """A tileset's stitched image, read window by window: the whole stack (``nz`` planes), or one plane ``z``.

    Parameters
    ----------
    tileset
        The tiles and their offsets.
    blend
        ``none``, ``max`` or ``linear``.
    z
        ``None``: the source is the stitched stack (``nz`` = its depth, written
        with a z axis; :meth:`read` gives plane 0). A plane index: the source is
        that plane alone (``nz`` 1, :meth:`read` gives plane ``z``).
    mpp, channel_names
        Recorded in ``info``.
    """

    def __init__(
        self,
        tileset: Tileset,
        *,
        blend: str = "none",
        z: int | None = None,
        mpp: float | None = None,
        channel_names: Sequence[str] | None = None,
        name: str = "<mosaic>",
    ) -> None:
        if blend not in BLENDS:
            raise InvalidInputError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
        tileset.check_tiles()
        depth, height, width = tileset.shape
        if z is not None and not 0 <= z < depth:
            raise InvalidInputError(f"{name}: plane z={z} outside the stitched stack's 0..{depth - 1}")
        self.tileset, self.blend, self.z, self.name = tileset, blend, z or 0, name
        self.depth = depth
        self.nz = depth if z is None else 1
        self.shape = (tileset.channels, height, width)
        self.dtype = tileset.dtype
        self.info = SourceInfo(channel_names=list(channel_names) if channel_names else None, mpp=mpp)
        self.boxes = np.array([t.box for t in tileset.tiles], dtype=np.int64).reshape(-1, 6)  # the index: (z0, y0, x0, z1, y1, x1)
        self._read_ahead = {i for i, t in enumerate(tileset.tiles) if t.loader is not None or t.reader is not None}

    def tiles_in(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Indices (table order) of the tiles overlapping a window."""
        b = self.boxes
        hit = (b[:, 0] < z1) & (b[:, 3] > z0) & (b[:, 1] < y1) & (b[:, 4] > y0) & (b[:, 2] < x1) & (b[:, 5] > x0)
        return np.flatnonzero(hit)

    def visible_parts(self, i: int) -> list[Window]:
        """Where tile ``i`` wins with blend ``none``: its box less the boxes of the later tiles (output pixels, disjoint)."""
        box = self._box(i)
        parts = [box]
        z0, y0, x0, z1, y1, x1 = box.box
        for j in self.tiles_in(z0, z1, y0, y1, x0, x1):
            if j > i:
                later = self._box(int(j))
                parts = [piece for part in parts for piece in part.subtract(later)]
        return parts

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.read_volume(self.z, self.z + 1, y0, y1, x0, x1)[:, 0]

    def read_volume(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window ``(C, z1 - z0, y1 - y0, x1 - x0)`` of the stitched volume (planes of the whole stack)."""
        self._prefetch_around(z0, z1, y0, y1, x0, x1)
        window = Window.from_box(z0, y0, x0, z1, y1, x1)
        if self.blend == "none":
            return self._scaled(self._read_last_wins(window))
        shape = (self.shape[0], z1 - z0, y1 - y0, x1 - x0)
        source_dtype = self.tileset.tiles[0].dtype
        linear = self.blend == "linear"
        if linear:
            wide = np.float64 if source_dtype.itemsize > 2 or not np.issubdtype(source_dtype, np.integer) else np.float32
            total = np.zeros(shape, wide)
            weights = np.zeros(shape[1:], wide)
        else:
            out = np.zeros(shape, source_dtype)
        for i in self.tiles_in(z0, z1, y0, y1, x0, x1):
            tile = self._box(int(i))
            box = tile.intersect(window)
            assert box is not None  # tiles_in gives the tiles that meet the window
            part = self._read_part(int(i), box)
            region = box.relative_to(window).index
            if linear:
                _, height, width = self.tileset.tiles[int(i)].size
                local = box.relative_to(tile)
                wy = _edge_weight(height, local.start[1], local.stop[1])
                wx = _edge_weight(width, local.start[2], local.stop[2])
                w = np.minimum(wy[:, None], wx[None, :])[None]
                total[region] += part * w
                weights[region[1:]] += w
            else:
                np.maximum(out[region], part, out=out[region])
        if linear:
            covered = weights > 0
            mean = np.divide(total, weights, out=np.zeros_like(total), where=covered)
            if np.issubdtype(source_dtype, np.integer):
                info = np.iinfo(source_dtype)
                mean = np.clip(np.rint(mean), info.min, info.max)
            out = mean.astype(source_dtype)
        return self._scaled(out)

    def _prefetch_around(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> None:
        """Start reading ahead the TIFF tiles within one window's size of this window (each tile once)."""
        dy, dx = y1 - y0, x1 - x0
        for i in self.tiles_in(z0, z1, y0 - dy, y1 + dy, x0 - dx, x1 + dx):
            if int(i) not in self._read_ahead:
                self._read_ahead.add(int(i))
                prefetch(self.tileset.tiles[int(i)].path)

    def _box(self, i: int) -> Window:
        """Tile ``i``'s window in output pixels."""
        return Window.from_box(*(int(v) for v in self.boxes[i]))

    def _read_part(self, i: int, box: Window, out: np.ndarray | None = None) -> np.ndarray:
        """Tile ``i``'s pixels inside ``box`` (output pixels, within the tile), into ``out`` when given."""
        local = box.relative_to(self._box(i))
        (z0, y0, x0), (z1, y1, x1) = local.start, local.stop
        return self.tileset.read_tile(i, z0, z1, y0, y1, x0, x1, out=out)

    def _read_last_wins(self, window: Window) -> np.ndarray:
        """Blend ``none``: each tile's visible part only (its box less those of later tiles), each pixel read once.

        The visible parts are disjoint, so the window is allocated uninitialised
        when they cover it (zeroed only where no tile reaches), and each part is
        read straight into it.
        """
        z0, y0, x0, z1, y1, x1 = window.box
        indices = self.tiles_in(z0, z1, y0, y1, x0, x1)
        boxes = [self._box(int(i)) for i in indices]
        parts = []
        for k, i in enumerate(indices):
            visible = [box for box in [boxes[k].intersect(window)] if box is not None]
            for later in boxes[k + 1 :]:
                visible = [piece for box in visible for piece in box.subtract(later)]
            parts += [(int(i), box) for box in visible]
        shape = (self.shape[0], *window.shape)
        covered = sum(box.size for _, box in parts) == window.size
        out = np.empty(shape, self.tileset.tiles[0].dtype) if covered else np.zeros(shape, self.tileset.tiles[0].dtype)
        for i, box in parts:
            self._read_part(i, box, out[box.relative_to(window).index])
        return out

    def _scaled(self, window: np.ndarray) -> np.ndarray:
        if self.tileset.intensity is None:
            return window
        low, high = self.tileset.intensity
        scaled = (window.astype(np.float32) - low) * (255.0 / (high - low))
        pixels: np.ndarray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return pixels


def preview(tileset: Tileset, *, down_sample: int | str = "auto", z: int = 0, blend: str = "none", max_size: int = 2048) -> np.ndarray:
    """A downsampled stitched plane ``(C, h, w)``: every ``down_sample``-th output pixel (``auto``: at most ``max_size`` a side).

    Read tile by tile through the mosaic in bands, so memory holds the preview and one band.
    """
    source = MosaicSource(tileset, blend=blend, z=z)
    _, height, width = source.shape
    step = max(1, -(-max(height, width) // max_size)) if down_sample == "auto" else int(down_sample)
    if step < 1:
        raise InvalidInputError(f"down_sample must be a whole number >= 1 or 'auto', got {down_sample!r}")
    rows = range(0, height, step)
    out = np.zeros((source.shape[0], len(rows), -(-width // step)), source.dtype)
    band = max(step, (1024 // step) * step)
    for y in range(0, height, band):
        window = source.read(y, min(height, y + band), 0, width)
        out[:, y // step : y // step + -(-window.shape[1] // step)] = window[:, ::step, ::step]
    return out
