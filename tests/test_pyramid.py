"""The streamed levels equal ngff_zarr.to_multiscales' output for the same method, sample for sample."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import ngff_zarr
import numpy as np
import pytest
import zarr
from ngff_zarr.methods import Methods

from spora_zarr import WriteOptions, write_image, write_labels
from spora_zarr.sources import ArraySource
from spora_zarr.write.options import IN_FLIGHT
from spora_zarr.write.pyramid import bin_shrink, mode_shrink, plan_levels


def reference_levels(array: np.ndarray, dims: tuple[str, ...], n_levels: int, method: Methods) -> list[np.ndarray]:
    image = ngff_zarr.to_ngff_image(da.from_array(array, chunks=(-1,) * (array.ndim - 2) + (256, 256)), dims=dims)
    multiscales = ngff_zarr.to_multiscales(image, scale_factors=[2 ** (i + 1) for i in range(n_levels - 1)], method=method)
    return [level.data.compute() for level in multiscales.images]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32"])
@pytest.mark.parametrize("shape", [(2, 1001, 777), (3, 450, 1900)])
def test_bin_shrink_levels_equal_to_multiscales(tmp_path: Path, dtype: str, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    array = (rng.integers(info.min, info.max, size=shape, endpoint=True) if info else rng.normal(size=shape) * 1000).astype(dtype)
    options = WriteOptions(chunk=32, shard=128, max_top_size=100)
    result = write_image(tmp_path / "s.zarr", "x/images/T", {1.0: ArraySource(array)}, options=options)
    assert len(result.levels) >= 4
    expected = reference_levels(array, ("c", "y", "x"), len(result.levels), Methods.DASK_BIN_SHRINK)
    group = zarr.open_group(tmp_path / "s.zarr/x/images/T", mode="r")
    for level, reference in zip(result.levels, expected):
        stored = group[level.name][...]
        assert stored.dtype == reference.dtype and stored.shape == reference.shape
        np.testing.assert_array_equal(stored, reference, err_msg=level.name)


def test_label_levels_equal_to_multiscales_mode(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, size=(803, 611)).astype(np.uint32)
    result = write_labels(
        tmp_path / "s.zarr",
        "segmentations/cell_masks/T",
        {1.0: ArraySource(labels)},
        options=WriteOptions(chunk=32, shard=64, max_top_size=60),
    )
    expected = reference_levels(labels, ("y", "x"), len(result.levels), Methods.DASK_IMAGE_MODE)
    group = zarr.open_group(tmp_path / "s.zarr/segmentations/cell_masks/T", mode="r")
    for level, reference in zip(result.levels, expected):
        np.testing.assert_array_equal(group[level.name][...], reference, err_msg=level.name)
    assert set(np.unique(group[result.levels[-1].name][...])) <= set(np.unique(labels))


def test_kernels() -> None:
    block = np.array([[[1, 2, 9], [3, 4, 9], [7, 7, 9]]], dtype=np.uint8)
    np.testing.assert_array_equal(bin_shrink(block), [[[3]]])  # 2.5 rounds half up
    np.testing.assert_array_equal(mode_shrink(np.array([[[5, 2], [2, 5]]])), [[[2]]])  # tie: smallest


def test_level_plan_stops_under_the_top_size() -> None:
    levels = plan_levels({0.5: (3, 9000, 5000), 1.0: (3, 4500, 2500)}, max_top_size=2048)
    assert [lv.name for lv in levels] == ["0_5mpp", "1_0mpp", "2_0mpp", "4_0mpp"]
    assert [lv.from_source for lv in levels] == [True, True, False, False]
    assert [lv.shape for lv in levels[2:]] == [(3, 2250, 1250), (3, 1125, 625)]


def test_a_tight_memory_budget_halves_the_shards_and_writes_each_once(tmp_path: Path) -> None:
    """Blocks that must shrink to fit the budget make the shards shrink with them: every shard file written once."""
    rng = np.random.default_rng(2)
    array = rng.integers(0, 60_000, size=(6, 700, 650), dtype=np.uint16)
    roomy = WriteOptions(chunk=32, shard=256, max_top_size=100)
    result = write_image(tmp_path / "a.zarr", "x/images/T", {1.0: ArraySource(array)}, options=roomy)
    held = len(result.levels) + 1 + IN_FLIGHT  # blocks held at once: one per level, the one read, those queued
    tight = WriteOptions(chunk=32, shard=256, max_top_size=100, memory_budget=held * 6 * 128 * 128 * 2)
    assert roomy.block_edge(6, 2, len(result.levels)) == 256 and tight.block_edge(6, 2, len(result.levels)) == 128
    write_image(tmp_path / "b.zarr", "x/images/T", {1.0: ArraySource(array)}, options=tight)
    for level in result.levels:
        wide = zarr.open_array(tmp_path / f"a.zarr/x/images/T/{level.name}", mode="r")
        narrow = zarr.open_array(tmp_path / f"b.zarr/x/images/T/{level.name}", mode="r")
        assert wide.shards == (6, 256, 256) and narrow.shards == (6, 128, 128), level.name
        np.testing.assert_array_equal(narrow[...], wide[...], err_msg=level.name)
        files = sorted((tmp_path / f"b.zarr/x/images/T/{level.name}/c").rglob("*"))
        shards = [f for f in files if f.is_file()]
        assert len(shards) == int(np.prod([-(-n // 128) for n in narrow.shape[1:]])), level.name


def test_multiscales_type_and_metadata_name_only_the_levels_the_writer_computed(tmp_path: Path) -> None:
    import json

    fine = np.random.default_rng(2).integers(0, 255, size=(3, 120, 88)).astype(np.uint8)
    sources = {0.5: ArraySource(fine), 1.0: ArraySource(bin_shrink(fine))}  # a slide's own levels
    computed = {}
    for name, options in (("own", WriteOptions(chunk=32, shard=64)), ("more", WriteOptions(chunk=32, shard=64, max_top_size=20))):
        result = write_image(tmp_path / "s.zarr", f"he/images/{name}", sources, options=options)
        computed[name] = [level.name for level in result.levels if not level.from_source]
        ome = json.loads((tmp_path / "s.zarr" / "he" / "images" / name / "zarr.json").read_text())["attributes"]["ome"]
        multiscales = ome["multiscales"][0]
        if not computed[name]:
            assert multiscales["type"] == "none" and "dask" not in json.dumps(multiscales), multiscales  # nothing downsampled
        else:
            assert multiscales["type"] == "dask_bin_shrink"
            description = multiscales["metadata"]["description"]
            assert all(level in description for level in computed[name]) and "0_5mpp" not in description and "1_0mpp" not in description
            assert multiscales["metadata"]["method"] == "spora_zarr.write.pyramid.bin_shrink"
    assert computed["own"] == [] and computed["more"] == ["2_0mpp", "4_0mpp"]


def test_the_lanes_take_every_level_of_a_plane_in_one_batch_the_largest_jobs_first(tmp_path: Path) -> None:
    """No lane waits at the end of a copied level (issue 30): while one lane still reads level 0, the other reads the
    coarser sources; with one lane the jobs run largest first, and the pyramid is the same as written level by level."""
    import threading

    rng = np.random.default_rng(3)
    full = rng.integers(0, 255, size=(1, 1024, 1024), dtype=np.uint8)
    half, quarter = bin_shrink(full), bin_shrink(bin_shrink(full))
    coarser_read = threading.Event()
    reads: list[tuple[str, int, int]] = []

    class Recorded(ArraySource):
        def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            reads.append((self.name, y0, x0))
            if self.name == "full" and (y0, y1, x0) == (896, 1024, 896):  # level 0's last block: the other lane goes on
                assert coarser_read.wait(timeout=20), "the other lane waited for the end of level 0"
            elif self.name != "full":
                coarser_read.set()
            return super().read(y0, y1, x0, x1)

    def sources() -> dict[float, ArraySource]:
        return {0.5: Recorded(full, name="full"), 1.0: Recorded(half, name="half"), 2.0: Recorded(quarter, name="quarter")}

    stored = []
    for lanes in (2, 1):
        reads.clear()
        coarser_read.clear()
        options = WriteOptions(chunk=64, shard=128, max_top_size=64, codec_threads=lanes)
        write_image(tmp_path / f"{lanes}.zarr", "x/images/T", sources(), options=options)
        group = zarr.open_group(tmp_path / f"{lanes}.zarr/x/images/T", mode="r")
        stored.append({name: group[name][...] for name in sorted(group.array_keys())})
    # one lane, after the compression sample: the chain's subtree (a 512 px span: four blocks of the quarter level), then
    # the blocks of the copied levels
    assert [name for name, *_ in reads[-84:]] == ["quarter"] * 4 + ["full"] * 64 + ["half"] * 16
    assert stored[0].keys() == stored[1].keys() and len(stored[0]) == 5
    for name, level in zip(sorted(stored[0]), [full, half, quarter, bin_shrink(quarter), bin_shrink(bin_shrink(quarter))]):
        np.testing.assert_array_equal(stored[0][name], stored[1][name], err_msg=name)
        np.testing.assert_array_equal(stored[0][name], level, err_msg=name)
