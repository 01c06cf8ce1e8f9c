"""The store: layout names and paths (no I/O), location (local or fsspec), metadata and staging."""

from .layout import (
    FORMAT_VERSION,
    MASK_KINDS,
    image_group_path,
    is_resolution_name,
    label_group_path,
    resolution_name,
    resolution_value,
    tile_table_path,
    validate_modality,
    validate_name,
    validate_relative_path,
    validate_tissue_id,
)
from .location import Location

__all__ = [
    "FORMAT_VERSION",
    "MASK_KINDS",
    "Location",
    "image_group_path",
    "is_resolution_name",
    "label_group_path",
    "resolution_name",
    "resolution_value",
    "tile_table_path",
    "validate_modality",
    "validate_name",
    "validate_relative_path",
    "validate_tissue_id",
]
