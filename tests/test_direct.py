"""The direct engine (``spora_zarr.read.engines.direct``) on real zarr v3 arrays written by zarr-python.

The converter's layouts, dtypes, missing chunks and damaged shards are
conformance cases (``tests/test_engine_conformance.py``). Here: the other
layouts it claims to read, compared with numpy slicing; layouts it does not
read going to the next engine; helper threads and split windows; the messages
of damaged shards; and the contract of the compiled loop, which refuses a bad
call instead of writing out of bounds (checked in child processes, so that a
crash fails a test rather than the session).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec, TransposeCodec, ZstdCodec

from spora_zarr import process
from spora_zarr.errors import InvalidInputError, StoreError
from spora_zarr.read.engines import direct as _direct
from spora_zarr.read.engines import shards
from spora_zarr.read.levels import open_level
from spora_zarr.store.location import Location
from spora_zarr.testing.engines import DAMAGES, damage_shard

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
    "sharded lz4 bitshuffle": {
        "chunks": (3, 32, 32),
        "shards": (3, 128, 128),
        "compressors": BloscCodec(cname="lz4", shuffle="bitshuffle"),
    },
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


@pytest.mark.parametrize("name", ["sharded lz4 bitshuffle", "sharded zstd in blosc", "unsharded uncompressed", "shard index at the start"])
def test_layouts_read_pixel_exact(tmp_path, name: str) -> None:
    """Layouts beyond the converter's (those are conformance cases), with a fill value of 7."""
    data = _content("uint16")
    _check_reads(_write(tmp_path, data, **LAYOUTS[name]), data)


@pytest.mark.parametrize("dtype", ["int64", "bool"])
def test_data_types_read_pixel_exact(tmp_path, dtype: str) -> None:
    """Data types the writer does not store (those are conformance cases)."""
    data = _content(dtype)
    _check_reads(_write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"]), data)


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
    assert process.thread_names().count("spora_window") >= 2


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
    for (y0, x0, height, width, channels), got in zip(windows, results, strict=True):
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


DIRECT_MESSAGES = {
    "truncated file": "checksum of its chunk index",
    "truncated index": "too short for its 260-byte index",
    "offset past the end": "its index points past the end of the file",
    "offset overflow": "its index points past the end of the file",
    "blosc size": "decodes to 12288 bytes, expected 6144",
    "bad index checksum": "checksum of its chunk index",
    "fifo": r"not a regular file \(a FIFO\)",
    "directory": r"not a regular file \(a directory\)",
    "dev zero": r"not a regular file \(a character device\)",
}


@pytest.mark.parametrize("case", DAMAGES)
def test_damaged_shard_messages(tmp_path, helpers, case: str) -> None:
    """Each damage names the shard file and says what is wrong; failed reads close their files; the rest still reads."""
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    reader = open_level(location, "img", engine="direct")
    _check_reads(location, data)  # caches the intact shard indexes
    shard = location.fs_path("img", "c", "0", "1", "1")  # y 128:256, x 128:256: 16 chunks
    damage_shard(Path(shard), case, chunks=16)
    fds = _open_fds()
    for window in [(130, 130, 10, 10), (100, 100, 120, 120)]:  # one chunk; 16 chunks over three threads
        with pytest.raises(StoreError, match=DIRECT_MESSAGES[case]) as info:
            reader.read(*window)
        assert shard in str(info.value)
    assert _open_fds() == fds
    np.testing.assert_array_equal(reader.read(0, 0, 100, 100), data[:, :100, :100])
    _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])  # written again: the cached reader sees it
    _check_reads(location, data)


