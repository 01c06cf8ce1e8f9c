"""Nothing half-written: add-image is one staged step, writers lock the store, Ctrl-C is one line, overwrites never hide a group.

Real stores, real subprocesses, real SIGKILL. Kill points are the store's own
filesystem steps (every rename, replace and swap), counted by a small wrapper
that runs the real CLI in a subprocess and SIGKILLs it before step ``k``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from spora_zarr import ConvertOptions, StoreError, convert_cohort, open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.store.location import Location
from spora_zarr.store.lock import LOCK_NAME, store_lock
from spora_zarr.store.staging import Staging
from spora_zarr.store.summary import SUMMARY_NAME
from spora_zarr.testing.cohorts import make_synthetic_cohort

CLI = [sys.executable, "-m", "spora_zarr.cli"]
KILLER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    import ngff_zarr, pyarrow.parquet  # the writer's lazy imports, once here rather than in every forked run
    import spora_zarr.store.staging as staging
    from spora_zarr.cli import main
    base, work, argv = sys.argv[1], sys.argv[2], sys.argv[4:]
    for kill_at in map(int, sys.argv[3].split(",")):
        target = os.path.join(work, f"step{kill_at}.zarr")
        shutil.copytree(base, target)
        pid = os.fork()
        if pid == 0:  # a fresh process per kill point (forked before any store was touched here)
            steps = [0]
            def counted(function):
                def step(*args, **kwargs):
                    steps[0] += 1
                    if steps[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return function(*args, **kwargs)
                return step
            os.rename, os.replace = counted(os.rename), counted(os.replace)
            if hasattr(staging, "_exchange"):
                staging._exchange = counted(staging._exchange)
            code = main([target if a == "STORE" else a for a in argv])
            print(f"steps {steps[0]}", flush=True)
            os._exit(code)
        print(f"exit {os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}", flush=True)
    """
)


def kill_at_each_step(store: Path, work: Path, argv: list[str]) -> tuple[Path, list[Path]]:
    """Run ``argv`` (``STORE`` standing for a copy of ``store``) once whole, then SIGKILLed before each of its filesystem steps.

    Returns the store of the whole run and the store of each killed run, in step order.
    """
    work.mkdir()

    def run(steps: list[int]) -> list[str]:
        command = [sys.executable, "-c", KILLER, str(store), str(work), ",".join(map(str, steps)), *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    whole = run([0])
    assert whole[-1] == "0", whole  # the uninterrupted run succeeded
    steps = int(whole[whole.index("steps") + 1])
    outcome = run(list(range(1, steps + 1)))
    assert outcome == ["exit", str(-signal.SIGKILL)] * steps, outcome
    return work / "step0.zarr", [work / f"step{k}.zarr" for k in range(1, steps + 1)]


def files_of(store: Path) -> dict[str, bytes]:
    """Every file of the store (bytes), but the staging area, the writer lock and the directory summaries.

    A summary is a cache of its directory's documents that records inodes and change times (a copy has others), removed
    before a group moves and written when a run finishes: a killed run leaves none, and readers read the documents.
    The tests check it with ``validate_store``, which names a summary that says what the documents do not.
    """
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and ".spora_tmp" not in p.parts and p.name not in (LOCK_NAME, SUMMARY_NAME)
    }


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("<tifffile")]


