"""tensorstore's zarr3 driver on a local ``file`` kvstore; local stores only.

The files a window touches are checked first
(:class:`~spora_zarr.read.engines.shards.LocalFiles`): tensorstore would block
on a FIFO and read ``/dev/zero`` without end.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import zarr

from ... import process
from ...store.location import Location
from .base import DATA_ERRORS, UnsupportedLayout, damaged
from .jpeg import is_jpeg_layout
from .shards import LocalFiles

__all__ = ["TensorstoreEngine", "set_threads"]

_CACHE_BYTES = 0  # tensorstore's cache of decoded chunks and shard indices, per process
_THREADS: int | None = None


def set_threads(n: int) -> None:
    """Bound ``data_copy_concurrency`` and ``file_io_concurrency`` of handles opened from now on to ``n``."""
    global _THREADS
    with process.LOCK.get():
        _THREADS = n
        _CONTEXT.clear()


def _make_context() -> Any:
    """A tensorstore context with this module's cache and thread limits."""
    import tensorstore as ts

    spec: dict[str, Any] = {"cache_pool": {"total_bytes_limit": _CACHE_BYTES}}
    if _THREADS is not None:
        spec["data_copy_concurrency"] = {"limit": _THREADS}
        spec["file_io_concurrency"] = {"limit": _THREADS}
    return ts.Context(spec)


_CONTEXT: process.PerProcess[Any] = process.PerProcess(_make_context)  # made on first use, after set_threads


class TensorstoreEngine:
    """tensorstore's zarr3 driver; its handle (and tensorstore's thread pools) opens on the first read."""

    engine = "tensorstore"
    resident_bytes = 96 * 1024  # measured: about 89 kB of RSS a handle that has read (tensorstore's own state)

    def __init__(self, location: Location, path: str, meta: zarr.Array[Any]) -> None:
        if is_jpeg_layout(meta.metadata):
            raise UnsupportedLayout("tensorstore has no imagecodecs_jpeg codec (a JPEG slide's chunks)")
        self._where = location.join(path)
        self._files = LocalFiles(location.fs_path(path), meta.metadata)
        self._store: Any = None
        self._lock = threading.Lock()

    def _handle(self) -> Any:
        if self._store is not None:
            return self._store
        with self._lock:
            if self._store is None:
                import tensorstore as ts

                with process.LOCK.get():
                    process.note_use("tensorstore")
                    context = _CONTEXT.get()
                spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": self._where + "/"}}
                self._store = ts.open(spec, read=True, context=context).result()
        return self._store

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The window ``index``; see :class:`~spora_zarr.read.engines.base.Engine`."""
        try:
            self._files.check(index)
            window: np.ndarray = self._handle()[index].read().result()
            return window
        except DATA_ERRORS as exc:
            raise damaged(self._where, self.engine, exc) from exc
