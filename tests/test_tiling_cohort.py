"""``spora-zarr tile`` / ``tile_cohort`` on real converted stores: tables, resume, errors, datasets and TileDataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from spora_zarr import ConvertOptions, convert_cohort
from spora_zarr.cli import main
from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.run import RunOptions
from spora_zarr.sources.base import ArraySource
from spora_zarr.store.layout import label_group_path
from spora_zarr.testing.cohorts import make_synthetic_cohort
from spora_zarr.tiling import TilingOptions, best_mask_tiling_try_to_stop, get_grid_tile, tile_cohort
from spora_zarr.tiling import cohort as tiling_cohort
from spora_zarr.write.writer import write_labels

TILE, STRIDE = 32, 16
SERIAL = RunOptions(progress=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converted synthetic cohort (A, B, C) plus tissue masks D (2.0 mpp only) and E (empty), written by the writer."""
    root = tmp_path_factory.mktemp("tiling")
    src = make_synthetic_cohort(
        root / "tiff",
        tissues=("A", "B", "C"),
        he_shape={"A": (301, 517), "B": (260, 390), "C": (150, 170)},
        imc_channels=3,
        resolutions=(0.5, 1.0),
        seed=3,
        tile_size=TILE,
    )
    dest = root / "cohort.zarr"
    assert convert_cohort(src, dest, ConvertOptions(progress=False)).ok
    write_labels(dest, label_group_path("tissue_masks", "D"), {2.0: ArraySource(np.ones((1, 60, 70), np.uint8))})
    write_labels(dest, label_group_path("tissue_masks", "E"), {1.0: ArraySource(np.zeros((1, 90, 80), np.uint8))})
    return dest


