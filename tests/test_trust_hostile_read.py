"""Hostile files on the read side (issue 27): one StoreError line, never an abort, hang or unbounded memory.

Every read path is checked: the engines behind ``open_level`` (the datasets' ``read_tile`` and napari's
``LazyLevel`` read through them), ``Cohort.open_image(...).values`` (dask through zarr-python) and the
``info`` command. Reads that could block (a FIFO in place of a shard) run in a subprocess with a timeout
and an address-space limit, so a regression fails instead of hanging or eating the machine's memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spora_zarr import ConvertOptions, convert_cohort, open_cohort
from spora_zarr.cli import main
from spora_zarr.errors import InvalidInputError, StoreError
from spora_zarr.read.levels import ENGINES, open_level
from spora_zarr.testing.cohorts import make_synthetic_cohort

LEVEL = "imc/images/A/1_0mpp"
READ_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small converted store (two tissues, one resolution), never modified: tests damage copies."""
    root = tmp_path_factory.mktemp("hostile")
    src = make_synthetic_cohort(root / "src", tissues=("A", "B"), he_shape=(90, 130), resolutions=(1.0,), seed=3)
    dest = root / "c.zarr"
    report = convert_cohort(src, dest, ConvertOptions(progress=False))
    assert report.ok, report.summary()
    return dest


@pytest.fixture
def store(converted: Path, tmp_path: Path) -> Path:
    """A fresh copy of the converted store to damage."""
    return Path(shutil.copytree(converted, tmp_path / "c.zarr"))


def _shard(store: Path) -> Path:
    """The first shard file of the level array ``LEVEL``."""
    files = sorted(p for p in (store / LEVEL / "c").rglob("*") if p.is_file())
    assert files, "the level has no shard files"
    return files[0]


def run_info(capsys: pytest.CaptureFixture[str], location: str, command: str = "info") -> tuple[int, str]:
    code = main([command, location])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def assert_one_line_error(code: int, output: str, *fragments: str) -> None:
    assert code == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(f in errors[0] for f in fragments), (fragments, output)


# ---------------------------------------------------------------------------------- hostile shard files

_READ_EVERY_WAY = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))  # /dev/zero read whole would fail here, not eat the machine
from spora_zarr import open_cohort
from spora_zarr.datasets import MultiplexImagingDataset
from spora_zarr.errors import StoreError
from spora_zarr.napari.levels import LazyLevel
from spora_zarr.read.levels import open_level
stores, level, engines = json.loads(sys.argv[1])
results = {}
for store in stores:
    ways = {f"engine {e}": (lambda e=e: open_level(store, level, engine=e).read(0, 0, 40, 40)) for e in engines}
    ways["open_image().values"] = lambda: open_cohort(store).open_image("imc", "A", 1.0).values
    ways["read_tile"] = lambda: MultiplexImagingDataset("t", store, 1.0, 32, modality="imc").read_tile("A", 0, 0, preprocess=False)
    ways["napari LazyLevel"] = lambda: LazyLevel(open_level(store, level), (896, 896))[:, 0:40, 0:40].__array__()
    results[store] = {}
    for name, read in ways.items():
        try:
            read()
        except StoreError as exc:
            results[store][name] = ["StoreError", str(exc)]
        except BaseException as exc:
            results[store][name] = [type(exc).__name__, str(exc)[:300]]
        else:
            results[store][name] = ["no error", ""]
