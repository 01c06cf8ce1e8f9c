"""The one streaming writer: any ``ImageSource`` to an NGFF multiscale image or label group."""

from .options import WriteOptions
from .pyramid import Level, Method, bin_shrink, mode_shrink, plan_levels
from .writer import WriteResult, write_image, write_labels

__all__ = ["Level", "Method", "WriteOptions", "WriteResult", "bin_shrink", "mode_shrink", "plan_levels", "write_image", "write_labels"]
