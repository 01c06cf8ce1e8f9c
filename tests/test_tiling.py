"""The tilers on masks in memory: property tests on seeded random masks against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from spora_zarr.errors import InvalidInputError
from spora_zarr.testing.tiling_reference import reference_best_tiling
from spora_zarr.tiling import Tile, best_mask_tiling_try_to_stop, get_grid_tile
from spora_zarr.tiling.tilers import CellCounter, mask_cell_counts


def _blobs(rng: np.random.Generator, shape: tuple[int, int], sigma: float = 4.0, level: float = 0.5) -> np.ndarray:
    """A blobby random binary mask with holes."""
    return (ndi.gaussian_filter(rng.random(shape), sigma) > level).astype(np.uint8)


def _cases(n: int, seed: int = 0):
    """Seeded random masks and tiler parameters."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(30, 160, 2))
        mask = _blobs(rng, (h, w), sigma=float(rng.uniform(2, 6)), level=float(rng.uniform(0.45, 0.55)))
        size = int(rng.integers(4, 28))
        stride = int(rng.choice([size, max(1, size // 2), max(1, size // 4), size + 3, max(1, size - 1)]))
        yield mask, size, stride, float(rng.choice([0.0, 0.1, 0.3, 1.0])), rng


def _valid_in(mask: np.ndarray, tile: Tile) -> int:
    return int((mask[tile.row : tile.row + tile.size, tile.col : tile.col + tile.size] != 0).sum())


def test_cell_counts_match_numpy_for_any_band_split() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        cell = int(rng.integers(1, 40))
        mask = rng.integers(0, 3, (h, w)).astype(rng.choice([np.uint8, np.uint16, np.uint32, np.int64]))
        ny, nx = -(-h // cell), -(-w // cell)
        padded = np.zeros((ny * cell, nx * cell), dtype=np.int64)
        padded[:h, :w] = mask != 0
        want = padded.reshape(ny, cell, nx, cell).sum(axis=(1, 3))
        np.testing.assert_array_equal(mask_cell_counts(mask, cell), want)
        counter = CellCounter(h, w, cell)
        cuts = np.unique(np.concatenate([[0, h], rng.integers(0, h, 4)]))
        for y0, y1 in zip(cuts[:-1], cuts[1:]):
            counter.add(int(y0), mask[y0:y1])
        np.testing.assert_array_equal(counter.counts, want)


def test_best_tiling_equals_the_straightforward_greedy() -> None:
    for mask, size, stride, tolerance, rng in _cases(40):
        goal = float(rng.choice([0.5, 0.9, 0.99, 1.0]))
        ratio = float(rng.choice([0.0, 0.05, 0.3]))
        overlap = bool(rng.integers(2))
        tiles, stats, covered = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, goal, ratio, None, overlap)
        want, coverage = reference_best_tiling(mask, size, stride, tolerance, goal, ratio, None, overlap)
        assert tiles == want
        assert stats["coverage"] == pytest.approx(coverage, abs=1e-12)
        assert covered.shape == mask.shape and covered.dtype == bool
        assert int((covered & (mask != 0)).sum()) == stats["covered_pixels"]
        assert stats["tiles"] == len(tiles) and stats["valid_pixels"] == int((mask != 0).sum())


def test_every_tile_respects_the_tolerance_and_sits_on_the_stride_grid() -> None:
    for mask, size, stride, tolerance, _ in _cases(30, seed=2):
        for tiles in (best_mask_tiling_try_to_stop(mask, size, stride, tolerance)[0], get_grid_tile(mask, size, stride, tolerance)[0]):
            for tile in tiles:
                assert tile.row % stride == 0 and tile.col % stride == 0
                assert 0 <= tile.row < mask.shape[0] and 0 <= tile.col < mask.shape[1]
                assert tile.valid == _valid_in(mask, tile)  # pixels past the edge count as invalid
                assert (size * size - tile.valid) / (size * size) <= tolerance


def test_gains_are_new_pixels_and_add_up_to_the_coverage() -> None:
    for mask, size, stride, tolerance, _ in _cases(20, seed=3):
        tiles, stats, covered = best_mask_tiling_try_to_stop(mask, size, stride, tolerance)
        seen = np.zeros(mask.shape, dtype=bool)
        for tile in tiles:
            window = (slice(tile.row, tile.row + size), slice(tile.col, tile.col + size))
            assert tile.gain == int(((mask[window] != 0) & ~seen[window]).sum()) > 0
            seen[window] = True
        np.testing.assert_array_equal(seen, covered)
        assert sum(t.gain for t in tiles) == stats["covered_pixels"]
        gains = [t.gain for t in tiles]
        assert gains == sorted(gains, reverse=True)  # greedy: gains never grow


def test_coverage_reaches_the_goal_when_gains_allow() -> None:
    for mask, size, stride, tolerance, rng in _cases(30, seed=4):
        goal = float(rng.choice([0.3, 0.6, 0.9]))
        tiles, stats, _ = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, goal, 0.0)
        if stats["valid_pixels"] == 0:
            continue
        if stats["stop_reason"] == "no_gain":  # below the goal only because no eligible tile adds a pixel
            assert stats["coverage"] < goal
            _, _, covered = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, goal, 0.0)
            for tile in get_grid_tile(mask, size, stride, tolerance)[0]:  # every eligible window
                window = (slice(tile.row, tile.row + size), slice(tile.col, tile.col + size))
                assert not ((mask[window] != 0) & ~covered[window]).any()
        else:
            assert stats["stop_reason"] == "goal_reached" and stats["coverage"] >= goal


def test_min_gain_ratio_zero_is_a_hard_cut_at_the_goal() -> None:
    for mask, size, stride, tolerance, rng in _cases(30, seed=5):
        goal = float(rng.choice([0.2, 0.5, 0.8]))
        tiles, stats, _ = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, goal, 0.0)
        if stats["stop_reason"] != "goal_reached" or not tiles:
            continue
        assert stats["coverage"] >= goal
        before = (stats["covered_pixels"] - tiles[-1].gain) / stats["valid_pixels"]
        assert before < goal  # the last tile was needed: it stopped exactly at the goal


def test_runs_past_the_goal_while_gains_reach_min_gain_ratio() -> None:
    ratio = 0.05
    for mask, size, stride, tolerance, rng in _cases(30, seed=6):
        goal = float(rng.choice([0.2, 0.5]))
        tiles, stats, _ = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, goal, ratio)
        area = size * size
        covered = 0
        for tile in tiles:  # every tile picked past the goal added at least min_gain_ratio of its area
            if covered >= goal * stats["valid_pixels"]:
                assert tile.gain / area >= ratio
            covered += tile.gain
        if stats["stop_reason"] == "goal_reached":
            # the best remaining tile adds less than the ratio: an unconstrained rerun picks it next
            more, _, _ = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, goal, 0.0, len(tiles) + 1)
            longer, _, _ = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, 1.0, 0.0, len(tiles) + 1)
            assert longer[: len(tiles)] == tiles
            if len(longer) > len(tiles):
                assert longer[-1].gain / area < ratio
            assert len(more) <= len(tiles) + 1


