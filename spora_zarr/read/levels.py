"""Window reads of one pyramid level array, with no dask graph.

:func:`open_level` gives a :class:`LevelReader` for the array at
``<location>/<path>``; its :meth:`~LevelReader.read` returns one window
``[y0:y0+height, x0:x0+width]`` (clipped to the array) of all or some channels.
The last two axes of every array are (y, x); a leading axis 0 is the channel
axis that ``channels`` selects on, any further leading axes are read whole.

Four engines read the same bytes:

``"direct"``
    :class:`spora_zarr._direct.DirectArray`: a compiled loop of ``pread`` and
    c-blosc per chunk, for local arrays in the converter's layout (blosc or
    uncompressed chunks, sharded or not). The fastest measured here, and fork
    safe. An array in another layout is read by the next engine, and so is
    every array where the loop (``_window.c``) was not built.
``"tensorstore"``
    tensorstore's zarr3 driver (kvstore driver ``file``); local stores only.
``"zarrs"``
    zarr-python with the zarrs (Rust) codec pipeline. zarrs reads
    ``LocalStore``, fsspec ``HTTPFileSystem`` and ``ObjectStore`` stores only;
    on any other store (``s3://`` through s3fs, ``memory://``) this engine is
    zarr-python's own pipeline and the reader says ``engine == "zarr"``.
``"zarr"``
    zarr-python's own pipeline (numcodecs): the slowest, and the one that is
    always safe to use.

Fork safety
-----------
Once a process has used tensorstore, a forked child aborts (tensorstore 0.1.86:
"fork() use detected") or hangs on its first tensorstore call, even through a
fresh handle. The same holds for zarrs: its Rust thread pool is not carried
into a forked child, and the child's first zarrs read hangs. *Opening* a
handle is enough to start these thread pools, so readers open their engine
handle lazily, on the first :meth:`~LevelReader.read`: a parent that only opens
readers (for shapes and dtypes) leaves its forked children free to use any
engine. The direct engine holds no file descriptors between reads, and its
compiled loop makes helper threads anew in a forked child.

This module records the pid of the process that first used each engine
(``_TENSORSTORE_USED_BY_PID``, ``_ZARRS_USED_BY_PID``). Those values are
inherited by forked children, whose pid differs: such a child never uses that
engine; an explicit request for it reads through the engine the child would
pick by default and logs a warning on the ``spora_zarr`` logger. A
tensorstore thread pool started by other code is also noticed at fork time
(its threads are named ``ts_...``); zarrs use by other code is not.

The reader cache is per process (keyed by ``os.getpid()`` and cleared in a
forked child), and a reader object that travels into a forked child (held by a
dataset, say) reopens itself there through :func:`open_level` on its next
read. fsspec filesystems (s3fs) are not fork safe either; fsspec keys its
instance cache by pid and clears it in a forked child, and zarr-python resets
its event loop there, so the reopened reader gets a fresh filesystem.

Readers pickle to a reopen: unpickling calls :func:`open_level` with the same
location, path and requested engine in the unpickling process.
"""

from __future__ import annotations

import importlib.util
import logging
import operator
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import zarr

from .engines import direct as _direct
from ..store.location import Location
from ..errors import InvalidInputError, NotFoundError

__all__ = ["ENGINES", "LevelReader", "default_engine", "limit_codec_threads", "open_level"]

logger = logging.getLogger("spora_zarr")

ENGINES: tuple[str, ...] = ("direct", "tensorstore", "zarrs", "zarr")
"""Names of the read engines, fastest first."""

_BATCHED_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
_ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
# tensorstore's cache of decoded chunks and shard indices, per process.
_TS_CACHE_BYTES = 0

_TENSORSTORE_USED_BY_PID: int | None = None
_ZARRS_USED_BY_PID: int | None = None
_CODEC_THREADS: int | None = None
_TS_CONTEXT: Any = None
_READERS: dict[tuple[Any, ...], _Reader] = {}
_WARNED: set[tuple[int, str]] = set()
_LOCK = threading.RLock()


