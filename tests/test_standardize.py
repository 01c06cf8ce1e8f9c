"""Standardization statistics from real converted stores, against numpy on the full arrays, and the standardizers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from skimage import data
from torch.utils.data import DataLoader

from spora_zarr import ConvertOptions, convert_cohort, open_cohort
from spora_zarr.cli import main
from spora_zarr.datasets import HEImagingDataset, MultiplexImagingDataset
from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.run import RunOptions
from spora_zarr.standardize import kernels
from spora_zarr.standardize.specs import parse_spec
from spora_zarr.standardize.standardizers import (
    BatchStandardizer,
    CompiledTransform,
    IdentityStandardizer,
    MeanStdStandardizer,
    QuantileClippingLog1PStandardizer,
    QuantileClippingStandardizer,
    build_standardizer,
)
from spora_zarr.standardize.statistics import available_specs, compute_statistics, histogram_path, read_statistics
from spora_zarr.testing.cohorts import make_synthetic_cohort
from spora_zarr.testing.mixed import MIXED_CHANNELS, make_mixed_cohort
from spora_zarr.torch import TileDataset

SPECS = [
    "quantile_clipping/uq_0.99_image",
    "quantile_clipping/uq_0.9_global",
    "quantile_clipping_log1p/uq_0.99_image",
    "quantile_clipping_log1p/uq_0.95_global",
]
SIZE = 64


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three uint16 tissues; the last one lacks the panel's second channel (CD3) and stores the rest reversed."""
    root = tmp_path_factory.mktemp("standardize")
    source = make_synthetic_cohort(root / "tiff", tissues=("A", "B", "C"), he_shape=(301, 517), seed=3, ihc_markers=())
    dest = root / "cohort.zarr"
    assert convert_cohort(source, dest, ConvertOptions(progress=False)).ok
    report = compute_statistics(dest, "imc", 1.0, SPECS, run=RunOptions(progress=False), block=112)
    assert report.ok and report.specs == SPECS, report.summary()
    return dest


def _arrays(store: Path, modality: str = "imc", resolution: float = 1.0) -> dict[str, dict[str, np.ndarray]]:
    """``{tissue: {channel: full plane}}`` read with zarr (independent of the statistics code)."""
    cohort = open_cohort(store)
    out = {}
    for tissue in cohort.tissues(modality):
        array = cohort.open_array(modality, tissue, resolution)[:]
        out[tissue] = dict(zip(cohort.channel_names(modality, tissue), array))
    return out


