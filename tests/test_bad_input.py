"""Bad input: one line naming the file and the reason, exit code 1, nothing already written damaged."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile

from spora_zarr import open_cohort
from spora_zarr.cli import main
from spora_zarr.testing.cohorts import make_synthetic_cohort

from .conftest import read_source_chw


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    return make_synthetic_cohort(tmp_path / "src", tissues=("A", "B"), he_shape=(90, 130), resolutions=(1.0,), seed=2)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["convert", "--no-progress", *argv])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def assert_one_line_error(output: str, *fragments: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith(("error:", "FAILED"))]
    assert errors, output
    assert "Traceback" not in output
    assert any(all(f in line for f in fragments) for line in errors), (fragments, output)


def test_missing_tissues_table(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cohort / "metadata/tissues.parquet").unlink()
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, "metadata/tissues.parquet", "missing")
    assert not (tmp_path / "out.zarr").exists()


def test_duplicate_tissue_id_in_table(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(pa.table({"tissue_id": ["A", "B", "A"]}), cohort / "metadata/tissues.parquet")
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, "tissues.parquet", "duplicate tissue id 'A'")


def test_duplicate_tissue_file(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(cohort / "he/1_0mpp/images/A.tif", cohort / "he/1_0mpp/images/A.tiff")
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, "he/1_0mpp/images/A.tif", "duplicate tissue id 'A'")


@pytest.mark.parametrize("bad_id", ["../evil", "..", ".hidden", "a/b", "tab\there", ""])
def test_unsafe_tissue_id_is_rejected_before_writing(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_id: str) -> None:
    pq.write_table(pa.table({"tissue_id": ["A", "B", bad_id]}), cohort / "metadata/tissues.parquet")
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, "tissues.parquet", "invalid tissue id")
    assert not (tmp_path / "out.zarr").exists()


def test_unknown_resolution_directory(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cohort / "he/1_0mpp").rename(cohort / "he/1.0mpp")
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, "he/1.0mpp", "not a resolution directory name")


def test_corrupt_tiff_fails_its_tissue_only(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = cohort / "imc/1_0mpp/images/B.tif"
    bad.write_bytes(b"II*\x00" + b"\x00garbage" * 10)
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, str(bad), "unreadable TIFF")
    store = open_cohort(tmp_path / "out.zarr")
    assert store.tissues("imc") == ["A"]
    assert store.tissues("he") == ["A", "B"]


def test_truncated_tiff_data(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = cohort / "he/1_0mpp/images/A.tif"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, str(bad), "unreadable TIFF")
    assert open_cohort(tmp_path / "out.zarr").tissues("he") == ["B"]


def test_a_truncated_tiff_of_several_pages_is_one_line_naming_the_cut(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """tifffile logs a page chain cut short (its own line on stderr) and reads on with the pages it found: the file's
    error says so instead, on one line, and the file is not converted with fewer pages."""
    bad = cohort / "imc/1_0mpp/images/A.tif"
    channels = read_source_chw(bad)
    tifffile.imwrite(bad, channels, photometric="minisblack", tile=(32, 32), compression="zlib", metadata={"axes": "CYX"})
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, str(bad), "damaged or truncated TIFF (invalid page offset")
    assert not [record for record in caplog.records if record.name == "tifffile"]  # not its own line as well
    assert open_cohort(tmp_path / "out.zarr").tissues("imc") == ["B"]


def test_channel_count_mismatch(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = pq.read_table(cohort / "imc/channels_per_tissue.parquet").to_pandas()
    dropped = table.drop(table[table.tissue_id == "A"].index[-1])
    pq.write_table(pa.Table.from_pandas(dropped, preserve_index=False), cohort / "imc/channels_per_tissue.parquet")
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, "imc/1_0mpp/images/A.tif", "channels but", "channels_per_tissue.parquet")


def test_mask_shape_mismatch(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = cohort / "segmentations/1_0mpp/cell_masks/A.tif"
    tifffile.imwrite(bad, np.zeros((80, 130), dtype=np.uint32))
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, str(bad), "mask shape (80, 130) does not match")
    assert open_cohort(tmp_path / "out.zarr").mask_tissues("cell_masks") == ["B"]


def test_image_of_unlisted_tissue(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(cohort / "he/1_0mpp/images/A.tif", cohort / "he/1_0mpp/images/Z.tif")
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, "he/1_0mpp/images/Z.tif", "not listed")


def test_failed_overwrite_keeps_the_good_version(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "out.zarr"
    assert run_cli(capsys, str(cohort), str(dest))[0] == 0
    good = open_cohort(dest).open_array("imc", "A", 1.0)[...]
    (cohort / "imc/1_0mpp/images/A.tif").write_bytes(b"not a tiff at all")
    code, out = run_cli(capsys, str(cohort), str(dest), "--overwrite")
    assert code == 1
    assert_one_line_error(out, "imc/1_0mpp/images/A.tif")
    np.testing.assert_array_equal(open_cohort(dest).open_array("imc", "A", 1.0)[...], good)
    assert not list(dest.glob(".spora_tmp/*"))


def test_real_entry_point_prints_no_traceback(cohort: Path, tmp_path: Path) -> None:
    (cohort / "metadata/tissues.parquet").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "spora_zarr.cli", "convert", str(cohort), str(tmp_path / "o.zarr")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "tissues.parquet" in result.stderr


def test_tissue_missing_from_channels_per_tissue(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = pq.read_table(cohort / "imc/channels_per_tissue.parquet").to_pandas()
    pq.write_table(pa.Table.from_pandas(table[table.tissue_id != "B"], preserve_index=False), cohort / "imc/channels_per_tissue.parquet")
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    assert_one_line_error(out, "imc/1_0mpp/images/B.tif", "no rows in imc/channels_per_tissue.parquet")
    assert open_cohort(tmp_path / "out.zarr").tissues("imc") == ["A"]


def test_channel_pages_with_a_preview_keep_every_channel_and_an_odd_page_is_one_line(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A TIFF of one page a channel: a smaller page after them (a preview) is left out and said so; a page of the
    channels' size but another dtype (or after the preview) fails its tissue: dropping it would drop a channel."""
    images = cohort / "imc/1_0mpp/images"
    channels = read_source_chw(images / "A.tif")
    assert channels.shape[0] > 2
    with tifffile.TiffWriter(images / "A.tif") as tiff:
        for plane in channels:
            tiff.write(plane, photometric="minisblack")
        tiff.write(channels[0, ::4, ::4], photometric="minisblack")  # the preview
    with tifffile.TiffWriter(images / "B.tif") as tiff:
        for plane in channels[:-1]:
            tiff.write(plane, photometric="minisblack")
        tiff.write(channels[-1].astype(np.float32), photometric="minisblack")
    code, out = run_cli(capsys, str(cohort), str(tmp_path / "out.zarr"))
    assert code == 1
    said = f"{images / 'A.tif'}: {len(channels)} channel page(s); 1 smaller page(s) after them left out (previews)"
    assert said in [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    np.testing.assert_array_equal(open_cohort(tmp_path / "out.zarr").open_array("imc", "A", 1.0)[...], channels)
    page, size = len(channels) - 1, "x".join(map(str, channels.shape[1:]))
    assert_one_line_error(out, "imc/1_0mpp/images/B.tif", f"page {page} is {size} float32, pages 0-{page - 1} {size} {channels.dtype}")
    assert "B" not in open_cohort(tmp_path / "out.zarr").tissues("imc")
