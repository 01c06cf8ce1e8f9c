"""spora_zarr.torch.TileLoader and SharedBatches: batches in reused shared memory, equal to default collation.

A real converted cohort is read through TileDataset; every batch of a
TileLoader with fork (and spawn) workers is compared, when it arrives and
again after the training step's time has passed, with the batch DataLoader's
default collation gives in one process for the same indices.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, get_worker_info

from spora_zarr import ConvertOptions, convert_cohort
from spora_zarr.datasets import ComposedImagingDataset, HEImagingDataset, MultiplexImagingDataset
from spora_zarr.errors import InvalidInputError
from spora_zarr.testing.cohorts import make_synthetic_cohort
from spora_zarr.torch import SharedBatches, TileDataset, TileLoader

from .conftest import fork_while_held

TILE = 32
BATCH = 16
TIMEOUT = 60


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> TileDataset:
    root = tmp_path_factory.mktemp("loader")
    src = make_synthetic_cohort(root / "tiff", tissues=("A", "B"), he_shape={"A": (301, 517), "B": (200, 150)}, tile_size=TILE, seed=3)
    dest = root / "cohort.zarr"
    assert convert_cohort(src, dest, ConvertOptions(progress=False)).ok
    composed = ComposedImagingDataset(
        [HEImagingDataset("c", dest, "0_5mpp", TILE, verbose=False), MultiplexImagingDataset("c", dest, 0.5, TILE, verbose=False)]
    )
    dataset = TileDataset(composed, preprocess=False)
    assert len(dataset) % BATCH, "the last batch should be smaller"
    return dataset


def _expected(tiles: TileDataset) -> list[dict]:
    return list(DataLoader(tiles, batch_size=BATCH))


def _assert_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


@pytest.mark.timeout(4 * TIMEOUT)
def test_batches_equal_default_collation_and_reuse_buffers(tiles) -> None:
    """Shuffled epochs, so that buffer rows are refilled with other tiles (a tissue missing a channel among them)."""
    position = {(t, r, c): i for i, (t, r, c) in enumerate(zip(tiles.index.tissue_id, tiles.index.row, tiles.index.col))}
    loader = TileLoader(
        tiles,
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        multiprocessing_context="fork",
        timeout=TIMEOUT,
        generator=torch.Generator().manual_seed(0),
    )
    assert loader.persistent_workers
    buffers: dict[int, int] = {}
    for _ in range(3):  # epochs: every worker's ring of prefetch_factor + 2 buffers comes round
        seen = []
        for batch in loader:
            indices = [position[(t, int(r), int(c))] for t, r, c in zip(batch["tissue_id"], batch["row"], batch["col"])]
            want = default_collate([tiles[i] for i in indices])
            _assert_equal(batch, want)
            time.sleep(0.02)  # a training step: the workers run ahead meanwhile
            _assert_equal(batch, want)  # still intact until the next batch is taken
            pointer = batch["imc"].untyped_storage().data_ptr()
            buffers[pointer] = buffers.get(pointer, 0) + 1
            assert batch["imc"].untyped_storage().is_shared()
            seen.extend(indices)
        assert sorted(seen) == list(range(len(tiles)))
    assert len(buffers) <= 2 * (2 + 2), "each worker reuses prefetch_factor + 2 buffers"
    assert max(buffers.values()) >= 3
    assert not all(tiles.index.tissue_id.map(lambda t: bool(tiles._panel_positions(0, "imc", t)[0] is None))), "a tissue misses a channel"


def test_one_process_and_spawn_workers(tiles) -> None:
    want = _expected(tiles)
    iterator = iter(TileLoader(tiles, batch_size=BATCH))
    assert len(iterator) == len(want)
    for batch, expected in zip(iterator, want, strict=True):
        _assert_equal(batch, expected)
    spawned = TileLoader(tiles, batch_size=BATCH, num_workers=1, multiprocessing_context="spawn", timeout=TIMEOUT)
    for batch, expected in zip(spawned, want, strict=True):
        _assert_equal(batch, expected)


class _Mixed(Dataset):
    """Items with a large fixed-shape tensor, a tensor whose shape varies, a small one, a tuple and a string."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        big = torch.arange(64 * 64 * 8, dtype=torch.int32).reshape(8, 64, 64) * (i + 1)
        ragged = torch.full((2, 2 + i % 2), i, dtype=torch.float64)
        return {"big": big, "pair": (big[0] + 1, i), "small": torch.tensor([i]), "ragged_sum": ragged.sum(), "name": f"n{i}"}


def test_shared_batches_collate_as_default_in_workers() -> None:
    data = _Mixed()
    want = list(DataLoader(data, batch_size=4))
    loader = TileLoader(data, batch_size=4, num_workers=1, multiprocessing_context="fork", timeout=TIMEOUT)
    for _ in range(2):
        for batch, expected in zip(loader, want, strict=True):
            assert torch.equal(batch["big"], expected["big"]) and torch.equal(batch["small"], expected["small"])
            assert torch.equal(batch["pair"][0], expected["pair"][0]) and torch.equal(batch["pair"][1], expected["pair"][1])
            assert batch["name"] == expected["name"] and torch.equal(batch["ragged_sum"], expected["ragged_sum"])
            assert batch["big"].untyped_storage().nbytes() >= batch["big"].nbytes


def test_bad_arguments(tiles) -> None:
    with pytest.raises(InvalidInputError, match="collates batches itself"):
        TileLoader(tiles, batch_size=BATCH, collate_fn=lambda items: items)
    with pytest.raises(InvalidInputError, match="not batch_size=None"):
        TileLoader(tiles, batch_size=None)
    with pytest.raises(InvalidInputError, match="at least 2 slots"):
        SharedBatches(slots=1)
    assert np.isscalar(len(TileLoader(tiles, batch_size=BATCH)))


