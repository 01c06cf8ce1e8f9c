"""Tiled inference on real converted stores: identity and conv models, crop and blend, labels, resume, errors, CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from spora_zarr import open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.datasets import MultiplexImagingDataset
from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.inference.predict import PredictOptions, PredictTissueOptions, make_dataset, output_path, predict_cohort, predict_tissue
from spora_zarr.inference.source import InputWindows, PredictionSource
from spora_zarr.read.levels import open_level
from spora_zarr.run import RunOptions
from spora_zarr.sources.base import ArraySource
from spora_zarr.tiling.patching import tile_specs
from spora_zarr.write.options import WriteOptions
from spora_zarr.write.writer import write_image

REPO = Path(__file__).resolve().parents[1]
SERIAL = RunOptions(progress=False)


# -- models importable as module:callable (also from a subprocess) -------------------------
class Scores(torch.nn.Module):
    """Three per-class scores from the first channel: argmax is a thresholding of it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1]
        return torch.cat([-v, v - 2000.0, 0.5 * v - 400.0], dim=1)


class Shrinks(torch.nn.Module):
    """A model whose output is smaller than its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 1:, 1:]


class SlowIdentity(torch.nn.Module):
    """The identity, 50 ms per batch (for the SIGKILL test)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return x.clone()


def conv_model(in_channels: int, out_channels: int = 2, seed: int = 0) -> torch.nn.Module:
    """Two 3x3 convolutions: receptive radius 2."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, out_channels, 3, padding=1)
    ).eval()


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(cohort_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session's converted cohort (predictions are added to it)."""
    target = tmp_path_factory.mktemp("inference") / "cohort.zarr"
    shutil.copytree(cohort_pair[1], target)
    return target


@pytest.fixture(scope="module")
def identity_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "identity.pt"
    torch.jit.script(torch.nn.Identity()).save(str(path))
    return path


@pytest.fixture(scope="module")
def dataset(store: Path) -> MultiplexImagingDataset:
    return MultiplexImagingDataset("inference", store, 1.0, 64, modality="imc", verbose=False)


def _level(store: Path, path: str, level: str = "1_0mpp") -> np.ndarray:
    return zarr.open_array(str(store / path / level), mode="r")[:]


def _visible(store: Path) -> set[str]:
    """Group paths with a zarr.json outside the staging area."""
    return {str(p.parent.relative_to(store)) for p in store.rglob("zarr.json") if ".spora_tmp" not in p.parts}


# -- the source and the writer, many shapes -------------------------------------------------
def _random_store(tmp: Path, shape: tuple[int, int, int], seed: int) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60000, shape, dtype=np.uint16)
    write_image(tmp, "imc/images/T", {1.0: ArraySource(image)})
    return tmp, image


def _cases():
    yield (2, 5, 7), 16, 4  # smaller than a tile
    yield (1, 16, 16), 16, 6  # exactly one tile
    yield (3, 97, 130), 32, 8  # not divisible by the step
    yield (2, 301, 250), 48, 10
    yield (1, 1, 40), 8, 3  # a single row, odd overlap
    yield (2, 1000, 37), 64, 0  # no overlap, many writer blocks


