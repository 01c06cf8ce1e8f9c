"""Pyramid levels handed to napari: lazy arrays read through the read layer, sharing decoded shards.

napari makes one layer per channel of a multiplex image, and each layer asks
for its own slice of a level. The stored shards hold every channel, so reading
each slice on its own decodes the same shards once per channel (24 times for a
24-channel panel). A :class:`LazyLevel` reads a shard's window of every channel
once, through :func:`spora_zarr.read.levels.open_level` (the direct engine
where it applies), and keeps it in a process-wide cache bounded in bytes
(:data:`CACHE_BYTES`, least recently used dropped first): the other channels'
layers, and the next pan over the same shards, take their part from memory.

A :class:`LazyLevel` is an array napari takes as it takes zarr or dask arrays
(``shape``, ``dtype``, ``__getitem__``, ``__array__``): selecting channels
(``level[3]``, ``level[[0, 2]]``) gives another lazy level without reading;
any index on the spatial axes reads just the shards it meets. It is not a dask
array on purpose: dask's first compute in a process imports
``dask.distributed`` when it is installed (0.5-1 s), and slicing 24 channels
of 5 levels through dask graphs costs another few tenths of a second, both
paid before napari shows anything (docs/napari.md).
"""

from __future__ import annotations

import copy
import functools
import itertools
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..read.levels import LevelReader

__all__ = ["CACHE_BYTES", "LazyLevel", "WindowCache"]

#: Bytes of decoded shards kept for napari in this process (least recently used dropped first).
CACHE_BYTES = 512 * 2**20

Key = tuple[int, int, int]


