"""Window reads through every engine, against numpy slicing of the written data.

Real stores on disk (and in fsspec memory / a moto S3 server); forked and
spawned children prove the fork-safety rules of ``spora_zarr.process``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import time
import uuid

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from spora_zarr import process
from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.read.engines import direct as _direct
from spora_zarr.read.levels import ENGINES, LevelReader, default_engine, limit_codec_threads, open_level
from spora_zarr.store.location import Location

ARRAY = "imc/images/T1/1_0mpp"
SHAPE = (5, 1000, 777)
JOIN_TIMEOUT = 60


def _write(location: Location, path: str, data: np.ndarray, chunk: int = 112, shard: int = 896) -> None:
    lead = data.shape[:-2]
    array = zarr.create_array(
        location.zarr_store(),
        name=path,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(*lead, chunk, chunk),
        shards=(*lead, shard, shard),
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    )
    array[...] = data


def _data() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 2**16, size=SHAPE, dtype=np.uint16)


def _windows(seed: int = 0, count: int = 24) -> list[tuple[int, int, int, int, list[int] | None]]:
    """Random windows, edge windows that get clipped, and channel selections in any order."""
    ny, nx = SHAPE[1:]
    fixed = [
        (0, 0, ny, nx, None),  # the whole array
        (-50, -30, 224, 224, None),  # clipped top-left
        (ny - 100, nx - 60, 224, 224, [4, 0, 2]),  # clipped bottom-right
        (880, 100, 40, 224, [1, 2, 3]),  # across the shard boundary at y=896
        (111, 111, 2, 2, [3]),  # 2x2 across four chunks
        (999, 776, 1, 1, None),  # the last pixel
        (-500, 200, 501, 10, [2, 2, 0]),  # one row survives, repeated channel
        (100, -1000, 50, 1200, [0, 1, 2, 3, 4]),  # wider than the array
    ]
    rng = np.random.default_rng(seed)
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(1, 300, 2))
        y0 = int(rng.integers(-height + 1, ny))
        x0 = int(rng.integers(-width + 1, nx))
        channels = None if rng.random() < 0.3 else [int(c) for c in rng.permutation(5)[: rng.integers(1, 6)]]
        fixed.append((y0, x0, height, width, channels))
    return fixed


def _expected(data: np.ndarray, window: tuple[int, int, int, int, list[int] | None]) -> np.ndarray:
    y0, x0, height, width, channels = window
    out = data[..., max(y0, 0) : y0 + height, max(x0, 0) : x0 + width]
    return out if channels is None else out[channels]


def _check(reader: LevelReader, data: np.ndarray, windows) -> None:
    for window in windows:
        got = reader.read(*window[:4], channels=window[4])
        want = _expected(data, window)
        assert got.dtype == data.dtype, window
        assert got.shape == want.shape, window
        np.testing.assert_array_equal(got, want, err_msg=str(window))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Location:
    location = Location.parse(tmp_path_factory.mktemp("engines") / "cohort.zarr")
    _write(location, ARRAY, _data())
    return location


# ---------------------------------------------------------------- in process


@pytest.mark.parametrize("engine", ENGINES)
def test_converter_layout_at_scale(store: Location, engine: str) -> None:
    """The converter's chunk and shard sizes (112, 896), windows across the shard boundary; smaller arrays of
    every dtype are conformance cases (tests/test_engine_conformance.py)."""
    reader = open_level(store, ARRAY, engine=engine)
    assert isinstance(reader, LevelReader)
    assert reader.shape == SHAPE and reader.dtype == np.uint16 and reader.engine == engine
    _check(reader, _data(), _windows(seed=ENGINES.index(engine), count=4))


@pytest.mark.parametrize("engine", ENGINES)
def test_leading_axes_beyond_channels(tmp_path, engine: str) -> None:
    location = Location.parse(tmp_path / "four.zarr")
    data = np.random.default_rng(4).integers(0, 255, size=(3, 2, 130, 90), dtype=np.uint8)
    _write(location, "img", data, chunk=32, shard=64)
    reader = open_level(location, "img", engine=engine)
    np.testing.assert_array_equal(reader.read(100, -5, 64, 64, channels=[2, 0]), data[[2, 0], :, 100:130, 0:59])
    np.testing.assert_array_equal(reader.read(0, 0, 500, 500), data)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_big_endian_shard_index_is_read_not_called_corrupt(tmp_path, engine: str) -> None:
    """zarr v3 lets a shard index be big-endian; the index checks parse little-endian pairs, so they leave such an
    array to the engine that reads it (every engine called it corrupt before)."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    location = Location.parse(tmp_path / "big.zarr")
    data = np.random.default_rng(5).integers(0, 2**16, size=(2, 70, 50), dtype=np.uint16)
    index = [BytesCodec(endian="big"), Crc32cCodec()]
    array = zarr.create_array(
        location.zarr_store(),
        name="img",
        shape=data.shape,
        dtype=data.dtype,
        chunks=(2, 32, 32),
        serializer=ShardingCodec(chunk_shape=(2, 16, 16), codecs=[BytesCodec()], index_codecs=index),
        compressors=None,
        dimension_names=("c", "y", "x"),
    )
    array[...] = data
    reader = open_level(location, "img", engine=engine)
    np.testing.assert_array_equal(reader.read(0, 0, 70, 50), data)
    np.testing.assert_array_equal(reader.read(20, 10, 30, 25, channels=[1]), data[[1], 20:50, 10:35])


