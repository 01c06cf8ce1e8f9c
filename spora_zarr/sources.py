"""Image sources behind one small interface: a shape, a dtype and window reads.

A source presents any input as ``(C, H, W)``: a TIFF (one series, one series
per channel page, RGB ``(H, W, 3)``, OME-TIFF), a legacy spora ``(H, W, C)``
zarr array, or an array in memory. Windows are read lazily, so a slide larger
than memory streams through the writer tile by tile.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import InvalidInputError

log = logging.getLogger("spora_zarr")

TIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")


@runtime_checkable
class ImageSource(Protocol):
    """A ``(C, H, W)`` image that can be read window by window."""

    name: str
    shape: tuple[int, int, int]
    dtype: np.dtype

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[:, y0:y1, x0:x1]`` as a ``(C, y1 - y0, x1 - x0)`` array."""
        ...


@dataclass
class SourceInfo:
    """What a file says about itself beyond its pixels."""

    channel_names: list[str] | None = None
    mpp: float | None = None
    is_rgb: bool = False


@dataclass
class ArraySource:
    """An in-memory ``(C, H, W)`` numpy (or any sliceable) array."""

    array: Any
    name: str = "<array>"
    info: SourceInfo = field(default_factory=SourceInfo)

    def __post_init__(self) -> None:
        if self.array.ndim == 2:
            self.array = self.array[None]
        if self.array.ndim != 3:
            raise InvalidInputError(f"{self.name}: expected a (C, H, W) or (H, W) array, got shape {self.array.shape}")
        self.shape = tuple(int(n) for n in self.array.shape)
        self.dtype = np.dtype(self.array.dtype)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(self.array[:, y0:y1, x0:x1])


class _AxesView:
    """Windows of one zarr view whose axes are named by tifffile letters, as ``(C, h, w)``."""

    def __init__(self, array: Any, axes: str, name: str) -> None:
        if "Y" not in axes or "X" not in axes:
            raise InvalidInputError(f"{name}: unsupported TIFF axes {axes!r} (no Y/X plane)")
        self.array, self.axes, self.name = array, axes, name
        others = [i for i, a in enumerate(axes) if a not in "YX"]
        self._order = [*others, axes.index("Y"), axes.index("X")]
        self.channels = int(np.prod([array.shape[i] for i in others], dtype=np.int64))
        self.height, self.width = array.shape[axes.index("Y")], array.shape[axes.index("X")]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        index: list[slice] = [slice(None)] * len(self.axes)
        index[self.axes.index("Y")] = slice(y0, y1)
        index[self.axes.index("X")] = slice(x0, x1)
        window = np.asarray(self.array[tuple(index)])
        return window.transpose(self._order).reshape(self.channels, y1 - y0, x1 - x0)


class TiffSource:
    """A TIFF or OME-TIFF presented as ``(C, H, W)``.

    Channels are the non-spatial axes of the first series (``CYX``, ``SYX``,
    ``YXS`` for RGB) or, when a file holds one ``YX`` series per page (a TIFF
    written one page per channel), the pages in file order.
    """

    def __init__(self, path: str | os.PathLike[str], fs: Any = None) -> None:
        import tifffile
        import zarr

        self.name = os.fspath(path)
        self._handle = fs.open(self.name, "rb") if fs is not None else None
        try:
            self._tiff = tifffile.TiffFile(self._handle if self._handle is not None else self.name)
            series = self._tiff.series
            if not series:
                raise ValueError("no image series")
            first = series[0]
            planes = [first]
            if not self._tiff.is_ome and len(series) > 1 and all(
                s.axes == "YX" and s.shape == first.shape and s.dtype == first.dtype for s in series
            ):
                planes = list(series)
            self._views = [_AxesView(zarr.open(s.aszarr(level=0), mode="r"), s.axes, self.name) for s in planes]
            self.info = self._read_info(first)
        except InvalidInputError:
            self.close()
            raise
        except Exception as exc:  # tifffile raises many kinds of errors on bad files
            self.close()
            raise InvalidInputError(f"{self.name}: unreadable TIFF ({_reason(exc)})") from None
        self.dtype = np.dtype(first.dtype)
        heights = {v.height for v in self._views}
        channels = sum(v.channels for v in self._views)
        if self.info.is_rgb and channels == 4:
            channels = 3  # RGBA: the alpha plane is dropped
        self.shape = (channels, self._views[0].height, self._views[0].width)
        if len(heights) != 1:
            raise InvalidInputError(f"{self.name}: pages have different sizes")

    def _read_info(self, series: Any) -> SourceInfo:
        info = SourceInfo(is_rgb=series.axes.endswith("S") and series.shape[-1] in (3, 4))
        if self._tiff.is_ome and self._tiff.ome_metadata:
            info.channel_names, info.mpp = _ome_channels_and_mpp(self._tiff.ome_metadata)
        return info

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            parts = [view.read(y0, y1, x0, x1) for view in self._views]
        except Exception as exc:
            raise InvalidInputError(f"{self.name}: unreadable TIFF data ({_reason(exc)})") from None
        window = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if self.info.is_rgb and window.shape[0] == 4:
            window = window[:3]
        return window

    def close(self) -> None:
        tiff = getattr(self, "_tiff", None)
        if tiff is not None:
            tiff.close()
        if self._handle is not None:
            self._handle.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("TiffSource holds an open file; pass the path to another process instead")


