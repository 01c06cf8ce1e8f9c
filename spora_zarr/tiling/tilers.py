"""Best-coverage and grid tilers over a tissue mask, computed on a grid of cell counts.

Every candidate tile sits on the stride grid, so its top-left corner and its
edges fall on multiples of ``g = gcd(tile_size, stride)``. The tilers therefore
never look at pixels after one pass that counts the valid (non-zero) pixels of
each ``g x g`` *cell* (:class:`CellCounter`, fed whole masks or row bands
streamed from a store). A candidate's valid pixels are a box sum over its
``(tile_size / g)²`` cells (one integral image), and the greedy tiler keeps the
*uncovered* valid count of each cell: picking a tile zeroes its cells, and the
gain of a candidate is the sum of its cells, exact to the pixel.

The greedy loop is a lazy greedy with a heap: gains only shrink as tiles are
picked, so a popped candidate whose recomputed gain equals its stored key is
the best one; otherwise it is pushed back with its new gain. Each pick costs a
few heap operations and a sum over the tile's cells: no loop over pixels, nor
over all candidates per pick.

Edge windows: the mask is padded with background to the last stride position
inside the image (``row < H``, ``col < W``), as the seed's ``get_grid_tile``
does, so tiles may reach past the image; their top-left corner is kept and the
pixels past the edge count as invalid (the datasets zero-pad such windows for
every strategy but ``default``).
"""

from __future__ import annotations

import heapq
import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = [
    "CellCounter",
    "Tile",
    "best_mask_tiling_try_to_stop",
    "best_tiling_from_counts",
    "get_grid_tile",
    "grid_tiling_from_counts",
]

#: Rows of an in-memory mask turned into cell counts at once (bounds the temporary boolean band).
_BAND_PIXELS = 1 << 25


@dataclass(frozen=True, slots=True)
class Tile:
    """One square tile in pixels of the mask.

    Attributes
    ----------
    row, col
        Top-left pixel; ``row + size`` may reach past the mask (edge tiles).
    size
        Edge in pixels.
    gain
        Valid pixels this tile covered that no earlier tile covered (pick order
        for the best tiler, row-major order for the grid).
    valid
        Valid pixels inside the tile.
    """

    row: int
    col: int
    size: int
    gain: int
    valid: int


# ------------------------------------------------------------------ parameters


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise InvalidInputError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if maximum is not None and int(value) > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum:,} px (no image is that large), got {value!r}")
    return int(value)


#: The largest tile edge or stride taken (px): beyond any image's edge, and far inside the integers numpy indexes with.
MAX_TILE_EDGE = 2**20


