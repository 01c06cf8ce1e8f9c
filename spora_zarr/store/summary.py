"""Directory summaries: the levels of every complete group of a directory, in one small document.

A cohort of thousands of tissues has thousands of groups in each directory of
groups (``imc/images``, ``segmentations/cell_masks``), and reading their
``zarr.json`` files (a group's and each level's) costs seconds locally and
thousands of requests on an object store. ``<directory>/.spora_summary.json``
holds, for each complete group, its level names in ``ome.multiscales`` order
and each level's :class:`~spora_zarr.store.arrays.ArrayLayout` (about 150
bytes a group), and, on a local disk, the group directory's stamp: its inode and
the time its inode last changed (``st_ctime_ns``).

- Written by :func:`write_summaries` when a verb that writes the store releases
  the store's lock (:func:`~spora_zarr.store.lock.store_lock`): one writer at a
  time, after every group of the run is in place. The groups the run did not
  change keep their entries (:class:`RunRecord`); only the others are read.
- Deleted by :meth:`~spora_zarr.store.staging.Staging.promote` before a group of
  its directory changes (:func:`invalidate_summary`): a run killed at any moment
  leaves no summary that misses its groups, only none.
- Trusted by readers (:class:`~spora_zarr.read.index.MetadataIndex`) only for the
  names the directory lists and, locally, only where the stamp is the one
  recorded (promotion renames a new directory into place, which changes its
  stamp; a directory deleted and made again by hand often gets the same inode
  back, but a later change time: the kernel keeps it to its clock tick, 4 ms
  here); any other group is read from its own ``zarr.json`` as before. A damaged summary is
  ignored with a warning. ``validate`` never uses summaries (it checks them
  against every document); ``info`` shows the level layouts they hold.

A group whose ``zarr.json`` another tool edits in place keeps its summary entry
until spora_zarr rewrites that group, or the summary is deleted: its levels and
layouts in the summary may then be stale, while every read of the tissue still
parses its own documents. ``spora-zarr validate`` reads every document itself
and names such an entry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError, NotFoundError, SporaZarrError, StoreError
from .arrays import CORE_DTYPES, ArrayLayout, array_layout
from .layout import MASK_KINDS, image_group_path, label_group_path, validate_name
from .location import Location, collection_paused
from .metadata import read_cohort_attributes
from .staging import ZARR_JSON, Staging, group_attributes, is_complete_group

log = logging.getLogger("spora_zarr")

__all__ = [
    "SUMMARY_NAME",
    "GroupSummary",
    "RunRecord",
    "Summary",
    "directory_entries",
    "group_directories",
    "invalidate_summary",
    "level_paths",
    "read_summary",
    "run_record",
    "summary_problems",
    "write_summaries",
]

Stamp = tuple[int, int]
"""A local directory's identity: its inode and ``st_ctime_ns`` (a directory renamed into place, or made anew, has another)."""
#: Reads many ``zarr.json`` documents at once: path -> the JSON object, or the error reading it.
ReadDocuments = Callable[[Sequence[str]], Mapping[str, "dict[str, Any] | SporaZarrError"]]

SUMMARY_NAME = ".spora_summary.json"
"""The summary document of a directory of groups."""
SUMMARY_FORMAT = 2  # 1 recorded inodes alone (an inode comes back to a directory made anew): read as none, rewritten
SUMMARY_MAX_BYTES = 64 * 2**20
"""The longest summary read (about 150 bytes a group)."""


@dataclass(slots=True)
class GroupSummary:
    """One complete group of a summary: its level names (in ``ome.multiscales`` order) and, locally, its directory's stamp.

    A level's layout is checked when it is first asked for (:meth:`layout`), not for every level of a directory.
    """

    levels: dict[str, Any]  # level name -> its layout as JSON (ArrayLayout.to_json)
    stamp: Stamp | None
    where: str = ""

    def dtype(self, level: str) -> np.dtype:
        """The stored dtype of ``level`` (a zarr v3 core data type; ``StoreError`` for anything else)."""
        value = self.levels[level]
        if isinstance(value, ArrayLayout):
            return value.dtype
        name = value.get("dtype") if isinstance(value, Mapping) else None
        if not isinstance(name, str) or name not in CORE_DTYPES:
            raise StoreError(f"{self.where}/{level}: dtype must name a zarr v3 core data type, got {name!r}")
        return CORE_DTYPES[name]

    def layout(self, level: str) -> ArrayLayout:
        """The checked layout of ``level`` (``KeyError`` when the group has no such level; ``StoreError`` when damaged)."""
        value = self.levels[level]
        if not isinstance(value, ArrayLayout):
            value = self.levels[level] = ArrayLayout.from_json(value, where=f"{self.where}/{level}")
        return value


