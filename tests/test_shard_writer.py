"""Whole shards written by the writer itself (write/shards.py): the same pixels and layout as zarr writes."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from spora_zarr import WriteOptions, write_image, write_labels
from spora_zarr.read.engines.direct import DirectArray
from spora_zarr.sources import ArraySource
from spora_zarr.store.location import Location
from spora_zarr.write import shards
from spora_zarr.write.shards import ShardWriter

LZ4 = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]

#: name, shape, chunks, shards, dtype, compressed, the axis a plane index drops (None: none)
LAYOUTS = [
    ("multiplex", (5, 300, 250), (5, 32, 32), (5, 128, 128), "uint16", True, None),
    ("rgb", (3, 260, 300), (3, 32, 32), (3, 64, 64), "uint8", False, None),
    ("labels", (200, 190), (16, 16), (64, 64), "uint32", True, None),
    ("stack", (2, 3, 100, 90), (2, 1, 16, 16), (2, 1, 32, 32), "float32", True, 1),
    ("odd_chunks", (3, 50, 70), (3, 7, 9), (3, 21, 27), "int16", False, None),
]


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _create(location: Location, name: str, shape: Any, chunks: Any, shards_: Any, dtype: str, compressed: bool) -> Any:
    return zarr.create_array(
        location.zarr_store(),
        name=name,
        shape=shape,
        chunks=chunks,
        shards=shards_,
        dtype=dtype,
        fill_value=0,
        compressors=LZ4 if compressed else None,
        config={"write_empty_chunks": False},
    )


@pytest.mark.parametrize(("name", "shape", "chunks", "shard", "dtype", "compressed", "plane_axis"), LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_whole_shards_read_back_exactly_and_lay_out_as_zarr_writes_them(
    tmp_path: Path, name: str, shape: Any, chunks: Any, shard: Any, dtype: str, compressed: bool, plane_axis: int | None
) -> None:
    location = Location.parse(str(tmp_path))
    data = np.random.default_rng(7).integers(0, 200, size=shape).astype(dtype)
    data[..., : shard[-2], : shard[-1]] = 0  # a shard of fill value only: no file
    data[..., shard[-2] : shard[-2] + chunks[-2], : chunks[-1]] = 0  # a chunk of fill value only: left out of its shard
    ours, theirs = (_create(location, f"{name}/{who}", shape, chunks, shard, dtype, compressed) for who in ("ours", "theirs"))
    theirs[...] = data
    writer = ShardWriter.for_array(location, ours)
    assert writer is not None
    for starts in itertools.product(*(range(0, n, s) for n, s in zip(shape, shard, strict=True))):
        region: tuple[int | slice, ...] = tuple(slice(a, min(a + s, n)) for a, s, n in zip(starts, shard, shape, strict=True))
        block = data[region]
        if plane_axis is not None:  # a plane of a stack, by its index, as the streamer hands it over
            region = (*region[:plane_axis], starts[plane_axis], *region[plane_axis + 1 :])
            block = np.take(block, 0, axis=plane_axis)
        assert writer.write(region, block)
    read = zarr.open_array(location.zarr_store(read_only=True), path=f"{name}/ours")
    np.testing.assert_array_equal(read[...], data)
    assert _files(tmp_path / name / "ours") == _files(tmp_path / name / "theirs")
    for key in _files(tmp_path / name / "ours"):  # each shard holds the same chunks, in the same index
        if key == "zarr.json":
            continue
        for who in ("ours", "theirs"):
            raw = (tmp_path / name / who / key).read_bytes()
            count = int(np.prod([s // c for s, c in zip(shard, chunks, strict=True)]))
            entries = np.frombuffer(raw[-(16 * count + 4) : -4], dtype="<u8").reshape(-1, 2)
            missing = entries[:, 0] == 2**64 - 1
            if who == "ours":
                ours_missing = missing
            else:
                np.testing.assert_array_equal(ours_missing, missing)
    direct = DirectArray(location.fs_path(f"{name}/ours"), read.metadata)  # the compiled reader checks every index
    np.testing.assert_array_equal(direct.read([slice(0, n) for n in shape]), data)


def test_a_region_that_is_not_one_whole_shard_writes_nothing(tmp_path: Path) -> None:
    location = Location.parse(str(tmp_path))
    array = _create(location, "a", (3, 100, 100), (3, 16, 16), (3, 32, 32), "uint8", True)
    writer = ShardWriter.for_array(location, array)
    assert writer is not None
    block = np.ones((3, 16, 32), np.uint8)
    assert not writer.write((slice(None), slice(0, 16), slice(0, 32)), block)  # half a shard
    assert not writer.write((slice(None), slice(16, 48), slice(0, 32)), np.ones((3, 32, 32), np.uint8))  # off the grid
    assert not writer.write((slice(None), slice(0, 32, 2), slice(0, 32)), block)  # strided
    assert _files(tmp_path / "a") == ["zarr.json"]


def test_a_shard_rewritten_with_fill_value_only_loses_its_old_file(tmp_path: Path) -> None:
    location = Location.parse(str(tmp_path))
    array = _create(location, "a", (1, 64, 64), (1, 16, 16), (1, 32, 32), "uint16", False)
    writer = ShardWriter.for_array(location, array)
    assert writer is not None
    region = (slice(None), slice(0, 32), slice(32, 64))
    assert writer.write(region, np.full((1, 32, 32), 9, np.uint16))
    assert _files(tmp_path / "a") == ["c/0/0/1", "zarr.json"]
    assert writer.write(region, np.zeros((1, 32, 32), np.uint16))
    assert _files(tmp_path / "a") == ["zarr.json"]
    assert not zarr.open_array(location.zarr_store(), path="a")[...].any()


def test_arrays_in_other_layouts_are_left_to_zarr(tmp_path: Path) -> None:
    location = Location.parse(str(tmp_path))
    store = location.zarr_store()
    unsharded = zarr.create_array(store, name="u", shape=(64, 64), chunks=(16, 16), dtype="uint8", fill_value=0)
    filled = zarr.create_array(store, name="f", shape=(64, 64), chunks=(16, 16), shards=(32, 32), dtype="uint8", fill_value=3)
    zstd = zarr.create_array(
        store, name="z", shape=(64, 64), chunks=(16, 16), shards=(32, 32), dtype="uint8", fill_value=0, compressors=ZstdCodec()
    )
    for array in (unsharded, filled, zstd):
        assert ShardWriter.for_array(location, array) is None


def test_the_writer_writes_every_block_of_a_local_image_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[bool] = []
    write = ShardWriter.write

    def counted(self: ShardWriter, region: tuple[int | slice, ...], block: np.ndarray) -> bool:
        written.append(write(self, region, block))
        return written[-1]

    monkeypatch.setattr(shards.ShardWriter, "write", counted)
    image = np.random.default_rng(3).integers(0, 4000, size=(4, 700, 500)).astype(np.uint16)
    mask = (np.arange(700 * 500).reshape(1, 700, 500) // 777 % 5).astype(np.uint32)
    options = WriteOptions(chunk=64, shard=256, max_top_size=128)
    write_image(tmp_path / "s.zarr", "imc/images/T", {1.0: ArraySource(image)}, options=options)
    write_labels(tmp_path / "s.zarr", "segmentations/cell/T", {1.0: ArraySource(mask)}, options=options)
    assert written and all(written)
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    np.testing.assert_array_equal(group["imc/images/T/1_0mpp"][...], image)
    np.testing.assert_array_equal(group["segmentations/cell/T/1_0mpp"][...], mask[0])


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_new_level_array_writes_its_own_document_and_no_group_above_it(where: str, tmp_path: Path) -> None:
    """zarr.create_array on the store writes a group document in every folder above the array (30 requests a group on
    an object store); the writer's arrays are made in memory and write their one document, then their chunks."""
    import fsspec

    from spora_zarr.store.arrays import new_array

    location = Location(str(tmp_path / "s.zarr") if where == "local" else f"memory://new_array_{tmp_path.name}/s.zarr")
    fs, root = location.fs(), location.fs_path("")  # find() may spell it with a leading "/" (memory://)
    settings: dict[str, Any] = dict(shape=(3, 90, 70), chunks=(3, 32, 32), shards=(3, 64, 64), dtype="uint16", fill_value=0)
    settings.update(compressors=LZ4, dimension_names=("c", "y", "x"), config={"write_empty_chunks": True})
    array = new_array(location, location.zarr_store(), ".spora_tmp/abc/imc/images/T1/1_0mpp", **settings)
    assert [f.split("s.zarr", 1)[1] for f in fs.find(root)] == ["/.spora_tmp/abc/imc/images/T1/1_0mpp/zarr.json"]

    block = np.random.default_rng(5).integers(0, 4000, (3, 90, 70), dtype=np.uint16)
    array[...] = block
    reopened = zarr.open_array(location.zarr_store(read_only=True), path=".spora_tmp/abc/imc/images/T1/1_0mpp", mode="r")
    np.testing.assert_array_equal(reopened[...], block)
    made = zarr.create_array(zarr.storage.MemoryStore(), name="x", **settings)
    assert reopened.metadata.to_dict() == made.metadata.to_dict()
    assert not any(f.endswith(("images/zarr.json", "T1/zarr.json")) for f in fs.find(root))
    if where == "memory":
        fsspec.filesystem("memory").rm(root, recursive=True)
