"""Stitching tiled acquisitions (fields of view + offsets) into one NGFF image, out of core.

A :class:`Tileset` places tiles by an offsets table or a BigDataViewer XML; a
:class:`MosaicSource` composes any window from only the tiles that overlap it
and feeds the one writer; label tiles get ids unique across tiles, objects cut
by tile borders merged. See ``docs/stitching.md``.
"""

from .bdv import get_offsets
from .labels import LabelMosaicSource, apply_new_ids, deduplicate_blob_ids, find_overlapping_blobs, number_objects, relabel_tables
from .mosaic import BLENDS, MosaicSource, blend, get_tiles_overlaps, overlapping, preview
from .register import measure_pairs, register_tileset, solve_offsets
from .stitch import StitchOptions, StitchResult, get_centroids, stitch
from .surfaces import get_bottom_surface, get_contact_surface, get_top_surface
from .tiles import Tile, Tileset, read_offsets_table

__all__ = [
    "BLENDS",
    "LabelMosaicSource",
    "MosaicSource",
    "StitchOptions",
    "StitchResult",
    "Tile",
    "Tileset",
    "apply_new_ids",
    "blend",
    "deduplicate_blob_ids",
    "find_overlapping_blobs",
    "get_bottom_surface",
    "get_centroids",
    "get_contact_surface",
    "get_offsets",
    "get_tiles_overlaps",
    "get_top_surface",
    "measure_pairs",
    "number_objects",
    "overlapping",
    "preview",
    "read_offsets_table",
    "register_tileset",
    "relabel_tables",
    "solve_offsets",
    "stitch",
]
