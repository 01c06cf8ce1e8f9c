"""zarr-python reads: its own codec pipeline (numcodecs, ``"zarr"``) or the zarrs Rust pipeline (``"zarrs"``).

zarrs reads ``LocalStore``, fsspec ``HTTPFileSystem`` and ``ObjectStore``
stores only; :func:`open_zarrs` gives zarr-python's own pipeline on any other
store (``s3://`` through s3fs, ``memory://``).

Both trust shard indexes too much to report every damaged shard: zarr-python
3.1 reads a chunk whose index entry points past the end of its shard as
missing (fill value, or uninitialised memory), and zarrs 0.2 reads a chunk
whose offset overflows uint64 from the wrapped-around offset. So
:class:`ZarrEngine` reads through a store wrapper that raises on short byte
ranges and on whole shards whose index points outside them, and
:class:`ZarrsEngine` checks the index of each local shard file a window touches
first (:func:`~spora_zarr.read.engines.shards.shard_table`, cached).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, RangeByteRequest, Store
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import StorePath, WrapperStore

from ...errors import InvalidInputError, NotFoundError
from ...store import codecs as _codecs  # noqa: F401 - registers the JPEG codec of slide arrays
from ...store.location import Location
from . import process
from .base import DATA_ERRORS, RegularChunkGrid, damaged
from .shards import MISSING, index_at_end, shard_table

__all__ = ["ZarrEngine", "ZarrsEngine", "open_array", "open_zarrs", "set_threads"]

logger = logging.getLogger("spora_zarr")

_BATCHED_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
_ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


def open_array(location: Location, path: str) -> zarr.Array:
    """The array on zarr-python's own pipeline: reads metadata only, starts no codec threads.

    Raises
    ------
    NotFoundError
        No array at that path.
    InvalidInputError
        The path names a group.
    """
    where = location.join(path)
    try:
        with process.LOCK, zarr.config.set({"codec_pipeline.path": _BATCHED_PIPELINE}):
            return zarr.open_array(location.zarr_store(read_only=True), path=path, mode="r")
    except FileNotFoundError as exc:
        raise NotFoundError(f"no array at {where}: {exc}") from exc
    except zarr.errors.NodeTypeValidationError as exc:
        raise InvalidInputError(f"{where} is not an array: {exc}") from exc


def set_threads(n: int) -> None:
    """zarr's ``threading.max_workers``, zarrs' chunk concurrency (and ``RAYON_NUM_THREADS`` while zarrs has not
    started its pool in this process) and numcodecs' blosc threads, all ``n``."""
    with process.LOCK:
        zarr.config.set(
            {
                "threading.max_workers": n,
                "codec_pipeline.chunk_concurrent_maximum": n,
                "codec_pipeline.chunk_concurrent_minimum": 1,
            }
        )
        if process.used_by("zarrs") is None:
            # rayon sizes its global pool from this when zarrs first uses it.
            os.environ["RAYON_NUM_THREADS"] = str(n)
        import numcodecs.blosc

        numcodecs.blosc.set_nthreads(n)


def _zarrs_supports(store: Store) -> bool:
    """Whether the zarrs codec pipeline reads ``store`` itself (zarrs-python 0.2)."""
    name = type(store).__name__
    if name in ("LocalStore", "ObjectStore"):
        return True
    return name == "FsspecStore" and type(getattr(store, "fs", None)).__name__ == "HTTPFileSystem"


