"""DataLoader worker set-up shared by the tile dataset and the loader: codec threads, torch threads, the allocator.

:func:`worker_init_fn` is what a ``DataLoader`` (or :class:`~spora_zarr.torch.TileLoader`)
calls in each worker; :func:`setup_worker_once` lets a dataset run it on its
first item in a worker whose ``DataLoader`` did not.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import get_worker_info

from ..process import available_cores
from ..read.levels import limit_codec_threads
from ..runtime import keep_freed_batches

__all__ = ["available_cores", "setup_worker_once", "worker_init_fn"]

_SETUP_PID: int | None = None  # the process worker_init_fn last ran in
_CHECKED_PID: int | None = None  # the process setup_worker_once last checked


def worker_init_fn(worker_id: int | None = None) -> None:
    """Set up a ``DataLoader`` worker: bounded codec threads, one torch thread, freed tiles reused.

    Gives each of the ``num_workers`` workers ``max(1, cores // num_workers)``
    codec threads (:func:`spora_zarr.limit_codec_threads`) and calls
    ``torch.set_num_threads(1)``; in a worker, glibc keeps up to a batch of
    freed tile buffers for the next batch (:func:`spora_zarr.runtime.keep_freed_batches`)
    and a dataset with ``forget_readers`` (``TileDataset``, the spora datasets)
    drops the readers it inherited. Outside a worker it assumes one worker and
    leaves torch's threads and the allocator alone. :class:`~spora_zarr.torch.TileDataset`
    calls it on its first item in a worker when the ``DataLoader`` did not.

    Parameters
    ----------
    worker_id : int, optional
        Passed by ``DataLoader``; unused.
    """
    global _SETUP_PID, _CHECKED_PID
    info = get_worker_info()
    workers = info.num_workers if info is not None else 1
    limit_codec_threads(max(1, available_cores() // workers))
    if info is not None:
        torch.set_num_threads(1)
        keep_freed_batches()
        forget = getattr(info.dataset, "forget_readers", None)
        if callable(forget):
            forget()
    _SETUP_PID = _CHECKED_PID = os.getpid()


def setup_worker_once() -> bool:
    """Run :func:`worker_init_fn` in a ``DataLoader`` worker that has not run it; ``True`` when it ran now.

    Checks once per process (a pid comparison on later calls).
    """
    global _CHECKED_PID
    pid = os.getpid()
    if pid == _CHECKED_PID:
        return False
    _CHECKED_PID = pid
    if get_worker_info() is not None and pid != _SETUP_PID:
        worker_init_fn()
        return True
    return False
