"""Where a store lives: local paths and fsspec URLs, and the few filesystem verbs we need.

Local paths use zarr's ``LocalStore`` and real renames; anything with a scheme
(``s3://``, ``memory://``, ``file://``, ...) goes through fsspec, configured the
AWS way (environment variables) or with ``storage_options``. A protocol fsspec
does not know is an :class:`~spora_zarr.errors.InvalidInputError` on parse.
``http://`` and ``https://`` stores are read-only: a writing verb on one is a
:class:`~spora_zarr.errors.StoreError` (:meth:`Location.check_writable`).

Reads of a store's own files are bounded: :func:`open_local_file` opens only
regular files (never a FIFO, device or directory, which could block or never
end) and :meth:`Location.read_bytes` reads at most a given number of bytes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import orjson
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from ..errors import InvalidInputError, NotFoundError, SporaZarrError, StoreError

READ_ONLY_PROTOCOLS = ("http", "https")
"""Protocols whose stores are read, never written."""

DOCUMENT_MAX_BYTES = 16 * 2**20
"""The longest metadata document (``zarr.json``) read."""


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
            text = text[len("file://") :]
        if not is_url(text):
            text = os.path.abspath(text)
        else:
            protocol = text.split("://", 1)[0]
            if protocol not in fsspec.available_protocols():
                raise InvalidInputError(
                    f"{text}: unknown protocol {protocol!r}; give a local path or an fsspec URL (s3://, http(s)://, memory://, ...)"
                )
        return cls(text.rstrip("/") or "/", dict(storage_options or {}))

    @property
    def is_local(self) -> bool:
        return not is_url(self.root)

    @property
    def protocol(self) -> str:
        return "file" if self.is_local else self.root.split("://", 1)[0]

    @property
    def read_only(self) -> bool:
        """Whether this store can only be read (``http(s)://``)."""
        return self.protocol in READ_ONLY_PROTOCOLS

    def check_writable(self, verb: str = "write") -> None:
        """Raise ``StoreError`` when this store is read-only (``verb`` names what was asked)."""
        if self.read_only:
            raise StoreError(f"{self.root}: cannot {verb}: {self.protocol}:// stores are read-only")

    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem of this location (local or remote)."""
        if self.is_local:
            return fsspec.filesystem("file")
        try:
            return fsspec.filesystem(self.protocol, **self.storage_options)
        except ImportError as exc:
            raise InvalidInputError(f"{self.root}: reading {self.protocol}:// needs a package that is not installed: {exc}") from None

    def join(self, *parts: str) -> str:
        """Path (or URL) of ``parts`` below the root."""
        joined = self.root
        for part in parts:  # posixpath.join of parts that are never absolute, without its checks (called per document)
            if part:
                joined += part.strip("/") if joined.endswith("/") else "/" + part.strip("/")
        return joined

    def fs_path(self, *parts: str) -> str:
        """Path of ``parts`` as the filesystem of :meth:`fs` names it: no scheme, but http(s) URLs whole (as fsspec's
        ``HTTPFileSystem`` names them)."""
        full = self.join(*parts)
        return full if self.is_local or self.protocol in ("http", "https") else full.split("://", 1)[1]

    def read_bytes(self, *parts: str, max_bytes: int) -> bytes:
        """The whole file at ``parts`` below the root, if it is a regular file of at most ``max_bytes`` bytes.

        Raises
        ------
        NotFoundError
            There is no file there.
        StoreError
            It is not a regular file (local stores), is longer than ``max_bytes`` or cannot be read.
        """
        where = self.join(*parts)
        if self.is_local:
            fd = open_local_file(where, max_bytes)
            if fd is None:
                raise NotFoundError(f"{where}: no such file")
            try:
                return _bounded(_read_to_end(fd, max_bytes), where, max_bytes)
            except OSError as exc:
                raise StoreError(f"{where}: cannot read: {exc}") from exc
            finally:
                os.close(fd)
        fs = self.fs()
        try:
            return _bounded(fs.cat_file(self.fs_path(*parts), start=0, end=max_bytes + 1), where, max_bytes)  # one ranged GET
        except FileNotFoundError:
            raise NotFoundError(f"{where}: no such file") from None
        except Exception as exc:  # noqa: BLE001 - each fsspec backend raises its own kinds (aiohttp's are not OSErrors)
            raise StoreError(f"{where}: cannot read: {type(exc).__name__}: {exc}") from exc

    def read_document(self, *parts: str, max_bytes: int = DOCUMENT_MAX_BYTES) -> dict[str, Any]:
        """The JSON object in the file at ``parts`` (a ``zarr.json``), read as :meth:`read_bytes` reads.

        Raises
        ------
        NotFoundError
            There is no file there.
        StoreError
            It cannot be read (see :meth:`read_bytes`), is not JSON, nests too deep, or is not an object.
        """
        return parse_document(self.read_bytes(*parts, max_bytes=max_bytes), self.join(*parts))

    def read_documents(self, paths: Sequence[str], *, max_bytes: int = DOCUMENT_MAX_BYTES) -> dict[str, dict[str, Any] | SporaZarrError]:
        """The JSON objects of many files at once, each read and checked as :meth:`read_document` reads one.

        Local files are read one after another (a ``zarr.json`` comes from
        the page cache in tens of microseconds: a thread pool's hand-offs cost
        more than the reads); remote ones with one concurrent ``cat_ranges``
        call (a bounded gather of ranged GETs on object stores and HTTP). A file
        that cannot be read maps to the error :meth:`read_document` would raise
        for it (``NotFoundError`` or ``StoreError``).
        """
        if self.is_local or len(paths) < 2:
            documents: dict[str, dict[str, Any] | SporaZarrError] = {}
            with collection_paused():
                for path in paths:
                    try:
                        documents[path] = self.read_document(path, max_bytes=max_bytes)
                    except SporaZarrError as exc:
                        documents[path] = exc
            return documents
        fs_paths = [self.fs_path(path) for path in paths]
        try:
            results = self.fs().cat_ranges(fs_paths, [0] * len(paths), [max_bytes + 1] * len(paths), on_error="return")
        except Exception as exc:  # noqa: BLE001 - each fsspec backend raises its own kinds
            raise StoreError(f"{self.root}: cannot read metadata: {type(exc).__name__}: {exc}") from exc
        with collection_paused():
            return self._parse_results(paths, results, max_bytes)

    def _parse_results(self, paths: Sequence[str], results: Sequence[Any], max_bytes: int) -> dict[str, dict[str, Any] | SporaZarrError]:
        """The documents of ``cat_ranges`` ``results`` (bytes, or the exception reading each path)."""
        documents: dict[str, dict[str, Any] | SporaZarrError] = {}
        for path, data in zip(paths, results, strict=True):
            where = self.join(path)
            try:
                if isinstance(data, FileNotFoundError):
                    raise NotFoundError(f"{where}: no such file")
                if isinstance(data, BaseException):
                    raise StoreError(f"{where}: cannot read: {type(data).__name__}: {data}")
                documents[path] = parse_document(_bounded(data, where, max_bytes), where)
            except SporaZarrError as exc:
                documents[path] = exc
        return documents

    def zarr_store(self, *, read_only: bool = False) -> Store:
        """A zarr store rooted at this location (``StoreError`` for a writable store on a read-only location)."""
        if not read_only:
            self.check_writable()
        if self.is_local:
            return LocalStore(self.root, read_only=read_only)
        return FsspecStore.from_url(self.root, storage_options=self.storage_options or None, read_only=read_only)

    def __str__(self) -> str:
        return self.root


def fs_spelling(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path`` as ``fs.find`` and ``fs.ls`` spell it: without its protocol (``memory://`` paths keep a leading ``/``)."""
    return str(fs._strip_protocol(path))  # noqa: SLF001 - fsspec's path normaliser has no public name


def open_local_file(path: str, max_bytes: int | None = None) -> int | None:
    """A read-only descriptor of the regular file ``path`` (following symlinks), or None when there is none.

    The file is opened without blocking (a FIFO would wait for a writer) and
    checked with ``fstat`` before any byte is read. The caller closes it.

    Raises
    ------
    StoreError
        ``path`` is a FIFO, device, directory or socket, is longer than
        ``max_bytes``, or cannot be opened.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{path}: not a regular file ({_kind(info.st_mode)}); only regular files are read")
        if max_bytes is not None and info.st_size > max_bytes:
            raise StoreError(f"{path}: {info.st_size} bytes, more than the {max_bytes} bytes such a file can hold")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while many parsed JSON objects are made (they hold no cycles).

    Tens of thousands of new objects set off full collections of every object of the process: in one
    that imported torch and pandas, two thirds of the time of reading a directory summary of 10,000
    groups, a fifth of ``info`` on 1,250 tissues.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_document(data: bytes, where: str) -> dict[str, Any]:
    """The JSON object in ``data`` (the bytes of the file ``where``); ``StoreError`` when it is none.

    Parsed by orjson (a third of the time of the standard library on metadata documents); what
    orjson refuses (``NaN`` literals, integers beyond 64 bits, nesting beyond 1024) goes to the
    standard library, which accepts the first two.
    """
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        document = _parse_with_json(data, where)
    if not isinstance(document, dict):
        raise StoreError(f"{where}: not a JSON object but {type(document).__name__}")
    return document


def _parse_with_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise StoreError(f"{where}: not a usable JSON document (nested too deep)") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise StoreError(f"{where}: not a JSON document ({exc})") from None


def _read_to_end(fd: int, max_bytes: int) -> bytes:
    """The bytes of the open file ``fd`` up to its end or to ``max_bytes + 1`` (a file that grew while read is read on).

    Asks for the size ``fstat`` gives, not for ``max_bytes``: a buffer of the most a file may hold
    costs more than reading a ``zarr.json``.
    """
    parts, total = [], 0
    want = min(os.fstat(fd).st_size, max_bytes) + 1
    while total <= max_bytes:
        part = os.read(fd, want)
        if not part:
            break
        parts.append(part)
        total += len(part)
        want = min(2**20, max_bytes + 1 - total)
    return b"".join(parts)


def _bounded(data: bytes, where: str, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise StoreError(f"{where}: more than the {max_bytes} bytes such a file can hold")
    return data