@pytest.mark.parametrize(("shape", "size", "overlap"), list(_cases()))
@pytest.mark.parametrize("mode", ["crop", "blend"])
def test_identity_prediction_equals_the_input(tmp_path: Path, shape, size: int, overlap: int, mode: str) -> None:
    root, image = _random_store(tmp_path / "s.zarr", shape, seed=size + overlap)
    reader = open_level(root, "imc/images/T/1_0mpp")
    source = PredictionSource(torch.nn.Identity(), InputWindows(reader), size, overlap, batch_size=3, mode=mode, mpp=1.0)
    write_image(root, "predictions/p/images/T", {1.0: source}, options=None)
    written = _level(root, "predictions/p/images/T")
    assert written.dtype == np.float32 and written.shape == image.shape
    if mode == "crop":
        np.testing.assert_array_equal(written, image.astype(np.float32))
    else:
        np.testing.assert_allclose(written, image, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("mode", ["crop", "blend"])
@pytest.mark.parametrize(("size", "overlap", "cache_bytes"), [(24, 6, 128 * 2**20), (48, 10, 128 * 2**20), (24, 6, 0)])
def test_each_tile_runs_once_across_writer_blocks(tmp_path: Path, mode: str, size: int, overlap: int, cache_bytes: int) -> None:
    """Writer blocks of 32 px cut most tiles: their leftovers are kept for the next blocks, or without a cache they run again."""
    root, image = _random_store(tmp_path / "s.zarr", (2, 150, 171), seed=3)
    reader = open_level(root, "imc/images/T/1_0mpp")
    source = PredictionSource(
        torch.nn.Identity(), InputWindows(reader), size, overlap, batch_size=5, mode=mode, mpp=1.0, cache_bytes=cache_bytes
    )
    write_image(root, "predictions/p/images/T", {1.0: source}, options=WriteOptions(chunk=16, shard=32, min_saving=0))
    if cache_bytes:
        assert source.tiles_run == source.tiles_total
    else:
        assert source.tiles_run > source.tiles_total
    written = _level(root, "predictions/p/images/T")
    if mode == "crop":
        np.testing.assert_array_equal(written, image.astype(np.float32))
    else:
        np.testing.assert_allclose(written, image, rtol=1e-6, atol=1e-3)


@pytest.mark.slow
def test_crop_output_is_bitwise_the_in_memory_stitch(tmp_path: Path) -> None:
    root, image = _random_store(tmp_path / "s.zarr", (3, 203, 177), seed=5)
    model = conv_model(3, 2)
    source = PredictionSource(model, InputWindows(open_level(root, "imc/images/T/1_0mpp")), 40, 12, batch_size=1, mpp=1.0)
    write_image(root, "predictions/p/images/T", {1.0: source})
    stitched = np.zeros((2, *image.shape[1:]), np.float32)
    data = torch.from_numpy(image.astype(np.float32))
    for spec in tile_specs(image.shape[1:], 40, 12):
        (y, x), (cy, cx), (h, w), (sy, sx) = spec["coords"], spec["crop_coords"], spec["crop_size"], spec["stitch_coords"]
        with torch.inference_mode():
            out = model(data[None, :, y : y + 40, x : x + 40])[0].numpy()
        stitched[:, sy : sy + h, sx : sx + w] = out[:, cy : cy + h, cx : cx + w]
    np.testing.assert_array_equal(_level(root, "predictions/p/images/T"), stitched)


# -- predict_tissue on a converted store ------------------------------------------------------
@pytest.mark.parametrize(("size", "overlap"), [(64, 16), (256, 32), (50, 7)])
def test_predict_tissue_identity_from_a_torchscript_file(store: Path, dataset, identity_file: Path, size: int, overlap: int) -> None:
    name = f"identity_{size}_{overlap}"
    result = predict_tissue(
        str(identity_file), dataset, "A", PredictTissueOptions(name=name, tile_size=size, overlap=overlap, batch_size=4)
    )
    assert not result.skipped
    stored = _level(store, "imc/images/A")
    np.testing.assert_array_equal(_level(store, f"predictions/{name}/images/A"), stored.astype(np.float32))
    again = predict_tissue(str(identity_file), dataset, "A", PredictTissueOptions(name=name, tile_size=size, overlap=overlap, batch_size=4))
    assert again.skipped  # resume: a complete prediction is kept


def test_a_prediction_is_a_modality_of_the_store(store: Path, dataset, identity_file: Path) -> None:
    predict_tissue(
        str(identity_file),
        dataset,
        "B",
        PredictTissueOptions(name="as_modality", tile_size=64, overlap=16, batch_size=4, channel_names=[f"p{i}" for i in range(5)]),
    )
    cohort = open_cohort(store)
    assert "predictions/as_modality" in cohort.modalities
    image = cohort.open_image("predictions/as_modality", "B", 1.0)
    assert list(image.c.values) == [f"p{i}" for i in range(5)] and image.attrs["mpp"] == 1.0
    np.testing.assert_array_equal(image.values, _level(store, "imc/images/B").astype(np.float32))
    assert cohort.resolutions("predictions/as_modality", "B")[0] == "1_0mpp"
    predicted = MultiplexImagingDataset("p", store, 1.0, 32, modality="predictions/as_modality", verbose=False)
    assert predicted.tissue_ids == ["B"]
    tile = predicted.read_tile("B", 10, 20, preprocess=False)
    np.testing.assert_array_equal(tile.numpy(), _level(store, "imc/images/B")[:, 10:42, 20:52].astype(np.float32))
    assert validate_store(store) == []


def test_standardization_is_applied_to_the_stored_values(store: Path, identity_file: Path) -> None:
    """A standardization other than the identity gets windows in the stored dtype; the prediction is its output."""
    seen = set()

    def scaled(image: torch.Tensor, tissue_id: str, channel_names) -> torch.Tensor:
        seen.add(image.dtype)
        return image.to(torch.float32) / 7 + 1

    dataset = MultiplexImagingDataset("s", store, 1.0, 64, modality="imc", standardization=scaled, verbose=False)
    predict_tissue(str(identity_file), dataset, "A", PredictTissueOptions(name="scaled", tile_size=48, overlap=8, batch_size=4))
    stored = _level(store, "imc/images/A")
    np.testing.assert_array_equal(_level(store, "predictions/scaled/images/A"), scaled(torch.from_numpy(stored), "A", []).numpy())
    assert seen == {torch.from_numpy(stored).dtype}


def test_conv_model_tiled_equals_untiled(store: Path, dataset, tmp_path: Path) -> None:
    model = conv_model(5, 2, seed=1)
    path = tmp_path / "conv.pt"
    torch.jit.trace(model, torch.zeros(1, 5, 32, 32)).save(str(path))
    predict_tissue(
        str(path), dataset, "A", PredictTissueOptions(name="conv", tile_size=48, overlap=8, batch_size=4)
    )  # receptive radius 2 <= overlap / 2
    whole = dataset.get_tissue("A").image
    with torch.inference_mode():
        want = model(whole[None].float())[0].numpy()
    got = _level(store, "predictions/conv/images/A")
    np.testing.assert_allclose(got[:, 2:-2, 2:-2], want[:, 2:-2, 2:-2], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2)  # zero padding at the image border, as untiled


def test_labels_prediction(store: Path, dataset) -> None:
    for mode in ("crop", "blend"):
        name = f"classes_{mode}"
        predict_tissue(
            "tests.test_inference:Scores",
            dataset,
            "A",
            PredictTissueOptions(name=name, tile_size=64, overlap=16, batch_size=4, labels=True, mode=mode),
        )
        first = _level(store, "imc/images/A")[0].astype(np.float32)
        want = np.argmax(np.stack([-first, first - 2000, 0.5 * first - 400]), axis=0).astype(np.uint8)
        got = _level(store, output_path(name, "A", labels=True))
        assert got.dtype == np.uint8 and got.shape == first.shape
        if mode == "crop":
            np.testing.assert_array_equal(got, want)
        else:
            assert (got == want).mean() > 0.999  # ties within float rounding only
        cohort = open_cohort(store)
        assert name in cohort.mask_kinds and cohort.tissues(name) == ["A"]
        np.testing.assert_array_equal(cohort.open_image(name, "A", 1.0).values, got)
    assert validate_store(store) == []


def test_tiles_without_tissue_are_skipped_and_filled(store: Path, dataset, identity_file: Path) -> None:
    predict_tissue(
        str(identity_file),
        dataset,
        "A",
        PredictTissueOptions(name="tissue_only", tile_size=32, overlap=8, batch_size=4, min_tissue=0.5, fill_value=-1),
    )
    got = _level(store, "predictions/tissue_only/images/A")
    image = _level(store, "imc/images/A").astype(np.float32)
    mask = _level(store, "segmentations/tissue_masks/A")
    skipped = 0
    for spec in tile_specs(mask.shape, 32, 8):
        (y, x), (h, w), (sy, sx) = spec["coords"], spec["crop_size"], spec["stitch_coords"]
        region = (slice(None), slice(sy, sy + h), slice(sx, sx + w))
        if (mask[y : y + 32, x : x + 32] != 0).mean() >= 0.5:
            np.testing.assert_array_equal(got[region], image[region])
        else:
            skipped += 1
            assert (got[region] == -1).all()
    assert skipped > 0


# -- bad input: clear errors, nothing written --------------------------------------------------
def test_bad_models_and_tissues_write_nothing(store: Path, dataset, tmp_path: Path) -> None:
    before = _visible(store)
    with pytest.raises(InvalidInputError, match=r"Shrinks.*tissue 'A'.*spatial size"):
        predict_tissue("tests.test_inference:Shrinks", dataset, "A", PredictTissueOptions(name="bad1", tile_size=64, overlap=16))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model")
    with pytest.raises(InvalidInputError, match=r"garbage.pt: does not load as a TorchScript file"):
        predict_tissue(str(garbage), dataset, "A", PredictTissueOptions(name="bad2", tile_size=64, overlap=16))
    with pytest.raises(NotFoundError, match="no such file"):
        predict_tissue(str(tmp_path / "missing.pt"), dataset, "A", PredictTissueOptions(name="bad3", tile_size=64, overlap=16))
    with pytest.raises(NotFoundError, match="has no 'Nope'"):
        predict_tissue("tests.test_inference:Nope", dataset, "A", PredictTissueOptions(name="bad4", tile_size=64, overlap=16))
    with pytest.raises(NotFoundError, match="unknown tissue 'Z'"):
        predict_tissue(torch.nn.Identity(), dataset, "Z", PredictTissueOptions(name="bad5", tile_size=64, overlap=16))
    with pytest.raises(InvalidInputError, match="labels need per-class scores"):
        predict_tissue(lambda x: x[:, :1], dataset, "A", PredictTissueOptions(name="bad6", tile_size=64, overlap=16, labels=True))
    with pytest.raises(InvalidInputError, match="mask kind"):
        predict_tissue(torch.nn.Identity(), dataset, "A", PredictTissueOptions(name="cell_masks", tile_size=64, overlap=16, labels=True))
    with pytest.raises(InvalidInputError, match="overlap"):
        predict_tissue(torch.nn.Identity(), dataset, "A", PredictTissueOptions(name="bad7", tile_size=64, overlap=64))
    assert _visible(store) == before


# -- the cohort through the runner, and the CLI --------------------------------------------------
def test_predict_cohort_reports_failures_and_resumes(store: Path, identity_file: Path) -> None:
    options = PredictOptions(modality="imc", resolution="1_0mpp", name="cohort", tile_size=64, overlap=16)
    report = predict_cohort(store, str(identity_file), options, run=SERIAL)
    assert report.ok and [o.skipped for o in report.outcomes] == [False, False, False]
    again = predict_cohort(store, str(identity_file), options, run=SERIAL)
    assert [o.skipped for o in again.outcomes] == [True, True, True]
    other = PredictOptions(modality="imc", resolution="1_0mpp", name="cohort", tile_size=64, overlap=8)  # kept the old ones
    refused = predict_cohort(store, str(identity_file), other, run=SERIAL)
    assert len(refused.failed) == 3 and all("predicted with overlap 16, not 8: give --overwrite" in str(o.error) for o in refused.failed)
    for tissue in ("A", "B", "C"):
        np.testing.assert_array_equal(_level(store, f"predictions/cohort/images/{tissue}"), _level(store, f"imc/images/{tissue}"))
    failing = PredictOptions(modality="imc", resolution=1.0, name="failing", tile_size=64, overlap=16)
    report = predict_cohort(store, "tests.test_inference:Shrinks", failing, run=SERIAL)
    assert not report.ok and len(report.failed) == 3
    assert "FAILED A: model tests.test_inference:Shrinks, tissue 'A'" in report.summary()
    with pytest.raises(NotFoundError, match="no tissue 'Z'"):
        predict_cohort(store, str(identity_file), options, tissues=["Z"], run=SERIAL)


def test_cli_predict(store: Path, identity_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "predict",
        str(store),
        "--model",
        str(identity_file),
        "--modality",
        "imc",
        "--resolution",
        "1.0",
        "--name",
        "cli",
        "--tile-size",
        "64",
        "--overlap",
        "16",
        "--tissue",
        "A",
        "--no-progress",
        "--channel-names",
        "a,b,c,d,e",
    ]
    assert main(args) == 0
    assert "1 tissues written" in capsys.readouterr().out
    assert open_cohort(store).channel_names("predictions/cli", "A") == ["a", "b", "c", "d", "e"]
    assert main([*args[:-2]]) == 0  # resumed: already complete
    assert "1 already complete" in capsys.readouterr().out
    bad = ["predict", str(store), "--model", str(store / "nope.pt"), "--modality", "imc", "--resolution", "1.0", "--name", "x"]
    assert main(bad) == 1
    assert "error: model" in capsys.readouterr().err
    assert main([*args[:-5], "--no-progress", "--tissue", "Z"]) == 1
    assert "no tissue 'Z'" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_tissue_then_rerun_is_identical(store: Path, tmp_path: Path) -> None:
    work = tmp_path / "killed.zarr"
    shutil.copytree(store, work)
    reference = tmp_path / "reference.zarr"
    shutil.copytree(store, reference)
    common = [
        "--model",
        "tests.test_inference:SlowIdentity",
        "--modality",
        "imc",
        "--resolution",
        "1.0",
        "--name",
        "slow",
        "--tile-size",
        "32",
        "--overlap",
        "8",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "spora_zarr.cli", "predict", str(work), *common], cwd=REPO, env=env)
    staging = work / ".spora_tmp"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.name == "1_0mpp" for p in staging.rglob("1_0mpp")):
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert list(staging.rglob("slow"))  # killed while a tissue was half-written (in the staging area)
    cohort = open_cohort(work)
    assert len(cohort.listing("predictions/slow/images")) < 3  # killed mid-run; no half-written group is visible
    for tissue in cohort.listing("predictions/slow/images"):
        np.testing.assert_array_equal(_level(work, f"predictions/slow/images/{tissue}"), _level(work, f"imc/images/{tissue}"))
    rerun = subprocess.run([sys.executable, "-m", "spora_zarr.cli", "predict", str(work), *common], cwd=REPO, env=env)
    assert rerun.returncode == 0
    assert main(["predict", str(reference), *common]) == 0
    for tissue in ("A", "B", "C"):
        for level in ("1_0mpp", "2_0mpp"):
            path = f"predictions/slow/images/{tissue}"
            if (reference / path / level).exists():
                np.testing.assert_array_equal(_level(work, path, level), _level(reference, path, level))
    assert not list((work / ".spora_tmp").rglob("slow"))  # the killed run's staging area is cleaned up
    assert validate_store(work) == []