@runtime_checkable
class LevelReader(Protocol):
    """Reads windows of one level array; made by :func:`open_level`.

    Attributes
    ----------
    shape : tuple of int
        Shape of the whole array, ``(c, y, x)`` (or ``(y, x)``).
    dtype : numpy.dtype
        Stored dtype; windows come back in it.
    engine : str
        The engine that reads, one of :data:`ENGINES` (may differ from the one
        asked for, see :func:`open_level`).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    engine: str

    def read(
        self, y0: int, x0: int, height: int, width: int, channels: Sequence[int] | None = None
    ) -> np.ndarray:
        """Read the window ``[y0:y0+height, x0:x0+width]``, clipped to the array.

        Parameters
        ----------
        y0, x0 : int
            Top-left corner; may be negative or reach past the array (the
            window is clipped, callers pad).
        height, width : int
            Window size, both > 0.
        channels : sequence of int, optional
            Indices on axis 0, returned in this order (repeats allowed);
            ``None`` reads all. Not allowed for a 2-D array.

        Returns
        -------
        numpy.ndarray
            ``(C, h, w)`` (``(h, w)`` for a 2-D array) in the stored dtype,
            where ``h, w`` are the clipped sizes.

        Raises
        ------
        InvalidInputError
            The window does not overlap the array, or a channel is out of range.
        """
        ...


# ----------------------------------------------------------------- engine choice


def _available(engine: str) -> bool:
    if engine == "direct":
        return _direct.available() is None
    return engine in sys.modules or importlib.util.find_spec(engine) is not None


def _poisoned(engine: str) -> bool:
    """Whether this process is a forked child of a process that used ``engine``."""
    used_by = {"tensorstore": _TENSORSTORE_USED_BY_PID, "zarrs": _ZARRS_USED_BY_PID}.get(engine)
    return used_by is not None and used_by != os.getpid()


def _usable(engine: str) -> bool:
    return _available(engine) and not _poisoned(engine)


def _candidates(location: Location) -> list[str]:
    """The engines this process may use on ``location``, in order of preference."""
    local = ["direct", "tensorstore"] if location.is_local else []
    return [engine for engine in (*local, "zarrs", "zarr") if _usable(engine)]


def default_engine(location: Location | str | os.PathLike[str] | None = None) -> str:
    """The engine :func:`open_level` picks when none is asked for.

    Parameters
    ----------
    location : Location or str, optional
        The store; a remote (fsspec URL) store gets neither the direct engine
        nor tensorstore.

    Returns
    -------
    str
        ``"direct"`` for local stores (:func:`open_level` moves on to
        ``"tensorstore"`` for an array in a layout it does not read, or to
        ``"zarrs"`` in a forked child of a process that used tensorstore);
        else ``"zarrs"``, else ``"zarr"`` (a forked child of a process that
        used zarrs).
    """
    return _candidates(Location.parse(location) if location is not None else Location.parse("."))[0]


def _warn_once(message: str) -> None:
    key = (os.getpid(), message)
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def _unusable_reason(location: Location, engine: str) -> str | None:
    """Why this process cannot read ``location`` with ``engine``; None if it can."""
    if engine in ("direct", "tensorstore") and not location.is_local:
        return f"it reads local stores only, not {location.root}"
    if _poisoned(engine):
        used_by = _TENSORSTORE_USED_BY_PID if engine == "tensorstore" else _ZARRS_USED_BY_PID
        return (
            f"this process (pid {os.getpid()}) is a fork of process {used_by}, "
            f"which used {engine}, and {engine} is not fork safe"
        )
    if not _available(engine):
        return "it is not installed"
    return None


def _resolve_engine(location: Location, engine: str | None) -> str:
    """The engine that can serve ``engine`` (or the default) in this process."""
    if engine is None:
        return default_engine(location)
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown read engine {engine!r}; expected one of {', '.join(ENGINES)}")
    reason = _unusable_reason(location, engine)
    if reason is None:
        return engine
    fallback = default_engine(location)
    _warn_once(f"read engine {engine!r} is not usable: {reason}; using {fallback!r}")
    return fallback


def _zarrs_supports(store: Any) -> bool:
    """Whether the zarrs codec pipeline reads ``store`` itself (zarrs-python 0.2)."""
    name = type(store).__name__
    if name in ("LocalStore", "ObjectStore"):
        return True
    return name == "FsspecStore" and type(getattr(store, "fs", None)).__name__ == "HTTPFileSystem"


# ------------------------------------------------------------- threads and forks


def limit_codec_threads(n: int) -> None:
    """Bound the codec and I/O threads of every engine in this process.

    Call it first thing in a worker process (a DataLoader ``worker_init_fn``)
    so that several workers do not oversubscribe the cores. Readers opened
    from now on use the limit; the reader cache is emptied so that
    :func:`open_level` opens them anew. Readers that already read keep their
    thread pools.

    Sets the direct engine's decode threads, tensorstore's ``data_copy_concurrency`` and ``file_io_concurrency``
    limits (a new per-process context), zarr's ``threading.max_workers``,
    zarrs' ``codec_pipeline.chunk_concurrent_maximum`` (and ``_minimum`` to
    1) and, while zarrs has not started its thread pool in this process,
    ``RAYON_NUM_THREADS`` in ``os.environ`` (inherited by processes started
    later), and blosc's thread count (``numcodecs.blosc.set_nthreads``).

    Parameters
    ----------
    n : int
        Threads per pool, >= 1.
    """
    global _CODEC_THREADS, _TS_CONTEXT
    if isinstance(n, bool):
        raise InvalidInputError(f"codec thread count must be an integer >= 1, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise InvalidInputError(f"codec thread count must be an integer >= 1, got {n!r}") from None
    if n < 1:
        raise InvalidInputError(f"codec thread count must be an integer >= 1, got {n!r}")
    with _LOCK:
        _CODEC_THREADS = n
        _TS_CONTEXT = None
        zarr.config.set(
            {
                "threading.max_workers": n,
                "codec_pipeline.chunk_concurrent_maximum": n,
                "codec_pipeline.chunk_concurrent_minimum": 1,
            }
        )
        if _ZARRS_USED_BY_PID is None:
            # rayon sizes its global pool from this when zarrs first uses it.
            os.environ["RAYON_NUM_THREADS"] = str(n)
        try:
            import numcodecs.blosc
        except ImportError:  # pragma: no cover - numcodecs comes with zarr
            pass
        else:
            numcodecs.blosc.set_nthreads(n)
        _direct.set_threads(n)
        pid = os.getpid()
        for key in [k for k in _READERS if k[0] == pid]:
            del _READERS[key]


def note_zarrs_use() -> None:
    """Record that this process runs zarrs' codec pipeline outside a reader (the writer does).

    Its forked children then never read through zarrs: their first
    multi-threaded zarrs call would hang on the thread pool they inherit
    without its threads.
    """
    global _ZARRS_USED_BY_PID
    with _LOCK:
        if _ZARRS_USED_BY_PID is None:
            _ZARRS_USED_BY_PID = os.getpid()


def _tensorstore_context() -> Any:
    global _TS_CONTEXT
    import tensorstore as ts

    with _LOCK:
        if _TS_CONTEXT is None:
            spec: dict[str, Any] = {"cache_pool": {"total_bytes_limit": _TS_CACHE_BYTES}}
            if _CODEC_THREADS is not None:
                spec["data_copy_concurrency"] = {"limit": _CODEC_THREADS}
                spec["file_io_concurrency"] = {"limit": _CODEC_THREADS}
            _TS_CONTEXT = ts.Context(spec)
        return _TS_CONTEXT


def _thread_names() -> list[str]:
    """The names of this process's threads (Linux; empty elsewhere)."""
    names = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/comm") as fh:
                names.append(fh.read().strip())
    except OSError:
        pass
    return names


