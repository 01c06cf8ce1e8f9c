"""A human summary of a cohort store: modalities, tissues, levels, channels and tables."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .. import process
from ..errors import StoreError
from ..store.layout import MASK_KINDS
from ..store.location import Location, collection_paused
from .cohort import Cohort, open_cohort

T = TypeVar("T")
R = TypeVar("R")


def describe(location: str | Location, storage_options: dict[str, Any] | None = None) -> str:
    """Multi-line text describing the store at ``location``.

    Each group's own ``zarr.json`` is read and its NGFF metadata validated (the channels, the levels it
    lists); a level's shape, dtype, chunks and shards come from its directory's summary where one vouches
    for the group (:mod:`spora_zarr.store.summary`), else from the level's ``zarr.json``. ``validate``
    checks the summaries against every document. No cyclic garbage collection runs meanwhile: the
    thousands of parsed groups set off full collections of every object the imports made (0.1-0.7 s
    at 1,250 tissues, a third of the parsing). A local store of at least ``_PROCESS_GROUPS`` groups
    has them parsed in up to four forked processes, one a core, after the documents are read, when
    this process runs one thread (at 1,250 tissues on two cores: 0.6-0.8 s instead of 1.1-1.3 s).
    """
    with collection_paused():
        return _describe(location, storage_options)


def _describe(location: str | Location, storage_options: dict[str, Any] | None) -> str:
    cohort = open_cohort(location, storage_options)
    lines = [f"cohort store {cohort.location}", f"format version {cohort.attributes.format_version}"]
    sections: list[tuple[str, list[tuple[str, str, bool]]]] = []  # a heading, and its groups: (name, tissue, an image)
    for modality in cohort.modalities:
        tissues = cohort.tissues(modality)
        cohort.read_group_documents(modality)
        sections.append((f"\nmodality {modality}: {len(tissues)} tissue(s)", [(modality, t, True) for t in tissues]))
    for kind in MASK_KINDS:
        tissues = cohort.mask_tissues(kind)
        if tissues:
            cohort.read_group_documents(kind)
            sections.append((f"\nmasks {kind}: {len(tissues)} tissue(s)", [(kind, t, False) for t in tissues]))
    groups = [group for _, section in sections for group in section]
    # forked only from a process of one thread (the CLI's): a thread of another's could hold a lock the child needs
    alone = threading.active_count() == 1
    processes = _PROCESSES if alone and cohort.location.is_local and len(groups) >= _PROCESS_GROUPS else 1
    described = iter(_in_processes(lambda part: [_group_lines(cohort, *group) for group in part], groups, processes, str(cohort.location)))
    for heading, section in sections:
        lines.append(heading)
        for _ in section:
            lines += next(described)
    tables = cohort.tables()
    lines.append(f"\ntables ({len(tables)}):")
    for table in tables:
        meta = cohort.read_table_metadata(table)  # the footer: no row read (and no pyarrow scan threads left at exit)
        lines.append(f"  {table}: {meta.num_rows} rows, columns {', '.join(meta.schema.to_arrow_schema().names)}")
    return "\n".join(lines)


#: Groups from which the groups of a local store are described in several processes (a fork takes milliseconds).
_PROCESS_GROUPS = 1000
#: Processes then: one a core this process may run on, at most four; one where there is no ``fork``.
_PROCESSES = min(4, process.available_cores()) if hasattr(os, "fork") else 1


def _group_lines(cohort: Cohort, name: str, tissue_id: str, image: bool) -> list[str]:
    """The lines of one group: the tissue (with an image's channels) and its levels."""
    head = f"  {tissue_id}: channels {', '.join(cohort.channel_names(name, tissue_id))}" if image else f"  {tissue_id}"
    return [head, *_levels(cohort, name, tissue_id)]


def _in_processes(work: Callable[[Sequence[T]], list[R]], jobs: Sequence[T], processes: int, where: str) -> list[R]:
    """``work(jobs)``, its later parts done by forked processes when ``processes > 1`` (parsing thousands of groups
    is Python work, one core's; a fork shares what was read). The parts' results in order; the first part's error
    that one process doing them in order would raise, raised here once every process has ended. A part that cannot
    be forked (a limit on processes) is done here.
    """
    if processes < 2:
        return work(jobs)
    size = -(-len(jobs) // processes)
    parts = [jobs[k : k + size] for k in range(0, len(jobs), size)]
    children: list[tuple[int, int]] = []
    try:
        for part in parts[1:]:
            child = _forked(work, part)
            if child is None:
                break
            children.append(child)
        results = work(parts[0])
    finally:  # every process waited for, whatever this part raised (that error comes first)
        replies = [_reply(pid, fd) for pid, fd in children]
    for reply in replies:
        results += _outcome(where, *reply)
    for part in parts[1 + len(children) :]:
        results += work(part)
    return results


def _forked(work: Callable[[Sequence[T]], list[R]], part: Sequence[T]) -> tuple[int, int] | None:
    """A forked process doing ``work(part)``: its pid and the pipe it writes its pickled outcome to; ``None`` when
    no process can be forked."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid:
        os.close(write_fd)
        return pid, read_fd
    status = 0  # the child: never returns
    try:
        os.close(read_fd)
        try:
            outcome: tuple[bool, Any] = (True, work(part))
        except Exception as exc:  # raised in the parent as it is
            outcome = (False, exc)
        with os.fdopen(write_fd, "wb") as out:
            pickle.dump(outcome, out, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        status = 1
    os._exit(status)


def _reply(pid: int, fd: int) -> tuple[int | None, bytes]:
    """How the forked process ``pid`` ended (its exit code; ``None`` where the system reaped it: a process that
    ignores ``SIGCHLD``) and what it wrote to ``fd``."""
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None, data
    return os.waitstatus_to_exitcode(status), data


def _outcome(where: str, code: int | None, data: bytes) -> list[Any]:
    """A forked process's results, or its error raised (``where``: the store, named when the process left none)."""
    reply: tuple[bool, Any] | None = None
    if data and not code:
        with contextlib.suppress(Exception):  # a reply cut short, or an error that cannot be rebuilt here
            reply = pickle.loads(data)
    if reply is not None:
        done, value = reply
        if done:
            return list(value)
        raise value
    if code is not None and code < 0:
        ended = f"was killed by signal {-code} ({signal.strsignal(-code) or 'unknown'})"
    else:
        ended = "ended without its description" if not code else f"ended with exit code {code}"
    raise StoreError(f"{where}: info: a process describing part of its groups {ended}")


def _levels(cohort: Cohort, name: str, tissue_id: str) -> list[str]:
    """One line a level, from the cohort's metadata index (no zarr array is opened, no array document parsed by zarr)."""
    metadata, group = cohort.group_metadata(name, tissue_id), cohort.group_path(name, tissue_id)  # a mask kind too
    stored = set(metadata.spora.source_levels)
    lines = []
    for level in metadata.level_names:
        array = cohort.array_layout(f"{group}/{level}")
        sharded = f" shards {array.shards}" if array.shards else ""
        origin = "from source" if level in stored else "computed"
        lines.append(f"    {level}: shape {array.shape} {array.dtype} chunks {array.chunks}{sharded} ({origin})")
    return lines
