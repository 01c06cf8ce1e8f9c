"""A source's JPEG tiles kept as the chunks of a level: no decode, no re-encode (slides added at their own size)."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ..sources import EncodedTiles, ImageSource
from ..store.arrays import new_array
from ..store.codecs import jpeg_chunk_codecs
from ..store.location import Location
from ..store.shards import MISSING, index_bytes
from .digest import ContentDigest
from .lanes import in_lanes
from .pyramid import Level
from .shards import write_shard_file

if TYPE_CHECKING:
    from .options import WriteOptions

__all__ = ["encoded_levels", "write_encoded"]


def encoded_levels(sources: list[ImageSource], dtype: np.dtype) -> dict[int, EncodedTiles]:
    """The source levels (by index) whose JPEG tiles are kept as chunks: uint8 sources that offer them."""
    if dtype != np.uint8:
        return {}
    found = {}
    for index, source in enumerate(sources):
        tiles = source.encoded_tiles() if hasattr(source, "encoded_tiles") else None
        if tiles is not None:
            found[index] = tiles
    return found


def write_encoded(
    location: Location,
    name: str,
    level: Level,
    tiles: EncodedTiles,
    options: WriteOptions,
    lanes: int = 1,
    digest: ContentDigest | None = None,
) -> zarr.Array[Any]:
    """The level array at ``name`` with the source's JPEG tiles as its ``(C, tile_h, tile_w)`` chunks, shard by shard.

    Shards hold about ``options.shard`` px of tiles a side; each is written whole
    (chunk bytes, then the index of ``(offset, size)`` pairs and its crc32c, as
    zarr's sharding codec lays it out), a row of shards per lane at once (each
    row is a folder: the lanes do not create files in one folder, whose lock
    they would wait on): by this module into the file on a local store
    (:func:`.shards.write_shard_file`), through zarr's store elsewhere. A tile
    the source lacks is left out of its shard's index (read back as the fill
    value 0, as tifffile reads it). Each shard's bytes go into ``digest`` (:mod:`.digest`).
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    (tile_h, tile_w), (channels, height, width) = tiles.tile, level.shape
    per_shard = max(1, round((options.shard or max(tile_h, tile_w)) / max(tile_h, tile_w)))
    filters, serializer = jpeg_chunk_codecs(tiles.codec)
    with zarr.config.set({"codec_pipeline.path": "zarr.core.codec_pipeline.BatchedCodecPipeline"}):  # zarrs lacks this codec
        array = new_array(
            location,
            location.zarr_store(),
            name,
            shape=level.shape,
            dtype=np.uint8,
            fill_value=0,
            chunks=(channels, tile_h, tile_w),
            shards=(channels, tile_h * per_shard, tile_w * per_shard),
            filters=[filters],
            serializer=serializer,
            compressors=None,
            dimension_names=("c", "y", "x"),
        )
    rows, cols = -(-height // tile_h), -(-width // tile_w)
    prototype = default_buffer_prototype()
    directory = location.fs_path(array.path) if location.is_local else None

    def write_shard(sy: int, sx: int) -> None:
        index = np.full((per_shard, per_shard, 2), MISSING, dtype="<u8")
        parts, offset = [], 0
        for i in range(per_shard):
            for j in range(per_shard):
                row, col = sy * per_shard + i, sx * per_shard + j
                data = tiles.read(row, col) if row < rows and col < cols else b""
                if data:
                    index[i, j] = (offset, len(data))
                    parts.append(data)
                    offset += len(data)
        if not parts:
            return
        parts.append(index_bytes(index.reshape(-1, 2)))
        if digest is not None:
            digest.add(level.name, (0, sy * per_shard * tile_h, sx * per_shard * tile_w), *parts)
        key = array.metadata.encode_chunk_key((0, sy, sx))
        if directory is not None:
            write_shard_file(os.path.join(directory, *key.split("/")), parts)
        else:
            sync((array.store_path / key).set(prototype.buffer.from_bytes(b"".join(parts))))

    def write_row(sy: int) -> None:
        for sx in range(-(-cols // per_shard)):
            write_shard(sy, sx)

    in_lanes([functools.partial(write_row, sy) for sy in range(-(-rows // per_shard))], lanes)
    return array
