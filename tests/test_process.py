"""The process lifecycle (``spora_zarr.process``): per-process values and fork hooks, in real forked children."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import zarr

from spora_zarr import process
from spora_zarr.errors import InvalidInputError
from spora_zarr.read import levels
from spora_zarr.read.levels import open_level
from spora_zarr.store.location import Location
from spora_zarr.store.metadata import validate_ngff

from .conftest import fork_while_held, in_forked_child

TIMEOUT = 30


# ------------------------------------------------------------------ PerProcess


def test_per_process_value_is_made_once_per_process() -> None:
    made: list[int] = []

    def factory() -> dict[str, int]:
        made.append(1)
        return {}

    cache: process.PerProcess[dict[str, int]] = process.PerProcess(factory)
    cache.get()["a"] = 1
    assert cache.get() == {"a": 1}
    assert len(made) == 1
    cache.clear()
    assert cache.get() == {}
    assert len(made) == 2


def test_per_process_value_is_dropped_in_a_forked_child() -> None:
    cache: process.PerProcess[dict[str, int]] = process.PerProcess(dict)
    cache.get()["parent"] = os.getpid()
    parent_value = cache.get()

    def child() -> tuple[dict[str, int], bool]:
        value = cache.get()
        value["child"] = os.getpid()
        return dict(value), cache.get() is value

    seen, kept = in_forked_child(child)
    assert list(seen) == ["child"]  # a new value, without the parent's content
    assert kept  # made once in the child too
    assert cache.get() is parent_value and list(parent_value) == ["parent"]


_MODULE_CACHE: process.PerProcess[dict[str, int]] = process.PerProcess(dict)


def _module_cache_content() -> list[str]:
    return list(_MODULE_CACHE.get())


def test_per_process_value_is_dropped_under_multiprocessing_fork() -> None:
    _MODULE_CACHE.get()["parent"] = 1
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_module_cache_content) == []
    assert _module_cache_content() == ["parent"]


def test_per_process_lock_held_at_the_fork_is_free_in_the_child() -> None:
    lock: process.PerProcess[threading.Lock] = process.PerProcess(threading.Lock)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock.get():
            held.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        held.wait()
        assert in_forked_child(lambda: lock.get().acquire(timeout=5))  # the parent's is held by a thread the child lacks
    finally:
        release.set()
        thread.join()


def test_per_process_value_made_while_forking_does_not_hang_the_child() -> None:
    """A thread of the parent is inside the factory (holding the instance's own lock) at the fork."""
    entered, release = threading.Event(), threading.Event()

    def slow() -> dict[str, int]:
        if threading.current_thread() is not threading.main_thread() and not release.is_set():
            entered.set()
            release.wait()
        return {}

    cache: process.PerProcess[dict[str, int]] = process.PerProcess(slow)
    thread = threading.Thread(target=cache.get)
    thread.start()
    try:
        entered.wait()
        assert in_forked_child(lambda: cache.get() == {})
    finally:
        release.set()
        thread.join()


# ---------------------------------------------------------------- fork hooks


def test_on_fork_runs_before_in_the_parent_and_after_in_the_child() -> None:
    calls: list[tuple[str, int]] = []
    active = threading.Event()  # the hooks stay registered for the life of the process: act during this test only
    active.set()

    def before() -> None:
        if active.is_set():
            calls.append(("before", os.getpid()))

    def after_in_child() -> None:
        if active.is_set():
            calls.append(("child", os.getpid()))

    process.on_fork(before=before, after_in_child=after_in_child)
    try:
        in_child = in_forked_child(lambda: list(calls))
    finally:
        active.clear()
    assert calls == [("before", os.getpid())]  # the child's hook ran in the child only
    assert in_child[0] == ("before", os.getpid())
    assert in_child[1][0] == "child" and in_child[1][1] != os.getpid()


def _hold_config(inside: threading.Event, release: threading.Event) -> None:
    with process.LOCK.get(), zarr.config.set({"array.order": "F"}):  # donfig's lock is taken in set() and on exit
        inside.set()
        release.wait()


def _hold_validation(inside: threading.Event, release: threading.Event) -> None:
    class Model:  # as ome-zarr-models' validators build classes (taking cached_property locks) midway
        @staticmethod
        def model_validate(document: object) -> object:
            inside.set()
            release.wait()
            return document

    validate_ngff(Model, {})


@pytest.mark.parametrize("hold", [_hold_config, _hold_validation], ids=["zarr.config.set", "validate_ngff"])
def test_a_fork_waits_for_the_work_a_thread_does_under_the_process_lock(hold) -> None:
    inside, release = threading.Event(), threading.Event()
    released_at: list[float] = []

    def let_go() -> None:
        released_at.append(time.monotonic())
        release.set()

    thread = threading.Thread(target=hold, args=(inside, release))
    thread.start()
    timer = threading.Timer(0.3, let_go)
    try:
        assert inside.wait(TIMEOUT)
        timer.start()
        forked_at, order = in_forked_child(lambda: (time.monotonic(), zarr.config.get("array.order")))
    finally:
        timer.cancel()
        release.set()
        thread.join()
    assert released_at and forked_at >= released_at[0]  # the fork waited for the thread to leave the lock
    assert order == "C"  # so the child never saw the thread's setting, nor a lock it took midway


def test_a_fork_waits_for_every_thread_in_a_fork_excluded_section() -> None:
    inside, release = threading.Event(), threading.Event()
    released_at: list[float] = []

    def hold(n: int) -> None:
        with process.fork_excluded():
            if n == 1:
                inside.set()
            release.wait()
            if n == 1:
                released_at.append(time.monotonic())

    threads = [threading.Thread(target=hold, args=(n,)) for n in (0, 1)]
    forked_at = fork_while_held(inside, release, threads, TIMEOUT)
    assert released_at and forked_at >= released_at[0]


def test_a_thread_in_a_fork_excluded_section_forks_and_nests_without_waiting_for_itself() -> None:
    with process.fork_excluded():
        assert in_forked_child(_enter_twice)  # the child's sections are its own
    inside, nested = threading.Event(), threading.Event()

    def hold() -> None:
        with process.fork_excluded():
            inside.set()
            deadline = time.monotonic() + TIMEOUT
            while not process._GATE._forking and time.monotonic() < deadline:  # noqa: SLF001 - the fork below waits
                time.sleep(0.01)
            with process.fork_excluded():  # entered while a fork waits: this thread is already inside
                nested.set()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert inside.wait(TIMEOUT)
        assert in_forked_child(nested.is_set)  # the fork waited for the nested section and the outer one
    finally:
        thread.join()


def _enter_twice() -> bool:
    with process.fork_excluded(), process.fork_excluded():
        return True


# ------------------------------------------------------------ library use


def test_note_use_refuses_an_unknown_library() -> None:
    with pytest.raises(InvalidInputError, match="library 'numpy'"):
        process.note_use("numpy")


def test_a_forked_child_of_a_process_that_used_a_library_is_poisoned() -> None:
    """In a fresh interpreter (this one may have used tensorstore or zarrs already)."""
    script = textwrap.dedent(
        """
        import os
        from spora_zarr import process

        assert process.used_by("zarrs") is None and not process.poisoned("zarrs")
        process.note_use("zarrs")
        process.note_use("zarrs")
        assert process.used_by("zarrs") == os.getpid() and not process.poisoned("zarrs")
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            ok = process.poisoned("zarrs") and process.used_by("zarrs") == parent and not process.poisoned("tensorstore")
            process.note_use("zarrs")  # a poisoned child never records its own use
            ok = ok and process.used_by("zarrs") == parent
            os._exit(0 if ok else 3)
        assert os.waitpid(pid, 0)[1] == 0
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_thread_names_lists_this_process_threads() -> None:
    names = process.thread_names()
    if sys.platform.startswith("linux"):
        assert len(names) >= threading.active_count()  # native threads of libraries count too
    else:
        assert names == []


# ------------------------------------------------------ the readers' state


def test_reader_cache_is_fresh_in_a_forked_child(tmp_path) -> None:
    location = Location.parse(tmp_path / "store.zarr")
    array = zarr.create_array(location.zarr_store(), name="a", shape=(2, 64, 64), dtype="uint8", chunks=(2, 32, 32))
    array[...] = np.arange(2 * 64 * 64, dtype=np.uint64).reshape(2, 64, 64).astype(np.uint8)
    reader = open_level(location, "a", engine="zarr")
    assert open_level(location, "a", engine="zarr") is reader  # cached in this process

    def child() -> tuple[bool, int, bool]:
        fresh = open_level(location, "a", engine="zarr")
        return fresh is not reader, len(levels._READERS.get()), bool(fresh.read(0, 0, 64, 64).sum() == array[...].sum())

    assert in_forked_child(child) == (True, 1, True)
    assert open_level(location, "a", engine="zarr") is reader
