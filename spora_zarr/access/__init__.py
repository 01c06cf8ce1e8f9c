"""The access layer: the typed, torch-free contract every feature reads tissues through.

``Window`` (:mod:`.window`) is the one box type; the tissue interface
(:mod:`.tissue`: the ``TissueSource`` protocol and ``TissueReader``, its
implementation over a cohort) is what datasets/, torch/, inference/, tiling/,
standardize/ and napari/ read pixels with. ``.tissue`` imports ``read/``, which
imports ``store/``, which imports this package's value types: it is loaded on
first use of its names so that ``store/`` can import them without a cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .window import Window, as_int

if TYPE_CHECKING:
    from .tissue import TissueReader, TissueSource

_LAZY = {"TissueReader": ".tissue", "TissueSource": ".tissue"}

__all__ = ["TissueReader", "TissueSource", "Window", "as_int"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spora_zarr.access' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
