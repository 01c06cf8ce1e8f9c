"""The resolution value type and its one parser."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from spora_zarr.access import Resolution, parse_resolution
from spora_zarr.errors import InvalidInputError
from spora_zarr.store.layout import resolution_name, resolution_value, tile_table_path
from spora_zarr.tiling.cohort import TilingOptions


@pytest.mark.parametrize(
    ("given", "name", "mpp"),
    [
        (1.0, "1_0mpp", 1.0),
        (1, "1_0mpp", 1.0),
        (2, "2_0mpp", 2.0),
        (0.65, "0_65mpp", 0.65),
        (0.325, "0_325mpp", 0.325),
        ("1.0", "1_0mpp", 1.0),
        (" 0.5 ", "0_5mpp", 0.5),
        ("2", "2_0mpp", 2.0),
        ("1_0mpp", "1_0mpp", 1.0),
        ("0_65mpp", "0_65mpp", 0.65),
        ("10_25mpp", "10_25mpp", 10.25),
        (np.float32(0.65), "0_65mpp", 0.65),
        (np.float64(0.5), "0_5mpp", 0.5),
        (np.int64(4), "4_0mpp", 4.0),
        (Resolution(0.65), "0_65mpp", 0.65),
    ],
)
def test_every_spelling(given: object, name: str, mpp: float) -> None:
    resolution = parse_resolution(given)
    assert isinstance(resolution, Resolution)
    assert resolution.name == str(resolution) == name
    assert resolution.mpp == mpp
    assert isinstance(resolution.mpp, float)
    assert float(resolution) == mpp
    # the layout's helpers are thin delegates of the same parser
    assert resolution_name(given) == name  # type: ignore[arg-type]
    assert resolution_value(given) == mpp  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        "1.0mpp",
        "mpp",
        "1_0",
        "1__0mpp",
        "",
        "abc",
        "-1",
        "0",
        "nan",
        "inf",
        -1.0,
        0,
        0.0,
        float("nan"),
        float("inf"),
        True,
        False,
        None,
        [1.0],
        b"1.0",
        np.bool_(True),
    ],
)
def test_bad_values_are_one_line_naming_the_parameter(bad: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_resolution(bad)
    message = str(caught.value)
    assert message.startswith(f"resolution={bad!r} is not a resolution")
    assert "\n" not in message


@pytest.mark.parametrize("bad", [True, -2.0, 0, float("nan"), "1.0"])
def test_constructor_checks_too(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="^resolution="):
        Resolution(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("mpp", [0.25, 0.325, 0.5, 0.65, 1.0, 2.0, 4.0, 8.0, 0.123456, 12.5])
def test_round_trip_name_and_value(mpp: float) -> None:
    resolution = parse_resolution(mpp)
    assert parse_resolution(resolution.name) == resolution
    assert parse_resolution(resolution.name).mpp == mpp
    assert parse_resolution(str(resolution.mpp)) == resolution


def test_equality_hash_and_order() -> None:
    one = parse_resolution(1.0)
    assert one == parse_resolution("1_0mpp") == parse_resolution("1.0") == parse_resolution(1)
    assert hash(one) == hash(parse_resolution("1_0mpp"))
    assert len({one, parse_resolution("1_0mpp"), parse_resolution(1), parse_resolution(0.65)}) == 2
    assert one != parse_resolution(2.0)
    assert one != "1_0mpp" and one != 1.0  # a value type, not a string or a number
    levels = [parse_resolution(x) for x in ("2_0mpp", 0.5, "1.0", 0.65)]
    assert [str(r) for r in sorted(levels)] == ["0_5mpp", "0_65mpp", "1_0mpp", "2_0mpp"]
    assert parse_resolution(0.5) < one <= parse_resolution("1_0mpp") < parse_resolution(2)
    # same level name, same level: neither is below the other
    close = parse_resolution(0.6500001)
    assert close == parse_resolution(0.65) and not close < parse_resolution(0.65) and not parse_resolution(0.65) < close


def test_frozen_and_picklable() -> None:
    resolution = parse_resolution("0_65mpp")
    with pytest.raises(AttributeError):
        resolution.mpp = 2.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(resolution)) == resolution


def test_options_hold_a_resolution() -> None:
    for given in (1.0, "1_0mpp", "1.0", parse_resolution(1)):
        options = TilingOptions(resolution=given, tile_size=64)  # type: ignore[arg-type]
        assert options.resolution == parse_resolution(1.0)
        assert isinstance(options.resolution, Resolution)
    expected = "tiling/1_0mpp/best/64_tile_coordinates.parquet"
    assert options.table("coordinates") == tile_table_path("1_0mpp", 64, strategy="best") == expected
    with pytest.raises(InvalidInputError, match="^resolution='fast' is not a resolution"):
        TilingOptions(resolution="fast", tile_size=64)


def test_predict_options_hold_a_resolution() -> None:
    pytest.importorskip("torch")
    from spora_zarr.inference.predict import PredictOptions

    options = PredictOptions(modality="imc", resolution="0_65mpp", name="p")  # type: ignore[arg-type]
    assert options.resolution == Resolution(0.65)
    assert isinstance(options.resolution, Resolution)
