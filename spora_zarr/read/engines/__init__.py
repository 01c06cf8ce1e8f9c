"""Read engines behind one interface (:class:`~.base.Engine`), listed in :data:`REGISTRY` fastest first.

``direct`` (:mod:`.direct`, the compiled loop ``_window.c``), ``tensorstore``
(:mod:`.tensorstore`), ``zarrs`` and ``zarr`` (:mod:`.zarr`); their per-process
state lives in :mod:`spora_zarr.process` (fork safety). Callers read through
:func:`spora_zarr.read.levels.open_level`, which chooses among them; a new
engine is one module here, one registry entry and one subclass of the
conformance tests in :mod:`spora_zarr.testing.engines`.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass

from . import direct, tensorstore, zarr
from .base import Engine, Opener, UnsupportedLayout

__all__ = ["REGISTRY", "Engine", "EngineSpec", "Opener", "UnsupportedLayout"]


def _installed(module: str) -> Callable[[], str | None]:
    @functools.cache  # asked on every reader opened: a find_spec each time cost more than the open
    def unavailable() -> str | None:
        return None if module in sys.modules or importlib.util.find_spec(module) is not None else "it is not installed"

    return unavailable


@dataclass(frozen=True)
class EngineSpec:
    """How to open an engine and where it can read.

    Attributes
    ----------
    open : Opener
        Makes the engine for ``(location, path, metadata handle)``.
    local_only : bool
        Reads local stores only.
    unavailable : callable
        None when the engine can run in this installation, else why not.
    """

    open: Opener
    local_only: bool
    unavailable: Callable[[], str | None]


REGISTRY: dict[str, EngineSpec] = {
    "direct": EngineSpec(direct.open_direct, local_only=True, unavailable=direct.available),
    "tensorstore": EngineSpec(tensorstore.TensorstoreEngine, local_only=True, unavailable=_installed("tensorstore")),
    "zarrs": EngineSpec(zarr.open_zarrs, local_only=False, unavailable=_installed("zarrs")),
    "zarr": EngineSpec(zarr.ZarrEngine, local_only=False, unavailable=_installed("zarr")),
}
"""The engines by name, fastest first."""