@pytest.fixture()
def copy(store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(store, target)
    return target


def _whole_mask(store: Path, tissue: str, level: str = "1_0mpp") -> np.ndarray:
    return zarr.open_array(str(store / "segmentations" / "tissue_masks" / tissue / level), mode="r")[:]


def _tables(store: Path, strategy: str = "best", size: int = TILE, res: str = "1_0mpp") -> tuple[list[dict], list[dict]]:
    base = store / "tiling" / res / strategy
    return (
        pq.read_table(base / f"{size}_tile_coordinates.parquet").to_pylist(),
        pq.read_table(base / f"{size}_tile_stats.parquet").to_pylist(),
    )


def test_cli_tiles_equal_the_function_on_the_whole_mask(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "tile",
            str(copy),
            "--resolution",
            "1.0",
            "--tile-size",
            str(TILE),
            "--stride",
            str(STRIDE),
            "--tissue",
            "A",
            "--tissue",
            "B",
            "--tissue",
            "C",
            "--tissue",
            "E",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr()
    coords, stats = _tables(copy)
    assert [s["tissue_id"] for s in stats] == ["A", "B", "C", "E"]
    for row in stats:
        tid = row["tissue_id"]
        mask = _whole_mask(copy, tid)
        tiles, want, _ = best_mask_tiling_try_to_stop(mask, TILE, STRIDE)
        mine = [(r["tile_id"], r["row"], r["col"]) for r in coords if r["tissue_id"] == tid]
        assert mine == [(i, t.row, t.col) for i, t in enumerate(tiles)]
        for key in ("tiles", "coverage", "valid_pixels", "covered_pixels", "stop_reason", "height", "width"):
            assert row[key] == want[key], key
        parameters = (row["strategy"], row["resolution"], row["tile_size"], row["stride"], row["tolerance"])
        assert parameters == ("best", "1_0mpp", TILE, STRIDE, 0.2)
        assert (row["coverage_goal"], row["min_gain_ratio"], row["max_tiles"], row["allow_overlap"]) == (0.99, 0.05, None, True)
    empty = stats[-1]
    assert empty["tiles"] == 0 and empty["valid_pixels"] == 0 and empty["stop_reason"] == "empty_mask"
    assert not (copy / ".spora_tmp" / "tiling-parts").exists()  # parts are removed once assembled


def test_grid_strategy_and_streamed_bands(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiling_cohort, "BAND_BYTES", 1)  # one chunk row per band: many bands per mask
    report = tile_cohort(
        copy, TilingOptions(resolution="1_0mpp", tile_size=TILE, strategy="grid", tolerance=0.5), tissues=["A", "B"], run=SERIAL
    )
    base = f"tiling/1_0mpp/grid/{TILE}_tile"
    assert report.ok and report.tables == [f"{base}_coordinates.parquet", f"{base}_stats.parquet"]
    coords, stats = _tables(copy, "grid")
    for tid in ("A", "B"):
        tiles, want, _ = get_grid_tile(_whole_mask(copy, tid), TILE, tolerance=0.5)
        assert [(r["row"], r["col"]) for r in coords if r["tissue_id"] == tid] == [(t.row, t.col) for t in tiles]
        row = next(s for s in stats if s["tissue_id"] == tid)
        assert row["covered_pixels"] == want["covered_pixels"] and row["coverage_goal"] is None


def test_resume_skips_complete_tissues_and_keeps_their_rows(copy: Path) -> None:
    options = TilingOptions(resolution=1.0, tile_size=TILE, stride=STRIDE)
    first = tile_cohort(copy, options, tissues=["A"], run=SERIAL)
    assert first.ok and first.tissues == 1
    coords_a, _ = _tables(copy)
    # A tissue whose part was written by an interrupted run is not recomputed either.
    part = f"{options.parts_dir()}/B.parquet"
    tiling_cohort._tile_tissue(tiling_cohort.TileTask(part, "B", "B", first_location(copy), options), None)
    assert (copy / part).is_file()
    report = tile_cohort(copy, options, tissues=["A", "B", "C"], run=SERIAL)
    assert report.ok and report.tissues == 3
    assert [(o.label, o.skipped) for o in report.run.outcomes] == [("B", True), ("C", False)]  # A: already in the tables
    coords, stats = _tables(copy)
    assert [r for r in coords if r["tissue_id"] == "A"] == coords_a
    assert [s["tissue_id"] for s in stats] == ["A", "B", "C"]
    again = tile_cohort(copy, options, run=SERIAL, tissues=["A", "B", "C"])
    assert again.run.outcomes == [] and again.tissues == 3 and "0 tissues written" in again.summary()


def first_location(store: Path):
    from spora_zarr.store.location import Location

    return Location.parse(store)


def test_other_parameters_need_overwrite(copy: Path) -> None:
    tile_cohort(copy, TilingOptions(resolution=1.0, tile_size=TILE), tissues=["A", "B"], run=SERIAL)
    with pytest.raises(InvalidInputError, match="tolerance=0.2 \\(not 0.4\\).*overwrite=True"):
        tile_cohort(copy, TilingOptions(resolution=1.0, tile_size=TILE, tolerance=0.4), tissues=["A"], run=SERIAL)
    report = tile_cohort(copy, TilingOptions(resolution=1.0, tile_size=TILE, tolerance=0.4), tissues=["A"], run=SERIAL, overwrite=True)
    _, stats = _tables(copy)
    assert report.ok and [(s["tissue_id"], s["tolerance"]) for s in stats] == [("A", 0.4)]


def test_missing_level_fails_that_tissue_only(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tile", str(copy), "--resolution", "1.0", "--tile-size", str(TILE), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAILED D: " in err and "has no resolution 1_0mpp; it has 2_0mpp" in err and "Traceback" not in err
    _, stats = _tables(copy)
    assert [s["tissue_id"] for s in stats] == ["A", "B", "C", "E"]


def test_bad_input_is_one_line(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--tolerance", "1.5"], "tolerance must be in [0, 1], got 1.5"),
        (["--tissue", "Z"], "no tissue mask for 'Z'"),
        (["--tissue", "../x"], "invalid tissue id"),
        (["--max-tiles", "-2"], "max_tiles must be a whole number >= 0"),
        (["--resolution", "fast"], "is not a resolution"),
    ]
    for extra, message in cases:
        code = main(["tile", str(copy), "--resolution", "1.0", "--tile-size", str(TILE), "--no-progress", *extra])
        err = capsys.readouterr().err
        assert code == 1 and message in err and err.count("\n") == 1, (extra, err)
    with pytest.raises(SystemExit) as exit_info:
        main(["tile", str(copy), "--resolution", "1.0", "--tile-size", "32", "--strategy", "random"])
    assert exit_info.value.code == 2 and "invalid choice: 'random'" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="unknown tiling strategy 'random'"):
        TilingOptions(resolution=1.0, tile_size=TILE, strategy="random")
    with pytest.raises(NotFoundError, match="not a cohort store"):
        tile_cohort(copy / "nothing", TilingOptions(resolution=1.0, tile_size=TILE))


def test_workers_give_the_same_tables(copy: Path, store: Path, tmp_path: Path) -> None:
    options = TilingOptions(resolution=0.5, tile_size=TILE, stride=STRIDE, tolerance=0.3)
    serial = tile_cohort(copy, options, tissues=["A", "B", "C"], run=SERIAL)
    other = tmp_path / "other.zarr"
    shutil.copytree(store, other)
    parallel = tile_cohort(other, options, tissues=["A", "B", "C"], run=RunOptions(workers=2, progress=False))
    assert serial.ok and parallel.ok
    assert _tables(copy, res="0_5mpp") == _tables(other, res="0_5mpp")


def test_datasets_and_tile_dataset_read_the_tables(copy: Path) -> None:
    from spora_zarr.datasets import ComposedImagingDataset, HEImagingDataset, MultiplexImagingDataset
    from spora_zarr.torch import TileDataset

    assert tile_cohort(copy, TilingOptions(resolution=1.0, tile_size=TILE, stride=STRIDE), tissues=["A", "B", "C"], run=SERIAL).ok
    coords, _ = _tables(copy)
    he = HEImagingDataset("t", copy, 1.0, TILE, verbose=False, tiling_strategy="best")
    table = he.tile_coordinates
    assert list(zip(table.tissue_id, table.tile_id, table.row, table.col)) == [
        (r["tissue_id"], r["tile_id"], r["row"], r["col"]) for r in coords
    ]
    for r in coords[:: max(1, len(coords) // 20)]:
        tile = he.get_crop(r["tissue_id"], r["tile_id"], preprocess=False)
        assert tuple(tile.shape) == (3, TILE, TILE)  # edge tiles are zero-padded for non-default strategies
    composed = ComposedImagingDataset(
        [
            HEImagingDataset("t", copy, 1.0, TILE, verbose=False, tiling_strategy="best"),
            MultiplexImagingDataset("t", copy, 1.0, TILE, verbose=False, tiling_strategy="best"),
        ]
    )
    tiles = TileDataset(composed)
    assert len(tiles) == len(coords)
    item = tiles[len(tiles) - 1]
    assert (item["tissue_id"], item["row"], item["col"]) == (coords[-1]["tissue_id"], coords[-1]["row"], coords[-1]["col"])
    assert tuple(item["he"].shape) == (3, TILE, TILE) and tuple(item["imc"].shape[-2:]) == (TILE, TILE)


def test_napari_reader_shows_the_written_tables(copy: Path) -> None:
    from spora_zarr.napari.reader import tile_tables, tissue_layers
    from spora_zarr.read import open_cohort

    assert tile_cohort(copy, TilingOptions(resolution=1.0, tile_size=TILE, stride=STRIDE), tissues=["A"], run=SERIAL).ok
    path = f"tiling/1_0mpp/best/{TILE}_tile_coordinates.parquet"
    cohort = open_cohort(copy)
    assert path in tile_tables(cohort)
    layers = tissue_layers(cohort, "A", modalities=(), masks=(), tiles=path)
    coords, _ = _tables(copy)
    shapes = [layer for layer in layers if layer[2] == "shapes"]
    assert len(shapes) == 1 and len(shapes[0][0]) == len([r for r in coords if r["tissue_id"] == "A"])
    np.testing.assert_array_equal(np.asarray(shapes[0][0][0])[0], [coords[0]["row"], coords[0]["col"]])


def test_a_missing_strategy_lists_the_strategies_present(copy: Path) -> None:
    from spora_zarr.datasets import HEImagingDataset

    assert tile_cohort(copy, TilingOptions(resolution=1.0, tile_size=TILE, strategy="grid"), tissues=["A"], run=SERIAL).ok
    with pytest.raises(NotFoundError, match="strategies present: default, grid"):
        _ = HEImagingDataset("t", copy, 1.0, TILE, verbose=False, tiling_strategy="best").tile_coordinates