def ome(path: Path, data: np.ndarray, mpp: float, names: list[str] | None = None) -> Path:
    metadata: dict[str, object] = {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
    if names:
        metadata.update(axes="CYX", Channel={"Name": names})
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    return path


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("atomic")
    source = make_synthetic_cohort(root / "tiff", tissues=("A",), he_shape=(128, 160), ihc_markers=(), seed=6)
    store = root / "cohort.zarr"
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    return store


@pytest.fixture
def store(small_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cohort.zarr"
    shutil.copytree(small_store, copy)
    return copy


# -- add-image: the image and its tables are one staged step ------------------------------------------------
def _bad_files(folder: Path) -> dict[str, Path]:
    good = folder / "good.tif"
    tifffile.imwrite(good, np.ones((2, 256, 256), np.uint16), tile=(64, 64), compression="zlib")
    data = good.read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) * 2 // 3])
    damaged = bytearray(data)  # a tile in the second channel does not decode: the write fails half-way
    damaged[len(data) * 3 // 4 : len(data) * 3 // 4 + 64] = b"\xff" * 64
    (folder / "corrupt.tif").write_bytes(bytes(damaged))
    tifffile.imwrite(folder / "complex.tif", np.ones((2, 64, 64), np.complex64))
    return {name: folder / f"{name}.tif" for name in ("truncated", "corrupt", "complex")}


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "complex"])
def test_a_failed_add_image_leaves_every_file_as_it_was(store: Path, tmp_path: Path, kind: str) -> None:
    before = files_of(store)
    bad = _bad_files(tmp_path)[kind]
    result = subprocess.run(
        [*CLI, "add-image", str(store), str(bad), "--modality", "imc", "--tissue", "NEW", "--mpp", "1.0"], capture_output=True, text=True
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad.name in lines[0], result.stderr
    assert files_of(store) == before  # no tissue row, no phantom channel_0
    assert validate_store(store) == []


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", ["new tissue", "new resolution"])
def test_add_image_killed_at_any_step_leaves_the_old_or_the_new_store(store: Path, tmp_path: Path, scenario: str) -> None:
    if scenario == "new tissue":
        image = ome(tmp_path / "b.ome.tif", np.random.default_rng(2).integers(0, 900, (2, 64, 80), dtype=np.uint16), 1.0, ["X1", "X2"])
        args = ["--modality", "imc", "--tissue", "B"]
    else:
        fine = np.random.default_rng(1).integers(0, 255, (256, 320, 3), dtype=np.uint8)
        image = tmp_path / "he_0_25.ome.tif"
        tifffile.imwrite(image, fine, ome=True, photometric="rgb", metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        args = ["--modality", "he", "--tissue", "A"]
    old = files_of(store)
    whole, killed = kill_at_each_step(store, tmp_path / "runs", ["add-image", "STORE", str(image), *args])
    new = files_of(whole)
    assert new != old and validate_store(whole) == []
    for step, target in enumerate(killed, 1):
        Staging(Location.parse(target)).recover()  # what the next run does first
        after = files_of(target)
        assert after in (old, new), f"step {step} of {len(killed)}: {sorted(set(after) ^ set(new))[:3]}"
        assert not (target / ".spora_tmp").exists()
        assert validate_store(target) == []  # a summary left by the killed run says nothing the documents do not


def test_recovery_removes_the_temporary_files_a_kill_leaves_beside_the_areas(store: Path) -> None:
    # killed inside zarr's atomic write of the staging folder's own group document: a ``*.partial`` file
    # directly in .spora_tmp, next to an area that holds half an array
    staging_dir = store / ".spora_tmp"
    (staging_dir / "0123456789ab" / "imc").mkdir(parents=True)
    (staging_dir / "0123456789ab" / "imc" / "zarr.json").write_text("{}")
    (staging_dir / "zarr.json.4f3c2a.partial").write_bytes(b'{"zarr_format": 3')
    before = files_of(store)
    # and beside the root document: zarr's exclusive write of the root's zarr.json (to learn that it exists)
    (store / f"zarr.{'0123456789abcdef' * 2}.partial").write_bytes(b'{"zarr_format": 3')
    assert Staging(Location.parse(store)).recover() == []
    assert not staging_dir.exists()
    assert files_of(store) == before


# -- add-image: masks and RGB modalities ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tissue_masks", "cell_masks"])
def test_add_image_of_a_mask_writes_a_label_group_that_validates(tmp_path: Path, kind: str) -> None:
    store = tmp_path / "fresh.zarr"
    image = ome(tmp_path / "t.ome.tif", np.random.default_rng(3).integers(0, 900, (2, 96, 80), dtype=np.uint16), 1.0, ["X1", "X2"])
    mask = np.zeros((96, 80), np.uint16)
    mask[10:50, 20:60] = 3
    mask_file = tmp_path / "mask.tif"
    tifffile.imwrite(mask_file, mask)
    assert main(["add-image", str(store), str(image), "--modality", "imc", "--tissue", "T"]) == 0
    assert main(["add-image", str(store), str(mask_file), "--modality", kind, "--tissue", "T", "--mpp", "1.0"]) == 0
    group = zarr.open_group(store / "segmentations" / kind / "T", mode="r")
    assert group.attrs["ome"]["image-label"]["source"]["image"] == "../../../imc/images/T"
    assert group["1_0mpp"].ndim == 2
    np.testing.assert_array_equal(group["1_0mpp"][...], mask)
    assert not (store / kind).exists()
    cohort = open_cohort(store)
    assert kind in cohort.attributes.mask_kinds and cohort.mask_tissues(kind) == ["T"]
    assert validate_store(store) == []


def test_a_mask_that_matches_no_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "fresh.zarr"
    image = ome(tmp_path / "t.ome.tif", np.ones((2, 96, 80), np.uint16), 1.0, ["X1", "X2"])
    assert main(["add-image", str(store), str(image), "--modality", "imc", "--tissue", "T"]) == 0
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.ones((50, 50), np.uint8))
    before = files_of(store)
    capsys.readouterr()
    for tissue in ("T", "NOIMAGE"):
        assert main(["add-image", str(store), str(wrong), "--modality", "cell_masks", "--tissue", tissue, "--mpp", "1.0"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "wrong.tif" in err, err
    assert files_of(store) == before


@pytest.mark.parametrize("modality", ["he", "ihc/ihc_CD3"])
@pytest.mark.parametrize("pixels", [np.ones((64, 64), np.uint8), np.ones((3, 64, 64), np.uint16)], ids=["grey", "uint16"])
def test_a_non_rgb_image_is_refused_as_he_and_ihc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], modality: str, pixels: np.ndarray
) -> None:
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, pixels)
    store = tmp_path / "fresh.zarr"
    assert main(["add-image", str(store), str(path), "--modality", modality, "--tissue", "G", "--mpp", "1.0"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "grey.tif" in err and "RGB" in err, err
    assert not store.exists()


# -- one writer per store ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cohort whose conversion takes a few seconds."""
    return make_synthetic_cohort(tmp_path_factory.mktemp("slow") / "tiff", tissues=("A", "B", "C", "D"), he_shape=(700, 720), seed=5)


#: The CLI with Ctrl-C answered as in a terminal: a test run launched as a background job (``cmd &`` in a script)
#: inherits SIGINT ignored, and Python then keeps ignoring it.
CLI_WITH_CTRL_C = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'spora_zarr.cli', *sys.argv[1:]])",
]