def test_no_overlap_when_forbidden() -> None:
    for mask, size, stride, tolerance, _ in _cases(30, seed=7):
        tiles, stats, _ = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, 1.0, 0.0, allow_overlap=False)
        paint = np.zeros((mask.shape[0] + size, mask.shape[1] + size), dtype=np.int32)
        for tile in tiles:
            paint[tile.row : tile.row + size, tile.col : tile.col + size] += 1
        assert paint.max(initial=0) <= 1
        assert all(t.gain == t.valid for t in tiles)


def test_max_tiles_caps() -> None:
    for mask, size, stride, tolerance, rng in _cases(20, seed=8):
        cap = int(rng.integers(0, 6))
        tiles, stats, _ = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, 1.0, 0.0, max_tiles=cap)
        free, _, _ = best_mask_tiling_try_to_stop(mask, size, stride, tolerance, 1.0, 0.0)
        assert len(tiles) == min(cap, len(free)) and tiles == free[: len(tiles)]
        if len(free) > cap:
            assert stats["stop_reason"] == "max_tiles"


def test_ties_go_to_the_lowest_row_then_column() -> None:
    mask = np.zeros((40, 40), dtype=np.uint8)
    for r, c in ((20, 30), (20, 10), (30, 0), (0, 30)):
        mask[r : r + 10, c : c + 10] = 1
    tiles, _, _ = best_mask_tiling_try_to_stop(mask, 10, 10, 0.0, 1.0, 0.0)
    assert [(t.row, t.col) for t in tiles] == [(0, 30), (20, 10), (20, 30), (30, 0)]


def test_grid_matches_a_numpy_reference_and_keeps_edge_coordinates() -> None:
    for mask, size, stride, tolerance, _ in _cases(30, seed=9):
        tiles, stats, covered = get_grid_tile(mask, size, stride, tolerance)
        h, w = mask.shape
        want = []
        for r in range(0, h, stride):
            for c in range(0, w, stride):
                valid = int((mask[r : r + size, c : c + size] != 0).sum())  # numpy clips: past the edge is background
                if (size * size - valid) / (size * size) <= tolerance:
                    want.append((r, c, valid))
        assert [(t.row, t.col, t.valid) for t in tiles] == want
        seen = np.zeros(mask.shape, dtype=bool)
        for t in tiles:
            seen[t.row : t.row + size, t.col : t.col + size] = True
        np.testing.assert_array_equal(seen, covered)
        assert stats["covered_pixels"] == int((seen & (mask != 0)).sum()) == sum(t.gain for t in tiles)