def test_short_read_of_a_shard_index(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard index read that comes back short (the file shrank under the reader) is a StoreError, not a table."""
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    pread = os.pread
    monkeypatch.setattr(shards.os, "pread", lambda fd, n, offset: pread(fd, n, offset)[:-1])
    with pytest.raises(StoreError, match="read 259 bytes of its 260-byte index") as info:
        open_level(location, "img", engine="direct").read(130, 130, 10, 10)
    assert location.fs_path("img", "c", "0", "1", "1") in str(info.value)


def _array(location: Location) -> _direct.DirectArray:
    return _direct.DirectArray(location.fs_path("img"), zarr.open_array(location.zarr_store(), path="img").metadata)


def test_bad_indexes_are_refused(tmp_path) -> None:
    data = _content("uint16")
    array = _array(_write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"]))
    whole = (slice(0, 3), slice(0, 300), slice(0, 250))
    bad = [
        (slice(0, 3), slice(130, 140)),  # too few slices
        (*whole, slice(0, 1)),  # too many
        (slice(0, 3, 2), slice(0, 10), slice(0, 10)),  # a step
        (slice(0, 3), slice(-10, 10), slice(0, 10)),  # before the start
        (slice(0, 3), slice(290, 310), slice(0, 10)),  # past the end
        (slice(0, 4), slice(0, 1), slice(0, 1)),  # past the channels
        (slice(0, 3), slice(20, 10), slice(0, 10)),  # stop before start
        (0, slice(0, 10), slice(0, 10)),  # not a slice
        (slice(0, 3), slice(0.0, 10), slice(0, 10)),  # not an integer
        "window",
    ]
    for index in bad:
        with pytest.raises(InvalidInputError, match="cannot read") as info:
            array.read(index)  # type: ignore[arg-type]
        assert array.directory in str(info.value), index
    np.testing.assert_array_equal(array.read((slice(None), slice(None, 10), slice(np.int64(240), None))), data[:, :10, 240:])
    assert array.read((slice(0, 3), slice(5, 5), slice(0, 10))).shape == (3, 0, 10)


def _child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=120)


_WIDE_READS = """
    import sys, zarr
    from zarr.codecs import BloscCodec
    from spora_zarr.errors import InvalidInputError
    from spora_zarr.read.engines.direct import DirectArray
    array = zarr.create_array(
        sys.argv[1], shape=(3, 300, 1 << 24), chunks=(3, 32, 1 << 16), shards=(3, 128, 1 << 24), dtype="uint16", fill_value=0,
        compressors=BloscCodec(cname="lz4", shuffle="shuffle"),
    )
    direct = DirectArray(sys.argv[1], array.metadata)
    direct.read((slice(0, 1), slice(0, 1), slice(0, 1 << 24)))  # leaves a 16 Mi-element axis 2 in the call block
    try:
        direct.read((slice(0, 3), slice(130, 140)))  # used to fill (3, 10, 16 Mi) elements into a (3, 10) buffer
    except InvalidInputError as exc:
        print("refused:", exc)
"""


@pytest.mark.timeout(150)
def test_short_index_after_a_wide_read_is_refused_not_a_crash(tmp_path) -> None:
    done = _child(_WIDE_READS, str(tmp_path / "wide.zarr"))
    assert done.returncode == 0, f"exit {done.returncode} (a negative number is a signal):\n{done.stderr[-3000:]}"
    assert "refused:" in done.stdout and "wide.zarr" in done.stdout, done.stdout


_CONTRACT = """
    import ctypes, json, sys
    import numpy as np, zarr
    from zarr.codecs import BloscCodec
    from spora_zarr.errors import StoreError
    from spora_zarr.read.engines import direct
    written = zarr.create_array(
        sys.argv[1], shape=(3, 300, 250), chunks=(3, 32, 32), shards=(3, 128, 128), dtype="uint16", fill_value=0,
        compressors=BloscCodec(cname="lz4", shuffle="shuffle"),
    )
    written[:, 128:] = 1  # shards (0, 0, x) never written
    array = direct.DirectArray(sys.argv[1], written.metadata)
    array.read((slice(0, 3), slice(0, 300), slice(0, 250)))
    results = {}

    def python_side(name, out, starts, stops):  # past DirectArray.read's own checks
        try:
            array._read_into(out, starts, stops, out.nbytes)
            results[name] = None
        except StoreError as exc:
            results[name] = str(exc)

    python_side("stop past the array", np.empty((3, 182, 10), np.uint16), [0, 128, 0], [3, 310, 10])
    python_side("output too small", np.empty((3, 10, 10), np.uint16), [0, 0, 0], [3, 100, 100])

    files = [array._open(shard) for shard in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]]

    def loop(name, **fields):  # the call block as the loop sees it: y, x 100:164 over 2 x 2 shards
        call = direct._Call(4)
        ctypes.memmove(call.address, array._template, direct._WINDOW_BYTES)
        w, out = call.window, np.zeros((3, 64, 64), np.uint16)
        w.start[:3], w.stop[:3], w.shard_lo[:3], w.shard_count[:3] = (0, 100, 100), (3, 164, 164), (0, 0, 0), (1, 2, 2)
        w.out, w.out_bytes, w.out_stride[:3] = out.ctypes.data, out.nbytes, out.strides
        w.nfiles, w.fds, w.tables = 4, call.fds_address, call.tables_address
        for i, file in enumerate(files):
            call.fds[i], call.tables[i] = file.fd, file.table.address
        scratch = np.empty(array._scratch_stride, np.uint8)
        w.nthreads, w.scratch, w.scratch_bytes = 1, scratch.ctypes.data, scratch.nbytes
        for field, value in fields.items():
            if isinstance(value, tuple):
                getattr(w, field)[: len(value)] = value
            else:
                setattr(w, field, value)
        code = array._read_window(call.pointer)
        results[name] = [code, w.error_code, w.error_detail]

    loop("as passed")
    loop("fewer files", nfiles=3)
    loop("shard box too small", shard_count=(1, 1, 2))
    loop("shard box elsewhere", shard_lo=(0, 1, 0))
    loop("short chunk tables", table_slots=4)
    loop("short output", out_bytes=3 * 64 * 64 * 2 - 2)
    loop("strided last axis", out_stride=(8192, 128, 4))
    loop("start past stop", start=(0, 170, 100))
    loop("stop past the shape", shape=(3, 150, 250))
    loop("small scratch", scratch_bytes=100)
    loop("two threads, one scratch block", nthreads=2)
    loop("nine axes", ndim=9)
    print(json.dumps(results))