def _reference(planes: dict[str, dict[str, np.ndarray]], spec: str, masks: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The statistics of ``spec`` computed with numpy on the concatenated pixels."""
    parsed = parse_spec(spec)
    values = {t: {c: (p[masks[t]] if masks else p.ravel()).astype(np.float64) for c, p in by.items()} for t, by in planes.items()}
    channels = sorted({c for by in values.values() for c in by})
    rows = []
    for channel in channels:
        tissues = [t for t in values if channel in values[t]]
        if parsed.scope == "global":
            everything = np.concatenate([values[t][channel] for t in tissues])
            upper = {t: float(np.quantile(everything, parsed.quantile, method="inverted_cdf")) for t in tissues}
        else:
            upper = {t: float(np.quantile(values[t][channel], parsed.quantile, method="inverted_cdf")) for t in tissues}
        clipped = np.concatenate([np.clip(values[t][channel], 0, upper[t]) for t in tissues])
        if parsed.log1p:
            clipped = np.log1p(clipped)
        for t in tissues:
            rows.append((t, channel, parsed.quantile, upper[t], clipped.mean(), clipped.std()))
    return pd.DataFrame(rows, columns=["tissue_id", "channel_name", "quantile", "upper", "mean", "std"])


def _compare(got: pd.DataFrame, want: pd.DataFrame, *, exact: bool = True) -> None:
    got = got.sort_values(["tissue_id", "channel_name"]).reset_index(drop=True)
    want = want.sort_values(["tissue_id", "channel_name"]).reset_index(drop=True)
    assert got[["tissue_id", "channel_name"]].equals(want[["tissue_id", "channel_name"]])
    if exact:
        np.testing.assert_array_equal(got.upper.to_numpy(), want.upper.to_numpy())
        np.testing.assert_allclose(got[["mean", "std"]].to_numpy(), want[["mean", "std"]].to_numpy(), rtol=1e-10)
    np.testing.assert_array_equal(got["quantile"].to_numpy(), want["quantile"].to_numpy())


@pytest.mark.parametrize("spec", SPECS)
def test_statistics_equal_numpy_on_the_full_arrays(store: Path, spec: str) -> None:
    _compare(read_statistics(store, "imc", 1.0, spec), _reference(_arrays(store), spec))


def test_a_tissue_missing_a_channel_contributes_nothing_to_it(store: Path) -> None:
    planes = _arrays(store)
    assert "CD3" not in planes["C"] and "CD3" in planes["A"]
    stats = read_statistics(store, "imc", 1.0, "quantile_clipping/uq_0.9_global")
    assert set(stats[stats.channel_name == "CD3"].tissue_id) == {"A", "B"}
    both = np.concatenate([planes["A"]["CD3"].ravel(), planes["B"]["CD3"].ravel()])
    assert stats[stats.channel_name == "CD3"].upper.iloc[0] == np.quantile(both, 0.9, method="inverted_cdf")


def test_within_mask_counts_only_masked_pixels(store: Path) -> None:
    spec = "quantile_clipping/uq_0.99_image"
    report = compute_statistics(store, "imc", 1.0, [spec], within_mask=True, run=RunOptions(progress=False))
    assert report.ok, report.summary()
    cohort = open_cohort(store)
    masks = {t: cohort.open_array("tissue_masks", t, 1.0)[:] > 0 for t in cohort.tissues("imc")}
    assert all(0 < m.mean() < 1 for m in masks.values())
    planes = _arrays(store)
    _compare(read_statistics(store, "imc", 1.0, spec), _reference(planes, spec, masks))
    # back to all pixels (the all-pixel histograms are kept: no pixel is read again)
    report = compute_statistics(store, "imc", 1.0, [spec], run=RunOptions(progress=False))
    assert all(o.skipped for o in report.outcomes)
    _compare(read_statistics(store, "imc", 1.0, spec), _reference(planes, spec))


def test_new_specs_come_from_the_stored_histograms(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spora_zarr.standardize.statistics as statistics

    def no_pixels(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels read again")

    monkeypatch.setattr(statistics, "open_level", no_pixels)
    report = compute_statistics(store, "imc", "1_0mpp", ["quantile_clipping/uq_0.5_image"], run=RunOptions(progress=False))
    assert report.ok and all(o.skipped for o in report.outcomes), report.summary()
    assert (store / histogram_path("imc", 1.0, "A")).is_file()
    spec = "quantile_clipping/uq_0.5_image"
    _compare(read_statistics(store, "imc", 1.0, spec), _reference(_arrays(store), spec))
    assert "quantile_clipping/uq_0.5_image" in available_specs(store, "imc", 1.0)


def test_worker_processes_give_the_same_statistics(tmp_path: Path) -> None:
    source = make_synthetic_cohort(tmp_path / "tiff", tissues=("A", "B"), he_shape=(120, 150), seed=5, ihc_markers=(), with_he=False)
    dest = tmp_path / "cohort.zarr"
    assert convert_cohort(source, dest, ConvertOptions(progress=False)).ok
    spec = "quantile_clipping_log1p/uq_0.99_global"
    report = compute_statistics(dest, "imc", 0.5, [spec], run=RunOptions(workers=2, progress=False))
    assert report.ok and len(report.outcomes) == 2, report.summary()
    _compare(read_statistics(dest, "imc", 0.5, spec), _reference(_arrays(dest, resolution=0.5), spec))


def test_mixed_dtypes(tmp_path: Path) -> None:
    """uint16, float32 and uint8 tissues: integer ones exact, the float one within its bin bound."""
    source = make_mixed_cohort(tmp_path / "tiff")
    dest = tmp_path / "cohort.zarr"
    assert convert_cohort(source, dest, ConvertOptions(progress=False)).ok
    spec = "quantile_clipping/uq_0.99_image"
    assert compute_statistics(dest, "imc", 1.0, [spec], run=RunOptions(progress=False)).ok
    got = read_statistics(dest, "imc", 1.0, spec)
    planes = _arrays(dest)
    want = _reference(planes, spec)
    assert sorted(got.tissue_id.unique()) == sorted(MIXED_CHANNELS)
    for tissue, by_channel in planes.items():
        for channel, plane in by_channel.items():
            row = got[(got.tissue_id == tissue) & (got.channel_name == channel)].iloc[0]
            expected = float(np.quantile(plane.astype(np.float64), 0.99, method="inverted_cdf"))
            if plane.dtype.kind == "f":
                assert abs(row.upper - expected) <= abs(expected) * 2**-8
            else:
                assert row.upper == expected
    merged = got.merge(want, on=["tissue_id", "channel_name"], suffixes=("", "_ref"))
    np.testing.assert_allclose(merged["mean"], merged["mean_ref"], rtol=2**-7)
    np.testing.assert_allclose(merged["std"], merged["std_ref"], rtol=2**-6)


def test_float_nan_and_infinities_are_left_out_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Colour indices ``log(a / b)`` of the Hubble deep field: a 0 in ``b`` gives +inf, in ``a`` -inf, in both NaN. Those
    values are left out of the statistics (which equal numpy's on the finite values), with no RuntimeWarning, and said:
    per tissue and channel in the report and a warning naming the level, in the summary line, and again when kept."""
    import pyarrow.parquet as pq

    from spora_zarr.convert import add_image

    hubble = data.hubble_deep_field().astype(np.float32)
    names = ["r_g", "r_b", "g_b"]
    crops = {"H1": hubble[:200, :300], "H2": hubble[400:560, 500:740]}
    store = tmp_path / "cohort.zarr"
    planes, expected = {}, {}
    for tissue, crop in crops.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            colours = np.stack([np.log(crop[..., i] / crop[..., j]) for i, j in [(0, 1), (0, 2), (1, 2)]]).astype(np.float32)
        tifffile.imwrite(tmp_path / f"{tissue}.tif", colours, photometric="minisblack")
        add_image(store, str(tmp_path / f"{tissue}.tif"), modality="imc", tissue_id=tissue, mpp=1.0, channel_names=names)
        planes[tissue] = {name: plane[np.isfinite(plane)] for name, plane in zip(names, colours)}
        expected[tissue] = {name: int((~np.isfinite(plane)).sum()) for name, plane in zip(names, colours)}
        assert np.isposinf(colours).any() and np.isneginf(colours).any() and np.isnan(colours).any()
    specs = ["quantile_clipping/uq_0.99_image", "quantile_clipping_log1p/uq_0.95_global"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning of numpy must not reach the user
        with caplog.at_level("WARNING", logger="spora_zarr"):
            report = compute_statistics(store, "imc", 1.0, specs, run=RunOptions(progress=False))
    assert report.ok, report.summary()
    assert report.left_out == expected
    total = sum(n for by in expected.values() for n in by.values())
    assert f"; {total:,} NaN or infinite values left out (6 channel(s) of 2 tissue(s))" in report.summary()
    for tissue in crops:
        listed = ", ".join(f"{name} {n:,}" for name, n in expected[tissue].items())
        line = (
            f"imc/images/{tissue}/1_0mpp: {sum(expected[tissue].values()):,} NaN or infinite value(s) left out of the statistics ({listed})"
        )
        assert line in caplog.text
    for spec in specs:
        got = read_statistics(store, "imc", 1.0, spec)
        assert np.isfinite(got[["upper", "mean", "std"]].to_numpy()).all()
        merged = got.merge(_reference(planes, spec), on=["tissue_id", "channel_name"], suffixes=("", "_ref"))
        assert len(merged) == 6
        assert (np.abs(merged.upper - merged.upper_ref) <= np.abs(merged.upper_ref) * 2**-8).all()
        np.testing.assert_allclose(merged["mean"], merged["mean_ref"], rtol=2**-7)
        np.testing.assert_allclose(merged["std"], merged["std_ref"], rtol=2**-6)
    again = compute_statistics(store, "imc", 1.0, specs[:1], run=RunOptions(progress=False))
    assert all(o.skipped for o in again.outcomes) and again.left_out == expected  # kept histograms still say it
    path = store / histogram_path("imc", 1.0, "H1")  # a histogram written before NaN and inf were counted is counted again
    table = pq.read_table(path)
    key = json.loads(table.schema.metadata[b"spora_histogram"])
    del key["left_out_counted"], key["left_out"]
    pq.write_table(table.replace_schema_metadata({b"spora_histogram": json.dumps(key).encode()}), path)
    recounted = compute_statistics(store, "imc", 1.0, specs[:1], run=RunOptions(progress=False))
    assert [o.skipped for o in recounted.outcomes] == [False, True] and recounted.left_out == expected


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("zscore/uq_0.99_image", "unknown standardization spec"),
        ("quantile_clipping/uq_0.99", "malformed"),
        ("quantile_clipping/uq_1.5_image", "in \\(0, 1\\]"),
        ("quantile_clipping/uq_0.99_tissue", "scope must be one of image, global"),
    ],
)
def test_bad_specs(store: Path, spec: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        compute_statistics(store, "imc", 1.0, [spec])
    with pytest.raises(InvalidInputError, match=message):
        MultiplexImagingDataset("t", store, 1.0, SIZE, standardization=spec)


def test_identity_is_no_spec_to_compute_and_says_so(store: Path) -> None:
    """It was refused as an "unknown standardization spec" by a message that listed it among the valid ones."""
    with pytest.raises(InvalidInputError, match="spec 'identity' needs no statistics"):
        compute_statistics(store, "imc", 1.0, ["identity"])


def test_missing_statistics_list_what_exists_and_the_command(store: Path) -> None:
    listed = r"present: .*quantile_clipping/uq_0.99_image.*spora-zarr standardize .* --spec quantile_clipping/uq_0.42_image"
    with pytest.raises(NotFoundError, match=listed):
        MultiplexImagingDataset("t", store, 1.0, SIZE, standardization="quantile_clipping/uq_0.42_image")
    with pytest.raises(NotFoundError, match=r"at 0_5mpp \(present: quantile_clipping/uq_0.99_image\)"):
        read_statistics(store, "imc", 0.5, "quantile_clipping/uq_0.99_global")
    with pytest.raises(InvalidInputError, match="pass a dataset, or a store"):
        build_standardizer("quantile_clipping/uq_0.99_image")


def test_cli(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = "quantile_clipping/uq_0.8_global"
    args = ["standardize", str(store), "--modality", "imc", "--resolution", "1.0", "--spec", spec, "--spec", SPECS[0], "--no-progress"]
    assert main(args) == 0
    assert "statistics written for quantile_clipping/uq_0.8_global" in capsys.readouterr().out
    _compare(read_statistics(store, "imc", 1.0, spec), _reference(_arrays(store), spec))
    assert main(["standardize", str(store), "--modality", "imc", "--resolution", "1.0", "--spec", "nope/uq_0.9_image"]) == 1
    assert "unknown standardization spec 'nope/uq_0.9_image'" in capsys.readouterr().err
    assert main(["standardize", str(store), "--modality", "imc", "--resolution", "3.0", "--spec", spec]) == 1
    assert "no images at resolution 3_0mpp" in capsys.readouterr().err


# -- standardizers on the read path -------------------------------------------------------------
def _transform(raw: np.ndarray, names: list[str], tissue: str, stats: pd.DataFrame, log1p: bool) -> np.ndarray:
    table = stats.set_index(["tissue_id", "channel_name"])
    out = np.empty(raw.shape, np.float64)
    for i, name in enumerate(names):
        upper, mean, std = table.loc[(tissue, name), ["upper", "mean", "std"]]
        clipped = np.clip(raw[i].astype(np.float64), 0, upper)
        out[i] = ((np.log1p(clipped) if log1p else clipped) - mean) / std
    return out


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("kind", ["complete", "qc_filtered", "uniprot_filtered"])
def test_standardized_reads_equal_the_reference_transform(store: Path, spec: str, kind: str) -> None:
    dataset = MultiplexImagingDataset("t", store, 1.0, SIZE, standardization=spec)
    log1p = parse_spec(spec).log1p
    assert isinstance(dataset.standardizer, QuantileClippingLog1PStandardizer if log1p else QuantileClippingStandardizer)
    stats = read_statistics(store, "imc", 1.0, spec)
    for tissue in dataset.tissue_ids:
        names = dataset.channel_names(tissue, kind)
        raw = dataset.read_tile(tissue, 32, 64, kind=kind, preprocess=False).numpy()
        tile = dataset.read_tile(tissue, 32, 64, kind=kind)
        assert tile.dtype == torch.float32 and tile.shape == raw.shape
        np.testing.assert_allclose(tile.numpy(), _transform(raw, names, tissue, stats, log1p), rtol=1e-5, atol=1e-5)
        whole = dataset.get_tissue(tissue, kind=kind)
        full = dataset.get_tissue(tissue, kind=kind, preprocess=False).image.numpy()
        np.testing.assert_allclose(whole.image.numpy(), _transform(full, names, tissue, stats, log1p), rtol=1e-5, atol=1e-5)
        row, col = dataset.tile_position(tissue, 0)
        crop = dataset.get_crop(tissue, 0, kind=kind)
        raw_crop = dataset.read_tile(tissue, row, col, kind=kind, preprocess=False).numpy()
        np.testing.assert_allclose(crop.numpy(), _transform(raw_crop, names, tissue, stats, log1p), rtol=1e-5, atol=1e-5)


def test_batch_standardizer_equals_the_item_path(store: Path) -> None:
    """uint16 items through DataLoader(num_workers=2) + the batch standardizer == float32 items standardized in the workers."""
    spec = "quantile_clipping_log1p/uq_0.99_image"
    dataset = MultiplexImagingDataset("t", store, 1.0, SIZE, standardization=spec)
    raw_tiles = TileDataset(dataset, kind="qc_filtered", preprocess=False, masks=())
    float_tiles = TileDataset(dataset, kind="qc_filtered", preprocess=True, masks=())
    module = BatchStandardizer.for_tiles(raw_tiles, "imc")
    assert isinstance(module, torch.nn.Module) and module.panel == raw_tiles.panels["imc"]
    raw_batches = list(DataLoader(raw_tiles, batch_size=16, num_workers=2, timeout=120))
    float_batches = list(DataLoader(float_tiles, batch_size=16, num_workers=0))
    assert raw_batches[0]["imc"].dtype == torch.uint16
    assert any(not bool(b["imc_channel_mask"].all()) for b in raw_batches)  # tissue C lacks CD3
    for raw, ref in zip(raw_batches, float_batches):
        assert raw["tissue_id"] == ref["tissue_id"]
        out = module(raw["imc"], raw["tissue_id"])
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref["imc"], rtol=1e-5, atol=1e-5)
    indices = module.indices(raw_batches[0]["tissue_id"])
    torch.testing.assert_close(module(raw_batches[0]["imc"], indices), module(raw_batches[0]["imc"], raw_batches[0]["tissue_id"]))
    with pytest.raises(NotFoundError, match="no parameters for tissue 'Z'"):
        module(raw_batches[0]["imc"][:1], ["Z"])


def test_identity_and_callables(store: Path) -> None:
    dataset = MultiplexImagingDataset("t", store, 1.0, SIZE)
    assert isinstance(dataset.standardizer, IdentityStandardizer)
    raw = dataset.read_tile("A", 0, 0, preprocess=False)
    torch.testing.assert_close(dataset.read_tile("A", 0, 0), raw.to(torch.float32))
    doubled = MultiplexImagingDataset("t", store, 1.0, SIZE, standardization=lambda image, tissue, names: image.float() * 2)
    torch.testing.assert_close(doubled.read_tile("A", 0, 0), raw.float() * 2)
    module = BatchStandardizer(IdentityStandardizer(), ["A"], dataset.channel_names("A"))
    torch.testing.assert_close(module(raw[None], ["A"]), raw[None].float())


@pytest.mark.parametrize("preset", ["imagenet", "hibou"])
def test_he_mean_std_type(store: Path, preset: str) -> None:
    presets = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "hibou": ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))}
    mean, std = presets[preset]
    dataset = HEImagingDataset("t", store, 1.0, SIZE, mean_std_type=preset)
    assert isinstance(dataset.standardizer, MeanStdStandardizer) and build_standardizer(preset).spec == preset
    raw = dataset.read_tile("A", 0, 0, preprocess=False).numpy().astype(np.float64)
    want = (raw / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(dataset.read_tile("A", 0, 0).numpy(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match="mean_std_type must be one of imagenet, hibou"):
        HEImagingDataset("t", store, 1.0, SIZE, mean_std_type="resnet")


# -- filters ------------------------------------------------------------------------------------
FILTERS = {
    "DNA1": {"name": "median", "size": 5},
    "CD3": {"name": "gaussian", "sigma": 1.5},
    "CD20": {"name": "clip", "high": 700},
    "*": {"name": "hot_pixel", "threshold": 40},
}


def test_filter_factory_builds_named_filters() -> None:
    from scipy import ndimage

    from spora_zarr.standardize.filters import FilterFactory

    plane = np.random.default_rng(0).integers(0, 1000, (40, 50)).astype(np.uint16)
    np.testing.assert_array_equal(FilterFactory.create("median", size=3)(plane), ndimage.median_filter(plane, 3, mode="reflect"))
    np.testing.assert_array_equal(FilterFactory.create("clip", low=100, high=500)(plane), np.clip(plane, 100, 500))
    assert FilterFactory.create("identity")(plane) is plane
    hot = plane.copy()
    hot[20, 20] = 60000
    cleaned = FilterFactory.create("hot_pixel", threshold=2000)(hot)
    assert cleaned[20, 20] < 2000 and np.array_equal(np.delete(cleaned.ravel(), 20 * 50 + 20), np.delete(hot.ravel(), 20 * 50 + 20))
    assert FilterFactory.create("gaussian", sigma=2.0).margin == 8
    with pytest.raises(InvalidInputError, match="unknown filter 'sharpen'; expected one of identity, median, gaussian, clip, hot_pixel"):
        FilterFactory.create("sharpen")
    with pytest.raises(InvalidInputError, match="bad parameters"):
        FilterFactory.from_config({"CD3": {"name": "median", "radius": 2}})


def test_filtered_tiles_equal_the_filtered_image_cropped(store: Path) -> None:
    import pickle

    from spora_zarr.standardize.filters import FilterFactory

    dataset = MultiplexImagingDataset("t", store, 1.0, SIZE, filters=FILTERS)
    plain = MultiplexImagingDataset("t", store, 1.0, SIZE)
    filters = FilterFactory.from_config(FILTERS)
    assert filters.margin == 6
    for tissue in dataset.tissue_ids:
        for kind in ("complete", "qc_filtered"):
            whole = plain.get_tissue(tissue, kind=kind, preprocess=False).image.numpy()
            filtered = filters.apply(whole, plain.channel_names(tissue, kind))
            assert not np.array_equal(filtered, whole)
            np.testing.assert_array_equal(dataset.get_tissue(tissue, kind=kind, preprocess=False).image.numpy(), filtered)
            height, width = whole.shape[-2:]
            for row, col in [(0, 0), (37, 91), (height - 20, width - 30), (height - SIZE, width - SIZE)]:
                tile = dataset.read_tile(tissue, row, col, kind=kind, preprocess=False, pad=True).numpy()
                expected = np.zeros_like(tile)
                part = filtered[:, row : row + SIZE, col : col + SIZE]
                expected[:, : part.shape[1], : part.shape[2]] = part
                np.testing.assert_array_equal(tile, expected)
                out = torch.full(tile.shape, 7, dtype=torch.from_numpy(tile).dtype)
                dataset.read_tile(tissue, row, col, kind=kind, preprocess=False, pad=True, out=out)
                np.testing.assert_array_equal(out.numpy(), expected)  # out= takes the filtered window too
    clone = pickle.loads(pickle.dumps(dataset))
    again = clone.read_tile("A", 5, 5, preprocess=False).numpy()
    np.testing.assert_array_equal(again, dataset.read_tile("A", 5, 5, preprocess=False).numpy())


# -- compiled kernels -----------------------------------------------------------------------------
needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the compiled standardization kernels are not built")


@needs_kernels
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_counter_skips_zero_words_at_every_alignment_and_length(dtype: type) -> None:
    """Runs of zeros of every length, at every start within an 8-byte word, with a non-zero before/after, equal bincount."""
    info = np.iinfo(dtype)
    signed = info.min < 0
    rng = np.random.default_rng(0)
    buffer: np.ndarray = np.zeros(64 + 16, dtype)
    for start in range(16):  # element offsets: every phase against the 8-byte words
        for length in range(41):
            data = buffer[start : start + length + 2]
            data[:] = 0
            data[0], data[-1] = info.max, info.min if signed else 1  # a non-zero on each side of the run
            data[1 : 1 + length // 3] = rng.integers(info.min, int(info.max) + 1, length // 3)  # some values inside it
            data = data[: rng.integers(0, data.size + 1)]  # and every tail length
            counts = np.zeros(1 << (8 * np.dtype(dtype).itemsize), np.int64)
            kernels.count_into(data, counts, signed=signed)
            offset = -int(info.min) if signed else 0
            assert np.array_equal(counts, np.bincount(data.astype(np.int64) + offset, minlength=counts.size)), (start, length)
    sparse: np.ndarray = np.where(rng.random(100_003) < 0.9, 0, rng.integers(1, 200, 100_003)).astype(dtype)
    counts = np.zeros(1 << (8 * np.dtype(dtype).itemsize), np.int64)
    kernels.count_into(sparse[3:], counts, signed=signed)  # a misaligned start: copied to an aligned buffer first
    assert np.array_equal(counts, np.bincount(sparse[3:].astype(np.int64) + (-int(info.min) if signed else 0), minlength=counts.size))
    block = sparse[: 3 * 5 * 7].reshape(3, 5, 7)  # planes of 35 samples: each starts at another phase of the words
    rows = np.zeros((3, counts.size), np.int64)
    kernels.count_into(block, rows, signed=signed)  # one call, plane c into row c
    for plane, row in zip(block, rows):
        assert np.array_equal(row, np.bincount(plane.ravel().astype(np.int64) + (-int(info.min) if signed else 0), minlength=counts.size))


def _reference_transform(x: np.ndarray, upper: np.ndarray, mean: np.ndarray, std: np.ndarray, log1p: bool) -> np.ndarray:
    clipped = np.minimum(x.astype(np.float64), upper[:, None, None])
    return ((np.log1p(clipped) if log1p else clipped) - mean[:, None, None]) / std[:, None, None]


@needs_kernels
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("log1p", [False, True])
def test_compiled_transform_equals_the_elementwise_transform(dtype: type, log1p: bool) -> None:
    """Bounds below, at and between values, at and past the dtype's maximum, infinite, 0: compiled == element-wise path."""
    top = int(np.iinfo(dtype).max)
    upper = np.array([3.0, 7.5, 100.0, top, top + 10.0, np.inf, 0.0, 250.0])
    mean = np.linspace(-1.0, 4.0, upper.size)
    std = np.linspace(0.5, 3.0, upper.size)
    rng = np.random.default_rng(1)
    image: np.ndarray = rng.integers(0, top + 1, (upper.size, 37, 29)).astype(dtype)
    image[:, 0, :10] = np.arange(10)  # every small value, the bounds among them
    image[:, 1, :3] = (top, top - 1, 0)
    stats = pd.DataFrame({"tissue_id": "T", "channel_name": [f"c{i}" for i in range(upper.size)], "upper": upper, "mean": mean, "std": std})
    standardizer = (QuantileClippingLog1PStandardizer if log1p else QuantileClippingStandardizer)(
        stats, "quantile_clipping_log1p/uq_0.99_image" if log1p else "quantile_clipping/uq_0.99_image"
    )
    names = list(stats.channel_name)
    compiled = standardizer(torch.from_numpy(image), "T", names)  # uint8/uint16 on the CPU: the compiled pass
    assert any(isinstance(t, CompiledTransform) for t in standardizer._transforms.values())
    elementwise = standardizer(torch.from_numpy(image.astype(np.int32)), "T", names)  # int32: the element-wise path
    if log1p:  # the tables: torch's vectorised and scalar log1p may differ in the last bit
        torch.testing.assert_close(compiled, elementwise, rtol=2e-7, atol=2e-7)
    else:  # min, multiply, add: the same float32 operations
        assert torch.equal(compiled, elementwise)
    finite = np.where(np.isfinite(upper), upper, 1e30)
    np.testing.assert_allclose(compiled.numpy(), _reference_transform(image, finite, mean, std, log1p), rtol=1e-5, atol=1e-5)
    bounds = torch.tensor(upper, dtype=torch.float32)
    transform = CompiledTransform(bounds, torch.ones(upper.size), torch.zeros(upper.size), log1p, np.dtype(dtype))
    if log1p:
        assert transform.lengths.tolist() == [min(int(np.floor(min(u, top))) + 2, top + 1) for u in upper]
    with pytest.raises(InvalidInputError, match="cannot map a torch.int32 image"):
        transform.apply(torch.from_numpy(image.astype(np.int32)))


def test_batch_standardizer_writes_into_out(store: Path) -> None:
    """``out=``: the same values written into the caller's tensor, on the gather path and the element-wise path."""
    dataset = MultiplexImagingDataset("t", store, 1.0, SIZE, standardization="quantile_clipping/uq_0.99_image")
    names = dataset.channel_names("A")
    assert isinstance(dataset.standardizer, QuantileClippingStandardizer)
    module = BatchStandardizer(dataset.standardizer, ["A", "B"], names)
    batch = torch.stack([dataset.read_tile("A", 0, 0, preprocess=False), dataset.read_tile("B", 0, 0, preprocess=False)])
    want = module(batch, ["A", "B"])
    for items in (batch, batch.to(torch.int32), batch.to(torch.float32)):
        out = torch.full(batch.shape, torch.nan)
        assert module(items, ["A", "B"], out=out) is out
        torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    floats = batch.to(torch.float32)
    assert module(floats, ["A", "B"], out=floats) is floats  # in place, when asked
    torch.testing.assert_close(floats, want, rtol=0, atol=1e-6)
    with pytest.raises(InvalidInputError, match="out must be a contiguous float32 tensor of shape"):
        module(batch, ["A", "B"], out=torch.empty(batch.shape, dtype=torch.float64))


def test_without_the_compiled_kernels_numpy_and_the_elementwise_path_give_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """An install without a C compiler: counts from np.bincount, standardization element-wise; the same results."""
    rng = np.random.default_rng(2)
    data = np.where(rng.random(10_001) < 0.8, 0, rng.integers(0, 65_536, 10_001)).astype(np.uint16)
    image = torch.from_numpy(data[:10_000].reshape(4, 50, 50).copy())
    stats = pd.DataFrame({"tissue_id": "T", "channel_name": list("abcd"), "upper": [5.0, 300.0, 65_535.0, 0.0], "mean": 1.0, "std": 2.0})
    standardizer = QuantileClippingStandardizer(stats, "quantile_clipping/uq_0.99_image")
    compiled = standardizer(image, "T", list("abcd"))
    counts = np.zeros(65_536, np.int64)
    kernels.count_into(data, counts, signed=False)
    monkeypatch.setattr(kernels, "_native", lambda: None)
    assert not kernels.available()
    fallback = np.zeros(65_536, np.int64)
    kernels.count_into(data, fallback, signed=False)
    assert np.array_equal(fallback, counts) and np.array_equal(fallback, np.bincount(data, minlength=65_536))
    elementwise = QuantileClippingStandardizer(stats, "quantile_clipping/uq_0.99_image")(image, "T", list("abcd"))
    assert torch.equal(elementwise, compiled)
