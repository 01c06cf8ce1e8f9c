"""Open an image file as a source by its suffix: TIFF/OME-TIFF/slide, a legacy ``.zarr`` array, PNG/JPEG."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .base import ArraySource, ImageSource, SourceInfo, reason
from .ngff import open_zarr_source
from .tiff import TIFF_SUFFIXES, TiffSource

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")


def open_source(path: str, fs: Any = None) -> ImageSource:
    """Open an image file by its suffix: TIFF/OME-TIFF/SVS/NDPI, ``.zarr`` (an OME-Zarr image or a zarr array), PNG/JPEG."""
    lower = path.lower().rstrip("/")
    if fs is None or _is_local_fs(fs):
        _check_regular(path, folder=lower.endswith(".zarr"))
    if lower.endswith(TIFF_SUFFIXES):
        return TiffSource(path, fs)
    if lower.endswith(".zarr"):
        if fs is not None and not _is_local_fs(fs):
            from zarr.storage import FsspecStore

            return open_zarr_source(path, FsspecStore.from_mapper(fs.get_mapper(path), read_only=True))
        return open_zarr_source(path)
    if lower.endswith(RASTER_SUFFIXES):
        import imageio.v3 as iio

        try:
            data = iio.imread(fs.open(path, "rb").read() if fs is not None else path)
        except Exception as exc:
            raise InvalidInputError(f"{path}: unreadable image ({reason(exc)})") from None
        is_rgb = data.ndim == 3
        array = data[..., :3].transpose(2, 0, 1) if is_rgb else data
        return ArraySource(np.ascontiguousarray(array), name=path, info=SourceInfo(is_rgb=is_rgb))
    raise InvalidInputError(f"{path}: unsupported image format (expected .tif, .tiff, .svs, .ndpi, .zarr, .png or .jpg)")


def _check_regular(path: str, *, folder: bool) -> None:
    """``InvalidInputError`` unless the local ``path`` is a regular file (a folder for ``.zarr``): never a FIFO or device."""
    if not os.path.exists(path):
        raise InvalidInputError(f"{path}: no such file")
    if not (os.path.isdir(path) if folder else os.path.isfile(path)):
        raise InvalidInputError(f"{path}: not a regular {'folder' if folder else 'file'}; only regular files are read")


def _is_local_fs(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