class ZarrEngine:
    """zarr-python with its own codec pipeline (numcodecs), on a store that checks what it reads."""

    engine = "zarr"

    def __init__(self, location: Location, path: str, meta: zarr.Array) -> None:
        self._where = location.join(path)
        async_array = meta.async_array
        store = _CheckedStore(async_array.store_path.store, _shard_layout(meta))
        with process.LOCK, zarr.config.set({"codec_pipeline.path": _BATCHED_PIPELINE}):
            self._array = zarr.Array(
                zarr.AsyncArray(
                    metadata=async_array.metadata, store_path=StorePath(store, async_array.store_path.path), config=async_array.config
                )
            )

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The window ``index``; see :class:`~spora_zarr.read.engines.base.Engine`."""
        try:
            return np.asarray(self._array[index])
        except DATA_ERRORS as exc:
            raise damaged(self._where, self.engine, exc) from exc


class ZarrsEngine:
    """zarr-python with the zarrs codec pipeline; its handle (and zarrs' thread pool) opens on the first read."""

    engine = "zarrs"

    def __init__(self, location: Location, path: str, meta: zarr.Array) -> None:
        self._where = location.join(path)
        self._meta = meta
        self._array: zarr.Array | None = None
        self._lock = threading.Lock()
        layout = _shard_layout(meta)
        self._indexes = _ShardIndexes(location.fs_path(path), layout) if location.is_local and layout else None

    def _handle(self) -> zarr.Array:
        if self._array is not None:
            return self._array
        with self._lock:
            if self._array is None:
                with process.LOCK:
                    process.note_use("zarrs")
                    # The pipeline is chosen (and reads its thread settings from zarr.config)
                    # when the array object is made; no I/O here.
                    meta = self._meta.async_array
                    with zarr.config.set({"codec_pipeline.path": _ZARRS_PIPELINE}):
                        array = zarr.Array(zarr.AsyncArray(metadata=meta.metadata, store_path=meta.store_path, config=meta.config))
                if getattr(array.async_array.codec_pipeline, "impl", None) is None:
                    logger.debug("zarrs does not read %s; zarr-python's pipeline reads it", self._where)
                    self.engine = "zarr"
                self._array = array
        return self._array

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The window ``index``; see :class:`~spora_zarr.read.engines.base.Engine`."""
        try:
            if self._indexes is not None:
                self._indexes.check(index)
            return np.asarray(self._handle()[index])
        except DATA_ERRORS as exc:
            raise damaged(self._where, self.engine, exc) from exc


def open_zarrs(location: Location, path: str, meta: zarr.Array) -> ZarrsEngine | ZarrEngine:
    """The zarrs engine where zarrs reads the store and the codecs, else zarr-python's own pipeline."""
    from .jpeg import is_jpeg_layout

    if _zarrs_supports(meta.store) and not is_jpeg_layout(meta.metadata):
        return ZarrsEngine(location, path, meta)
    return ZarrEngine(location, path, meta)


# ------------------------------------------------------------------ checked store


class _ShardLayout(NamedTuple):
    """What reading a shard index takes: the shard shape, chunks per shard, where the index is, the shard file names."""

    shard_shape: tuple[int, ...]
    chunks: int
    index_at_end: bool
    encode_key: Callable[[tuple[int, ...]], str]


def _shard_layout(meta: zarr.Array) -> _ShardLayout | None:
    """The layout of a zarr v3 array sharded on a regular grid with a bytes + crc32c index; else None."""
    metadata = meta.metadata
    if metadata.zarr_format != 3 or not isinstance(metadata.chunk_grid, RegularChunkGrid):
        return None
    codecs = tuple(metadata.codecs)
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    index_codecs = tuple(sharding.index_codecs)
    if len(index_codecs) != 2 or not isinstance(index_codecs[0], BytesCodec) or not isinstance(index_codecs[1], Crc32cCodec):
        return None
    shard_shape = tuple(int(s) for s in metadata.chunk_grid.chunk_shape)
    chunks = int(np.prod([o // i for o, i in zip(shard_shape, sharding.chunk_shape, strict=True)]))
    at_end = index_at_end(sharding)
    return _ShardLayout(shard_shape, chunks, at_end, metadata.chunk_key_encoding.encode_chunk_key)


class _ShardIndexes:
    """Checks the index of every shard file of a local array that a window touches."""

    def __init__(self, directory: str, layout: _ShardLayout) -> None:
        self._directory = directory
        self._layout = layout

    def check(self, index: tuple[slice, ...]) -> None:
        """Raise StoreError if the index of a shard file under ``index`` is damaged (missing files are fine)."""
        layout = self._layout
        spans = (range(s.start // n, (s.stop - 1) // n + 1) for s, n in zip(index, layout.shard_shape, strict=True))
        for shard in itertools.product(*spans):
            where = f"{self._directory}/{layout.encode_key(shard)}"
            try:
                fd = os.open(where, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                shard_table(where, fd, os.fstat(fd), layout.chunks, layout.index_at_end)
            finally:
                os.close(fd)


class _CheckedStore(WrapperStore[Store]):
    """A store whose short byte-range reads, and whole shards with index entries outside the shard, raise ValueError."""

    def __init__(self, store: Store, layout: _ShardLayout | None = None) -> None:
        super().__init__(store)
        self._layout = layout

    def _with_store(self, store: Store) -> _CheckedStore:
        return type(self)(store, self._layout)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        value = await self._store.get(key, prototype, byte_range)
        if value is None:
            return None
        if isinstance(byte_range, RangeByteRequest) and len(value) != byte_range.end - byte_range.start:
            raise ValueError(f"{key}: read {len(value)} bytes of the byte range [{byte_range.start}, {byte_range.end}) (truncated file)")
        if byte_range is None and self._layout is not None:  # a whole shard (the engine reads chunk keys only)
            _check_shard(key, value, self._layout.chunks, self._layout.index_at_end)
        return value


def _check_shard(key: str, shard: Buffer, count: int, at_end: bool) -> None:
    """Raise ValueError when an index entry of the whole shard ``shard`` points outside it (a short one fails its checksum later)."""
    size, index_bytes = len(shard), 16 * count + 4
    if size < index_bytes:
        return
    raw: Any = shard.as_numpy_array()
    raw = raw[size - index_bytes :] if at_end else raw[:index_bytes]
    pairs = np.frombuffer(raw[: 16 * count].tobytes(), dtype="<u8").reshape(-1, 2)
    offsets, nbytes = pairs[pairs[:, 0] != MISSING].T
    if np.any((offsets > size) | (nbytes > np.uint64(size) - offsets)):
        raise ValueError(f"{key}: its shard index points past the end of the shard ({size} bytes)")
