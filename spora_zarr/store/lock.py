"""One writer per store: a lock in the store, held by every verb that writes for as long as it writes.

A local store is locked with ``flock`` on ``<store>/.spora_lock``. The
kernel drops the lock when its holder exits or is killed (SIGKILL included),
so a lock left by a dead run is stale by construction and the next writer
takes it. The file records the holder (verb, pid, host, start time) for the
refusal message and is removed when the holder finishes.

Object stores have no locks: there the lock is a ``.spora_lock`` object,
best effort (written when absent and read back; a second writer starting in
the same instant is not detected). An object left by a killed run is stale
when it names this host and a pid that is not running; one from another host
must be deleted by hand once its holder is gone (the refusal names it).

Worker processes of a run never take the lock: the verb's own process holds
it for the whole run, and the processes it starts inherit the lock's token
(an environment variable), so :func:`writer_at_work` does not count their own
run. Nested verbs in one process share the lock.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ..errors import SporaZarrError, StoreError
from ..process import PerProcess
from .location import Location, open_local_file

if TYPE_CHECKING:
    from .summary import RunRecord

__all__ = ["LOCK_NAME", "store_lock", "writer_at_work", "writes_store"]

log = logging.getLogger("spora_zarr")

LOCK_NAME = ".spora_lock"
_HELD: PerProcess[dict[str, int]] = PerProcess(dict)  # store root -> nesting depth in this process
_RUN_LOCKS = "SPORA_ZARR_RUN_LOCKS"  # tokens of the locks held by this process's run, for its workers
P = ParamSpec("P")
R = TypeVar("R")


def writes_store(verb: str, argument: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a verb that writes the store given as its parameter ``argument``: it runs holding the store's lock.

    The store's ``storage_options`` come from the verb's parameter of that name, if any.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind(*args, **kwargs).arguments
            with store_lock(Location.parse(bound[argument], bound.get("storage_options")), verb):
                return function(*args, **kwargs)

        return locked

    return decorate


@contextlib.contextmanager
def store_lock(location: Location, verb: str) -> Iterator[None]:
    """Hold the store's writer lock while the block runs; ``StoreError`` if another writer holds it."""
    held, key = _HELD.get(), location.root
    if key in held:
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    from .summary import run_record  # summary reads through the metadata module, which uses the lock

    location.check_writable(verb)  # an http(s) store: one line, before any lock object is written
    holder = _holder(verb)
    release = _lock_local(location, holder) if location.is_local else _lock_object(location, holder)
    held[key] = 1
    outer = os.environ.get(_RUN_LOCKS)
    os.environ[_RUN_LOCKS] = f"{outer or ''} {holder['token']}".strip()  # the run's worker processes inherit it
    finished = False
    try:
        with run_record(location) as record:
            yield
            finished = True
    finally:
        del held[key]
        if outer is None:
            os.environ.pop(_RUN_LOCKS, None)
        else:
            os.environ[_RUN_LOCKS] = outer
        try:
            if finished:  # a failed run changes no file more (a summary it removed stays removed: readers read the groups)
                _write_summaries(location, record)
        finally:
            release()


def _write_summaries(location: Location, record: RunRecord) -> None:
    """Write the directory summaries the run's promotions removed, while the lock is held; a failure is a warning."""
    from .summary import write_summaries

    try:
        write_summaries(location, record=record)
    except (SporaZarrError, OSError) as exc:
        log.warning("%s: directory summaries not written (%s); readers read each group's documents", location, exc)


def _holder(verb: str) -> dict[str, Any]:
    return {
        "verb": verb,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "token": uuid.uuid4().hex,
    }


def writer_at_work(location: Location) -> str | None:
    """Who is writing the store (``convert (pid 12 on host, since ...)``), for readers to warn; ``None`` when no one is.

    Read from the lock file or object; the lock of this process's own run (it
    or the run that started it as a worker), or one left by a dead process of
    this host, does not count.
    """
    try:
        holder = _parse(_read_lock(location))
    except (FileNotFoundError, OSError, StoreError):
        return None  # none, or no lock file of spora's (a FIFO, a link to /dev/zero: never read)
    if holder is not None and (holder.get("token") in os.environ.get(_RUN_LOCKS, "").split() or _is_stale(holder)):
        return None
    return _who(holder)


def _read_lock(location: Location) -> bytes:
    """The bytes of the lock file or object; a local one only when it is a regular file, and at most 4 KiB of it."""
    if not location.is_local:
        return bytes(location.fs().cat_file(location.fs_path(LOCK_NAME)))
    fd = open_local_file(location.fs_path(LOCK_NAME))
    if fd is None:
        raise FileNotFoundError(LOCK_NAME)
    try:
        return os.pread(fd, 4096, 0)
    finally:
        os.close(fd)


def _who(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another writer"
    return f"{holder.get('verb', 'a writer')} (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"


def _refusal(location: Location, holder: dict[str, Any] | None) -> StoreError:
    return StoreError(f"{location}: {_who(holder)} is writing this store; one writer at a time (lock {location.join(LOCK_NAME)})")


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _lock_local(location: Location, holder: dict[str, Any]) -> Callable[[], None]:
    import fcntl

    created = not os.path.isdir(location.root)
    os.makedirs(location.root, exist_ok=True)
    path = os.path.join(location.root, LOCK_NAME)
    while True:
        fd = _open_lock_file(location, path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _refusal(location, other) from None
            raise StoreError(f"{location}: cannot lock {path}: {exc.strerror}") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # else the previous holder removed the file after we opened it: lock the new one
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)

    def release() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still locked: a writer that opened this file now finds it gone and retries
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(location.root)  # a store this writer created and left empty (it failed early)

    return release


def _open_lock_file(location: Location, path: str) -> int:
    """The lock file, opened for writing; ``StoreError`` if it is a link, a hard link or no regular file (never written through)."""
    import stat

    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise StoreError(f"{location}: cannot lock {path}: {why}; remove it (spora_zarr writes only its own lock file)") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        why = "not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link to another file"
        raise StoreError(f"{location}: cannot lock {path}: {why}; remove it (spora_zarr writes only its own lock file)")
    return fd


def _lock_object(location: Location, mine: dict[str, Any]) -> Callable[[], None]:
    fs = location.fs()
    path = location.fs_path(LOCK_NAME)

    def current() -> dict[str, Any] | None:
        try:
            return _parse(fs.cat_file(path)) or {}
        except FileNotFoundError:
            return None

    holder = current()
    if holder is not None and not _is_stale(holder):
        raise _refusal(location, holder)
    fs.pipe_file(path, json.dumps(mine).encode())
    if (current() or {}).get("token") != mine["token"]:  # another writer wrote its lock meanwhile
        raise _refusal(location, current())

    def release() -> None:
        if (current() or {}).get("token") == mine["token"]:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)

    return release


def _is_stale(holder: dict[str, Any]) -> bool:
    """Whether a lock object names a process of this host that is not running."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
