"""Tests of the spora TIFF cohort builders in ``spora_zarr.demo``."""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import zarr

from spora_zarr import demo
from spora_zarr.store.layout import resolution_name
from spora_zarr.testing import cohorts, tiff_layout

# the cohort builders need scikit-image (the ``demo`` extra); the TIFF writers do not
needs_skimage = pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="needs scikit-image")


def _tissue_ids(cohort: Path) -> list[str]:
    return pq.read_table(cohort / "metadata" / "tissues.parquet").column("tissue_id").to_pylist()


def _image_hw(path: Path) -> tuple[int, int]:
    """(H, W) of an RGB (H, W, 3), multiplex (C, H, W) or page-per-channel image, or a mask."""
    if path.suffix == ".zarr":
        return tuple(zarr.open_array(str(path), mode="r").shape[:2])
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        return (int(page.imagelength), int(page.imagewidth))


def _check_cohort(cohort: Path, resolutions: list[str], multiplex: list[str]) -> None:
    """Images and masks of a tissue agree on (H, W) per resolution; channel tables match the files."""
    tissues = _tissue_ids(cohort)
    for res in resolutions:
        for tid in tissues:
            masks = [cohort / "segmentations" / res / kind / f"{tid}.tif" for kind in ("tissue_masks", "cell_masks")]
            masks = [m for m in masks if m.exists()]
            images = list(cohort.glob(f"**/{res}/images/{tid}.tif*")) + list(cohort.glob(f"*/{res}/{tid}.zarr"))
            assert images, (res, tid)
            shapes = {_image_hw(p) for p in images + masks}
            assert len(shapes) == 1, (res, tid, shapes)
            for m in masks:
                mask = tifffile.imread(m)
                if "tissue_masks" in m.parts:
                    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
                else:
                    assert mask.dtype == np.uint32
    for modality in multiplex:
        channels = pq.read_table(cohort / modality / "channels.parquet").to_pydict()
        assert set(channels) >= {"channel_name", "qc_pass", "uniprot_id"}
        cpt = pq.read_table(cohort / modality / "channels_per_tissue.parquet").to_pydict()
        assert set(cpt["channel_name"]) <= set(channels["channel_name"])
        for tid in set(cpt["tissue_id"]):
            n = cpt["tissue_id"].count(tid)
            found = 0
            for res in resolutions:
                for tiff in (cohort / modality / res / "images").glob(f"{tid}.tif*"):
                    assert tiff_layout.tiff_channel_count(tiff) == n
                    assert tiff_layout.read_multiplex_tiff(tiff).shape[0] == n
                    found += 1
                legacy = cohort / modality / res / f"{tid}.zarr"
                if legacy.exists():
                    assert zarr.open_array(str(legacy), mode="r").shape[2] == n
                    found += 1
            assert found, (modality, tid)


@pytest.fixture(scope="module")
def demo_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.make_demo_cohort(tmp_path_factory.mktemp("demo") / "cohort")