"""

_ARRAY, _WINDOW, _OUTPUT, _SHARD, _SLOT, _SCRATCH = 1, 2, 3, 4, 5, 6  # SPORA_BAD_* of _window.c


@pytest.mark.timeout(150)
def test_the_loop_checks_its_contract(tmp_path) -> None:
    """Calls that break the contract, past the Python checks or straight into the loop, are errors, not writes out of bounds."""
    where = str(tmp_path / "contract.zarr")
    done = _child(_CONTRACT, where)
    assert done.returncode == 0, f"exit {done.returncode} (a negative number is a signal):\n{done.stderr[-3000:]}"
    results = json.loads(done.stdout)
    assert "the window is not inside the array" in results["stop past the array"]
    assert "a copy would fall outside the output buffer" in results["output too small"]
    assert where in results["output too small"]
    contract = 5  # SPORA_ERR_CONTRACT
    assert results.pop("as passed") == [0, 0, 0]
    assert results.pop("fewer files") == [-1, contract, _SHARD]
    assert results.pop("shard box too small") == [-1, contract, _SHARD]
    assert results.pop("shard box elsewhere") == [-1, contract, _SHARD]
    assert results.pop("short chunk tables") == [-1, contract, _SLOT]
    assert results.pop("short output") == [-1, contract, _OUTPUT]
    assert results.pop("strided last axis") == [-1, contract, _OUTPUT]
    assert results.pop("start past stop") == [-1, contract, _WINDOW]
    assert results.pop("stop past the shape") == [-1, contract, _WINDOW]
    assert results.pop("small scratch") == [-1, contract, _SCRATCH]
    assert results.pop("two threads, one scratch block") == [-1, contract, _SCRATCH]
    assert results.pop("nine axes") == [-1, contract, _ARRAY]


def test_a_loop_built_for_another_call_block_is_not_used(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled loop whose struct size differs from the ctypes layout is refused; reads go to the next engine."""
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    monkeypatch.setattr(_direct, "_WINDOW_BYTES", _direct._WINDOW_BYTES + 8)
    _direct._native.cache_clear()
    try:
        with pytest.raises(_direct.UnsupportedLayout, match="call block"):
            _array(location)
        assert open_level(location, "img").engine == "tensorstore"
    finally:
        monkeypatch.undo()
        _direct._native.cache_clear()
    _check_reads(location, data, engine="tensorstore")


def test_rewritten_array_is_read_anew(tmp_path) -> None:
    data = _content("uint16")
    location = _write(tmp_path, data, **LAYOUTS["sharded lz4 shuffle"])
    _check_reads(location, data)  # caches the shard indexes
    other = (data // 3).astype(np.uint16)
    _write(tmp_path, other, **LAYOUTS["sharded lz4 shuffle"])
    _check_reads(location, other)
