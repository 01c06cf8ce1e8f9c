"""Registration refinement: each overlapping pair's offset by phase correlation, global positions by least squares.

For a pair ``(i, j)`` the overlap given by the nominal offsets is read from
both tiles (the mean over channels), ``phase_cross_correlation`` measures the
shift between them, and the pair is kept when the normalised correlation of
the shifted overlap reaches ``min_correlation``. Positions then solve
``t_j - t_i = measured`` over the kept pairs in the least-squares sense, with a
weak pull of every tile to its nominal offset (so tiles no kept pair reaches
stay where the table put them) and the first tile anchored; pairs that
disagree with the solution are dropped one by one. Only one pair's
overlap is in memory at a time. For stacks the overlap is a box, the phase
correlation is 3-D and the positions are solved in x, y and z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mosaic import MosaicSource
from .tiles import Tileset

__all__ = ["PairShift", "measure_pairs", "register_tileset", "solve_offsets"]


@dataclass(frozen=True)
class PairShift:
    """A measured pair: tile ``j`` sits at ``offset(i) + relative`` (``(x, y, z)`` output pixels)."""

    i: int
    j: int
    relative: np.ndarray
    correlation: float


def _overlap_planes(tileset: Tileset, i: int, j: int, relative: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The overlap of tiles ``i`` and ``j`` (``j`` at ``relative`` ``(z, y, x)`` whole pixels from ``i``), mean over channels."""
    size_i, size_j = tileset.tiles[i].size, tileset.tiles[j].size
    lo = [max(0, int(r)) for r in relative]
    hi = [min(a, int(r) + b) for a, b, r in zip(size_i, size_j, relative)]
    if hi[0] <= lo[0] or min(hi[1] - lo[1], hi[2] - lo[2]) < min_size:
        return None
    r = [int(v) for v in relative]

    def plane(index: int, shift: list[int]) -> np.ndarray:
        box = [v for k in range(3) for v in (lo[k] - shift[k], hi[k] - shift[k])]
        window = tileset.read_tile(index, *box).astype(np.float32).mean(axis=0)
        value: np.ndarray = window[0] if window.shape[0] == 1 else window
        return value

    return plane(i, [0, 0, 0]), plane(j, r)


def _correlation(reference: np.ndarray, moving: np.ndarray, shift: np.ndarray) -> float:
    """Pearson correlation of the pixels the two overlaps share once ``moving`` is shifted by ``shift``."""
    ref_index, mov_index = [], []
    for n, s in zip(reference.shape, np.round(shift).astype(int)):
        if abs(s) >= n:
            return 0.0
        ref_index.append(slice(max(0, s), n + min(0, s)))
        mov_index.append(slice(max(0, -s), n - max(0, s)))
    r, m = reference[tuple(ref_index)].ravel(), moving[tuple(mov_index)].ravel()
    if r.size < 16 or r.std() == 0 or m.std() == 0:
        return 0.0
    return float(np.corrcoef(r, m)[0, 1])


def measure_pairs(tileset: Tileset, *, min_overlap: int = 16, upsample_factor: int = 10, rounds: int = 2) -> list[PairShift]:
    """The measured relative offset of every overlapping pair (overlaps thinner than ``min_overlap`` px skipped)."""
    from skimage.registration import phase_cross_correlation

    source = MosaicSource(tileset)
    shifts = []
    for i, tile in enumerate(tileset.tiles):
        z0, y0, x0, z1, y1, x1 = tile.box
        for j in (int(j) for j in source.tiles_in(z0, z1, y0, y1, x0, x1) if j > i):
            relative = (tileset.tiles[j].offset - tileset.tiles[i].offset)[::-1].copy()  # (z, y, x)
            correlation = 0.0
            for _ in range(rounds):  # measure, re-cut the overlap at the measured position, measure the rest
                planes = _overlap_planes(tileset, i, j, np.round(relative), min_overlap)
                if planes is None:
                    break
                reference, moving = planes
                shift, _, _ = phase_cross_correlation(reference, moving, upsample_factor=upsample_factor)
                step = np.zeros(3)
                step[3 - np.size(shift) :] = shift
                relative = np.round(relative) + step
                correlation = _correlation(reference, moving, np.asarray(shift, dtype=float))
            if correlation > 0:
                shifts.append(PairShift(i, j, relative[::-1].copy(), correlation))
    return shifts


def solve_offsets(
    nominal: np.ndarray, pairs: list[PairShift], *, min_correlation: float = 0.5, max_residual: float = 1.0, prior: float = 1e-3
) -> np.ndarray:
    """Least-squares ``(N, 3)`` offsets from the pairs whose correlation reaches ``min_correlation``.

    Tile 0 keeps its nominal offset; every tile is pulled towards its nominal
    offset with weight ``prior``. The pair that disagrees most with the
    solution is dropped and the system solved again while some pair is off by
    more than ``max_residual`` pixels. The result is shifted so no offset is negative.
    """
    n = len(nominal)
    kept = [p for p in pairs if p.correlation >= min_correlation]
    while True:
        rows = len(kept) + n + 1
        a = np.zeros((rows, n))
        b = np.zeros((rows, 3))
        for r, p in enumerate(kept):
            a[r, p.i], a[r, p.j] = -1.0, 1.0
            b[r] = p.relative
        for k in range(n):
            a[len(kept) + k, k] = prior
            b[len(kept) + k] = prior * nominal[k]
        a[-1, 0], b[-1] = 1e3, 1e3 * nominal[0]
        solved, *_ = np.linalg.lstsq(a, b, rcond=None)
        if not kept:
            break
        residuals = [float(np.abs(solved[p.j] - solved[p.i] - p.relative).max()) for p in kept]
        worst = int(np.argmax(residuals))
        if residuals[worst] <= max_residual:
            break
        kept.pop(worst)
    return np.asarray(solved - np.minimum(0.0, np.round(solved).min(axis=0)), dtype=float)


def register_tileset(tileset: Tileset, *, min_correlation: float = 0.5) -> tuple[np.ndarray, list[PairShift]]:
    """Refine the tileset's offsets in place; returns the new ``(N, 3)`` offsets and the measured pairs."""
    pairs = measure_pairs(tileset)
    offsets = solve_offsets(tileset.offsets, pairs, min_correlation=min_correlation)
    tileset.set_offsets(offsets)
    return offsets, pairs
