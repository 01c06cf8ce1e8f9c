"""Independent jobs of one write run in lanes: one thread per core the writer may use, the first error raised."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

__all__ = ["in_lanes"]


def in_lanes(jobs: Sequence[Callable[[], object]], lanes: int) -> None:
    """Run independent ``jobs`` in ``lanes`` threads (in order, here, with one lane); the first error is raised."""
    if lanes == 1 or len(jobs) < 2:
        for job in jobs:
            job()
        return
    failed = threading.Event()

    def guarded(job: Callable[[], object]) -> None:
        if not failed.is_set():  # after a failure the remaining jobs are skipped
            try:
                job()
            except BaseException:
                failed.set()
                raise

    with ThreadPoolExecutor(max_workers=min(lanes, len(jobs)), thread_name_prefix="spora-lane") as pool:
        futures = [pool.submit(guarded, job) for job in jobs]
    for future in futures:
        future.result()
