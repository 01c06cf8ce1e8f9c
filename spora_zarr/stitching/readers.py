"""Pixel readers of one tile: windows ``(C, z, h, w)`` of a TIFF plane, a TIFF stack, BDV H5 datasets, an nd2 position, or a decoded array.

A reader holds at most one open file (2-D TIFFs read segment by segment through
:class:`~spora_zarr.sources.TiffSource`, stacks through tifffile's zarr view,
BDV H5 ``cells`` datasets by h5py slicing, nd2 positions frame by frame);
:class:`OpenReaders` keeps a bounded number of them open, so the memory of a
mosaic does not grow with the number of tiles. Opening a TIFF tile asks the
kernel to read it ahead in the background (:func:`prefetch`), so the windows
that follow find it in the page cache instead of waiting on one small read
after another.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from .. import process
from ..errors import InvalidInputError, NotFoundError
from ..sources.base import reason

#: Tiles larger than this are not read ahead (the windows read them part by part, as before).
PREFETCH_LIMIT = 512 << 20
_PREFETCH_CHUNK = 4 << 20  # the kernel reads at most its readahead size (a few MiB) per advice
#: The one thread that gives the advice, made on first use in each process (a forked child makes its own).
PREFETCHER: process.PerProcess[ThreadPoolExecutor] = process.PerProcess(lambda: ThreadPoolExecutor(1, thread_name_prefix="spora-prefetch"))


def prefetch(path: str) -> None:
    """Start reading a tile file into the page cache in the background (``posix_fadvise`` ``WILLNEED``), where supported.

    Best effort: files over :data:`PREFETCH_LIMIT` and platforms without
    ``posix_fadvise`` are left to be read on demand; errors are ignored.
    """
    if hasattr(os, "posix_fadvise"):
        PREFETCHER.get().submit(_advise, path)


def _advise(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        size = os.fstat(fd).st_size
        if size <= PREFETCH_LIMIT:
            for offset in range(0, size, _PREFETCH_CHUNK):
                os.posix_fadvise(fd, offset, _PREFETCH_CHUNK, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        prefetch(path)

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int, out: np.ndarray | None = None) -> np.ndarray:
        """The window ``(C, 1, h, w)``; with ``out`` of that shape the TIFF segments are copied straight into it."""
        if out is None:
            return self.source.read(y0, y1, x0, x1)[:, None]
        self.source.read(y0, y1, x0, x1, out=out[:, 0])
        return out

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
        prefetch(path)

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


class H5Reader:
    """A BDV H5 tile: one ``ZYX`` ``cells`` dataset per channel, read by h5py slicing (only the chunks a window meets).

    ``int16`` datasets are read as ``uint16`` (BigDataViewer stores 16-bit data signed).
    """

    def __init__(self, path: str, datasets: Sequence[str]) -> None:
        import h5py

        try:
            self._file = h5py.File(path, "r")
            self.datasets = [self._file[name] for name in datasets]
        except (OSError, KeyError) as exc:
            raise InvalidInputError(f"{path}: unreadable H5 dataset ({reason(exc)})") from None

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        window = np.stack([np.asarray(d[z0:z1, y0:y1, x0:x1]) for d in self.datasets])
        return window.view(np.uint16) if window.dtype == np.int16 else window

    def close(self) -> None:
        self._file.close()


def h5_geometry(path: str, datasets: Sequence[str], ndim: int) -> tuple[int, tuple[int, int, int], np.dtype]:
    """Channels, ``(depth, height, width)`` and dtype of a BDV H5 tile (its datasets share shape and dtype)."""
    import h5py

    if not os.path.isfile(path):
        raise NotFoundError(f"{path}: H5 file not found")
    try:
        with h5py.File(path, "r") as h5:
            found = [(tuple(int(n) for n in h5[name].shape), np.dtype(h5[name].dtype)) for name in datasets]
    except (OSError, KeyError) as exc:
        raise InvalidInputError(f"{path}: unreadable H5 dataset ({reason(exc)})") from None
    (shape, dtype), where = found[0], f"{path}:{datasets[0]}"
    if len(shape) != 3 or any(f != found[0] for f in found):
        raise InvalidInputError(f"{where}: BDV cells must be ZYX datasets of one shape and dtype per tile, found {found}")
    if ndim == 2 and shape[0] != 1:
        raise InvalidInputError(f"{where}: a stack of {shape[0]} planes; read it with Tileset(ndim=3)")
    return len(datasets), shape, np.dtype(np.uint16) if dtype == np.int16 else dtype


class Nd2Reader:
    """One position of an nd2 file (first timepoint): frame ``frames[z]`` holds plane ``z``, its channels and RGB components as channels."""

    def __init__(self, path: str, frames: Sequence[int]) -> None:
        import nd2

        try:
            self._file = nd2.ND2File(path)
        except Exception as exc:
            raise InvalidInputError(f"{path}: unreadable nd2 ({reason(exc)})") from None
        self.frames = list(frames)
        self.layout = nd2_frame_layout(self._file)
        self._lock = threading.Lock()  # the writer may read windows of one tile from several threads

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        channels, height, width, components = self.layout
        planes = []
        for z in range(z0, z1):
            with self._lock:
                frame = np.reshape(self._file.read_frame(self.frames[z]), self.layout)[:, y0:y1, x0:x1]
                planes.append(np.moveaxis(frame, -1, 1).reshape(channels * components, y1 - y0, x1 - x0))
        return np.stack(planes, axis=1)

    def close(self) -> None:
        self._file.close()


def nd2_frame_layout(handle: Any) -> tuple[int, int, int, int]:
    """``(channels, height, width, components)`` of one frame of an open ``nd2.ND2File`` (``read_frame`` gives it squeezed)."""
    attributes = handle.attributes
    return int(attributes.channelCount or 1), int(attributes.heightPx), int(attributes.widthPx), int(handle.components_per_channel)


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
        self._open: OrderedDict[int, TileReader] = OrderedDict()
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
