"""``spora-zarr stitch``: a thin wrapper over ``spora_zarr.stitching.stitch``; bad input is one line, exit 1, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data, filters, measure

from spora_zarr import open_cohort, validate_store
from spora_zarr.cli import main

from .test_stitch import cut, rgb


def test_stitch_command_writes_image_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coins = data.coins()
    labels = measure.label(coins > filters.threshold_otsu(coins))
    table = cut(coins[None], tmp_path / "tiles", labels=labels)
    store = tmp_path / "c.zarr"
    argv = [
        "stitch",
        str(tmp_path / "tiles"),
        str(table),
        str(store),
        "--modality",
        "imc",
        "--tissue",
        "T1",
        "--mpp",
        "0.5",
        "--blend",
        "linear",
        "--labels",
        "cell_masks",
        "--channel-names",
        "dna",
        "--no-progress",
        "--chunk",
        "32",
        "--shard",
        "64",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote imc/images/T1" in out and f"({labels.max()} objects)" in out
    cohort = open_cohort(store)
    np.testing.assert_array_equal(cohort.open_image("imc", "T1", 0.5).values, coins[None])
    assert list(cohort.open_image("imc", "T1", 0.5).coords["c"].values) == ["dna"]
    assert validate_store(store) == []
    assert main(argv) == 0 and "kept existing" in capsys.readouterr().out


def test_stitch_command_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut(rgb(), tmp_path / "tiles")
    (tmp_path / "bad.csv").write_text("file,x,y\nt000.tif,0,0\nt001.tif,-3,0\n")
    store = tmp_path / "c.zarr"
    assert (
        main(["stitch", str(tmp_path / "tiles"), str(tmp_path / "bad.csv"), str(store), "--modality", "he", "--tissue", "T1", "--mpp", "1"])
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "t001.tif" in err and "not negative" in err
    assert not store.exists()
