"""Shared fixtures: real TIFF cohorts on disk, converted by the real converter."""

from __future__ import annotations

import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from spora_zarr import ConvertOptions, convert_cohort
from spora_zarr.testing.cohorts import make_synthetic_cohort

os.environ.setdefault("TQDM_DISABLE", "1")

RUN_ALL_HINT = "slow: run with --all or SPORA_TEST_ALL=1 (CI does)"
FORK_TIMEOUT = 30  # seconds a forked child may take before in_forked_child fails the test


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all", action="store_true", default=False, help="also run the tests marked slow (as SPORA_TEST_ALL=1 does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``slow`` unless ``--all``, ``SPORA_TEST_ALL=1`` or a ``-m`` expression naming ``slow`` asks for them."""
    if config.getoption("--all") or os.environ.get("SPORA_TEST_ALL") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason=RUN_ALL_HINT)
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def read_source_chw(path: str | Path) -> np.ndarray:
    """A source image as (C, H, W), read with tifffile/zarr directly (independent of spora_zarr.sources)."""
    path = str(path)
    if path.endswith(".zarr"):
        array = zarr.open_array(path, mode="r")[:]
        return array.transpose(2, 0, 1) if array.ndim == 3 else array[None]
    with tifffile.TiffFile(path) as tiff:
        series = tiff.series
        if len(series) > 1 and all(s.axes == "YX" for s in series):
            return np.stack([s.asarray() for s in series])
        data, axes = series[0].asarray(), series[0].axes
    if axes.endswith("S"):
        return data.transpose(2, 0, 1)
    return data if data.ndim == 3 else data[None]


def source_images(cohort: Path) -> list[tuple[str, str, str, Path]]:
    """(modality or mask kind, resolution name, tissue id, path) of every image file of a TIFF cohort."""
    found = []
    for path in sorted(cohort.rglob("*")):
        rel = path.relative_to(cohort).parts
        if path.suffix.lower() in (".tif", ".tiff") or (path.suffix == ".zarr" and path.is_dir()):
            tissue = path.name.rsplit(".", 1)[0]
            if rel[0] == "segmentations":
                found.append((rel[2], rel[1], tissue, path))
            elif "images" in rel:
                found.append(("/".join(rel[: rel.index("images") - 1]), rel[rel.index("images") - 1], tissue, path))
            else:
                found.append(("/".join(rel[:-2]), rel[-2], tissue, path))
    return found


def in_forked_child(function: Callable[[], Any]) -> Any:
    """Fork (``os.fork``), run ``function`` in the child and return what it returned there; fail on a hang."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        os.close(read_end)
        try:
            payload = pickle.dumps(("ok", function()))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = pickle.dumps(("error", repr(exc)))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
        os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], FORK_TIMEOUT)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the forked child hung for {FORK_TIMEOUT} s")
        with os.fdopen(read_end, "rb") as pipe:
            status, value = pickle.loads(pipe.read())
    finally:
        os.waitpid(pid, 0)
    assert status == "ok", value
    return value


def fork_while_held(inside: threading.Event, release: threading.Event, threads: list[threading.Thread], timeout: float) -> float:
    """Fork once a thread has set ``inside`` and while ``release`` holds it there (set 0.3 s later); the child's start time.

    ``threads`` are started here and joined after; ``time.monotonic`` in the child says when the fork returned, to
    compare with when the held thread went on.
    """
    for thread in threads:
        thread.start()
    timer = threading.Timer(0.3, release.set)
    try:
        assert inside.wait(timeout)
        timer.start()
        forked_at: float = in_forked_child(time.monotonic)
    finally:
        timer.cancel()
        release.set()
        for thread in threads:
            thread.join()
    return forked_at


def convert_small_cohort(root: Path) -> Path:
    """``root/c.zarr``: tissues A, B, C (H&E; IMC with 5 channels, C with 4; both masks) at 1.0 mpp, converted."""
    src = make_synthetic_cohort(root / "src", tissues=("A", "B", "C"), he_shape=(90, 130), resolutions=(1.0,), ihc_markers=(), seed=5)
    report = convert_cohort(src, root / "c.zarr", ConvertOptions(progress=False))
    assert report.ok, report.summary()
    return root / "c.zarr"


@pytest.fixture(scope="session")
def cohort_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic cohort with every source variant, and its conversion (serial, defaults)."""
    root = tmp_path_factory.mktemp("cohort")
    src = make_synthetic_cohort(
        root / "tiff",
        tissues=("A", "B", "C"),
        he_shape=(301, 517),
        page_per_channel={"A": True, "B": False, "C": True},
        legacy_zarr_tissue="C",
        seed=1,
    )
    dest = root / "cohort.zarr"
    report = convert_cohort(src, dest, ConvertOptions(progress=False))
    assert report.ok, report.summary()
    return src, dest