def _tensorstore_threads_alive() -> bool:
    """Whether tensorstore's thread pools run in this process (Linux only)."""
    return any(name.startswith("ts_") for name in _thread_names())


def _before_fork() -> None:
    global _TENSORSTORE_USED_BY_PID
    if _TENSORSTORE_USED_BY_PID is None and "tensorstore" in sys.modules and _tensorstore_threads_alive():
        _TENSORSTORE_USED_BY_PID = os.getpid()


def _after_fork_in_child() -> None:
    global _TS_CONTEXT, _LOCK
    _LOCK = threading.RLock()  # another thread may have held it at the fork
    _READERS.clear()
    _TS_CONTEXT = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


# ----------------------------------------------------------------------- readers


def _freeze(value: Any) -> Any:
    """A hashable stand-in for storage options."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(repr(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _reopen_level(location: Location, path: str, engine: str | None) -> LevelReader:
    return open_level(location, path, engine=engine)


class _Reader:
    """Shared window logic; subclasses read one tuple of slices."""

    engine = "zarr"

    def __init__(self, location: Location, path: str, requested: str | None, array: zarr.Array) -> None:
        self.location = location
        self.path = path
        self.shape: tuple[int, ...] = tuple(int(s) for s in array.shape)
        self.dtype: np.dtype = np.dtype(array.dtype)
        self._requested = requested
        self._meta = array  # zarr-python handle on zarr's own pipeline: metadata, fork safe
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._where = location.join(path)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where} shape={self.shape} dtype={self.dtype}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen_level, (self.location, self.path, self._requested))

    def read(
        self, y0: int, x0: int, height: int, width: int, channels: Sequence[int] | None = None
    ) -> np.ndarray:
        """Read one window; see :meth:`LevelReader.read`."""
        if os.getpid() != self._pid:  # carried into a forked child: use that process's reader
            return open_level(self.location, self.path, engine=self._requested).read(
                y0, x0, height, width, channels
            )
        index, take = self._selection(y0, x0, height, width, channels)
        out = self._read(index)
        if take is not None:
            out = out[take]
        return out

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self._meta[index])

    def _selection(
        self, y0: int, x0: int, height: int, width: int, channels: Sequence[int] | None
    ) -> tuple[tuple[slice, ...], np.ndarray | None]:
        where = self._where
        try:
            y0, x0, height, width = operator.index(y0), operator.index(x0), operator.index(height), operator.index(width)
        except TypeError:
            raise InvalidInputError(
                f"window of {where} must be given as integers, got y0={y0!r} x0={x0!r} "
                f"height={height!r} width={width!r}"
            ) from None
        ny, nx = self.shape[-2:]
        ya, yb = max(y0, 0), min(y0 + height, ny)
        xa, xb = max(x0, 0), min(x0 + width, nx)
        if height <= 0 or width <= 0 or ya >= yb or xa >= xb:
            raise InvalidInputError(
                f"window y={y0}:{y0 + height}, x={x0}:{x0 + width} (height {height}, width {width}) "
                f"does not overlap array {where} of shape {self.shape}"
            )
        window = (slice(ya, yb), slice(xa, xb))
        if len(self.shape) == 2:
            if channels is not None:
                raise InvalidInputError(f"array {where} of shape {self.shape} has no channel axis to select on")
            return window, None
        rest = (slice(None),) * (len(self.shape) - 3)
        if channels is None:
            return (slice(None), *rest, *window), None
        idx = self._channel_indices(channels, where)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        # Read the bounding run of channels (chunks hold all channels in this layout), then reorder.
        take = None if (hi - lo == idx.size and bool(np.all(np.diff(idx) == 1))) else idx - lo
        return (slice(lo, hi), *rest, *window), take

    def _channel_indices(self, channels: Sequence[int], where: str) -> np.ndarray:
        count = self.shape[0]
        try:
            idx = np.asarray(channels)
        except Exception:  # noqa: BLE001 - anything numpy cannot take is bad input
            idx = np.asarray([], dtype=object)
        if idx.ndim != 1 or idx.size == 0 or not (np.issubdtype(idx.dtype, np.integer)):
            raise InvalidInputError(
                f"channels of {where} must be a non-empty sequence of integers, got {channels!r}"
            )
        bad = idx[(idx < 0) | (idx >= count)]
        if bad.size:
            raise InvalidInputError(
                f"channel indices {bad.tolist()} are out of range for array {where} "
                f"with {count} channels (shape {self.shape})"
            )
        return idx.astype(np.intp, copy=False)


class _DirectReader(_Reader):
    """The converter's layout read chunk by chunk (:mod:`spora_zarr._direct`)."""

    engine = "direct"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._array = _direct.DirectArray(self.location.fs_path(self.path), self._meta.metadata)

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        return self._array.read(index)


