"""Window reads of one pyramid level array, with no dask graph.

:func:`open_level` gives a :class:`LevelReader` for the array at
``<location>/<path>``; its :meth:`~LevelReader.read` returns one window
``[y0:y0+height, x0:x0+width]`` (clipped to the array) of all or some channels.
The last two axes of every array are (y, x); a leading axis 0 is the channel
axis that ``channels`` selects on, any further leading axes are read whole.

Four engines read the same bytes, each a module of :mod:`spora_zarr.read.engines`
behind one interface (:class:`~spora_zarr.read.engines.base.Engine`: one
slice per axis in, a new array out), listed in its ``REGISTRY``:

``"direct"``
    :class:`~spora_zarr.read.engines.direct.DirectArray`: a compiled loop of
    ``pread`` and c-blosc per chunk, for local arrays in the converter's
    layout (blosc or uncompressed chunks, sharded or not). The fastest
    measured here, and fork safe. An array in another layout is read by the
    next engine, and so is every array where the loop (``_window.c``) was not
    built.
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

Every engine reports damaged chunk data as a :class:`~spora_zarr.errors.StoreError`
naming the array (or its shard file).

Fork safety
-----------
Once a process has used tensorstore or zarrs, a forked child must not use it
(it aborts or hangs; :mod:`spora_zarr.process`). *Opening* a
handle is enough to start their thread pools, so readers open their engine
handle lazily, on the first :meth:`~LevelReader.read`: a parent that only opens
readers (for shapes and dtypes) leaves its forked children free to use any
engine. The direct engine holds no file descriptors between reads, and its
compiled loop makes helper threads anew in a forked child.

:mod:`spora_zarr.process` records the pid of the process that
first used each of them; a forked child inherits the record with another pid
and never uses that engine: an explicit request for it reads through the
engine the child would pick by default and logs a warning on the
``spora_zarr`` logger.

The reader cache is per process (a :class:`~spora_zarr.process.PerProcess`
:class:`ReaderCache`: a forked child starts with an empty one) and bounded: it keeps the
readers used last, at most :data:`MAX_OPEN_READERS` of them and
:data:`MAX_OPEN_READER_BYTES` of their engines' memory (an evicted reader still reads; it
is just no longer shared), and a reader object that travels into a forked child (held by a
dataset, say) reopens itself there through :func:`open_level` on its next
read. fsspec filesystems (s3fs) are not fork safe either; fsspec keys its
instance cache by pid and clears it in a forked child, and zarr-python resets
its event loop there, so the reopened reader gets a fresh filesystem.

Readers pickle to a reopen: unpickling calls :func:`open_level` with the same
location, path and requested engine in the unpickling process.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from .. import process
from ..errors import InvalidInputError, StoreError
from ..store.location import Location
from ..store.staging import replacements
from .engines import REGISTRY, Engine, UnsupportedLayout, direct, tensorstore
from .engines import zarr as zarr_engines

__all__ = [
    "ENGINES",
    "DEFAULT_RESIDENT_BYTES",
    "MAX_OPEN_READERS",
    "MAX_OPEN_READER_BYTES",
    "LevelReader",
    "ReaderCache",
    "WindowReader",
    "default_engine",
    "limit_codec_threads",
    "open_level",
]

logger = logging.getLogger("spora_zarr")

ENGINES: tuple[str, ...] = tuple(REGISTRY)
"""Names of the read engines, fastest first."""

MAX_OPEN_READERS = 32768
"""Readers :func:`open_level` keeps per process, least recently opened or asked for dropped first (as many as a
:class:`~spora_zarr.access.tissue.TissueReader` keeps)."""
MAX_OPEN_READER_BYTES = 256 * 2**20
"""The memory the readers of one cache may hold, by their engines' estimates (:attr:`WindowReader.resident_bytes`):
32,768 direct readers, or about 2,700 tensorstore ones."""
DEFAULT_RESIDENT_BYTES = 8 * 1024
"""What a :class:`ReaderCache` counts for a reader that does not say (``resident_bytes``)."""


class ReaderCache:
    """Readers by key, least recently used first, bounded by their count and by the memory their engines hold.

    :func:`open_level` keeps one per process, and each
    :class:`~spora_zarr.access.tissue.TissueReader` its own; iterating gives the keys, oldest first.
    A reader without ``resident_bytes`` counts as :data:`DEFAULT_RESIDENT_BYTES`. Threads may share
    one; a forked child makes its own (both owners are per process).
    """

    def __init__(self) -> None:
        self._readers: OrderedDict[Any, LevelReader] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._readers)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._readers)

    def get(self, key: Any) -> LevelReader | None:
        """The reader of ``key`` (now the most recently used), or None."""
        with self._lock:
            reader = self._readers.get(key)
            if reader is not None:
                self._readers.move_to_end(key)
            return reader

    def add(self, key: Any, reader: LevelReader, *, max_readers: int, max_bytes: int | None = None) -> None:
        """Keep ``reader`` under ``key``; drop the least recently used beyond ``max_readers`` or ``max_bytes`` (never the last).

        ``max_bytes`` None is :data:`MAX_OPEN_READER_BYTES`.
        """
        max_bytes = MAX_OPEN_READER_BYTES if max_bytes is None else max_bytes
        with self._lock:
            old = self._readers.pop(key, None)
            if old is not None:
                self.nbytes -= _resident_bytes(old)
            self._readers[key] = reader
            self.nbytes += _resident_bytes(reader)
            while len(self._readers) > 1 and (len(self._readers) > max_readers or self.nbytes > max_bytes):
                self.nbytes -= _resident_bytes(self._readers.popitem(last=False)[1])


def _resident_bytes(reader: LevelReader) -> int:
    return int(getattr(reader, "resident_bytes", DEFAULT_RESIDENT_BYTES))


_READERS: process.PerProcess[ReaderCache] = process.PerProcess(ReaderCache)
_WARNED: process.PerProcess[set[str]] = process.PerProcess(set)  # warnings given in this process


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

    @property
    def engine(self) -> str:
        """The engine that reads."""
        ...

    def read(
        self, y0: int, x0: int, height: int, width: int, channels: Sequence[int] | None = None, *, out: np.ndarray | None = None
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
        out : numpy.ndarray, optional
            Where to write the window (the clipped shape, the stored dtype, a
            view is fine); it is returned. The direct engine decodes into it.

        Returns
        -------
        numpy.ndarray
            ``(C, h, w)`` (``(h, w)`` for a 2-D array) in the stored dtype,
            where ``h, w`` are the clipped sizes.

        Raises
        ------
        InvalidInputError
            The window does not overlap the array, or a channel is out of range.
        StoreError
            The window's chunk data is damaged; the message names the array.
        """
        ...


