"""The metadata index of a cohort handle: the ``zarr.json`` of every group and level, read once, concurrently.

A directory of groups (``imc/images``, ``segmentations/cell_masks``) is listed
once. Where it has a directory summary (:mod:`spora_zarr.store.summary`), the
groups the summary vouches for (listed, and locally with the recorded stamp)
are known complete with their levels and layouts without reading their
documents; the ``zarr.json`` of every other group is read in one concurrent
pass (:meth:`~spora_zarr.store.location.Location.read_documents`: a plain loop
on a local disk, one gather of ranged GETs on object stores and HTTP). The first
time a level array of such a group is asked for, the ``zarr.json`` of every
level of every complete group of that directory is read in a second pass.
Documents are kept as parsed JSON in plain dicts for the handle's life (a few
KB a group), as the listing always was: a handle sees the groups that were
there when it first looked. A group's own documents are still read, on demand,
for what a summary does not hold (its NGFF metadata, zarr's array metadata).

Every read goes through the bounded reader of ``store/`` (regular files only,
at most :data:`~spora_zarr.store.location.DOCUMENT_MAX_BYTES`), and a level
path is read only when it is one safe path segment; what a file that cannot
be read means is decided where one file is read today
(:func:`~spora_zarr.store.staging.group_attributes`,
:func:`~spora_zarr.store.arrays.array_metadata_from`).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SporaZarrError, StoreError
from ..store.arrays import ArrayLayout, array_layout, array_metadata_from
from ..store.location import Location
from ..store.staging import ZARR_JSON, group_attributes, is_complete_group
from ..store.summary import GroupSummary, directory_entries, level_paths, read_summary

if TYPE_CHECKING:
    from zarr.core.metadata.v3 import ArrayV3Metadata

__all__ = ["MetadataIndex", "level_paths"]

log = logging.getLogger("spora_zarr")

Document = dict[str, Any] | SporaZarrError


class MetadataIndex:
    """The parsed ``zarr.json`` documents of one store's groups and level arrays, read in concurrent passes.

    ``summaries=False`` reads every group's own documents (``validate`` does).
    """

    def __init__(self, location: Location, *, summaries: bool = True) -> None:
        self.location = location
        self.summaries = summaries
        self._names: dict[str, list[str]] = {}  # directory -> its entries that may be groups, sorted
        self._vouched: dict[str, dict[str, GroupSummary]] = {}  # directory -> the groups its summary vouches for
        self._groups: dict[str, Document] = {}  # group path -> its zarr.json, or the error reading it
        self._arrays: dict[str, Document] = {}  # array path -> its zarr.json, or the error reading it
        self._parsed: dict[str, ArrayV3Metadata] = {}  # array path -> its checked metadata
        self._layouts: dict[str, ArrayLayout] = {}  # array path -> its checked layout
        self._with_level: dict[tuple[str, str], frozenset[str]] = {}  # (directory, level) -> groups listing it
        self._dtypes: dict[tuple[str, str], dict[str, np.dtype]] = {}  # (directory, level) -> group -> dtype
        self._levels_read: set[str] = set()  # directories whose level documents were read
        self._complete: dict[str, list[str]] = {}  # directory -> its complete groups, sorted

    def complete_groups(self, directory: str) -> list[str]:
        """Names of the complete multiscale groups directly below ``directory``, sorted.

        A local group ``zarr.json`` that is no regular file raises its ``StoreError``. Worked out once per
        directory (a snapshot, like every document of the index): later calls cost nothing.
        """
        if directory not in self._complete:
            complete = []
            names = self._read_directory(directory)
            vouched = self._vouched[directory]
            for name in names:
                if name in vouched:
                    complete.append(name)
                    continue
                attributes = self.group_attributes(f"{directory}/{name}")
                if attributes is not None and is_complete_group(attributes):
                    complete.append(name)
            self._complete[directory] = complete
        return list(self._complete[directory])

    def level_names(self, path: str) -> list[str]:
        """The level paths the complete group at ``path`` lists in ``ome.multiscales`` (empty when it is not complete)."""
        summary = self._summary(path)
        if summary is not None:
            return list(summary.levels)
        attributes = self.group_attributes(path)
        return level_paths(attributes) if attributes is not None and is_complete_group(attributes) else []

    def group_attributes(self, path: str) -> dict[str, Any] | None:
        """The attributes of the group at ``path`` (``None`` when there is none), read once."""
        if _document(path) not in self._groups:
            self._groups.update(self.location.read_documents([_document(path)]))
        return group_attributes(self.location, path, self._groups[_document(path)])

    def read_groups(self, directory: str) -> None:
        """Read the ``zarr.json`` of every group of ``directory`` not read yet, in one pass.

        A summary leaves the groups it vouches for unread, each read on demand; a caller that will ask for
        every group's attributes (``info``) reads them together instead.
        """
        paths = [_document(f"{directory}/{name}") for name in self._read_directory(directory)]
        self._groups.update(self.location.read_documents([path for path in paths if path not in self._groups]))

    def array_metadata(self, path: str) -> ArrayV3Metadata:
        """The checked metadata of the level array at ``path``, as :func:`~spora_zarr.store.arrays.read_array_metadata` reads it."""
        if path not in self._parsed:
            self._parsed[path] = array_metadata_from(self.location, path, self._array_document(path))
        return self._parsed[path]

    def array_layout(self, path: str) -> ArrayLayout:
        """Shape, dtype, chunks and shards of the level array at ``path``, from a summary or its document, without zarr's parser.

        Raises what :meth:`array_metadata` raises for a missing, group or damaged document, but for a
        codec configuration zarr would refuse, which only :meth:`array_metadata` finds (every read of
        the array goes through it).
        """
        if path not in self._layouts:
            summary = self._summary(posixpath.dirname(path))
            if summary is not None and posixpath.basename(path) in summary.levels:
                try:
                    self._layouts[path] = summary.layout(posixpath.basename(path))
                    return self._layouts[path]
                except StoreError as exc:  # a damaged entry: as for a damaged summary, the document instead
                    log.warning("ignoring a damaged directory summary entry (%s); reading %s", exc, _document(path))
            document = self._array_document(path)
            if not isinstance(document, dict) or document.get("node_type") == "group":
                array_metadata_from(self.location, path, document)  # raises its error
            assert isinstance(document, dict)
            self._layouts[path] = array_layout(document, where=f"array {self.location.join(path)}")
        return self._layouts[path]

    def groups_with_level(self, directory: str, level: str) -> frozenset[str]:
        """The complete groups of ``directory`` whose ``ome.multiscales`` lists ``level`` (from summaries or group documents)."""
        key = (directory, level)
        if key not in self._with_level:
            vouched = self._vouched_groups(directory)  # read here, not through level_names: 10,000 calls cost 5 x more
            self._with_level[key] = frozenset(
                name
                for name in self.complete_groups(directory)
                if level in (vouched[name].levels if name in vouched else self.level_names(f"{directory}/{name}"))
            )
        return self._with_level[key]

    def level_dtypes(self, directory: str, level: str) -> dict[str, np.dtype]:
        """Group name -> the stored dtype of its level ``level``, for the groups of :meth:`groups_with_level`.

        Worked out once per directory and level: from the summary's layouts for the groups it vouches for (the
        dtype only: a layout is checked in full when asked for), from each level's ``zarr.json`` for the others.
        """
        key = (directory, level)
        if key not in self._dtypes:
            vouched = self._vouched_groups(directory)
            self._dtypes[key] = {
                name: self._dtype(vouched.get(name), f"{directory}/{name}/{level}") for name in self.groups_with_level(directory, level)
            }
        return self._dtypes[key]

    def _dtype(self, summary: GroupSummary | None, path: str) -> np.dtype:
        """The dtype of the level array at ``path``: the summary's name of it, else its layout (:meth:`array_layout`)."""
        if summary is not None:
            try:
                return summary.dtype(posixpath.basename(path))
            except StoreError:
                pass  # array_layout says so and reads the document
        return self.array_layout(path).dtype

    def _vouched_groups(self, directory: str) -> dict[str, GroupSummary]:
        self._read_directory(directory)
        return self._vouched[directory]

    def documents(self, paths: Sequence[str]) -> dict[str, Document]:
        """The ``zarr.json`` documents at ``paths`` (or the error reading each): the index's, the others read in one pass."""
        missing = [p for p in paths if p not in self._groups and p not in self._arrays]
        read = self.location.read_documents(missing) if missing else {}
        return {p: self._groups[p] if p in self._groups else self._arrays[p] if p in self._arrays else read[p] for p in paths}

    def _summary(self, group: str) -> GroupSummary | None:
        """The summary entry vouching for the group at ``group``, if its directory was listed with one."""
        directory, name = posixpath.split(group)
        if self.summaries and directory:
            self._read_directory(directory)
        return self._vouched.get(directory, {}).get(name)

    def _array_document(self, path: str) -> Document:
        group = posixpath.dirname(path)
        directory = posixpath.dirname(group)
        if directory in self._names and directory not in self._levels_read:
            self._read_levels(directory)
        if _document(path) not in self._arrays:
            self._arrays.update(self.location.read_documents([_document(path)]))
        return self._arrays[_document(path)]

    def _read_directory(self, directory: str) -> list[str]:
        if directory not in self._names:
            entries = directory_entries(self.location, directory)
            summary = read_summary(self.location, directory) if self.summaries and entries else None
            vouched = summary.vouched(entries) if summary is not None else {}
            names = list(entries)
            missing = [_document(f"{directory}/{n}") for n in names if n not in vouched]
            missing = [path for path in missing if path not in self._groups]
            self._groups.update(self.location.read_documents(missing))
            self._names[directory], self._vouched[directory] = names, vouched
        return self._names[directory]

    def _read_levels(self, directory: str) -> None:
        """Read the level documents of every complete group of ``directory`` in one pass (a summary's groups: on demand)."""
        self._levels_read.add(directory)
        paths = []
        for name in self.complete_groups(directory):
            if name not in self._vouched[directory]:
                group = f"{directory}/{name}"
                paths += [_document(f"{group}/{level}") for level in level_paths(self.group_attributes(group) or {})]
        self._arrays.update(self.location.read_documents([p for p in paths if p not in self._arrays]))


def _document(path: str) -> str:
    return f"{path}/{ZARR_JSON}" if path else ZARR_JSON