@pytest.mark.parametrize("engine", ENGINES)
def test_read_into_out(store: Location, engine: str) -> None:
    """``out=``: the same pixels written into a given array (or a strided view of a larger one), which is returned."""
    reader, data = open_level(store, ARRAY, engine=engine), _data()
    for window in _windows(seed=5, count=6):
        want = _expected(data, window)
        padded = np.full((want.shape[0], want.shape[1] + 3, want.shape[2] + 5), 7, np.uint16)
        view = padded[:, 2 : 2 + want.shape[1], 4 : 4 + want.shape[2]]
        assert reader.read(*window[:4], channels=window[4], out=view) is view
        np.testing.assert_array_equal(view, want, err_msg=str(window))
        assert (padded[:, :2] == 7).all() and (padded[:, :, :4] == 7).all() and (padded[:, -1] == 7).all(), window
    strided = np.zeros((5, 10, 20), np.uint16)[..., ::2]  # a last axis that is not contiguous
    np.testing.assert_array_equal(reader.read(3, 4, 10, 10, out=strided), data[:, 3:13, 4:14])
    with pytest.raises(InvalidInputError, match=r"must be uint16 \(5, 10, 10\), got float32"):
        reader.read(0, 0, 10, 10, out=np.zeros((5, 10, 10), np.float32))
    with pytest.raises(InvalidInputError, match=r"must be uint16 \(2, 10, 10\), got uint16 \(5, 10, 10\)"):
        reader.read(0, 0, 10, 10, channels=[1, 0], out=np.zeros((5, 10, 10), np.uint16))


def test_cache_returns_the_same_reader(store: Location) -> None:
    reader = open_level(store, ARRAY, engine="zarr")
    assert open_level(str(store), "/" + ARRAY + "/", engine="zarr") is reader
    assert open_level(store, ARRAY, engine="zarrs") is not reader
    assert pickle.loads(pickle.dumps(reader)) is reader  # readers pickle to a reopen
    assert open_level(store, ARRAY) is open_level(store, ARRAY)


def test_shard_index_cache_is_bounded_by_bytes(store: Location, monkeypatch: pytest.MonkeyPatch) -> None:
    from spora_zarr.read.engines import shards

    monkeypatch.setattr(shards, "_CACHE", type(shards._CACHE)())
    monkeypatch.setattr(shards, "_CACHED", [0])
    entry = shards._ENTRY_BYTES + 16 * 64  # a 896² shard of 112² chunks: 64 chunks
    monkeypatch.setattr(shards, "_CACHE_BYTES", 2 * entry)  # two of the array's four shard files
    reader = open_level(store.root, ARRAY, engine="direct")
    data = _data()
    _check(reader, data, [(0, 0, SHAPE[1], SHAPE[2], None)] * 2)  # every shard, twice: evicted indexes read again
    assert len(shards._CACHE) == 2 and shards._CACHED[0] == 2 * entry
    assert sum(shards._ENTRY_BYTES + table.entries.nbytes for table in shards._CACHE.values()) == shards._CACHED[0]


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_windows_raise(store: Location, engine: str) -> None:
    reader = open_level(store, ARRAY, engine=engine)
    for window in [(1000, 0, 10, 10), (0, 777, 10, 10), (-10, 0, 10, 10), (0, -300, 50, 300), (5, 5, 0, 10)]:
        with pytest.raises(InvalidInputError) as info:
            reader.read(*window)
        message = str(info.value)
        assert ARRAY in message and str(SHAPE) in message and f"y={window[0]}:" in message
    for channels in ([5], [-1], [], [0.5], [[0, 1]]):
        with pytest.raises(InvalidInputError, match="channel"):
            reader.read(0, 0, 10, 10, channels=channels)