# ----------------------------------------------------------------- engine choice


def _unusable_reason(location: Location, engine: str) -> str | None:
    """Why this process cannot read ``location`` with ``engine``; None if it can."""
    if REGISTRY[engine].local_only and not location.is_local:
        return f"it reads local stores only, not {location.root}"
    if process.poisoned(engine):
        return (
            f"this process (pid {os.getpid()}) is a fork of process {process.used_by(engine)}, "
            f"which used {engine}, and {engine} is not fork safe"
        )
    return REGISTRY[engine].unavailable()


def _candidates(location: Location) -> list[str]:
    """The engines this process may use on ``location``, in order of preference."""
    return [engine for engine in ENGINES if _unusable_reason(location, engine) is None]


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
    warned = _WARNED.get()
    if message not in warned:
        warned.add(message)
        logger.warning(message)


def _resolve_engine(location: Location, engine: str | None) -> str:
    """The engine that can serve ``engine`` (or the default) in this process."""
    if engine is None:
        return default_engine(location)
    if engine not in REGISTRY:
        raise InvalidInputError(f"unknown read engine {engine!r}; expected one of {', '.join(ENGINES)}")
    reason = _unusable_reason(location, engine)
    if reason is None:
        return engine
    fallback = default_engine(location)
    _warn_once(f"read engine {engine!r} is not usable: {reason}; using {fallback!r}")
    return fallback


