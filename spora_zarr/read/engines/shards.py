"""Local chunk and shard files: only regular files are read, and a shard's index is checked against its file.

:func:`shard_table` reads a shard index, checks it and caches it by file
identity. :class:`LocalFiles` checks the files a window touches before a
library that reads them itself (tensorstore, zarrs) does: a FIFO, device or
directory in place of a file, or a file longer than the array's layout allows
(:func:`~spora_zarr.store.arrays.max_file_bytes`), is a ``StoreError``
instead of a read that blocks or never ends.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import google_crc32c
import numpy as np

from ... import process
from ...errors import StoreError
from ...store.arrays import max_file_bytes
from ...store.location import open_local_file
from ...store.shards import MISSING, index_at_end, sharding_of

__all__ = ["MISSING", "ChunkTable", "LocalFiles", "ShardLayout", "index_at_end", "shard_layout", "shard_table"]

_CACHE_BYTES = 32 * 2**20  # the shard indexes kept per process, by size: 8,192 of 256 chunks, 50,000+ of a few
_ENTRY_BYTES = 400  # what an entry costs beside its table (key, path string, objects)
_CACHE: collections.OrderedDict[tuple[str, int, int, int], ChunkTable] = collections.OrderedDict()
_CACHED = [0]  # bytes the cache holds, as _ENTRY_BYTES + the table's
_LOCK = process.PerProcess(threading.Lock)  # a forked child gets its own


class ChunkTable:
    """(offset, size) of each chunk of one file as uint64 pairs in C order (``entries``), and their address for C."""

    __slots__ = ("address", "entries")

    def __init__(self, entries: np.ndarray) -> None:
        self.entries = entries
        self.address = entries.ctypes.data


def shard_table(where: str, fd: int, stat: os.stat_result, chunks: int, index_at_end: bool) -> ChunkTable:
    """The chunk table of the shard file ``where`` (open as ``fd``) of ``chunks`` inner chunks, index bytes + crc32c.

    Raises
    ------
    StoreError
        The file is shorter than its index, its read fails or comes back short, the
        index checksum does not match, or an entry points outside the file.
    """
    size = stat.st_size
    key = (where, stat.st_ino, stat.st_mtime_ns, size)
    with _LOCK.get():
        table = _CACHE.get(key)
        if table is not None:
            _CACHE.move_to_end(key)
            return table
    index_bytes = chunks * 16 + 4
    if size < index_bytes:
        raise StoreError(f"shard {where} is {size} bytes, too short for its {index_bytes}-byte index")
    try:
        raw = os.pread(fd, index_bytes, size - index_bytes if index_at_end else 0)
    except OSError as exc:
        raise StoreError(f"shard {where}: cannot read its index: {exc}") from exc
    if len(raw) != index_bytes:
        raise StoreError(f"shard {where}: read {len(raw)} bytes of its {index_bytes}-byte index (truncated file)")
    if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
        raise StoreError(f"shard {where}: the checksum of its chunk index does not match (corrupt file)")
    entries = np.frombuffer(raw[:-4], dtype="<u8").astype(np.uint64)
    offsets, nbytes = entries.reshape(-1, 2)[entries[::2] != MISSING].T
    if np.any((offsets > size) | (nbytes > np.uint64(size) - offsets)):  # offset + nbytes > size, without overflow
        raise StoreError(f"shard {where}: its index points past the end of the file (corrupt file)")
    table = ChunkTable(entries)
    with _LOCK.get():
        if key not in _CACHE:
            _CACHE[key] = table
            _CACHED[0] += _ENTRY_BYTES + entries.nbytes
        while _CACHED[0] > _CACHE_BYTES:
            _, evicted = _CACHE.popitem(last=False)
            _CACHED[0] -= _ENTRY_BYTES + evicted.entries.nbytes
    return table


class ShardLayout(NamedTuple):
    """What reading a shard index takes: the shard shape, chunks per shard, where the index is, the shard file names."""

    shard_shape: tuple[int, ...]
    chunks: int
    index_at_end: bool
    encode_key: Callable[[tuple[int, ...]], str]


def shard_layout(metadata: Any) -> ShardLayout | None:
    """The layout of a zarr v3 array (``ArrayV3Metadata``) sharded on a regular grid with a little-endian bytes + crc32c
    index (:func:`~spora_zarr.store.shards.sharding_of`); else None: zarr reads and checks any other index itself."""
    sharding = sharding_of(metadata)
    if sharding is None:
        return None
    shard_shape = tuple(int(s) for s in metadata.chunk_grid.chunk_shape)
    chunks = math.prod(o // i for o, i in zip(shard_shape, sharding.chunk_shape, strict=True))
    return ShardLayout(shard_shape, chunks, index_at_end(sharding), metadata.chunk_key_encoding.encode_chunk_key)


class LocalFiles:
    """Checks the chunk or shard files of a local zarr v3 array that a window touches.

    Parameters
    ----------
    directory : str
        The array's directory.
    metadata : zarr.core.metadata.v3.ArrayV3Metadata
        Its metadata, checked by :func:`~spora_zarr.store.arrays.read_array_metadata`.
    """

    def __init__(self, directory: str, metadata: Any) -> None:
        self._directory = directory.rstrip("/")
        self._file_shape = tuple(int(n) for n in metadata.chunk_grid.chunk_shape)
        self._encode_key = metadata.chunk_key_encoding.encode_chunk_key
        self._max_bytes = max_file_bytes(metadata)
        self._layout = shard_layout(metadata)

    def check(self, index: tuple[slice, ...]) -> None:
        """Raise StoreError if a file under ``index`` is not a regular file, is too long, or has a damaged shard index.

        Missing files are fine (they read as the fill value).
        """
        spans = (range(s.start // n, (s.stop - 1) // n + 1) for s, n in zip(index, self._file_shape, strict=True))
        for key in itertools.product(*spans):
            where = f"{self._directory}/{self._encode_key(key)}"
            fd = open_local_file(where, self._max_bytes)
            if fd is None:
                continue
            try:
                if self._layout is not None:
                    shard_table(where, fd, os.fstat(fd), self._layout.chunks, self._layout.index_at_end)
            finally:
                os.close(fd)

    def check_key(self, key: str) -> bool:
        """Whether the file of store key ``key`` (relative to the array) exists; StoreError if it is not a regular
        file or too long."""
        fd = open_local_file(f"{self._directory}/{key}", self._max_bytes)
        if fd is None:
            return False
        os.close(fd)
        return True
