"""The content digest of a group: what a result computed from the group records, to know it was computed from these pixels.

Every block the writer stores (raw pixels, before compression) and every
shard of kept JPEG tiles (their bytes) is checksummed (CRC-32, libdeflate's,
about 8 GB/s a core, the GIL released) as it is written, on the thread that
writes it. The group's digest is a BLAKE2b-128 of the level shapes and dtype
and of every checksum in the order of the levels and block positions, so it
does not depend on the order the lanes finished in: the same pixels written
with the same options give the same digest (a resumed conversion writes the
same documents as an uninterrupted one), other pixels another one. It is
stored as ``spora.content_digest``; :mod:`spora_zarr.standardize` and
:mod:`spora_zarr.tiling` record it with their results, and ``validate --deep``
names a result whose group has changed since (``docs/store_layout.md``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from typing import Any

import imagecodecs

__all__ = ["ContentDigest"]


class ContentDigest:
    """Checksums of the blocks of one group write, by level name and block position, combined by :meth:`hexdigest`."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, tuple[int, ...]], int] = {}
        self._lock = threading.Lock()

    def add(self, level: str, position: Sequence[int], *parts: Any) -> None:
        """Checksum the block written at ``position`` (its first index on each axis) of ``level``: ``parts`` (arrays or bytes) in order."""
        value = 0
        for part in parts:
            value = int(imagecodecs.deflate_crc32(part, value))
        with self._lock:
            self._sums[(level, tuple(int(p) for p in position))] = value

    def hexdigest(self, shapes: Sequence[Sequence[int]], dtype: str) -> str:
        """The digest of the levels (their ``shapes`` and ``dtype``) and of every block's checksum."""
        digest = hashlib.blake2b(json.dumps([[list(s) for s in shapes], dtype]).encode(), digest_size=16)
        for (level, position), value in sorted(self._sums.items()):
            digest.update(f"{level}:{','.join(map(str, position))}:{value};".encode())
        return digest.hexdigest()
