"""Direct window reads of the converter's layout: local zarr v3 arrays of blosc chunks.

:class:`DirectArray` reads a window of a local zarr v3 array whose chunks are
blosc-compressed (or uncompressed) little-endian ``bytes``, in shards or one
file each. Python opens the files of the shards the window touches and looks
up their chunk tables (the shard index, read once per shard file, checked
and cached by :mod:`.shards`); the compiled loop in ``_window.c`` does the
rest with the GIL released: per chunk one ``pread``, one c-blosc decode into a
per-thread buffer and one copy of the overlap into the output, the chunks
shared between the calling thread and helper threads it keeps per process.

The loop checks its own contract (window inside the array, copies inside the
output, shard numbers and chunk-table slots inside what it was passed) and
:meth:`DirectArray.read` rejects any index but one in-bounds slice per axis, so
a bad call is an error, never a write out of bounds.

Measured on 2 cores (docs/benchmarks.md), this reads 224 px windows of the
converter's layout several times faster than tensorstore. It is fork safe:
no file descriptors are held between reads, cached indexes are plain data and
a forked child starts helper threads of its own. Arrays of JPEG chunks (a
slide's tiles) are read by :mod:`.jpeg` under this engine's name. Any other layout (another
codec, a transpose, big-endian bytes, nested shards, a remote store) raises
:class:`UnsupportedLayout` when opened, and the caller reads it with another
engine; so does every array when the compiled loop is not built
(:func:`available`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import itertools
import math
import operator
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec

from ... import process
from ...errors import InvalidInputError, StoreError
from ...store.arrays import max_file_bytes
from ...store.location import open_local_file
from ...store.shards import index_problem, little_endian
from .base import RegularChunkGrid, UnsupportedLayout
from .shards import ChunkTable, index_at_end, shard_table

if TYPE_CHECKING:
    import zarr

    from ...store.location import Location
    from .jpeg import JpegArray

__all__ = ["DirectArray", "UnsupportedLayout", "available", "open_direct", "set_threads"]

_MAX_AXES = 8  # SPORA_MAX_AXES in _window.c
_MAX_FILES_PER_CALL = 64  # a bigger window is read in parts, so that few files are open at once
_BLOSC_MAX_OVERHEAD = 16
_BLOSC_MAX_BYTES = 2**31 - 1 - _BLOSC_MAX_OVERHEAD  # c-blosc 1 decodes at most this into one buffer

# Windows of blosc chunks that decode fewer bytes are read on the calling thread alone: waking a
# helper costs more than it saves there; uncompressed chunks (a copy each) need four times as many
# (measured on 2 cores, docs/datasets.md).
PARALLEL_MIN_BYTES = 256 * 1024
_THREADS: int = min(8, process.available_cores())
_LOCK = process.PerProcess(threading.Lock)  # a forked child gets its own
_LOCAL = threading.local()  # per-thread scratch buffers

_I64 = ctypes.c_int64
_AXES = _I64 * _MAX_AXES


class _Window(ctypes.Structure):
    """``spora_window`` of ``_window.c``, field for field."""

    _fields_ = [
        ("ndim", _I64), ("shape", _AXES), ("chunk", _AXES), ("per_shard", _AXES), ("itemsize", _I64), ("compressed", _I64),
        ("validate", ctypes.c_void_p), ("decompress", ctypes.c_void_p), ("fill", ctypes.c_void_p),
        ("start", _AXES), ("stop", _AXES), ("out", ctypes.c_void_p), ("out_bytes", _I64), ("out_stride", _AXES),
        ("shard_lo", _AXES), ("shard_count", _AXES), ("nfiles", _I64), ("table_slots", _I64),
        ("fds", ctypes.c_void_p), ("tables", ctypes.c_void_p),
        ("scratch", ctypes.c_void_p), ("scratch_bytes", _I64), ("scratch_stride", _I64), ("nthreads", _I64), ("parallel_min_bytes", _I64),
        ("error_code", _I64), ("error_shard", _I64), ("error_offset", _I64), ("error_nbytes", _I64), ("error_detail", _I64),
        ("chunk_lo", _AXES), ("chunk_n", _AXES), ("chunk_bytes", _I64), ("njobs", _I64), ("next", _I64), ("lock", ctypes.c_void_p),
    ]  # fmt: skip


_WINDOW_BYTES = ctypes.sizeof(_Window)
_ERR_READ, _ERR_SHORT, _ERR_DECODE, _ERR_SIZE, _ERR_CONTRACT = 1, 2, 3, 4, 5
_CONTRACT = {  # error_detail of _ERR_CONTRACT (SPORA_BAD_* in _window.c)
    1: "the array description (axes, item size, chunk or shard shape, threads) is invalid",
    2: "the window is not inside the array",
    3: "a copy would fall outside the output buffer",
    4: "a shard number is outside the files passed",
    5: "a chunk-table slot is outside the table",
    6: "the scratch buffer is too small",
}


@functools.cache
def _native() -> tuple[Any, int, int]:
    """The compiled window loop and c-blosc's ``blosc_cbuffer_validate`` and ``blosc_decompress_ctx``."""
    here = Path(__file__).parent
    built = [p for suffix in importlib.machinery.EXTENSION_SUFFIXES for p in sorted(here.glob(f"_window{suffix}"))]
    if not built:
        raise UnsupportedLayout(f"the compiled window reader (_window.c) is not built in {here}; reinstall spora_zarr with a C compiler")
    loop = ctypes.CDLL(str(built[0]))
    size = getattr(loop, "spora_window_size", None)
    if size is None:
        raise UnsupportedLayout(f"the compiled window reader {built[0]} is older than this spora_zarr (no spora_window_size); rebuild it")
    size.argtypes, size.restype = [], ctypes.c_size_t
    if size() != _WINDOW_BYTES:
        raise UnsupportedLayout(
            f"the compiled window reader {built[0]} takes a {size()}-byte call block, "
            f"this spora_zarr passes {_WINDOW_BYTES} bytes; rebuild it"
        )
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
        import imagecodecs._blosc as blosc  # loads its libblosc and that library's own dependencies

        names = sorted((Path(blosc.__file__).parent.parent / "imagecodecs.libs").glob("libblosc-*"))
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
    with _LOCK.get():
        _THREADS = max(1, int(n))


