"""spora_zarr: OME-Zarr (NGFF 0.5, zarr v3) cohort stores for spora tissue imaging cohorts.

Importing the package is cheap: the public names below load their modules on
first use, and none of them imports torch, tensorstore, zarrs, napari or
dask.distributed (``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError, NotFoundError, SporaZarrError, StoreError

if TYPE_CHECKING:
    from .convert import ConversionReport, ConvertOptions, add_image, convert_cohort, scan_cohort
    from .read import Cohort, limit_codec_threads, open_cohort
    from .read.validate import validate_store
    from .store import resolution_name, resolution_value, validate_tissue_id
    from .write import WriteOptions, write_image, write_labels

_LAZY = {
    "Cohort": ".read.cohort",
    "open_cohort": ".read.cohort",
    "limit_codec_threads": ".read.levels",
    "validate_store": ".read.validate",
    "ConversionReport": ".convert",
    "ConvertOptions": ".convert",
    "add_image": ".convert",
    "convert_cohort": ".convert",
    "scan_cohort": ".convert",
    "resolution_name": ".store.layout",
    "resolution_value": ".store.layout",
    "validate_tissue_id": ".store.layout",
    "WriteOptions": ".write.writer",
    "write_image": ".write.writer",
    "write_labels": ".write.writer",
}

__all__ = [
    "Cohort",
    "ConversionReport",
    "ConvertOptions",
    "InvalidInputError",
    "NotFoundError",
    "SporaZarrError",
    "StoreError",
    "WriteOptions",
    "add_image",
    "convert_cohort",
    "limit_codec_threads",
    "open_cohort",
    "resolution_name",
    "resolution_value",
    "scan_cohort",
    "validate_store",
    "validate_tissue_id",
    "write_image",
    "write_labels",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spora_zarr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
