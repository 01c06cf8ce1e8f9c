"""The one runner of cohort-wide work: every task runs, a failing task is reported, the rest finish."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from spora_zarr import InvalidInputError
from spora_zarr.run import ProgressCallback, RunOptions, TaskOutcome, run_tasks
from spora_zarr.run.runner import BATCH_FROM, _batches


@dataclass(frozen=True)
class Job:
    path: str
    label: str


def touch(task: Job, progress: ProgressCallback | None, *, root: str) -> TaskOutcome:
    """Write a file per task; ``bad`` tasks raise a plain exception (a bug), ``done`` ones are already complete."""
    target = Path(root) / task.path
    if task.label.startswith("bad"):
        raise RuntimeError(f"boom in {task.label}")
    if target.exists():
        return TaskOutcome(task.path, task.label, skipped=True)
    target.write_text(task.label)
    if progress is not None:
        progress(1)
    return TaskOutcome(task.path, task.label)


@pytest.mark.parametrize("options", [RunOptions(progress=False), RunOptions(workers=2, progress=False)], ids=["serial", "processes"])
def test_failures_are_reported_and_the_other_tasks_finish(tmp_path: Path, options: RunOptions) -> None:
    (tmp_path / "c").write_text("old")
    tasks = [Job("a", "one"), Job("b", "bad two"), Job("c", "three"), Job("d", "four")]
    report = run_tasks(tasks, functools.partial(touch, root=str(tmp_path)), options)
    assert [o.path for o in report.outcomes] == ["a", "b", "c", "d"]  # task order, whatever order they finished in
    assert [o.label for o in report.failed] == ["bad two"] and "RuntimeError: boom in bad two" in (report.failed[0].error or "")
    assert report.outcomes[2].skipped and (tmp_path / "c").read_text() == "old"
    assert (tmp_path / "a").read_text() == "one" and (tmp_path / "d").read_text() == "four"
    expected = ["2 files written, 1 already complete, 1 failed", "FAILED bad two: RuntimeError: boom in bad two"]
    assert report.summary("files").splitlines() == expected
    assert not report.ok


def crash_once(task: Job, progress: ProgressCallback | None, *, root: str) -> TaskOutcome:
    """:func:`touch`, but the ``crash`` task kills its worker process the first time it runs."""
    marker = Path(root) / "crashed"
    if task.label == "crash" and not marker.exists():
        marker.write_text("")
        os._exit(1)
    return touch(task, progress, root=root)


def test_batched_tasks_of_a_dead_worker_are_failed_with_the_reason_and_a_rerun_completes_them(tmp_path: Path) -> None:
    options = RunOptions(workers=2, progress=False)
    tasks = [Job(f"t{i:02d}", "crash" if i == 20 else f"job {i}") for i in range(BATCH_FROM * 2 + 8)]  # batched hand-offs
    assert max(len(b) for b in _batches(tasks, 2)) > 1
    work = functools.partial(crash_once, root=str(tmp_path))
    first = run_tasks(tasks, work, options)
    assert [o.path for o in first.outcomes] == [t.path for t in tasks]
    assert first.failed and all("worker process failed" in (o.error or "") for o in first.failed)
    assert any("in a batch of" in (o.error or "") for o in first.failed)
    second = run_tasks(tasks, work, options)
    assert second.ok and sorted(p.name for p in tmp_path.glob("t*")) == [t.path for t in tasks]
    assert len([o for o in second.outcomes if not o.skipped]) <= len(first.failed)  # only the failed ones ran again


@pytest.mark.parametrize("workers", [0, -1, True, 1.5])
def test_impossible_worker_counts_are_refused(workers: object) -> None:
    with pytest.raises(InvalidInputError, match="^workers=.* is not a whole number"):
        RunOptions(workers=workers)  # type: ignore[arg-type]


def test_a_scheduler_must_be_an_address() -> None:
    with pytest.raises(InvalidInputError, match="tcp://"):
        RunOptions(scheduler="localhost:8786")
