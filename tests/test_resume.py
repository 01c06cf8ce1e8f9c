"""A conversion killed with SIGKILL at any point leaves nothing half-done visible, and a re-run finishes it.

Kill points are chosen by progress (bytes on disk in the destination), not by time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from spora_zarr import ConvertOptions, WriteOptions, convert_cohort, open_cohort
from spora_zarr.store.layout import MASK_KINDS
from spora_zarr.testing.cohorts import make_synthetic_cohort

LAYOUT = ["--shard", "224", "--chunk", "112"]


def disk_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def convert_command(src: Path, dest: Path) -> list[str]:
    return [sys.executable, "-m", "spora_zarr.cli", "convert", "--no-progress", str(src), str(dest), *LAYOUT]


def kill_at(src: Path, dest: Path, threshold: int) -> bool:
    """Run a conversion and SIGKILL it once the destination holds ``threshold`` bytes; whether it was killed."""
    process = subprocess.Popen(convert_command(src, dest), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if dest.exists() and disk_bytes(dest) >= threshold:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)
    process.wait(timeout=120)
    return False


def group_dirs(dest: Path) -> list[Path]:
    """Every directory at a final group path (whatever its state)."""
    found = []
    for parent in [*dest.glob("*/images"), *dest.glob("ihc/*/images"), *(dest / "segmentations" / k for k in MASK_KINDS)]:
        if parent.is_dir():
            found += [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return found


def snapshot(dest: Path) -> dict[str, object]:
    """Group documents, array metadata and pixels of every group, and table bytes."""
    state: dict[str, object] = {}
    for group in group_dirs(dest):
        rel = str(group.relative_to(dest))
        state[rel] = json.loads((group / "zarr.json").read_text())
        for level in zarr.open_group(group, mode="r").array_keys():
            array = zarr.open_array(group / level, mode="r")
            state[f"{rel}/{level}"] = (json.loads((group / level / "zarr.json").read_text()), array[...].tobytes())
    for table in dest.rglob("*.parquet"):
        if ".spora_tmp" not in table.parts:
            state[str(table.relative_to(dest))] = table.read_bytes()
    state["/"] = json.loads((dest / "zarr.json").read_text())
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("resume")
    src = make_synthetic_cohort(root / "src", tissues=("A", "B", "C", "D"), he_shape=(460, 470), seed=5)
    dest = root / "reference.zarr"
    subprocess.run(convert_command(src, dest), check=True, capture_output=True)
    return src, dest, snapshot(dest)


def assert_only_complete_groups_visible(dest: Path, ref: dict[str, object]) -> None:
    cohort = open_cohort(dest)
    for group in group_dirs(dest):
        document = json.loads((group / "zarr.json").read_text())  # a group dir without zarr.json would fail here
        assert document["attributes"]["ome"]["multiscales"], group
        rel = str(group.relative_to(dest))
        assert document == ref[rel]
        for level in zarr.open_group(group, mode="r").array_keys():
            assert zarr.open_array(group / level, mode="r")[...].tobytes() == ref[f"{rel}/{level}"][1], f"{rel}/{level}"  # type: ignore[index]
    for table in dest.rglob("*.parquet"):
        if ".spora_tmp" not in table.parts:
            assert table.read_bytes() == ref[str(table.relative_to(dest))]
    for modality in cohort.modalities:
        assert set(cohort.tissues(modality)) <= {"A", "B", "C", "D"}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.55, 0.8, 0.97])
def test_killed_conversion_resumes_to_the_same_store(
    reference: tuple[Path, Path, dict[str, object]], tmp_path: Path, fraction: float
) -> None:
    src, ref_dest, ref = reference
    dest = tmp_path / "cohort.zarr"
    killed = kill_at(src, dest, int(disk_bytes(ref_dest) * fraction))
    assert killed, "the conversion finished before the kill point"
    assert_only_complete_groups_visible(dest, ref)
    if fraction > 0.5:  # a second kill, of the resuming run
        kill_at(src, dest, int(disk_bytes(ref_dest) * min(1.0, fraction + 0.1)))
        assert_only_complete_groups_visible(dest, ref)
    result = subprocess.run(convert_command(src, dest), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert snapshot(dest) == ref
    assert not (dest / ".spora_tmp").exists()


def test_resume_skips_complete_groups_and_overwrite_redoes_them(reference: tuple[Path, Path, dict[str, object]], tmp_path: Path) -> None:
    src, _, ref = reference
    dest = tmp_path / "cohort.zarr"
    options = ConvertOptions(progress=False, write=WriteOptions(shard=224, chunk=112))
    first = convert_cohort(src, dest, options)
    assert first.ok and not any(o.skipped for o in first.outcomes)
    again = convert_cohort(src, dest, options)
    assert again.ok and all(o.skipped for o in again.outcomes) and again.tables == []
    redo = convert_cohort(src, dest, ConvertOptions(progress=False, overwrite=True, write=WriteOptions(shard=224, chunk=112)))
    assert redo.ok and not any(o.skipped for o in redo.outcomes)
    assert snapshot(dest) == ref


def test_interrupted_promotion_is_finished_by_recovery(reference: tuple[Path, Path, dict[str, object]], tmp_path: Path) -> None:
    """The moment between moving the old version aside and moving the new one in."""
    src, _, ref = reference
    dest = tmp_path / "cohort.zarr"
    convert_cohort(src, dest, ConvertOptions(progress=False, write=WriteOptions(shard=224, chunk=112)))
    group = dest / "imc/images/A"
    staged = dest / ".spora_tmp/abc/imc/images/A"
    old = dest / ".spora_tmp/abc.old/imc/images/A"
    staged.parent.mkdir(parents=True)
    old.parent.mkdir(parents=True)
    os.system(f"cp -r {group} {staged}")
    group.rename(old)
    assert "A" not in open_cohort(dest).tissues("imc")
    convert_cohort(src, dest, ConvertOptions(progress=False, write=WriteOptions(shard=224, chunk=112)))
    assert snapshot(dest) == ref
    assert not (dest / ".spora_tmp").exists()


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from ``/proc``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="workers end with the run through Linux's PR_SET_PDEATHSIG")
@pytest.mark.timeout(600)
def test_a_killed_run_takes_its_worker_processes_with_it(reference: tuple[Path, Path, dict[str, object]], tmp_path: Path) -> None:
    """``kill -9`` of a ``--workers`` run ends its workers too: the store's lock died with the run, and a resume
    beside workers still writing would see groups whose level documents its recovery had deleted."""
    src, ref_dest, ref = reference
    dest = tmp_path / "cohort.zarr"
    process = subprocess.Popen([*convert_command(src, dest), "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threshold, deadline, workers = disk_bytes(ref_dest) // 20, time.monotonic() + 120, set()
    while process.poll() is None and time.monotonic() < deadline:
        workers |= _children(process.pid)
        if len(workers) >= 3 and dest.exists() and disk_bytes(dest) >= threshold:  # two workers and multiprocessing's tracker
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "the conversion finished before the kill point"
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the killed run"
    assert_only_complete_groups_visible(dest, ref)
    result = subprocess.run(convert_command(src, dest), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert snapshot(dest) == ref
