"""The shard file as zarr's sharding codec lays it out in the converter's layout: chunks, then their index.

A shard file holds its inner chunks' bytes in any order, then (``index_location
= "end"``) one ``(offset, size)`` pair of little-endian uint64 per inner chunk in
C order, then the crc32c of those pairs (index codecs ``bytes`` + ``crc32c``).
An inner chunk that was never written has offset and size :data:`MISSING` and
reads as the fill value. The writers (:mod:`spora_zarr.write.shards`, the kept
JPEG tiles of :mod:`spora_zarr.write.encoded`) and the read engines
(:mod:`spora_zarr.read.engines.shards`, ``direct``) share this module: the
format, and what recognises an array that uses it (:func:`sharding_of`).
"""

from __future__ import annotations

from typing import Any

import google_crc32c
import numpy as np

__all__ = ["MISSING", "index_at_end", "index_bytes", "index_problem", "little_endian", "sharding_of"]

MISSING = 2**64 - 1
"""Offset and size of an inner chunk that was never written."""


def index_bytes(entries: np.ndarray) -> bytes:
    """The index of a shard file: the ``(offset, size)`` pairs ``entries`` (``(chunks, 2)``, C order) and their crc32c."""
    table: bytes = np.ascontiguousarray(entries, dtype="<u8").tobytes()
    checksum: int = google_crc32c.value(table)
    return table + checksum.to_bytes(4, "little")


def index_at_end(sharding: object) -> bool:
    """Whether a sharding codec puts its index at the end of the file (an enum; a str from zarr 3.4)."""
    location = getattr(sharding, "index_location", None)
    return getattr(location, "value", location) == "end"


def little_endian(codec: object) -> bool:
    """Whether a ``bytes`` codec stores little-endian values (no ``endian``: single bytes)."""
    endian = getattr(codec, "endian", None)
    return endian is None or getattr(endian, "value", endian) == "little"


def sharding_of(metadata: Any) -> Any:
    """The ``ShardingCodec`` of a zarr v3 array (``ArrayV3Metadata``) sharded on a regular grid with a little-endian
    bytes + crc32c index (the pairs :func:`index_bytes` writes and the readers parse), its only codec; else ``None``."""
    from zarr.codecs import ShardingCodec
    from zarr.core.chunk_grids import RegularChunkGrid

    if metadata.zarr_format != 3 or not isinstance(metadata.chunk_grid, RegularChunkGrid):
        return None
    codecs = tuple(metadata.codecs)
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    return codecs[0] if index_problem(codecs[0]) is None else None


def index_problem(sharding: Any) -> str | None:
    """Why the readers cannot parse the shard index of ``sharding`` (a ``ShardingCodec``), or ``None`` when they can:
    little-endian bytes + crc32c, the pairs :func:`index_bytes` writes."""
    from zarr.codecs import BytesCodec, Crc32cCodec

    codecs = tuple(sharding.index_codecs)
    if len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and little_endian(codecs[0]) and isinstance(codecs[1], Crc32cCodec):
        return None
    return f"shard index codecs {codecs} are not little-endian bytes + crc32c"
