"""spora_zarr.torch.TileDataset on real converted stores, against the source TIFFs read with tifffile.

Every item is compared with the zero-padded slice of the source image (every
modality, both masks, every channel kind); DataLoaders run with 0, 1 and 2
workers under fork (after this process has read tiles with tensorstore) and
spawn, and must yield exactly the tile table. Worker runs fail on a timeout
instead of hanging.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from spora_zarr import ConvertOptions, convert_cohort, process
from spora_zarr.datasets import (
    ComposedImagingDataset,
    HEImagingDataset,
    MultiplexImagingDataset,
    SingleIHCImagingDataset,
    SporaDataset,
)
from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.read import levels
from spora_zarr.read.engines import tensorstore as _tensorstore
from spora_zarr.read.levels import open_level
from spora_zarr.testing.cohorts import make_synthetic_cohort
from spora_zarr.torch import TileDataset, available_cores, worker_init_fn

from .conftest import read_source_chw, source_images

RES = "0_5mpp"
TILE = 32
LOADER_TIMEOUT = 60  # seconds a DataLoader waits for a batch before failing
IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))
KINDS = ("complete", "qc_filtered", "uniprot_filtered")


class Source:
    """A TIFF cohort read with tifffile (not spora_zarr): images, masks and channel tables."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = {(modality, tissue): read_source_chw(path) for modality, res, tissue, path in source_images(root) if res == RES}
        self.channels = pq.read_table(root / "imc" / "channels.parquet").to_pandas()
        per_tissue = pq.read_table(root / "imc" / "channels_per_tissue.parquet").to_pandas()
        self.measured = {t: list(g.channel_name) for t, g in per_tissue.groupby("tissue_id", sort=False)}

    def panel(self, kind: str) -> list[str]:
        table = self.channels
        if kind != "complete":
            table = table[table.qc_pass]
        if kind == "uniprot_filtered":
            table = table[table.uniprot_id.notna() & (table.uniprot_id.str.len() > 0)]
        return list(table.channel_name)

    def window(self, key: str, tissue: str, row: int, col: int, size: int) -> np.ndarray:
        """The ``size`` window at (row, col), zero-padded outside the image."""
        image = self.images[(key, tissue)]
        out = np.zeros((image.shape[0], size, size), image.dtype)
        y0, x0 = max(row, 0), max(col, 0)
        part = image[:, y0 : row + size, x0 : col + size]
        out[:, y0 - row : y0 - row + part.shape[1], x0 - col : x0 - col + part.shape[2]] = part
        return out

    def item(self, tissue: str, row: int, col: int, kind: str, preprocess: bool, panel: list[str]) -> dict[str, np.ndarray]:
        """The expected arrays of one TileDataset item (modalities he, imc, ihc/ihc_CD3 and both masks)."""
        out = {}
        for key in ("he", "ihc/ihc_CD3"):
            rgb = self.window(key, tissue, row, col, TILE)
            if preprocess:
                rgb = ((rgb / 255.0 - IMAGENET[0][:, None, None]) / IMAGENET[1][:, None, None]).astype(np.float32)
            out[key] = rgb
        stored = self.window("imc", tissue, row, col, TILE)
        imc = np.zeros((len(panel), TILE, TILE), np.float32 if preprocess else stored.dtype)
        mask = np.zeros(len(panel), bool)
        for plane, name in zip(stored, self.measured[tissue]):
            if name in self.panel(kind):
                imc[panel.index(name)] = plane
                mask[panel.index(name)] = True
        out["imc"], out["imc_channel_mask"] = imc, mask
        for kind_, dtype in (("tissue_masks", np.int32), ("cell_masks", np.int64)):  # uint8 and uint32 ids as torch operates on them
            out[kind_] = self.window(kind_, tissue, row, col, TILE)[0].astype(dtype)
        return out