def test_make_dataset_picks_the_dataset_of_the_modality(store: Path) -> None:
    assert type(make_dataset(store, "he", 1.0, 32)).__name__ == "HEImagingDataset"
    assert type(make_dataset(store, "ihc/ihc_CD3", 1.0, 32)).__name__ == "SingleIHCImagingDataset"
    assert type(make_dataset(store, "imc", 1.0, 32)).__name__ == "MultiplexImagingDataset"
    with pytest.raises(NotFoundError, match="no modality 'nope'"):
        make_dataset(store, "nope", 1.0, 32)


def test_predictions_open_in_the_napari_reader(store: Path, dataset, identity_file: Path) -> None:
    from spora_zarr.napari import napari_get_reader, read_store, tissue_layers

    predict_tissue(str(identity_file), dataset, "C", PredictTissueOptions(name="napari", tile_size=64, overlap=16))
    predict_tissue(
        "tests.test_inference:Scores", dataset, "C", PredictTissueOptions(name="napari_labels", tile_size=64, overlap=16, labels=True)
    )
    layers = read_store(str(store), "C", modalities=["imc", "predictions/napari"])
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert ["napari_0", "napari_1", "napari_2", "napari_3"] in names  # one named channel per model output
    group = store / "predictions/napari/images/C"
    reader = napari_get_reader(str(group))
    assert reader is not None and len(reader(str(group))) > 0
    labels = tissue_layers(open_cohort(store), "C", modalities=[], masks=["napari_labels"], tiles=None)
    assert [kind for _, _, kind in labels] == ["labels"]


