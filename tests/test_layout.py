"""Resolution names and tissue-id rules."""

from __future__ import annotations

import pytest

from spora_zarr.errors import InvalidInputError
from spora_zarr.store.layout import (
    image_group_path,
    is_resolution_name,
    resolution_name,
    resolution_value,
    tile_table_path,
    validate_tissue_id,
)


@pytest.mark.parametrize(
    ("given", "name", "value"),
    [
        (1.0, "1_0mpp", 1.0),
        (0.65, "0_65mpp", 0.65),
        (2, "2_0mpp", 2.0),
        ("1_0mpp", "1_0mpp", 1.0),
        ("0_65mpp", "0_65mpp", 0.65),
        ("0.5", "0_5mpp", 0.5),
        (0.325, "0_325mpp", 0.325),
    ],
)
def test_resolution_names(given: object, name: str, value: float) -> None:
    assert resolution_name(given) == name  # type: ignore[arg-type]
    assert resolution_value(given) == value  # type: ignore[arg-type]
    assert is_resolution_name(name)


@pytest.mark.parametrize("bad", ["1.0mpp", "mpp", "1_0", -1.0, 0, "abc", True])
def test_bad_resolutions(bad: object) -> None:
    with pytest.raises(InvalidInputError):
        resolution_name(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", ".hidden", "x\x00y", "x\ny", " padded", "a\\b"])
def test_tissue_ids_rejected(bad: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid tissue id"):
        validate_tissue_id(bad)


def test_paths() -> None:
    assert validate_tissue_id("TMA-1_core.03") == "TMA-1_core.03"
    assert image_group_path("ihc/ihc_CD3", "T1") == "ihc/ihc_CD3/images/T1"
    assert tile_table_path(1.0, 224) == "tiling/1_0mpp/default/224_tile_coordinates.parquet"
    with pytest.raises(InvalidInputError):
        image_group_path("he", "../x")
