"""Cohort conversion: scan a spora TIFF cohort into tasks and run them through the one runner."""

from .add_image import add_image
from .cohort import ConversionReport, ConvertOptions, convert_cohort
from .scan import CohortPlan, ImageTask, MaskTask, scan_cohort

__all__ = [
    "CohortPlan",
    "ConversionReport",
    "ConvertOptions",
    "ImageTask",
    "MaskTask",
    "add_image",
    "convert_cohort",
    "scan_cohort",
]
