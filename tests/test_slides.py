"""Scanner slides through add-image: SVS/NDPI/tiled TIFF/OME-TIFF accepted, pixel size from the file, own levels kept."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from spora_zarr import InvalidInputError, add_image, open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.sources import TiffSource
from spora_zarr.testing.slides import he_like, write_svs
from spora_zarr.write import WriteOptions

from .test_bad_input import assert_one_line_error


def _levels(store: Path, tissue: str = "A", modality: str = "he") -> dict[str, zarr.Array]:
    group = zarr.open_group(store / modality / "images" / tissue, mode="r")
    return {name: group[name] for name in group.array_keys()}


def test_an_svs_slide_is_added_with_its_mpp_and_its_own_levels_pixel_exact(tmp_path: Path) -> None:
    slide = tmp_path / "slide.svs"
    write_svs(slide, np.asarray(he_like(600, 900, seed=1)), mpp=0.252, factors=(4, 16), tile=128)
    store = tmp_path / "cohort.zarr"
    result = add_image(store, str(slide), modality="he", tissue_id="A", lossless=True, write=WriteOptions(max_top_size=32))
    names = [(level.name, level.from_source) for level in result.levels]
    assert names == [("0_252mpp", True), ("1_008mpp", True), ("4_032mpp", True), ("8_064mpp", False)]
    levels = _levels(store)
    for name, factor in (("0_252mpp", 1), ("1_008mpp", 4), ("4_032mpp", 16)):
        expected = tifffile.imread(slide, series=0, level={1: 0, 4: 1, 16: 2}[factor]).transpose(2, 0, 1)
        np.testing.assert_array_equal(levels[name][:], expected)  # the slide's own pixels, not recomputed
    assert open_cohort(store).group_metadata("he", "A").spora.source_levels == ("0_252mpp", "1_008mpp", "4_032mpp")
    assert validate_store(store) == []


@pytest.mark.parametrize("order", ["rows", "quadtree"])
def test_windows_over_tiles_of_another_size_decode_each_tile_once(tmp_path: Path, order: str) -> None:
    """The writer's 896 px blocks over a slide's 256 px tiles, here 96 px windows over 64 px tiles: straddling tiles kept."""
    image = np.asarray(he_like(500, 620, seed=3))
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", compression="jpeg")
    edge, expected = 96, tifffile.imread(path).transpose(2, 0, 1)
    windows = [(y, x) for y in range(0, 500, edge) for x in range(0, 620, edge)]
    if order == "quadtree":  # the chain's depth-first order: Z order of the windows
        windows.sort(key=lambda w: [bit for k in range(4, -1, -1) for bit in ((w[0] // edge) >> k & 1, (w[1] // edge) >> k & 1)])
    with TiffSource(path) as source:
        segments = source._segments
        assert segments is not None
        decoded: list[int] = []
        decode = segments._decode
        segments._decode = lambda data, index, **kw: decoded.append(index) or decode(data, index, **kw)
        for y, x in windows:
            window = source.read(y, min(y + edge, 500), x, min(x + edge, 620))
            np.testing.assert_array_equal(window, expected[:, y : y + edge, x : x + edge])
    assert sorted(decoded) == list(range(8 * 10))  # every tile, once


def test_a_tiled_tiff_read_from_many_threads_at_once_gives_every_window_exactly(tmp_path: Path) -> None:
    """The writer's lanes read a local tiled TIFF at once (``concurrent_reads``): windows over shared tiles stay exact."""
    image = np.asarray(he_like(700, 900, seed=4))
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", compression="jpeg")
    expected = tifffile.imread(path).transpose(2, 0, 1)
    windows = [(y, x, 48 + 40 * (k % 4)) for k, (y, x) in enumerate((y, x) for y in range(0, 700, 56) for x in range(0, 900, 72))]
    with TiffSource(path) as source, ThreadPoolExecutor(4) as pool:
        assert source.concurrent_reads

        def read(window: tuple[int, int, int]) -> bool:
            y, x, edge = window
            got = source.read(y, min(y + edge, 700), x, min(x + edge, 900))
            return bool(np.array_equal(got, expected[:, y : y + edge, x : x + edge]))

        assert all(pool.map(read, windows * 3))


def test_four_lanes_reading_their_bands_at_once_decode_each_tile_once(tmp_path: Path) -> None:
    """Four readers, each down its own band of rows in step: each keeps a row of straddling tiles for its next row."""
    image = np.asarray(he_like(768, 620, seed=5))
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", compression="jpeg")
    edge, band, expected = 96, 192, tifffile.imread(path).transpose(2, 0, 1)  # bands end on tile edges: no tile shared
    in_step = threading.Barrier(4)
    with TiffSource(path) as source, ThreadPoolExecutor(4) as pool:
        segments = source._segments
        assert segments is not None
        decoded: list[int] = []
        decode = segments._decode
        segments._decode = lambda data, index, **kw: decoded.append(index) or decode(data, index, **kw)

        def read_band(top: int) -> bool:
            exact = True
            for y in range(top, top + band, edge):
                for x in range(0, 620, edge):
                    got = source.read(y, y + edge, x, min(x + edge, 620))
                    exact &= bool(np.array_equal(got, expected[:, y : y + edge, x : x + edge]))
                in_step.wait(timeout=60)
            return exact

        assert all(pool.map(read_band, range(0, 768, band)))
    assert sorted(decoded) == list(range(12 * 10))  # every tile, once


