"""Conformance tests of read engines: one pytest class, subclassed once per engine.

::

    from spora_zarr.testing.engines import EngineConformance

    class TestDirect(EngineConformance):
        engine = "direct"

The class writes real arrays as the converter does (sharded, blosc lz4 with
byte shuffle or uncompressed ``bytes``, dimension names, fill value 0) for
every dtype the writer stores, and compares windows read through
:func:`~spora_zarr.read.levels.open_level` with numpy slicing: random windows,
windows clipped at every border, channel selections, 2-D labels and masks,
chunks and shards that were never written. Shards damaged on purpose
(truncated, index out of bounds or overflowing, a blosc header that lies, a bad
index checksum) must raise :class:`~spora_zarr.errors.StoreError` naming the
array; they are read in a child process, so that an engine that crashes or
hangs fails its tests instead of the test session.

An engine that does not read stores overrides :meth:`EngineConformance.open_reader`
and sets ``reads_damaged = False`` (see :class:`NumpyEngine`). Importing this
module needs pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from ..errors import InvalidInputError
from ..read.levels import LevelReader, open_level
from ..store.location import Location

__all__ = ["ARRAYS", "DAMAGES", "EngineConformance", "NumpyEngine", "damage_shard", "write_array"]

SHAPE = (3, 300, 250)
CHUNK, SHARD = 32, 128
MISSING_SHARD = (slice(0, SHARD), slice(0, SHARD))  # never written: all fill value
MISSING_CHUNK = (slice(160, 192), slice(192, 224))  # one inner chunk never written
DAMAGED_SHARD = ("1", "1")  # the shard of y, x 128:256 (its first chunk 128:160 is written)
DAMAGED_WINDOWS = ((130, 130, 10, 10), (128, 128, 128, 128))  # inside its first chunk; the whole shard
SUBPROCESS_TIMEOUT = 50


@dataclass(frozen=True)
class ArraySpec:
    """One test array: dtype, axes (3: (c, y, x) image, 2: (y, x) labels or mask) and layout."""

    dtype: str
    ndim: int = 3
    compressed: bool = True
    sharded: bool = True
    fill: int = 0
    mask: bool = False


ARRAYS: dict[str, ArraySpec] = {
    **{dtype: ArraySpec(dtype) for dtype in ("uint8", "uint16", "uint32", "int16", "int32", "float32", "float64")},
    "uint16 uncompressed": ArraySpec("uint16", compressed=False),
    "uint16 unsharded": ArraySpec("uint16", sharded=False),
    "uint16 fill 7": ArraySpec("uint16", fill=7),
    "mask": ArraySpec("uint8", ndim=2, mask=True),  # a boolean mask, stored as uint8
    "labels uint32": ArraySpec("uint32", ndim=2),
    "labels uint64": ArraySpec("uint64", ndim=2),
    "labels uint64 uncompressed": ArraySpec("uint64", ndim=2, compressed=False),
}
"""The arrays every engine reads, by name (also their path below the store root)."""

DAMAGES = (
    "truncated file", "truncated index", "offset past the end", "offset overflow", "blosc size", "bad index checksum",
    "fifo", "directory", "dev zero",
)  # fmt: skip
"""The ways :func:`damage_shard` breaks a shard (the last three put a FIFO, a directory or a symlink to ``/dev/zero``
in its place: a read must neither block nor run without end)."""


def content(spec: ArraySpec, seed: int = 0) -> np.ndarray:
    """Random values of ``spec``'s dtype, fill-valued where :data:`MISSING_SHARD` and :data:`MISSING_CHUNK` are."""
    rng = np.random.default_rng(seed)
    shape = SHAPE if spec.ndim == 3 else SHAPE[1:]
    dtype = np.dtype(spec.dtype)
    if spec.mask:
        data = (rng.random(shape) < 0.3).astype(dtype)
    elif dtype.kind == "f":
        data = (rng.normal(size=shape) * 1000).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    data[(..., *MISSING_SHARD)] = spec.fill
    data[(..., *MISSING_CHUNK)] = spec.fill
    return data


