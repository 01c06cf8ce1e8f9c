"""Label tiles stitched into one label image: ids made unique across tiles, objects cut by tile borders merged.

Each tile's ids are offset so they are unique across the tileset; then, for
every pair of overlapping tiles, the overlap of both label tiles is read (only
the overlap) and two objects that cover the same pixels there (intersection
over union within the overlap at least ``min_iou``) are joined with a
union-find. The objects the stitched image shows (the last tile wins where
tiles overlap) are numbered ``1..K``; an object wholly under later tiles gets
no number. Memory holds one label tile or overlap and a lookup table per tile
(its largest id), never the stitched image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..access.window import Window
from ..errors import InvalidInputError
from ..sources.base import ImageSource, SourceInfo
from .mosaic import MosaicSource
from .tiles import Tileset

__all__ = ["LabelMosaicSource", "apply_new_ids", "deduplicate_blob_ids", "find_overlapping_blobs", "number_objects", "relabel_tables"]

log = logging.getLogger("spora_zarr")


def _overlap(tileset: Tileset, i: int, j: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The label pixels of tiles ``i`` and ``j`` over their common region, or ``None`` when they do not overlap."""
    a, b = tileset.tiles[i].box, tileset.tiles[j].box
    lo = [max(a[k], b[k]) for k in range(3)]
    hi = [min(a[k + 3], b[k + 3]) for k in range(3)]
    if any(h <= low for low, h in zip(lo, hi)):
        return None

    def local(box: tuple[int, ...], index: int) -> np.ndarray:
        z, y, x = box[:3]
        value: np.ndarray = tileset.read_tile(index, lo[0] - z, hi[0] - z, lo[1] - y, hi[1] - y, lo[2] - x, hi[2] - x, labels=True)[0]
        return value

    return local(a, i), local(b, j)


def find_overlapping_blobs(
    tileset: Tileset, pairs: Sequence[tuple[int, int]] | None = None, progress: bool = False, *, min_iou: float = 0.0
) -> list[list[int]]:
    """Rows ``[tile1, blob1, tile2, blob2, overlap_area]`` of objects that share pixels in the overlap of two tiles.

    Only pairs whose intersection over union *within the overlap* is at least ``min_iou`` are listed.
    """
    if pairs is None:
        source = MosaicSource(tileset)
        pairs = [(i, int(j)) for i in range(len(tileset)) for j in source.tiles_in(*_range(tileset.tiles[i].box)) if j > i]
    rows: list[list[int]] = []
    for i, j in pairs:
        both = _overlap(tileset, i, j)
        if both is None:
            continue
        a, b = (x.ravel().astype(np.int64) for x in both)
        keep = (a > 0) & (b > 0)
        if not keep.any():
            continue
        pairs_ab, counts = np.unique(np.stack([a[keep], b[keep]]), axis=1, return_counts=True)
        ids_a, area_a = np.unique(a[a > 0], return_counts=True)
        ids_b, area_b = np.unique(b[b > 0], return_counts=True)
        size_a = area_a[np.searchsorted(ids_a, pairs_ab[0])]
        size_b = area_b[np.searchsorted(ids_b, pairs_ab[1])]
        iou = counts / (size_a + size_b - counts)
        for (blob_a, blob_b), count, score in zip(pairs_ab.T, counts, iou):
            if score >= min_iou:
                rows.append([i, int(blob_a), j, int(blob_b), int(count)])
    return rows


def _range(box: tuple[int, int, int, int, int, int]) -> tuple[int, int, int, int, int, int]:
    z0, y0, x0, z1, y1, x1 = box
    return z0, z1, y0, y1, x0, x1