def test_two_lanes_copy_a_slide_level_in_bands_of_rows_pixel_exact(tmp_path: Path) -> None:
    """32 rows of 32 px blocks, two lanes: the lanes read the slide at once, four bands of rows each."""
    slide = tmp_path / "slide.svs"
    write_svs(slide, np.asarray(he_like(1024, 640, seed=7)), mpp=0.5, factors=(4,), tile=64)
    store = tmp_path / "cohort.zarr"
    options = WriteOptions(chunk=16, shard=32, codec_threads=2)
    assert options.lanes(3, 1, 3, 32) == 2
    add_image(store, str(slide), modality="he", tissue_id="A", lossless=True, write=options)
    levels = _levels(store)
    np.testing.assert_array_equal(levels["0_5mpp"][:], tifffile.imread(slide, series=0, level=0).transpose(2, 0, 1))
    np.testing.assert_array_equal(levels["2_0mpp"][:], tifffile.imread(slide, series=0, level=1).transpose(2, 0, 1))
    assert validate_store(store) == []


def test_svs_through_the_cli_and_a_level_at_another_factor_is_computed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slide = tmp_path / "slide.svs"
    write_svs(slide, np.asarray(he_like(200, 2200, seed=2)), factors=(3,), tile=128)  # 3x is not 2**k: left out
    store = tmp_path / "cohort.zarr"
    assert main(["add-image", str(store), str(slide), "--modality", "he", "--tissue", "S1", "--lossless"]) == 0
    assert sorted(_levels(store, "S1")) == ["0_252mpp", "0_504mpp"]
    assert open_cohort(store).group_metadata("he", "S1").spora.source_levels == ("0_252mpp",)


@pytest.mark.parametrize(("unit", "per_unit", "mpp"), [("CENTIMETER", 20000.0, 0.5), ("INCH", 25400 / 0.25, 0.25)])
def test_the_tiff_resolution_tags_give_the_pixel_size(tmp_path: Path, unit: str, per_unit: float, mpp: float) -> None:
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, np.arange(64 * 48, dtype=np.uint16).reshape(64, 48), resolution=(per_unit, per_unit), resolutionunit=unit)
    store = tmp_path / "cohort.zarr"
    result = add_image(store, str(path), modality="imc", tissue_id="A")
    assert [level.name for level in result.levels] == [f"{mpp}".replace(".", "_") + "mpp"]


def test_a_screen_resolution_is_not_a_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, np.zeros((32, 32), np.uint8), resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(InvalidInputError, match="does not record its pixel size; pass mpp="):
        add_image(tmp_path / "cohort.zarr", str(path), modality="imc", tissue_id="A")


@pytest.mark.parametrize(("size", "unit"), [(0.5, "µm"), (0.5, "μm"), (0.5, "um"), (500.0, "nm"), (0.0005, "mm")])
def test_ome_physical_size_in_any_unit_spelling(tmp_path: Path, size: float, unit: str) -> None:
    path = tmp_path / "image.ome.tif"
    metadata = {"axes": "CYX", "PhysicalSizeX": size, "PhysicalSizeXUnit": unit, "PhysicalSizeY": size, "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, np.zeros((2, 32, 32), np.uint16), ome=True, metadata=metadata)
    result = add_image(tmp_path / "cohort.zarr", str(path), modality="imc", tissue_id="A")
    assert [level.name for level in result.levels] == ["0_5mpp"]


def test_anisotropic_pixels_are_refused_with_the_axis_to_resample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "image.ome.tif"
    metadata = {"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 1.0}
    tifffile.imwrite(path, np.zeros((2, 32, 32), np.uint16), ome=True, metadata=metadata)
    store = tmp_path / "cohort.zarr"
    code = main(["add-image", str(store), str(path), "--modality", "imc", "--tissue", "A"])
    captured = capsys.readouterr()
    assert code == 1
    assert_one_line_error(captured.err + captured.out, str(path), "anisotropic pixels", "1 µm in y, 0.5 µm in x", "along y")
    assert not (store / "imc").exists()
    tags = tmp_path / "tags.tif"
    tifffile.imwrite(tags, np.zeros((32, 32), np.uint8), resolution=(10000, 20000), resolutionunit="CENTIMETER")
    with pytest.raises(InvalidInputError, match="along x"):
        add_image(store, str(tags), modality="imc", tissue_id="B")
    assert add_image(store, str(tags), modality="imc", tissue_id="B", mpp=0.5).levels[0].name == "0_5mpp"  # --mpp states one size


def test_unnamed_ome_channels_get_readable_names(tmp_path: Path) -> None:
    path = tmp_path / "image.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 32, 32), np.uint16), ome=True, metadata={"axes": "CYX", "PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0})
    with tifffile.TiffFile(path) as tif:
        assert "Channel:0:0" in (tif.ome_metadata or "")  # what tifffile records as the channel ID
    add_image(tmp_path / "cohort.zarr", str(path), modality="imc", tissue_id="A")
    assert open_cohort(tmp_path / "cohort.zarr").group_metadata("imc", "A").spora.channel_names == ("channel_0", "channel_1", "channel_2")


