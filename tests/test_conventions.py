"""One options convention for the verbs, errors that name parameters, and one spelling of the tissue option."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import tifffile

from spora_zarr.cli import flag_message, main
from spora_zarr.convert import ConvertOptions, add_image, convert_cohort
from spora_zarr.errors import InvalidInputError
from spora_zarr.read import open_cohort
from spora_zarr.run import RunOptions
from spora_zarr.write.options import WriteOptions

VERBS = {
    "spora_zarr.convert:convert_cohort": {"options", "write", "run"},
    "spora_zarr.convert:add_image": {"write"},
    "spora_zarr.tiling:tile_cohort": {"options", "run"},
    "spora_zarr.standardize.statistics:compute_statistics": {"run"},
    "spora_zarr.inference.predict:predict_cohort": {"options", "write", "run"},
    "spora_zarr.inference.predict:predict_tissue": {"options", "write"},
    "spora_zarr.stitching:stitch": {"options", "write"},
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_takes_options_write_run(verb: str) -> None:
    module, name = verb.split(":")
    if "inference" in module:
        pytest.importorskip("torch")
    function = getattr(__import__(module, fromlist=[name]), name)
    parameters = inspect.signature(function).parameters
    for keyword in VERBS[verb]:
        assert keyword in parameters, f"{verb} lacks {keyword}="
    annotations = {k: str(parameters[k].annotation) for k in VERBS[verb] - {"options"}}
    assert all(("WriteOptions" if k == "write" else "RunOptions") in a for k, a in annotations.items()), annotations


def _tiff(path: Path) -> Path:
    tifffile.imwrite(path, np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50))
    return path


def test_add_image_write_is_the_layout(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    add_image(store, str(_tiff(tmp_path / "a.tif")), modality="imc", tissue_id="A", mpp=1.0, write=WriteOptions(chunk=16, shard=32))
    array = open_cohort(store).open_array("imc", "A")
    assert array.chunks[-1] == 16 and array.shards is not None and array.shards[-1] == 32


def test_convert_refuses_both_spellings(cohort_pair: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = cohort_pair
    with pytest.raises(InvalidInputError, match="^write= and options.write both given"):
        convert_cohort(src, tmp_path / "x.zarr", ConvertOptions(write=WriteOptions()), write=WriteOptions())
    with pytest.raises(InvalidInputError, match="^run= and options.workers both given"):
        convert_cohort(src, tmp_path / "x.zarr", ConvertOptions(workers=2), run=RunOptions(progress=False))


def test_flag_message_maps_parameters_to_flags() -> None:
    assert flag_message("a.tif: pass mpp=...") == "a.tif: pass --mpp ..."
    assert flag_message("pass overwrite=True to replace it") == "pass --overwrite to replace it"
    assert flag_message("workers=0 is not a whole number >= 1") == "--workers 0 is not a whole number >= 1"
    assert flag_message("resolution='x' is not a resolution") == "--resolution 'x' is not a resolution"
    assert flag_message("tissue_id='A' and /data/mpp=3/x and blend_mode=1") == "--tissue 'A' and /data/mpp=3/x and blend_mode=1"


def test_library_names_the_parameter_and_the_cli_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plain.png"
    import imageio.v3 as iio

    iio.imwrite(path, np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="pass mpp="):
        add_image(tmp_path / "s.zarr", str(path), modality="he", tissue_id="A")
    assert main(["add-image", str(tmp_path / "s.zarr"), str(path), "--modality", "he", "--tissue", "A"]) == 1
    err = capsys.readouterr().err
    assert "pass --mpp" in err and "mpp=" not in err
    with pytest.raises(InvalidInputError, match="^workers=0 "):
        RunOptions(workers=0)


@pytest.mark.parametrize("spelling", [["--tissue", "A"], ["--tissue-id", "A"]])
def test_tissue_aliases_give_the_same_store(tmp_path: Path, spelling: list[str]) -> None:
    store = tmp_path / "s.zarr"
    assert main(["add-image", str(store), str(_tiff(tmp_path / "a.tif")), "--modality", "imc", "--mpp", "1.0", *spelling]) == 0
    assert open_cohort(store).tissues("imc") == ["A"]


def test_tissue_alias_is_hidden_and_one_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["add-image", "--help"])
    out = capsys.readouterr().out
    assert "--tissue" in out and "--tissue-id" not in out
    with pytest.raises(SystemExit):
        main(["add-image", str(tmp_path / "s.zarr"), str(_tiff(tmp_path / "a.tif")), "--modality", "imc"])
    assert "--tissue is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["view", "--help"])
    assert "TISSUE" not in capsys.readouterr().out.split("options:")[0].split("view")[-1].replace("--tissue TISSUE", "")
