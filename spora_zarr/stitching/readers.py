"""Pixel readers of one tile: windows ``(C, z, h, w)`` of a TIFF plane, a TIFF stack, or a decoded array.

A reader holds at most one open file (2-D TIFFs read segment by segment through
:class:`~spora_zarr.sources.TiffSource`, stacks through tifffile's zarr view);
:class:`OpenReaders` keeps a bounded number of them open, so the memory of a
mosaic does not grow with the number of tiles.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidInputError, NotFoundError
from ..sources.base import reason


class TileReader(Protocol):
    """Windows of one tile as ``(C, z1 - z0, y1 - y0, x1 - x0)``."""

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window, in tile-local pixels."""
        ...

    def close(self) -> None:
        """Release the file."""
        ...


class PlaneReader:
    """A 2-D TIFF tile (``YX``, ``CYX``, ``YXS``), read window by window."""

    def __init__(self, path: str) -> None:
        from ..sources.tiff import TiffSource

        self.source = TiffSource(path)

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.source.read(y0, y1, x0, x1)[:, None]

    def close(self) -> None:
        self.source.close()


class StackReader:
    """A 3-D TIFF tile (``ZYX``, ``ZCYX``, ...): the first non-channel, non-plane axis is z."""

    def __init__(self, path: str) -> None:
        import tifffile
        import zarr

        try:
            self._tiff = tifffile.TiffFile(path)
            series = self._tiff.series[0]
            self.array: Any = zarr.open(series.aszarr(level=0), mode="r")
        except Exception as exc:
            raise InvalidInputError(f"{path}: unreadable TIFF ({reason(exc)})") from None
        self.axes, self.name = stack_axes(series.axes, series.shape, path), path

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        index: list[slice] = [slice(None)] * len(self.axes)
        for axis, (a, b) in zip("ZYX", ((z0, z1), (y0, y1), (x0, x1))):
            index[self.axes.index(axis)] = slice(a, b)
        window = np.asarray(self.array[tuple(index)])
        channels = [i for i, a in enumerate(self.axes) if a not in "ZYX"]
        order = [*channels, self.axes.index("Z"), self.axes.index("Y"), self.axes.index("X")]
        return window.transpose(order).reshape(-1, z1 - z0, y1 - y0, x1 - x0)

    def close(self) -> None:
        self._tiff.close()


class ArrayReader:
    """A tile decoded whole by ``load`` (JPEG 2000, a downscaled tile) as ``(C, Z, H, W)``."""

    def __init__(self, load: Callable[[], np.ndarray]) -> None:
        self.array = load()

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.array[:, z0:z1, y0:y1, x0:x1]

    def close(self) -> None:
        self.array = np.empty((0, 0, 0, 0))


def stack_axes(axes: str, shape: tuple[int, ...], path: str) -> str:
    """Tifffile axes of a stack with its depth axis renamed ``Z`` (the first axis other than C, S, Y, X)."""
    if "Y" not in axes or "X" not in axes:
        raise InvalidInputError(f"{path}: unsupported TIFF axes {axes!r} (no Y/X plane)")
    if "Z" in axes:
        return axes
    for i, axis in enumerate(axes):
        if axis not in "CSYX":
            return axes[:i] + "Z" + axes[i + 1 :]
    raise InvalidInputError(f"{path}: a 3-D tile needs a z axis, the TIFF has axes {axes!r} {tuple(shape)}")


def tiff_geometry(path: str, ndim: int) -> tuple[int, tuple[int, int, int], np.dtype]:
    """Channels, ``(depth, height, width)`` and dtype of a TIFF tile, from its header only."""
    import tifffile

    if not os.path.isfile(path):
        raise NotFoundError(f"{path}: tile file not found")
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            axes, shape, dtype = series.axes, tuple(int(n) for n in series.shape), np.dtype(series.dtype)
    except Exception as exc:
        raise InvalidInputError(f"{path}: unreadable TIFF ({reason(exc)})") from None
    if ndim == 3:
        axes = stack_axes(axes, shape, path)
        depth = shape[axes.index("Z")]
        spatial = "ZYX"
    else:
        depth, spatial = 1, "YX"
        if "Y" not in axes or "X" not in axes:
            raise InvalidInputError(f"{path}: unsupported TIFF axes {axes!r} (no Y/X plane)")
    channels = int(np.prod([n for n, a in zip(shape, axes) if a not in spatial], dtype=np.int64))
    if ndim == 2 and axes.endswith("S") and shape[-1] == 4:
        channels = 3  # RGBA: TiffSource drops the alpha plane
    return channels, (depth, shape[axes.index("Y")], shape[axes.index("X")]), dtype


class OpenReaders:
    """At most ``limit`` tile readers open at once, least recently used closed first; thread safe."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: int, factory: Callable[[], TileReader]) -> TileReader:
        """The open reader of tile ``key``, made by ``factory`` when it is not open."""
        with self._lock:
            reader = self._open.get(key)
            if reader is not None:
                self._open.move_to_end(key)
                return reader
        reader = factory()
        with self._lock:
            self._open[key] = reader
            while len(self._open) > self.limit:
                self._open.popitem(last=False)[1].close()
        return reader

    def close(self) -> None:
        """Close every open reader."""
        with self._lock:
            while self._open:
                self._open.popitem()[1].close()
