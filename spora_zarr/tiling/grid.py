"""Fixed-grid tiles over a tissue mask, vectorised (no Python loop over windows or pixels)."""

from __future__ import annotations

import numpy as np


def grid_tile_fractions(mask: np.ndarray, tile_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-left corners and tissue fractions of the windows of the ``tile_size`` grid.

    The mask is padded with background to whole windows, so edge windows are
    considered; they keep their top-left corner even when they reach past the
    image (``seeds/001``, ``get_grid_tile``). Non-zero pixels are tissue.

    Parameters
    ----------
    mask
        ``(H, W)`` tissue mask.
    tile_size
        Window edge and grid step in pixels.

    Returns
    -------
    rows, cols, fractions
        One entry per window in row-major order: its top-left pixel and the
        share of its ``tile_size ** 2`` pixels that are tissue.
    """
    valid = np.asarray(mask) != 0
    height, width = valid.shape
    ny, nx = -(-height // tile_size), -(-width // tile_size)
    padded = np.zeros((ny * tile_size, nx * tile_size), dtype=np.uint8)
    padded[:height, :width] = valid
    counts = padded.reshape(ny, tile_size, nx, tile_size).sum(axis=(1, 3), dtype=np.int64)
    rows, cols = np.meshgrid(np.arange(ny) * tile_size, np.arange(nx) * tile_size, indexing="ij")
    return rows.ravel(), cols.ravel(), counts.ravel() / float(tile_size * tile_size)