def write_array(location: Location, path: str, data: np.ndarray, spec: ArraySpec) -> None:
    """Write ``data`` at ``path`` as the converter does (``write/writer.py``), chunks of fill value left unwritten."""
    lead = data.shape[:-2]
    array = zarr.create_array(
        location.zarr_store(),
        name=path,
        shape=data.shape,
        dtype=data.dtype,
        chunks=(*lead, CHUNK, CHUNK),
        shards=(*lead, SHARD, SHARD) if spec.sharded else None,
        fill_value=spec.fill,
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle") if spec.compressed else None,
        dimension_names=("c", "y", "x") if data.ndim == 3 else ("y", "x"),
        overwrite=True,
        config={"write_empty_chunks": False},
    )
    array[...] = data


def _index(shard: Path, chunks: int) -> tuple[int, np.ndarray]:
    """The size of a shard file and its chunk index (index at the end) as (offset, nbytes) rows."""
    raw = shard.read_bytes()
    return len(raw), np.frombuffer(raw[len(raw) - 16 * chunks - 4 : -4], "<u8").reshape(-1, 2).copy()


def _put_index(shard: Path, entries: np.ndarray) -> None:
    """Overwrite a shard's index with ``entries``, with a valid crc32c."""
    body = entries.astype("<u8").tobytes()
    with open(shard, "r+b") as fh:
        fh.seek(-(len(body) + 4), os.SEEK_END)
        fh.write(body + google_crc32c.value(body).to_bytes(4, "little"))


def damage_shard(shard: Path, case: str, chunks: int) -> None:
    """Break the shard file ``shard`` (``chunks`` inner chunks, index at the end) as :data:`DAMAGES` names ``case``."""
    if case in ("fifo", "directory", "dev zero"):
        shard.unlink()
        if case == "fifo":
            os.mkfifo(shard)
        elif case == "directory":
            shard.mkdir()
        else:
            shard.symlink_to("/dev/zero")
        return
    size, entries = _index(shard, chunks)
    if case == "truncated file":
        os.truncate(shard, size // 2)
    elif case == "truncated index":
        os.truncate(shard, 16 * chunks + 4 - 10)
    elif case == "offset past the end":
        entries[0, 0] = size + 100
        _put_index(shard, entries)
    elif case == "offset overflow":
        entries[0] = (2**64 - 16, 32)
        _put_index(shard, entries)
    elif case == "blosc size":  # the blosc header of the first chunk claims twice its decoded size
        with open(shard, "r+b") as fh:
            fh.seek(int(entries[0, 0]) + 4)
            (nbytes,) = struct.unpack("<I", fh.read(4))
            fh.seek(int(entries[0, 0]) + 4)
            fh.write(struct.pack("<I", 2 * nbytes))
    elif case == "bad index checksum":
        with open(shard, "r+b") as fh:
            fh.seek(-4, os.SEEK_END)
            checksum = fh.read(4)
            fh.seek(-4, os.SEEK_END)
            fh.write(bytes(255 - b for b in checksum))
    else:
        raise ValueError(f"unknown damage {case!r}; expected one of {DAMAGES}")


def expected(data: np.ndarray, y0: int, x0: int, height: int, width: int, channels: list[int] | None = None) -> np.ndarray:
    """numpy's answer for a window read (clipped to the array)."""
    out = data[..., max(y0, 0) : y0 + height, max(x0, 0) : x0 + width]
    return out if channels is None else out[channels]


def random_windows(shape: tuple[int, ...], seed: int, count: int = 16) -> list[tuple[int, int, int, int, list[int] | None]]:
    """Random windows (some reaching past the array), with channel selections in any order for 3-D arrays."""
    ny, nx = shape[-2:]
    rng = np.random.default_rng(seed)
    windows: list[tuple[int, int, int, int, list[int] | None]] = []
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(1, 200, 2))
        y0, x0 = int(rng.integers(1 - height, ny)), int(rng.integers(1 - width, nx))
        channels = None
        if len(shape) == 3 and rng.random() < 0.5:
            channels = [int(c) for c in rng.integers(0, shape[0], int(rng.integers(1, 5)))]
        windows.append((y0, x0, height, width, channels))
    return windows