def _ome_channels_and_mpp(xml: str) -> tuple[list[str] | None, float | None]:
    """Channel names and the y/x pixel size in micrometers from OME-XML."""
    root = ET.fromstring(xml)
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels")), None)
    if pixels is None:
        return None, None
    names = [ch.get("Name") or ch.get("ID") or f"channel_{i}" for i, ch in enumerate(el for el in pixels if el.tag.endswith("}Channel"))]
    size = pixels.get("PhysicalSizeX") or pixels.get("PhysicalSizeY")
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    mpp = None
    if size is not None:
        factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
        mpp = float(size) * factor if factor else None
    return (names or None), mpp


class LegacyZarrSource:
    """An earlier spora tissue: a plain zarr array ``<tissue>.zarr`` in ``(H, W, C)`` order."""

    def __init__(self, path: str, store: Any = None) -> None:
        import zarr

        self.name = path
        try:
            self._array = zarr.open_array(store if store is not None else path, mode="r")
        except Exception as exc:
            raise InvalidInputError(f"{path}: unreadable zarr array ({_reason(exc)})") from None
        if self._array.ndim == 2:
            self._view = _AxesView(self._array, "YX", path)
        elif self._array.ndim == 3:
            self._view = _AxesView(self._array, "YXS", path)
        else:
            raise InvalidInputError(f"{path}: expected an (H, W, C) array, got shape {self._array.shape}")
        self.shape = (self._view.channels, self._view.height, self._view.width)
        self.dtype = np.dtype(self._array.dtype)
        self.info = SourceInfo(is_rgb=self._array.ndim == 3 and self._array.shape[-1] == 3 and self.dtype == np.uint8)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            return self._view.read(y0, y1, x0, x1)
        except Exception as exc:
            raise InvalidInputError(f"{self.name}: unreadable zarr data ({_reason(exc)})") from None


def open_source(path: str, fs: Any = None) -> TiffSource | LegacyZarrSource | ArraySource:
    """Open an image file by its suffix: TIFF/OME-TIFF, a legacy ``.zarr`` array, PNG/JPEG."""
    lower = path.lower().rstrip("/")
    if lower.endswith(TIFF_SUFFIXES):
        return TiffSource(path, fs)
    if lower.endswith(".zarr"):
        if fs is not None and not _is_local_fs(fs):
            from zarr.storage import FsspecStore

            return LegacyZarrSource(path, FsspecStore.from_mapper(fs.get_mapper(path), read_only=True))
        return LegacyZarrSource(path)
    if lower.endswith(RASTER_SUFFIXES):
        import imageio.v3 as iio

        try:
            data = iio.imread(fs.open(path, "rb").read() if fs is not None else path)
        except Exception as exc:
            raise InvalidInputError(f"{path}: unreadable image ({_reason(exc)})") from None
        is_rgb = data.ndim == 3
        array = data[..., :3].transpose(2, 0, 1) if is_rgb else data
        return ArraySource(np.ascontiguousarray(array), name=path, info=SourceInfo(is_rgb=is_rgb))
    raise InvalidInputError(f"{path}: unsupported image format (expected .tif, .tiff, .zarr, .png or .jpg)")


def _is_local_fs(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
