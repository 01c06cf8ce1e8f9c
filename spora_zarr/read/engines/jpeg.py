"""Direct window reads of JPEG-chunked arrays: a slide's source tiles kept as its chunks.

:class:`JpegArray` is the direct engine for a local zarr v3 array whose
(sharded) chunks are ``transpose(order=[1, 2, 0])`` + ``imagecodecs_jpeg``
(:mod:`spora_zarr.store.codecs`): per chunk of the window one ``pread`` (the
shard index read once per file, checked and cached by :mod:`.shards`), one
libjpeg-turbo decode with the GIL released (imagecodecs) and one copy of the
overlap, transposed, into the ``(c, y, x)`` output; the chunks of a window
are decoded on helper threads. Like the blosc reader it holds no file
descriptors between reads and starts its threads anew in a forked child.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, TransposeCodec

from ... import process
from ...errors import InvalidInputError, StoreError
from ...sources.base import EncodedTiles
from ...store.codecs import JPEG_CODEC, decode_jpeg, jpeg_config
from .base import UnsupportedLayout
from .shards import MISSING, ChunkTable, index_at_end, shard_table

__all__ = ["JpegArray", "is_jpeg_layout"]


class _DecodePool:
    """This process's decode threads: one pool, made anew when another size is asked for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def executor(self, threads: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._executor._max_workers != threads:  # noqa: SLF001 - the size it was made with
                self._executor = ThreadPoolExecutor(threads, thread_name_prefix="spora-jpeg")
            return self._executor


_POOL = process.PerProcess(_DecodePool)  # a forked child makes its own


def is_jpeg_layout(metadata: Any) -> bool:
    """Whether an array's chunks are JPEG streams of ``(y, x, c)`` tiles (sharded or not)."""
    if getattr(metadata, "zarr_format", None) != 3:
        return False
    codecs = tuple(metadata.codecs)
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        codecs = tuple(codecs[0].codecs)
    return len(codecs) == 2 and isinstance(codecs[0], TransposeCodec) and codecs[1].to_dict().get("name") == JPEG_CODEC


