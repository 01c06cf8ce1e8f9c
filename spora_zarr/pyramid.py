"""Pyramid levels: which levels an image gets, and the 2x2 reductions that compute them.

The reductions are streaming (numpy, one block at a time) implementations of
ngff-zarr's methods, sample for sample:

- :func:`bin_shrink` is ``Methods.DASK_BIN_SHRINK``: the 2x2 mean of the
  previous level, remainder trimmed, integers rounded half up, dtype kept.
- :func:`mode_shrink` is ``Methods.DASK_IMAGE_MODE`` for labels: the most
  frequent label of each 2x2 window, the smallest on a tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from .layout import resolution_name


class Method(str, Enum):
    """How computed levels are reduced from the level above them."""

    BIN_SHRINK = "dask_bin_shrink"
    MODE = "dask_image_mode"


def bin_shrink(block: np.ndarray) -> np.ndarray:
    """2x2 mean over the last two axes, remainder trimmed, integers rounded half up."""
    h, w = block.shape[-2] // 2 * 2, block.shape[-1] // 2 * 2
    a, b = block[..., 0:h:2, 0:w:2], block[..., 0:h:2, 1:w:2]
    c, d = block[..., 1:h:2, 0:w:2], block[..., 1:h:2, 1:w:2]
    dtype = block.dtype
    if np.issubdtype(dtype, np.integer):
        if dtype.itemsize <= 2:
            acc = np.uint32 if np.issubdtype(dtype, np.unsignedinteger) else np.int32
        elif dtype.itemsize == 4:
            acc = np.int64 if np.issubdtype(dtype, np.signedinteger) else np.uint64
        else:
            return _bin_shrink_wide(a, b, c, d, dtype)
        total = a.astype(acc)
        total += b
        total += c
        total += d
        total += 2
        total //= 4  # floor(sum / 4 + 1/2): floor division, so negative sums round half up too
        return total.astype(dtype)
    windows = np.stack([a, b, c, d], axis=-1).astype(np.float64)
    return np.mean(windows, axis=-1).astype(dtype)


def _bin_shrink_wide(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Half-up mean of 64-bit integers without leaving the dtype (as ngff-zarr does)."""
    four, two = dtype.type(4), dtype.type(2)
    quotient = a // four + b // four + c // four + d // four
    remainder = a % four + b % four + c % four + d % four
    return (quotient + (two * remainder + four) // (two * four)).astype(dtype)


def mode_shrink(block: np.ndarray) -> np.ndarray:
    """Most frequent value of each 2x2 window over the last two axes, the smallest on a tie."""
    h, w = block.shape[-2] // 2 * 2, block.shape[-1] // 2 * 2
    windows = np.stack(
        [block[..., 0:h:2, 0:w:2], block[..., 0:h:2, 1:w:2], block[..., 1:h:2, 0:w:2], block[..., 1:h:2, 1:w:2]],
        axis=-1,
    )
    windows.sort(axis=-1)
    position = np.arange(4, dtype=np.int8)
    run_starts = np.ones(windows.shape, dtype=bool)
    np.not_equal(windows[..., 1:], windows[..., :-1], out=run_starts[..., 1:])
    run_start = np.maximum.accumulate(np.where(run_starts, position, np.int8(0)), axis=-1)
    longest = np.argmax(position - run_start, axis=-1)
    return np.take_along_axis(windows, longest[..., None], axis=-1)[..., 0]


SHRINK = {Method.BIN_SHRINK: bin_shrink, Method.MODE: mode_shrink}


@dataclass(frozen=True)
class Level:
    """One pyramid level: its name, microns per pixel, shape, and whether a source file provides it."""

    name: str
    mpp: float
    shape: tuple[int, int, int]
    from_source: bool


def plan_levels(source_shapes: dict[float, tuple[int, int, int]], *, max_top_size: int = 2048) -> list[Level]:
    """Levels for an image given the ``(C, H, W)`` shape of each source resolution.

    Every source resolution is a level, stored pixel-exact; then coarser levels
    are computed by halving the coarsest source until the longest side fits
    ``max_top_size``. Levels are ordered finest first.
    """
    levels = [Level(resolution_name(mpp), mpp, shape, True) for mpp, shape in sorted(source_shapes.items())]
    while max(levels[-1].shape[1:]) > max_top_size and min(levels[-1].shape[1:]) >= 2:
        last = levels[-1]
        mpp = last.mpp * 2
        levels.append(Level(resolution_name(mpp), mpp, (last.shape[0], last.shape[1] // 2, last.shape[2] // 2), False))
    return levels


def check_source_shapes(source_shapes: dict[float, tuple[int, int, int]], name: str) -> str | None:
    """Why the source resolutions of one image disagree with each other, or ``None``."""
    (fine_mpp, fine), *rest = sorted(source_shapes.items())
    for mpp, shape in rest:
        if shape[0] != fine[0]:
            return f"{name}: {resolution_name(mpp)} has {shape[0]} channels but {resolution_name(fine_mpp)} has {fine[0]}"
        for axis, label in ((1, "height"), (2, "width")):
            expected = fine[axis] * fine_mpp / mpp
            if abs(shape[axis] - expected) > 2 + 0.02 * expected:
                return (
                    f"{name}: {resolution_name(mpp)} {label} {shape[axis]} does not match "
                    f"{resolution_name(fine_mpp)} {label} {fine[axis]} scaled to {mpp:g} mpp (~{expected:.0f})"
                )
    return None