# ------------------------------------------------------------------------ threads


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
    if isinstance(n, bool):
        raise InvalidInputError(f"codec thread count must be an integer >= 1, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise InvalidInputError(f"codec thread count must be an integer >= 1, got {n!r}") from None
    if n < 1:
        raise InvalidInputError(f"codec thread count must be an integer >= 1, got {n!r}")
    with process.LOCK.get():
        direct.set_threads(n)
        tensorstore.set_threads(n)
        zarr_engines.set_threads(n)
        _READERS.clear()


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


def _array_document(location: Location, path: str) -> str | None:
    """The file of a local array's ``zarr.json`` (``None`` remotely): its :func:`_stamp` tells an array written again."""
    return os.path.join(location.fs_path(path), "zarr.json") if location.is_local else None


def _stamp(document: str | None) -> tuple[int, ...] | None:
    """A file's device, inode, modification time and size: an array written again (its group replaced) has another
    ``zarr.json`` (a permission change or a hard-linked backup leaves them). ``None`` for no file (remotely, or none
    there: opening the array says so)."""
    if document is None:
        return None
    try:
        status = os.stat(document)
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)


def _reopen_level(location: Location, path: str, engine: str | None) -> LevelReader:
    return open_level(location, path, engine=engine)


class WindowReader:
    """The :class:`LevelReader` over any engine: window clipping, channel selection, fork reopen, pickling.

    Parameters
    ----------
    engine : Engine
        Reads one slice per axis.
    location : Location
        Store root.
    path : str
        Array path below the root.
    shape : tuple of int
        The array's shape (two axes or more).
    dtype : numpy.dtype
        Its stored dtype.
    requested : str, optional
        The engine asked of :func:`open_level`, which a reopen (in a forked
        child, or when unpickled) asks for again.

    A reader of a local array refuses to read once the array has been written again (its ``zarr.json`` is
    another file: ``add-image``, with ``--overwrite`` or of another resolution, which writes the group anew),
    with a ``StoreError`` asking to open it again: what was opened with it (its shape, a dataset's channels,
    tiles and statistics) is of the old one. ``stamp``: that of :func:`open_level`, taken before it read the
    array's metadata (default: taken now).
    """

    def __init__(
        self,
        engine: Engine,
        location: Location,
        path: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        requested: str | None = None,
        *,
        stamp: tuple[int, ...] | None | Literal[False] = False,
    ) -> None:
        self._document = _array_document(location, path)
        self._stamp = _stamp(self._document) if stamp is False else stamp  # open_level's: taken before the metadata was read
        self.location = location
        self.path = path
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.dtype: np.dtype = np.dtype(dtype)
        self._engine = engine
        self._requested = requested
        self._pid = os.getpid()
        self._in_child: tuple[int, LevelReader | None] = (self._pid, None)
        self._where = location.join(path)
        self._rest = tuple(slice(0, n) for n in self.shape[1:-2])  # leading axes after the channels, read whole

    @property
    def engine(self) -> str:
        """The engine that reads (see :data:`ENGINES`)."""
        return self._engine.engine

    @property
    def resident_bytes(self) -> int:
        """About the memory this reader holds once it has read (its engine's ``resident_bytes``)."""
        return self._engine.resident_bytes

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._where} engine={self.engine} shape={self.shape} dtype={self.dtype}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen_level, (self.location, self.path, self._requested))

    def read(
        self, y0: int, x0: int, height: int, width: int, channels: Sequence[int] | None = None, *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Read one window; see :meth:`LevelReader.read`."""
        if self._stamp is not None and (now := _stamp(self._document)) != self._stamp:
            what = "gone" if now is None else "written again (its group replaced or a resolution added)"
            raise StoreError(f"{self._where}: {what} since this reader was opened; open the dataset, the image or the level again")
        if os.getpid() != self._pid:  # carried into a forked child: use that process's reader (kept here for the next read)
            pid, reader = self._in_child
            if reader is None or pid != os.getpid():
                reader = open_level(self.location, self.path, engine=self._requested)
                self._in_child = (os.getpid(), reader)
            return reader.read(y0, x0, height, width, channels, out=out)
        index, take = self._selection(y0, x0, height, width, channels)
        if out is not None:
            sizes = [i.stop - i.start for i in index]
            if take is not None:  # a channel selection: axis 0 of the result
                sizes[0] = len(take)
            shape = tuple(sizes)
            if out.shape != shape or out.dtype != self.dtype:
                raise InvalidInputError(f"out for a window of {self._where} must be {self.dtype} {shape}, got {out.dtype} {out.shape}")
            read_into = getattr(self._engine, "read_into", None)
            if take is None and read_into is not None:
                read: np.ndarray = read_into(index, out)
                return read
        window = self._engine.read(index)
        window = window if take is None else window[take]
        if out is None:
            return window
        out[...] = window
        return out

    def _selection(
        self, y0: int, x0: int, height: int, width: int, channels: Sequence[int] | None
    ) -> tuple[tuple[slice, ...], np.ndarray | None]:
        """One in-bounds slice per axis for the engine, and the channel order to take from its result (None: as read)."""
        where = self._where
        try:
            y0, x0, height, width = operator.index(y0), operator.index(x0), operator.index(height), operator.index(width)
        except TypeError:
            raise InvalidInputError(
                f"window of {where} must be given as integers, got y0={y0!r} x0={x0!r} height={height!r} width={width!r}"
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
        rest = self._rest
        if channels is None:
            return (slice(0, self.shape[0]), *rest, *window), None
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
            raise InvalidInputError(f"channels of {where} must be a non-empty sequence of integers, got {channels!r}")
        bad = idx[(idx < 0) | (idx >= count)]
        if bad.size:
            raise InvalidInputError(
                f"channel indices {bad.tolist()} are out of range for array {where} with {count} channels (shape {self.shape})"
            )
        return idx.astype(np.intp, copy=False)


def open_level(location: Location | str | os.PathLike[str], path: str, *, engine: str | None = None) -> LevelReader:
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
        ``engine`` in this process while its :class:`ReaderCache` keeps it
        (the readers used last, :data:`MAX_OPEN_READERS` and
        :data:`MAX_OPEN_READER_BYTES`), and while the array was not written
        again: on a local store while its ``zarr.json`` is the same file (any
        process's rewrite), on a remote one while this process replaced no group
        of the store (``add-image --overwrite``, say; another process's rewrite
        is not noticed: a request per call would be). The engine handle opens
        on the first read.

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
    stamp = _stamp(_array_document(location, path))
    changed = replacements(location) if not location.is_local else 0  # locally the stamp tells
    key = (location.root, _freeze(location.storage_options), path, engine, stamp, changed)
    with process.LOCK.get():
        readers = _READERS.get()
        reader = readers.get(key)
        if reader is not None:
            return reader
        resolved = _resolve_engine(location, engine)
        meta = zarr_engines.open_array(location, path)
        if len(meta.shape) < 2:
            raise InvalidInputError(f"array {location.join(path)} of shape {meta.shape} has no (y, x) axes")
        candidates = _candidates(location)
        refused: list[tuple[str, UnsupportedLayout]] = []
        for name in candidates[candidates.index(resolved) :]:
            try:
                opened = REGISTRY[name].open(location, path, meta)
            except UnsupportedLayout as exc:
                refused.append((name, exc))
                continue
            for other, reason in refused:
                message = f"read engine {other!r} does not read {location.join(path)}: {reason}; using {name!r}"
                if engine == other:
                    _warn_once(message)
                else:
                    logger.debug(message)
            reader = WindowReader(opened, location, path, tuple(meta.shape), np.dtype(meta.dtype), engine, stamp=stamp)
            readers.add(key, reader, max_readers=MAX_OPEN_READERS)
            return reader
        raise AssertionError(f"no engine reads {location.join(path)}: {refused}")  # zarr-python reads every array
