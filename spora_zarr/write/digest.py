"""The content digests of a group's levels: what a result computed from a level records, to know it was computed from these pixels.

Every block the writer stores (raw pixels in the stored dtype, before
compression) and every shard of kept JPEG tiles (their bytes) is checksummed
(CRC-32, libdeflate's, about 8 GB/s a core, the GIL released) as it is
written, on the thread that writes it. A level's digest is a BLAKE2b-128 of
its shape and dtype and of its blocks' checksums in the order of their
positions, so it does not depend on the order the lanes finished in: the same
pixels written with the same options (shard and block sizes) give the same
digest (a resumed conversion writes the same documents as an uninterrupted
one), other pixels another one. They are stored as ``spora.content_digests``
(level name -> hex). :mod:`spora_zarr.standardize`, :mod:`spora_zarr.tiling`
and :mod:`spora_zarr.inference` record the digest of the level they read with
their results, and ``validate --deep`` names a result whose level has changed
since (``docs/store_layout.md``). Adding a resolution to a group leaves the
other levels' digests as they were.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import imagecodecs

__all__ = ["ContentDigest"]


class ContentDigest:
    """Checksums of the blocks of one group write, by level name and block position, combined by :meth:`hexdigests`."""

    def __init__(self) -> None:
        self._sums: dict[str, dict[tuple[int, ...], int]] = {}
        self._lock = threading.Lock()

    def add(self, level: str, position: Sequence[int], *parts: Any) -> None:
        """Checksum the block written at ``position`` (its first pixel: plane, y, x) of ``level``: ``parts`` (arrays or bytes) in order."""
        value = 0
        for part in parts:
            value = int(imagecodecs.deflate_crc32(part, value))
        with self._lock:
            self._sums.setdefault(level, {})[tuple(int(p) for p in position)] = value

    def hexdigests(self, shapes: Mapping[str, Sequence[int]], dtype: str) -> dict[str, str]:
        """Each level's digest (``shapes``: level name -> shape as stored, all of ``dtype``)."""
        digests = {}
        for level, shape in shapes.items():
            digest = hashlib.blake2b(json.dumps([list(shape), dtype]).encode(), digest_size=16)
            for position, value in sorted(self._sums.get(level, {}).items()):
                digest.update(f"{','.join(map(str, position))}:{value};".encode())
            digests[level] = digest.hexdigest()
        return digests
