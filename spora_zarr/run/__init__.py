"""The one runner of every cohort-wide verb: tasks run serially, in worker processes or on dask.distributed."""

from .runner import ProgressCallback, RunOptions, RunReport, Task, TaskOutcome, run_tasks

__all__ = ["ProgressCallback", "RunOptions", "RunReport", "Task", "TaskOutcome", "run_tasks"]