class _ZarrReader(_Reader):
    """zarr-python with its own codec pipeline (numcodecs)."""

    engine = "zarr"


class _ZarrsReader(_Reader):
    """zarr-python with the zarrs codec pipeline; opened on first read."""

    engine = "zarrs"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._array: zarr.Array | None = None

    def _handle(self) -> zarr.Array:
        if self._array is not None:
            return self._array
        with self._lock:
            if self._array is None:
                with _LOCK:
                    note_zarrs_use()
                    # The pipeline is chosen (and reads its thread settings from zarr.config)
                    # when the array object is made; no I/O here.
                    meta = self._meta.async_array
                    with zarr.config.set({"codec_pipeline.path": _ZARRS_PIPELINE}):
                        array = zarr.Array(
                            zarr.AsyncArray(metadata=meta.metadata, store_path=meta.store_path, config=meta.config)
                        )
                if getattr(array.async_array.codec_pipeline, "impl", None) is None:
                    logger.debug("zarrs does not read %s; zarr-python's pipeline reads it", self.location.root)
                    self.engine = "zarr"
                self._array = array
        return self._array

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self._handle()[index])


class _TensorstoreReader(_Reader):
    """tensorstore's zarr3 driver on a local ``file`` kvstore; opened on first read."""

    engine = "tensorstore"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._store: Any = None

    def _handle(self) -> Any:
        if self._store is not None:
            return self._store
        global _TENSORSTORE_USED_BY_PID
        with self._lock:
            if self._store is None:
                import tensorstore as ts

                with _LOCK:
                    if _TENSORSTORE_USED_BY_PID is None:
                        _TENSORSTORE_USED_BY_PID = os.getpid()
                    context = _tensorstore_context()
                spec = {
                    "driver": "zarr3",
                    "kvstore": {"driver": "file", "path": self.location.join(self.path) + "/"},
                }
                self._store = ts.open(spec, read=True, context=context).result()
        return self._store

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        return self._handle()[index].read().result()


_READER_CLASSES: dict[str, type[_Reader]] = {
    "direct": _DirectReader,
    "tensorstore": _TensorstoreReader,
    "zarrs": _ZarrsReader,
    "zarr": _ZarrReader,
}


def _open_metadata(location: Location, path: str) -> zarr.Array:
    """The array on zarr-python's own pipeline: reads metadata only, starts no codec threads."""
    where = location.join(path)
    try:
        with zarr.config.set({"codec_pipeline.path": _BATCHED_PIPELINE}):
            return zarr.open_array(location.zarr_store(read_only=True), path=path, mode="r")
    except FileNotFoundError as exc:
        raise NotFoundError(f"no array at {where}: {exc}") from exc
    except zarr.errors.NodeTypeValidationError as exc:
        raise InvalidInputError(f"{where} is not an array: {exc}") from exc


def open_level(
    location: Location | str | os.PathLike[str], path: str, *, engine: str | None = None
) -> LevelReader:
    """A reader of the array at ``<location>/<path>``, cached per process.

    Parameters
    ----------
    location : Location or str
        Store root (local path or fsspec URL, see :class:`Location`).
    path : str
        Array path below the root, e.g. ``"imc/images/T1/1_0mpp"``.
    engine : str, optional
        One of :data:`ENGINES`; ``None`` takes :func:`default_engine`. An
        engine this process cannot use is replaced by :func:`default_engine`
        with a warning on the ``spora_zarr`` logger: the direct engine or
        tensorstore on a remote store, tensorstore or zarrs in a forked child
        of a process that used it. An array the direct engine does not read
        goes to the next engine (tensorstore where usable), with a warning if
        ``"direct"`` was asked for. ``"zarrs"`` on a store zarrs cannot read
        is zarr-python's pipeline without a warning. ``reader.engine`` names
        the engine that reads.

    Returns
    -------
    LevelReader
        The same object for the same root, storage options, path and
        ``engine`` in this process. The engine handle opens on the first read.

    Raises
    ------
    NotFoundError
        No array at that path.
    InvalidInputError
        An unknown engine, the path names a group, or the array has fewer
        than two axes.
    """
    location = Location.parse(location)
    path = str(path).strip("/")
    key = (os.getpid(), location.root, _freeze(location.storage_options), path, engine)
    with _LOCK:
        reader = _READERS.get(key)
        if reader is not None:
            return reader
        resolved = _resolve_engine(location, engine)
        meta = _open_metadata(location, path)
        if len(meta.shape) < 2:
            raise InvalidInputError(f"array {location.join(path)} of shape {meta.shape} has no (y, x) axes")
        reader = None
        if resolved == "direct":
            try:
                reader = _DirectReader(location, path, engine, meta)
            except _direct.UnsupportedLayout as exc:
                resolved = _candidates(location)[1]
                message = f"read engine 'direct' does not read {location.join(path)}: {exc}; using {resolved!r}"
                if engine == "direct":
                    _warn_once(message)
                else:
                    logger.debug(message)
        if reader is None:
            if resolved == "zarrs" and not _zarrs_supports(meta.store):
                resolved = "zarr"
            reader = _READER_CLASSES[resolved](location, path, engine, meta)
        _READERS[key] = reader
        return reader
