"""Process lifecycle: what a forked child must not inherit, in one place.

Four tools, used by every module that keeps per-process state:

- :func:`on_fork` registers callbacks run around ``os.fork`` (before it in the
  parent, after it in the parent and in the child);
- :class:`PerProcess` holds a value made once per process: a lock, a cache, a
  thread pool, a library context. A forked child never sees its parent's
  value: its first :meth:`PerProcess.get` makes its own. The parent's value is
  kept referenced in the child, never used, so that its destructor (a thread
  pool's, a CUDA model's) does not run in a process without its threads;
- :func:`note_use` / :func:`used_by` / :func:`poisoned` record which process
  first started the thread pools of a library that is not fork safe;
- :func:`fork_excluded` marks sections no fork lands in (the datasets' tile
  reads: torch's operators initialise native state on their first call).

Once a process has used tensorstore, a forked child aborts (tensorstore 0.1.86:
"fork() use detected") or hangs on its first tensorstore call, even through a
fresh handle. The same holds for zarrs: its Rust thread pool is not carried
into a forked child, and the child's first zarrs read hangs. The readers
(:mod:`spora_zarr.read.levels`) and the writer (which runs zarrs' codec
pipeline) record their use with :func:`note_use`; a forked child inherits the
record with another pid, and :func:`poisoned` then says it must not use that
library. A tensorstore thread pool started by other code is also noticed at
fork time (its threads are named ``ts_...``); zarrs use by other code is not.

:data:`LOCK` serialises what must not interleave between threads of one
process: the reader cache, zarr's global configuration, the first use of an
engine and the validation of NGFF metadata (``with LOCK.get():``). Work under
it takes other libraries' locks midway: donfig's in ``zarr.config.set``, the
``functools.cached_property`` locks pydantic takes when ome-zarr-models builds
a model class inside a validation. A child forked at that moment would inherit
them held by a thread it does not have, and hang on its own first use. So
every fork waits for LOCK (a ``before`` hook takes it, the parent releases it
after the fork) and the child gets its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import InvalidInputError

__all__ = [
    "LIBRARIES",
    "LOCK",
    "PerProcess",
    "available_cores",
    "fork_excluded",
    "note_use",
    "on_fork",
    "poisoned",
    "thread_names",
    "used_by",
]

T = TypeVar("T")

#: The libraries whose use :func:`note_use` records: not fork safe once their thread pools started.
LIBRARIES = ("tensorstore", "zarrs")

_INSTANCES: weakref.WeakSet[PerProcess[Any]] = weakref.WeakSet()  # reset after a fork


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under ``taskset``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def on_fork(
    *,
    before: Callable[[], None] | None = None,
    after_in_parent: Callable[[], None] | None = None,
    after_in_child: Callable[[], None] | None = None,
) -> None:
    """Run ``before`` in the parent before every ``os.fork``, ``after_in_parent`` in the parent after it and
    ``after_in_child`` in the child after it.

    ``os.register_at_fork`` semantics (``before`` hooks run in reverse order of
    registration, the others in order; an exception is reported, not raised);
    a no-op where the platform has no fork.
    """
    given = (("before", before), ("after_in_parent", after_in_parent), ("after_in_child", after_in_child))
    hooks = {name: hook for name, hook in given if hook is not None}
    if hooks and hasattr(os, "register_at_fork"):
        os.register_at_fork(**hooks)


class PerProcess(Generic[T]):
    """A value made by ``factory`` once per process, on first use; a forked child makes its own.

    Parameters
    ----------
    factory : callable
        Makes the value (``dict``, ``threading.Lock``, ...); called with no arguments,
        at most once per process between two :meth:`clear` calls.

    Examples
    --------
    >>> readers: PerProcess[dict[str, object]] = PerProcess(dict)
    >>> readers.get()["a"] = 1
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: T | None = None
        self._inherited: list[T] = []  # a parent's values, kept from their destructors
        _INSTANCES.add(self)

    def get(self) -> T:
        """This process's value, made now if this process has none."""
        pid = os.getpid()
        if self._pid == pid:  # the pid is set after the value, and read before it
            return self._value  # type: ignore[return-value]  # made by the factory for this pid
        with self._lock:
            if self._pid != pid:
                if self._pid is not None:
                    self._inherited.append(self._value)  # type: ignore[arg-type]  # set with the pid
                self._value = self._factory()
                self._pid = pid
            return self._value  # type: ignore[return-value]  # made for this pid

    def clear(self) -> None:
        """Drop this process's value: the next :meth:`get` makes a new one (the old one is released then, not now:
        a thread that read it just before keeps a valid value)."""
        with self._lock:
            if self._pid == os.getpid():
                self._pid = None

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork


def _reset_instances() -> None:
    for instance in list(_INSTANCES):
        instance._after_fork_in_child()  # noqa: SLF001 - the class's own fork hook


on_fork(after_in_child=_reset_instances)

LOCK: PerProcess[threading.RLock] = PerProcess(threading.RLock)


def _take_lock() -> None:
    LOCK.get().acquire()


def _release_lock() -> None:
    LOCK.get().release()


# Every fork waits for the thread in LOCK to leave it; the child gets a new LOCK (the hook above).
# Registered first, this ``before`` hook runs after every other one: it holds LOCK only across the fork itself.
on_fork(before=_take_lock, after_in_parent=_release_lock)


class _ForkGate:
    """Sections that no fork lands in: threads may be inside at once; a fork waits until none is."""

    def __init__(self) -> None:
        self._depth = threading.local()  # this thread's nesting of sections
        self.after_fork_in_child()

    def after_fork_in_child(self) -> None:
        self._condition = threading.Condition(threading.Lock())  # a parent's thread may have held it at the fork
        self._inside = 1 if getattr(self._depth, "n", 0) else 0  # the forking thread alone survives the fork
        self._forking = 0

    def enter(self) -> None:
        """Enter a section (a thread already inside goes on: a fork waiting for it must not wait for itself)."""
        local = self._depth
        depth = getattr(local, "n", 0)
        if not depth:
            with self._condition:
                while self._forking:
                    self._condition.wait()
                self._inside += 1
        local.n = depth + 1

    def leave(self) -> None:
        """Leave the section entered last."""
        local = self._depth
        local.n -= 1
        if not local.n:
            with self._condition:
                self._inside -= 1
                if self._forking:
                    self._condition.notify_all()

    def before_fork(self) -> None:
        mine = 1 if getattr(self._depth, "n", 0) else 0
        with self._condition:
            self._forking += 1  # threads about to enter wait until the fork is done
            while self._inside > mine:
                self._condition.wait()

    def after_fork_in_parent(self) -> None:
        with self._condition:
            self._forking -= 1
            self._condition.notify_all()


_GATE = _ForkGate()
# Registered after LOCK's hook, so it runs before it: a thread in a section may still need LOCK to leave it.
on_fork(before=_GATE.before_fork, after_in_parent=_GATE.after_fork_in_parent, after_in_child=_GATE.after_fork_in_child)


class _ForkExcluded(contextlib.ContextDecorator):
    def __enter__(self) -> None:
        _GATE.enter()

    def __exit__(self, *exc: object) -> None:
        _GATE.leave()


_EXCLUDED = _ForkExcluded()


def fork_excluded() -> _ForkExcluded:
    """A section that no ``os.fork`` of this process lands in (a context manager, and a decorator: ``@fork_excluded()``).

    Threads may be inside at once, and nest it; a fork waits until none is,
    and threads that would enter meanwhile wait for the fork. For work that
    initialises native state a child would find half made: a C++ library's
    first call of a function takes its static's guard and glibc's
    ``__exit_funcs_lock`` (torch's operators do), and a child forked then
    hangs on its own first call. A thread that forks inside a section does
    not wait for itself.
    """
    return _EXCLUDED


_USED_BY: dict[str, int] = {}  # library -> pid of the process that first used it; inherited by forked children


def _check_library(library: str) -> None:
    if library not in LIBRARIES:
        raise InvalidInputError(f"library {library!r}: not one whose use is recorded; expected one of {', '.join(LIBRARIES)}")


def used_by(library: str) -> int | None:
    """The pid of the process that first used ``library`` (``"tensorstore"`` or ``"zarrs"``), as inherited;
    None if no process did (or for another library)."""
    return _USED_BY.get(library)


def poisoned(library: str) -> bool:
    """Whether this process is a forked child of a process that used ``library``."""
    pid = used_by(library)
    return pid is not None and pid != os.getpid()


def note_use(library: str) -> None:
    """Record that this process starts the thread pools of ``library`` (``"tensorstore"`` or ``"zarrs"``).

    Its forked children then never use it. The first record stands: a forked
    child that is refused the library never records its own use.
    """
    _check_library(library)
    with LOCK.get():
        _USED_BY.setdefault(library, os.getpid())


def thread_names() -> list[str]:
    """The names of this process's threads (Linux; empty elsewhere)."""
    names = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/comm") as fh:
                names.append(fh.read().strip())
    except OSError:
        pass
    return names


def _notice_tensorstore_threads() -> None:
    """Before a fork: record a tensorstore thread pool that other code started."""
    if "tensorstore" not in _USED_BY and "tensorstore" in sys.modules and any(n.startswith("ts_") for n in thread_names()):
        _USED_BY["tensorstore"] = os.getpid()


on_fork(before=_notice_tensorstore_threads)