def _check_fraction(name: str, value: Any, *, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidInputError(f"{name} must be a number in [0, 1{')' if below_one else ']'}, got {value!r}")
    fraction = float(value)
    if fraction < 0 or fraction > 1 or (below_one and fraction >= 1):
        raise InvalidInputError(f"{name} must be in [0, 1{')' if below_one else ']'}, got {value!r}")
    return fraction


def check_parameters(
    tile_size: Any,
    stride: Any = None,
    tolerance: Any = 0.2,
    coverage_goal: Any = 0.99,
    min_gain_ratio: Any = 0.05,
    max_tiles: Any = None,
) -> tuple[int, int, float, float, float, int | None]:
    """Validated ``(tile_size, stride, tolerance, coverage_goal, min_gain_ratio, max_tiles)``; one-line errors."""
    size = _check_int("tile_size", tile_size, 1, MAX_TILE_EDGE)
    step = size if stride is None else _check_int("stride", stride, 1, MAX_TILE_EDGE)
    cap = None if max_tiles is None else _check_int("max_tiles", max_tiles, 0)
    return (
        size,
        step,
        _check_fraction("tolerance", tolerance),
        _check_fraction("coverage_goal", coverage_goal),
        _check_fraction("min_gain_ratio", min_gain_ratio, below_one=True),
        cap,
    )


def _check_mask(mask: Any, tile_size: int, name: str = "mask") -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D (H, W) array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InvalidInputError(f"{name} must hold numbers (non-zero is valid), got dtype {array.dtype}")
    check_fits(name, array.shape, tile_size)
    return array


def check_fits(name: str, shape: tuple[int, ...], tile_size: int) -> None:
    """Refuse an empty image (one-line ``InvalidInputError``).

    A tile larger than the image is not an error: like every edge window it
    is considered at ``(0, 0)`` with the pixels past the image invalid, so it
    is kept only when the image's valid pixels reach ``1 - tolerance`` of the
    tile's area.
    """
    height, width = (int(n) for n in shape[-2:])
    if height == 0 or width == 0:
        raise InvalidInputError(f"{name} is empty (shape {height}x{width}); there is nothing to tile")


# ------------------------------------------------------------------ cell counts


class CellCounter:
    """Valid-pixel counts of the ``cell x cell`` cells of an ``(H, W)`` mask, accumulated band by band.

    Parameters
    ----------
    height, width
        Mask shape.
    cell
        Cell edge in pixels (``gcd(tile_size, stride)``).

    Attributes
    ----------
    counts : numpy.ndarray
        ``(ceil(H / cell), ceil(W / cell))`` int32 counts; cells past the
        mask's edge hold only the pixels inside it.
    """

    def __init__(self, height: int, width: int, cell: int) -> None:
        self.height, self.width, self.cell = int(height), int(width), int(cell)
        self.counts = np.zeros((-(-self.height // self.cell), -(-self.width // self.cell)), dtype=np.int32)

    def add(self, y0: int, band: np.ndarray) -> None:
        """Count the valid (non-zero) pixels of ``band``, the mask rows ``y0 : y0 + len(band)`` (all columns)."""
        band = np.asarray(band)
        if band.ndim == 3 and band.shape[0] == 1:
            band = band[0]
        rows = band.shape[0]
        if rows == 0:
            return
        if band.shape[1] != self.width or y0 < 0 or y0 + rows > self.height:
            raise InvalidInputError(f"band of shape {band.shape} at row {y0} does not fit a {self.height}x{self.width} mask")
        g = self.cell
        first, last = y0 // g, (y0 + rows - 1) // g
        # Sum the rows of each cell row (np.sum along axis 0 is a vectorised row add; reduceat is ~50x slower),
        # one cell row at a time so that the boolean temporary is one cell row, not the band.
        acc = np.uint8 if g <= 255 else np.int32
        per_row_cell = np.empty((last - first + 1, self.width), dtype=acc)
        for i, cell_row in enumerate(range(first, last + 1)):
            part = band[max(cell_row * g - y0, 0) : min((cell_row + 1) * g - y0, rows)]
            valid = (part if part.dtype == np.bool_ else part != 0).view(np.uint8)
            np.sum(valid, axis=0, dtype=acc, out=per_row_cell[i])
        ncx = self.counts.shape[1]
        full = (self.width // g) * g
        out = self.counts[first : last + 1]
        if full:
            out[:, : full // g] += per_row_cell[:, :full].reshape(len(per_row_cell), full // g, g).sum(axis=2, dtype=np.int32)
        if full < self.width:
            out[:, ncx - 1] += per_row_cell[:, full:].sum(axis=1, dtype=np.int32)


def mask_cell_counts(mask: np.ndarray, cell: int) -> np.ndarray:
    """:class:`CellCounter` counts of a whole in-memory mask, in bands of bounded size."""
    height, width = mask.shape
    counter = CellCounter(height, width, cell)
    band = max(cell, (_BAND_PIXELS // max(width, 1)) // cell * cell)
    for y0 in range(0, height, band):
        counter.add(y0, mask[y0 : y0 + band])
    return counter.counts


# ------------------------------------------------------------------ the grid of candidates


@dataclass(frozen=True)
class _Candidates:
    """The stride grid of candidate tiles over a padded cell grid."""

    height: int
    width: int
    size: int
    stride: int
    cell: int

    @property
    def step(self) -> int:  # candidate step in cells
        return self.stride // self.cell

    @property
    def span(self) -> int:  # tile edge in cells
        return self.size // self.cell

    @property
    def shape(self) -> tuple[int, int]:
        return -(-self.height // self.stride), -(-self.width // self.stride)

    def padded(self, counts: np.ndarray) -> np.ndarray:
        """``counts`` as int64, zero-padded to cover every candidate's cells."""
        na, nb = self.shape
        ny = max((na - 1) * self.step + self.span, counts.shape[0])
        nx = max((nb - 1) * self.step + self.span, counts.shape[1])
        out = np.zeros((ny, nx), dtype=np.int64)
        out[: counts.shape[0], : counts.shape[1]] = counts
        return out

    def box_sums(self, cells: np.ndarray) -> np.ndarray:
        """``(na, nb)`` sums of ``cells`` over each candidate's span (one integral image)."""
        na, nb = self.shape
        k, m = self.step, self.span
        integral = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1), dtype=np.int64)
        np.cumsum(np.cumsum(cells, axis=0), axis=1, out=integral[1:, 1:])
        r0, c0 = np.arange(na) * k, np.arange(nb) * k
        return integral[np.ix_(r0 + m, c0 + m)] - integral[np.ix_(r0, c0 + m)] - integral[np.ix_(r0 + m, c0)] + integral[np.ix_(r0, c0)]

    def eligible(self, valid: np.ndarray, tolerance: float) -> np.ndarray:
        """Candidates whose invalid fraction (pixels past the edge included) is at most ``tolerance``."""
        area = self.size * self.size
        return (area - valid) / area <= tolerance

    def pixel_mask(self, covered_cells: np.ndarray) -> np.ndarray:
        """A cell-level boolean grid expanded to ``(H, W)`` pixels."""
        g = self.cell
        rows = min(covered_cells.shape[0], -(-self.height // g))
        cols = min(covered_cells.shape[1], -(-self.width // g))
        out = np.repeat(np.repeat(covered_cells[:rows, :cols], g, axis=0), g, axis=1)
        return out[: self.height, : self.width]


def _stats(
    candidates: _Candidates, tiles: list[Tile], total: int, covered: int, stop_reason: str, eligible: int, **parameters: Any
) -> dict[str, Any]:
    return {
        "tiles": len(tiles),
        "coverage": covered / total if total else 0.0,
        "valid_pixels": int(total),
        "covered_pixels": int(covered),
        "stop_reason": stop_reason,
        "candidates": int(candidates.shape[0] * candidates.shape[1]),
        "eligible_candidates": int(eligible),
        "height": candidates.height,
        "width": candidates.width,
        "tile_size": candidates.size,
        "stride": candidates.stride,
        **parameters,
    }


def _progress_bar(enabled: bool, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="px", unit_scale=True, disable=not enabled, file=sys.stderr, leave=False)


# ------------------------------------------------------------------ best coverage


def best_tiling_from_counts(
    counts: np.ndarray,
    height: int,
    width: int,
    tile_size: int,
    stride: int | None = None,
    tolerance: float = 0.2,
    coverage_goal: float = 0.99,
    min_gain_ratio: float = 0.05,
    max_tiles: int | None = None,
    allow_overlap: bool = True,
    progress: bool = False,
    progress_desc: str = "Tiling",
    *,
    covered_cells: bool = False,
) -> tuple[list[Tile], dict[str, Any], np.ndarray | None]:
    """The greedy best-coverage tiling from cell counts (see :func:`best_mask_tiling_try_to_stop`).

    Parameters
    ----------
    counts
        :class:`CellCounter` counts for cells of ``gcd(tile_size, stride)``.
    height, width
        Mask shape in pixels.
    covered_cells
        Also return the boolean grid of cells inside a picked tile.

    Returns
    -------
    tiles, stats, covered
        As :func:`best_mask_tiling_try_to_stop`, with the covered *cell* grid
        (or ``None``) in place of the pixel mask.
    """
    size, step, tolerance, coverage_goal, min_gain_ratio, max_tiles = check_parameters(
        tile_size, stride, tolerance, coverage_goal, min_gain_ratio, max_tiles
    )
    grid = _Candidates(int(height), int(width), size, step, math.gcd(size, step))
    if counts.shape != (-(-grid.height // grid.cell), -(-grid.width // grid.cell)):
        raise InvalidInputError(f"cell counts of shape {counts.shape} do not match a {height}x{width} mask with cells of {grid.cell}")
    uncovered = grid.padded(counts)
    valid = grid.box_sums(uncovered)
    ok = grid.eligible(valid, tolerance) & (valid > 0)
    na, nb = grid.shape
    n = na * nb
    flat = np.flatnonzero(ok)
    # One int per heap entry: -gain * n + flat orders by gain (largest first), then row, then column.
    heap = (-valid.ravel()[flat] * n + flat).tolist()
    heapq.heapify(heap)
    k, m, area = grid.step, grid.span, size * size
    covered_grid = np.zeros(uncovered.shape, dtype=bool) if covered_cells else None
    blocked = None if allow_overlap else np.zeros((na, nb), dtype=bool)
    reach = -(-size // step) - 1  # candidates within this many steps overlap a tile
    total = int(counts.sum(dtype=np.int64))
    goal = coverage_goal * total
    covered = 0
    tiles: list[Tile] = []
    stop = "no_gain"
    with _progress_bar(progress, total, progress_desc) as bar:
        while heap:
            if max_tiles is not None and len(tiles) >= max_tiles:
                stop = "max_tiles"
                break
            key = heapq.heappop(heap)
            index = key % n
            stored = (index - key) // n
            a, b = divmod(index, nb)
            if blocked is not None and blocked[a, b]:
                continue
            y, x = a * k, b * k
            window = uncovered[y : y + m, x : x + m]
            gain = int(window.sum())
            if gain != stored:  # stale: gains only shrink, so push it back with its true gain
                if gain > 0:
                    heapq.heappush(heap, -gain * n + index)
                continue
            if covered >= goal and (min_gain_ratio == 0 or gain / area < min_gain_ratio):
                stop = "goal_reached"
                break
            window[...] = 0
            if covered_grid is not None:
                covered_grid[y : y + m, x : x + m] = True
            if blocked is not None:
                blocked[max(0, a - reach) : a + reach + 1, max(0, b - reach) : b + reach + 1] = True
            covered += gain
            tiles.append(Tile(a * step, b * step, size, gain, int(valid[a, b])))
            bar.update(gain)
    if not total:
        stop = "empty_mask"
    stats = _stats(
        grid,
        tiles,
        total,
        covered,
        stop,
        int(ok.sum()),
        strategy="best",
        tolerance=tolerance,
        coverage_goal=coverage_goal,
        min_gain_ratio=min_gain_ratio,
        max_tiles=max_tiles,
        allow_overlap=bool(allow_overlap),
    )
    return tiles, stats, covered_grid


def best_mask_tiling_try_to_stop(
    mask: np.ndarray,
    tile_size: int,
    stride: int | None = None,
    tolerance: float = 0.2,
    coverage_goal: float = 0.99,
    min_gain_ratio: float = 0.05,
    max_tiles: int | None = None,
    allow_overlap: bool = True,
    progress: bool = False,
    progress_desc: str = "Tiling",
) -> tuple[list[Tile], dict[str, Any], np.ndarray]:
    """Find a good tiling of the unmasked region with adaptive stopping.

    Greedy: each step picks the candidate on the stride grid that covers the
    most valid pixels not yet covered; ties go to the lowest row, then the
    lowest column. Stopping needs TWO criteria to hold:
    ``covered_valid / total_valid >= coverage_goal`` and
    ``best_gain / tile_size**2 < min_gain_ratio``; ``min_gain_ratio=0`` stops
    as soon as the goal is reached (hard cut-off). It also stops when no
    candidate adds a valid pixel, or at ``max_tiles``.

    Parameters
    ----------
    mask
        ``(H, W)`` mask; non-zero is valid (tissue), zero is masked.
    tile_size
        Tile edge ``C``; tiles are ``C x C``. A tile larger than the mask is
        the one edge window at ``(0, 0)`` (see ``tolerance``).
    stride
        Step of the candidate grid; default ``tile_size``.
    tolerance
        Maximum fraction of invalid pixels inside a tile (0 = strict); pixels
        past the mask's edge are invalid. In ``[0, 1]``.
    coverage_goal
        Soft lower bound on coverage, in ``[0, 1]``.
    min_gain_ratio
        Soft upper bound on marginal efficiency, in ``[0, 1)``.
    max_tiles
        Hard cap on the number of tiles.
    allow_overlap
        ``False``: picked tiles never overlap.
    progress, progress_desc
        A tqdm bar (valid pixels covered) on stderr, and its label.

    Returns
    -------
    tiles : list of Tile
        In pick order.
    stats : dict
        ``tiles``, ``coverage`` (0.0 for an empty mask), ``valid_pixels``,
        ``covered_pixels``, ``stop_reason`` (``goal_reached``, ``no_gain``,
        ``max_tiles``, ``empty_mask``), candidate counts and the parameters.
    covered_mask : numpy.ndarray
        ``(H, W)`` bool, True inside a picked tile.
    """
    size, step, *_ = check_parameters(tile_size, stride, tolerance, coverage_goal, min_gain_ratio, max_tiles)
    array = _check_mask(mask, size)
    cell = math.gcd(size, step)
    counts = mask_cell_counts(array, cell)
    height, width = array.shape
    tiles, stats, cells = best_tiling_from_counts(
        counts,
        height,
        width,
        size,
        step,
        tolerance,
        coverage_goal,
        min_gain_ratio,
        max_tiles,
        allow_overlap,
        progress,
        progress_desc,
        covered_cells=True,
    )
    assert cells is not None
    return tiles, stats, _Candidates(height, width, size, step, cell).pixel_mask(cells)


# ------------------------------------------------------------------ grid


def grid_tiling_from_counts(
    counts: np.ndarray,
    height: int,
    width: int,
    tile_size: int,
    stride: int | None = None,
    tolerance: float = 0.2,
    *,
    covered_cells: bool = False,
) -> tuple[list[Tile], dict[str, Any], np.ndarray | None]:
    """The grid tiling from cell counts (see :func:`get_grid_tile`)."""
    size, step, tolerance, *_ = check_parameters(tile_size, stride, tolerance)
    grid = _Candidates(int(height), int(width), size, step, math.gcd(size, step))
    if counts.shape != (-(-grid.height // grid.cell), -(-grid.width // grid.cell)):
        raise InvalidInputError(f"cell counts of shape {counts.shape} do not match a {height}x{width} mask with cells of {grid.cell}")
    cells = grid.padded(counts)
    valid = grid.box_sums(cells)
    keep = grid.eligible(valid, tolerance)
    rows, cols = np.nonzero(keep)
    k, m = grid.step, grid.span
    covered_grid = np.zeros(cells.shape, dtype=bool)
    if step >= size:  # no overlap: a tile's gain is its valid count
        gains = valid[rows, cols].tolist()
        for a, b in zip(rows.tolist(), cols.tolist()):
            covered_grid[a * k : a * k + m, b * k : b * k + m] = True
    else:  # overlapping windows: gains in row-major order
        gains = []
        for a, b in zip(rows.tolist(), cols.tolist()):
            window = cells[a * k : a * k + m, b * k : b * k + m]
            gains.append(int(window.sum()))
            window[...] = 0
            covered_grid[a * k : a * k + m, b * k : b * k + m] = True
    inside = valid[rows, cols].tolist()
    tiles = [Tile(a * step, b * step, size, int(gain), int(v)) for a, b, gain, v in zip(rows.tolist(), cols.tolist(), gains, inside)]
    total = int(counts.sum(dtype=np.int64))
    covered = int(sum(gains))
    stats = _stats(
        grid,
        tiles,
        total,
        covered,
        "empty_mask" if not total else "grid",
        len(tiles),
        strategy="grid",
        tolerance=tolerance,
        coverage_goal=None,
        min_gain_ratio=None,
        max_tiles=None,
        allow_overlap=None,
    )
    return tiles, stats, covered_grid if covered_cells else None


def get_grid_tile(
    mask: np.ndarray,
    tile_size: int,
    stride: int | None = None,
    tolerance: float = 0.2,
) -> tuple[list[Tile], dict[str, Any], np.ndarray]:
    """Fixed-grid tiles over a mask, edge windows included.

    The mask extent is padded with background so that edge windows are
    considered; a window is kept when its tissue fraction is at least
    ``1 - tolerance`` (its invalid fraction at most ``tolerance``, pixels past
    the edge invalid). Kept windows keep their top-left ``row``/``col`` even
    when they reach past the image (the datasets pad them for non-default
    strategies).

    Parameters
    ----------
    mask
        ``(H, W)`` mask; non-zero is valid.
    tile_size
        Tile edge in pixels (larger than the mask: the one window at ``(0, 0)``).
    stride
        Grid step; default ``tile_size``.
    tolerance
        Maximum invalid fraction inside a kept window, in ``[0, 1]``.

    Returns
    -------
    tiles, stats, covered_mask
        Kept tiles in row-major order (``gain``: new valid pixels in that
        order), the stats of :func:`best_mask_tiling_try_to_stop` (strategy
        ``grid``) and the ``(H, W)`` mask of pixels inside a kept tile.
    """
    size, step, *_ = check_parameters(tile_size, stride, tolerance)
    array = _check_mask(mask, size)
    cell = math.gcd(size, step)
    height, width = array.shape
    tiles, stats, cells = grid_tiling_from_counts(mask_cell_counts(array, cell), height, width, size, step, tolerance, covered_cells=True)
    assert cells is not None
    return tiles, stats, _Candidates(height, width, size, step, cell).pixel_mask(cells)
