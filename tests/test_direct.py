"""The direct engine (``spora_zarr._direct``) on real zarr v3 arrays written by zarr-python.

Every layout it claims to read is compared with numpy slicing of the written
data; every layout it does not read goes to the next engine; damaged shards
give a StoreError naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec, TransposeCodec, ZstdCodec

from spora_zarr.read import levels as _engines
from spora_zarr.read.engines import direct as _direct
from spora_zarr.read.levels import open_level
from spora_zarr.store.location import Location
from spora_zarr.errors import StoreError

SHAPE = (3, 300, 250)


def _content(dtype: str) -> np.ndarray:
    """Random values with fill-valued squares, so some chunks and one whole shard are never written."""
    rng = np.random.default_rng(1)
    if dtype == "bool":
        data = rng.random(SHAPE) < 0.5
    elif np.dtype(dtype).kind == "f":
        data = rng.normal(size=SHAPE).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=SHAPE, endpoint=True, dtype=dtype)
    fill = np.asarray(_fill(dtype), dtype=dtype)
    data[:, :128, :128] = fill  # the whole first shard
    data[:, 160:192, 192:224] = fill  # one inner chunk
    return data


def _fill(dtype: str):
    return True if dtype == "bool" else 7


def _write(tmp_path, data: np.ndarray, **layout) -> Location:
    location = Location.parse(tmp_path / "direct.zarr")
    array = zarr.create_array(
        location.zarr_store(), name="img", shape=data.shape, dtype=data.dtype, fill_value=_fill(str(data.dtype)), overwrite=True, **layout
    )
    array[...] = data
    return location


def _windows() -> list[tuple[int, int, int, int, list[int] | None]]:
    rng = np.random.default_rng(2)
    windows = [(0, 0, 300, 250, None), (0, 0, 128, 128, None), (250, 200, 224, 224, [2, 0]), (100, 100, 1, 1, [1])]
    for _ in range(20):
        height, width = (int(v) for v in rng.integers(1, 120, 2))
        y0, x0 = int(rng.integers(1 - height, 300)), int(rng.integers(1 - width, 250))
        windows.append((y0, x0, height, width, None))
    return windows


def _check_reads(location: Location, data: np.ndarray, engine: str = "direct") -> None:
    reader = open_level(location, "img", engine=engine)
    assert reader.engine == engine
    for y0, x0, height, width, channels in _windows():
        want = data[:, max(y0, 0) : y0 + height, max(x0, 0) : x0 + width]
        want = want if channels is None else want[channels]
        got = reader.read(y0, x0, height, width, channels=channels)
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, want, err_msg=str((y0, x0, height, width, channels)))


LAYOUTS = {
    "sharded lz4 shuffle": {"chunks": (3, 32, 32), "shards": (3, 128, 128), "compressors": BloscCodec(cname="lz4", shuffle="shuffle")},
    "sharded lz4 bitshuffle": {"chunks": (3, 32, 32), "shards": (3, 128, 128), "compressors": BloscCodec(cname="lz4", shuffle="bitshuffle")},
    "sharded zstd in blosc": {"chunks": (1, 50, 40), "shards": (3, 100, 120), "compressors": BloscCodec(cname="zstd", clevel=3)},
    "sharded uncompressed": {"chunks": (3, 32, 32), "shards": (3, 128, 128), "compressors": None},
    "unsharded blosc": {"chunks": (3, 64, 64), "compressors": BloscCodec(cname="lz4")},
    "unsharded uncompressed": {"chunks": (2, 64, 48), "compressors": None},
    "shard index at the start": {
        "chunks": (3, 128, 128),
        "serializer": ShardingCodec(chunk_shape=(3, 32, 32), codecs=[BytesCodec(), BloscCodec(cname="lz4")], index_location="start"),
        "compressors": None,
    },
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts_read_pixel_exact(tmp_path, name: str) -> None:
    data = _content("uint16")
    _check_reads(_write(tmp_path, data, **LAYOUTS[name]), data)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "int64", "float32", "float64", "bool"])
def test_data_types_read_pixel_exact(tmp_path, dtype: str) -> None:
    data = _content(dtype)
    _check_reads(_write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"]), data)


def test_missing_chunks_and_shards_read_as_fill_value(tmp_path) -> None:
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    assert not os.path.exists(location.fs_path("img", "c", "0", "0", "0"))  # the fill-only shard
    window = open_level(location, "img", engine="direct").read(0, 0, 130, 130)
    assert (window[:, :128, :128] == 7).all()
    np.testing.assert_array_equal(window, data[:, :130, :130])


@pytest.fixture
def helpers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Three threads per window (two helpers) on every window, however small."""
    threads = _direct._THREADS
    _direct.set_threads(3)
    monkeypatch.setattr(_direct, "PARALLEL_MIN_BYTES", 0)
    yield
    _direct.set_threads(threads)


