"""The metadata index of a cohort handle: the ``zarr.json`` of every group and level, read once, concurrently.

A directory of groups (``imc/images``, ``segmentations/cell_masks``) is listed
once and the ``zarr.json`` of every group in it is read in one concurrent pass
(:meth:`~spora_zarr.store.location.Location.read_documents`: a thread pool on
a local disk, one gather of ranged GETs on object stores and HTTP); the first
time a level array of a listed group is asked for, the ``zarr.json`` of every
level of every complete group of that directory is read in a second pass.
Documents are kept as parsed JSON in plain dicts for the handle's life (a few
KB a group), as the listing always was: a handle sees the groups that were
there when it first looked.

Every read goes through the bounded reader of ``store/`` (regular files only,
at most :data:`~spora_zarr.store.location.DOCUMENT_MAX_BYTES`), and a level
path is read only when it is one safe path segment; what a file that cannot
be read means is decided where one file is read today
(:func:`~spora_zarr.store.staging.group_attributes`,
:func:`~spora_zarr.store.metadata.array_metadata_from`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, SporaZarrError
from ..store.layout import validate_name
from ..store.location import Location
from ..store.metadata import ArrayLayout, array_layout, array_metadata_from
from ..store.staging import ZARR_JSON, group_attributes, is_complete_group

if TYPE_CHECKING:
    from zarr.core.metadata.v3 import ArrayV3Metadata

__all__ = ["MetadataIndex", "level_paths"]

Document = dict[str, Any] | SporaZarrError


class MetadataIndex:
    """The parsed ``zarr.json`` documents of one store's groups and level arrays, read in concurrent passes."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._names: dict[str, list[str]] = {}  # directory -> its entries that may be groups, sorted
        self._groups: dict[str, Document] = {}  # group path -> its zarr.json, or the error reading it
        self._arrays: dict[str, Document] = {}  # array path -> its zarr.json, or the error reading it
        self._parsed: dict[str, ArrayV3Metadata] = {}  # array path -> its checked metadata
        self._layouts: dict[str, ArrayLayout] = {}  # array path -> its checked layout
        self._levels_read: set[str] = set()  # directories whose level documents were read
        self._complete: dict[str, list[str]] = {}  # directory -> its complete groups, sorted

    def complete_groups(self, directory: str) -> list[str]:
        """Names of the complete multiscale groups directly below ``directory``, sorted.

        A local group ``zarr.json`` that is no regular file raises its ``StoreError``. Worked out once per
        directory (a snapshot, like every document of the index): later calls cost nothing.
        """
        if directory not in self._complete:
            complete = []
            for name in self._read_directory(directory):
                attributes = self.group_attributes(f"{directory}/{name}")
                if attributes is not None and is_complete_group(attributes):
                    complete.append(name)
            self._complete[directory] = complete
        return list(self._complete[directory])

    def group_attributes(self, path: str) -> dict[str, Any] | None:
        """The attributes of the group at ``path`` (``None`` when there is none), read once."""
        if _document(path) not in self._groups:
            self._groups.update(self.location.read_documents([_document(path)]))
        return group_attributes(self.location, path, self._groups[_document(path)])

    def array_metadata(self, path: str) -> ArrayV3Metadata:
        """The checked metadata of the level array at ``path``, as :func:`~spora_zarr.store.metadata.read_array_metadata` reads it."""
        if path not in self._parsed:
            self._parsed[path] = array_metadata_from(self.location, path, self._array_document(path))
        return self._parsed[path]

    def array_layout(self, path: str) -> ArrayLayout:
        """Shape, dtype, chunks and shards of the level array at ``path`` from its document, without zarr's parser.

        Raises what :meth:`array_metadata` raises for a missing, group or damaged document, but for a
        codec configuration zarr would refuse, which only :meth:`array_metadata` finds (every read of
        the array goes through it).
        """
        if path not in self._layouts:
            document = self._array_document(path)
            if not isinstance(document, dict) or document.get("node_type") == "group":
                array_metadata_from(self.location, path, document)  # raises its error
            assert isinstance(document, dict)
            self._layouts[path] = array_layout(document, where=f"array {self.location.join(path)}")
        return self._layouts[path]

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
            fs = self.location.fs()
            try:
                entries = fs.ls(self.location.fs_path(directory), detail=False)
            except (FileNotFoundError, OSError):
                entries = []
            names = sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)
            names = [n for n in names if n and not n.startswith(".") and n != ZARR_JSON]
            missing = [_document(f"{directory}/{n}") for n in names if _document(f"{directory}/{n}") not in self._groups]
            self._groups.update(self.location.read_documents(missing))
            self._names[directory] = names
        return self._names[directory]

    def _read_levels(self, directory: str) -> None:
        """Read the level documents of every complete group of ``directory`` in one pass."""
        self._levels_read.add(directory)
        paths = []
        for name in self.complete_groups(directory):
            group = f"{directory}/{name}"
            paths += [_document(f"{group}/{level}") for level in level_paths(self.group_attributes(group) or {})]
        self._arrays.update(self.location.read_documents([p for p in paths if p not in self._arrays]))


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


def _document(path: str) -> str:
    return f"{path}/{ZARR_JSON}" if path else ZARR_JSON
