"""Image sources: the ``ImageSource`` protocol and its implementations (files, arrays)."""

from .base import ArraySource, EncodedTiles, ImageSource, SourceInfo
from .files import RASTER_SUFFIXES, open_source
from .legacy import LegacyZarrSource
from .tiff import TIFF_SUFFIXES, TiffSource

__all__ = [
    "RASTER_SUFFIXES",
    "TIFF_SUFFIXES",
    "ArraySource",
    "EncodedTiles",
    "ImageSource",
    "LegacyZarrSource",
    "SourceInfo",
    "TiffSource",
    "open_source",
]
