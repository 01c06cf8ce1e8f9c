"""Bad parameters get one line naming the parameter, never an abort, a wrapped value or a silent coercion (issue 27)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from spora_zarr.cli import main
from spora_zarr.convert import add_image
from spora_zarr.datasets import MultiplexImagingDataset
from spora_zarr.errors import InvalidInputError, reason
from spora_zarr.inference.predict import PredictTissueOptions, predict_tissue
from spora_zarr.read.validate import validate_store
from spora_zarr.sources.base import ArraySource
from spora_zarr.torch import TileDataset
from spora_zarr.write.options import WriteOptions
from spora_zarr.write.writer import write_image

REPO = Path(__file__).resolve().parents[1]


def one_error_line(output: str, *fragments: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    assert all(f in errors[0] for f in fragments), (fragments, output)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one 3-channel uint16 multiplex tissue ``T`` (96 x 80)."""
    tmp = tmp_path_factory.mktemp("trust")
    image = np.random.default_rng(0).integers(0, 4000, (3, 96, 80), dtype=np.uint16)
    tifffile.imwrite(tmp / "T.tif", image)
    add_image(str(tmp / "store.zarr"), str(tmp / "T.tif"), modality="imc", tissue_id="T", mpp=1.0, channel_names=["a", "b", "c"])
    return tmp / "store.zarr"


@pytest.fixture(scope="module")
def dataset(store: Path) -> MultiplexImagingDataset:
    return MultiplexImagingDataset("trust", store, 1.0, 32, modality="imc", verbose=False)


# -- chunk and shard ------------------------------------------------------------------------
def test_cli_chunk_over_the_memory_budget_is_one_line_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((2, 32, 32), np.uint16))
    dest = tmp_path / "out.zarr"
    argv = ["add-image", str(dest), str(tmp_path / "small.tif"), "--modality", "imc", "--tissue", "T", "--mpp", "1"]
    code = main([*argv, "--chunk", "100000", "--shard", "0"])
    one_error_line(capsys.readouterr().err, "--chunk 100000", "memory budget")
    assert code == 1
    assert not dest.exists()


