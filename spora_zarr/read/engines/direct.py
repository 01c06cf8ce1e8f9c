"""Direct window reads of the converter's layout: local zarr v3 arrays of blosc chunks.

:class:`DirectArray` reads a window of a local zarr v3 array whose chunks are
blosc-compressed (or uncompressed) little-endian ``bytes``, in shards or one
file each. Python opens the files of the shards the window touches and looks
up their chunk tables (the shard index, read once per shard file, checked
against its crc32c and cached); the compiled loop in ``_window.c`` does the
rest with the GIL released: per chunk one ``pread``, one c-blosc decode into a
per-thread buffer and one copy of the overlap into the output, the chunks
shared between the calling thread and helper threads it keeps per process.

Measured on 2 cores (docs/benchmarks.md), this reads 224 px windows of the
converter's layout several times faster than tensorstore. It is fork safe:
no file descriptors are held between reads, cached indexes are plain data and
a forked child starts helper threads of its own. Any other layout (another
codec, a transpose, big-endian bytes, nested shards, a remote store) raises
:class:`UnsupportedLayout` when opened, and the caller reads it with another
engine; so does every array when the compiled loop is not built
(:func:`available`).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import importlib.machinery
import itertools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.core.chunk_grids import RegularChunkGrid

from ...errors import StoreError

__all__ = ["DirectArray", "UnsupportedLayout", "available", "set_threads"]

_MISSING = 2**64 - 1  # offset and size of an inner chunk that was never written
_INDEX_CACHE_ENTRIES = 4096  # shard indexes kept per process (4 KiB each for 256 chunks)
_MAX_AXES = 8  # SPORA_MAX_AXES in _window.c
_MAX_FILES_PER_CALL = 64  # a bigger window is read in parts, so that few files are open at once
_BLOSC_MAX_OVERHEAD = 16

# Windows of blosc chunks that decode fewer bytes are read on the calling thread alone: waking a
# helper costs more than it saves there; uncompressed chunks (a copy each) need four times as many
# (measured on 2 cores, docs/datasets.md).
PARALLEL_MIN_BYTES = 256 * 1024
_THREADS: int = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_LOCK = threading.Lock()
_INDEXES: collections.OrderedDict[tuple[Any, ...], _Table] = collections.OrderedDict()
_LOCAL = threading.local()  # per-thread scratch buffers

_I64 = ctypes.c_int64
_AXES = _I64 * _MAX_AXES


class _Window(ctypes.Structure):
    """``spora_window`` of ``_window.c``, field for field."""

    _fields_ = [
        ("ndim", _I64), ("chunk", _AXES), ("per_shard", _AXES), ("itemsize", _I64), ("compressed", _I64),
        ("validate", ctypes.c_void_p), ("decompress", ctypes.c_void_p), ("fill", ctypes.c_void_p),
        ("start", _AXES), ("stop", _AXES), ("out", ctypes.c_void_p), ("out_stride", _AXES),
        ("shard_lo", _AXES), ("shard_count", _AXES), ("fds", ctypes.c_void_p), ("tables", ctypes.c_void_p),
        ("scratch", ctypes.c_void_p), ("scratch_stride", _I64), ("nthreads", _I64), ("parallel_min_bytes", _I64),
        ("error_code", _I64), ("error_shard", _I64), ("error_offset", _I64), ("error_nbytes", _I64), ("error_detail", _I64),
        ("chunk_lo", _AXES), ("chunk_n", _AXES), ("chunk_bytes", _I64), ("njobs", _I64), ("next", _I64), ("lock", ctypes.c_void_p),
    ]  # fmt: skip


_ERR_READ, _ERR_SHORT, _ERR_DECODE, _ERR_SIZE = 1, 2, 3, 4


class UnsupportedLayout(Exception):
    """The array is not in a layout :class:`DirectArray` reads; its message says why."""


@functools.cache
def _native() -> tuple[Any, int, int]:
    """The compiled window loop and c-blosc's ``blosc_cbuffer_validate`` and ``blosc_decompress_ctx``."""
    here = Path(__file__).parent
    built = [p for suffix in importlib.machinery.EXTENSION_SUFFIXES for p in sorted(here.glob(f"_window{suffix}"))]
    if not built:
        raise UnsupportedLayout(f"the compiled window reader (_window.c) is not built in {here}; reinstall spora_zarr with a C compiler")
    loop = ctypes.CDLL(str(built[0]))
    loop.spora_window_read.argtypes = [ctypes.POINTER(_Window)]
    loop.spora_window_read.restype = ctypes.c_int
    blosc = _blosc_library()
    return loop, _address(blosc.blosc_cbuffer_validate), _address(blosc.blosc_decompress_ctx)


