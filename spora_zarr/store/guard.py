"""What a writer may touch: no symlink inside the store is written through, and a destination is checked first.

- :func:`check_no_links`: a path below a local store root whose parts include a
  symbolic link is refused (a link ``dest.zarr/he -> /elsewhere`` would make a
  write land outside the store). The root itself may be a link: the user named it.
- :func:`resolve_inside`: a file named by a table (an offsets table's ``file``)
  is a confined relative path that, links resolved, stays inside its folder.
- :func:`unreadable_reason`: a source file is read only when it is a regular
  file (or a ``.zarr`` folder) that, links resolved, lies inside the tree the
  user named (a link ``images/T.tif -> /etc/...`` is skipped, and said so).
- :func:`check_destination`: a conversion never writes into its own source (or
  a folder inside it), and never into a folder that is not a store and already
  holds files, unless the caller passes ``overwrite`` (the files there are kept).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable

from ..errors import InvalidInputError, StoreError
from .layout import validate_relative_path
from .location import Location

__all__ = ["check_destination", "check_no_links", "resolve_inside", "unreadable_reason"]


def check_no_links(location: Location, path: str) -> None:
    """Raise ``StoreError`` if a part of ``path`` (relative to a local store root) is a symbolic link."""
    if not location.is_local:
        return
    current = location.root
    for part in (p for p in path.split("/") if p):
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise StoreError(
                f"{current}: a symbolic link inside the store (to {os.readlink(current)}); spora_zarr does not write through links"
            )


def inside(path: str, folder: str) -> bool:
    """Whether the (resolved) ``path`` is ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def resolve_inside(folder: str | os.PathLike[str], name: str, *, what: str = "file", source: str = "") -> str:
    """The local path of ``name`` below ``folder``; ``InvalidInputError`` unless it stays inside ``folder``.

    ``name`` must be a confined relative path (:func:`~.layout.validate_relative_path`)
    and, symbolic links resolved, still lie inside ``folder``.
    """
    validate_relative_path(name, what=what, source=source)
    base = os.fspath(folder)
    path = os.path.join(base, *name.split("/"))
    if not inside(os.path.realpath(path), os.path.realpath(base)):
        where = f"{source}: " if source else ""
        raise InvalidInputError(f"{where}{what} {name!r} resolves outside {base} (a symbolic link)")
    return path


def unreadable_reason(location: Location, rel: str) -> str | None:
    """Why the source file ``rel`` below a local tree must not be read (``None``: it may be).

    A path that leaves the tree once links are resolved, or that is not a
    regular file (a FIFO, a device, a socket; a ``.zarr`` folder counts as a
    file), is not read. Object stores have neither links nor special files.
    """
    if not location.is_local:
        return None
    path = location.fs_path(rel)
    real = os.path.realpath(path)
    if not inside(real, os.path.realpath(location.root)):
        return f"a symbolic link out of {location} (to {real}); only files inside the tree are read"
    if rel.lower().endswith(".zarr") and os.path.isdir(real):
        return None
    if not os.path.isfile(real):
        return "not a regular file (a FIFO, device or socket); only regular files are read"
    return None


def check_destination(
    dest: Location, *, overwrite: bool, source: Location | None = None, is_store: bool, claimed: Iterable[str] = ()
) -> None:
    """Refuse a destination that is ``source`` or inside it, or a non-empty folder that is not a store (unless ``overwrite``).

    ``is_store`` says whether ``dest`` already holds a cohort store root. In a
    folder that is not a store, a file or folder already at one of the
    ``claimed`` paths (the groups and tables the run would write) is refused
    even with ``overwrite``: spora_zarr did not write it, so it never replaces it.
    """
    if source is not None and source.protocol == dest.protocol:
        src, dst = (os.path.realpath(source.root), os.path.realpath(dest.root)) if dest.is_local else (source.root, dest.root)
        if inside(dst, src):
            where = "the source cohort itself" if dst == src else f"inside the source cohort {source}"
            raise InvalidInputError(f"{dest}: the destination is {where}; choose a destination outside it")
    if is_store:
        return
    fs = dest.fs()
    root = dest.fs_path()
    if fs.isfile(root):
        raise InvalidInputError(f"{dest}: the destination is a file, not a folder")
    try:
        listed = (posixpath.basename(e.rstrip("/")) for e in fs.ls(root, detail=False)) if fs.isdir(root) else ()
        entries = sorted(name for name in listed if not name.startswith(".spora"))  # spora's own: this run's lock, staging
    except (FileNotFoundError, OSError):
        entries = []
    if entries and not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise InvalidInputError(
            f"{dest}: not a cohort store and not empty ({len(entries)} entries: {shown}); choose a new or empty folder, "
            "or pass overwrite=True to write the store beside them (they are kept)"
        )
    for path in claimed if entries else ():
        if fs.exists(dest.fs_path(path)):
            raise InvalidInputError(f"{dest.join(path)}: already there and not written by spora_zarr; move it away (it is never replaced)")