def test_an_ome_tiff_pyramid_in_subifds_keeps_its_levels(tmp_path: Path) -> None:
    path = tmp_path / "pyramid.ome.tif"
    rng = np.random.default_rng(3)
    full = rng.integers(0, 4000, (2, 256, 320), dtype=np.uint16)
    reduced = rng.integers(0, 4000, (2, 128, 160), dtype=np.uint16)  # not a 2x2 mean of full: must be stored as given
    metadata = {"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "Channel": {"Name": ["DAPI", "CD3"]}}
    with tifffile.TiffWriter(path) as writer:
        writer.write(full, subifds=1, tile=(64, 64), metadata=metadata)
        writer.write(reduced, subfiletype=1, tile=(64, 64))
    store = tmp_path / "cohort.zarr"
    add_image(store, str(path), modality="imc", tissue_id="A", write=WriteOptions(max_top_size=100))
    levels = _levels(store, modality="imc")
    assert sorted(levels) == ["0_5mpp", "1_0mpp", "2_0mpp"]
    np.testing.assert_array_equal(levels["1_0mpp"][:], reduced)
    assert open_cohort(store).group_metadata("imc", "A").spora.channel_names == ("DAPI", "CD3")


def test_convert_reads_svs_files_of_a_cohort(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spora_zarr import ConvertOptions, convert_cohort

    source = tmp_path / "cohort"
    (source / "metadata").mkdir(parents=True)
    pq.write_table(pa.table({"tissue_id": ["A"]}), source / "metadata/tissues.parquet")
    (source / "he/0_5mpp/images").mkdir(parents=True)
    write_svs(source / "he/0_5mpp/images/A.svs", np.asarray(he_like(200, 260, seed=5)), factors=(), tile=128)
    store = tmp_path / "out.zarr"
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    np.testing.assert_array_equal(_levels(store)["0_5mpp"][:], tifffile.imread(source / "he/0_5mpp/images/A.svs").transpose(2, 0, 1))


def test_a_slide_written_page_by_page_keeps_its_reduced_pages(tmp_path: Path) -> None:
    image = np.asarray(he_like(600, 900, seed=6))
    slide = tmp_path / "naive.svs"
    description = "Aperio Image Library v12.0.15 \r\n900x600 [0,0 900x600] (128x128) JPEG/RGB Q=70|AppMag = 40|MPP = 0.2520"
    with tifffile.TiffWriter(slide) as writer:  # no thumbnail page, tifffile's default metadata: pages of their own
        writer.write(image, tile=(128, 128), compression="jpeg", photometric="rgb", description=description)
        writer.write(np.ascontiguousarray(image[::4, ::4]), tile=(128, 128), compression="jpeg", photometric="rgb")
        writer.write(np.ascontiguousarray(image[::3, ::3]), tile=(128, 128), compression="jpeg", photometric="rgb")  # not 2**k
    store = tmp_path / "cohort.zarr"
    result = add_image(store, str(slide), modality="he", tissue_id="A", write=WriteOptions(max_top_size=128))
    assert [(level.name, level.from_source) for level in result.levels] == [("0_252mpp", True), ("1_008mpp", True), ("2_016mpp", False)]
    np.testing.assert_array_equal(_levels(store)["1_008mpp"][:], tifffile.imread(slide, key=1).transpose(2, 0, 1))


@pytest.mark.parametrize("value", ["0", "0.0000", "-0.25", "-", "1e400"])
def test_an_aperio_mpp_that_is_no_pixel_size_asks_for_mpp(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str) -> None:
    path = tmp_path / "slide.svs"
    description = f"Aperio Image Library v12.0.15 \r\n64x64 [0,0 64x64] (64x64) JPEG/RGB Q=80|AppMag = 40|MPP = {value}"
    image = np.asarray(he_like(64, 64, seed=1))
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", compression="jpeg", description=description, metadata=None)
    store = tmp_path / "cohort.zarr"
    assert main(["add-image", str(store), str(path), "--modality", "he", "--tissue", "A"]) == 1
    assert capsys.readouterr().err == f"error: {path}: the file does not record its pixel size; pass --mpp ...\n"
    assert main(["add-image", str(store), str(path), "--modality", "he", "--tissue", "A", "--mpp", "0.25"]) == 0
    np.testing.assert_array_equal(open_cohort(store).open_image("he", "A", 0.25).values, tifffile.imread(path).transpose(2, 0, 1))