class JpegArray:
    """Window reads of one local ``(c, y, x)`` uint8 array of JPEG chunks.

    Parameters
    ----------
    directory : str
        The array's directory on the local file system.
    metadata : zarr.core.metadata.v3.ArrayV3Metadata
        Its parsed ``zarr.json``.
    threads : int
        Decode threads per window, the caller's included.

    Raises
    ------
    UnsupportedLayout
        Not such an array.
    """

    engine = "direct"
    resident_bytes = 8 * 1024  # as a DirectArray: the array's layout and per-thread read state

    def __init__(self, directory: str, metadata: Any, threads: int) -> None:
        if not is_jpeg_layout(metadata):
            raise UnsupportedLayout("chunks are not transpose + imagecodecs_jpeg")
        self.directory = directory.rstrip("/")
        self.shape = tuple(int(s) for s in metadata.shape)
        self.dtype = np.dtype(metadata.dtype.to_native_dtype())
        codecs = tuple(metadata.codecs)
        outer = tuple(int(s) for s in metadata.chunk_grid.chunk_shape)
        self._sharded = isinstance(codecs[0], ShardingCodec)  # a shard of one chunk has an index too
        if self._sharded:
            sharding = codecs[0]
            index_codecs = tuple(sharding.index_codecs)
            if not (len(index_codecs) == 2 and isinstance(index_codecs[0], BytesCodec) and isinstance(index_codecs[1], Crc32cCodec)):
                raise UnsupportedLayout(f"shard index codecs {index_codecs} are not bytes + crc32c")
            self.chunk_shape = tuple(int(s) for s in sharding.chunk_shape)
            self._file_shape = outer
            self._index_at_end = index_at_end(sharding)
            codecs = tuple(sharding.codecs)
        else:
            self.chunk_shape = self._file_shape = outer
            self._index_at_end = True
        if len(self.shape) != 3 or self.dtype != np.uint8 or tuple(codecs[0].order) != (1, 2, 0) or self.chunk_shape[0] != self.shape[0]:
            raise UnsupportedLayout("JPEG chunks are read for (c, y, x) uint8 arrays with all channels per chunk only")
        self._per_file = (self._file_shape[1] // self.chunk_shape[1], self._file_shape[2] // self.chunk_shape[2])
        self._config = jpeg_config(codecs[1])
        self._encode_key = metadata.chunk_key_encoding.encode_chunk_key
        self._threads = max(1, threads)

    def __repr__(self) -> str:
        return f"<JpegArray {self.directory} shape={self.shape}>"

    def read(self, index: Sequence[slice]) -> np.ndarray:
        """The window ``index`` (one in-bounds slice per axis) as a new ``(c, h, w)`` array."""
        (c0, c1), (y0, y1), (x0, x1) = self._bounds(index)
        out = np.zeros((c1 - c0, y1 - y0, x1 - x0), self.dtype)
        return self._read_into(out, c0, c1, y0, y1, x0, x1)

    def read_into(self, index: Sequence[slice], out: np.ndarray) -> np.ndarray:
        """Decode the window ``index`` into ``out`` (its shape, uint8) and return it."""
        (c0, c1), (y0, y1), (x0, x1) = self._bounds(index)
        if out.shape != (c1 - c0, y1 - y0, x1 - x0) or out.dtype != self.dtype:
            raise InvalidInputError(f"array {self.directory}: out must be uint8 {(c1 - c0, y1 - y0, x1 - x0)}, got {out.dtype} {out.shape}")
        out[...] = 0
        return self._read_into(out, c0, c1, y0, y1, x0, x1)

    def _bounds(self, index: Sequence[slice]) -> list[tuple[int, int]]:
        bounds = []
        if isinstance(index, (tuple, list)) and len(index) == 3:
            for axis, n in zip(index, self.shape, strict=True):
                if not isinstance(axis, slice) or axis.step not in (None, 1):
                    break
                a, b = 0 if axis.start is None else int(axis.start), n if axis.stop is None else int(axis.stop)
                if not 0 <= a <= b <= n:
                    break
                bounds.append((a, b))
            else:
                return bounds
        raise InvalidInputError(
            f"array {self.directory} of shape {self.shape}: cannot read {index!r}; a window is one in-bounds slice per axis"
        )

    def _read_into(self, out: np.ndarray, c0: int, c1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if out.size == 0:
            return out
        _, th, tw = self.chunk_shape
        files: dict[tuple[int, int], _File] = {}
        try:
            jobs = []
            for row, col in itertools.product(range(y0 // th, (y1 - 1) // th + 1), range(x0 // tw, (x1 - 1) // tw + 1)):
                shard = (row // self._per_file[0], col // self._per_file[1])
                if shard not in files:
                    files[shard] = self._open(shard)
                jobs.append((row, col, files[shard]))
            window = (c0, c1, y0, y1, x0, x1)
            if self._threads > 1 and len(jobs) > 1:
                pool = _POOL.get().executor(self._threads)
                futures = [pool.submit(self._copy, out, window, job) for job in jobs[1:]]
                try:
                    self._copy(out, window, jobs[0])
                finally:
                    for future in futures:
                        future.result()
            else:
                for job in jobs:
                    self._copy(out, window, job)
        finally:
            for file in files.values():
                if file.fd >= 0:
                    os.close(file.fd)
        return out

    def _copy(self, out: np.ndarray, window: tuple[int, ...], job: tuple[int, int, _File]) -> None:
        """Decode chunk ``(row, col)`` and copy its overlap with ``window`` into ``out`` (c, y, x)."""
        (c0, c1, y0, y1, x0, x1), (row, col, file) = window, job
        _, th, tw = self.chunk_shape
        data = self._chunk(file, row, col)
        if not data:
            return
        where, (offset, nbytes) = file.path, self._entry(file, row, col)
        try:
            tile = decode_jpeg(data, self._config)
        except Exception as exc:  # noqa: BLE001 - imagecodecs raises its own error types
            raise StoreError(f"{where}: cannot decode the chunk of {nbytes} bytes at offset {offset}: not a JPEG stream ({exc})") from None
        if tile.ndim != 3 or tile.shape != (th, tw, self.shape[0]):
            raise StoreError(f"{where}: the chunk at offset {offset} decodes to {tile.shape}, expected {(th, tw, self.shape[0])}")
        ty, tx = row * th, col * tw
        ya, yb, xa, xb = max(y0, ty), min(y1, ty + th), max(x0, tx), min(x1, tx + tw)
        out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = tile[ya - ty : yb - ty, xa - tx : xb - tx, c0:c1].transpose(2, 0, 1)

    def _entry(self, file: _File, row: int, col: int) -> tuple[int, int]:
        """``(offset, size)`` of chunk ``(row, col)`` in its file (``MISSING`` offset: never written)."""
        if file.table is None:
            return MISSING, 0
        slot = (row % self._per_file[0]) * self._per_file[1] + col % self._per_file[1]
        offset, nbytes = (int(v) for v in file.table.entries[2 * slot : 2 * slot + 2])
        return offset, nbytes

    def _chunk(self, file: _File, row: int, col: int) -> bytes:
        """The stored bytes (a JPEG stream) of chunk ``(row, col)``; empty where it was never written."""
        offset, nbytes = self._entry(file, row, col)
        if offset == MISSING:
            return b""
        try:
            data = os.pread(file.fd, nbytes, offset)
        except OSError as exc:
            raise StoreError(f"{file.path}: cannot read the chunk of {nbytes} bytes at offset {offset}: {exc}") from exc
        if len(data) != nbytes:
            raise StoreError(f"{file.path}: read {len(data)} bytes of the chunk of {nbytes} bytes at offset {offset} (truncated file)")
        return data

    def encoded_tiles(self) -> EncodedTiles:
        """The chunks as stored, for a rewrite of the image to keep (``add-image`` of another resolution)."""

        def read(row: int, col: int) -> bytes:
            file = self._open((row // self._per_file[0], col // self._per_file[1]))
            try:
                return self._chunk(file, row, col)
            finally:
                if file.fd >= 0:
                    os.close(file.fd)

        return EncodedTiles(codec=dict(self._config), tile=(self.chunk_shape[1], self.chunk_shape[2]), read=read)

    def _open(self, shard: tuple[int, int]) -> _File:
        """The file of ``shard``, open, with its chunk table (no file: fd -1, no table; all fill value)."""
        where = f"{self.directory}/{self._encode_key((0, *shard))}"
        try:
            fd = os.open(where, os.O_RDONLY)
        except FileNotFoundError:
            return _File(-1, where, None)
        except OSError as exc:
            raise StoreError(f"{where}: cannot open: {exc}") from exc
        try:
            stat = os.fstat(fd)
            if not self._sharded:
                return _File(fd, where, ChunkTable(np.array([0, stat.st_size], np.uint64)))
            return _File(fd, where, shard_table(where, fd, stat, self._per_file[0] * self._per_file[1], self._index_at_end))
        except BaseException:
            os.close(fd)
            raise


class _File:
    """A shard file opened for one read: descriptor (-1: no file), path and chunk table."""

    __slots__ = ("fd", "path", "table")

    def __init__(self, fd: int, path: str, table: ChunkTable | None) -> None:
        self.fd, self.path, self.table = fd, path, table
