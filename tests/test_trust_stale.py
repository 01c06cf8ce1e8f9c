"""Results computed from a group that was replaced since: recomputed by the next run, named by ``validate --deep``.

``add-image --overwrite`` can replace a tissue's image or mask with other pixels
of the same shape, dtype and channel names. Every group records the digest of
the pixels written at each level (``spora.content_digests``); histograms, tile
rows and predictions record the digest of the level they were computed from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import torch

from spora_zarr import ConvertOptions, WriteOptions, add_image, convert_cohort, open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.datasets import MultiplexImagingDataset
from spora_zarr.errors import InvalidInputError, StoreError
from spora_zarr.inference.predict import PredictOptions, predict_cohort
from spora_zarr.read.levels import open_level
from spora_zarr.run import RunOptions
from spora_zarr.sources.base import ArraySource
from spora_zarr.standardize.standardizers import BatchStandardizer
from spora_zarr.standardize.statistics import compute_statistics, histogram_path, read_statistics
from spora_zarr.store.location import Location
from spora_zarr.store.staging import Staging
from spora_zarr.testing.cohorts import make_synthetic_cohort
from spora_zarr.tiling.tilers import best_mask_tiling_try_to_stop
from spora_zarr.torch import TileDataset
from spora_zarr.write.writer import write_image

SPEC = "quantile_clipping/uq_0.99_image"
TILE = 32
STANDARDIZE = ["standardize", "STORE", "--modality", "imc", "--resolution", "1.0", "--spec", SPEC, "--within-mask"]
TILE_ARGS = ["tile", "STORE", "--resolution", "1.0", "--tile-size", str(TILE)]
SERIAL = RunOptions(progress=False)


def _run(argv: list[str], store: Path) -> None:
    assert main([str(store) if a == "STORE" else a for a in argv]) == 0


@pytest.fixture
def store(tmp_path: Path) -> Path:
    source = make_synthetic_cohort(tmp_path / "tiff", tissues=("A", "B"), he_shape=(160, 192), ihc_markers=(), seed=11, imc_channels=3)
    store = tmp_path / "cohort.zarr"
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    _run(STANDARDIZE, store)
    _run(TILE_ARGS, store)
    assert validate_store(store, deep=True) == []
    return store


def _replace(store: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Tissue A's imc image and tissue mask at 1.0 mpp replaced by others of the same shape, dtype and channel names."""
    cohort = open_cohort(store)
    image = cohort.open_image("imc", "A", 1.0).values
    names = cohort.channel_names("imc", "A")
    other = (image.astype(np.int64) * 3 % 60_000).astype(image.dtype)[:, ::-1].copy()
    metadata = {"PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0, "axes": "CYX", "Channel": {"Name": names}}
    tifffile.imwrite(tmp_path / "imc_A.ome.tif", other, ome=True, metadata=metadata)
    mask = np.zeros(image.shape[1:], np.uint8)
    mask[20:90, 30:150] = 1
    tifffile.imwrite(tmp_path / "mask_A.ome.tif", mask, ome=True, metadata={"PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0})
    for name, modality in (("imc_A", "imc"), ("mask_A", "tissue_masks")):
        argv = ["add-image", "--overwrite", str(store), str(tmp_path / f"{name}.ome.tif"), "--modality", modality, "--tissue", "A"]
        assert main(argv) == 0
    return other, mask


def test_the_digest_names_the_pixels(store: Path, tmp_path: Path) -> None:
    """Same pixels, same digest (a rewrite of one image gives its digest again); other pixels, another one."""
    cohort = open_cohort(store)
    before = {t: cohort.content_digest("imc", t, 1.0) for t in ("A", "B")}
    assert all(before.values()) and before["A"] != before["B"]
    assert cohort.group_metadata("imc", "A").spora.content_digests.keys() == {"0_5mpp", "1_0mpp"}
    image = cohort.open_image("imc", "B", 1.0).values
    names = cohort.channel_names("imc", "B")
    metadata = {"PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0, "axes": "CYX", "Channel": {"Name": names}}
    tifffile.imwrite(tmp_path / "same.ome.tif", image, ome=True, metadata=metadata)
    assert main(["add-image", "--overwrite", str(store), str(tmp_path / "same.ome.tif"), "--modality", "imc", "--tissue", "B"]) == 0
    assert open_cohort(store).content_digest("imc", "B", 1.0) == before["B"]
    _replace(store, tmp_path)
    assert open_cohort(store).content_digest("imc", "A", 1.0) not in (before["A"], None)


def test_results_of_replaced_groups_are_named_and_recomputed(store: Path, tmp_path: Path) -> None:
    histogram_b = store / histogram_path("imc", 1.0, "B", within_mask=True)
    kept = histogram_b.read_bytes()
    image, mask = _replace(store, tmp_path)

    problems = validate_store(store, deep=True)
    stats_table = "imc/1_0mpp/standardization/quantile_clipping/uq_0.99_image/stats.parquet"
    tile_table = "tiling/1_0mpp/best/32_tile_stats.parquet"
    assert sorted(problems) == sorted(
        [
            f"{stats_table}: tissue 'A' was measured on an image replaced since; run the same `spora-zarr standardize` again",
            f"{stats_table}: tissue 'A' was measured on a tissue mask replaced since; run the same `spora-zarr standardize` again",
            f"{tile_table}: tissue 'A' was tiled from a tissue mask replaced since; run the same `spora-zarr tile` again",
        ]
    ), problems

    _run(STANDARDIZE, store)  # A is counted again, B's histograms are kept
    assert histogram_b.read_bytes() == kept
    stats = read_statistics(store, "imc", 1.0, SPEC).set_index(["tissue_id", "channel_name"])
    names = open_cohort(store).channel_names("imc", "A")
    for channel, plane in zip(names, image, strict=True):
        expected = np.quantile(plane[mask > 0], 0.99, method="inverted_cdf")
        assert stats.loc[("A", channel), "upper"] == expected, channel

    _run(TILE_ARGS, store)  # A is tiled again from its new mask, B's rows are kept
    rows = pq.read_table(store / tile_table).to_pylist()
    coords = pq.read_table(store / "tiling/1_0mpp/best/32_tile_coordinates.parquet").to_pylist()
    tiles, summary, _ = best_mask_tiling_try_to_stop(mask, TILE)
    assert [(c["row"], c["col"]) for c in coords if c["tissue_id"] == "A"] == [(t.row, t.col) for t in tiles]
    assert next(r for r in rows if r["tissue_id"] == "A")["valid_pixels"] == summary["valid_pixels"] == int(mask.sum())
    assert validate_store(store, deep=True) == []


def test_a_failed_retiling_leaves_the_old_rows_out(store: Path, tmp_path: Path) -> None:
    """A tissue whose mask changed and whose new tiling fails is not kept in the table with its old tiles."""
    _replace(store, tmp_path)
    shards = [p for p in (store / "segmentations/tissue_masks/A/1_0mpp").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert shards
    shards[0].write_bytes(b"damaged")
    assert main([str(store) if a == "STORE" else a for a in TILE_ARGS]) == 1
    rows = pq.read_table(store / "tiling/1_0mpp/best/32_tile_stats.parquet").to_pylist()
    assert [r["tissue_id"] for r in rows] == ["B"]


def test_a_prediction_from_a_replaced_image_is_not_kept(store: Path, tmp_path: Path) -> None:
    """A rerun of ``predict`` does not keep a tissue predicted from the image that was replaced since; --overwrite redoes it."""
    model = tmp_path / "identity.pt"
    torch.jit.script(torch.nn.Identity()).save(str(model))
    options = PredictOptions(modality="imc", resolution=1.0, name="same", tile_size=64, overlap=8)
    assert predict_cohort(store, str(model), options, run=SERIAL).ok
    image, _ = _replace(store, tmp_path)
    again = predict_cohort(store, str(model), options, run=SERIAL)
    assert [o.label for o in again.failed] == ["A"] and [o.label for o in again.outcomes if o.skipped] == ["B"]
    assert "predictions/same/images/A: predicted from an image replaced since: give --overwrite" in str(again.failed[0].error)
    assert predict_cohort(store, str(model), options, tissues=["A"], run=SERIAL, overwrite=True).ok
    predicted = open_cohort(store).open_array("predictions/same", "A", 1.0)[:]
    np.testing.assert_array_equal(predicted, image.astype(predicted.dtype))
    torch.jit.script(Doubles()).save(str(model))  # the model file saved again, other weights: loaded again, not kept
    retrained = predict_cohort(store, str(model), options, tissues=["B"], run=SERIAL)
    assert "predictions/same/images/B: predicted from a model file replaced since" in str(retrained.failed[0].error)
    assert predict_cohort(store, str(model), options, tissues=["B"], run=SERIAL, overwrite=True).ok
    predicted = open_cohort(store).open_array("predictions/same", "B", 1.0)[:]
    np.testing.assert_array_equal(predicted, 2 * open_cohort(store).open_array("imc", "B", 1.0)[:].astype(predicted.dtype))


class Doubles(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_a_reader_opened_before_a_group_was_replaced_is_not_reused(store: Path, tmp_path: Path) -> None:
    """In one process, ``open_level`` after a group was written again reads the new array (its shape and pixels), not the old one."""
    path = "imc/images/A/1_0mpp"
    before = open_level(store, path)
    assert before.read(0, 0, 8, 8).shape[-2:] == (8, 8)
    names = open_cohort(store).channel_names("imc", "A")
    other = np.random.default_rng(5).integers(0, 9_000, (len(names), 50, 70), dtype=np.uint16)
    assert not write_image(store, "imc/images/A", {1.0: ArraySource(other)}, channel_names=names, overwrite=True).skipped
    after = open_level(store, path)
    assert after is not before and after.shape == other.shape
    np.testing.assert_array_equal(after.read(0, 0, 50, 70), other)


def test_training_reads_refuse_statistics_of_replaced_pixels(store: Path, tmp_path: Path) -> None:
    """A dataset standardized by statistics of an image (or mask) replaced since refuses every tissue (the means and
    deviations are over the cohort), naming the table, the tissue replaced and the command, with --within-mask."""
    _replace(store, tmp_path)
    dataset = MultiplexImagingDataset("t", store, 1.0, 32, standardization=SPEC, tiling_strategy="best")
    table = f"{store}/imc/1_0mpp/standardization/quantile_clipping/uq_0.99_image/stats.parquet"
    message = f"{table}: measured on pixels replaced since (tissue 'A'), so stale for every tissue"
    for tissue in ("B", "A"):
        with pytest.raises(StoreError, match=re.escape(message)) as raised:
            dataset.read_tile(tissue, 0, 0)
        assert str(raised.value).endswith(f"--resolution 1_0mpp --spec {SPEC} --within-mask")
    with pytest.raises(StoreError, match=re.escape(message)):
        BatchStandardizer.for_tiles(TileDataset(dataset, preprocess=False, masks=()), "imc")
    _run(STANDARDIZE, store)
    again = MultiplexImagingDataset("t", store, 1.0, 32, standardization=SPEC, tiling_strategy="best")
    assert again.read_tile("A", 0, 0).dtype == again.read_tile("B", 0, 0).dtype == torch.float32


def test_a_new_resolution_keeps_the_results_of_the_others(store: Path, tmp_path: Path) -> None:
    """add-image of another resolution (no --overwrite) changes no level's digest: nothing computed at 1.0 mpp is redone or named."""
    model = tmp_path / "identity.pt"
    torch.jit.script(torch.nn.Identity()).save(str(model))
    options = PredictOptions(modality="imc", resolution=1.0, name="kept", tile_size=64, overlap=8)
    assert predict_cohort(store, str(model), options, run=SERIAL).ok
    before = open_cohort(store).group_metadata("imc", "A").spora.content_digests
    cohort = open_cohort(store)
    coarse = cohort.open_image("imc", "A", 1.0).values[:, ::2, ::2]
    metadata = {"PhysicalSizeX": 2.0, "PhysicalSizeY": 2.0, "axes": "CYX", "Channel": {"Name": cohort.channel_names("imc", "A")}}
    tifffile.imwrite(tmp_path / "coarse.ome.tif", coarse, ome=True, metadata=metadata)
    argv = [
        "add-image",
        str(store),
        str(tmp_path / "coarse.ome.tif"),
        "--modality",
        "imc",
        "--tissue",
        "A",
        "--chunk",
        "64",
        "--shard",
        "128",
    ]
    assert main(argv) == 0  # another layout: the kept levels are written again, in other blocks
    after = open_cohort(store).group_metadata("imc", "A").spora.content_digests
    assert "2_0mpp" in after and {k: after[k] for k in before} == before
    assert validate_store(store, deep=True) == []
    report = predict_cohort(store, str(model), options, run=SERIAL)
    assert report.ok and all(o.skipped for o in report.outcomes)
    histograms = store / histogram_path("imc", 1.0, "A", within_mask=True)
    kept = histograms.read_bytes()
    _run(STANDARDIZE, store)
    assert histograms.read_bytes() == kept


def test_histograms_of_a_store_written_before_the_digests_are_kept(store: Path) -> None:
    """Groups and histograms without digests (an older spora_zarr's) match: a rerun counts nothing again."""
    for path in [*store.glob("imc/images/*/zarr.json"), *store.glob("segmentations/tissue_masks/*/zarr.json")]:
        document = json.loads(path.read_text())
        del document["attributes"]["spora"]["content_digests"]
        path.write_text(json.dumps(document))
    for path in store.glob("imc/1_0mpp/standardization/_histograms/within_mask/*.parquet"):
        table = pq.read_table(path)
        key = json.loads(table.schema.metadata[b"spora_histogram"])
        del key["content_digests"]
        pq.write_table(table.replace_schema_metadata({b"spora_histogram": json.dumps(key).encode()}), path)
    report = compute_statistics(store, "imc", 1.0, [SPEC], within_mask=True, run=SERIAL)
    assert report.ok and all(o.skipped for o in report.outcomes), report.summary()
    # a resolution added to such a group leaves its other levels without digests: what was computed from them is kept
    cohort = open_cohort(store)
    coarse = cohort.open_image("imc", "A", 1.0).values[:, ::2, ::2]
    metadata = {"PhysicalSizeX": 2.0, "PhysicalSizeY": 2.0, "axes": "CYX", "Channel": {"Name": cohort.channel_names("imc", "A")}}
    tifffile.imwrite(store.parent / "coarse.ome.tif", coarse, ome=True, metadata=metadata)
    assert main(["add-image", str(store), str(store.parent / "coarse.ome.tif"), "--modality", "imc", "--tissue", "A"]) == 0
    assert set(open_cohort(store).group_metadata("imc", "A").spora.content_digests) == {"2_0mpp"}
    again = compute_statistics(store, "imc", 1.0, [SPEC], within_mask=True, run=SERIAL)
    assert all(o.skipped for o in again.outcomes), again.summary()


def test_a_reader_of_a_remote_store_is_not_reused_after_this_process_replaced_the_group() -> None:
    """On a store without file stamps (memory://, S3), ``open_level`` after this process wrote a group again gives a new reader."""
    store, names = "memory://stale-readers/cohort.zarr", ["a", "b"]
    first = np.random.default_rng(1).integers(0, 9_000, (2, 40, 60), dtype=np.uint16)
    write_image(store, "imc/images/A", {1.0: ArraySource(first)}, channel_names=names)
    before = open_level(store, "imc/images/A/1_0mpp")
    np.testing.assert_array_equal(before.read(0, 0, 40, 60), first)
    other = np.random.default_rng(2).integers(0, 9_000, (2, 50, 70), dtype=np.uint16)
    write_image(store, "imc/images/A", {1.0: ArraySource(other)}, channel_names=names, overwrite=True)
    after = open_level(store, "imc/images/A/1_0mpp")
    assert after.shape == other.shape
    np.testing.assert_array_equal(after.read(0, 0, 50, 70), other)


def test_a_prediction_with_other_standardization_is_not_kept(store: Path, tmp_path: Path) -> None:
    model = tmp_path / "identity.pt"
    torch.jit.script(torch.nn.Identity()).save(str(model))
    plain = PredictOptions(modality="imc", resolution=1.0, name="std", tile_size=64, overlap=8)
    assert predict_cohort(store, str(model), plain, tissues=["B"], run=SERIAL).ok
    standardized = PredictOptions(modality="imc", resolution=1.0, name="std", tile_size=64, overlap=8, standardization=SPEC)
    refused = predict_cohort(store, str(model), standardized, tissues=["B"], run=SERIAL)
    assert f"predicted with standardization 'identity', not '{SPEC}': give --overwrite" in str(refused.failed[0].error)


def test_the_digest_is_of_the_stored_values_whatever_the_source_byte_order() -> None:
    pixels = np.random.default_rng(3).integers(0, 60_000, (2, 70, 90), dtype=np.uint16)
    digests = []
    for name, array in (("native", pixels), ("big", pixels.astype(">u2"))):
        store = f"memory://byte-order/{name}.zarr"
        write_image(store, "imc/images/A", {1.0: ArraySource(array)}, channel_names=["a", "b"])
        attributes = Staging(Location.parse(store)).read_attributes("imc/images/A") or {}
        digests.append(attributes["spora"]["content_digests"]["1_0mpp"])
    assert digests[0] is not None and digests[0] == digests[1]


def test_a_dataset_refuses_to_read_an_image_written_again_since_it_was_opened(store: Path, tmp_path: Path) -> None:
    """Its shape, channels, tiles and statistics are of the old image: reading the new one through it is an error, not a crop."""
    dataset = MultiplexImagingDataset("t", store, 1.0, 32, tiling_strategy="best")
    assert dataset.read_tile("A", 0, 0).shape[-2:] == (32, 32)
    for document in store.rglob("zarr.json"):  # a store made read-only while a dataset reads it: nothing written again
        document.chmod(0o444)
    assert dataset.read_tile("A", 0, 0).shape[-2:] == (32, 32)
    for document in store.rglob("zarr.json"):
        document.chmod(0o644)
    _replace(store, tmp_path)
    written_again = r"imc/images/A/1_0mpp: written again \(its group replaced or a resolution added\) since this reader was opened"
    with pytest.raises(StoreError, match=written_again + "; open the dataset"):
        dataset.read_tile("A", 0, 0)
    assert dataset.read_tile("B", 0, 0).shape[-2:] == (32, 32)  # B was not written again
    reopened = MultiplexImagingDataset("t", store, 1.0, 32, tiling_strategy="best")
    assert reopened.read_tile("A", 0, 0).shape[-2:] == (32, 32)


def test_an_he_prediction_records_the_normalisation_it_applied(store: Path, tmp_path: Path) -> None:
    model = tmp_path / "identity.pt"
    torch.jit.script(torch.nn.Identity()).save(str(model))
    hibou = PredictOptions(modality="he", resolution=1.0, name="he_out", tile_size=64, overlap=8, standardization="hibou")
    assert predict_cohort(store, str(model), hibou, tissues=["B"], run=SERIAL).ok
    default = PredictOptions(modality="he", resolution=1.0, name="he_out", tile_size=64, overlap=8)
    refused = predict_cohort(store, str(model), default, tissues=["B"], run=SERIAL)
    assert "predicted with standardization 'hibou', not 'imagenet': give --overwrite" in str(refused.failed[0].error)
    multiplex = PredictOptions(modality="he", resolution=1.0, name="he_out", tile_size=64, overlap=8, standardization=SPEC)
    with pytest.raises(InvalidInputError, match=f"standardization '{re.escape(SPEC)}' is not a preset for he input, which is normalised"):
        predict_cohort(store, str(model), multiplex, tissues=["B"], run=SERIAL)


def test_a_digest_is_carried_over_only_for_pixels_that_stay(tmp_path: Path) -> None:
    """add-image of a finer level: a level computed again from the same pixels keeps its digest (and its results), one
    computed from other pixels (below a lossy JPEG level, computed first from the pixels before the encoding) does not."""
    rng = np.random.default_rng(0)
    fine = (rng.integers(0, 256, (256, 320, 3)) // 2 + 64).astype(np.uint8)
    coarse = fine.reshape(128, 2, 160, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    tifffile.imwrite(tmp_path / "coarse.tif", coarse, photometric="rgb")
    tifffile.imwrite(tmp_path / "fine.tif", fine, photometric="rgb")
    write = WriteOptions(chunk=16, shard=32, max_top_size=40)
    for name, quality in (("lossless", None), ("lossy", 40)):
        store = tmp_path / f"{name}.zarr"
        add_image(store, str(tmp_path / "coarse.tif"), modality="he", tissue_id="A", mpp=1.0, jpeg_quality=quality, write=write)
        cohort = open_cohort(store)
        before = {
            level: (cohort.content_digest("he", "A", level), cohort.open_image("he", "A", level).values) for level in ("2_0mpp", "4_0mpp")
        }
        add_image(store, str(tmp_path / "fine.tif"), modality="he", tissue_id="A", mpp=0.5, write=write)
        cohort = open_cohort(store)
        for level, (digest, pixels) in before.items():
            same = bool(np.array_equal(cohort.open_image("he", "A", level).values, pixels))
            assert same is (quality is None), (name, level)
            assert (cohort.content_digest("he", "A", level) == digest) is same, (name, level)
