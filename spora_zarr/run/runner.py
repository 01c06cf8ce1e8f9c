"""The one runner of cohort-wide work: tasks run serially, in worker processes or on dask.distributed.

Every cohort-wide command (convert, tile, standardize, predict) hands the
runner a list of tasks and one picklable function ``work(task, progress)`` that
does one task and returns its :class:`TaskOutcome`. A task is resumable by
construction: ``work`` returns ``skipped`` for a task whose result is already
complete at its final path. The runner never stops for one task: a task that
raises is recorded as failed with its reason, the others finish, and the
:class:`RunReport` says how many were written, kept and failed.

``RunOptions.scheduler`` is ``None`` (this machine: ``workers`` spawned
processes, or the calling process when ``workers == 1``), ``"local"`` (a dask
``LocalCluster`` of ``workers`` processes, started and stopped here) or the
address of a running ``dask.distributed`` scheduler (``tcp://HOST:PORT``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..errors import InvalidInputError, SporaZarrError
from ..process import available_cores
from ..runtime import configure_writer_process

log = logging.getLogger("spora_zarr")

__all__ = ["RunOptions", "RunReport", "Task", "TaskOutcome", "run_tasks"]

ProgressCallback = Callable[[int], None]


class Task(Protocol):
    """One unit of cohort-wide work: the store path of its result and a label for people."""

    @property
    def path(self) -> str: ...

    @property
    def label(self) -> str: ...


TaskT = TypeVar("TaskT", bound=Task)
Work = Callable[[TaskT, "ProgressCallback | None"], "TaskOutcome"]


@dataclass
class TaskOutcome:
    """The result of one task: written, skipped (already complete) or failed with a one-line reason."""

    path: str
    label: str
    skipped: bool = False
    error: str | None = None
    bytes_read: int = 0


@dataclass
class RunReport:
    """What a run did, task by task, in task order."""

    outcomes: list[TaskOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.error]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self, noun: str = "groups") -> str:
        """One line of counts, then one ``FAILED <task>: <reason>`` line per failure."""
        written = sum(1 for o in self.outcomes if not o.error and not o.skipped)
        skipped = sum(1 for o in self.outcomes if o.skipped)
        lines = [f"{written} {noun} written, {skipped} already complete, {len(self.failed)} failed"]
        lines += [f"FAILED {o.label}: {o.error}" for o in self.failed]
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Where tasks run and whether progress bars are shown."""

    workers: int = 1
    scheduler: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise InvalidInputError(f"workers={self.workers!r} is not a whole number >= 1")
        if self.scheduler is not None and self.scheduler != "local" and "://" not in self.scheduler:
            raise InvalidInputError(f"scheduler={self.scheduler!r} is not 'local' or an address like tcp://HOST:PORT")

    @property
    def codec_threads(self) -> int:
        """Codec threads per worker so that parallel tasks do not oversubscribe the cores this process may run on."""
        return max(1, available_cores() // self.workers)


def run_tasks(tasks: Sequence[TaskT], work: Work[TaskT], options: RunOptions, *, noun: str = "groups") -> RunReport:
    """Run ``work`` on every task where ``options`` say; return the outcomes in task order.

    Parameters
    ----------
    tasks
        The tasks; their ``path`` values are unique.
    work
        ``work(task, progress)`` does one task; ``progress(nbytes)`` (may be
        ``None``) advances the task's progress bar. It must be picklable (a
        module-level function or a ``functools.partial`` of one) for process
        and distributed runs.
    options
        Where to run.
    noun
        What a task produces, for the progress bar and the summary.
    """
    if options.scheduler:
        outcomes = _run_distributed(tasks, work, options, noun)
    elif options.workers > 1 and len(tasks) > 1:
        outcomes = _run_processes(tasks, work, options, noun)
    else:
        outcomes = _run_serial(tasks, work, options, noun)
    order = {t.path: i for i, t in enumerate(tasks)}
    return RunReport(sorted(outcomes, key=lambda o: order[o.path]))


def _guarded(work: Work[TaskT], task: TaskT, progress: ProgressCallback | None) -> TaskOutcome:
    """One task; an exception becomes a failed outcome, so the other tasks go on."""
    try:
        return work(task, progress)
    except SporaZarrError as exc:
        return TaskOutcome(task.path, task.label, error=str(exc))
    except Exception as exc:  # a bug or an environment failure in one task must not stop the others
        log.debug("task %s failed", task.label, exc_info=True)
        text = str(exc).strip()
        return TaskOutcome(task.path, task.label, error=f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}")


class _Progress:
    """A run's progress: tqdm bars on a terminal, one line per finished task otherwise, nothing when off.

    Without a terminal (a log file, CI), redrawn bars would flood the log, so
    each finished task is one line ``[k/N] wrote <label>`` on stderr instead.
    """

    def __init__(self, total: int, options: RunOptions, noun: str, **bar: Any) -> None:
        from tqdm.auto import tqdm

        self.total, self.done = total, 0
        self.bars = options.progress and sys.stderr.isatty()
        self.lines = options.progress and not self.bars
        self.bar = tqdm(total=total, disable=not self.bars, desc="cohort", unit=noun.rstrip("s"), **bar)

    def finished(self, outcome: TaskOutcome) -> None:
        self.done += 1
        self.bar.update()
        if outcome.error:
            log.error("%s: %s", outcome.label, outcome.error)
        else:
            log.info("%s %s", "kept" if outcome.skipped else "wrote", outcome.path)
        if self.lines:
            state = "FAILED" if outcome.error else ("kept" if outcome.skipped else "wrote")
            print(f"[{self.done}/{self.total}] {state} {outcome.label}", file=sys.stderr, flush=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _task_bar(task: Task, enabled: bool, position: int = 1) -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc=task.label, disable=not enabled, unit="B", unit_scale=True, leave=False, position=position)


def _run_serial(tasks: Sequence[TaskT], work: Work[TaskT], options: RunOptions, noun: str) -> list[TaskOutcome]:
    outcomes = []
    with _Progress(len(tasks), options, noun) as progress:
        for task in tasks:
            with _task_bar(task, progress.bars) as task_bar:
                outcomes.append(_guarded(work, task, task_bar.update))
            progress.finished(outcomes[-1])
    return outcomes


#: A worker with at least this many tasks gets them in batches (up to ``BATCH`` tasks a hand-off), so small
#: tasks (a 256² tissue takes tens of milliseconds) do not each pay a round trip to the run's process.
BATCH_FROM = 16
BATCH = 8


def _in_worker(work: Work[TaskT], tasks: Sequence[TaskT], progress: bool) -> list[TaskOutcome]:
    outcomes = []
    for task in tasks:
        with _task_bar(task, progress, (os.getpid() % 8) + 1) as task_bar:
            outcomes.append(_guarded(work, task, task_bar.update))
    return outcomes


def _batches(tasks: Sequence[TaskT], workers: int) -> list[Sequence[TaskT]]:
    """The tasks in the hand-offs to worker processes: one each, or up to ``BATCH`` when each worker has many."""
    size = 1 if len(tasks) < BATCH_FROM * workers else min(BATCH, len(tasks) // (BATCH_FROM * workers) + 1)
    return [tasks[i : i + size] for i in range(0, len(tasks), size)]


def _run_processes(tasks: Sequence[TaskT], work: Work[TaskT], options: RunOptions, noun: str) -> list[TaskOutcome]:
    context = multiprocessing.get_context("spawn")  # no fork: codec thread pools do not survive it
    outcomes = []
    pool = ProcessPoolExecutor(
        options.workers, mp_context=context, initializer=_start_worker, initargs=(options.codec_threads, os.getpid())
    )
    try:
        bars = options.progress and sys.stderr.isatty()
        with _ctrl_c_blocked():  # workers start with Ctrl-C blocked (and then ignore it): this process answers it
            futures = {pool.submit(_in_worker, work, batch, bars): batch for batch in _batches(tasks, options.workers)}
        with _Progress(len(tasks), options, noun, position=0) as progress:
            for future in as_completed(futures):
                try:
                    done = future.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    batch = futures[future]
                    why = f"worker process failed: {type(exc).__name__}: {exc}"
                    if len(batch) > 1:  # which of its tasks finished is not known here; a rerun keeps those
                        why += f" (in a batch of {len(batch)} tasks; the ones that finished are complete and a rerun keeps them)"
                    done = [TaskOutcome(task.path, task.label, error=why) for task in batch]
                for outcome in done:
                    outcomes.append(outcome)
                    progress.finished(outcome)
    except BaseException:  # Ctrl-C: stop the workers before the run (and its store lock) ends; their staged work is deleted
        _stop_workers(pool)
        raise
    pool.shutdown()
    return outcomes


_WORKER_READY = False  # set in a worker process once _start_worker is done


def _start_worker(codec_threads: int, run_pid: int) -> None:
    """Set up a worker process: it ends with the run's process ``run_pid``; Ctrl-C is that process's to answer (no
    worker tracebacks); SIGTERM ends it cleanly."""
    global _WORKER_READY
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _end_with_run(run_pid)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    configure_writer_process(codec_threads)
    _WORKER_READY = True


def _end_with_run(run_pid: int) -> None:
    """Have the kernel kill this worker when the run's process ``run_pid`` ends, however it ends (Linux).

    The run's process holds the store's lock for its workers. Killed (``kill -9``, the out-of-memory killer), it
    takes the lock with it while its workers would go on writing, and a resume started then would run beside them:
    its recovery deletes their staging areas while they fill them, and they promote groups whose level documents are
    gone. ``PR_SET_PDEATHSIG`` ends a worker with the thread that started it (the run's thread, which outlives the
    pool); a run that ended before this call is seen by the worker's parent being another process.
    """
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != run_pid:  # the run ended before the call: nobody holds the lock for this worker
        os._exit(1)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_on_signal(signum: int, frame: object) -> None:
    if not _WORKER_READY:  # still in _start_worker: an exception there is printed with its traceback by the pool
        os._exit(128 + signum)
    raise SystemExit(128 + signum)  # unwinds the task (its staged work is deleted) and exits the process normally


@contextlib.contextmanager
def _ctrl_c_blocked() -> Iterator[None]:
    """Hold back SIGINT while worker processes start (they inherit the mask); it arrives here afterwards."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now, waiting until they are gone."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public way to end running tasks (3.11)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
    pool.shutdown(wait=True)  # the pool's own thread sees its workers gone and releases its queues


def _run_distributed(tasks: Sequence[TaskT], work: Work[TaskT], options: RunOptions, noun: str) -> list[TaskOutcome]:
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError:
        raise SporaZarrError(f"scheduler={options.scheduler!r} needs dask.distributed: pip install 'spora_zarr[distributed]'") from None
    cluster = None
    if options.scheduler == "local":
        cluster = LocalCluster(n_workers=max(2, options.workers), threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        client.run(configure_writer_process, options.codec_threads)  # our own workers: set them up as the CLI's
    else:
        try:
            client = Client(options.scheduler, timeout="30s")
        except OSError as exc:
            raise SporaZarrError(f"cannot reach the dask scheduler at {options.scheduler}: {exc}") from None
    outcomes = []
    try:
        futures = {
            client.submit(_guarded, work, task, None, key=f"spora-{task.path}-{i}", pure=False): task for i, task in enumerate(tasks)
        }
        with _Progress(len(futures), options, noun) as progress:
            for future in dask_completed(list(futures)):
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker was lost
                    task = futures[future]
                    outcome = TaskOutcome(task.path, task.label, error=f"dask worker failed: {type(exc).__name__}: {exc}")
                outcomes.append(outcome)
                progress.finished(outcome)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes
