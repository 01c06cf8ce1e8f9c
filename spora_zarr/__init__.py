"""spora_zarr: OME-Zarr (NGFF 0.5, zarr v3) cohort stores for spora tissue imaging cohorts."""

from __future__ import annotations

from .convert import ConversionReport, ConvertOptions, add_image, convert_cohort, scan_cohort
from .errors import InvalidInputError, NotFoundError, SporaZarrError, StoreError
from .layout import resolution_name, resolution_value, validate_tissue_id
from .reader import Cohort, open_cohort
from .validate import validate_store
from .writer import WriteOptions, write_image, write_labels

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
    "open_cohort",
    "resolution_name",
    "resolution_value",
    "scan_cohort",
    "validate_store",
    "validate_tissue_id",
    "write_image",
    "write_labels",
]
