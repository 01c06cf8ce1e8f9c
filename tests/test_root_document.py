"""The root document has one owner that merges: conversions and add-image never forget each other's modalities.

Also: the spora format version is checked on open, and a flag's bad value is reported with the flag's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from spora_zarr import ConvertOptions, StoreError, add_image, convert_cohort, open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.read.info import describe
from spora_zarr.testing.cohorts import make_synthetic_cohort


def _cycif_tiff(path: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 1000, (2, 60, 75), dtype=np.uint16)  # tissue A at 1.0 mpp
    tifffile.imwrite(
        path, data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "CD8"]}, "PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0}
    )
    return path


def _sees(store: Path, modality: str, tissue: str) -> None:
    cohort = open_cohort(store)
    assert modality in cohort.modalities
    assert tissue in cohort.tissues(modality)
    assert modality in describe(store)
    assert validate_store(store) == []


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_cohort(tmp_path_factory.mktemp("src") / "tiff", tissues=("A",), he_shape=(120, 150), ihc_markers=(), seed=3)


def test_add_image_then_convert_keeps_the_added_modality(tmp_path: Path, source: Path) -> None:
    store = tmp_path / "cohort.zarr"
    add_image(store, str(_cycif_tiff(tmp_path / "s.ome.tif")), modality="cycif", tissue_id="A")
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    _sees(store, "cycif", "A")
    _sees(store, "imc", "A")


def test_convert_add_image_convert_overwrite_keeps_the_added_modality(tmp_path: Path, source: Path) -> None:
    store = tmp_path / "cohort.zarr"
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    add_image(store, str(_cycif_tiff(tmp_path / "s.ome.tif")), modality="cycif", tissue_id="A")
    _sees(store, "cycif", "A")
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    _sees(store, "cycif", "A")
    assert convert_cohort(source, store, ConvertOptions(progress=False, overwrite=True)).ok
    _sees(store, "cycif", "A")
    assert sorted(open_cohort(store).modalities) == ["cycif", "he", "imc"]


def test_two_source_cohorts_into_one_store(tmp_path: Path, source: Path) -> None:
    other = make_synthetic_cohort(
        tmp_path / "other",
        tissues=("A",),
        he_shape=(60, 75),
        ihc_markers=(),
        with_he=False,
        multiplex_modalities=("cycif",),
        resolutions=(1.0,),
        seed=4,
    )
    store = tmp_path / "cohort.zarr"
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    assert convert_cohort(other, store, ConvertOptions(progress=False)).ok
    cohort = open_cohort(store)
    assert cohort.modalities == ["cycif", "he", "imc"]
    assert cohort.attributes.modalities["he"] == ("0_5mpp", "1_0mpp")
    assert cohort.attributes.modalities["cycif"] == ("1_0mpp",)
    assert set(cohort.attributes.mask_kinds) == {"tissue_masks", "cell_masks"}
    assert validate_store(store) == []


def test_a_store_of_a_newer_format_is_refused_clearly(tmp_path: Path) -> None:
    store = tmp_path / "cohort.zarr"
    add_image(store, str(_cycif_tiff(tmp_path / "s.ome.tif")), modality="cycif", tissue_id="A")
    document = json.loads((store / "zarr.json").read_text())
    document["attributes"]["spora"]["format_version"] = "99"
    (store / "zarr.json").write_text(json.dumps(document))
    with pytest.raises(StoreError, match="format 99, newer than format 1"):
        open_cohort(store)
    with pytest.raises(StoreError, match="newer"):
        add_image(store, str(tmp_path / "s.ome.tif"), modality="cycif", tissue_id="B")
    assert not (store / "cycif/images/B").exists()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "abc"])
def test_a_bad_mpp_names_the_flag(tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = _cycif_tiff(tmp_path / "s.ome.tif")
    with pytest.raises(SystemExit) as exit_:
        main(["add-image", str(tmp_path / "c.zarr"), str(path), "--modality", "cycif", "--tissue", "A", "--mpp", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--mpp" in err and "positive number" in err and "resolution" not in err


def test_a_bad_worker_count_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path), str(tmp_path / "c.zarr"), "--workers", "0"])
    assert "--workers" in capsys.readouterr().err
