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
first (:func:`~spora_zarr.read.engines.shards.shard_table`, cached). Both
read only regular local files of a size the layout allows
(:class:`~spora_zarr.read.engines.shards.LocalFiles`): a FIFO would block the
read, ``/dev/zero`` would never end.

:class:`ZarrEngine` also indexes like an array (``shape``, ``dtype``,
``__getitem__``), so dask reads through it (``Cohort.open_image``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

import numpy as np
import zarr
import zarr.registry
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.config import BadConfigError
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.storage import LocalStore, StorePath, WrapperStore

from ... import process
from ...store import codecs as _codecs  # noqa: F401 - registers the JPEG codec of slide arrays
from ...store.arrays import max_file_bytes, read_array_metadata
from ...store.location import Location, open_local_file
from .base import DATA_ERRORS, damaged
from .shards import MISSING, LocalFiles, ShardLayout, shard_layout

__all__ = ["ZarrEngine", "ZarrsEngine", "load_entry_points", "open_array", "open_zarrs", "set_threads"]

logger = logging.getLogger("spora_zarr")

_BATCHED_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
_ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


def open_array(location: Location, path: str) -> zarr.Array[Any]:
    """The array on zarr-python's own pipeline: reads its checked metadata only, starts no codec threads.

    Raises
    ------
    NotFoundError
        No array at that path.
    InvalidInputError
        The path names a group.
    StoreError
        Its ``zarr.json`` is damaged or declares more than is read
        (:func:`~spora_zarr.store.arrays.read_array_metadata`).
    """
    metadata = read_array_metadata(location, path)
    store = location.zarr_store(read_only=True)
    with process.LOCK.get(), zarr.config.set({"codec_pipeline.path": _BATCHED_PIPELINE}):
        return zarr.Array[Any](zarr.AsyncArray(metadata=metadata, store_path=StorePath(store, path)))


def load_entry_points() -> None:
    """Import the codec pipelines, buffers and ndbuffers that zarr's registries name through entry points now.

    zarr imports them on the first array made in a process (zarrs'
    ``ZarrsCodecPipeline``: ``import zarrs``). A process forked while another
    thread is in that import inherits the import's module lock held by a thread
    it does not have, and hangs on its own first array. Run before every fork,
    this waits for an import in flight, so the child imports nothing.
    """
    for load in (zarr.registry.get_pipeline_class, zarr.registry.get_buffer_class, zarr.registry.get_ndbuffer_class):
        # Loads the registry's entry points, then looks up the configured class (not registered: the first array says so).
        with contextlib.suppress(BadConfigError):
            load()


process.on_fork(before=load_entry_points)


def set_threads(n: int) -> None:
    """zarr's ``threading.max_workers``, zarrs' chunk concurrency (and ``RAYON_NUM_THREADS`` while zarrs has not
    started its pool in this process) and numcodecs' blosc threads, all ``n``."""
    with process.LOCK.get():
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
    resident_bytes = 8 * 1024  # measured: about 5.5 kB of RSS a reader that has read

    def __init__(self, location: Location, path: str, meta: zarr.Array[Any]) -> None:
        self._where = location.join(path)
        self.shape: tuple[int, ...] = tuple(meta.shape)
        self.dtype = np.dtype(meta.dtype)
        self.ndim = len(self.shape)
        async_array = meta.async_array
        metadata = meta.metadata
        max_bytes = max_file_bytes(metadata) if isinstance(metadata, ArrayV3Metadata) else None
        store = _CheckedStore(async_array.store_path.store, shard_layout(metadata), max_bytes)
        with process.LOCK.get(), zarr.config.set({"codec_pipeline.path": _BATCHED_PIPELINE}):
            self._array = zarr.Array[Any](
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

    __getitem__ = read


class ZarrsEngine:
    """zarr-python with the zarrs codec pipeline; its handle (and zarrs' thread pool) opens on the first read."""

    engine = "zarrs"
    resident_bytes = 8 * 1024  # measured: about 6 kB of RSS a reader that has read

    def __init__(self, location: Location, path: str, meta: zarr.Array[Any]) -> None:
        self._where = location.join(path)
        self._meta = meta
        self._array: zarr.Array[Any] | None = None
        self._lock = threading.Lock()
        self._files = LocalFiles(location.fs_path(path), meta.metadata) if location.is_local else None

    def _handle(self) -> zarr.Array[Any]:
        if self._array is not None:
            return self._array
        with self._lock:
            if self._array is None:
                with process.LOCK.get():
                    process.note_use("zarrs")
                    # The pipeline is chosen (and reads its thread settings from zarr.config)
                    # when the array object is made; no I/O here.
                    meta = self._meta.async_array
                    with zarr.config.set({"codec_pipeline.path": _ZARRS_PIPELINE}):
                        array = zarr.Array[Any](zarr.AsyncArray(metadata=meta.metadata, store_path=meta.store_path, config=meta.config))
                if getattr(array.async_array.codec_pipeline, "impl", None) is None:
                    logger.debug("zarrs does not read %s; zarr-python's pipeline reads it", self._where)
                    self.engine = "zarr"
                self._array = array
        return self._array

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The window ``index``; see :class:`~spora_zarr.read.engines.base.Engine`."""
        try:
            if self._files is not None:
                self._files.check(index)
            return np.asarray(self._handle()[index])
        except DATA_ERRORS as exc:
            raise damaged(self._where, self.engine, exc) from exc


def open_zarrs(location: Location, path: str, meta: zarr.Array[Any]) -> ZarrsEngine | ZarrEngine:
    """The zarrs engine where zarrs reads the store and the codecs, else zarr-python's own pipeline."""
    from .jpeg import is_jpeg_layout

    if _zarrs_supports(meta.store) and not is_jpeg_layout(meta.metadata):
        return ZarrsEngine(location, path, meta)
    return ZarrEngine(location, path, meta)


# ------------------------------------------------------------------ checked store


class _CheckedStore(WrapperStore[Store]):
    """A store whose short byte-range reads, and whole shards with index entries outside the shard, raise ValueError.

    On a ``LocalStore`` a key whose file is not a regular file, or is longer
    than ``max_bytes``, raises ``StoreError`` before any byte is read.
    """

    def __init__(self, store: Store, layout: ShardLayout | None = None, max_bytes: int | None = None) -> None:
        super().__init__(store)
        self._layout = layout
        self._max_bytes = max_bytes
        self._root = str(store.root) if isinstance(store, LocalStore) else None

    def _with_store(self, store: Store) -> _CheckedStore:
        return type(self)(store, self._layout, self._max_bytes)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if self._root is not None:
            fd = open_local_file(f"{self._root}/{key}", self._max_bytes)
            if fd is None:
                return None
            os.close(fd)
        value = await self._store.get(key, prototype, byte_range)
        if value is None:
            return None
        if isinstance(byte_range, RangeByteRequest) and len(value) != byte_range.end - byte_range.start:
            why = "truncated file" if len(value) < byte_range.end - byte_range.start else "a server that ignores range requests?"
            raise ValueError(f"{key}: read {len(value)} bytes of the byte range [{byte_range.start}, {byte_range.end}) ({why})")
        if isinstance(byte_range, SuffixByteRequest) and len(value) > byte_range.suffix:
            raise ValueError(f"{key}: read {len(value)} bytes of its last {byte_range.suffix} (a server that ignores range requests?)")
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