@needs_skimage
def test_demo_cohort_layout(demo_cohort: Path) -> None:
    cohort = demo_cohort
    assert _tissue_ids(cohort) == ["T01", "T02", "T03"]
    _check_cohort(cohort, ["0_5mpp", "1_0mpp"], ["imc"])
    for tid, (h, w) in demo.DEMO_TISSUES.items():
        assert _image_hw(cohort / "he" / "1_0mpp" / "images" / f"{tid}.tif") == (h, w)
        assert _image_hw(cohort / "he" / "0_5mpp" / "images" / f"{tid}.tif") == (2 * h, 2 * w)
        assert tifffile.imread(cohort / "he" / "0_5mpp" / "images" / f"{tid}.tif").shape == (2 * h, 2 * w, 3)
        assert (cohort / "segmentations" / "0_5mpp" / "tissue_masks" / f"{tid}.tif").exists()
        assert (cohort / "segmentations" / "1_0mpp" / "cell_masks" / f"{tid}.tif").exists()
        assert not (cohort / "imc" / "0_5mpp").exists()
    assert sorted(p.stem for p in (cohort / "ihc" / "ihc_CD3" / "1_0mpp" / "images").iterdir()) == ["T02", "T03"]
    # T01: one page per channel -> one series per channel; T02: one (C, H, W) series.
    with tifffile.TiffFile(cohort / "imc" / "1_0mpp" / "images" / "T01.tif") as tf:
        assert len(tf.series) == 6 and tf.series[0].shape == demo.DEMO_TISSUES["T01"]
    with tifffile.TiffFile(cohort / "imc" / "1_0mpp" / "images" / "T02.tif") as tf:
        assert len(tf.series) == 1 and tf.series[0].shape == (4,) + demo.DEMO_TISSUES["T02"]
    channels = pq.read_table(cohort / "imc" / "channels.parquet").to_pydict()
    assert channels["channel_name"] == [c[0] for c in demo.DEMO_CHANNELS]
    assert False in channels["qc_pass"] and None in channels["uniprot_id"]
    cpt = pq.read_table(cohort / "imc" / "channels_per_tissue.parquet").to_pydict()
    assert [n for t, n in zip(cpt["tissue_id"], cpt["channel_name"]) if t == "T02"] == ["DNA1", "PanCK", "CD3", "Vimentin"]
    stats = pq.read_table(cohort / "imc" / "1_0mpp" / "standardization" / "quantile_clipping" / "uq_0.99_image" / "stats.parquet")
    assert stats.num_rows == len(cpt["tissue_id"])
    tiles = pq.read_table(cohort / "tiling" / "1_0mpp" / "default" / "224_tile_coordinates.parquet").to_pydict()
    assert set(tiles) >= {"tissue_id", "tile_id", "row", "col"} and len(tiles["row"]) > 3
    for tid, row, col in zip(tiles["tissue_id"], tiles["row"], tiles["col"]):
        h, w = demo.DEMO_TISSUES[tid]
        assert 0 <= row < h and 0 <= col < w and row % 224 == 0 and col % 224 == 0
    assert pq.read_table(cohort / "tiling" / "1_0mpp" / "default" / "224_tile_stats.parquet").num_rows == len(tiles["row"])
    cells = pq.read_table(cohort / "metadata" / "cells.parquet")
    assert cells.num_rows > 0
    # channels are distinct images (a channel-order bug must be visible)
    t01 = tiff_layout.read_multiplex_tiff(cohort / "imc" / "1_0mpp" / "images" / "T01.tif")
    assert len({hashlib.md5(c.tobytes()).hexdigest() for c in t01}) == 6
    total = sum(p.stat().st_size for p in cohort.rglob("*") if p.is_file())
    assert total < 5_000_000


