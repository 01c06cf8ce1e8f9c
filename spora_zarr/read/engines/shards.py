"""Chunk tables of local shard files: the shard index read, checked against the file and cached by file identity."""

from __future__ import annotations

import collections
import os
import threading

import google_crc32c
import numpy as np

from ...errors import StoreError

__all__ = ["MISSING", "ChunkTable", "index_at_end", "shard_table"]

MISSING = 2**64 - 1  # offset and size of an inner chunk that was never written
_CACHE_ENTRIES = 4096  # shard indexes kept per process (4 KiB each for 256 chunks)
_CACHE: collections.OrderedDict[tuple[str, int, int, int], ChunkTable] = collections.OrderedDict()
_LOCK = threading.Lock()


def index_at_end(sharding: object) -> bool:
    """Whether a sharding codec puts its index at the end of the file (an enum; a str from zarr 3.4)."""
    location = getattr(sharding, "index_location", None)
    return getattr(location, "value", location) == "end"


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
    with _LOCK:
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
    with _LOCK:
        _CACHE[key] = table
        while len(_CACHE) > _CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    return table


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