def _convert(src: Path, dest: Path, *extra: str, cli: list[str] = CLI, **popen: object) -> subprocess.Popen[str]:
    command = [*cli, "convert", "--no-progress", str(src), str(dest), "--shard", "224", "--chunk", "112", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)  # type: ignore[call-overload]


def _wait_for_staged_pixels(dest: Path, process: subprocess.Popen[str]) -> None:
    """Until the run writes pixels into its staging area."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            if any((dest / ".spora_tmp").rglob("c")):
                return
        time.sleep(0.01)
    raise AssertionError("the conversion ended before it wrote pixels")


@pytest.mark.timeout(600)
def test_a_second_writer_is_refused_and_a_killed_writers_lock_is_stale(slow_cohort: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cohort.zarr"
    first = _convert(slow_cohort, dest)
    _wait_for_staged_pixels(dest, first)
    second = _convert(slow_cohort, dest)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "is writing this store" in err and f"pid {first.pid}" in err, err
    first.send_signal(signal.SIGKILL)  # its lock dies with it
    first.communicate()  # reaps it and closes its pipes
    rerun = _convert(slow_cohort, dest)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert validate_store(dest) == []
    assert not (dest / LOCK_NAME).exists() and not (dest / ".spora_tmp").exists()


@contextlib.contextmanager
def lock_held_by_another_process(store: Path) -> Iterator[None]:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; from spora_zarr.store.lock import store_lock; from spora_zarr.store.location import Location\n"
            f"with store_lock(Location.parse({str(store)!r}), 'test'):\n    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield
    holder.communicate("")
    assert not (store / LOCK_NAME).exists()


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Path]:
    """A store whose lock another (live) process holds."""
    with lock_held_by_another_process(tmp_path / "held.zarr"):
        yield tmp_path / "held.zarr"


@pytest.mark.parametrize(
    "argv",
    [
        ["convert", "SRC", "STORE"],
        ["add-image", "STORE", "FILE", "--modality", "imc", "--tissue", "T", "--mpp", "1"],
        ["stitch", "SRC", "FILE", "STORE", "--modality", "imc", "--tissue", "T", "--mpp", "1"],
        ["tile", "STORE", "--resolution", "1.0", "--tile-size", "32"],
        ["standardize", "STORE", "--modality", "imc", "--resolution", "1.0", "--spec", "quantile_clipping/uq_0.99_image"],
        ["predict", "STORE", "--model", "m.pt", "--modality", "imc", "--resolution", "1.0", "--name", "p"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_writing_verb_takes_the_lock(held: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    image = ome(tmp_path / "t.ome.tif", np.ones((2, 32, 32), np.uint16), 1.0, ["X1", "X2"])
    args = [{"STORE": str(held), "SRC": str(tmp_path), "FILE": str(image)}.get(a, a) for a in argv]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "test (pid" in err and "is writing this store" in err, err


def test_an_object_store_lock_is_best_effort_and_stale_when_its_process_is_gone() -> None:
    location = Location.parse(f"memory://lock-{os.getpid()}/cohort.zarr")
    fs, path = location.fs(), location.fs_path(LOCK_NAME)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fs.pipe_file(path, json.dumps({"verb": "convert", "pid": sleeper.pid, "host": socket.gethostname()}).encode())
        with pytest.raises(StoreError, match=f"pid {sleeper.pid} .*is writing this store"), store_lock(location, "add-image"):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with store_lock(location, "add-image"):  # the holder is gone: its lock is stale
        assert json.loads(fs.cat_file(path))["pid"] == os.getpid()
    assert not fs.exists(path)


# -- Ctrl-C with workers ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_with_workers_is_one_line_and_a_rerun_completes(slow_cohort: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cohort.zarr"
    run = _convert(slow_cohort, dest, "--workers", "2", cli=CLI_WITH_CTRL_C, start_new_session=True)  # its own group, as a job
    _wait_for_staged_pixels(dest, run)
    os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C does: every process of the job gets SIGINT
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    rerun = _convert(slow_cohort, dest, "--workers", "2")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert validate_store(dest) == []


def test_a_worker_stopped_while_it_starts_exits_without_a_traceback(tmp_path: Path) -> None:
    """SIGTERM (how a stopped run ends its workers) can reach a worker before its setup is done: it exits quietly then too."""
    script = tmp_path / "pool.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, os, signal
            from concurrent.futures import ProcessPoolExecutor
            from concurrent.futures.process import BrokenProcessPool
            import spora_zarr.run.runner as runner

            def start(codec_threads):  # the worker's setup, with SIGTERM arriving in its middle (as it loads libc)
                runner.configure_writer_process = lambda threads: os.kill(os.getpid(), signal.SIGTERM)
                runner._start_worker(codec_threads, os.getppid())

            if __name__ == "__main__":
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(1, mp_context=context, initializer=start, initargs=(1,)) as pool:
                    try:
                        pool.submit(os.getpid).result(timeout=60)
                    except BrokenProcessPool:
                        print("worker gone")
            """
        )
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "worker gone\n", (run.stdout, run.stderr)
    assert run.stderr == "", run.stderr