def _convert(root: Path, **kwargs) -> tuple[Source, Path]:
    src = make_synthetic_cohort(root / "tiff", tile_size=TILE, **kwargs)
    assert (src / "tiling" / RES / "default" / f"{TILE}_tile_coordinates.parquet").is_file()
    dest = root / "cohort.zarr"
    report = convert_cohort(src, dest, ConvertOptions(progress=False))
    assert report.ok, report.summary()
    return Source(src), dest


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, tuple[Source, Path]]:
    """Cohort "one": three tissues (page-per-channel, one-series and legacy zarr sources, a tissue
    missing a channel in reversed order); cohort "two": one tissue with a bigger panel."""
    one = _convert(
        tmp_path_factory.mktemp("one"),
        tissues=("A", "B", "C"),
        he_shape={"A": (301, 517), "B": (200, 150), "C": (130, 333)},
        page_per_channel={"A": True, "B": False, "C": True},
        legacy_zarr_tissue="B",
        seed=1,
    )
    two = _convert(tmp_path_factory.mktemp("two"), tissues=("D",), he_shape=(150, 170), imc_channels=7, seed=2)
    return {"one": one, "two": two}


def _composed(name: str, dest: Path, size: int = TILE, **kwargs) -> ComposedImagingDataset:
    return ComposedImagingDataset(
        [
            HEImagingDataset(name, dest, RES, size, verbose=False, **kwargs),
            MultiplexImagingDataset(name, dest, 0.5, size, verbose=False, **kwargs),
            SingleIHCImagingDataset(name, dest, "CD3", RES, size, verbose=False, **kwargs),
        ]
    )


def _check_item(item: dict, source: Source, kind: str, preprocess: bool, panel: list[str]) -> None:
    tissue, row, col = item["tissue_id"], int(item["row"]), int(item["col"])
    want = source.item(tissue, row, col, kind, preprocess, panel)
    for key, expected in want.items():
        got = item[key].numpy()
        assert got.shape == expected.shape and got.dtype == expected.dtype, (key, tissue, row, col)
        if got.dtype == np.float32 and key in ("he", "ihc/ihc_CD3"):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{key} {tissue} {row} {col}")
        else:
            np.testing.assert_array_equal(got, expected, err_msg=f"{key} {tissue} {row} {col}")


def _unbatch(batch: dict) -> list[dict]:
    count = len(batch["tissue_id"])
    return [{k: v[i] for k, v in batch.items()} for i in range(count)]


def _table(dest: Path) -> set[tuple[str, int, int]]:
    table = pq.read_table(dest / "tiling" / RES / "default" / f"{TILE}_tile_coordinates.parquet").to_pandas()
    return {(t, int(r), int(c)) for t, r, c in zip(table.tissue_id, table.row, table.col)}


# ------------------------------------------------------------------------------ items


@pytest.mark.parametrize("kind", KINDS)
def test_items_equal_source(cohorts, kind: str) -> None:
    source, dest = cohorts["one"]
    tiles = TileDataset(_composed("one", dest), kind=kind)
    assert tiles.panels == {"imc": source.panel(kind)}
    assert tiles.masks == ("tissue_masks", "cell_masks")
    assert {(t, r, c) for t, r, c in zip(tiles.index.tissue_id, tiles.index.row, tiles.index.col)} == _table(dest)
    shapes = {"A": (301, 517), "B": (200, 150), "C": (130, 333)}
    edges = [
        i
        for i, (t, r, c) in enumerate(zip(tiles.index.tissue_id, tiles.index.row, tiles.index.col))
        if r + TILE > shapes[t][0] or c + TILE > shapes[t][1]
    ]
    assert edges, "the tile table should have edge tiles"
    for i in range(len(tiles)):
        item = tiles[i]
        assert item["cohort"] == "one" and isinstance(item["tile_id"], int)
        _check_item(item, source, kind, True, source.panel(kind))
    assert tiles[-1]["tile_id"] == tiles[len(tiles) - 1]["tile_id"]


def test_raw_values_and_default_collation(cohorts) -> None:
    source, dest = cohorts["one"]
    tiles = TileDataset(_composed("one", dest), preprocess=False)
    batch = next(iter(DataLoader(tiles, batch_size=len(tiles))))
    assert batch["imc"].dtype == torch.uint16 and batch["he"].dtype == torch.uint8
    assert batch["imc"].shape == (len(tiles), 5, TILE, TILE) and batch["cell_masks"].dtype == torch.int64
    for item in _unbatch(batch):
        _check_item(item, source, "complete", False, source.panel("complete"))


