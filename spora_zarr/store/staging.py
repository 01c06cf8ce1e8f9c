"""Crash-safe visibility: a group or table appears at its final path only when complete.

Everything is first written under ``.spora_tmp/<token>/<final path>`` in the
store. A finished group is then *promoted*:

- on a local filesystem by ``rename`` (an existing old version is renamed
  aside first and deleted only after the new one is in place);
- on object stores, which cannot rename, by copying the arrays and writing the
  group's ``zarr.json`` last, so readers never see a multiscales group whose
  arrays are incomplete.

A run killed at any moment leaves only ``.spora_tmp`` entries behind, which
:meth:`Staging.recover` finishes (a complete new version whose promotion was
cut short) or deletes (everything else).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import uuid
from typing import Any

from ..errors import NotFoundError, StoreError
from .location import Location

log = logging.getLogger("spora_zarr")

STAGING_DIR = ".spora_tmp"
ZARR_JSON = "zarr.json"
_OLD = ".old"


def group_document(attributes: dict[str, Any] | None = None) -> bytes:
    """The ``zarr.json`` of a zarr v3 group with ``attributes``."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}, indent=2).encode()


def is_complete_group(attributes: dict[str, Any]) -> bool:
    """Whether group attributes describe a finished multiscale (image or label)."""
    ome = attributes.get("ome")
    return isinstance(ome, dict) and bool(ome.get("multiscales"))


class Staging:
    """Temporary areas of one store and the promotion of finished work out of them."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.fs = location.fs()

    # -- reading state -------------------------------------------------
    def read_attributes(self, path: str) -> dict[str, Any] | None:
        """Attributes of the group at ``path``, or ``None`` if there is no group there."""
        try:
            document = self.location.read_document(path, ZARR_JSON)
        except NotFoundError:
            return None
        except StoreError:
            if not self.location.is_local or os.path.isfile(self.location.fs_path(path, ZARR_JSON)):
                return None  # a damaged document, as if there were none; a FIFO or device is an error
            raise
        attributes = document.get("attributes", {})
        return attributes if document.get("node_type") == "group" and isinstance(attributes, dict) else None

    def is_complete(self, path: str) -> bool:
        """Whether ``path`` holds a finished multiscales group."""
        attributes = self.read_attributes(path)
        return attributes is not None and is_complete_group(attributes)

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self.location.fs_path(path)))

    # -- writing ---------------------------------------------------------
    def new_area(self) -> str:
        """A fresh temporary area (a store-relative prefix) for one unit of work."""
        return f"{STAGING_DIR}/{uuid.uuid4().hex[:12]}"

    def ensure_groups(self, path: str, root_attributes: dict[str, Any] | None = None) -> None:
        """Write plain group documents for ``path`` and each of its ancestors that lack one."""
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts) + 1):
            prefix = "/".join(parts[:depth])
            target = self.location.fs_path(prefix, ZARR_JSON)
            if not self.fs.exists(target):
                self._write_bytes(target, group_document(root_attributes if depth == 0 else None))

    def write_group_document(self, path: str, attributes: dict[str, Any]) -> None:
        """Write (or replace) the ``zarr.json`` of the group at ``path``."""
        self._write_bytes(self.location.fs_path(path, ZARR_JSON), group_document(attributes))

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
        self._write_bytes(self.location.fs_path(path), data)

    # -- promotion -------------------------------------------------------
    def promote(self, area: str, path: str) -> None:
        """Move the finished group ``<area>/<path>`` to ``path``, replacing an old version last."""
        self.location.check_writable()
        self.ensure_groups(posixpath.dirname(path))
        source, target = self.location.fs_path(area, path), self.location.fs_path(path)
        if self.location.is_local:
            old = None
            if os.path.exists(target):
                old = self.location.fs_path(area + _OLD, path)
                os.makedirs(os.path.dirname(old), exist_ok=True)
                os.rename(target, old)
            os.rename(source, target)
            if old is not None:
                shutil.rmtree(self.location.fs_path(area + _OLD), ignore_errors=True)
        else:
            self._promote_by_copy(source, target)
        self.discard(area)

    def _promote_by_copy(self, source: str, target: str) -> None:
        target_doc = posixpath.join(target, ZARR_JSON)
        if self.fs.exists(target_doc):
            self.fs.rm_file(target_doc)  # the old version stops being a complete group first
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        files = [f for f in self.fs.find(source) if f != posixpath.join(source, ZARR_JSON)]
        for name in files:
            self.fs.copy(name, target + name[len(source):])
        self.fs.copy(posixpath.join(source, ZARR_JSON), target_doc)

    def discard(self, area: str) -> None:
        """Delete a temporary area and what it holds."""
        path = self.location.fs_path(area)
        if self.location.is_local:
            shutil.rmtree(path, ignore_errors=True)
        elif self.fs.exists(path):
            self.fs.rm(path, recursive=True)

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
        return [f"{STAGING_DIR}/{name}" for name in names if name != ZARR_JSON]

    def recover(self) -> list[str]:
        """Finish or remove what an interrupted run left; return the group paths promoted.

        A staged group that is complete and whose final path holds no complete
        group (its promotion was cut short) is promoted; an old version moved
        aside whose replacement never arrived is put back; the rest is deleted.
        """
        self.location.check_writable()
        promoted = []
        for area in sorted(self._areas(), key=lambda a: a.endswith(_OLD)):
            for group in self._staged_groups(area):
                if area.endswith(_OLD):
                    if not self.exists(group):
                        log.info("restoring %s from an interrupted overwrite", group)
                        self.promote(area, group)
                elif self.is_complete(f"{area}/{group}") and not self.is_complete(group):
                    log.info("finishing the interrupted promotion of %s", group)
                    self.promote(area, group)
                    promoted.append(group)
            self.discard(area)
        if not self._areas():  # zarr leaves a group document behind when it creates arrays in an area
            self.discard(STAGING_DIR)
        return promoted

    def _staged_groups(self, area: str) -> list[str]:
        """Paths (relative to the area) of the multiscale groups staged in ``area``."""
        base = self.location.fs_path(area)
        try:
            documents = [f for f in self.fs.find(base) if f.endswith("/" + ZARR_JSON)]
        except (FileNotFoundError, OSError):
            return []
        groups = []
        for doc in documents:
            relative = posixpath.dirname(doc)[len(base):].strip("/")
            attributes = self.read_attributes(f"{area}/{relative}")
            if relative and attributes is not None and "spora" in attributes:
                groups.append(relative)
        return groups
