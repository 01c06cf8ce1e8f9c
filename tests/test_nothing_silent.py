"""Nothing fails silently, and the command line explains itself: skipped files, empty sources, --version, help."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from spora_zarr import ConvertOptions, NotFoundError, add_image, convert_cohort, open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.testing.cohorts import make_synthetic_cohort


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return make_synthetic_cohort(tmp_path / "tiff", tissues=("A",), he_shape=(64, 80), ihc_markers=(), seed=5)


def test_a_tiff_outside_the_layout_is_reported_as_skipped(small: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stray = small / "cycif" / "1_0mpp" / "A.tif"
    stray.parent.mkdir(parents=True)
    tifffile.imwrite(stray, np.zeros((8, 8), np.uint16))
    with caplog.at_level("WARNING", logger="spora_zarr"):
        report = convert_cohort(small, tmp_path / "c.zarr", ConvertOptions(progress=False))
    assert report.ok
    assert report.skipped == [(str(stray), report.skipped[0][1])] and "images/" in report.skipped[0][1]
    assert f"{stray}: skipped: not in the layout" in caplog.text
    assert "1 files skipped" in report.summary()
    assert "cycif" not in open_cohort(tmp_path / "c.zarr").modalities


def test_a_source_with_nothing_to_convert_fails_with_what_was_looked_for(
    small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tables_only = tmp_path / "tables_only"
    shutil.copytree(small / "metadata", tables_only / "metadata")
    assert main(["convert", str(tables_only), str(tmp_path / "a.zarr"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to convert" in err[0] and "<modality>/<res>/images/<tissue_id>.tif" in err[0]
    assert not (tmp_path / "a.zarr").exists()

    assert main(["convert", str(small), str(tmp_path / "b.zarr"), "--no-progress"]) == 0
    assert main(["convert", str(tmp_path / "b.zarr"), str(tmp_path / "c.zarr"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "not a spora TIFF cohort" in err[-1] and not (tmp_path / "c.zarr").exists()


def test_progress_without_a_terminal_is_one_line_per_tissue(small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(small), str(tmp_path / "c.zarr")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert len(lines) == len(err.strip().splitlines()) > 0  # nothing but the per-tissue lines: no redrawn bars
    assert lines[-1].startswith(f"[{len(lines)}/{len(lines)}] wrote ")


def test_version_and_help_on_every_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("spora-zarr ")
    for verb in ("convert", "add-image", "info", "validate"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        out = capsys.readouterr().out
        listed = out.split("positional arguments:")[1]
        for line in listed.splitlines():
            if line.startswith("  ") and not line.startswith("    ") and line.strip():
                name = line.split()[0]
                assert len(line.split()) > 1 or name.startswith("-h"), f"{verb}: {name} has no help"


def test_rgb_ome_tiff_without_channel_names_is_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    path = tmp_path / "he.ome.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", ome=True, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    add_image(tmp_path / "c.zarr", str(path), modality="he", tissue_id="T")
    cohort = open_cohort(tmp_path / "c.zarr")
    assert cohort.channel_names("he", "T") == ["red", "green", "blue"]
    np.testing.assert_array_equal(cohort.open_image("he", "T").values, rgb.transpose(2, 0, 1))
    assert validate_store(tmp_path / "c.zarr") == []


def test_mask_kinds_are_tissues_of_the_cohort(small: Path, tmp_path: Path) -> None:
    convert_cohort(small, tmp_path / "c.zarr", ConvertOptions(progress=False))
    cohort = open_cohort(tmp_path / "c.zarr")
    assert cohort.tissues("tissue_masks") == ["A"]
    with pytest.raises(NotFoundError, match="no modality"):
        cohort.tissues("../x")
