"""``Window``: each constructor, and intersect/subtract/clip in 2-D and 3-D against a numpy mask reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spora_zarr.access import Window
from spora_zarr.errors import InvalidInputError

SPACE = 12  # windows are drawn inside [-SPACE, SPACE) per axis; masks are indexed with +SPACE


def _random_window(rng: np.random.Generator, ndim: int) -> Window:
    a = rng.integers(-SPACE, SPACE, size=ndim)
    b = rng.integers(-SPACE, SPACE, size=ndim)
    return Window(tuple(int(v) for v in np.minimum(a, b)), tuple(int(v) for v in np.maximum(a, b)))


def _mask(window: Window | None, ndim: int) -> np.ndarray:
    """The window's pixels as a boolean mask over the test space."""
    mask = np.zeros((2 * SPACE,) * ndim, bool)
    if window is not None:
        mask[window.translate((SPACE,) * ndim).slices] = True
    return mask


def test_constructors_agree():
    w = Window((2, 3), (7, 11))
    assert Window.from_bounds(2, 7, 3, 11) == w
    assert Window.from_corner(2, 3, 5, 8) == w
    assert Window.from_slices(slice(2, 7), slice(3, 11)) == w
    assert Window.from_slices(np.s_[2:7, 3:11]) == w
    assert (w.bounds, w.corner, w.shape, w.size) == ((2, 7, 3, 11), (2, 3, 5, 8), (5, 8), 40)
    assert np.zeros((20, 20))[w.slices].shape == (5, 8)

    v = Window((1, 2, 3), (4, 6, 9))
    assert Window.from_box(1, 2, 3, 4, 6, 9) == v
    assert v.box == (1, 2, 3, 4, 6, 9)
    assert Window.from_offset((3, 2, 1), (3, 4, 6)) == v  # offsets (x, y, z), shape (z, y, x)
    assert Window.from_offset((2.6, 1.4), (5, 5)) == Window((1, 3), (6, 8))  # the one rounding constructor
    assert Window.of_shape((3, 5, 7)) == Window((0, 0, 0), (3, 5, 7))
    assert Window.from_corner(np.int64(4), np.int32(5), 1, 1).start == (4, 5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Window.from_bounds(0, 5.0, 0, 5),
        lambda: Window.from_bounds(0, float("nan"), 0, 5),
        lambda: Window.from_corner(True, 0, 4, 4),
        lambda: Window.from_corner(np.bool_(False), 0, 4, 4),
        lambda: Window.from_corner("1", 0, 4, 4),
        lambda: Window.from_corner(0, 0, -1, 4),
        lambda: Window.from_bounds(5, 4, 0, 1),
        lambda: Window((0,), (1,)),
        lambda: Window((0, 0), (1, 1, 1)),
        lambda: Window.from_slices(slice(0, 4, 2), slice(0, 4)),
        lambda: Window.from_slices(slice(None, 4), slice(0, 4)),
        lambda: Window.from_offset((float("nan"), 0), (4, 4)),
        lambda: Window.from_offset((True, 0), (4, 4)),
        lambda: Window.from_offset((0, 0, 0), (4, 4)),
        lambda: Window((0, 0), (4, 4)).translate((1.5, 0)),
        lambda: Window((0, 0), (4, 4)).intersect(Window((0, 0, 0), (1, 1, 1))),
        lambda: Window((0, 0, 0), (4, 4, 4)).bounds,
        lambda: Window((0, 0), (4, 4)).box,
    ],
)
def test_bad_values_are_refused(build):
    with pytest.raises(InvalidInputError, match="window|axes|needs"):
        build()


@pytest.mark.parametrize("ndim", [2, 3])
def test_intersect_subtract_clip_match_masks(ndim):
    rng = np.random.default_rng(ndim)
    for _ in range(300):
        a, b = _random_window(rng, ndim), _random_window(rng, ndim)
        ma, mb = _mask(a, ndim), _mask(b, ndim)

        meet = a.intersect(b)
        assert np.array_equal(_mask(meet, ndim), ma & mb)
        assert meet is None or not meet.empty

        pieces = a.subtract(b)
        assert len(pieces) <= 2 * ndim
        covered = np.zeros_like(ma, dtype=int)
        for piece in pieces:
            assert not piece.empty
            covered += _mask(piece, ndim)
        assert covered.max(initial=0) <= 1  # disjoint
        assert np.array_equal(covered.astype(bool), ma & ~mb)

        shape = tuple(int(v) for v in rng.integers(1, SPACE, size=ndim))
        clipped = a.clip(shape)
        inside = np.zeros_like(ma)
        inside[tuple(slice(SPACE, SPACE + n) for n in shape)] = True
        assert np.array_equal(_mask(clipped, ndim), ma & inside)


def test_subtract_order_and_relative():
    # bands above and below first (full width), then left and right within the overlap
    w, cut = Window((0, 0), (10, 10)), Window((3, 4), (6, 8))
    assert w.subtract(cut) == [
        Window((0, 0), (3, 10)),
        Window((6, 0), (10, 10)),
        Window((3, 0), (6, 4)),
        Window((3, 8), (6, 10)),
    ]
    assert w.subtract(Window((20, 20), (30, 30))) == [w]
    assert w.subtract(w) == []
    assert cut.relative_to(w.translate((1, 1))) == Window((2, 3), (5, 7))
    assert Window((2, 3, 4), (3, 5, 6)).grow(2) == Window((2, 1, 2), (3, 7, 8))
    assert math.prod(Window((0, 0), (0, 5)).shape) == 0 and Window((0, 0), (0, 5)).empty
    assert Window((0, 0), (4, 4)).clip((2, 3, 3)) == Window((0, 0), (3, 3))  # the last axes of an image shape
    assert Window((5, 5), (8, 8)).clip((4, 4)) is None