def _scratch(nbytes: int) -> int:
    """The address of this thread's reusable scratch buffer of at least ``nbytes`` bytes."""
    buffer = getattr(_LOCAL, "scratch", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _LOCAL.scratch = np.empty(nbytes, np.uint8)
        _LOCAL.scratch_address = buffer.ctypes.data
    address: int = _LOCAL.scratch_address
    return address


def open_direct(location: Location, path: str, meta: zarr.Array[Any]) -> DirectArray | JpegArray:
    """The direct engine for the array at ``<location>/<path>`` (``meta``: its zarr handle); local stores only.

    Raises
    ------
    UnsupportedLayout
        The array is not in a layout the direct engine reads, or the compiled loop is not built.
    """
    from .jpeg import JpegArray, is_jpeg_layout

    if is_jpeg_layout(meta.metadata):  # a slide's JPEG tiles kept as chunks
        return JpegArray(location.fs_path(path), meta.metadata, _THREADS)
    return DirectArray(location.fs_path(path), meta.metadata)


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

    engine = "direct"
    resident_bytes = 8 * 1024  # measured: about 5 kB a reader that has read (tracemalloc), its shard index included

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
        self._max_file_bytes = max_file_bytes(metadata)
        outer = tuple(int(s) for s in metadata.chunk_grid.chunk_shape)
        codecs = tuple(metadata.codecs)
        if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
            sharding = codecs[0]
            self.chunk_shape = tuple(int(s) for s in sharding.chunk_shape)
            self.shard_shape: tuple[int, ...] | None = outer
            problem = index_problem(sharding)
            if problem is not None:
                raise UnsupportedLayout(problem)
            self._index_at_end = index_at_end(sharding)
            codecs = tuple(sharding.codecs)
        else:
            self.chunk_shape = outer
            self.shard_shape = None
        if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
            raise UnsupportedLayout(f"chunk codecs {codecs} are not bytes [+ blosc]")
        if self.dtype.itemsize > 1 and not little_endian(codecs[0]):
            raise UnsupportedLayout("chunks are not little-endian")
        if len(codecs) == 2 and not isinstance(codecs[1], BloscCodec):
            raise UnsupportedLayout(f"chunk compressor {codecs[1]} is not blosc")
        loop, validate, decompress = _native()
        self._read_window = loop.spora_window_read
        self._file_shape = self.shard_shape or self.chunk_shape  # the part of the array one file holds
        chunks_per_file = [f // c for f, c in zip(self._file_shape, self.chunk_shape, strict=True)]
        self._chunks_per_file = int(np.prod(chunks_per_file))
        self._chunk_nbytes = int(np.prod(self.chunk_shape)) * self.dtype.itemsize
        self._compressed = len(codecs) == 2
        if self._compressed and self._chunk_nbytes > _BLOSC_MAX_BYTES:
            raise UnsupportedLayout(f"chunks of {self._chunk_nbytes} bytes are more than c-blosc decodes at once")
        self._scratch_stride = (2 * self._chunk_nbytes + _BLOSC_MAX_OVERHEAD + 63) // 64 * 64
        ndim = len(self.shape)
        template = _Window(ndim=ndim, itemsize=self.dtype.itemsize, compressed=int(self._compressed))
        template.validate, template.decompress = validate, decompress
        template.fill = self.fill_value.ctypes.data
        template.scratch_stride = self._scratch_stride
        template.table_slots = self._chunks_per_file
        template.shape[:ndim] = self.shape
        template.chunk[:ndim] = self.chunk_shape
        template.per_shard[:ndim] = chunks_per_file
        self._template = bytes(template)  # every field a read does not set: the array's, or zero
        self._calls: dict[int, _Call] = {}  # per thread

    def __repr__(self) -> str:
        return f"<DirectArray {self.directory} shape={self.shape} dtype={self.dtype}>"

    # ------------------------------------------------------------------ reading

    def read(self, index: Sequence[slice]) -> np.ndarray:
        """The window ``index`` as a new array.

        Parameters
        ----------
        index : sequence of slice
            One slice per axis, bounds integers (or None) with
            ``0 <= start <= stop <= length``, step 1 (or None).

        Raises
        ------
        InvalidInputError
            Any other index.
        StoreError
            A shard file of the window is damaged or cannot be read.
        """
        starts, stops = self._bounds(index)
        out = np.empty([b - a for a, b in zip(starts, stops, strict=True)], self.dtype)
        if out.size:
            self._read_into(out, starts, stops, out.nbytes)
        return out

    def read_into(self, index: Sequence[slice], out: np.ndarray) -> np.ndarray:
        """Decode the window ``index`` straight into ``out`` (its shape and this dtype; a view is fine) and return it.

        A view whose last axis is not contiguous, or with negative strides, gets a copy of :meth:`read`.
        """
        starts, stops = self._bounds(index)
        shape = tuple(b - a for a, b in zip(starts, stops, strict=True))
        if out.shape != shape or out.dtype != self.dtype or not out.flags.writeable:
            raise InvalidInputError(
                f"array {self.directory}: out must be a writable {self.dtype} array of shape {shape}, got {out.dtype} {out.shape}"
            )
        if out.strides[-1] != out.itemsize or any(s <= 0 for s in out.strides):
            out[...] = self.read(index)
        elif out.size:
            self._read_into(out, starts, stops, out.itemsize + sum((n - 1) * s for n, s in zip(out.shape, out.strides)))
        return out

    def _bounds(self, index: Sequence[slice]) -> tuple[list[int], list[int]]:
        """(starts, stops) of ``index``; InvalidInputError unless it is one in-bounds slice of step 1 per axis."""
        shape = self.shape
        starts, stops = [], []
        if isinstance(index, (tuple, list)) and len(index) == len(shape):
            for axis, n in zip(index, shape, strict=True):
                if not isinstance(axis, slice) or axis.step not in (None, 1):
                    break
                try:
                    a = 0 if axis.start is None else operator.index(axis.start)
                    b = n if axis.stop is None else operator.index(axis.stop)
                except TypeError:
                    break
                if not 0 <= a <= b <= n:
                    break
                starts.append(a)
                stops.append(b)
            else:
                return starts, stops
        raise InvalidInputError(
            f"array {self.directory} of shape {shape}: cannot read {index!r}; a window is one slice per axis "
            f"({len(shape)}), with integer bounds 0 <= start <= stop <= the axis length and step 1"
        )

    def _read_into(self, out: np.ndarray, starts: list[int], stops: list[int], out_bytes: int) -> None:
        """Read ``[starts, stops)`` into ``out`` (a view of that shape, ``out_bytes`` bytes of its buffer from its first
        element on), in parts of at most ``_MAX_FILES_PER_CALL`` shard files, split at shard boundaries along the axis
        spanning most shards."""
        lo = [a // f for a, f in zip(starts, self._file_shape, strict=True)]
        hi = [(b - 1) // f + 1 for b, f in zip(stops, self._file_shape, strict=True)]
        spans = [b - a for a, b in zip(lo, hi, strict=True)]
        if math.prod(spans) > _MAX_FILES_PER_CALL:
            axis = int(np.argmax(spans))
            cut = (lo[axis] + spans[axis] // 2) * self._file_shape[axis]
            for part_start, part_stop in ((starts[axis], cut), (cut, stops[axis])):
                sub_starts, sub_stops = list(starts), list(stops)
                sub_starts[axis], sub_stops[axis] = part_start, part_stop
                skip = part_start - starts[axis]
                view = out[(slice(None),) * axis + (slice(skip, part_stop - starts[axis]),)]
                self._read_into(view, sub_starts, sub_stops, out_bytes - skip * out.strides[axis])
            return
        files: list[_File] = []
        try:
            for shard in itertools.product(*(range(a, b) for a, b in zip(lo, hi, strict=True))):
                files.append(self._open(shard))
            call = self._call(len(files))
            ctypes.memmove(call.address, self._template, _WINDOW_BYTES)  # no field left from the last read
            window = call.window
            ndim = len(starts)
            window.start[:ndim], window.stop[:ndim], window.shard_lo[:ndim] = starts, stops, lo
            window.shard_count[:ndim], window.out_stride[:ndim] = spans, out.strides
            window.out, window.out_bytes = out.ctypes.data, out_bytes
            window.nfiles, window.fds, window.tables = len(files), call.fds_address, call.tables_address
            for i, file in enumerate(files):
                call.fds[i], call.tables[i] = file.fd, file.table.address
            threads = _THREADS
            window.nthreads, window.scratch_bytes = threads, threads * self._scratch_stride
            window.scratch = _scratch(window.scratch_bytes)
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
            call = self._calls[thread] = _Call(max(shards, 4))
        return call

    def _error(self, window: _Window, files: list[_File]) -> StoreError:
        """The StoreError for a failed read, naming the file and the chunk (the array for a broken contract)."""
        code, shard, offset, detail = window.error_code, window.error_shard, window.error_offset, window.error_detail
        if code == _ERR_CONTRACT:
            what = _CONTRACT.get(detail, f"contract check {detail} failed")
            ndim = len(self.shape)
            window_text = ", ".join(f"{a}:{b}" for a, b in zip(window.start[:ndim], window.stop[:ndim], strict=True))
            return StoreError(
                f"array {self.directory} of shape {self.shape}: the compiled window loop refused to read [{window_text}]: "
                f"{what} (value {offset})"
            )
        where = files[shard].path if 0 <= shard < len(files) else self.directory
        chunk = f"the chunk of {window.error_nbytes} bytes at offset {offset}"
        messages = {
            _ERR_READ: f"{where}: cannot read {chunk}: {os.strerror(detail)}",
            _ERR_SHORT: f"{where}: read {detail} bytes of {chunk} (truncated file)",
            _ERR_DECODE: f"{where}: cannot decode {chunk}: not a valid blosc buffer",
            _ERR_SIZE: f"{where}: {chunk} decodes to {detail} bytes, expected {self._chunk_nbytes}",
        }
        return StoreError(messages.get(code, f"{where}: read failed with code {code}"))

    def _open(self, shard: tuple[int, ...]) -> _File:
        """Open the file of ``shard`` (a chunk, unsharded) for this read, with its chunk table."""
        where = f"{self.directory}/{self._encode_key(shard)}"
        fd = open_local_file(where, self._max_file_bytes)  # a regular file only: a FIFO would block, /dev/zero never end
        if fd is None:
            return _File(-1, where, _NO_FILE)
        try:
            return _File(fd, where, self._chunk_table(where, fd, os.fstat(fd)))
        except BaseException:
            os.close(fd)
            raise

    def _chunk_table(self, where: str, fd: int, stat: os.stat_result) -> ChunkTable:
        """(offset, size) of each chunk in the file, C order; a whole file for an unsharded array."""
        if self.shard_shape is None:
            return ChunkTable(np.array([0, stat.st_size], np.uint64))
        return shard_table(where, fd, stat, self._chunks_per_file, self._index_at_end)


class _File:
    """A shard file opened for one read: descriptor (-1: no file), path and chunk table."""

    __slots__ = ("fd", "path", "table")

    def __init__(self, fd: int, path: str, table: ChunkTable) -> None:
        self.fd, self.path, self.table = fd, path, table


class _Call:
    """A thread's reusable arguments for ``spora_window_read``: the call block and per-file arrays of ``capacity`` files."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.window = _Window()
        self.address = ctypes.addressof(self.window)
        self.pointer = ctypes.byref(self.window)
        self.fds = (_I64 * capacity)()
        self.tables = (ctypes.c_void_p * capacity)()
        self.fds_address, self.tables_address = ctypes.addressof(self.fds), ctypes.addressof(self.tables)


_NO_FILE = ChunkTable(np.zeros(2, np.uint64))  # the table of a file that is not there (never read)
