"""``Window``: the one box type of the package, 2-D ``(y, x)`` or 3-D ``(z, y, x)``.

A window is a half-open box of whole pixels, ``start <= pixel < stop`` on each
axis, in the axis order of the arrays it indexes (``z`` before ``y`` before
``x``). The conventions in use elsewhere become windows through one
constructor each:

======================================  ==========================================
``(y0, y1, x0, x1)`` (ImageSource.read)  :meth:`Window.from_bounds`
``(y0, x0, h, w)`` (LevelReader.read)    :meth:`Window.from_corner`
slices                                   :meth:`Window.from_slices`
``(z0, y0, x0, z1, y1, x1)`` (mosaics)   :meth:`Window.from_box`
offsets ``(x, y, z)`` and a shape        :meth:`Window.from_offset`
======================================  ==========================================

A window may be empty (a stop equal to its start) and may lie partly outside an
image (a tile at the edge starts at a negative row); :meth:`clip` and
:meth:`intersect` give ``None`` when nothing is left. Coordinates are ints:
bools, floats (NaN included) and strings are refused, not rounded.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["Window", "as_int"]


def as_int(value: Any, what: str = "coordinate") -> int:
    """``value`` as an ``int`` if it is a whole number (``int`` or a numpy integer), else an ``InvalidInputError``.

    Bools, floats (NaN included) and strings are refused rather than coerced.
    """
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise InvalidInputError(f"window {what} must be a whole number, got {value!r} ({type(value).__name__})")


def _ints(values: Iterable[Any], what: str) -> tuple[int, ...]:
    if type(values) is tuple and all(type(v) is int for v in values):  # the common case, a few times a tile: as it is
        return values
    return tuple(as_int(v, what) for v in values)


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open box ``start <= pixel < stop`` on 2 (``y, x``) or 3 (``z, y, x``) axes.

    Build one with a ``from_*`` constructor, or ``Window(start, stop)`` with two
    sequences of ints of the same length.
    """

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        start, stop = _ints(self.start, "start"), _ints(self.stop, "stop")
        if len(start) not in (2, 3) or len(stop) != len(start):
            raise InvalidInputError(f"a window has 2 or 3 axes with a start and a stop each, got start {start} and stop {stop}")
        if any(b < a for a, b in zip(start, stop)):
            raise InvalidInputError(f"window stop {stop} lies before its start {start}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    # -- constructors ----------------------------------------------------------------
    @classmethod
    def from_bounds(cls, y0: int, y1: int, x0: int, x1: int) -> Window:
        """The 2-D window ``(y0, y1, x0, x1)`` (the convention of ``ImageSource.read``)."""
        return cls((y0, x0), (y1, x1))

    @classmethod
    def from_corner(cls, y0: int, x0: int, height: int, width: int) -> Window:
        """The 2-D window of ``height x width`` pixels at ``(y0, x0)`` (the convention of ``LevelReader.read``)."""
        y0, x0, height, width = _ints((y0, x0, height, width), "corner or size")
        if height < 0 or width < 0:
            raise InvalidInputError(f"window size must be >= 0, got {height}x{width}")
        return cls((y0, x0), (y0 + height, x0 + width))

    @classmethod
    def from_slices(cls, *slices: slice) -> Window:
        """The window of 2 or 3 slices with a start, a stop and no step (``np.s_[0:10, 5:20]``)."""
        if len(slices) == 1 and isinstance(slices[0], tuple):
            slices = slices[0]
        for s in slices:
            if not isinstance(s, slice) or s.start is None or s.stop is None or s.step not in (None, 1):
                raise InvalidInputError(f"a window needs slices with a start, a stop and no step, got {s!r}")
        return cls(tuple(s.start for s in slices), tuple(s.stop for s in slices))

    @classmethod
    def from_box(cls, z0: int, y0: int, x0: int, z1: int, y1: int, x1: int) -> Window:
        """The 3-D window ``(z0, y0, x0, z1, y1, x1)`` (the convention of mosaic tiles)."""
        return cls((z0, y0, x0), (z1, y1, x1))

    @classmethod
    def from_offset(cls, offset: Sequence[Any], shape: Sequence[int]) -> Window:
        """The window of ``shape`` (``(z, y, x)`` or ``(y, x)``) placed at ``offset`` ``(x, y[, z])``.

        Offsets are in the stitchers' ``(x, y, z)`` order and may be fractional
        (registration output): they are rounded to the nearest pixel here, the one
        place a window rounds. NaN or infinite offsets are refused.
        """
        if len(offset) != len(shape):
            raise InvalidInputError(f"offset {tuple(offset)} (x, y[, z]) and shape {tuple(shape)} need the same number of axes")
        corner = []
        for value in reversed(tuple(offset)):
            if isinstance(value, (bool, np.bool_, str)):
                raise InvalidInputError(f"window offset must be a number, got {value!r} ({type(value).__name__})")
            number = float(value)
            if not math.isfinite(number):
                raise InvalidInputError(f"window offset must be finite, got {value!r}")
            corner.append(int(round(number)))
        size = _ints(shape, "shape")
        return cls(tuple(corner), tuple(c + n for c, n in zip(corner, size)))

    @classmethod
    def of_shape(cls, shape: Sequence[int]) -> Window:
        """The whole of an array of ``shape`` (its last 2 or 3 axes are the window's)."""
        return cls((0,) * len(shape), tuple(shape))

    # -- views -----------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def shape(self) -> tuple[int, ...]:
        """Pixels on each axis."""
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def size(self) -> int:
        """Pixels in the window (0 when empty)."""
        return math.prod(self.shape)

    @property
    def empty(self) -> bool:
        return self.size == 0

    @property
    def slices(self) -> tuple[slice, ...]:
        """Slices indexing the window in an array whose last axes are the window's (``array[..., *w.slices]``)."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def index(self) -> tuple[Any, ...]:
        """``(..., *slices)``: the window in an array with leading axes (channels), ``array[w.index]``."""
        return (Ellipsis, *self.slices)

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of a 2-D window (``ImageSource.read``'s arguments)."""
        self._require_2d("bounds")
        return self.start[0], self.stop[0], self.start[1], self.stop[1]

    @property
    def corner(self) -> tuple[int, int, int, int]:
        """``(y0, x0, h, w)`` of a 2-D window (``LevelReader.read``'s arguments)."""
        self._require_2d("corner")
        return self.start[0], self.start[1], self.stop[0] - self.start[0], self.stop[1] - self.start[1]

    @property
    def box(self) -> tuple[int, int, int, int, int, int]:
        """``(z0, y0, x0, z1, y1, x1)`` of a 3-D window."""
        if self.ndim != 3:
            raise InvalidInputError(f"box needs a 3-D window, got {self}")
        z0, y0, x0 = self.start
        z1, y1, x1 = self.stop
        return z0, y0, x0, z1, y1, x1

    # -- arithmetic ------------------------------------------------------------------
    def intersect(self, other: Window) -> Window | None:
        """The pixels in both windows, or ``None`` when they do not meet."""
        self._same_axes(other)
        start = tuple(max(a, b) for a, b in zip(self.start, other.start))
        stop = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        if any(b <= a for a, b in zip(start, stop)):
            return None
        return Window(start, stop)

    def clip(self, shape: Sequence[int]) -> Window | None:
        """The part inside an array of ``shape`` (its last ``ndim`` axes), or ``None`` when the window lies outside."""
        return self.intersect(Window.of_shape(tuple(shape)[-self.ndim :]))

    def subtract(self, other: Window) -> list[Window]:
        """This window less ``other``, as at most ``2 * ndim`` disjoint windows.

        Slabs before and after ``other`` on the first axis (full extent on the
        others), then on the next axis within the first's overlap, and so on: the
        order careamics-style strip caches and last-wins mosaics rely on.
        """
        inner = self.intersect(other)
        if inner is None:
            return [] if self.empty else [self]
        pieces = []
        start, stop = list(self.start), list(self.stop)
        for axis in range(self.ndim):
            if start[axis] < inner.start[axis]:
                pieces.append(Window(tuple(start), (*stop[:axis], inner.start[axis], *stop[axis + 1 :])))
            if inner.stop[axis] < stop[axis]:
                pieces.append(Window((*start[:axis], inner.stop[axis], *start[axis + 1 :]), tuple(stop)))
            start[axis], stop[axis] = inner.start[axis], inner.stop[axis]
        return pieces

    def translate(self, offset: Sequence[int]) -> Window:
        """The window moved by ``offset`` (one int per axis, in the window's axis order)."""
        shift = _ints(offset, "offset")
        if len(shift) != self.ndim:
            raise InvalidInputError(f"a {self.ndim}-D window moves by {self.ndim} ints, got {tuple(offset)}")
        return Window(tuple(a + d for a, d in zip(self.start, shift)), tuple(b + d for b, d in zip(self.stop, shift)))

    def relative_to(self, origin: Window) -> Window:
        """This window in the coordinates of ``origin`` (its start becomes 0): where it lies in an array read at ``origin``."""
        self._same_axes(origin)
        return self.translate(tuple(-a for a in origin.start))

    def grow(self, margin: int) -> Window:
        """The window widened by ``margin`` pixels on every side of its last two axes."""
        margin = as_int(margin, "margin")
        pad = (0,) * (self.ndim - 2) + (margin, margin)
        return Window(tuple(a - m for a, m in zip(self.start, pad)), tuple(b + m for b, m in zip(self.stop, pad)))

    # -- helpers ---------------------------------------------------------------------
    def _same_axes(self, other: Window) -> None:
        if not isinstance(other, Window) or other.ndim != self.ndim:
            raise InvalidInputError(f"{self} and {other!r} need the same number of axes")

    def _require_2d(self, what: str) -> None:
        if self.ndim != 2:
            raise InvalidInputError(f"{what} needs a 2-D window, got {self}")

    def __str__(self) -> str:
        return "[" + ", ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop)) + "]"