# -- readers during an overwrite ------------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_an_overwrite_never_leaves_the_group_missing(store: Path, tmp_path: Path) -> None:
    """Killed at each step of add-image --overwrite, the group is there and complete, old or new: a reader opening it never misses it."""
    other = tmp_path / "he_0_5.ome.tif"
    metadata = {"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    tifffile.imwrite(other, np.full((128, 160, 3), 7, np.uint8), ome=True, photometric="rgb", metadata=metadata)
    old_document = (store / "he/images/A/zarr.json").read_bytes()
    argv = ["add-image", "--overwrite", "STORE", str(other), "--modality", "he", "--tissue", "A"]
    whole, killed = kill_at_each_step(store, tmp_path / "runs", argv)
    documents = (old_document, (whole / "he/images/A/zarr.json").read_bytes())
    for step, target in enumerate(killed, 1):
        assert (target / "he/images/A/zarr.json").read_bytes() in documents, f"step {step} of {len(killed)}"
        assert open_cohort(target).tissues("he") == ["A"]


def test_a_reader_is_warned_while_a_writer_is_at_work(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with lock_held_by_another_process(store):
        open_cohort(store)
    assert "test (pid" in caplog.text and "may read as a mix of old and new pixels" in caplog.text, caplog.text
    caplog.clear()
    open_cohort(store)
    assert caplog.text == ""


def test_the_runs_own_workers_are_not_warned(store: Path) -> None:
    """A process started by the run that holds the lock (a worker) reads without the warning; any other process is warned."""
    read = [sys.executable, "-c", f"from spora_zarr import open_cohort; open_cohort({str(store)!r})"]
    with store_lock(Location.parse(store), "convert"):
        worker = subprocess.run(read, capture_output=True, text=True, check=True)
        stranger = subprocess.run(read, capture_output=True, text=True, check=True, env={**os.environ, "SPORA_ZARR_RUN_LOCKS": ""})
    assert worker.stderr == ""
    assert "convert (pid" in stranger.stderr and "is writing this store" in stranger.stderr, stranger.stderr


def test_add_image_on_an_object_store_promotes_the_group_and_its_tables(tmp_path: Path) -> None:
    """The copy promotion of object stores (here memory://): arrays at the group's own path, tables with it, nothing left."""
    url = f"memory://atomic-{os.getpid()}/cohort.zarr"
    image = ome(tmp_path / "b.ome.tif", np.arange(2 * 64 * 80, dtype=np.uint16).reshape(2, 64, 80), 1.0, ["X1", "X2"])
    tifffile.imwrite(tmp_path / "mask.tif", (np.arange(64 * 80).reshape(64, 80) % 5).astype(np.uint8))
    assert main(["add-image", url, str(image), "--modality", "imc", "--tissue", "B"]) == 0
    assert main(["add-image", url, str(image), "--modality", "imc", "--tissue", "B", "--overwrite"]) == 0
    assert main(["add-image", url, str(tmp_path / "mask.tif"), "--modality", "tissue_masks", "--tissue", "B", "--mpp", "1"]) == 0
    cohort = open_cohort(url)
    np.testing.assert_array_equal(cohort.open_image("imc", "B", 1.0).values, tifffile.imread(image))
    assert cohort.read_table("imc/channels_per_tissue.parquet").to_pydict() == {"tissue_id": ["B", "B"], "channel_name": ["X1", "X2"]}
    assert cohort.mask_tissues("tissue_masks") == ["B"]
    assert validate_store(url) == []
    location = Location.parse(url)
    leftovers = [p for p in location.fs().find(location.fs_path("")) if ".spora" in p and not p.endswith(SUMMARY_NAME)]
    assert leftovers == []


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_a_lock_file_that_is_no_file_of_sporas_is_never_written_through(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    lock = store / LOCK_NAME
    {"symlink": lambda: lock.symlink_to(precious), "hardlink": lambda: os.link(precious, lock), "fifo": lambda: os.mkfifo(lock)}[kind]()
    image = ome(tmp_path / "img.tif", np.zeros((2, 32, 32), np.uint16), 1.0)
    capsys.readouterr()
    assert main(["add-image", str(store), str(image), "--modality", "imc", "--tissue", "Z"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(lock) in lines[0], lines
    assert precious.read_text() == "mine" and not (store / "imc/images/Z").exists()


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_a_reader_never_hangs_or_fills_memory_on_a_hostile_lock_file(store: Path, target: str) -> None:
    lock = store / LOCK_NAME
    os.mkfifo(lock) if target == "fifo" else lock.symlink_to(target)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
    code = limit + f"from spora_zarr.cli import main; raise SystemExit(main(['info', {str(store)!r}]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-500:]
