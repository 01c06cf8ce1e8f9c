"""The shard file as zarr's sharding codec lays it out in the converter's layout: chunks, then their index.

A shard file holds its inner chunks' bytes in any order, then (``index_location
= "end"``) one ``(offset, size)`` pair of little-endian uint64 per inner chunk in
C order, then the crc32c of those pairs (index codecs ``bytes`` + ``crc32c``).
An inner chunk that was never written has offset and size :data:`MISSING` and
reads as the fill value. The writers (:mod:`spora_zarr.write.shards`, the kept
JPEG tiles of :mod:`spora_zarr.write.encoded`) and the direct read engine
(:mod:`spora_zarr.read.engines.shards`) share this module.
"""

from __future__ import annotations

import google_crc32c
import numpy as np

__all__ = ["MISSING", "index_bytes"]

MISSING = 2**64 - 1
"""Offset and size of an inner chunk that was never written."""


def index_bytes(entries: np.ndarray) -> bytes:
    """The index of a shard file: the ``(offset, size)`` pairs ``entries`` (``(chunks, 2)``, C order) and their crc32c."""
    table: bytes = np.ascontiguousarray(entries, dtype="<u8").tobytes()
    checksum: int = google_crc32c.value(table)
    return table + checksum.to_bytes(4, "little")
