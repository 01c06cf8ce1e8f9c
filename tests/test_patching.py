"""Patch and tile specs: property tests on seeded random shapes, and patch generators over a real converted store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spora_zarr.errors import InvalidInputError
from spora_zarr.tiling.patching import (
    PatchSpecs,
    TileSpecs,
    UncorrelatedPatchSpecs,
    axis_tiles,
    is_tile_specs,
    is_uncorrelated_specs,
    random_patch_specs,
    sequential_patch_specs,
    tile_specs,
)


def _axis_cases(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    fixed = [(1, 1, 0), (1, 8, 2), (7, 8, 2), (8, 8, 2), (9, 8, 2), (10, 8, 6), (64, 16, 0), (65, 16, 15), (100, 33, 1)]
    yield from fixed
    for _ in range(n):
        size = int(rng.integers(1, 80))
        overlap = int(rng.integers(0, size))
        yield int(rng.integers(1, 400)), size, overlap


def test_axis_tiles_partition_and_keep_half_the_overlap_inside() -> None:
    for length, size, overlap in _axis_cases(300):
        tiles = axis_tiles(length, size, overlap)
        starts, lo, hi = np.array(tiles.starts), np.array(tiles.crop_starts), np.array(tiles.crop_stops)
        assert lo[0] == 0 and hi[-1] == length  # the crops partition [0, length)
        np.testing.assert_array_equal(lo[1:], hi[:-1])
        assert (hi > lo).all()
        assert starts[0] == 0
        if length <= size:
            assert len(tiles) == 1 and hi[0] == length
            continue
        assert starts[-1] == length - size  # the last tile is anchored at the end
        assert (np.diff(starts) > 0).all() and (np.diff(starts) <= size - overlap).all()
        assert (lo >= starts).all() and (hi <= starts + size).all()  # each crop lies in its tile
        # a kept pixel is at least floor(overlap / 2) away from every inner tile edge
        assert (lo[1:] - starts[1:] >= overlap // 2).all()
        assert (starts[:-1] + size - hi[:-1] >= overlap // 2).all()
        # regular neighbours crop exactly half the overlap
        step = size - overlap
        if len(tiles) > 2:
            assert lo[1] - starts[1] == overlap // 2 and starts[0] + size - hi[0] == overlap - overlap // 2
            assert (np.diff(starts[:-1]) == step).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_tile_specs_crops_partition_the_image(dims: int) -> None:
    rng = np.random.default_rng(dims)
    for _ in range(40):
        shape = tuple(int(v) for v in rng.integers(1, 70 if dims == 2 else 25, dims))
        size = [int(v) for v in rng.integers(1, 30, dims)]
        overlap = [int(rng.integers(0, s)) for s in size]
        specs = tile_specs(shape, size, overlap, data_idx=3, sample_idx=1)
        count = np.zeros(shape, np.int32)
        for spec in specs:
            assert is_tile_specs(spec) and not is_uncorrelated_specs(spec)
            assert spec["total_tiles"] == len(specs) and spec["data_idx"] == 3 and spec["sample_idx"] == 1
            assert list(spec["patch_size"]) == size
            np.testing.assert_array_equal(np.add(spec["coords"], spec["crop_coords"]), spec["stitch_coords"])
            region = tuple(slice(s, s + c) for s, c in zip(spec["stitch_coords"], spec["crop_size"]))
            count[region] += 1
        assert (count == 1).all()


def test_tile_specs_of_an_image_smaller_than_a_tile() -> None:
    (spec,) = tile_specs((5, 7), 16, 4)
    assert spec["coords"] == (0, 0) and spec["patch_size"] == (16, 16)
    assert spec["crop_coords"] == (0, 0) and spec["crop_size"] == (5, 7) and spec["stitch_coords"] == (0, 0)
    assert spec["total_tiles"] == 1


def test_spec_type_guards() -> None:
    patch = PatchSpecs(data_idx=0, sample_idx=0, coords=(1, 2), patch_size=(8, 8))
    tile = TileSpecs(**patch, crop_coords=(0, 0), crop_size=(8, 8), stitch_coords=(1, 2), total_tiles=1)
    uncorrelated = UncorrelatedPatchSpecs(
        **patch, principal_channel=0, all_data_idx=[0, 1], all_sample_idx=[0, 0], all_coords=[(1, 2), (3, 4)]
    )
    assert not is_tile_specs(patch) and not is_uncorrelated_specs(patch)
    assert is_tile_specs(tile) and not is_uncorrelated_specs(tile)
    assert is_uncorrelated_specs(uncorrelated) and not is_tile_specs(uncorrelated)


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (8, 8), (8, -1), (8, 2.5), (True, 0)])
def test_bad_tilings_are_refused(size: object, overlap: object) -> None:
    with pytest.raises(InvalidInputError, match="tile size|overlap"):
        tile_specs((10, 10), size, overlap)  # type: ignore[arg-type]


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="2D or 3D"):
        tile_specs((10,), 4, 0)
    with pytest.raises(InvalidInputError, match="1 or 2 values"):
        tile_specs((10, 10), (4, 4, 4), 0)


# -- patch generators over a converted store -------------------------------------------------
@pytest.fixture(scope="module")
def dataset(cohort_pair: tuple[Path, Path]):
    from spora_zarr.datasets import MultiplexImagingDataset

    return MultiplexImagingDataset("patches", cohort_pair[1], 1.0, 32, modality="imc", verbose=False)


def test_sequential_patch_specs_cover_the_grid_of_each_tissue(dataset) -> None:
    specs = list(sequential_patch_specs(dataset, 32, stride=16))
    for data_idx, tissue in enumerate(dataset.tissue_ids):
        height, width = dataset.image_shape(tissue)[-2:]
        mine = [s["coords"] for s in specs if s["data_idx"] == data_idx]
        want = [(y, x) for y in range(0, height - 31, 16) for x in range(0, width - 31, 16)]
        assert mine == want
    assert all(s["patch_size"] == (32, 32) and s["sample_idx"] == 0 for s in specs)


def test_patch_specs_restricted_to_the_tissue_mask(dataset) -> None:
    kept = list(sequential_patch_specs(dataset, 32, stride=32, min_tissue=0.5))
    every = list(sequential_patch_specs(dataset, 32, stride=32))
    assert 0 < len(kept) < len(every)
    for spec in kept:
        tissue = dataset.tissue_ids[spec["data_idx"]]
        mask = dataset.read_mask_tile(tissue, *spec["coords"], 32, pad=True).numpy()
        assert (mask != 0).mean() >= 0.5
    drawn = random_patch_specs(dataset, 32, 20, seed=4, min_tissue=0.5)
    assert len(drawn) == 20 and drawn == random_patch_specs(dataset, 32, 20, seed=4, min_tissue=0.5)
    for spec in drawn:
        tissue = dataset.tissue_ids[spec["data_idx"]]
        height, width = dataset.image_shape(tissue)[-2:]
        y, x = spec["coords"]
        assert 0 <= y <= height - 32 and 0 <= x <= width - 32
        assert (dataset.read_mask_tile(tissue, y, x, 32, pad=True).numpy() != 0).mean() >= 0.5