class _Uneven(IterableDataset):
    """Three workers; two run dry after one batch, so torch queues every task on the third."""

    def __iter__(self):
        worker = get_worker_info()
        count = 4 if worker.id < 2 else 160
        for k in range(count):
            yield torch.full((64, 64), worker.id * 10000 + k, dtype=torch.int64)


@pytest.mark.timeout(4 * TIMEOUT)
def test_iterable_dataset_batches_stay_intact_when_workers_run_dry() -> None:
    loader = TileLoader(_Uneven(), batch_size=4, num_workers=3, multiprocessing_context="fork", timeout=TIMEOUT)
    count = 0
    for batch in loader:
        first = batch[:, 0, 0].clone()
        time.sleep(0.02)  # the busy worker runs ahead with every queued task meanwhile
        assert torch.equal(batch[:, 0, 0], first) and torch.equal(batch, first[:, None, None].expand(-1, 64, 64))
        count += 1
    assert count == 2 + 160 // 4


class _Bucketed(Dataset):
    """Each batch pads its items to a length of its own (bucketing); items report their worker's open descriptors."""

    def __len__(self) -> int:
        return 4 * 60

    def __getitems__(self, indices: list[int]) -> list[dict]:
        length = 64 + indices[0] // 4
        descriptors = len(os.listdir("/proc/self/fd"))
        return [{"x": torch.full((length, 256), i, dtype=torch.int32), "fds": descriptors} for i in indices]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_worker_buffers_do_not_grow_with_the_shapes_seen() -> None:
    loader = TileLoader(_Bucketed(), batch_size=4, num_workers=1, multiprocessing_context="fork", timeout=TIMEOUT)
    descriptors = []
    for number, batch in enumerate(loader):
        assert torch.equal(batch["x"][:, 0, 0], torch.arange(4 * number, 4 * number + 4, dtype=torch.int32))
        assert batch["x"].shape == (4, 64 + number, 256)
        descriptors.append(int(batch["fds"][0]))
    assert max(descriptors[10:]) - min(descriptors[10:]) <= 8, descriptors  # one ring of 4 buffers, replaced per shape


class _Transposed(TileDataset):
    """The fast batch path, then an augmentation that returns views of the lent rows (square tiles transposed)."""

    def __getitems__(self, indices):
        items = super().__getitems__(indices)
        for item in items:
            item["imc"] = item["imc"].transpose(-1, -2)
        return items


def test_views_of_lent_rows_are_collated_as_views(tiles) -> None:
    augmented = _Transposed(tiles.datasets, preprocess=False)
    indices = list(range(BATCH))
    want = default_collate(augmented.__getitems__(indices))
    got = next(iter(TileLoader(augmented, batch_size=BATCH, num_workers=1, multiprocessing_context="fork", timeout=TIMEOUT)))
    assert torch.equal(got["imc"], want["imc"]) and not torch.equal(got["imc"], want["imc"].transpose(-1, -2))


def test_no_fork_lands_inside_a_thread_read_tile(tiles) -> None:
    """read_tile runs torch's operators, whose first call in a process initialises native statics (glibc's
    ``__exit_funcs_lock`` held meanwhile): a DataLoader's fork waits for a thread inside it."""
    store = tiles.datasets[0].primary.cohort.location.root
    inside, release = threading.Event(), threading.Event()
    released_at: list[float] = []

    def standardizer(image: torch.Tensor, tissue_id: str, channel_names: object) -> torch.Tensor:
        if threading.current_thread() is not threading.main_thread():
            inside.set()
            release.wait()
            released_at.append(time.monotonic())
        return image.float()

    dataset = MultiplexImagingDataset("c", store, 0.5, TILE, standardization=standardizer, verbose=False)
    thread = threading.Thread(target=dataset.read_tile, args=(dataset.tissue_ids[0], 0, 0))
    forked_at = fork_while_held(inside, release, [thread], TIMEOUT)
    assert released_at and forked_at >= released_at[0]


_FIRST_READ_IN_A_THREAD = """
import sys, threading
from torch.utils.data import DataLoader
from spora_zarr.datasets import HEImagingDataset
from spora_zarr.torch import TileDataset

he = HEImagingDataset("c", sys.argv[1], "0_5mpp", 32, verbose=False)
tiles = TileDataset(he, masks=())  # opens no array: the thread's first read makes this process's first one
stop = threading.Event()

def read() -> None:
    while not stop.is_set():
        he.read_tile("A", 0, 0)

thread = threading.Thread(target=read)
thread.start()
sys.setswitchinterval(1e-6)  # the threads interleave finely: forks land inside the thread's first read
try:  # six forks: before the fix, three runs of four hung (a worker waits on the import lock of zarrs forever)
    loader = DataLoader(tiles, batch_size=8, num_workers=6, multiprocessing_context="fork", timeout=15)
    count = sum(len(batch["tile_id"]) for batch in loader)
finally:
    stop.set()
    thread.join()
print(count, len(tiles))
"""


@pytest.mark.timeout(120)
def test_workers_forked_while_a_thread_makes_its_first_read_do_not_hang(tiles) -> None:
    """The thread imports zarr's codec pipeline entry point (zarrs) and validates NGFF metadata (ome-zarr-models builds
    pydantic classes, under cached_property locks) on its first read; a fork in either must not leave the workers
    waiting for a lock held by a thread they lack. A fresh interpreter: this one imported zarrs long ago."""
    import subprocess
    import sys

    pytest.importorskip("zarrs")
    store = tiles.datasets[0].primary.cohort.location.root
    done = subprocess.run([sys.executable, "-c", _FIRST_READ_IN_A_THREAD, store], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    count, total = map(int, done.stdout.split())
    assert count == total > 0