def test_grid_edge_tiles_keep_their_top_left_corner() -> None:
    mask = np.ones((50, 70), dtype=np.uint8)
    tiles, _, _ = get_grid_tile(mask, 32, tolerance=1.0)
    assert [(t.row, t.col) for t in tiles] == [(0, 0), (0, 32), (0, 64), (32, 0), (32, 32), (32, 64)]
    assert tiles[-1].valid == 18 * 6
    kept, _, _ = get_grid_tile(mask, 32, tolerance=0.5)  # 50x70: the last column keeps 6/32 of its pixels
    assert (0, 64) not in [(t.row, t.col) for t in kept] and (32, 0) in [(t.row, t.col) for t in kept]


def test_empty_mask_gives_zero_tiles_and_says_so() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    tiles, stats, covered = best_mask_tiling_try_to_stop(mask, 16)
    assert tiles == [] and not covered.any()
    assert stats["stop_reason"] == "empty_mask" and stats["valid_pixels"] == 0 and stats["coverage"] == 0.0
    tiles, stats, _ = get_grid_tile(mask, 16)
    assert tiles == [] and stats["stop_reason"] == "empty_mask"


def test_non_zero_is_valid_for_any_dtype() -> None:
    rng = np.random.default_rng(10)
    mask = _blobs(rng, (90, 110))
    labels = (mask * rng.integers(1, 60000, mask.shape)).astype(np.uint16)
    for variant in (mask.astype(bool), labels, labels.astype(np.float32) * -1.5, labels.astype(np.int64)):
        assert best_mask_tiling_try_to_stop(variant, 16, 8)[0] == best_mask_tiling_try_to_stop(mask, 16, 8)[0]
        assert get_grid_tile(variant, 16)[0] == get_grid_tile(mask, 16)[0]


def test_tile_larger_than_the_image_is_the_one_window_at_the_origin() -> None:
    mask = np.ones((20, 30), dtype=np.uint8)
    tiles, stats, _ = best_mask_tiling_try_to_stop(mask, 32, tolerance=0.5)
    assert [(t.row, t.col, t.valid) for t in tiles] == [(0, 0, 600)] and stats["coverage"] == 1.0
    assert best_mask_tiling_try_to_stop(mask, 32, tolerance=0.2)[0] == []  # 600 / 1024 valid: too much past the edge
    assert [(t.row, t.col) for t in get_grid_tile(mask, 32, tolerance=0.5)[0]] == [(0, 0)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tolerance": 1.5}, "tolerance must be in [0, 1]"),
        ({"tolerance": -0.1}, "tolerance must be in [0, 1]"),
        ({"tolerance": float("nan")}, "tolerance must be a number"),
        ({"coverage_goal": 2}, "coverage_goal must be in [0, 1]"),
        ({"min_gain_ratio": 1.0}, "min_gain_ratio must be in [0, 1)"),
        ({"max_tiles": -1}, "max_tiles must be a whole number >= 0"),
        ({"stride": 0}, "stride must be a whole number >= 1"),
        ({"tile_size": 0}, "tile_size must be a whole number >= 1"),
        ({"tile_size": 2.5}, "tile_size must be a whole number >= 1"),
        ({"tile_size": 99_999_999_999}, "tile_size must be at most 1,048,576 px"),  # was an OverflowError a tissue
        ({"stride": 2**21}, "stride must be at most 1,048,576 px"),
    ],
)
def test_bad_parameters_are_one_line_errors(kwargs: dict, message: str) -> None:
    mask = np.ones((40, 40), dtype=np.uint8)
    args = {"tile_size": 8, **kwargs}
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as info:
        best_mask_tiling_try_to_stop(mask, **args)
    assert "\n" not in str(info.value)
    if "tolerance" in kwargs or "tile_size" in kwargs or "stride" in kwargs:
        with pytest.raises(InvalidInputError):
            get_grid_tile(mask, args["tile_size"], args.get("stride"), args.get("tolerance", 0.2))


@pytest.mark.parametrize("mask", [np.ones((4, 4, 4)), np.ones((0, 5)), np.array([["a", "b"]])])
def test_bad_masks_are_one_line_errors(mask: np.ndarray) -> None:
    with pytest.raises(InvalidInputError):
        best_mask_tiling_try_to_stop(mask, 2)
    with pytest.raises(InvalidInputError):
        get_grid_tile(mask, 2)


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    mask = _blobs(np.random.default_rng(11), (120, 120))
    best_mask_tiling_try_to_stop(mask, 16, progress=True, progress_desc="T-bar")
    out, err = capsys.readouterr()
    assert out == "" and "T-bar" in err
