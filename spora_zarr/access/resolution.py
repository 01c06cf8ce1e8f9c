"""The resolution value type: microns per pixel and the pyramid level name it gives.

A resolution reaches the library as a number (``1.0``, ``0.65``, ``2``), as
text (``"1.0"``) or as a level name (``"1_0mpp"``, ``"0_65mpp"``);
:func:`parse_resolution` is the one parser that turns any of them into a
:class:`Resolution`, at the API edge, and the code below passes that on.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from functools import total_ordering
from typing import TypeAlias

from ..errors import InvalidInputError

_LEVEL_NAME = re.compile(r"^(\d+)_(\d+)mpp$")
_EXPECTED = "a resolution: expected a positive number of microns per pixel (1.0, 0.65) or a level name like '1_0mpp' or '0_65mpp'"


def _level_name(mpp: float) -> str:
    """``1.0 -> "1_0mpp"``, ``0.65 -> "0_65mpp"``: dots to underscores, at least one decimal, at most six."""
    text = f"{mpp:.6f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    return text.replace(".", "_") + "mpp"


@total_ordering
@dataclass(frozen=True, eq=False)
class Resolution:
    """A pixel size in microns per pixel (``mpp``) and its pyramid level name (``str(r)`` is ``"1_0mpp"``).

    Two resolutions are equal (and hash alike) when they name the same level;
    they order by ``mpp``. Build one with :func:`parse_resolution`.
    """

    mpp: float

    def __post_init__(self) -> None:
        value = self.mpp
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"resolution={value!r} is not {_EXPECTED}")
        if not math.isfinite(value) or value <= 0:
            raise InvalidInputError(f"resolution={value!r} is not {_EXPECTED}")
        object.__setattr__(self, "mpp", float(value))

    @property
    def name(self) -> str:
        """The level (and directory) name: ``"1_0mpp"``, ``"0_65mpp"``."""
        return _level_name(self.mpp)

    def __str__(self) -> str:
        return self.name

    def __float__(self) -> float:
        return self.mpp

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resolution):
            return NotImplemented
        return self.name == other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Resolution):
            return NotImplemented
        return self.mpp < other.mpp and self != other


ResolutionLike: TypeAlias = Resolution | float | int | str
"""What every public function accepts as a resolution: a :class:`Resolution`, a number, ``"1.0"`` or ``"1_0mpp"``."""


def is_level_name(text: str) -> bool:
    """Whether ``text`` is a resolution level name such as ``"1_0mpp"``."""
    return bool(_LEVEL_NAME.match(text))


def parse_resolution(value: object) -> Resolution:
    """The :class:`Resolution` of ``value``: a Resolution, a number, ``"1.0"`` or a level name ``"1_0mpp"``.

    Raises
    ------
    InvalidInputError
        One line ``resolution=... is not ...`` for anything else (``True``,
        ``"1.0mpp"``, ``"1_0"``, zero, negative, NaN, infinity).
    """
    if isinstance(value, Resolution):
        return value
    if isinstance(value, str):
        text = value.strip()
        match = _LEVEL_NAME.match(text)
        if match:
            return Resolution(float(f"{match.group(1)}.{match.group(2)}"))
        if "_" in text:  # float() reads "1_0" as 10.0
            raise InvalidInputError(f"resolution={value!r} is not {_EXPECTED}")
        try:
            number = float(text)
        except ValueError:
            raise InvalidInputError(f"resolution={value!r} is not {_EXPECTED}") from None
        if not math.isfinite(number) or number <= 0:
            raise InvalidInputError(f"resolution={value!r} is not {_EXPECTED}")
        return Resolution(number)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"resolution={value!r} is not {_EXPECTED}")
    if isinstance(value, (int, float)):
        return Resolution(value)
    return parse_resolution(str(value))  # numpy scalars: np.float32(0.65) is 0.65, as written