print(json.dumps(results))
"""


def _make_fifo(path: Path) -> str:
    path.unlink()
    os.mkfifo(path)
    return "a FIFO"


def _make_directory(path: Path) -> str:
    path.unlink()
    path.mkdir()
    (path / "x").write_bytes(b"\0" * 100)
    return "a directory"


def _link_dev_zero(path: Path) -> str:
    path.unlink()
    path.symlink_to("/dev/zero")
    return "a character device"


def _make_oversized(path: Path) -> str:
    with open(path, "r+b") as handle:  # a sparse file far longer than a shard of this layout can be
        handle.truncate(64 * 2**30)
    return "more than the"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX only")
def test_hostile_files_are_store_errors_every_way(converted: Path, tmp_path: Path) -> None:
    """A FIFO, a directory, a symlink to /dev/zero and a 64 GiB sparse file in place of a shard, and /dev/zero and
    a sparse file in place of the array's zarr.json, read every way in one subprocess that must end within the
    timeout under a 6 GiB address-space limit."""
    engines = [e for e in ENGINES if open_level(converted, LEVEL, engine=e).engine == e]
    assert "direct" in engines and "zarr" in engines, engines
    expected = {}
    cases = [(_make_fifo, "shard"), (_make_directory, "shard"), (_link_dev_zero, "shard"), (_make_oversized, "shard")]
    cases += [(_link_dev_zero, "zarr.json"), (_make_oversized, "zarr.json")]
    for hostile, where in cases:
        store = Path(shutil.copytree(converted, tmp_path / f"{hostile.__name__}-{where}" / "c.zarr"))
        victim = _shard(store) if where == "shard" else store / LEVEL / "zarr.json"
        expected[str(store)] = (str(victim), hostile(victim))
    argument = json.dumps([list(expected), LEVEL, engines])
    try:
        done = subprocess.run([sys.executable, "-c", _READ_EVERY_WAY, argument], capture_output=True, text=True, timeout=READ_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a read of a hostile shard did not finish in {READ_TIMEOUT_S} s (it blocks)")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for store, (victim, kind) in expected.items():
        assert len(results[store]) == len(engines) + 3
        for way, (error, message) in results[store].items():
            assert error == "StoreError", (victim, kind, way, error, message)
            assert victim in message and kind in message, (kind, way, message)


def test_damaged_shard_through_open_image_values_names_the_array(store: Path) -> None:
    shard = _shard(store)
    shard.write_bytes(os.urandom(shard.stat().st_size))
    image = open_cohort(store).open_image("imc", "A", 1.0)
    with pytest.raises(StoreError, match=LEVEL):
        _ = image.values


# ---------------------------------------------------------------------------------- damaged zarr.json


def _deep(depth: int = 200_000) -> bytes:
    return b"[" * depth + b"]" * depth


def _edit(**changes: object):
    def apply(document: dict) -> bytes:
        document = json.loads(json.dumps(document))
        for key, value in changes.items():
            if key == "chunk_shape":
                document["chunk_grid"]["configuration"]["chunk_shape"] = value
            else:
                document[key] = value
        return json.dumps(document).encode()

    return apply


DAMAGED_DOCUMENTS = {
    "garbage": lambda document: b"\x00\xffnot json at all{",
    "empty": lambda document: b"",
    "a JSON list": lambda document: b"[1, 2, 3]",
    "deep nesting": lambda document: _deep(),
    "deep nesting in an object": lambda document: b'{"zarr_format": 3, "node_type": "array", "shape": ' + _deep() + b"}",
    "wrong schema": lambda document: json.dumps({"zarr_format": 3, "node_type": "array", "shape": [4, 4]}).encode(),
    "zarr v2 format": _edit(zarr_format=2),
    "negative shape": _edit(shape=[-5, 90, 130]),
    "string shape": _edit(shape=["5", "90", "130"]),
    "float shape": _edit(shape=[5.0, 90, 130]),
    "boolean shape": _edit(shape=[True, 90, 130]),
    "absurd shape": _edit(shape=[5, 2**40, 2**40]),
    "absurd element count": _edit(shape=[2**23, 2**23, 2**23]),
    "zero chunk": _edit(chunk_shape=[0, 896, 896]),
    "absurd shard": _edit(chunk_shape=[5, 2**24, 2**24]),
    "chunk rank differs": _edit(chunk_shape=[896, 896]),
    "unknown data type": _edit(data_type="complex1024"),
    "unknown codec": _edit(codecs=[{"name": "no-such-codec"}]),
    "codecs not a list": _edit(codecs=7),
    "absurd inner chunk": lambda document: _inner_chunk(document, [5, 2**15, 2**15]),
    "inner chunk does not divide": lambda document: _inner_chunk(document, [5, 100, 100]),
}


def _inner_chunk(document: dict, shape: list[int]) -> bytes:
    document = json.loads(json.dumps(document))
    shape[0] = document["shape"][0]
    document["chunk_grid"]["configuration"]["chunk_shape"] = [document["shape"][0], 2**15, 2**15]
    sharding = document["codecs"][0]
    assert sharding["name"] == "sharding_indexed", document["codecs"]
    sharding["configuration"]["chunk_shape"] = shape
    return json.dumps(document).encode()


def _damage_metadata(store: Path, name: str) -> None:
    path = store / LEVEL / "zarr.json"
    path.write_bytes(DAMAGED_DOCUMENTS[name](json.loads(path.read_text())))


@pytest.mark.parametrize("name", list(DAMAGED_DOCUMENTS))
def test_damaged_array_metadata_is_a_store_error_naming_the_array(store: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    _damage_metadata(store, name)
    where = str(store / LEVEL)
    with pytest.raises(StoreError, match=LEVEL):
        open_level(store, LEVEL)
    with pytest.raises(StoreError, match=LEVEL):
        _ = open_cohort(store).open_image("imc", "A", 1.0).values
    with pytest.raises(StoreError, match=LEVEL):
        open_cohort(store).open_array("imc", "A", 1.0)
    assert_one_line_error(*run_info(capsys, str(store)), where)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
@pytest.mark.parametrize("which", ["array", "group"])
def test_fifo_metadata_document_is_a_store_error(store: Path, which: str, capsys: pytest.CaptureFixture[str]) -> None:
    document = store / (LEVEL if which == "array" else "imc/images/A") / "zarr.json"
    document.unlink()
    os.mkfifo(document)
    script = "import sys; from spora_zarr.cli import main; sys.exit(main(['info', sys.argv[1]]))"
    try:
        done = subprocess.run([sys.executable, "-c", script, str(store)], capture_output=True, text=True, timeout=READ_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"info on a store with a FIFO for {document} did not finish in {READ_TIMEOUT_S} s")
    assert_one_line_error(done.returncode, done.stderr + done.stdout, str(document), "a FIFO")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
def test_fifo_table_is_one_line_in_info(store: Path) -> None:
    table = store / "metadata/tissues.parquet"
    table.unlink()
    os.mkfifo(table)
    script = "import sys; from spora_zarr.cli import main; sys.exit(main(['info', sys.argv[1]]))"
    try:
        done = subprocess.run([sys.executable, "-c", script, str(store)], capture_output=True, text=True, timeout=READ_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"info on a store whose {table} is a FIFO did not finish in {READ_TIMEOUT_S} s")
    assert_one_line_error(done.returncode, done.stderr + done.stdout, str(table), "a FIFO")


def test_damaged_group_document_is_one_line_in_info(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (store / "imc/images/A/zarr.json").write_bytes(_deep())
    code, output = run_info(capsys, str(store))
    assert code == 0 and "Traceback" not in output, output
    assert "modality imc: 1 tissue(s)" in output, output  # an unreadable group is not listed, as an unfinished one


DAMAGED_ATTRIBUTES = {
    "group spora not an object": ("imc/images/A", lambda a: a.update(spora=[1, 2])),
    "group channel_names not a list": ("imc/images/A", lambda a: a["spora"].update(channel_names=5)),
    "root spora not an object": ("", lambda a: a.update(spora="x")),
    "root mask_kinds not a list": ("", lambda a: a["spora"].update(mask_kinds=7)),
}


@pytest.mark.parametrize("name", list(DAMAGED_ATTRIBUTES))
def test_damaged_group_attributes_are_one_line_in_info(store: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    group, damage = DAMAGED_ATTRIBUTES[name]
    path = store / group / "zarr.json"
    document = json.loads(path.read_text())
    damage(document["attributes"])
    path.write_text(json.dumps(document))
    assert_one_line_error(*run_info(capsys, str(store)), str(store / group).rstrip("/"))


def test_omero_not_an_object_falls_back_to_spora_channel_names(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = store / "imc/images/A/zarr.json"
    document = json.loads(path.read_text())
    document["attributes"]["ome"]["omero"] = [1]
    path.write_text(json.dumps(document))
    assert open_cohort(store).channel_names("imc", "A") == document["attributes"]["spora"]["channel_names"]
    code, output = run_info(capsys, str(store))
    assert code == 0 and "Traceback" not in output, output


# ---------------------------------------------------------------------------------- http(s)

_HTTP_SERVER = r"""
import http.server, os, re, sys
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    # Python's static file server with single byte ranges (zarr reads shard indexes and chunks by range;
    # every static server and object store answers them, http.server before Python 3.14 does not).
    def do_GET(self):
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().do_GET()
        data = Path(path).read_bytes()
        first, last = match.groups()
        start = int(first) if first else max(len(data) - int(last), 0)
        stop = min(int(last) + 1, len(data)) if first and last else len(data)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        self.wfile.write(data[start:stop])

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: RangeHandler(*a, directory=sys.argv[1]))
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def served(converted: Path) -> Iterator[str]:
    """The converted store's folder served by Python's http.server (another process) on a free port: the store's URL.

    Not a thread of this process: zarrs holds the GIL while it waits for its HTTP answers.
    """
    server = subprocess.Popen([sys.executable, "-c", _HTTP_SERVER, str(converted.parent)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        yield f"http://127.0.0.1:{port}/{converted.name}"
    finally:
        server.kill()
        server.communicate()  # reaps it and closes its pipe


def test_http_store_reads_like_the_local_one(served: str, converted: Path) -> None:
    remote, local = open_cohort(served), open_cohort(converted)
    assert remote.modalities == local.modalities
    for modality in local.modalities:
        assert remote.tissues(modality) == local.tissues(modality)
    assert remote.tables() == local.tables()
    np.testing.assert_array_equal(remote.open_image("imc", "A", 1.0).values, local.open_image("imc", "A", 1.0).values)
    reader = open_level(served, LEVEL)
    np.testing.assert_array_equal(reader.read(3, 4, 50, 60), open_level(converted, LEVEL).read(3, 4, 50, 60))


def test_http_info_and_validate(served: str, converted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, remote = run_info(capsys, served)
    assert code == 0, remote
    code, local = run_info(capsys, str(converted))
    assert code == 0, local
    assert remote.replace(served, "STORE") == local.replace(str(converted), "STORE")
    code, output = run_info(capsys, served, "validate")
    assert code == 0 and "Traceback" not in output, output


@pytest.mark.parametrize("command", ["convert", "add-image", "tile", "standardize"])
def test_writing_to_http_is_one_line(served: str, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_synthetic_cohort(tmp_path / "src", tissues=("A",), he_shape=(40, 50), resolutions=(1.0,), seed=4)
    argv = {
        "convert": ["convert", "--no-progress", str(src), served.replace("c.zarr", "new.zarr")],
        "add-image": ["add-image", served, str(next(src.rglob("A.tif"))), "--modality", "he", "--tissue", "Z", "--mpp", "1.0"],
        "tile": ["tile", served, "--resolution", "1.0", "--tile-size", "32"],
        "standardize": ["standardize", served, "--modality", "imc", "--resolution", "1.0", "--spec", "quantile_clipping/uq_0.99_image"],
    }[command]
    code = main(argv)
    captured = capsys.readouterr()
    assert_one_line_error(code, captured.err + captured.out, "read-only")


@pytest.mark.parametrize("url", ["nosuchproto://host/c.zarr", "zarrz://c.zarr"])
def test_unknown_protocol_is_one_line(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidInputError, match="unknown protocol"):
        open_cohort(url)
    assert_one_line_error(*run_info(capsys, url), url.split("://")[0], "unknown protocol")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
@pytest.mark.parametrize("flag", [[], ["--deep"]])
def test_validate_reports_a_fifo_level_document_without_hanging(store: Path, flag: list[str]) -> None:
    document = store / LEVEL / "zarr.json"
    document.unlink()
    os.mkfifo(document)
    script = "import sys; from spora_zarr.cli import main; sys.exit(main(['validate', *sys.argv[1:]]))"
    try:
        done = subprocess.run([sys.executable, "-c", script, str(store), *flag], capture_output=True, text=True, timeout=READ_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate on a store with a FIFO for {document} did not finish in {READ_TIMEOUT_S} s")
    output = done.stderr + done.stdout
    assert done.returncode == 1 and "Traceback" not in output, output
    assert any(str(document) in line and "FIFO" in line for line in output.splitlines()), output


@pytest.mark.parametrize("path", ["../../../../../other.zarr/imc/images/A/1_0mpp", "/abs/other.zarr/imc/images/A/1_0mpp", "..", ""])
def test_a_level_path_leading_out_of_its_group_is_a_store_error(store: Path, path: str) -> None:
    document = store / "imc/images/A/zarr.json"
    data = json.loads(document.read_text())
    data["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"] = path
    document.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="imc/images/A: invalid level path"):
        open_cohort(store).open_image("imc", "A").values  # noqa: B018 (the read is the point)
