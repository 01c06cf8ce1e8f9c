"""The access layer: value types and the typed, torch-free contract every feature reads tissues through.

``Resolution`` (:mod:`.resolution`) is the one resolution value and ``Window``
(:mod:`.window`) the one box type; the tissue interface (:mod:`.tissue`: the
``TissueSource`` protocol and ``TissueReader``, its implementation over a
cohort) is what datasets/, torch/, inference/, tiling/, standardize/ and napari/
read pixels with. ``.tissue`` imports ``read/``, which imports ``store/``, which
imports this package's value types: it is loaded on first use of its names so
that ``store/`` can import them without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_module_attributes
from .resolution import Resolution, ResolutionLike, parse_resolution
from .window import Window, as_int

if TYPE_CHECKING:
    from .tissue import TissueReader, TissueSource

__all__ = ["Resolution", "ResolutionLike", "TissueReader", "TissueSource", "Window", "as_int", "parse_resolution"]

__getattr__, __dir__ = lazy_module_attributes(__name__, {"TissueReader": ".tissue", "TissueSource": ".tissue"})
