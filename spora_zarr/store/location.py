"""Where a store lives: local paths and fsspec URLs, and the few filesystem verbs we need.

Local paths use zarr's ``LocalStore`` and real renames; anything with a scheme
(``s3://``, ``memory://``, ``file://``, ...) goes through fsspec, configured the
AWS way (environment variables) or with ``storage_options``.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore


def is_url(location: str) -> bool:
    """Whether ``location`` names an fsspec URL rather than a local path."""
    return "://" in str(location) and not str(location).startswith("file://")


@dataclass(frozen=True)
class Location:
    """A store root: a local directory or an fsspec URL with its storage options."""

    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, location: str | os.PathLike[str] | Location, storage_options: dict[str, Any] | None = None) -> Location:
        """Normalise a path, ``file://`` URL or fsspec URL."""
        if isinstance(location, Location):
            return location
        text = os.fspath(location)
        if text.startswith("file://"):
            text = text[len("file://"):]
        if not is_url(text):
            text = os.path.abspath(text)
        return cls(text.rstrip("/") or "/", dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        return not is_url(self.root)

    @property
    def protocol(self) -> str:
        return "file" if self.is_local else self.root.split("://", 1)[0]

    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem of this location (local or remote)."""
        if self.is_local:
            return fsspec.filesystem("file")
        return fsspec.filesystem(self.protocol, **self.storage_options)

    def join(self, *parts: str) -> str:
        """Path (or URL) of ``parts`` below the root."""
        return posixpath.join(self.root, *[p.strip("/") for p in parts if p])

    def fs_path(self, *parts: str) -> str:
        """Path of ``parts`` as the filesystem of :meth:`fs` names it (no scheme)."""
        full = self.join(*parts)
        return full if self.is_local else full.split("://", 1)[1]

    def zarr_store(self, *, read_only: bool = False) -> Store:
        """A zarr store rooted at this location."""
        if self.is_local:
            return LocalStore(self.root, read_only=read_only)
        return FsspecStore.from_url(self.root, storage_options=self.storage_options or None, read_only=read_only)

    def __str__(self) -> str:
        return self.root