@pytest.mark.parametrize("name", ["sharded lz4 shuffle", "unsharded uncompressed"])
def test_windows_shared_with_helper_threads(tmp_path, helpers, name: str) -> None:
    data = _content("uint16")
    _check_reads(_write(tmp_path, data, **LAYOUTS[name]), data)
    assert _engines._thread_names().count("spora_window") >= 2


def test_big_windows_are_read_in_parts(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window over more shard files than one call opens is split at shard boundaries, pixel-exact."""
    monkeypatch.setattr(_direct, "_MAX_FILES_PER_CALL", 2)
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    fds = _open_fds()
    _check_reads(location, data)
    assert _open_fds() == fds


def test_one_thread(tmp_path) -> None:
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    threads = _direct._THREADS
    _direct.set_threads(1)
    try:
        _check_reads(location, data)
    finally:
        _direct.set_threads(threads)


def test_concurrent_reads_from_python_threads(tmp_path, helpers) -> None:
    """Windows read at once from several Python threads (one of them borrows the helpers) all come out right."""
    import concurrent.futures

    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    reader = open_level(location, "img", engine="direct")
    windows = _windows() * 4

    def read(window):
        y0, x0, height, width, channels = window
        return reader.read(y0, x0, height, width, channels=channels)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(read, windows))
    for (y0, x0, height, width, channels), got in zip(windows, results):
        want = data[:, max(y0, 0) : y0 + height, max(x0, 0) : x0 + width]
        np.testing.assert_array_equal(got, want if channels is None else want[channels])


LAYOUTS_ELSEWHERE = {
    "zstd codec": {"chunks": (3, 64, 64), "compressors": ZstdCodec(level=1)},
    "transpose": {"chunks": (3, 64, 64), "filters": TransposeCodec(order=(0, 2, 1)), "compressors": BloscCodec(cname="lz4")},
    "big-endian bytes": {"chunks": (3, 64, 64), "serializer": BytesCodec(endian="big"), "compressors": None},
}


@pytest.mark.parametrize("name", LAYOUTS_ELSEWHERE)
def test_other_layouts_go_to_the_next_engine(tmp_path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS_ELSEWHERE[name])
    with caplog.at_level(logging.WARNING, logger="spora_zarr"):
        assert open_level(location, "img").engine == "tensorstore"
        assert not caplog.text  # the default engine moves on silently
        reader = open_level(location, "img", engine="direct")
    assert reader.engine == "tensorstore"
    assert "read engine 'direct' does not read" in caplog.text and "using 'tensorstore'" in caplog.text
    _check_reads(location, data, engine="tensorstore")
    with pytest.raises(_direct.UnsupportedLayout):
        _direct.DirectArray(location.fs_path("img"), zarr.open_array(location.zarr_store(), path="img").metadata)


def _damage(path: str, offset: int, replacement: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        fh.write(replacement)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_damaged_shards_raise_store_errors(tmp_path, helpers) -> None:
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    reader = open_level(location, "img", engine="direct")
    shard = location.fs_path("img", "c", "0", "1", "1")  # y 128:256, x 128:256
    fds = _open_fds()

    _damage(shard, -3, b"\x00\x00\x00")  # the index checksum
    with pytest.raises(StoreError, match="checksum of its chunk index") as info:
        reader.read(130, 130, 10, 10)
    assert shard in str(info.value)

    _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])  # written again: the cached reader sees it
    _check_reads(location, data)
    _damage(shard, 0, b"\xff" * 16)  # the blosc header of the first chunk
    for window in [(128, 128, 10, 10), (100, 100, 120, 120)]:  # one chunk; 16 chunks over three threads
        with pytest.raises(StoreError, match="cannot decode|decodes to") as info:
            reader.read(*window)
        assert shard in str(info.value)

    with open(shard, "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(StoreError, match="too short") as info:
        reader.read(128, 128, 10, 10)
    assert shard in str(info.value)
    assert _open_fds() == fds  # failed reads close what they opened
    np.testing.assert_array_equal(reader.read(0, 0, 100, 100), data[:, :100, :100])  # other shards still read


def test_rewritten_array_is_read_anew(tmp_path) -> None:
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    _check_reads(location, data)  # caches the shard indexes
    other = (data // 3).astype(np.uint16)
    _write(tmp_path, other, **LAYOUTS["sharded lz4 shuffle"])
    _check_reads(location, other)