def test_patch_specs_dataset_through_a_dataloader(store: Path, dataset) -> None:
    from spora_zarr.inference.dataset import PatchSpecsDataset
    from spora_zarr.torch import worker_init_fn

    tissue = dataset.tissue_ids.index("B")
    height, width = dataset.image_shape("B")[-2:]
    specs = tile_specs((height, width), 48, 8, data_idx=tissue)
    patches = PatchSpecsDataset(dataset, specs, mask="tissue_masks")
    loader = torch.utils.data.DataLoader(
        patches, batch_size=5, num_workers=2, worker_init_fn=worker_init_fn, multiprocessing_context="fork"
    )
    image = _level(store, "imc/images/B").astype(np.float32)
    mask = _level(store, "segmentations/tissue_masks/B")
    seen = 0
    for batch in loader:
        for k in range(batch["image"].shape[0]):
            y, x = int(batch["specs"]["coords"][0][k]), int(batch["specs"]["coords"][1][k])
            want = np.zeros((image.shape[0], 48, 48), np.float32)
            part = image[:, y : y + 48, x : x + 48]
            want[:, : part.shape[1], : part.shape[2]] = part
            np.testing.assert_array_equal(batch["image"][k].numpy(), want)
            np.testing.assert_array_equal(batch["mask"][k].numpy()[: part.shape[1], : part.shape[2]], mask[y : y + 48, x : x + 48])
            seen += 1
    assert seen == len(specs)
    small = PatchSpecsDataset(dataset, tile_specs((5, 7), 16, 4, data_idx=tissue))
    assert small[0]["image"].shape == (image.shape[0], 16, 16)
    with pytest.raises(InvalidInputError, match="data_idx 9"):
        PatchSpecsDataset(dataset, tile_specs((5, 7), 16, 4, data_idx=9))
