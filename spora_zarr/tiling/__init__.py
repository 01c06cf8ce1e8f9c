"""Tilers and tile tables (``tiling/<res>/<strategy>/<size>_tile_*.parquet``)."""

from .grid import grid_tile_fractions

__all__ = ["grid_tile_fractions"]