@dataclass(frozen=True, slots=True)
class Summary:
    """A directory's summary: its complete groups, and the other entries it saw (incomplete or damaged), with stamps."""

    groups: dict[str, GroupSummary]
    others: dict[str, Stamp | None]

    def vouched(self, entries: Mapping[str, Stamp | None]) -> dict[str, GroupSummary]:
        """Its groups a reader may trust: listed among the directory's ``entries`` with the stamp recorded (or none, remotely)."""
        return {name: group for name, group in self.groups.items() if name in entries and entries[name] in (None, group.stamp)}

    def is_whole(self, entries: Mapping[str, Stamp | None]) -> bool:
        """Whether it speaks of every one of the directory's ``entries`` (:func:`directory_entries`) as they are now."""
        for name, stamp in entries.items():
            group = self.groups.get(name)
            if group is not None:
                if stamp is not None and stamp != group.stamp:
                    return False  # replaced since
            elif name not in self.others or self.others[name] != stamp:
                return False  # new, or replaced since
        return True


def directory_entries(location: Location, directory: str) -> dict[str, Stamp | None]:
    """Names below ``directory`` that may be groups (no hidden names, no ``zarr.json``), with their stamps locally.

    An absent directory has none. Local entries come from one ``scandir`` and an ``lstat`` each (about 1 µs).
    """
    if location.is_local:
        try:
            with os.scandir(location.fs_path(directory)) as scan:
                listing = [e for e in scan if not e.name.startswith(".") and e.name != ZARR_JSON]
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as exc:
            raise StoreError(f"{location.join(directory)}: cannot list: {exc.strerror or exc}") from None
        entries: dict[str, Stamp | None] = {}
        for entry in listing:
            try:
                status = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since it was listed
            except OSError as exc:
                raise StoreError(f"{location.join(directory, entry.name)}: cannot stat: {exc.strerror or exc}") from None
            entries[entry.name] = (status.st_ino, status.st_ctime_ns)
    else:
        try:
            listed = location.fs().ls(location.fs_path(directory), detail=False)
        except (FileNotFoundError, OSError):
            listed = []
        entries = {posixpath.basename(str(e).rstrip("/")): None for e in listed}
    names = sorted(name for name in entries if name and not name.startswith(".") and name != ZARR_JSON)  # no tuples: 10,000s
    return {name: entries[name] for name in names}


def level_paths(attributes: Mapping[str, Any]) -> list[str]:
    """The level array paths of group ``attributes`` that are one safe path segment (others are never read)."""
    ome = attributes.get("ome")
    multiscales = ome.get("multiscales") if isinstance(ome, Mapping) else None
    first = multiscales[0] if isinstance(multiscales, list) and multiscales else None
    datasets = first.get("datasets") if isinstance(first, Mapping) else None
    paths = []
    for dataset in datasets if isinstance(datasets, list) else []:
        try:
            paths.append(validate_name(dataset.get("path") if isinstance(dataset, Mapping) else None, what="level path"))
        except InvalidInputError:
            continue  # GroupMetadata refuses the group for it
    return paths


def read_summary(location: Location, directory: str) -> Summary | None:
    """The groups of ``directory``'s summary, checked; ``None`` when there is none or it is damaged (then a warning)."""
    try:
        return _read(location, directory)
    except NotFoundError:
        return None
    except SporaZarrError as exc:
        log.warning("ignoring a damaged directory summary (%s); reading the groups' own documents", exc)
        return None


def _read(location: Location, directory: str) -> Summary:
    """``directory``'s summary; ``NotFoundError`` without one, ``StoreError`` when it is damaged."""
    with collection_paused():
        document = location.read_document(directory, SUMMARY_NAME, max_bytes=SUMMARY_MAX_BYTES)
        return _parse(document, location.join(directory, SUMMARY_NAME))


