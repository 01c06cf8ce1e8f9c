"""Per-process engine state that forked children inherit: which engines this process used, and one lock.

Once a process has used tensorstore, a forked child aborts (tensorstore 0.1.86:
"fork() use detected") or hangs on its first tensorstore call, even through a
fresh handle. The same holds for zarrs: its Rust thread pool is not carried
into a forked child, and the child's first zarrs read hangs.

This module records the pid of the process that first used each of them
(:func:`note_use`; the writer calls :func:`note_zarrs_use`). A forked child
inherits the record with another pid: :func:`poisoned` then says it must not
use that engine. A tensorstore thread pool started by other code is also
noticed at fork time (its threads are named ``ts_...``); zarrs use by other
code is not.

:data:`LOCK` serialises what must not interleave between threads of one
process: the reader cache, zarr's global configuration and the first use of an
engine. A forked child gets a new one (another thread may have held it at the
fork); read it as ``process.LOCK``, never import the name.
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["LOCK", "note_use", "note_zarrs_use", "poisoned", "thread_names", "used_by"]

_TENSORSTORE_USED_BY_PID: int | None = None
_ZARRS_USED_BY_PID: int | None = None
LOCK = threading.RLock()


def used_by(engine: str) -> int | None:
    """The pid of the process that first used ``engine`` (``"tensorstore"`` or ``"zarrs"``), as inherited; None for others."""
    return {"tensorstore": _TENSORSTORE_USED_BY_PID, "zarrs": _ZARRS_USED_BY_PID}.get(engine)


def poisoned(engine: str) -> bool:
    """Whether this process is a forked child of a process that used ``engine``."""
    pid = used_by(engine)
    return pid is not None and pid != os.getpid()


def note_use(engine: str) -> None:
    """Record that this process starts the thread pools of ``engine`` (``"tensorstore"`` or ``"zarrs"``)."""
    global _TENSORSTORE_USED_BY_PID, _ZARRS_USED_BY_PID
    with LOCK:
        if engine == "tensorstore" and _TENSORSTORE_USED_BY_PID is None:
            _TENSORSTORE_USED_BY_PID = os.getpid()
        elif engine == "zarrs" and _ZARRS_USED_BY_PID is None:
            _ZARRS_USED_BY_PID = os.getpid()


def note_zarrs_use() -> None:
    """Record that this process runs zarrs' codec pipeline outside a reader (the writer does).

    Its forked children then never read through zarrs: their first
    multi-threaded zarrs call would hang on the thread pool they inherit
    without its threads.
    """
    note_use("zarrs")


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


def _before_fork() -> None:
    global _TENSORSTORE_USED_BY_PID
    if _TENSORSTORE_USED_BY_PID is None and "tensorstore" in sys.modules and any(name.startswith("ts_") for name in thread_names()):
        _TENSORSTORE_USED_BY_PID = os.getpid()


def _after_fork_in_child() -> None:
    global LOCK
    LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
