"""The tissue interface over a real converted cohort: reads equal the datasets' read_tile, errors, the LRU bound, fork, pickling."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest

from spora_zarr.access import TissueReader, TissueSource, Window
from spora_zarr.datasets import HEImagingDataset, MultiplexImagingDataset
from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.read import levels

SIZE = 64
KINDS = ("complete", "qc_filtered", "uniprot_filtered")


@pytest.fixture(scope="module")
def dest(cohort_pair: tuple[Path, Path]) -> Path:
    return cohort_pair[1]


def _corners(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    height, width = shape[-2:]
    return [(0, 0), (17, 33), (height - SIZE, width - SIZE), (height - 20, width - 10), (-12, -5)]


@pytest.mark.parametrize("kind", KINDS)
def test_reads_equal_the_datasets_read_tile(dest: Path, kind: str) -> None:
    reader = TissueReader(dest, "imc", 1.0)
    dataset = MultiplexImagingDataset("t", dest, 1.0, SIZE, modality="imc")
    assert isinstance(reader, TissueSource) and isinstance(dataset, TissueSource)
    assert reader.tissue_ids == dataset.tissue_ids and reader.tissue_ids
    for tissue in reader.tissue_ids:
        assert reader.channel_names(tissue, kind) == dataset.channel_names(tissue, kind)
        channels = reader.channel_indices(tissue, kind)
        for row, col in _corners(reader.image_shape(tissue)):
            window = Window.from_corner(row, col, SIZE, SIZE)
            for pad in (False, True):
                expected = dataset.read_tile(tissue, row, col, kind=kind, preprocess=False, pad=pad).numpy()
                np.testing.assert_array_equal(reader.read(tissue, window, channels, pad=pad), expected)
            into = np.empty((len(reader.channel_names(tissue, kind)), SIZE, SIZE), reader.level(tissue).dtype)
            assert reader.read(tissue, window, channels, pad=True, out=into) is into
            np.testing.assert_array_equal(into, dataset.read_tile(tissue, row, col, kind=kind, preprocess=False, pad=True).numpy())


def test_masks_and_rgb_equal_the_datasets(dest: Path) -> None:
    reader = TissueReader(dest, "he", "0_5mpp")
    dataset = HEImagingDataset("t", dest, 0.5, SIZE)
    assert reader.tissue_ids == dataset.tissue_ids
    for tissue in reader.tissue_ids:
        for row, col in _corners(reader.image_shape(tissue)):
            window = Window.from_corner(row, col, SIZE, SIZE)
            np.testing.assert_array_equal(reader.read(tissue, window), dataset.read_tile(tissue, row, col, preprocess=False).numpy())
            for kind in ("tissue_masks", "cell_masks"):
                if reader.has_mask(tissue, kind):
                    mask = reader.read_mask(tissue, window, kind, pad=True)
                    expected = dataset.read_mask_tile(tissue, row, col, mask=kind, pad=True).numpy()
                    assert mask.dtype == reader.level(tissue, kind).dtype  # stored ids, not converted
                    np.testing.assert_array_equal(mask, expected)


def test_preprocessing_hook(dest: Path) -> None:
    seen = []

    def hook(data: np.ndarray, tissue: str, names: list[str]) -> np.ndarray:
        seen.append((tissue, list(names)))
        return data * 2

    reader = TissueReader(dest, "imc", 1.0, preprocess=hook)
    tissue = reader.tissue_ids[0]
    data = reader.read(tissue, Window.from_corner(0, 0, 8, 8), reader.channel_indices(tissue, "qc_filtered"))
    np.testing.assert_array_equal(reader.preprocess(data, tissue, "qc_filtered"), data * 2)
    assert seen == [(tissue, reader.channel_names(tissue, "qc_filtered"))]
    assert reader.preprocessor is hook
    plain = TissueReader(dest, "imc", 1.0)
    assert plain.preprocessor is None and plain.preprocess(data, tissue, "complete") is data


def test_missing_things_are_named(dest: Path) -> None:
    imc, he = TissueReader(dest, "imc", 1.0), TissueReader(dest, "he", 0.5)
    tissue = imc.tissue_ids[0]
    with pytest.raises(InvalidInputError, match="multiplex datasets only"):
        he.channel_indices(he.tissue_ids[0], "qc_filtered")
    with pytest.raises(InvalidInputError, match="no channel table"):
        he.kind_channels("complete")
    with pytest.raises(InvalidInputError, match="unknown channel kind 'best'"):
        imc.channel_indices(tissue, "best")
    with pytest.raises(InvalidInputError, match="unknown mask 'nuclei'"):
        imc.read_mask(tissue, Window.from_corner(0, 0, 4, 4), "nuclei")
    with pytest.raises(NotFoundError, match="unknown tissue 'nope'"):
        imc.check_tissue("nope")
    with pytest.raises(InvalidInputError, match="lies outside"):
        imc.read(tissue, Window.from_corner(10**6, 0, 4, 4))
    with pytest.raises(NotFoundError, match="no modality 'xrf'"):
        TissueReader(dest, "xrf", 1.0)
    with pytest.raises(NotFoundError, match="no images at resolution 7_0mpp"):
        TissueReader(dest, "imc", 7.0)


def test_readers_are_a_bounded_lru(dest: Path) -> None:
    reader = TissueReader(dest, "imc", 1.0, max_readers=2)
    tissues = reader.tissue_ids
    assert len(tissues) >= 3
    for tissue in tissues:
        reader.read(tissue, Window.from_corner(0, 0, 4, 4))
    cache = reader.__dict__["_cache_readers"]
    assert list(cache) == [("imc", t) for t in tissues[-2:]]  # the least recently used went first
    reader.level(tissues[-2])
    assert list(cache)[-1] == ("imc", tissues[-2])
    reader.forget_readers()
    assert "_cache_readers" not in reader.__dict__
    np.testing.assert_array_equal(reader.read(tissues[0], Window.from_corner(0, 0, 4, 4)).shape[-2:], (4, 4))


_FORKED: TissueReader | None = None


def _read_in_child(tissue: str) -> tuple[np.ndarray, int]:
    assert _FORKED is not None
    data = _FORKED.read(tissue, Window.from_corner(5, 7, SIZE, SIZE), pad=True)
    return data, _FORKED.__dict__["_cache_readers_pid"]


def test_fork_and_pickle(dest: Path) -> None:
    global _FORKED
    reader = TissueReader(dest, "imc", 1.0)
    tissue = reader.tissue_ids[0]
    expected = reader.read(tissue, Window.from_corner(5, 7, SIZE, SIZE), pad=True)  # the parent has read
    _FORKED = reader
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            data, pid = pool.apply(_read_in_child, (tissue,))
    finally:
        _FORKED = None
    np.testing.assert_array_equal(data, expected)
    assert pid != reader.__dict__["_cache_readers_pid"]  # the child opened its own readers

    clone = pickle.loads(pickle.dumps(reader))
    assert "_cache_readers" not in clone.__dict__
    np.testing.assert_array_equal(clone.read(tissue, Window.from_corner(5, 7, SIZE, SIZE), pad=True), expected)
    assert len(pickle.dumps(reader)) < 4096


def test_the_process_reader_cache_is_bounded(dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = TissueReader(dest, "imc", 1.0)
    tissues = reader.tissue_ids
    assert len(tissues) >= 3
    window = Window.from_corner(3, 4, 16, 16)
    expected = {t: reader.read(t, window) for t in tissues}
    monkeypatch.setattr(levels, "MAX_OPEN_READERS", 2)
    levels._READERS.clear()
    paths = [reader.cohort.level_path("imc", t, 1.0) for t in tissues]
    opened = [levels.open_level(dest, p) for p in paths]
    cache = levels._READERS.get()
    assert len(cache) == 2 and [key[2] for key in cache] == paths[-2:]  # the least recently used went first
    assert levels.open_level(dest, paths[-2]) is opened[-2]  # a hit is used again, and moves last
    assert [key[2] for key in cache] == [paths[-1], paths[-2]]
    for tissue, path, old in zip(tissues, paths, opened):
        np.testing.assert_array_equal(old.read(3, 4, 16, 16), expected[tissue])  # an evicted reader still reads
        np.testing.assert_array_equal(levels.open_level(dest, path).read(3, 4, 16, 16), expected[tissue])
        assert len(cache) <= 2


@pytest.mark.parametrize("engine", ["direct", "tensorstore"])
def test_reader_caches_are_bounded_by_their_engines_memory_too(dest: Path, monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    """A tensorstore handle holds about 90 kB, a direct reader 5: the caches keep as many as fit in MAX_OPEN_READER_BYTES."""
    if engine == "tensorstore":
        pytest.importorskip("tensorstore")
    reader = TissueReader(dest, "imc", 1.0, engine=engine)
    tissues = reader.tissue_ids
    assert len(tissues) >= 3
    weight = reader.level(tissues[0]).resident_bytes  # type: ignore[attr-defined]
    assert weight == (96 if engine == "tensorstore" else 8) * 1024
    monkeypatch.setattr(levels, "MAX_OPEN_READER_BYTES", 2 * weight)
    levels._READERS.clear()
    reader.forget_readers()
    expected = {}
    for n, tissue in enumerate(tissues):
        expected[tissue] = reader.read(tissue, Window.from_corner(0, 0, 4, 4))
        for cache, key in ((reader.__dict__["_cache_readers"], ("imc", tissue)), (levels._READERS.get(), None)):
            assert len(cache) == min(n + 1, 2) and cache.nbytes == len(cache) * weight  # the least recently used went first
            assert key is None or list(cache)[-1] == key
    small = levels.ReaderCache()
    small.add("a", reader.level(tissues[0]), max_readers=10, max_bytes=weight // 2)
    assert list(small) == ["a"] and small.nbytes == weight  # never the last one
    np.testing.assert_array_equal(reader.read(tissues[0], Window.from_corner(0, 0, 4, 4)), expected[tissues[0]])


def test_a_reader_cache_shared_by_threads_keeps_its_bounds_and_count() -> None:
    """Threads reading tiles of one dataset share its cache: each add and get is whole, the byte count stays exact."""
    import sys
    import threading

    class Sized:
        def __init__(self, nbytes: int) -> None:
            self.resident_bytes = nbytes

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can (without the lock: fails every run)
    try:
        cache = levels.ReaderCache()
        start = threading.Barrier(4)

        def work(seed: int) -> None:
            start.wait()
            for n in range(4000):
                key = (seed * 7 + n) % 50
                if cache.get(key) is None:
                    cache.add(key, Sized(1 + key % 5), max_readers=20, max_bytes=45)  # type: ignore[arg-type]

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    kept = list(cache)
    assert 1 <= len(kept) <= 20 and len(set(kept)) == len(kept)
    assert cache.nbytes == sum(1 + key % 5 for key in kept) <= 45