def _parse(document: Mapping[str, Any], where: str) -> Summary:
    others = document.get("others", {})
    if document.get("spora_summary") == 1:  # an earlier version's: readers read the documents, the next writer rewrites it
        raise NotFoundError(f"{where}: a summary of format 1, not read")
    if document.get("spora_summary") != SUMMARY_FORMAT or not all(isinstance(v, Mapping) for v in (document.get("groups"), others)):
        raise StoreError(f"{where}: not a summary of format {SUMMARY_FORMAT}")
    groups = {}
    for name, entry in document["groups"].items():
        stamp = _stamp(entry.get("stamp") if isinstance(entry, Mapping) else False, f"{where}: group {name!r}")
        levels = entry.get("levels") if isinstance(entry, Mapping) else None
        if not isinstance(levels, Mapping) or not levels:
            raise StoreError(f"{where}: group {name!r} has no levels")
        layouts = {_name(level, "level path", where): layout for level, layout in levels.items()}
        groups[_name(name, "group name", where)] = GroupSummary(layouts, stamp, f"{where}: {name}")
    return Summary(groups, {_name(name, "entry name", where): _stamp(stamp, f"{where}: {name!r}") for name, stamp in others.items()})


def _name(name: object, what: str, where: str) -> str:
    try:
        return validate_name(name, what=what, source=where)
    except InvalidInputError as exc:
        raise StoreError(str(exc)) from None


def _stamp(value: object, where: str) -> Stamp | None:
    """A stamp as JSON (``[inode, ctime_ns]``, or ``null`` remotely), checked."""
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(type(number) is int for number in value):
        return value[0], value[1]
    raise StoreError(f"{where}: a bad stamp {value!r}")


@dataclass
class RunRecord:
    """What a run holding a store's writer lock in this process saw of each directory before it first changed it.

    ``before``: the directory's summary then (``None``: none, damaged, or not local); ``moved``: the groups the
    run moved into it since. :func:`write_summaries` keeps the ``before`` entries of the groups neither moved
    nor replaced (same stamp) and reads only the others: adding a tissue to a cohort of 10,000 reads one
    group's documents, not every group's. Groups moved by the run's worker processes are not recorded here:
    their new stamps keep their old entries out.
    """

    before: dict[str, Summary | None] = field(default_factory=dict)
    moved: dict[str, set[str]] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)  # a forked worker's copy records nothing


_RUNS: dict[str, RunRecord] = {}  # store root -> the run holding its writer lock in this process


@contextlib.contextmanager
def run_record(location: Location) -> Iterator[RunRecord]:
    """Record, while the block runs, the directory summaries this process's promotions into ``location`` remove."""
    record = _RUNS[location.root] = RunRecord()
    try:
        yield record
    finally:
        _RUNS.pop(location.root, None)


def invalidate_summary(location: Location, directory: str, group: str) -> None:
    """Delete ``directory``'s summary, if there is one: its ``group`` is about to change (noted in the :class:`RunRecord`)."""
    record = _RUNS.get(location.root)
    if record is not None and record.pid == os.getpid():
        if directory not in record.before:
            record.before[directory] = read_summary(location, directory) if location.is_local else None
        record.moved.setdefault(directory, set()).add(group)
    try:
        if location.is_local:
            os.remove(location.fs_path(directory, SUMMARY_NAME))
        else:
            location.fs().rm_file(location.fs_path(directory, SUMMARY_NAME))
    except FileNotFoundError:
        pass


def group_directories(location: Location) -> list[str]:
    """The directories of groups of the cohort store at ``location``: each modality's images, each mask kind's masks.

    None when ``location`` holds no cohort store root.
    """
    try:
        attributes = read_cohort_attributes(location)
    except SporaZarrError:
        return []
    if attributes is None:
        return []
    kinds = dict.fromkeys([*MASK_KINDS, *attributes.mask_kinds])
    masks = [label_group_path(kind, "x", extra_kinds=attributes.mask_kinds).rsplit("/", 1)[0] for kind in kinds]
    return [image_group_path(modality, "x").rsplit("/", 1)[0] for modality in attributes.modalities] + masks


def write_summaries(location: Location, directories: Iterable[str] | None = None, record: RunRecord | None = None) -> None:
    """Write the summary of each directory of groups (by default :func:`group_directories`) whose summary is not whole.

    Whole: readable, and vouching for every group the directory lists (locally, with its stamp: a
    copied store's summaries are rewritten by its first writer).

    Each is made from the documents themselves: every listed group that is
    complete, with the layout of each level it lists. A group whose documents
    cannot be read or checked, or with a data type beyond zarr's core types, is
    left out (readers read it themselves, and find what is wrong with it). With
    the ``record`` of the run that removed it, the entries of the summary before
    the run are kept for the groups the run did not move and that have the same
    stamp, and only the others are read.
    """
    staging = Staging(location)
    for directory in group_directories(location) if directories is None else directories:
        entries = directory_entries(location, directory)
        summary = read_summary(location, directory) if entries else None
        if not entries or summary is not None and summary.is_whole(entries):
            continue
        kept = _unchanged(record, directory, entries)
        groups = {**kept, **_summarize(location, directory, {name: stamp for name, stamp in entries.items() if name not in kept})}
        others = {name: stamp for name, stamp in entries.items() if name not in groups}
        document = {"spora_summary": SUMMARY_FORMAT, "groups": dict(sorted(groups.items())), "others": others}
        staging.write_file_through_area(f"{directory}/{SUMMARY_NAME}", json.dumps(document, separators=(",", ":")).encode())