def test_two_cohorts_share_one_panel(cohorts) -> None:
    (one, dest_one), (two, dest_two) = cohorts["one"], cohorts["two"]
    tiles = TileDataset(SporaDataset([_composed("one", dest_one), _composed("two", dest_two)]), kind="qc_filtered")
    panel = tiles.panels["imc"]
    assert panel == one.panel("qc_filtered") + [n for n in two.panel("qc_filtered") if n not in one.panel("qc_filtered")]
    assert len(panel) > len(one.panel("qc_filtered"))
    assert set(tiles.index.cohort) == {"one", "two"} and len(tiles) == len(_table(dest_one)) + len(_table(dest_two))
    for batch in DataLoader(tiles, batch_size=64):
        for item in _unbatch(batch):
            _check_item(item, one if item["cohort"] == "one" else two, "qc_filtered", True, panel)


def test_resolutions_scale_windows(cohorts) -> None:
    source, dest = cohorts["one"]
    composed = ComposedImagingDataset(
        [HEImagingDataset("one", dest, RES, TILE, verbose=False), MultiplexImagingDataset("one", dest, 1.0, TILE // 2, verbose=False)]
    )
    tiles = TileDataset(composed, masks=())
    assert tiles.modalities == {"he": TILE, "imc": TILE // 2} and tiles.masks == ()
    coarse = Source.__new__(Source)
    coarse.images = {(m, t): read_source_chw(p) for m, r, t, p in source_images(source.root) if r == "1_0mpp"}
    for i in range(0, len(tiles), 7):
        item = tiles[i]
        t, r, c = item["tissue_id"], item["row"], item["col"]
        want = coarse.window("imc", t, round(r / 2), round(c / 2), TILE // 2).astype(np.float32)
        order = [source.panel("complete").index(n) for n in source.measured[t]]
        np.testing.assert_array_equal(item["imc"].numpy()[order], want)


def test_padding_of_other_strategies_and_negative_rows(cohorts, tmp_path) -> None:
    source, dest = cohorts["one"]
    store = tmp_path / "copy.zarr"
    shutil.copytree(dest, store)
    rows = [("A", 0, -10, -20), ("A", 1, 290, 500), ("B", 0, 190, -31), ("C", 0, -31, 330), ("C", 1, 40, 40)]
    columns = dict(zip(("tissue_id", "tile_id", "row", "col"), map(list, zip(*rows))))
    for strategy in ("default", "custom"):
        path = store / "tiling" / RES / strategy / f"{TILE}_tile_coordinates.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        tiles = TileDataset(_composed("one", store, tiling_strategy=strategy))
        assert len(tiles) == len(rows)
        for i in range(len(tiles)):
            _check_item(tiles[i], source, "complete", True, source.panel("complete"))


def test_pickles_small_and_reads_the_same(cohorts) -> None:
    source, dest = cohorts["one"]
    composed = _composed("one", dest)
    tiles = TileDataset(composed, kind="uniprot_filtered")
    assert len(tiles) >= 100
    tiles[0]  # opens readers and fills caches, which must not travel
    data = pickle.dumps(tiles)
    assert len(data) < 100_000, len(data)
    assert "tile_coordinates" in composed.primary.__dict__  # the original keeps its cached table
    copy = pickle.loads(data)
    assert len(copy) == len(tiles) and copy.panels == tiles.panels
    for i in (0, len(tiles) // 2, len(tiles) - 1):
        _check_item(copy[i], source, "uniprot_filtered", True, source.panel("uniprot_filtered"))


# ------------------------------------------------------------------------------ loaders


class ProbeTiles(TileDataset):
    """A TileDataset whose items also say which process, engine and thread limits served them."""

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        primary = self.datasets[0].primary
        # the reader this process reads the dataset's windows with (a fork reopens it under the same key)
        reader = open_level(primary.cohort.location, primary.cohort.level_path("he", item["tissue_id"], RES), engine=primary.engine)
        item.update(
            pid=os.getpid(),
            engine=reader.engine,
            codec_threads=_tensorstore._THREADS or 0,
            torch_threads=torch.get_num_threads(),
        )
        return item


def _run_loader(tiles: TileDataset, source: Source, dest: Path, **kwargs) -> list[dict]:
    loader = DataLoader(tiles, batch_size=16, shuffle=True, timeout=LOADER_TIMEOUT if kwargs.get("num_workers") else 0, **kwargs)
    items = [item for batch in loader for item in _unbatch(batch)]
    seen = [(item["tissue_id"], int(item["row"]), int(item["col"])) for item in items]
    assert len(seen) == len(set(seen)) == len(tiles)
    assert set(seen) == _table(dest)
    for item in items:
        _check_item(item, source, "qc_filtered", True, source.panel("qc_filtered"))
    return items


def _parent_reads(tiles: TileDataset, engine: str) -> None:
    if engine == "tensorstore" and process.poisoned("tensorstore"):
        pytest.skip("this test process is a forked child of a tensorstore user")
    item = tiles[0]
    primary = tiles.datasets[0].primary
    reader = open_level(primary.cohort.location, primary.cohort.level_path("he", item["tissue_id"], RES), engine=primary.engine)
    assert reader.engine == engine
    if engine == "tensorstore":
        assert os.getpid() == process.used_by("tensorstore")


@pytest.mark.timeout(3 * LOADER_TIMEOUT)
@pytest.mark.parametrize(("workers", "engine"), [(0, "tensorstore"), (1, "tensorstore"), (2, "tensorstore"), (2, "direct")])
def test_loader_fork_after_parent_read(cohorts, workers: int, engine: str) -> None:
    source, dest = cohorts["one"]
    tiles = ProbeTiles(_composed("one", dest, engine=None if engine == "direct" else engine), kind="qc_filtered")
    _parent_reads(tiles, engine)
    context = "fork" if workers else None
    items = _run_loader(tiles, source, dest, num_workers=workers, multiprocessing_context=context)
    pids = {int(item["pid"]) for item in items}
    if workers == 0:
        assert pids == {os.getpid()} and {item["engine"] for item in items} == {engine}
        return
    assert os.getpid() not in pids and len(pids) <= workers
    # Forked children of a tensorstore user never touch tensorstore (it would hang or abort), nor zarrs
    # (the fixture converted in this process, through zarrs): they read through the fork-safe direct engine.
    assert os.getpid() == process.used_by("zarrs")  # recorded by the writer
    assert {item["engine"] for item in items} == {"direct"}
    assert {int(item["codec_threads"]) for item in items} == {max(1, available_cores() // workers)}
    assert {int(item["torch_threads"]) for item in items} == {1}


def _fresh_parent(dest: str, engine: str | None, queue) -> None:
    """In a fresh process: read tiles (with ``engine``), then iterate a fork DataLoader of 2 workers."""
    try:
        tiles = ProbeTiles(_composed("one", Path(dest), engine=engine), kind="qc_filtered")
        tiles[0]
        parent = (os.getpid() == process.used_by("tensorstore"), os.getpid() == process.used_by("zarrs"))
        loader = DataLoader(tiles, batch_size=16, num_workers=2, multiprocessing_context="fork", timeout=LOADER_TIMEOUT)
        seen = [(t, int(r), int(c), e) for b in loader for t, r, c, e in zip(b["tissue_id"], b["row"], b["col"], b["engine"])]
        queue.put(("ok", parent, seen))
    except BaseException as exc:  # noqa: BLE001 - reported to the test process
        queue.put(("error", f"{type(exc).__name__}: {exc}", None))


@pytest.mark.timeout(3 * LOADER_TIMEOUT)
@pytest.mark.parametrize("engine", [None, "tensorstore"])
def test_loader_fork_in_a_fresh_training_process(cohorts, engine: str | None) -> None:
    """The usual training script: no conversion in the process; its fork workers read through the direct engine."""
    _, dest = cohorts["one"]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_fresh_parent, args=(str(dest), engine, queue))
    process.start()
    try:
        status, parent, seen = queue.get(timeout=2 * LOADER_TIMEOUT)
    finally:
        process.join(timeout=LOADER_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
    assert status == "ok", parent
    assert parent == (engine == "tensorstore", False)  # tensorstore used as asked; nothing written through zarrs
    assert {(t, r, c) for t, r, c, _ in seen} == _table(dest) and len(seen) == len(_table(dest))
    assert {e for *_, e in seen} == {"direct"}


@pytest.mark.timeout(3 * LOADER_TIMEOUT)
def test_loader_spawn(cohorts) -> None:
    source, dest = cohorts["one"]
    tiles = ProbeTiles(_composed("one", dest, engine="tensorstore"), kind="qc_filtered")
    _parent_reads(tiles, "tensorstore")
    items = _run_loader(tiles, source, dest, num_workers=2, multiprocessing_context="spawn", worker_init_fn=worker_init_fn)
    assert os.getpid() not in {int(item["pid"]) for item in items}
    assert {item["engine"] for item in items} == {"tensorstore"}  # a spawned worker may use it
    assert {int(item["codec_threads"]) for item in items} == {max(1, available_cores() // 2)}


# ------------------------------------------------------------------------------ bad requests


def test_bad_requests(cohorts, tmp_path) -> None:
    _, dest = cohorts["one"]
    composed = _composed("one", dest)
    he, imc = composed.datasets["he"], composed.datasets["imc"]
    with pytest.raises(InvalidInputError, match="unknown channel kind 'nope'.*complete, qc_filtered, uniprot_filtered"):
        TileDataset(composed, kind="nope")
    with pytest.raises(InvalidInputError, match="unknown channel kind"):
        imc.read_tile("A", 0, 0, kind="nope")
    with pytest.raises(InvalidInputError, match="unknown mask kind 'nuclei'"):
        TileDataset(composed, masks=("nuclei",))
    with pytest.raises(NotFoundError, match="unknown tissue 'Z'"):
        he.read_tile("Z", 0, 0)
    with pytest.raises(NotFoundError, match="resolution 3_0mpp; it has 0_5mpp, 1_0mpp"):
        HEImagingDataset("one", dest, 3.0, TILE, verbose=False)
    with pytest.raises(InvalidInputError, match="outside he tissue 'A' of shape 301x517"):
        he.read_tile("A", 301, 0)
    with pytest.raises(InvalidInputError, match="outside"):
        he.read_tile("A", -TILE, 5)
    tiles = TileDataset(composed)
    with pytest.raises(IndexError, match="out of range"):
        tiles[len(tiles)]
    with pytest.raises(TypeError, match="integers"):
        tiles[1.5]
    with pytest.raises(InvalidInputError, match="same modalities"):
        TileDataset([composed, ComposedImagingDataset([he])])
    with pytest.raises(InvalidInputError, match="different crop sizes"):
        TileDataset([composed, _composed("one", dest, size=2 * TILE)])
    with pytest.raises(InvalidInputError, match="takes ComposedImagingDataset"):
        TileDataset(["one.zarr"])

    # a tissue without a cell mask: left out by default, an error when asked for
    store = tmp_path / "no_cell_mask.zarr"
    shutil.copytree(dest, store)
    shutil.rmtree(store / "segmentations" / "cell_masks" / "B")
    partial = _composed("one", store)
    assert TileDataset(partial).masks == ("tissue_masks",)
    assert "cell_masks" not in TileDataset(partial)[0]
    with pytest.raises(NotFoundError, match="no cell_masks .* one:B"):
        TileDataset(partial, masks=("tissue_masks", "cell_masks"))


def test_construction_opens_no_reader(cohorts, tmp_path) -> None:
    """Dtypes and masks come from the cohort's metadata index; items are what the readers read."""
    source, dest = cohorts["one"]
    store = tmp_path / "no_cell_mask.zarr"
    shutil.copytree(dest, store)
    shutil.rmtree(store / "segmentations" / "cell_masks" / "B")
    for preprocess in (False, True):
        levels._READERS.clear()
        composed = _composed("one", store)
        tiles = TileDataset(composed, preprocess=preprocess)
        assert not levels._READERS.get()  # no reader opened, no pixel read
        assert tiles.masks == ("tissue_masks",)
        assert tiles.mask_dtypes == {"tissue_masks": np.dtype(np.int32)}
        stored = {name: {d.level(t).dtype for t, d in tiles.sources(name)} for name in tiles.modalities}
        expected = {name: np.dtype(np.float32) if preprocess else np.result_type(*dtypes) for name, dtypes in stored.items()}
        assert tiles.dtypes == expected
        assert {d.level(t, "tissue_masks").dtype for t, d in tiles.sources("imc")} == {np.dtype(np.uint8)}
    panel = tiles.panels["imc"]
    for i in range(len(tiles)):
        item = tiles[i]
        want = source.item(item["tissue_id"], item["row"], item["col"], "complete", True, panel)
        np.testing.assert_allclose(item["imc"].numpy(), want["imc"], rtol=1e-6)
        np.testing.assert_array_equal(item["tissue_masks"].numpy(), want["tissue_masks"])
