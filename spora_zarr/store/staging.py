"""Crash-safe visibility: a group or table appears at its final path only when complete.

Everything is first written under ``.spora_tmp/<token>/<final path>`` in the
store, with the files that list the group (tables, the root document) when a
writer stages them with it. Writing the area's commit record is the one step
that decides; the finished group and then its files are *promoted*:

- on a local filesystem by ``rename`` (an existing old version is swapped with
  the new one in one step where the kernel can, else renamed aside first, and
  deleted only after the new one is in place);
- on object stores, which cannot rename, by copying the arrays and writing the
  group's ``zarr.json`` last, so readers never see a multiscales group whose
  arrays are incomplete.

A run killed at any moment leaves only ``.spora_tmp`` entries behind, which
:meth:`Staging.recover` finishes (a committed area) or deletes (everything
else), restoring an old version whose replacement never arrived.

Nothing is written through a symbolic link inside a local store
(:func:`~.guard.check_no_links`), and promotion replaces only a group that
spora_zarr wrote (its ``zarr.json`` has ``spora`` attributes): a foreign folder at
a group's path is an error, never deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError, NotFoundError, SporaZarrError, StoreError
from .guard import check_no_links
from .layout import validate_relative_path
from .location import Location, fs_spelling

log = logging.getLogger("spora_zarr")

STAGING_DIR = ".spora_tmp"
ZARR_JSON = "zarr.json"
_OLD = ".old"
_COMMIT = ".spora_commit"
_ZARR_PARTIAL = re.compile(r"zarr\.[0-9a-f]{32}\.partial")  # zarr's LocalStore: an exclusive write of zarr.json


def group_document(attributes: dict[str, Any] | None = None) -> bytes:
    """The ``zarr.json`` of a zarr v3 group with ``attributes``."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}, indent=2).encode()


def is_complete_group(attributes: dict[str, Any]) -> bool:
    """Whether group attributes describe a finished multiscale (image or label)."""
    ome = attributes.get("ome")
    return isinstance(ome, dict) and bool(ome.get("multiscales"))


def group_attributes(location: Location, path: str, document: dict[str, Any] | SporaZarrError) -> dict[str, Any] | None:
    """The attributes of the group at ``path`` from its ``zarr.json`` ``document`` (or the error reading it), or ``None``.

    No file, a damaged document or one of an array is ``None`` (as if there
    were no group); a local ``zarr.json`` that is no regular file (a FIFO, a
    device) raises its ``StoreError``.
    """
    if isinstance(document, NotFoundError):
        return None
    if isinstance(document, StoreError) and (not location.is_local or os.path.isfile(location.fs_path(path, ZARR_JSON))):
        return None  # a damaged document, as if there were none; a FIFO or device is an error
    if isinstance(document, SporaZarrError):
        raise document
    attributes = document.get("attributes", {})
    return attributes if document.get("node_type") == "group" and isinstance(attributes, dict) else None


_REPLACEMENTS: dict[str, int] = {}  # store root -> groups this process replaced there (a forked child counts on)


def replacements(location: Location) -> int:
    """How many groups of the store this process has replaced: a reader of the store opened before is of an older one."""
    return _REPLACEMENTS.get(location.root, 0)