@needs_skimage
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(page_per_channel=False, tiled=False, compression=None, suffix=".tiff"),
        dict(resolutions=(0.65, 1.0), compression="zstd", tiled=(64, 64), legacy_zarr_tissue="B"),
        dict(
            tissues=("x1", "x2", "x3"),
            page_per_channel={"x1": False},
            compression="lzw",
            multiplex_modalities=("imc", "cycif"),
            multiplex_dtype="float32",
            imc_channels=3,
        ),
    ],
)
def test_synthetic_cohort_layout(tmp_path: Path, options: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort = cohorts.make_synthetic_cohort(tmp_path / "c", **options)
    resolutions = [resolution_name(r) for r in options.get("resolutions", (0.5, 1.0))]
    multiplex = list(options.get("multiplex_modalities", ("imc",)))
    _check_cohort(cohort, resolutions, multiplex)
    fine, coarse = resolutions
    tissues = _tissue_ids(cohort)
    suffix = options.get("suffix", ".tif")
    for tid in tissues:
        fine_hw = _image_hw(cohort / "he" / fine / "images" / f"{tid}{suffix}")
        assert fine_hw == (301, 517)
        assert _image_hw(cohort / "he" / coarse / "images" / f"{tid}{suffix}") == tiff_layout.scaled_shape(fine_hw, fine, coarse)
        assert (cohort / "ihc" / "ihc_CD3" / coarse / "images" / f"{tid}{suffix}").exists()
    legacy = options.get("legacy_zarr_tissue")
    if legacy:
        arr = zarr.open_array(str(cohort / "imc" / coarse / f"{legacy}.zarr"), mode="r")
        assert arr.shape[:2] == tiff_layout.scaled_shape((301, 517), fine, coarse)
        assert not (cohort / "imc" / coarse / "images" / f"{legacy}.tif").exists()
    cpt = pq.read_table(cohort / multiplex[0] / "channels_per_tissue.parquet").to_pydict()
    last = [n for t, n in zip(cpt["tissue_id"], cpt["channel_name"]) if t == tissues[-1]]
    first = [n for t, n in zip(cpt["tissue_id"], cpt["channel_name"]) if t == tissues[0]]
    assert len(last) == len(first) - 1 and last[-1] == first[0]  # subset, reversed page order


@needs_skimage
def test_synthetic_cohort_is_deterministic(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}

    kwargs = dict(he_shape=(97, 131), legacy_zarr_tissue="A", seed=7)
    a = digest(cohorts.make_synthetic_cohort(tmp_path / "a", **kwargs))
    b = digest(cohorts.make_synthetic_cohort(tmp_path / "b", **kwargs))
    c = digest(cohorts.make_synthetic_cohort(tmp_path / "c", **{**kwargs, "seed": 8}))
    assert a == b
    assert a["he/0_5mpp/images/A.tif"] != c["he/0_5mpp/images/A.tif"]


@pytest.mark.parametrize("n_channels", [1, 3, 4, 6])
@pytest.mark.parametrize("flavour", ["page_per_channel", "series", "planar"])
def test_write_multiplex_tiff_round_trip(tmp_path: Path, flavour: str, n_channels: int) -> None:
    data = np.random.default_rng(n_channels).integers(0, 4000, (n_channels, 45, 77)).astype(np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = tiff_layout.write_multiplex_tiff(
            tmp_path / "m.tif",
            data,
            page_per_channel=flavour == "page_per_channel",
            planar=flavour == "planar",
            tiled=(32, 32),
            compression="zstd",
        )
    np.testing.assert_array_equal(tiff_layout.read_multiplex_tiff(path), data)
    assert tiff_layout.tiff_channel_count(path) == n_channels
    full = tifffile.imread(path, is_shaped=False)
    np.testing.assert_array_equal(full.reshape(data.shape), data)
    with tifffile.TiffFile(path) as tf:
        if flavour == "page_per_channel":
            assert len(tf.series) == n_channels  # tifffile.imread(path) would give channel 0 only
        else:
            assert len(tf.series) == 1


def test_write_rgb_and_mask_tiff(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (33, 47, 3)).astype(np.uint8)
    labels = np.arange(33 * 47, dtype=np.uint32).reshape(33, 47)
    np.testing.assert_array_equal(tifffile.imread(tiff_layout.write_rgb_tiff(tmp_path / "r.tif", rgb, tiled=False)), rgb)
    np.testing.assert_array_equal(tifffile.imread(tiff_layout.write_mask_tiff(tmp_path / "m.tif", labels)), labels)


@pytest.mark.parametrize("page_per_channel", [True, False])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_large_multiplex_tiff_streams_known_content(tmp_path: Path, page_per_channel: bool, dtype: str) -> None:
    shape = (3, 301, 530)
    path = cohorts.write_large_multiplex_tiff(tmp_path / "big.tif", shape, dtype, tile=(64, 128), page_per_channel=page_per_channel, seed=3)
    data = tiff_layout.read_multiplex_tiff(path)
    assert data.shape == shape and data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(data, cohorts.large_multiplex_region(shape, dtype, (0, 301), (0, 530), tile=(64, 128), seed=3))
    region = cohorts.large_multiplex_region(shape, dtype, (60, 250), (100, 529), channels=[2, 0], tile=(64, 128), seed=3)
    np.testing.assert_array_equal(region, data[[2, 0], 60:250, 100:529])
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].is_tiled and tf.pages[0].tilelength == 64
        assert len(tf.series) == (3 if page_per_channel else 1)
    assert np.ptp(data[0]) > 0


@needs_skimage
def test_scaled_shape_and_downsampling() -> None:
    assert tiff_layout.scaled_shape((301, 517), 0.5, 1.0) == (150, 258)
    assert tiff_layout.scaled_shape((301, 517), "0_65mpp", "1_0mpp") == (195, 336)
    image = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6)
    np.testing.assert_array_equal(tiff_layout.downsample_image(image, (2, 3)), [[4, 6, 8], [16, 18, 20]])
    assert tiff_layout.downsample_image(np.zeros((301, 517, 3), np.uint8), (195, 336)).shape == (195, 336, 3)
    labels = np.repeat(np.repeat(np.arange(6, dtype=np.uint32).reshape(2, 3), 2, 0), 2, 1)
    np.testing.assert_array_equal(tiff_layout.downsample_labels(labels, (2, 3)), np.arange(6).reshape(2, 3))
