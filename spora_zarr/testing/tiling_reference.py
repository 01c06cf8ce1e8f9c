"""A straightforward greedy tiler, for tests and benchmarks only: the integral image is recomputed after each pick.

Same rules as :func:`~spora_zarr.tiling.tilers.best_mask_tiling_try_to_stop`
(candidates on the stride grid with edge windows, tolerance on the invalid
fraction, both stop criteria, ties to the lowest row then column), computed
on pixels with no cell grid, no heap and no incremental update. Its cost per
pick is a pass over the whole mask, so use it on small masks.
"""

from __future__ import annotations

import numpy as np

from ..tiling.tilers import Tile, check_parameters


def reference_best_tiling(
    mask: np.ndarray,
    tile_size: int,
    stride: int | None = None,
    tolerance: float = 0.2,
    coverage_goal: float = 0.99,
    min_gain_ratio: float = 0.05,
    max_tiles: int | None = None,
    allow_overlap: bool = True,
) -> tuple[list[Tile], float]:
    """Greedy best-coverage tiles and their coverage, recomputing everything after each pick."""
    size, step, tolerance, coverage_goal, min_gain_ratio, max_tiles = check_parameters(
        tile_size, stride, tolerance, coverage_goal, min_gain_ratio, max_tiles
    )
    valid = np.asarray(mask) != 0
    height, width = valid.shape
    rows, cols = np.arange(0, height, step), np.arange(0, width, step)
    padded_h, padded_w = rows[-1] + size, cols[-1] + size
    pad = np.zeros((max(padded_h, height), max(padded_w, width)), dtype=bool)
    pad[:height, :width] = valid

    def box(image: np.ndarray) -> np.ndarray:
        integral = np.zeros((image.shape[0] + 1, image.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = image.cumsum(0).cumsum(1)
        r, c = rows[:, None], cols[None, :]
        value: np.ndarray = integral[r + size, c + size] - integral[r, c + size] - integral[r + size, c] + integral[r, c]
        return value

    area = size * size
    inside = box(pad)
    eligible = (area - inside) / area <= tolerance
    total = int(valid.sum())
    uncovered = pad.copy()
    taken = np.zeros(pad.shape, dtype=bool)
    tiles: list[Tile] = []
    covered = 0
    while max_tiles is None or len(tiles) < max_tiles:
        gains = np.where(eligible, box(uncovered), -1)
        if not allow_overlap:
            gains = np.where(box(taken) > 0, -1, gains)
        best = int(np.argmax(gains))  # first maximum in row-major order: lowest row, then column
        a, b = divmod(best, gains.shape[1])
        gain = int(gains[a, b])
        if gain <= 0:
            break
        if covered >= coverage_goal * total and (min_gain_ratio == 0 or gain / area < min_gain_ratio):
            break
        y, x = int(rows[a]), int(cols[b])
        uncovered[y : y + size, x : x + size] = False
        taken[y : y + size, x : x + size] = True
        covered += gain
        tiles.append(Tile(y, x, size, gain, int(inside[a, b])))
    return tiles, covered / total if total else 0.0