def test_missing_array_and_unknown_engine(store: Location) -> None:
    with pytest.raises(NotFoundError, match="no array"):
        open_level(store, "imc/images/T9/1_0mpp")
    with pytest.raises(InvalidInputError, match="not an array"):
        open_level(store, "imc/images/T1")
    with pytest.raises(InvalidInputError, match="unknown read engine"):
        open_level(store, ARRAY, engine="dask")


def test_memory_location(caplog: pytest.LogCaptureFixture) -> None:
    location = Location.parse(f"memory://spora-engines-{uuid.uuid4().hex}")
    data = _data()
    _write(location, ARRAY, data)
    try:
        assert default_engine(location) in ("zarrs", "zarr")
        with caplog.at_level(logging.WARNING, logger="spora_zarr"):
            for engine in (None, "zarrs", "zarr", "tensorstore"):
                reader = open_level(location, ARRAY, engine=engine)
                _check(reader, data, _windows(seed=3, count=6))
                assert reader.engine == "zarr"  # zarrs cannot read fsspec memory stores
        assert "reads local stores only" in caplog.text
    finally:
        location.fs().rm(location.fs_path(), recursive=True)


def test_default_engine_for_local_stores(store: Location) -> None:
    assert default_engine(store) == "direct" == default_engine()
    assert open_level(store, ARRAY).engine == "direct"


def test_limit_codec_threads_rejects_nonsense() -> None:
    for n in (0, -1, 1.5, True, "2"):
        with pytest.raises(InvalidInputError):
            limit_codec_threads(n)


# ----------------------------------------------------------- child processes
# These run in forked or spawned children, so they live at module level.


_CARRIED: LevelReader | None = None  # set in the parent before a fork: the child inherits it


def _child_read(location, windows, engine: str | None = None, carried: bool = False):
    """Read ``windows``; return the engine that served them and the arrays."""
    reader = _CARRIED if carried else open_level(location, ARRAY, engine=engine)
    arrays = [reader.read(*w[:4], channels=w[4]) for w in windows]
    if reader._pid != os.getpid():  # a reader from the parent reads through this process's own
        reader = open_level(reader.location, reader.path, engine=reader._requested)
    return reader.engine, arrays


def _forked(location, windows, engine: str | None = None, carry: LevelReader | None = None):
    """Read ``windows`` in a forked child (through ``carry``, inherited, if given); a hang fails on the timeout."""
    global _CARRIED
    _CARRIED = carry
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            return pool.apply_async(_child_read, (location, windows, engine, carry is not None)).get(JOIN_TIMEOUT)
    finally:
        _CARRIED = None