class WindowCache:
    """Decoded windows by key, least recently used dropped beyond ``max_bytes``; one load per key at a time."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._windows: OrderedDict[Key, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[Key, threading.Lock] = {}

    def get(self, key: Key, load: Callable[[], np.ndarray]) -> np.ndarray:
        """The window under ``key``, loaded by ``load`` when absent (concurrent callers of one key wait for one load)."""
        with self._lock:
            if key in self._windows:
                self._windows.move_to_end(key)
                return self._windows[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._windows:
                    return self._windows[key]
            window = load()
            window.flags.writeable = False  # shared by every layer that takes a part of it
            with self._lock:
                self._loading.pop(key, None)
                if window.nbytes <= self.max_bytes:
                    self._windows[key] = window
                    self._bytes += window.nbytes
                    while self._bytes > self.max_bytes:
                        _, dropped = self._windows.popitem(last=False)
                        self._bytes -= dropped.nbytes
            return window


_CACHE = WindowCache(CACHE_BYTES)
_IDS = itertools.count()


class _Shards:
    """One level's reader and shard grid, read shard by shard through the cache."""

    def __init__(self, reader: LevelReader, shard: tuple[int, int], cache: WindowCache) -> None:
        self.reader, self.shard, self.cache = reader, shard, cache
        self.id = next(_IDS)  # never reused, unlike id(): a new level never sees an old one's shards

    def window(self, ya: int, yb: int, xa: int, xb: int, channels: int | np.ndarray | None) -> np.ndarray:
        """``[channels, ya:yb, xa:xb]`` (every channel for ``None``), assembled from cached shards."""
        sy, sx = self.shard
        ny, nx = self.reader.shape[-2:]
        rows, cols = range(ya // sy, (yb - 1) // sy + 1), range(xa // sx, (xb - 1) // sx + 1)
        out: np.ndarray | None = None
        for r, c in itertools.product(rows, cols):
            y0, x0 = r * sy, c * sx
            height, width = min(sy, ny - y0), min(sx, nx - x0)
            part = self.cache.get((self.id, r, c), functools.partial(self.reader.read, y0, x0, height, width))
            ty, tx = max(ya, y0), max(xa, x0)
            uy, ux = min(yb, y0 + height), min(xb, x0 + width)
            piece = part[..., ty - y0 : uy - y0, tx - x0 : ux - x0]  # the window's part first, then its channels
            if channels is not None:
                piece = piece[channels]
            if len(rows) == 1 and len(cols) == 1:
                return piece
            if out is None:
                out = np.empty((*piece.shape[:-2], yb - ya, xb - xa), piece.dtype)
            out[..., ty - ya : uy - ya, tx - xa : ux - xa] = piece
        assert out is not None
        return out


class LazyLevel:
    """One pyramid level as a lazy array; see the module docstring.

    Parameters
    ----------
    reader : LevelReader
        The level's reader, ``(c, y, x)`` or ``(y, x)``.
    shard : tuple of int
        The level's shard (or chunk) shape on ``(y, x)``: the unit read and cached.
    rgb : bool
        Put the channel axis last (``(y, x, c)``), as napari wants RGB images.
    cache : WindowCache, optional
        Where shards are kept (default: the process-wide cache).
    """

    def __init__(self, reader: LevelReader, shard: tuple[int, int], *, rgb: bool = False, cache: WindowCache | None = None) -> None:
        self._shards = _Shards(reader, (int(shard[0]), int(shard[1])), cache or _CACHE)
        self._channels: int | np.ndarray | None = None  # None: every channel (or no channel axis)
        self._rgb = rgb and len(reader.shape) == 3
        self.dtype = np.dtype(reader.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        base = tuple(int(n) for n in self._shards.reader.shape)
        if len(base) == 2 or isinstance(self._channels, int):
            return base[-2:]
        count = base[0] if self._channels is None else len(self._channels)
        return (*base[-2:], count) if self._rgb else (count, *base[-2:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<LazyLevel {self._shards.reader!r} shape={self.shape} dtype={self.dtype}>"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        value: np.ndarray = out if dtype is None else out.astype(dtype, copy=False)
        return value

    def __getitem__(self, key: Any) -> Any:
        key = _expand(key, self.ndim)
        if self._rgb:
            spatial, channel_key = key[:2], key[2]
        elif self.ndim == 3:
            channel_key, spatial = key[0], key[1:]
        else:
            channel_key, spatial = None, key
        if channel_key is not None and not self._rgb and not isinstance(channel_key, slice) and _whole(spatial, self.shape[-2:]):
            return self._select(channel_key)  # a channel selection: still lazy
        (ykey, ybounds), (xkey, xbounds) = (_spatial(k, n) for k, n in zip(spatial, self._shards.reader.shape[-2:]))
        if ybounds is None or xbounds is None:  # an empty selection: its shape, nothing read
            return np.broadcast_to(np.zeros((), self.dtype), self.shape)[key].copy()
        window = self._shards.window(*ybounds, *xbounds, self._channels)
        if self._rgb:
            return np.array(np.moveaxis(window, 0, -1)[ykey, xkey, channel_key])
        return np.array(window[(ykey, xkey) if channel_key is None else (channel_key, ykey, xkey)])

    def _select(self, channel_key: Any) -> LazyLevel:
        """The lazy level of some channels (an integer drops the channel axis)."""
        base = np.arange(self._shards.reader.shape[0]) if self._channels is None else self._channels
        assert not isinstance(base, int)
        picked = base[channel_key]
        view = copy.copy(self)  # the same shards, so the same cached windows
        view._channels = int(picked) if np.ndim(picked) == 0 else np.asarray(picked)  # noqa: SLF001 - a view of this class
        return view


def _expand(key: Any, ndim: int) -> tuple[Any, ...]:
    """``key`` as one entry per axis (``Ellipsis`` expanded, missing trailing axes whole)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is None for k in key):
        raise IndexError("LazyLevel does not take np.newaxis")
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for an array of {ndim} dimensions")
    padded: tuple[Any, ...] = key + (slice(None),) * (ndim - len(key))
    return padded


def _whole(keys: tuple[Any, ...], sizes: tuple[int, ...]) -> bool:
    """Whether every key takes its whole axis in order."""
    return all(isinstance(k, slice) and k.indices(n) == (0, n, 1) for k, n in zip(keys, sizes))


def _spatial(index: Any, size: int) -> tuple[Any, tuple[int, int] | None]:
    """The index relative to the bounding range it reads, and that range (``None`` when it selects nothing)."""
    if isinstance(index, slice):
        picked = range(*index.indices(size))
        if not picked:
            return index, None
        low, high = min(picked), max(picked) + 1
        stop = picked.stop - low
        return slice(picked.start - low, stop if stop >= 0 else None, picked.step), (low, high)
    try:
        i = operator.index(index)
    except TypeError:
        raise IndexError(f"LazyLevel takes integers and slices on the spatial axes, not {type(index).__name__}") from None
    if not -size <= i < size:
        raise IndexError(f"index {i} is out of bounds for an axis of size {size}")
    i %= size
    return 0, (i, i + 1)
