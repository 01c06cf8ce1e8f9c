"""Tilers and tile tables (``tiling/<res>/<strategy>/<size>_tile_*.parquet``).

:func:`best_mask_tiling_try_to_stop` (greedy best coverage) and
:func:`get_grid_tile` (fixed grid) tile one mask in memory;
:func:`tile_cohort` (``spora-zarr tile``) tiles the tissue masks of a store,
streaming each mask level in row bands, and writes the tile tables beside it.
"""

from .cohort import TilingOptions, TilingReport, tile_cohort
from .tilers import Tile, best_mask_tiling_try_to_stop, get_grid_tile

__all__ = ["Tile", "TilingOptions", "TilingReport", "best_mask_tiling_try_to_stop", "get_grid_tile", "tile_cohort"]
