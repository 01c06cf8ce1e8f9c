"""The one runner of cohort-wide work: every task runs, a failing task is reported, the rest finish."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

from spora_zarr import InvalidInputError
from spora_zarr.run import ProgressCallback, RunOptions, TaskOutcome, run_tasks


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


@pytest.mark.parametrize("workers", [0, -1, True, 1.5])
def test_impossible_worker_counts_are_refused(workers: object) -> None:
    with pytest.raises(InvalidInputError, match="^workers=.* is not a whole number"):
        RunOptions(workers=workers)  # type: ignore[arg-type]


def test_a_scheduler_must_be_an_address() -> None:
    with pytest.raises(InvalidInputError, match="tcp://"):
        RunOptions(scheduler="localhost:8786")
