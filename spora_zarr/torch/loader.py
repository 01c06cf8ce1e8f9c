"""Batches handed from ``DataLoader`` workers to the training process in reused shared memory.

``DataLoader``'s default collation stacks every batch into new shared memory in
the worker, and the training process maps it anew: each page is faulted in
twice per batch, which on a small machine costs more than reading the tiles
(``docs/benchmarks.md``, "Standardization"). :class:`SharedBatches` puts each
fixed-shape tensor of a batch into one of a few shared buffers that the worker
keeps (a ring of ``slots`` per tensor of an item): stacked there, or read there
by a dataset that asks :func:`lend_batch` for rows (``TileDataset`` does).
:class:`TileLoader`, a ``DataLoader`` that collates with it, keeps the training
process's mappings of those buffers, so after the first batches neither side
faults a page in again.

Lifetime
    A batch's tensors are views of a worker's buffers, refilled ``slots``
    batches of that worker later: a batch stays valid until the next one is
    taken from the loader (``TileLoader`` sizes the ring so); ``.clone()`` what
    must live longer, as with any loader that reuses memory.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import collate, collate_tensor_fn, default_collate, default_collate_fn_map

from ..errors import InvalidInputError
from .workers import worker_init_fn

__all__ = ["SharedBatches", "TileLoader", "lend_batch"]

_default_collate: Callable[[list[Any]], Any] = default_collate  # torch's functions are untyped
_share_memory: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.share_memory_


class SharedBatches:
    """A ``collate_fn`` that stacks each fixed-shape tensor of a batch into a worker's ring of shared buffers.

    Collates like ``default_collate`` (dicts, sequences, numbers, strings),
    except that in a ``DataLoader`` worker a tensor whose items share one
    shape and dtype and whose batch is at least ``min_bytes`` is stacked into
    the next buffer of its ring (the ``i``-th tensor of an item has ring
    ``i``). A dataset may instead have its items read into buffer rows lent
    by :func:`lend_batch` (:meth:`TileDataset.__getitems__` does): such a
    batch is the lent buffer, not copied. Outside a worker (``num_workers=0``)
    it is ``default_collate``.

    Parameters
    ----------
    slots : int
        Buffers per ring; a buffer is refilled ``slots`` batches of the same
        worker later. A ``DataLoader`` needs ``prefetch_factor + 2`` (over an
        ``IterableDataset``, ``prefetch_factor * num_workers + 2``) for a batch
        to stay valid until the next one is taken (:class:`TileLoader`).
    min_bytes : int
        Smaller batches of a tensor go through the default collation.
    """

    def __init__(self, slots: int = 4, min_bytes: int = 1 << 16) -> None:
        if slots < 2:
            raise InvalidInputError(f"SharedBatches needs at least 2 slots, got {slots}")
        self.slots, self.min_bytes = int(slots), int(min_bytes)
        self._reset(None)

    def _reset(self, pid: int | None) -> None:
        self._rings: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        self._turns: dict[tuple[Any, ...], int] = {}
        self._lent: dict[int, torch.Tensor] = {}
        self._visit = 0
        self._pid = pid
        self._map: dict[type | tuple[type, ...], Callable[..., Any]] = {**default_collate_fn_map, torch.Tensor: self._stack}

    def __call__(self, items: list[Any]) -> Any:
        if get_worker_info() is None:
            return _default_collate(items)
        self._own_process()
        self._visit = 0
        try:
            return collate(items, collate_fn_map=self._map)
        finally:
            self._lent.clear()

    def lend(self, count: int, like: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The next buffers of ``count`` rows for the large fixed-shape tensors of the item ``like``, by key."""
        self._own_process()
        lent = {}
        for key, value in like.items():
            if isinstance(value, torch.Tensor) and value.layout == torch.strided and value.nbytes * count >= self.min_bytes:
                buffer = self._next(("lent", key), count, value)
                self._lent[buffer.data_ptr()] = lent[key] = buffer
        return lent

    def _own_process(self) -> None:
        if os.getpid() != self._pid:  # a new worker: its own rings
            self._reset(os.getpid())

    def _next(self, key: tuple[Any, ...], count: int, like: torch.Tensor) -> torch.Tensor:
        """The next buffer of ring ``key``: ``count`` rows shaped like ``like``.

        One ring per key: a batch of another item shape or dtype, or with more
        rows, replaces it (the old buffers stay valid where they are held), so
        the shared memory a worker keeps does not grow with the shapes it saw.
        """
        ring = self._rings.get(key)
        if ring is None or ring[0].shape[1:] != like.shape or ring[0].dtype != like.dtype or ring[0].shape[0] < count:
            shape = (count, *like.shape)
            ring = self._rings[key] = [_share_memory(torch.empty(shape, dtype=like.dtype)) for _ in range(self.slots)]
            self._turns[key] = -1
        turn = self._turns[key] = self._turns[key] + 1
        return ring[turn % self.slots][:count]

    def _stack(self, batch: Sequence[torch.Tensor], *, collate_fn_map: Any = None) -> torch.Tensor:
        first = batch[0]
        lent = self._lent.pop(first.data_ptr(), None)
        if (
            lent is not None
            and len(batch) == lent.shape[0]
            and all(
                t.shape == row.shape and t.stride() == row.stride() and t.dtype == row.dtype and t.data_ptr() == row.data_ptr()
                for t, row in zip(batch, lent)
            )
        ):
            return lent  # the items are the lent rows themselves (not views of them)
        uniform = first.layout == torch.strided and all(t.shape == first.shape and t.dtype == first.dtype for t in batch)
        if not uniform or first.nbytes * len(batch) < self.min_bytes:
            stacked: torch.Tensor = collate_tensor_fn(batch, collate_fn_map=collate_fn_map)
            return stacked
        self._visit += 1
        out = self._next((self._visit,), len(batch), first)
        return torch.stack(list(batch), out=out)

    def __getstate__(self) -> dict[str, Any]:
        return {"slots": self.slots, "min_bytes": self.min_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.slots, self.min_bytes = state["slots"], state["min_bytes"]
        self._reset(None)


_ACTIVE: SharedBatches | None = None  # the collation of the TileLoader this worker process serves


def lend_batch(count: int, like: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Shared buffers of ``count`` rows for the large tensors of the item ``like``, lent by this worker's :class:`TileLoader`.

    A dataset's ``__getitems__`` reads its items into the rows (row ``i`` of
    each buffer for item ``i``); the collation then hands the buffers over as
    the batch, without stacking. Empty outside a ``TileLoader`` worker.
    """
    if _ACTIVE is None or get_worker_info() is None:
        return {}
    return _ACTIVE.lend(count, like)


def _start_worker(collate_fn: SharedBatches, init: Callable[[int], None] | None, worker_id: int) -> None:
    """A TileLoader worker's ``worker_init_fn``: its collation lends buffers, then the user's ``init`` runs."""
    global _ACTIVE
    _ACTIVE = collate_fn
    if init is not None:
        init(worker_id)


class TileLoader(DataLoader[Any]):
    """A ``DataLoader`` whose workers hand batches over in reused shared memory.

    Takes ``DataLoader``'s arguments but ``collate_fn`` (it collates with
    :class:`SharedBatches`, ``prefetch_factor + 2`` slots) and changes two
    defaults: ``worker_init_fn`` is :func:`~spora_zarr.torch.worker_init_fn`
    and workers persist across epochs (``persistent_workers=True`` with
    workers), so their buffers do too. Batches stay valid until the next
    one is taken (see the module docstring). Its workers lend buffer rows to
    the dataset's ``__getitems__`` (:func:`lend_batch`).

    With ``pin_memory=True`` batches are copied into pinned memory as they
    arrive, so the training process maps each buffer anew: the workers still
    reuse theirs.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int | None = 1,
        *,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        persistent_workers: bool | None = None,
        worker_init_fn: Callable[[int], None] | None = worker_init_fn,
        **kwargs: Any,
    ) -> None:
        if "collate_fn" in kwargs:
            raise InvalidInputError("TileLoader collates batches itself; use torch.utils.data.DataLoader for a custom collate_fn")
        if batch_size is None and kwargs.get("batch_sampler") is None:
            raise InvalidInputError("TileLoader hands over batches: give batch_size (or a batch_sampler), not batch_size=None")
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        ahead = prefetch_factor or 0  # batches a worker may have queued beyond the one held
        if isinstance(dataset, IterableDataset):  # workers that run dry leave every queued task to the others
            ahead *= max(1, num_workers)
        collate_fn = SharedBatches(slots=ahead + 2)
        super().__init__(
            dataset,
            batch_size,
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
            worker_init_fn=functools.partial(_start_worker, collate_fn, worker_init_fn),
            collate_fn=collate_fn,
            **kwargs,
        )
        self._held: OrderedDict[int, torch.UntypedStorage] = OrderedDict()
        self._held_limit = 0

    def __iter__(self) -> _HoldingIterator:  # type: ignore[override]  # DataLoader's iterator, wrapped
        if not self.persistent_workers:
            self._held.clear()  # new workers, new buffers
        release = None if self.persistent_workers else self._held.clear  # at the end the workers are gone, and their buffers
        return _HoldingIterator(super().__iter__(), self._hold, release)

    def _hold(self, batch: Any) -> None:
        """Keep a batch's shared storages of ring size mapped; past twice the rings' bytes the least recent go."""
        collate_fn = self.collate_fn
        assert isinstance(collate_fn, SharedBatches)
        storages = [s for s in _storages(batch) if s.is_shared() and s.nbytes() >= collate_fn.min_bytes]
        for storage in storages:
            self._held[storage.data_ptr()] = storage
            self._held.move_to_end(storage.data_ptr())
        size = sum(s.nbytes() for s in storages)
        self._held_limit = max(self._held_limit, 2 * size * collate_fn.slots * max(1, self.num_workers))
        while sum(s.nbytes() for s in self._held.values()) > self._held_limit:
            self._held.popitem(last=False)


class _HoldingIterator:
    """``DataLoader``'s iterator (started as ``iter()`` starts it, with its ``len``), keeping each batch's buffers mapped."""

    def __init__(self, iterator: Any, hold: Callable[[Any], None], release: Callable[[], None] | None) -> None:
        self._iterator, self._hold, self._release = iterator, hold, release

    def __iter__(self) -> _HoldingIterator:
        return self

    def __len__(self) -> int:
        return len(self._iterator)

    def __next__(self) -> Any:
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self._release is not None:
                self._release()  # the workers are gone: their buffers need not stay mapped
            raise
        self._hold(batch)
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


def _storages(value: Any) -> list[torch.UntypedStorage]:
    """The storages of the tensors in a collated batch (dicts, lists and tuples walked)."""
    if isinstance(value, torch.Tensor):
        return [value.untyped_storage()]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _storages(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _storages(v)]
    return []
