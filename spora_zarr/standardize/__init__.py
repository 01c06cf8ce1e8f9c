"""Standardization: exact statistics computed from the store, the standardizers, and image filters.

- :mod:`.histograms`: per-channel value histograms (exact for integer data) and the statistics derived from them;
- :mod:`.specs`: spec names (``identity``, ``quantile_clipping/uq_0.99_image``, ...);
- :mod:`.statistics`: the streaming pass over a cohort through the one runner, ``stats.parquet`` per spec;
- :mod:`.standardizers`: ``build_standardizer``, the ``BaseStandardizer`` classes and ``BatchStandardizer`` (torch);
- :mod:`.kernels`: the compiled histogram counter and transforms (ctypes), with numpy fallbacks;
- :mod:`.filters`: ``FilterFactory``, named per-channel image filters.

Names are imported on first use, so ``import spora_zarr.standardize`` loads neither torch nor pyarrow.
See ``docs/standardization.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "compute_statistics": "statistics",
    "read_statistics": "statistics",
    "available_specs": "statistics",
    "derive_statistics": "statistics",
    "StandardizeReport": "statistics",
    "parse_spec": "specs",
    "Spec": "specs",
    "build_standardizer": "standardizers",
    "apply_standardizer": "standardizers",
    "BaseStandardizer": "standardizers",
    "IdentityStandardizer": "standardizers",
    "StatsBackedStandardizer": "standardizers",
    "QuantileClippingStandardizer": "standardizers",
    "QuantileClippingLog1PStandardizer": "standardizers",
    "MeanStdStandardizer": "standardizers",
    "BatchStandardizer": "standardizers",
    "CompiledTransform": "standardizers",
    "FilterFactory": "filters",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