def _run_into(queue, function, args) -> None:
    try:
        queue.put(("ok", function(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the test process
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _spawned(function, *args):
    """Run ``function`` in a fresh (spawned, not daemonic: it may fork) process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_into, args=(queue, function, args))
    process.start()
    try:
        status, result = queue.get(timeout=2 * JOIN_TIMEOUT)
    finally:
        process.join(timeout=JOIN_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
    assert status == "ok", result
    return result


def _after_tensorstore_parent(root: str, windows):
    """In a fresh process: read with tensorstore, then fork children."""
    reader = open_level(root, ARRAY, engine="tensorstore")
    reader.read(0, 0, 224, 224)
    assert process.used_by("tensorstore") == os.getpid()
    return {
        "default": _forked(root, windows),
        "explicit": _forked(root, windows, "tensorstore"),
        "carried": _forked(root, windows, carry=reader),
    }


def _after_zarrs_parent(root: str, windows):
    """In a fresh process: open a tensorstore reader without reading, read with zarrs, then fork."""
    open_level(root, ARRAY, engine="tensorstore")  # opening alone starts no tensorstore threads
    open_level(root, ARRAY, engine="zarrs").read(0, 0, 224, 224)
    assert process.used_by("tensorstore") is None and process.used_by("zarrs") == os.getpid()
    return {
        "default": _forked(root, windows),
        "tensorstore": _forked(root, windows, "tensorstore"),
        "zarrs": _forked(root, windows, "zarrs"),
    }


def _after_direct_parent(root: str, windows):
    """In a fresh process: read with the direct engine (its helper threads running), then fork."""
    reader = open_level(root, ARRAY)
    reader.read(0, 0, 500, 500)
    assert reader.engine == "direct"
    # A helper names itself when it first runs, which a loaded machine may delay past the read.
    deadline = time.monotonic() + 10
    while process.thread_names().count("spora_window") < _direct._THREADS - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.thread_names().count("spora_window") == _direct._THREADS - 1
    return {"default": _forked(root, windows), "carried": _forked(root, windows, carry=reader)}


def _limited_reads(root: str, windows):
    limit_codec_threads(1)
    return {engine: _child_read(root, windows, engine) for engine in ENGINES}


@pytest.mark.timeout(3 * JOIN_TIMEOUT)
def test_fork_after_tensorstore_read_in_this_process(store: Location) -> None:
    data, windows = _data(), _windows(seed=5, count=8)
    reader = open_level(store, ARRAY, engine="tensorstore")
    reader.read(0, 0, 224, 224)
    expected_child = "direct"
    for engine, arrays in (_forked(store.root, windows), _forked(store.root, windows, "tensorstore")):
        assert engine == expected_child
        for window, got in zip(windows, arrays, strict=True):
            np.testing.assert_array_equal(got, _expected(data, window))
    engine, arrays = _forked(store.root, windows, carry=reader)  # the parent's reader, inherited
    assert engine == expected_child
    for window, got in zip(windows, arrays, strict=True):
        np.testing.assert_array_equal(got, _expected(data, window))


def _assert_all_windows(data: np.ndarray, windows: list, results: dict) -> None:
    """Every engine's reads in ``results`` equal numpy slicing of ``data``."""
    for _, arrays in results.values():
        for window, got in zip(windows, arrays, strict=True):
            np.testing.assert_array_equal(got, _expected(data, window))


@pytest.mark.timeout(3 * JOIN_TIMEOUT)
def test_fork_child_of_tensorstore_parent_reads_direct(store: Location) -> None:
    data, windows = _data(), _windows(seed=6, count=8)
    results = _spawned(_after_tensorstore_parent, store.root, windows)
    assert {name: engine for name, (engine, _) in results.items()} == dict.fromkeys(results, "direct")
    _assert_all_windows(data, windows, results)


@pytest.mark.timeout(3 * JOIN_TIMEOUT)
def test_fork_child_of_zarrs_parent_may_use_tensorstore(store: Location) -> None:
    data, windows = _data(), _windows(seed=8, count=8)
    results = _spawned(_after_zarrs_parent, store.root, windows)
    assert {name: engine for name, (engine, _) in results.items()} == {
        "default": "direct",
        "tensorstore": "tensorstore",
        "zarrs": "direct",  # zarrs would hang here: the default engine reads instead
    }
    _assert_all_windows(data, windows, results)


@pytest.mark.timeout(3 * JOIN_TIMEOUT)
def test_fork_child_of_direct_parent_reads_direct(store: Location) -> None:
    data, windows = _data(), _windows(seed=12, count=8)
    results = _spawned(_after_direct_parent, store.root, windows)
    assert {name: engine for name, (engine, _) in results.items()} == dict.fromkeys(results, "direct")
    _assert_all_windows(data, windows, results)


@pytest.mark.timeout(3 * JOIN_TIMEOUT)
def test_spawn_child_with_limited_threads(store: Location) -> None:
    data, windows = _data(), _windows(seed=9, count=8)
    results = _spawned(_limited_reads, store.root, windows)
    assert {name: engine for name, (engine, _) in results.items()} == {e: e for e in ENGINES}
    _assert_all_windows(data, windows, results)


@pytest.mark.timeout(3 * JOIN_TIMEOUT)
def test_fork_after_s3_read() -> None:
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
        }
        location = Location.parse("s3://spora-engines/cohort.zarr", options)
        location.fs().mkdir("spora-engines")
        data, windows = _data(), _windows(seed=10, count=4)
        _write(location, ARRAY, data, shard=448)
        reader = open_level(location, ARRAY)  # zarrs does not read s3fs stores: zarr-python's pipeline
        _check(reader, data, windows)  # starts the async filesystem in this process
        assert reader.engine == "zarr"
        engine, arrays = _forked(location, windows, carry=reader)
        assert engine == "zarr"
        for window, got in zip(windows, arrays, strict=True):
            np.testing.assert_array_equal(got, _expected(data, window))
    finally:
        server.stop()
