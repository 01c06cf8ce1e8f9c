"""add-image, info and validate, through the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from spora_zarr import open_cohort, validate_store
from spora_zarr.cli import main


def test_add_image_reads_ome_names_and_pixel_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = np.random.default_rng(0).integers(0, 4000, size=(3, 150, 211), dtype=np.uint16)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(
        path,
        image,
        metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD8", "KI67"]}, "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65},
        tile=(64, 64),
    )
    dest = tmp_path / "new.zarr"
    assert main(["add-image", str(dest), str(path), "--modality", "cycif", "--tissue", "S1"]) == 0
    cohort = open_cohort(dest)
    assert cohort.modalities == ["cycif"]
    assert cohort.channel_names("cycif", "S1") == ["DAPI", "CD8", "KI67"]
    assert cohort.resolutions("cycif", "S1") == ["0_65mpp"]
    np.testing.assert_array_equal(cohort.open_array("cycif", "S1", 0.65)[...], image)
    assert validate_store(dest) == []


def test_add_image_plain_files_need_mpp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, size=(97, 123, 3), dtype=np.uint8)
    png = tmp_path / "he.png"
    iio.imwrite(png, rgb)
    dest = tmp_path / "s.zarr"
    assert main(["add-image", str(dest), str(png), "--modality", "he", "--tissue", "P1"]) == 1
    assert "pass --mpp" in capsys.readouterr().err
    assert main(["add-image", str(dest), str(png), "--modality", "he", "--tissue", "P1", "--mpp", "0.5"]) == 0
    plain = tmp_path / "mx.tif"
    data = np.random.default_rng(2).integers(0, 9, size=(2, 40, 50), dtype=np.uint8)
    tifffile.imwrite(plain, data)
    add_p1 = ["add-image", str(dest), str(plain), "--modality", "imc", "--tissue", "P1", "--mpp", "1"]
    assert main([*add_p1, "--channel-names", "a,b,c"]) == 1
    assert "2 channels but 3 channel names" in capsys.readouterr().err
    assert main([*add_p1, "--channel-names", "a,b"]) == 0
    assert main(["add-image", str(dest), str(plain), "--modality", "imc", "--tissue", "../x", "--mpp", "1"]) == 1
    cohort = open_cohort(dest)
    assert cohort.modalities == ["he", "imc"]
    np.testing.assert_array_equal(cohort.open_array("he", "P1", 0.5)[...], rgb.transpose(2, 0, 1))
    assert cohort.channel_names("he", "P1") == ["red", "green", "blue"]
    assert cohort.channel_names("imc", "P1") == ["a", "b"]


def test_info_summarises_the_store(cohort_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, dest = cohort_pair
    assert main(["info", str(dest)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "modality imc: 3 tissue(s)",
        "1_0mpp: shape (5, 150, 258) uint16",
        "shards",
        "masks cell_masks",
        "metadata/tissues.parquet",
        "channels DNA1",
    ):
        assert expected in out, expected
    tissues = open_cohort(dest).read_table("metadata/tissues.parquet")  # the footer info prints says what the rows say
    assert f"  metadata/tissues.parquet: {tissues.num_rows} rows, columns {', '.join(tissues.column_names)}" in out.splitlines()


def test_the_console_script_exits_with_the_commands_code(cohort_pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, dest = cohort_pair
    script = shutil.which("spora-zarr", path=os.path.dirname(sys.executable))
    assert script is not None, "spora-zarr is not installed beside this interpreter"
    done = subprocess.run([script, "info", str(dest)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "modality imc: 3 tissue(s)" in done.stdout and not done.stderr
    missing = subprocess.run([script, "info", str(tmp_path / "none.zarr")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and not missing.stdout
    closed = subprocess.Popen([script, "info", str(dest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # as `| head -1`
    assert closed.stdout is not None and closed.stderr is not None
    closed.stdout.close()  # the reader gone before the command writes
    assert closed.wait(timeout=120) == 141 and closed.stderr.read() == b""  # no BrokenPipeError traceback
    closed.stderr.close()


def test_validate_reports_problems(cohort_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, dest = cohort_pair
    broken = tmp_path / "broken.zarr"
    shutil.copytree(dest, broken)
    document = broken / "imc/images/A/zarr.json"
    meta = json.loads(document.read_text())
    meta["attributes"]["ome"]["omero"]["channels"].pop()
    meta["attributes"]["ome"]["multiscales"][0]["axes"][1]["unit"] = "millimeter"
    document.write_text(json.dumps(meta))
    (broken / "segmentations/cell_masks/B/zarr.json").write_text(
        (broken / "segmentations/cell_masks/B/zarr.json").read_text().replace('"0_5mpp"', '"half"')
    )
    assert main(["validate", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "imc/images/A: omero metadata must list 5 channels" in out
    assert "imc/images/A: spatial axes must have unit 'micrometer'" in out
    assert "segmentations/cell_masks/B" in out
    assert main(["validate", str(dest)]) == 0
    assert main(["validate", str(tmp_path / "nothing.zarr")]) == 1


def test_add_image_rgba_tiff_keeps_rgb(tmp_path: Path) -> None:
    rgba = np.random.default_rng(3).integers(0, 255, size=(61, 77, 4), dtype=np.uint8)
    path = tmp_path / "ihc.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert main(["add-image", str(tmp_path / "s.zarr"), str(path), "--modality", "ihc/ihc_CD8", "--tissue", "T", "--mpp", "0.5"]) == 0
    cohort = open_cohort(tmp_path / "s.zarr")
    np.testing.assert_array_equal(cohort.open_array("ihc/ihc_CD8", "T", 0.5)[...], rgba[..., :3].transpose(2, 0, 1))
    assert cohort.channel_names("ihc/ihc_CD8", "T") == ["red", "green", "blue"]


def test_layout_options_set_the_codec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spora_zarr.read.levels import open_level

    image = np.random.default_rng(3).poisson(3, size=(4, 300, 260)).astype(np.uint16)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64))
    dest = tmp_path / "hc.zarr"
    args = ["add-image", str(dest), str(path), "--modality", "imc", "--tissue", "S1", "--mpp", "1"]
    assert main([*args, "--cname", "lz4hc", "--clevel", "1", "--chunk", "64", "--shard", "128"]) == 0
    cohort = open_cohort(dest)
    level = cohort.level_path("imc", "S1", 1.0)
    meta = json.loads((dest / level / "zarr.json").read_text())
    sharding = meta["codecs"][0]["configuration"]
    blosc = sharding["codecs"][1]["configuration"]
    assert (sharding["chunk_shape"], blosc["cname"], blosc["clevel"]) == ([4, 64, 64], "lz4hc", 1)
    reader = open_level(dest, level)
    assert reader.engine == "direct"
    np.testing.assert_array_equal(reader.read(0, 0, 300, 260), image)
    with pytest.raises(SystemExit):
        main([*args, "--cname", "snappy"])
    assert "invalid choice: 'snappy'" in capsys.readouterr().err


def _codec_names(meta: dict) -> list[str]:
    return [codec["name"] for codec in meta["codecs"][0]["configuration"]["codecs"]]


def test_incompressible_images_are_stored_uncompressed(tmp_path: Path) -> None:
    from spora_zarr.read.levels import open_level

    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, size=(300, 260, 3), dtype=np.uint8)  # RGB noise: blosc saves nothing
    counts = rng.poisson(0.5, size=(4, 300, 260)).astype(np.uint16)  # sparse counts: blosc saves most bytes
    for name, image in (("noise", noise), ("counts", counts)):
        tifffile.imwrite(tmp_path / f"{name}.tif", image, tile=(64, 64), photometric="rgb" if name == "noise" else "minisblack")
    written: dict[tuple[str, float], list[str]] = {}
    for name in ("noise", "counts"):
        for min_saving in (0.1, 0.0):
            dest = tmp_path / f"{name}-{min_saving}.zarr"
            args = ["add-image", str(dest), str(tmp_path / f"{name}.tif"), "--modality", "he" if name == "noise" else "imc"]
            assert main([*args, "--tissue", "S1", "--mpp", "1", "--min-saving", str(min_saving)]) == 0
            cohort = open_cohort(dest)
            levels = [cohort.level_path(cohort.modalities[0], "S1", r) for r in cohort.resolutions(cohort.modalities[0], "S1")]
            codecs = {tuple(_codec_names(json.loads((dest / level / "zarr.json").read_text()))) for level in levels}
            assert len(codecs) == 1  # every level of an image alike
            written[(name, min_saving)] = list(codecs.pop())
            reader = open_level(dest, levels[0])
            assert reader.engine == "direct"
            expected = np.moveaxis(noise, -1, 0) if name == "noise" else counts
            np.testing.assert_array_equal(reader.read(0, 0, 300, 260), expected)
    assert written == {
        ("noise", 0.1): ["bytes"],
        ("noise", 0.0): ["bytes", "blosc"],
        ("counts", 0.1): ["bytes", "blosc"],
        ("counts", 0.0): ["bytes", "blosc"],
    }


def test_predict_gives_the_writer_half_the_converters_memory_budget() -> None:
    """A prediction's writer gets 256 MiB by default (the process also holds the model runtime), convert 512."""
    from spora_zarr.cli import _parser, _write_options

    parser = _parser()
    predict = parser.parse_args(["predict", "s.zarr", "--model", "m.pt", "--modality", "imc", "--resolution", "1", "--name", "p"])
    convert = parser.parse_args(["convert", "in", "out"])
    assert _write_options(predict).memory_budget == 256 * 2**20
    assert _write_options(convert).memory_budget == 512 * 2**20
    explicit = parser.parse_args(
        ["predict", "s.zarr", "--model", "m.pt", "--modality", "imc", "--resolution", "1", "--name", "p", "--memory-budget", "100"]
    )
    assert _write_options(explicit).memory_budget == 100 * 2**20
