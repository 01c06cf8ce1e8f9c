"""Whole shards of a local array written by the writer itself: chunks encoded here, one file per shard.

The streamer hands over blocks of one shard each. Through zarr-python a block
costs an event-loop round trip, a codec-pipeline thread hand-off and the
pipeline's own copies, all in threads that compete for the GIL and the cores
with the lanes that read and reduce (``docs/conversion.md``). A
:class:`ShardWriter` lays such a block out as zarr's sharding codec does
(:mod:`spora_zarr.store.shards`) and writes the file itself: a chunk row of the
shard at a time is made contiguous (one numpy copy), each chunk encoded with
the array's blosc codec (the GIL released) or kept raw, and written with
``os.writev``. Chunks that hold only the fill value are left out of the shard,
and a shard of only fill value is not written, as the zarrs pipeline does. Any
other write (a region that is not one whole shard, an array in another
layout, a store that is not local) goes through zarr.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from typing import Any

import numpy as np
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec

from ..store.location import Location
from ..store.shards import MISSING, index_at_end, index_bytes, little_endian, sharding_of

__all__ = ["ShardWriter", "write_shard_file"]

_SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
_IOV_MAX = 1024  # buffers one writev takes at most (Linux)


def _value(option: Any) -> Any:
    """An enum option's value (zarr's codecs hold enums, or strings in later releases)."""
    return getattr(option, "value", option)


class ShardWriter:
    """Writes whole shards of one local zarr v3 array in the converter's layout.

    Parameters
    ----------
    directory : str
        The array's directory on the local file system.
    metadata : zarr.core.metadata.v3.ArrayV3Metadata
        Its metadata, as :meth:`for_array` checked it.
    """

    def __init__(self, directory: str, metadata: Any) -> None:
        sharding = metadata.codecs[0]
        self.directory = directory
        self.shape = tuple(int(n) for n in metadata.shape)
        self.shard = tuple(int(n) for n in metadata.chunk_grid.chunk_shape)
        self.chunk = tuple(int(n) for n in sharding.chunk_shape)
        self.grid = tuple(s // c for s, c in zip(self.shard, self.chunk, strict=True))
        self.dtype = np.dtype(metadata.dtype.to_native_dtype()).newbyteorder("<")
        self._encode_key = metadata.chunk_key_encoding.encode_chunk_key
        blosc = sharding.codecs[1] if len(sharding.codecs) == 2 else None
        self._compressor = (
            None
            if blosc is None
            else Blosc(
                cname=_value(blosc.cname),
                clevel=blosc.clevel,
                shuffle=_SHUFFLES[_value(blosc.shuffle)],
                blocksize=blosc.blocksize,
                typesize=blosc.typesize,
            )
        )

    @classmethod
    def for_array(cls, location: Location, array: Any) -> ShardWriter | None:
        """A writer for ``array`` (a ``zarr.Array`` at ``location``), or ``None`` where zarr must write it.

        It is ``None`` unless the store is local and the array is in the converter's
        layout: a regular grid of shards (``sharding_indexed``, index at the end,
        little-endian ``bytes`` + ``crc32c``), inner chunks ``bytes`` (little-endian) with an
        optional blosc compressor, whose shards divide into whole chunks, and fill
        value zero.
        """
        metadata = array.metadata
        sharding = sharding_of(metadata) if location.is_local else None
        if sharding is None or not index_at_end(sharding):
            return None
        inner = tuple(sharding.codecs)
        if not inner or len(inner) > 2 or not isinstance(inner[0], BytesCodec) or not little_endian(inner[0]):
            return None
        if len(inner) == 2 and not isinstance(inner[1], BloscCodec):
            return None
        shard, chunk = metadata.chunk_grid.chunk_shape, sharding.chunk_shape
        if any(s % c for s, c in zip(shard, chunk, strict=True)):
            return None
        dtype = np.dtype(metadata.dtype.to_native_dtype())
        if dtype.hasobject or np.asarray(metadata.fill_value, dtype=dtype).tobytes() != bytes(dtype.itemsize):
            return None
        return cls(location.fs_path(array.path), metadata)

    def write(self, region: tuple[int | slice, ...], block: np.ndarray) -> bool:
        """Write ``block`` at ``region`` (slices and plane indices, as ``array[region] = block`` takes them).

        Returns ``False``, having written nothing, where the region is not one
        whole shard (clipped at the array's edge).
        """
        starts, stops = [], []
        for axis, (key, size) in enumerate(zip(region, self.shape, strict=True)):
            if isinstance(key, slice):
                if key.step not in (None, 1):
                    return False
                start, stop = key.start or 0, size if key.stop is None else key.stop
            else:
                start, stop = int(key), int(key) + 1
                block = np.expand_dims(block, axis)
            starts.append(start)
            stops.append(stop)
        if block.shape != tuple(b - a for a, b in zip(starts, stops, strict=True)):
            return False
        for start, stop, shard, size in zip(starts, stops, self.shard, self.shape, strict=True):
            if start % shard or stop != min(start + shard, size):
                return False
        self._write_shard(tuple(a // s for a, s in zip(starts, self.shard, strict=True)), block)
        return True

    def _write_shard(self, coords: tuple[int, ...], block: np.ndarray) -> None:
        """Encode shard ``coords`` from ``block`` (its part inside the array) and write its file."""
        path = os.path.join(self.directory, *self._encode_key(coords).split("/"))
        entries = np.full((math.prod(self.grid), 2), MISSING, dtype="<u8")
        *lead, last = self.grid
        slab_shape = (*self.chunk[:-1], self.shard[-1])
        fd, offset = -1, 0
        try:
            for number, prefix in enumerate(itertools.product(*(range(n) for n in lead))):
                window = tuple(slice(p * c, (p + 1) * c) for p, c in zip(prefix, self.chunk[:-1], strict=True))
                if any(w.start >= n for w, n in zip(window, block.shape[:-1], strict=True)):
                    continue  # this row of chunks lies outside the array
                part = block[window]
                if part.shape != slab_shape:  # the shard crosses the array's edge: pad with the fill value
                    padded = np.zeros(slab_shape, dtype=self.dtype)
                    padded[tuple(slice(0, n) for n in part.shape)] = part
                    part = padded
                rows = np.ascontiguousarray(
                    np.moveaxis(part.reshape(*self.chunk[:-1], last, self.chunk[-1]), -2, 0), dtype=self.dtype
                ).reshape(last, -1)
                inside = -(-block.shape[-1] // self.chunk[-1])  # chunks of this row inside the array
                flat = rows.view(np.uint8).reshape(last, -1)
                words = flat.view(np.uint64) if flat.shape[1] % 8 == 0 else flat
                present = np.flatnonzero(np.any(words[:inside], axis=1))
                if not len(present):
                    continue
                if fd < 0:
                    fd = _create(path)
                parts = [flat[j] if self._compressor is None else self._compressor.encode(flat[j]) for j in present]
                for j, data in zip(present, parts, strict=True):
                    entries[number * last + j] = (offset, len(data))
                    offset += len(data)
                _write_all(fd, parts)
            if fd < 0:  # only fill value: no file, as zarr leaves it (and none left from an earlier write)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return
            _write_all(fd, [index_bytes(entries)])
        finally:
            if fd >= 0:
                os.close(fd)


def write_shard_file(path: str, parts: list[Any]) -> None:
    """Write the file at ``path`` (a local path; its folders made, an old file replaced) from ``parts`` in order."""
    fd = _create(path)
    try:
        _write_all(fd, parts)
    finally:
        os.close(fd)


def _create(path: str) -> int:
    """A new empty file at ``path`` open for writing (its folders made, an old file truncated)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def _write_all(fd: int, parts: list[Any]) -> None:
    """Write ``parts`` (bytes-like) to ``fd`` in order, whatever ``writev`` writes at a time."""
    views, first = [memoryview(p).cast("B") for p in parts], 0
    while first < len(views):
        written = os.writev(fd, views[first : first + _IOV_MAX])
        if not written:
            raise OSError(f"writev wrote nothing of {sum(len(v) for v in views[first:])} bytes")
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]
