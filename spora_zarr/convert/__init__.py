"""Cohort conversion: scan a spora TIFF cohort into tasks and run them through the runner."""

from .cohort import ConversionReport, ConvertOptions, add_image, convert_cohort, scan_cohort

__all__ = ["ConversionReport", "ConvertOptions", "add_image", "convert_cohort", "scan_cohort"]