def _address(function: Any) -> int:
    """The address of a C function found through ctypes."""
    address = ctypes.cast(function, ctypes.c_void_p).value
    if not address:
        raise UnsupportedLayout(f"no address for {function!r}")
    return address


def _blosc_library() -> ctypes.CDLL:
    """c-blosc 1.x as linked into numcodecs (a zarr dependency), else imagecodecs' copy."""
    import numcodecs.blosc

    try:
        return ctypes.CDLL(numcodecs.blosc.__file__)
    except OSError:  # pragma: no cover - numcodecs builds that hide the symbols
        import imagecodecs._blosc  # loads its libblosc and that library's own dependencies

        names = sorted((Path(imagecodecs._blosc.__file__).parent.parent / "imagecodecs.libs").glob("libblosc-*"))
        return ctypes.CDLL(str(names[0]))


@functools.cache
def available() -> str | None:
    """None when the direct engine can read here; else why it cannot."""
    try:
        _native()
    except (UnsupportedLayout, OSError, AttributeError) as exc:
        return str(exc)
    return None


def set_threads(n: int) -> None:
    """Decode a window's chunks on at most ``n`` threads (the caller's included)."""
    global _THREADS
    with _LOCK:
        _THREADS = max(1, int(n))


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _scratch(nbytes: int) -> int:
    """The address of this thread's reusable scratch buffer of at least ``nbytes`` bytes."""
    buffer = getattr(_LOCAL, "scratch", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _LOCAL.scratch = np.empty(nbytes, np.uint8)
        _LOCAL.scratch_address = buffer.ctypes.data
    return _LOCAL.scratch_address


class DirectArray:
    """Window reads of one local zarr v3 array in the converter's layout.

    Parameters
    ----------
    directory : str
        The array's directory on the local file system.
    metadata : zarr.core.metadata.v3.ArrayV3Metadata
        Its parsed ``zarr.json``.

    Raises
    ------
    UnsupportedLayout
        The array uses a codec, chunk grid or data type this reader does not
        decode, or the compiled loop is not built.
    """

    def __init__(self, directory: str, metadata: Any) -> None:
        self.directory = directory.rstrip("/")
        if getattr(metadata, "zarr_format", None) != 3:
            raise UnsupportedLayout("not a zarr v3 array")
        if not isinstance(metadata.chunk_grid, RegularChunkGrid):
            raise UnsupportedLayout(f"chunk grid {type(metadata.chunk_grid).__name__} is not regular")
        self.shape = tuple(int(s) for s in metadata.shape)
        if not 1 <= len(self.shape) <= _MAX_AXES:
            raise UnsupportedLayout(f"{len(self.shape)} axes (1 to {_MAX_AXES} are read)")
        self.dtype = np.dtype(metadata.dtype.to_native_dtype())
        if self.dtype.hasobject or self.dtype.kind not in "biufc":
            raise UnsupportedLayout(f"data type {self.dtype} is not numeric")
        self.fill_value = np.asarray(metadata.fill_value, dtype=self.dtype).reshape(1)
        self._encode_key = metadata.chunk_key_encoding.encode_chunk_key
        outer = tuple(int(s) for s in metadata.chunk_grid.chunk_shape)
        codecs = tuple(metadata.codecs)
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
            sharding = codecs[0]
            self.chunk_shape = tuple(int(s) for s in sharding.chunk_shape)
            self.shard_shape: tuple[int, ...] | None = outer
            index_codecs = tuple(sharding.index_codecs)
            if not (
                len(index_codecs) == 2
                and isinstance(index_codecs[0], BytesCodec)
                and _little_endian(index_codecs[0])
                and isinstance(index_codecs[1], Crc32cCodec)
            ):
                raise UnsupportedLayout(f"shard index codecs {index_codecs} are not bytes + crc32c")
            self._index_at_end = sharding.index_location.value == "end"
            codecs = tuple(sharding.codecs)
        else:
            self.chunk_shape = outer
            self.shard_shape = None
        if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
            raise UnsupportedLayout(f"chunk codecs {codecs} are not bytes [+ blosc]")
        if self.dtype.itemsize > 1 and not _little_endian(codecs[0]):
            raise UnsupportedLayout("chunks are not little-endian")
        if len(codecs) == 2 and not isinstance(codecs[1], BloscCodec):
            raise UnsupportedLayout(f"chunk compressor {codecs[1]} is not blosc")
        loop, validate, decompress = _native()
        self._read_window = loop.spora_window_read
        self._file_shape = self.shard_shape or self.chunk_shape  # the part of the array one file holds
        chunks_per_file = [f // c for f, c in zip(self._file_shape, self.chunk_shape)]
        self._chunks_per_file = int(np.prod(chunks_per_file))
        self._chunk_nbytes = int(np.prod(self.chunk_shape)) * self.dtype.itemsize
        self._scratch_stride = (2 * self._chunk_nbytes + _BLOSC_MAX_OVERHEAD + 63) // 64 * 64
        ndim = len(self.shape)
        self._compressed = len(codecs) == 2
        template = _Window(ndim=ndim, itemsize=self.dtype.itemsize, compressed=int(self._compressed))
        template.validate, template.decompress = validate, decompress
        template.fill = self.fill_value.ctypes.data
        template.scratch_stride = self._scratch_stride
        template.chunk[:ndim] = self.chunk_shape
        template.per_shard[:ndim] = chunks_per_file
        self._template = bytes(template)
        self._calls: dict[int, _Call] = {}  # per thread

    def __repr__(self) -> str:
        return f"<DirectArray {self.directory} shape={self.shape} dtype={self.dtype}>"

    # ------------------------------------------------------------------ reading

    def read(self, index: Sequence[slice]) -> np.ndarray:
        """The window ``index`` (one slice per axis, step 1, within the array) as a new array."""
        starts, stops = [], []
        for axis, n in zip(index, self.shape):
            a, b, _ = axis.indices(n)
            starts.append(a)
            stops.append(max(a, b))
        out = np.empty([b - a for a, b in zip(starts, stops)], self.dtype)
        if out.size == 0:
            return out
        self._read_into(out, starts, stops)
        return out

    def _read_into(self, out: np.ndarray, starts: list[int], stops: list[int]) -> None:
        """Read ``[starts, stops)`` into ``out`` (a view of that shape), in parts of at most
        ``_MAX_FILES_PER_CALL`` shard files, split at shard boundaries along the axis spanning most shards."""
        lo = [a // f for a, f in zip(starts, self._file_shape)]
        hi = [(b - 1) // f + 1 for b, f in zip(stops, self._file_shape)]
        spans = [b - a for a, b in zip(lo, hi)]
        if int(np.prod(spans)) > _MAX_FILES_PER_CALL:
            axis = int(np.argmax(spans))
            cut = (lo[axis] + spans[axis] // 2) * self._file_shape[axis]
            for part_start, part_stop in ((starts[axis], cut), (cut, stops[axis])):
                sub_starts, sub_stops = list(starts), list(stops)
                sub_starts[axis], sub_stops[axis] = part_start, part_stop
                view = out[(slice(None),) * axis + (slice(part_start - starts[axis], part_stop - starts[axis]),)]
                self._read_into(view, sub_starts, sub_stops)
            return
        files: list[_File] = []
        try:
            for shard in itertools.product(*(range(a, b) for a, b in zip(lo, hi))):
                files.append(self._open(shard))
            call = self._call(len(files))
            window = call.window
            ndim = len(starts)
            window.start[:ndim], window.stop[:ndim], window.shard_lo[:ndim] = starts, stops, lo
            window.shard_count[:ndim], window.out_stride[:ndim] = spans, out.strides
            for i, file in enumerate(files):
                call.fds[i], call.tables[i] = file.fd, file.table.address
            threads = _THREADS
            window.scratch = _scratch(threads * self._scratch_stride)
            window.nthreads, window.out = threads, out.ctypes.data
            window.parallel_min_bytes = PARALLEL_MIN_BYTES if self._compressed else 4 * PARALLEL_MIN_BYTES
            if self._read_window(call.pointer) != 0:
                raise self._error(window, files)
        finally:
            for file in files:
                if file.fd >= 0:
                    os.close(file.fd)

    def _call(self, shards: int) -> _Call:
        """The calling thread's argument block for reads of this array, with room for ``shards`` files."""
        thread = threading.get_ident()
        call = self._calls.get(thread)
        if call is None or call.capacity < shards:
            call = self._calls[thread] = _Call(self._template, max(shards, 4))
        return call

    def _error(self, window: _Window, files: list[_File]) -> StoreError:
        """The StoreError for a failed read, naming the file and the chunk."""
        where, offset, nbytes, detail = files[window.error_shard].path, window.error_offset, window.error_nbytes, window.error_detail
        chunk = f"the chunk of {nbytes} bytes at offset {offset}"
        messages = {
            _ERR_READ: f"{where}: cannot read {chunk}: {os.strerror(detail)}",
            _ERR_SHORT: f"{where}: read {detail} bytes of {chunk} (truncated file)",
            _ERR_DECODE: f"{where}: cannot decode {chunk}: not a valid blosc buffer",
            _ERR_SIZE: f"{where}: {chunk} decodes to {detail} bytes, expected {self._chunk_nbytes}",
        }
        return StoreError(messages.get(window.error_code, f"{where}: read failed with code {window.error_code}"))

    def _open(self, shard: tuple[int, ...]) -> _File:
        """Open the file of ``shard`` (a chunk, unsharded) for this read, with its chunk table."""
        where = f"{self.directory}/{self._encode_key(shard)}"
        try:
            fd = os.open(where, os.O_RDONLY)
        except FileNotFoundError:
            return _File(-1, where, _NO_TABLE)
        try:
            return _File(fd, where, self._chunk_table(where, fd, os.fstat(fd)))
        except BaseException:
            os.close(fd)
            raise

    def _chunk_table(self, where: str, fd: int, stat: os.stat_result) -> _Table:
        """(offset, size) of each chunk in the file as uint64 pairs, C order; shard indexes are cached by file identity."""
        size = stat.st_size
        if self.shard_shape is None:
            return _Table(np.array([0, size], np.uint64))
        key = (where, stat.st_ino, stat.st_mtime_ns, size)
        with _LOCK:
            table = _INDEXES.get(key)
            if table is not None:
                _INDEXES.move_to_end(key)
                return table
        index_bytes = self._chunks_per_file * 16 + 4
        if size < index_bytes:
            raise StoreError(f"shard {where} is {size} bytes, too short for its {index_bytes}-byte index")
        raw = os.pread(fd, index_bytes, size - index_bytes if self._index_at_end else 0)
        if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
            raise StoreError(f"shard {where}: the checksum of its chunk index does not match (corrupt file)")
        entries = np.frombuffer(raw[:-4], dtype="<u8").astype(np.uint64)
        pairs = entries.reshape(-1, 2)
        written = pairs[:, 0] != _MISSING
        if np.any(pairs[written, 0] + pairs[written, 1] > size):
            raise StoreError(f"shard {where}: its index points past the end of the file (corrupt file)")
        table = _Table(entries)
        with _LOCK:
            _INDEXES[key] = table
            while len(_INDEXES) > _INDEX_CACHE_ENTRIES:
                _INDEXES.popitem(last=False)
        return table


class _Table:
    """A chunk table and its address, for the C loop."""

    __slots__ = ("address", "entries")

    def __init__(self, entries: np.ndarray) -> None:
        self.entries = entries
        self.address = entries.ctypes.data


class _File:
    """A shard file opened for one read: descriptor (-1: no file), path and chunk table."""

    __slots__ = ("fd", "path", "table")

    def __init__(self, fd: int, path: str, table: _Table) -> None:
        self.fd, self.path, self.table = fd, path, table


class _Call:
    """A thread's reusable arguments for ``spora_window_read``: the window and per-file arrays."""

    def __init__(self, template: bytes, capacity: int) -> None:
        self.capacity = capacity
        self.window = _Window.from_buffer_copy(template)
        self.fds = (_I64 * capacity)()
        self.tables = (ctypes.c_void_p * capacity)()
        self.window.fds = ctypes.addressof(self.fds)
        self.window.tables = ctypes.addressof(self.tables)
        self.pointer = ctypes.byref(self.window)


_NO_TABLE = _Table(np.zeros(2, np.uint64))


def _little_endian(codec: BytesCodec) -> bool:
    endian = getattr(codec, "endian", None)
    return endian is None or getattr(endian, "value", endian) == "little"