def test_chunk_too_big_for_the_images_channels_is_refused_by_the_writer(tmp_path: Path) -> None:
    image = np.zeros((4, 64, 64), np.uint16)  # 256 px chunks of 4 uint16 channels: 2.5 MiB held, over 2 MiB
    options = WriteOptions(chunk=256, shard=None, memory_budget=2 * 2**20)
    with pytest.raises(InvalidInputError, match=r"<array>: chunk edge 256 px needs 2.5 MiB .* over the memory budget of 2 MiB"):
        write_image(tmp_path / "s.zarr", "imc/images/T", {1.0: ArraySource(image)}, options=options)
    assert not (tmp_path / "s.zarr/imc/images/T").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("chunk", 112.0, "chunk=112.0 is not a whole number"),
        ("chunk", "112", "chunk='112' is not a whole number"),
        ("shard", 224.0, "shard=224.0 is not a whole number"),
        ("shard", 112 * 300, "shard=33600: one shard of one 8-bit channel"),
        ("memory_budget", 0, "memory_budget=0 is not a positive number"),
        ("max_top_size", 0, "max_top_size=0 is not a whole number >= 1"),
        ("codec_threads", 0, "codec_threads=0 is not a whole number >= 1"),
        ("clevel", 4.5, "clevel=4.5 is not a whole number"),
    ],
)
def test_write_options_refuse_what_the_writer_cannot_use(option: str, value: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        WriteOptions(**{option: value})  # type: ignore[arg-type]


# -- dtypes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.complex64, np.dtype("U3"), np.dtype(object), np.longdouble])
def test_unstored_dtypes_are_one_line_naming_the_source(tmp_path: Path, dtype: np.dtype) -> None:
    image = np.zeros((1, 32, 32), dtype)
    with pytest.raises(InvalidInputError, match=rf"img: dtype {np.dtype(dtype)} is not stored"):
        write_image(tmp_path / "s.zarr", "imc/images/T", {1.0: ArraySource(image, name="img")})
    assert not (tmp_path / "s.zarr/imc/images/T").exists()


def test_cli_complex_tiff_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tifffile.imwrite(tmp_path / "c.tif", np.ones((2, 32, 32), np.complex64))
    code = main(["add-image", str(tmp_path / "o.zarr"), str(tmp_path / "c.tif"), "--modality", "imc", "--tissue", "T", "--mpp", "1"])
    one_error_line(capsys.readouterr().err, "c.tif", "dtype complex64 is not stored")
    assert code == 1


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integer_tiffs_are_stored_and_read_back(tmp_path: Path, dtype: type) -> None:
    image = (np.arange(2 * 40 * 48).reshape(2, 40, 48) * 3).astype(dtype)
    if dtype is np.int64:
        image[1] -= 2**40
    tifffile.imwrite(tmp_path / "i.tif", image)  # tifffile's dtype is numpy's 'q'/'Q', which zarr's registry does not know
    add_image(str(tmp_path / "s.zarr"), str(tmp_path / "i.tif"), modality="imc", tissue_id="T", mpp=1.0)
    assert zarr.open_array(str(tmp_path / "s.zarr/imc/images/T/1_0mpp"), mode="r").dtype == np.dtype(dtype)
    ds = MultiplexImagingDataset("d", tmp_path / "s.zarr", 1.0, 16, modality="imc", verbose=False)
    np.testing.assert_array_equal(ds.read_tile("T", 8, 4, preprocess=False).numpy(), image[:, 8:24, 4:20])
    assert validate_store(tmp_path / "s.zarr") == []


def test_nan_and_inf_floats_give_finite_omero_windows(tmp_path: Path) -> None:
    image = np.random.default_rng(1).random((3, 40, 48)).astype(np.float32)
    image[0] = np.nan  # a channel with no finite value at all
    image[1, 3, 3], image[1, 4, 4], image[2, 5, 5] = np.inf, -np.inf, np.nan
    tifffile.imwrite(tmp_path / "f.tif", image)
    add_image(str(tmp_path / "s.zarr"), str(tmp_path / "f.tif"), modality="imc", tissue_id="T", mpp=1.0)
    document = json.loads((tmp_path / "s.zarr/imc/images/T/zarr.json").read_text())
    windows = [c["window"] for c in document["attributes"]["ome"]["omero"]["channels"]]
    for window in windows:
        values = [window[k] for k in ("min", "start", "end", "max")]
        assert all(isinstance(v, float) and np.isfinite(v) for v in values), window
        assert window["start"] < window["end"]
    assert windows[1]["min"] >= 0 and windows[1]["max"] <= 1
    assert validate_store(tmp_path / "s.zarr") == []


# -- predictions --------------------------------------------------------------------------------
def negative_labels(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x[:, :1], -3, dtype=torch.int64)


def huge_labels(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x[:, :1], 2**40, dtype=torch.int64)


def complex_output(x: torch.Tensor) -> torch.Tensor:
    return torch.complex(x[:, :1], x[:, :1])


def long_failure(x: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("the model could not run: " + "because " * 40)


@pytest.mark.parametrize(
    ("model", "labels", "message"),
    [
        (negative_labels, True, r"labels -3 to -3, outside the uint32 labels stored"),
        (huge_labels, True, r"labels 1099511627776 to 1099511627776, outside the uint32 labels stored"),
        (complex_output, False, r"complex_output.*torch.complex64 \(complex\); predictions must be real numbers"),
    ],
)
def test_model_output_that_cannot_be_stored_is_an_error(store: Path, dataset, model, labels: bool, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        predict_tissue(model, dataset, "T", PredictTissueOptions(name=f"bad_{model.__name__}", tile_size=32, overlap=8, labels=labels))
    assert not (store / f"segmentations/bad_{model.__name__}").exists()
    assert not (store / f"predictions/bad_{model.__name__}").exists()


def test_label_fill_value_that_the_labels_cannot_hold_is_an_error(dataset) -> None:
    with pytest.raises(InvalidInputError, match="fill value of labels must be a whole number"):
        predict_tissue(
            negative_labels, dataset, "T", PredictTissueOptions(name="badfill", tile_size=32, overlap=8, labels=True, fill_value=-1)
        )


def test_model_errors_are_cut_at_a_word_boundary(dataset) -> None:
    with pytest.raises(InvalidInputError) as caught:
        predict_tissue(long_failure, dataset, "T", PredictTissueOptions(name="long", tile_size=32, overlap=8))
    text = str(caught.value)
    assert text.endswith("…") and "\n" not in text
    tail = text.split("the model could not run: ")[1].rstrip("…").split(" ")
    assert set(tail) == {"because"}, text


def test_reason_keeps_short_lines_and_cuts_long_ones_between_words() -> None:
    assert reason(ValueError("short\nsecond line")) == "short"
    assert reason(KeyError()) == "KeyError"
    cut = reason(ValueError("abcdefghijk " * 30), limit=50)
    assert cut.endswith("…") and len(cut) <= 50 and set(cut[:-1].split(" ")) == {"abcdefghijk"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_device_cuda_without_cuda_is_one_line(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "predict",
            str(store),
            "--model",
            "tests.test_trust_params:negative_labels",
            "--modality",
            "imc",
            "--resolution",
            "1.0",
            "--name",
            "gpu",
            "--labels",
            "--device",
            "cuda",
            "--no-progress",
        ]
    )
    one_error_line(capsys.readouterr().err, "device 'cuda'", "CUDA is not available")
    assert code == 1
    assert not (store / "segmentations/gpu").exists()


# -- read_tile / get_crop arguments and standardizers ------------------------------------------------
@pytest.mark.parametrize(
    ("row", "col", "size"),
    [
        (10.7, 0, None),
        (0, float("nan"), None),
        (True, 0, None),
        ("3", 0, None),
        (0, np.float64(2.0), None),
        (0, 0, 16.5),
        (0, 0, np.nan),
        (0, 0, "16"),
        (0, 0, False),
        (0, 0, 0),
    ],
)
def test_read_tile_refuses_what_is_not_a_whole_number(dataset, row, col, size) -> None:
    with pytest.raises(InvalidInputError, match=r"trust: (row|col|size) must be"):
        dataset.read_tile("T", row, col, size)
    with pytest.raises(InvalidInputError, match=r"trust: (row|col|size) must be"):
        dataset.read_mask_tile("T", row, col, size)


def test_numpy_and_torch_integers_are_whole_numbers(dataset) -> None:
    expected = dataset.read_tile("T", 5, 7, 16, preprocess=False)
    for row, col, size in [(np.int64(5), np.uint8(7), np.int32(16)), (torch.tensor(5), 7, torch.tensor(16))]:
        assert torch.equal(dataset.read_tile("T", row, col, size, preprocess=False), expected)


@pytest.mark.parametrize("crop_id", [1.5, float("nan"), "0", True])
def test_get_crop_refuses_a_crop_id_that_is_not_a_whole_number(dataset, crop_id) -> None:
    with pytest.raises(InvalidInputError, match="crop_id must be a whole number"):
        dataset.get_crop("T", crop_id)


def test_tile_dataset_refuses_a_fractional_size(dataset) -> None:
    with pytest.raises(InvalidInputError, match="TileDataset: size must be a whole number"):
        TileDataset(dataset, size=31.5)


def forgetful_standardizer(image: torch.Tensor, tissue_id: str, channel_names) -> None:
    image.float()  # forgot the return


def test_a_standardizer_returning_none_is_an_error_naming_it(store: Path) -> None:
    ds = MultiplexImagingDataset("std", store, 1.0, 32, modality="imc", verbose=False, standardization=forgetful_standardizer)
    with pytest.raises(InvalidInputError, match=r"standardizer forgetful_standardizer: returned NoneType for tissue 'T'"):
        ds.read_tile("T", 0, 0)


def test_a_standardizer_returning_an_array_gives_a_tensor(store: Path) -> None:
    ds = MultiplexImagingDataset("std", store, 1.0, 32, modality="imc", verbose=False, standardization=lambda x, t, n: x.numpy() * 2)
    tile = ds.read_tile("T", 0, 0)
    assert isinstance(tile, torch.Tensor)
    assert torch.equal(tile, ds.read_tile("T", 0, 0, preprocess=False) * 2)


# -- view -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is Linux's")
def test_view_without_a_display_is_one_line_not_an_abort(store: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "spora_zarr.cli", "view", str(store), "T"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1, (run.returncode, -run.returncode == signal.SIGABRT, run.stderr[-2000:])
    one_error_line(run.stderr, "needs a display", "DISPLAY")


def test_view_checks_the_channel_kind_before_qt(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["view", str(store), "T", "--kind", "bogus"])  # the store, modality and tissue were checked before Qt already
    one_error_line(capsys.readouterr().err, "unknown channel kind 'bogus'")
    assert code == 1
