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

from .._lazy import lazy_module_attributes

_NAMES = {
    "compute_statistics": ".statistics",
    "read_statistics": ".statistics",
    "available_specs": ".statistics",
    "derive_statistics": ".statistics",
    "StandardizeReport": ".statistics",
    "parse_spec": ".specs",
    "Spec": ".specs",
    "build_standardizer": ".standardizers",
    "apply_standardizer": ".standardizers",
    "BaseStandardizer": ".standardizers",
    "IdentityStandardizer": ".standardizers",
    "StatsBackedStandardizer": ".standardizers",
    "QuantileClippingStandardizer": ".standardizers",
    "QuantileClippingLog1PStandardizer": ".standardizers",
    "MeanStdStandardizer": ".standardizers",
    "BatchStandardizer": ".standardizers",
    "CompiledTransform": ".standardizers",
    "FilterFactory": ".filters",
}

__all__ = [
    "BaseStandardizer",
    "BatchStandardizer",
    "CompiledTransform",
    "FilterFactory",
    "IdentityStandardizer",
    "MeanStdStandardizer",
    "QuantileClippingLog1PStandardizer",
    "QuantileClippingStandardizer",
    "Spec",
    "StandardizeReport",
    "StatsBackedStandardizer",
    "apply_standardizer",
    "available_specs",
    "build_standardizer",
    "compute_statistics",
    "derive_statistics",
    "parse_spec",
    "read_statistics",
]

__getattr__, __dir__ = lazy_module_attributes(__name__, _NAMES)
