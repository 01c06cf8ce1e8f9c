"""The curated ``spora_zarr`` namespace: every verb's library function, lazily, without the heavy libraries."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import spora_zarr
from spora_zarr.cli import main

VERB_FUNCTIONS = {
    "convert": ("convert_cohort", "spora_zarr.convert.cohort"),
    "add-image": ("add_image", "spora_zarr.convert.add_image"),
    "info": ("describe", "spora_zarr.read.info"),
    "validate": ("validate_store", "spora_zarr.read.validate"),
    "tile": ("tile_cohort", "spora_zarr.tiling.cohort"),
    "standardize": ("compute_statistics", "spora_zarr.standardize.statistics"),
    "predict": ("predict_cohort", "spora_zarr.inference.predict"),
    "stitch": ("stitch", "spora_zarr.stitching.stitch"),
}
OPTIONS_AND_REPORTS = [
    "ConvertOptions",
    "ConversionReport",
    "TilingOptions",
    "TilingReport",
    "StandardizeReport",
    "PredictOptions",
    "StitchResult",
    "RunOptions",
    "RunReport",
    "WriteOptions",
]
HEAVY = ("torch", "dask", "napari", "distributed", "tensorstore")


@pytest.mark.parametrize("verb", sorted(VERB_FUNCTIONS))
def test_every_verb_is_importable_from_spora_zarr(verb: str) -> None:
    name, module = VERB_FUNCTIONS[verb]
    assert name in spora_zarr.__all__
    assert getattr(spora_zarr, name) is getattr(importlib.import_module(module), name)


def test_all_is_complete_and_every_name_resolves() -> None:
    assert set(OPTIONS_AND_REPORTS) <= set(spora_zarr.__all__)
    assert spora_zarr.__all__ == sorted(spora_zarr.__all__)
    for name in spora_zarr.__all__:
        assert getattr(spora_zarr, name) is not None
    assert set(spora_zarr.__all__) <= set(dir(spora_zarr))
    with pytest.raises(AttributeError, match="'spora_zarr' has no attribute 'nope'"):
        spora_zarr.nope  # noqa: B018 - the lookup is the test


def test_subpackages_use_the_lazy_loader() -> None:
    import spora_zarr.inference as inference
    import spora_zarr.standardize as standardize

    assert inference.predict_cohort is spora_zarr.predict_cohort
    assert standardize.compute_statistics is spora_zarr.compute_statistics
    assert "build_standardizer" in dir(standardize)
    with pytest.raises(AttributeError, match="'spora_zarr.inference' has no attribute 'nope'"):
        inference.nope  # noqa: B018 - the lookup is the test


def _imported_heavy(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter has imported after running ``code``."""
    check = f"import sys\n{code}\nprint('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = [row for row in done.stdout.splitlines() if row.startswith("HEAVY:")][-1]
    return [m for m in line.removeprefix("HEAVY:").split(",") if m]


def test_import_and_every_public_name_load_no_heavy_library() -> None:
    assert _imported_heavy("import spora_zarr") == []
    assert _imported_heavy("import spora_zarr\nfor n in spora_zarr.__all__: getattr(spora_zarr, n)") == []


def test_info_command_loads_no_heavy_library(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((2, 64, 64), np.uint8))
    store = tmp_path / "c.zarr"
    assert main(["add-image", str(store), str(tmp_path / "t.tif"), "--modality", "imc", "--tissue-id", "T1", "--mpp", "1"]) == 0
    code = f"from spora_zarr.cli import main\nassert main(['info', {str(store)!r}]) == 0"
    assert _imported_heavy(code) == []