def edge_windows(shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Windows clipped at each border and corner, past all four at once, and the corner pixels."""
    ny, nx = shape[-2:]
    return [
        (-10, -10, 50, 50), (-10, nx - 40, 50, 50), (ny - 40, -10, 50, 50), (ny - 40, nx - 40, 50, 50),  # corners
        (-10, 100, 50, 60), (ny - 20, 100, 50, 60), (100, -10, 60, 50), (100, nx - 20, 60, 50),  # edges
        (-5, -5, ny + 10, nx + 10), (-1000, -1000, 1001, 1001), (ny - 1, nx - 1, 1000, 1000),  # past everything
        (0, 0, 1, 1), (0, nx - 1, 1, 1), (ny - 1, 0, 1, 1), (ny - 1, nx - 1, 1, 1),  # corner pixels
    ]  # fmt: skip


class NumpyEngine:
    """The reference engine: numpy slicing of an array in memory, through the same interface."""

    engine = "numpy"

    def __init__(self, data: np.ndarray) -> None:
        self._data = data

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """A copy of ``data[index]``."""
        return self._data[index].copy()


@dataclass(frozen=True)
class Written:
    """The arrays of :data:`ARRAYS` in one store, and their content."""

    location: Location
    data: dict[str, np.ndarray]


_DAMAGED_READS = """
import json, sys
from spora_zarr.errors import StoreError
from spora_zarr.read.levels import open_level
root, engine, paths, windows = json.loads(sys.argv[1])
results = {}
for path in paths:
    results[path] = []
    for window in windows:
        reader = open_level(root, path, engine=engine)
        try:
            reader.read(*window)
        except StoreError as exc:
            results[path].append([reader.engine, "StoreError", str(exc)])
        except Exception as exc:
            results[path].append([reader.engine, type(exc).__name__, str(exc)])
        else:
            results[path].append([reader.engine, "no error", ""])
print(json.dumps(results))
"""


class EngineConformance:
    """Every engine reads what numpy reads, and reports damaged shards as StoreError naming the array.

    Subclasses set :attr:`engine` (a name of :data:`spora_zarr.read.ENGINES`).
    """

    engine: str
    reads_damaged: bool = True
    """Whether the damaged-shard cases apply (engines that read stores)."""

    def open_reader(self, location: Location, path: str, data: np.ndarray) -> LevelReader:
        """The reader under test for the array ``data`` written at ``<location>/<path>``."""
        reader = open_level(location, path, engine=self.engine)
        assert reader.engine == self.engine, f"asked for {self.engine!r}, {reader.engine!r} reads {path}"
        return reader

    @pytest.fixture(scope="class")
    @classmethod
    def written(cls, tmp_path_factory: pytest.TempPathFactory) -> Written:
        """The arrays of :data:`ARRAYS`, written once per engine class."""
        location = Location.parse(tmp_path_factory.mktemp(f"conformance-{cls.engine}") / "store.zarr")
        data = {}
        for seed, (name, spec) in enumerate(ARRAYS.items()):
            data[name] = content(spec, seed)
            write_array(location, _path(name), data[name], spec)
        return Written(location, data)

    def _reader(self, written: Written, name: str) -> LevelReader:
        data = written.data[name]
        reader = self.open_reader(written.location, _path(name), data)
        assert reader.shape == data.shape and reader.dtype == data.dtype, (reader.shape, reader.dtype)
        return reader

    @pytest.mark.parametrize("name", list(ARRAYS))
    def test_random_windows(self, written: Written, name: str) -> None:
        reader, data = self._reader(written, name), written.data[name]
        for y0, x0, height, width, channels in random_windows(data.shape, seed=len(name)):
            got = reader.read(y0, x0, height, width, channels=channels)
            want = expected(data, y0, x0, height, width, channels)
            assert got.dtype == data.dtype and got.shape == want.shape, (y0, x0, height, width, channels)
            np.testing.assert_array_equal(got, want, err_msg=str((y0, x0, height, width, channels)))

    @pytest.mark.parametrize("name", ["uint16", "uint16 uncompressed", "uint16 unsharded", "mask", "labels uint64"])
    def test_edge_windows(self, written: Written, name: str) -> None:
        reader, data = self._reader(written, name), written.data[name]
        for window in edge_windows(data.shape):
            np.testing.assert_array_equal(reader.read(*window), expected(data, *window), err_msg=str(window))

    def test_whole_array(self, written: Written) -> None:
        for name in ("float64", "labels uint64"):
            reader, data = self._reader(written, name), written.data[name]
            np.testing.assert_array_equal(reader.read(0, 0, *data.shape[-2:]), data)

    def test_channel_selection(self, written: Written) -> None:
        reader, data = self._reader(written, "uint16"), written.data["uint16"]
        for channels in ([2, 0], [1], [0, 1, 2], [2, 2, 0], [1, 2]):
            np.testing.assert_array_equal(reader.read(100, 90, 60, 70, channels=channels), data[channels, 100:160, 90:160])
        for bad in ([3], [-1], [], [0.5]):
            with pytest.raises(InvalidInputError, match="channel"):
                reader.read(0, 0, 10, 10, channels=bad)  # type: ignore[arg-type]

    def test_two_dimensional_labels(self, written: Written) -> None:
        reader = self._reader(written, "labels uint64")
        assert reader.read(0, 0, 5, 5).shape == (5, 5)
        with pytest.raises(InvalidInputError, match="no channel axis"):
            reader.read(0, 0, 10, 10, channels=[0])

    @pytest.mark.parametrize("name", ["uint16 fill 7", "labels uint64", "uint16 unsharded"])
    def test_missing_chunks_and_shards_read_as_fill_value(self, written: Written, name: str) -> None:
        spec, data = ARRAYS[name], written.data[name]
        if spec.sharded:  # the first shard was never written; one chunk of another shard neither
            assert not os.path.exists(written.location.fs_path(_path(name), "c", *("0",) * (data.ndim - 2), "0", "0"))
        reader = self._reader(written, name)
        (ys, xs) = MISSING_SHARD
        window = reader.read(ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start)
        assert (window == spec.fill).all()
        (ys, xs) = MISSING_CHUNK
        window = reader.read(ys.start - 5, xs.start - 5, ys.stop - ys.start + 10, xs.stop - xs.start + 10)
        assert (window[..., 5:-5, 5:-5] == spec.fill).all()
        np.testing.assert_array_equal(window, expected(data, ys.start - 5, xs.start - 5, ys.stop - ys.start + 10, xs.stop - xs.start + 10))

    @pytest.fixture(scope="class")
    @classmethod
    def damaged_reads(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, list[list[str]]]]:
        """Per damaged array path: its full path, and (engine, error type, message) of each of :data:`DAMAGED_WINDOWS`,
        read in a child process."""
        if not cls.reads_damaged:
            pytest.skip(f"engine {cls.engine!r} reads no stores")
        location = Location.parse(tmp_path_factory.mktemp(f"damaged-{cls.engine}") / "store.zarr")
        paths = []
        for layout in ("uint16", "uint16 uncompressed"):
            spec = ARRAYS[layout]
            data = content(spec)
            write_array(location, "pristine", data, spec)
            for case in DAMAGES:
                if case == "blosc size" and not spec.compressed:
                    continue
                path = _damaged_path(layout, case)
                shutil.copytree(location.fs_path("pristine"), location.fs_path(path))
                chunks = (SHARD // CHUNK) ** 2
                damage_shard(Path(location.fs_path(path, "c", "0", *DAMAGED_SHARD)), case, chunks)
                paths.append(path)
        argument = json.dumps([location.root, cls.engine, paths, DAMAGED_WINDOWS])
        try:
            done = subprocess.run(
                [sys.executable, "-c", _DAMAGED_READS, argument], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"engine {cls.engine!r} hung on damaged shards (no answer in {exc.timeout} s)")
        assert done.returncode == 0, f"engine {cls.engine!r} died on damaged shards (exit {done.returncode}):\n{done.stderr[-3000:]}"
        results: dict[str, list[list[str]]] = json.loads(done.stdout)
        return {path: (location.join(path), results[path]) for path in paths}

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("layout", ["uint16", "uint16 uncompressed"])
    @pytest.mark.parametrize("case", DAMAGES)
    def test_damaged_shard_raises_store_error(self, damaged_reads: dict[str, tuple[str, list[list[str]]]], case: str, layout: str) -> None:
        if case == "blosc size" and not ARRAYS[layout].compressed:
            pytest.skip("uncompressed chunks have no blosc header")
        where, results = damaged_reads[_damaged_path(layout, case)]
        assert len(results) == len(DAMAGED_WINDOWS)
        for window, (engine, error, message) in zip(DAMAGED_WINDOWS, results, strict=True):
            assert engine == self.engine, f"{engine!r} read {where}"
            assert error == "StoreError", f"{case}, window {window}: {error}: {message}"
            assert where in message, f"{case}, window {window}: the message does not name the array {where}: {message}"


def _path(name: str) -> str:
    """The array path of :data:`ARRAYS` entry ``name``."""
    return name.replace(" ", "_")


def _damaged_path(layout: str, case: str) -> str:
    return _path(f"damaged/{layout}/{case}")