class Staging:
    """Temporary areas of one store and the promotion of finished work out of them."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.fs = location.fs()

    # -- reading state -------------------------------------------------
    def read_attributes(self, path: str) -> dict[str, Any] | None:
        """Attributes of the group at ``path``, or ``None`` if there is no group there."""
        try:
            document: dict[str, Any] | SporaZarrError = self.location.read_document(path, ZARR_JSON)
        except SporaZarrError as exc:
            document = exc
        return group_attributes(self.location, path, document)

    def is_complete(self, path: str) -> bool:
        """Whether ``path`` holds a finished multiscales group."""
        attributes = self.read_attributes(path)
        return attributes is not None and is_complete_group(attributes)

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self.location.fs_path(path)))

    def written_by_spora(self, path: str) -> bool:
        """Whether ``path`` holds a group spora_zarr wrote (its attributes have ``spora``), complete or being replaced."""
        attributes = self.read_attributes(path)
        return attributes is not None and "spora" in attributes

    def _target(self, path: str) -> str:
        """The filesystem path of store path ``path``, refused when a part of it is a symlink."""
        check_no_links(self.location, path)
        return self.location.fs_path(path)

    # -- writing ---------------------------------------------------------
    def new_area(self) -> str:
        """A fresh temporary area (a store-relative prefix) for one unit of work."""
        area = f"{STAGING_DIR}/{uuid.uuid4().hex[:12]}"
        self._check_staging_dir()
        check_no_links(self.location, area)
        return area

    def _check_staging_dir(self) -> None:
        """``StoreError`` if ``.spora_tmp`` is a link (its areas would be deleted outside the store) or no folder."""
        check_no_links(self.location, STAGING_DIR)
        path = self.location.fs_path(STAGING_DIR)
        if self.location.is_local and os.path.lexists(path) and not os.path.isdir(path):
            raise StoreError(f"{path}: not a folder; spora_zarr keeps its work in progress there (remove it)")

    def ensure_groups(self, path: str, root_attributes: dict[str, Any] | None = None) -> None:
        """Write plain group documents for ``path`` and each of its ancestors that lack one."""
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts) + 1):
            prefix = "/".join(parts[:depth])
            target = self._target(posixpath.join(prefix, ZARR_JSON))
            if not self.fs.exists(target):
                self._write_bytes(target, group_document(root_attributes if depth == 0 else None))

    def write_group_document(self, path: str, attributes: dict[str, Any]) -> None:
        """Write (or replace) the ``zarr.json`` of the group at ``path``."""
        self._write_bytes(self._target(posixpath.join(path, ZARR_JSON)), group_document(attributes))

    def _write_bytes(self, fs_path: str, data: bytes) -> None:
        self.location.check_writable()
        if self.location.is_local:
            os.makedirs(os.path.dirname(fs_path), exist_ok=True)
            tmp = f"{fs_path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, fs_path)  # atomic: a reader sees the old or the new document
        else:
            self.fs.pipe_file(fs_path, data)  # a single PUT is atomic on object stores

    def write_file(self, path: str, data: bytes) -> None:
        """Write a whole file (a table) so that it appears at ``path`` complete or not at all."""
        self._write_bytes(self._target(path), data)

    def write_file_through_area(self, path: str, data: bytes) -> None:
        """Write a whole file as :meth:`write_file` does, its temporary copy in a fresh area.

        For a file written outside any unit of work (a directory summary): a run killed while writing it
        leaves an area, which :meth:`recover` deletes, not a temporary file beside ``path``.
        """
        area = self.new_area()
        try:
            self.stage_file(area, path, data)
            self._move_file(self.location.fs_path(area, path), self._target(path))
        finally:
            self.discard(area)
            if not self._areas():  # no other work in progress: no empty staging folder left behind
                self.discard(STAGING_DIR)

    # -- promotion -------------------------------------------------------
    def stage_file(self, area: str, path: str, data: bytes) -> None:
        """Write a whole file (a table, the root document) into ``area``, to be promoted with its group."""
        self._write_bytes(self.location.fs_path(area, path), data)

    def promote(self, area: str, path: str, files: Sequence[str] = ()) -> None:
        """Move the finished group ``<area>/<path>`` and the ``files`` staged with it to their final paths.

        Writing the area's commit record is the one step that decides: before
        it, :meth:`recover` deletes the area (nothing changed); after it,
        :meth:`recover` finishes the moves (the group first, then the files in
        order). An old version of the group is deleted once the new one is in place;
        it is replaced only when spora_zarr wrote it: anything else at ``path``, or a
        symbolic link on the way to a final path, is a ``StoreError`` before the commit.
        """
        self.location.check_writable()
        target = self._target(path)
        replacing = self.fs.exists(target)
        if replacing and not self.written_by_spora(path):
            raise StoreError(f"{target}: holds files spora_zarr did not write (no spora group there); not replacing them")
        for name in files:
            self._target(name)
        record: dict[str, Any] = {"groups": [path], "files": list(files)}
        if self.location.is_local:  # after a swap with the old version the area holds that one: tell them apart
            record["inodes"] = {path: os.stat(self.location.fs_path(area, path)).st_ino}
        self._write_bytes(self.location.fs_path(area, _COMMIT), json.dumps(record).encode())
        self._roll_forward(area, record)
        if replacing:
            _REPLACEMENTS[self.location.root] = _REPLACEMENTS.get(self.location.root, 0) + 1

    def _committed(self, area: str) -> dict[str, Any] | None:
        """The area's commit record, or ``None`` without a well-formed one (its paths must stay inside the store)."""
        try:
            record = json.loads(self.fs.cat_file(self.location.fs_path(area, _COMMIT)))
        except (FileNotFoundError, OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        try:
            for path in [*record.get("groups", []), *record.get("files", [])]:
                validate_relative_path(path)
        except (InvalidInputError, TypeError):
            return None  # a record naming ``../x``: not one this library wrote; never moved out of the store
        return record

    def _roll_forward(self, area: str, record: dict[str, Any] | None = None) -> list[str]:
        """Move what a committed area still holds to its final paths; return the groups moved.

        ``record``: the commit record just written (not read back: two requests on an object store); else the
        area's own, as :meth:`recover` finds it.
        """
        record = record if record is not None else self._committed(area) or {}
        moved = []
        inodes = record.get("inodes", {})
        for group in record.get("groups", []):
            staged = self.location.fs_path(area, group)
            if self.fs.exists(staged) and (group not in inodes or os.stat(staged).st_ino == inodes[group]):
                self._move_group(area, group)
                moved.append(group)
        for name in record.get("files", []):
            source = self.location.fs_path(area, name)
            if self.fs.exists(source):
                self._move_file(source, self._target(name))
        self.discard(area)
        return moved

    def _move_group(self, area: str, path: str) -> None:
        from .summary import invalidate_summary  # summary reads groups through this module

        self.ensure_groups(posixpath.dirname(path))
        invalidate_summary(self.location, *posixpath.split(path))  # before the group changes: no summary that misses it
        source, target = self.location.fs_path(area, path), self._target(path)
        if not self.location.is_local:
            self._promote_by_copy(source, target)
        elif not os.path.exists(target):
            os.rename(source, target)
        elif _exchange(source, target):  # one step: readers opening the group see the old or the new version
            shutil.rmtree(source, ignore_errors=True)
        else:
            old = self.location.fs_path(area + _OLD, path)
            os.makedirs(os.path.dirname(old), exist_ok=True)
            os.rename(target, old)
            os.rename(source, target)
            shutil.rmtree(self.location.fs_path(area + _OLD), ignore_errors=True)

    def _move_file(self, source: str, target: str) -> None:
        if self.location.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(source, target)
        else:
            self.fs.pipe_file(target, self.fs.cat_file(source))

    def _promote_by_copy(self, source: str, target: str) -> None:
        target_doc = posixpath.join(target, ZARR_JSON)
        # the old version (if any) stops being a complete group first; the group stays marked as spora's
        self.fs.pipe_file(target_doc, group_document({"spora": {"kind": "replacing"}}))
        keep = fs_spelling(self.fs, target_doc)
        for name in self.fs.find(target):
            if fs_spelling(self.fs, name) != keep:
                self.fs.rm_file(name)
        prefix = fs_spelling(self.fs, source).rstrip("/")  # as find() spells it (memory:// adds a leading "/")
        files = [f for f in self.fs.find(source) if f != posixpath.join(prefix, ZARR_JSON)]
        for name in files:  # cp_file: copy() first lists the target, to see whether it is a folder (a request a file)
            self.fs.cp_file(name, target + name[len(prefix) :])
        self.fs.cp_file(posixpath.join(source, ZARR_JSON), target_doc)

    def discard(self, area: str) -> None:
        """Delete a temporary area and what it holds."""
        path = self.location.fs_path(area)
        if self.location.is_local:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.isfile(path):  # a temporary file a kill left beside the areas (zarr's ``*.partial``)
                os.remove(path)
        else:
            with contextlib.suppress(FileNotFoundError):  # not asked first: two requests on an object store
                self.fs.rm(path, recursive=True)

    def abandon(self, area: str) -> None:
        """Delete the area of a write that failed, unless it was committed (then :meth:`recover` finishes it)."""
        if self._committed(area) is None:
            self.discard(area)

    def discard_for(self, path: str) -> None:
        """Delete every temporary copy of ``path`` (leftovers of a killed run)."""
        for area in self._areas():
            if self.fs.exists(self.location.fs_path(area, path)):
                self.discard(area)

    def _areas(self) -> list[str]:
        root = self.location.fs_path(STAGING_DIR)
        try:
            entries = self.fs.ls(root, detail=False)
        except (FileNotFoundError, OSError):
            return []
        names = (posixpath.basename(e.rstrip("/")) for e in entries)
        areas = [f"{STAGING_DIR}/{name}" for name in names if name != ZARR_JSON]
        if self.location.is_local:  # an area that is a link is no area (never read, moved or deleted through)
            areas = [a for a in areas if not os.path.islink(self.location.fs_path(a))]
        return areas

    def recover(self) -> list[str]:
        """Finish or undo what an interrupted run left; return the group paths promoted.

        An area with a commit record is finished (its group and files moved to
        their final paths); an old version moved aside whose replacement never
        arrived is put back; everything else is deleted, and so is a temporary
        root document zarr left (it writes ``zarr.<hex>.partial`` beside the
        root's ``zarr.json`` to learn that the root exists whenever it creates an
        array, and a kill in that instant leaves it).
        """
        self.location.check_writable()
        self._check_staging_dir()
        promoted = []
        for area in sorted(self._areas(), key=lambda a: a.endswith(_OLD)):
            if area.endswith(_OLD):
                for group in self._staged_groups(area):
                    if not self.exists(group):
                        log.info("restoring %s from an interrupted overwrite", group)
                        self._move_group(area, group)
            elif self._committed(area) is not None:
                log.info("finishing the interrupted promotion of %s", area)
                promoted += self._roll_forward(area)
            self.discard(area)
        if not self._areas():  # zarr leaves a group document behind when it creates arrays in an area
            self.discard(STAGING_DIR)
        if self.location.is_local:
            with os.scandir(self.location.fs_path()) as entries:
                for entry in entries:
                    if _ZARR_PARTIAL.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                        os.remove(entry.path)
        return promoted

    def _staged_groups(self, area: str) -> list[str]:
        """Paths (relative to the area) of the multiscale groups staged in ``area``."""
        base = fs_spelling(self.fs, self.location.fs_path(area)).rstrip("/")
        try:
            documents = [f for f in self.fs.find(base) if f.endswith("/" + ZARR_JSON)]
        except (FileNotFoundError, OSError):
            return []
        groups = []
        for doc in documents:
            relative = posixpath.dirname(doc)[len(base) :].strip("/")
            attributes = self.read_attributes(f"{area}/{relative}")
            if relative and attributes is not None and "spora" in attributes:
                groups.append(relative)
        return groups


def _exchange(source: str, target: str) -> bool:
    """Swap two local directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), rename_exchange) == 0)