def relabel_tables(tileset: Tileset, overlaps: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Per tile a lookup ``old id -> new id`` (0 stays 0): unique ids, joined objects sharing one, numbered ``1..K``.

    Only the objects visible in the stitched labels (the last tile wins where
    tiles overlap) are numbered: an object lying wholly under later tiles maps
    to 0, so the label image holds exactly the ids ``1..K``. How many were left
    out is logged; :func:`number_objects` returns it.
    """
    tables, hidden = number_objects(tileset, overlaps)
    if hidden:
        log.info("%s: %d label object(s) lie wholly under later tiles (the last tile wins) and are left out", _where(tileset), hidden)
    return tables


def number_objects(tileset: Tileset, overlaps: Sequence[Sequence[int]]) -> tuple[list[np.ndarray], int]:
    """The lookups of :func:`relabel_tables` and the number of objects left out because later tiles cover them wholly.

    Each label tile is read once, whole: its ids, and those in its visible
    parts (its box less the later tiles' boxes, :meth:`MosaicSource.visible_parts`).
    """
    source = MosaicSource(tileset)
    present: list[np.ndarray] = []
    shown: list[np.ndarray] = []
    for i, tile in enumerate(tileset.tiles):
        depth, height, width = tile.size
        pixels = tileset.read_tile(i, 0, depth, 0, height, 0, width, labels=True)
        ids = np.unique(pixels)
        if ids.size and ids[0] < 0:
            raise InvalidInputError(f"{tile.labels}: negative label ids")
        present.append(ids[ids > 0].astype(np.int64))
        box = Window.from_box(*tile.box)
        parts = [np.unique(pixels[part.relative_to(box).index]) for part in source.visible_parts(i)]
        seen = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        shown.append(seen[seen > 0].astype(np.int64))
    starts = np.cumsum([0, *(len(p) for p in present)])
    parent = np.arange(int(starts[-1]), dtype=np.int64)

    def find(k: int) -> int:
        root = k
        while parent[root] != root:
            root = int(parent[root])
        while parent[k] != root:
            parent[k], k = root, int(parent[k])
        return root

    def node(tile: int, blob: int) -> int:
        return int(starts[tile] + np.searchsorted(present[tile], blob))

    for t1, b1, t2, b2, *_ in overlaps:
        r1, r2 = find(node(int(t1), int(b1))), find(node(int(t2), int(b2)))
        if r1 != r2:
            parent[max(r1, r2)] = min(r1, r2)
    roots = np.array([find(k) for k in range(len(parent))], dtype=np.int64)
    visible_nodes = np.concatenate([starts[t] + np.searchsorted(present[t], ids) for t, ids in enumerate(shown)]).astype(np.int64)
    visible = np.unique(roots[visible_nodes])  # the objects with a pixel in the stitched image, in order of first tile
    numbered = np.zeros(len(roots), np.int64)  # 0 for the objects no pixel of the stitched image shows
    if len(visible):
        index = np.searchsorted(visible, roots).clip(max=len(visible) - 1)
        shows = visible[index] == roots
        numbered[shows] = index[shows] + 1
    tables = []
    for t, ids in enumerate(present):
        table = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.uint64)
        table[ids] = numbered[starts[t] : starts[t + 1]]
        tables.append(table)
    return tables, len(np.unique(roots)) - len(visible)


def _where(tileset: Tileset) -> str:
    """The folder of the label tiles (for messages)."""
    first = tileset.tiles[0].labels if tileset.tiles else None
    return (os.path.dirname(first) or ".") if first else "<label tiles>"


def deduplicate_blob_ids(tileset: Tileset, progress: bool = False, *, min_iou: float = 0.5) -> dict[tuple[int, int], int]:
    """``(tile_id, blob_id) -> new id``: unique across tiles, objects cut by tile borders (IoU in the overlap >= ``min_iou``) merged."""
    tables = relabel_tables(tileset, find_overlapping_blobs(tileset, progress=progress, min_iou=min_iou))
    return {(t, int(old)): int(table[old]) for t, table in enumerate(tables) for old in np.flatnonzero(table)}


def apply_new_ids(img: np.ndarray, new_ids: Mapping[tuple[int, int], int] | np.ndarray, tile_id: int) -> np.ndarray:
    """``img`` (tile ``tile_id``'s labels) with each id replaced by ``new_ids[(tile_id, id)]`` (or a lookup array); unmapped ids -> 0."""
    if isinstance(new_ids, np.ndarray):
        table = new_ids
    else:
        mine = {old: new for (t, old), new in new_ids.items() if t == tile_id}
        table = np.zeros(max(mine, default=0) + 1, dtype=np.uint64)
        for old, new in mine.items():
            table[old] = new
    img = np.asarray(img)
    inside = (img >= 0) & (img < len(table))
    return np.where(inside, table[np.where(inside, img, 0)], 0).astype(table.dtype)


class LabelMosaicSource(ImageSource):
    """The stitched label image ``(1, H, W)`` (a stack, or plane ``z``, as :class:`MosaicSource`).

    Each tile's ids are mapped through its table, the last tile in table order winning.
    """

    def __init__(self, tileset: Tileset, tables: Sequence[np.ndarray], *, z: int | None = None, name: str = "<label mosaic>") -> None:
        if len(tables) != len(tileset):
            raise InvalidInputError(f"{len(tables)} id tables for {len(tileset)} tiles")
        self.tileset, self.tables, self.name = tileset, list(tables), name
        self.mosaic = MosaicSource(tileset, z=z, name=name)
        self.z, self.nz = self.mosaic.z, self.mosaic.nz
        largest = max((int(t.max()) for t in tables), default=0)
        self.dtype = np.dtype(np.uint32 if largest < 2**32 else np.uint64)
        self.shape = (1, *self.mosaic.shape[1:])
        self.info = SourceInfo()

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.read_volume(self.z, self.z + 1, y0, y1, x0, x1)[:, 0]

    def read_volume(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window ``(1, z1 - z0, y1 - y0, x1 - x0)`` of the stitched labels."""
        out = np.zeros((1, z1 - z0, y1 - y0, x1 - x0), self.dtype)
        for i in self.mosaic.tiles_in(z0, z1, y0, y1, x0, x1):
            box = [int(v) for v in self.mosaic.boxes[i]]
            lo = [max(a, b) for a, b in zip((z0, y0, x0), box[:3])]
            hi = [min(a, b) for a, b in zip((z1, y1, x1), box[3:])]
            part = self.tileset.read_tile(int(i), *(v - box[k] for k in range(3) for v in (lo[k], hi[k])), labels=True)
            region = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, (z0, y0, x0)))
            out[0][region] = apply_new_ids(part[0], self.tables[int(i)], int(i))
        return out