def _unchanged(record: RunRecord | None, directory: str, entries: Mapping[str, Stamp | None]) -> dict[str, Any]:
    """The entries (as JSON) of ``directory``'s summary before the run, for its groups the run left as they were.

    A group is left as it was when the run did not move it and the directory lists it with the stamp recorded;
    an entry with a layout that does not check is not kept (the group is read again).
    """
    before = record.before.get(directory) if record is not None else None
    if before is None:
        return {}
    moved = record.moved.get(directory, set()) if record is not None else set()
    kept = {}
    for name, group in before.groups.items():
        if group.stamp is None or entries.get(name) != group.stamp or name in moved:
            continue
        try:
            kept[name] = {"stamp": group.stamp, "levels": {level: group.layout(level).to_json() for level in group.levels}}
        except StoreError:
            continue
    return kept


def summary_problems(location: Location, read_documents: ReadDocuments | None = None) -> list[str]:
    """What the directory summaries of the store at ``location`` say that the groups' own documents do not.

    A summary entry readers would trust (its group listed, locally with the recorded stamp) must
    name a complete group with the levels and layouts its documents give; a damaged summary is a
    problem too (readers ignore it). ``read_documents`` reads the documents (by default
    :meth:`~.location.Location.read_documents`; ``validate`` passes its cohort's, which has read them all).
    """
    problems = []
    for directory in group_directories(location):
        where = location.join(directory, SUMMARY_NAME)
        fix = f"delete {where}: the next writer of the store rebuilds it"
        try:
            summary = _read(location, directory)
        except NotFoundError:
            continue
        except SporaZarrError as exc:
            problems.append(f"{exc} (readers ignore it; {fix})")
            continue
        entries = directory_entries(location, directory)
        actual = _summarize(location, directory, entries, read_documents)
        for name, group in summary.vouched(entries).items():  # readers read the others' own documents
            truth = actual.get(name)
            if truth is None:
                problems.append(f"{directory}/{name}: the directory summary lists it as a complete group, its documents do not ({fix})")
                continue
            try:
                same = list(truth["levels"]) == list(group.levels) and all(
                    ArrayLayout.from_json(layout, where=where) == group.layout(level) for level, layout in truth["levels"].items()
                )
            except StoreError as exc:
                problems.append(f"{exc} ({fix})")
                continue
            if not same:
                problems.append(f"{directory}/{name}: the directory summary's levels differ from its documents' ({fix})")
    return problems


def _summarize(
    location: Location, directory: str, entries: Mapping[str, Stamp | None], read_documents: ReadDocuments | None = None
) -> dict[str, Any]:
    read = read_documents or location.read_documents
    documents = read([f"{directory}/{name}/{ZARR_JSON}" for name in entries])
    levels: dict[str, list[str]] = {}
    for name in entries:
        path = f"{directory}/{name}"
        try:
            attributes = group_attributes(location, path, documents[f"{path}/{ZARR_JSON}"])
        except SporaZarrError:
            continue
        if attributes is not None and is_complete_group(attributes):
            levels[name] = level_paths(attributes)
    arrays = read([f"{directory}/{name}/{level}/{ZARR_JSON}" for name, names in levels.items() for level in names])
    groups: dict[str, Any] = {}
    for name, names in levels.items():
        layouts = {}
        for level in names:
            document = arrays[f"{directory}/{name}/{level}/{ZARR_JSON}"]
            where = location.join(directory, name, level)
            try:
                if not isinstance(document, dict):
                    raise document
                layout = array_layout(document, where=where).to_json()
                ArrayLayout.from_json(layout, where=where)  # a data type a summary cannot hold: the group is left out
            except SporaZarrError:
                break
            layouts[level] = layout
        else:
            if layouts:
                groups[name] = {"stamp": entries[name], "levels": layouts}
    return groups
