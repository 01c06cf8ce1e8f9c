"""The level arrays' ``zarr.json`` documents: one bounded reader, its limits, and what a document declares.

- :func:`read_array_metadata` is the one reader of an array's ``zarr.json``:
  bounded in bytes, checked against limits before zarr parses it (shape, chunk
  and shard sizes; :data:`MAX_AXIS_LENGTH` and the others), so a hostile
  document is a ``StoreError`` naming the array, never a huge allocation.
- :func:`array_layout` reads the same document without zarr's parser, with the
  same limits: the :class:`ArrayLayout` (shape, dtype, chunks, shards) the
  metadata index and the directory summaries hand out.
- :func:`max_file_bytes` bounds what one chunk or shard file of a checked array may hold.
- :func:`new_array` is the one maker of a level array being written: its document and nothing else.
"""

from __future__ import annotations

import copy
import math
import operator
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidInputError, NotFoundError, SporaZarrError, StoreError
from .location import Location
from .metadata import _mapping, _short
from .staging import ZARR_JSON, Staging

if TYPE_CHECKING:
    import zarr
    from zarr.core.metadata.v3 import ArrayV3Metadata

__all__ = [
    "CORE_DTYPES",
    "MAX_ARRAY_ELEMENTS",
    "MAX_AXIS_LENGTH",
    "MAX_CHUNKS_PER_SHARD",
    "MAX_CHUNK_BYTES",
    "ArrayLayout",
    "array_layout",
    "array_metadata_from",
    "max_file_bytes",
    "new_array",
    "parse_array_metadata",
    "read_array_metadata",
]


MAX_AXIS_LENGTH = 2**24
"""The longest axis an array may declare (16.7 M: 4 m of tissue at 0.25 mpp)."""
MAX_ARRAY_ELEMENTS = 2**44
"""The most elements an array may declare."""
MAX_CHUNK_BYTES = 2**29
"""The most bytes one (inner) chunk may decode to."""
MAX_CHUNKS_PER_SHARD = 2**20
"""The most inner chunks one shard may hold (its index is 16 bytes per chunk)."""
_MAX_AXES = 32


def read_array_metadata(location: Location, path: str) -> ArrayV3Metadata:
    """The parsed ``zarr.json`` of the zarr v3 array at ``<location>/<path>``, checked against the limits above.

    Raises
    ------
    NotFoundError
        There is no ``zarr.json`` there.
    InvalidInputError
        It describes a group.
    StoreError
        It is not a regular file, too long, not JSON, not zarr v3 array
        metadata, or declares a shape, chunk or shard beyond the limits.
    """
    try:
        document: dict[str, Any] | SporaZarrError = location.read_document(path, ZARR_JSON)
    except SporaZarrError as exc:
        document = exc
    return array_metadata_from(location, path, document)


def array_metadata_from(location: Location, path: str, document: dict[str, Any] | SporaZarrError) -> ArrayV3Metadata:
    """The metadata of the array at ``path`` from its ``zarr.json`` ``document`` (or the error reading it).

    Raises what :func:`read_array_metadata` raises.
    """
    if isinstance(document, NotFoundError):
        raise NotFoundError(f"no array at {location.join(path)} (no {ZARR_JSON})") from None
    if isinstance(document, SporaZarrError):
        raise document
    if document.get("node_type") == "group":
        raise InvalidInputError(f"{location.join(path)} is a group, not an array")
    return parse_array_metadata(document, where=f"array {location.join(path)}")


@dataclass(frozen=True)
class ArrayLayout:
    """What a level array's ``zarr.json`` declares of its pixels, read from the JSON without zarr (tens of microseconds).

    ``chunks`` is the (inner) chunk shape, ``shards`` the shard shape (``None`` unsharded): zarr's
    ``Array.chunks`` and ``Array.shards``. Made by :func:`array_layout`, which checks the limits.
    """

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None

    def to_json(self) -> dict[str, Any]:
        """The layout as JSON (a core data type's name for the dtype): what :meth:`from_json` reads back."""
        shards = list(self.shards) if self.shards is not None else None
        return {"shape": list(self.shape), "dtype": self.dtype.name, "chunks": list(self.chunks), "shards": shards}

    @classmethod
    def from_json(cls, value: object, *, where: str) -> ArrayLayout:
        """The layout of :meth:`to_json`'s ``value``, checked against the limits of :func:`array_layout`; else ``StoreError``."""
        document = _mapping(value, where, "an array layout")
        shape = _integers(document.get("shape"), where, "shape", low=0, high=MAX_AXIS_LENGTH)
        chunks = _integers(document.get("chunks"), where, "chunks", low=1, high=MAX_AXIS_LENGTH)
        shards = document.get("shards")
        shards = None if shards is None else _integers(shards, where, "shards", low=1, high=MAX_AXIS_LENGTH)
        name = document.get("dtype")
        if not isinstance(name, str) or name not in CORE_DTYPES:
            raise StoreError(f"{where}: dtype must name a zarr v3 core data type, got {_short(name)}")
        dtype = CORE_DTYPES[name]
        if len(chunks) != len(shape) or (shards is not None and len(shards) != len(shape)):
            raise StoreError(f"{where}: shape {shape}, chunks {chunks} and shards {shards} differ in length")
        if math.prod(shape) > MAX_ARRAY_ELEMENTS or math.prod(chunks) * dtype.itemsize > MAX_CHUNK_BYTES:
            raise StoreError(f"{where}: shape {shape} or chunks {chunks} beyond the limits an array may declare")
        return cls(shape, dtype, chunks, shards)


#: ``data_type`` names whose NumPy dtype is the name (zarr v3 core types), with that dtype; others are resolved by zarr.
CORE_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name)
    for name in ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]
    + ["complex64", "complex128"]
}


def array_layout(document: Mapping[str, Any], *, where: str) -> ArrayLayout:
    """The :class:`ArrayLayout` of an array ``document`` (a ``zarr.json``), checked against the limits above.

    Raises ``StoreError`` naming ``where`` as :func:`read_array_metadata` does: the same limits, and
    every codec named one zarr knows; the configuration of a codec other than sharding is left to
    zarr's parser (:func:`parse_array_metadata`, on every read of the array).
    """
    if document.get("zarr_format") != 3 or document.get("node_type") != "array":
        raise StoreError(f"{where}: not zarr v3 array metadata (zarr_format 3, node_type array)")
    shape = _integers(document.get("shape"), where, "shape", low=0, high=MAX_AXIS_LENGTH)
    grid = document.get("chunk_grid")
    configuration = grid.get("configuration") if isinstance(grid, Mapping) else None
    if not isinstance(grid, Mapping) or grid.get("name") != "regular" or not isinstance(configuration, Mapping):
        raise StoreError(f"{where}: chunk_grid must be a regular grid, got {_short(grid)}")
    outer = _integers(configuration.get("chunk_shape"), where, "chunk_shape", low=1, high=MAX_AXIS_LENGTH)
    if len(outer) != len(shape):
        raise StoreError(f"{where}: chunk_shape {outer} and shape {shape} differ in length")
    if math.prod(shape) > MAX_ARRAY_ELEMENTS:
        raise StoreError(f"{where}: shape {shape} has more than the {MAX_ARRAY_ELEMENTS} elements an array may hold")
    data_type = document.get("data_type")
    if isinstance(data_type, str) and data_type in CORE_DTYPES:
        dtype = CORE_DTYPES[data_type]
    else:
        dtype = np.dtype(_zarr_metadata(document, where).dtype.to_native_dtype())
    inner, shards = outer, None
    codecs: Any = document.get("codecs")
    while _codec_names(codecs, where) == ["sharding_indexed"]:
        sharding = _mapping(codecs[0].get("configuration"), where, "sharding_indexed configuration")
        shard = inner
        inner = _integers(sharding.get("chunk_shape"), where, "sharding chunk_shape", low=1, high=MAX_AXIS_LENGTH)
        if len(inner) != len(shard) or any(s % n for s, n in zip(shard, inner, strict=False)):
            raise StoreError(f"{where}: inner chunk shape {inner} does not divide the shard shape {shard}")
        if math.prod(s // n for s, n in zip(shard, inner, strict=True)) > MAX_CHUNKS_PER_SHARD:
            raise StoreError(f"{where}: shards {shard} of chunks {inner} hold more than {MAX_CHUNKS_PER_SHARD} chunks each")
        shards = outer if shards is None else shards
        codecs = sharding.get("codecs")
    nbytes = math.prod(inner) * dtype.itemsize
    if nbytes > MAX_CHUNK_BYTES:
        raise StoreError(f"{where}: chunks {inner} of {nbytes} bytes are more than the {MAX_CHUNK_BYTES} bytes read at once")
    return ArrayLayout(shape, dtype, inner, shards)


def _codec_names(codecs: object, where: str) -> list[str]:
    """The names of a ``codecs`` list: a non-empty list of objects naming codecs zarr knows, else a ``StoreError``."""
    from zarr.registry import get_codec_class

    if not isinstance(codecs, list) or not codecs or not all(isinstance(c, Mapping) for c in codecs):
        raise StoreError(f"{where}: codecs must be a list of codec objects, got {_short(codecs)}")
    names = [c.get("name") for c in codecs]
    for name in names:
        try:
            get_codec_class(str(name))
        except KeyError:
            raise StoreError(f"{where}: unknown codec {_short(name)}") from None
    return [str(n) for n in names]


def parse_array_metadata(document: Mapping[str, Any], *, where: str) -> ArrayV3Metadata:
    """zarr's ``ArrayV3Metadata`` of ``document`` (a ``zarr.json``), after the checks of :func:`array_layout`."""
    array_layout(document, where=where)
    return _zarr_metadata(document, where)


_MAX_PARSED = 1024
_PARSED: dict[bytes, ArrayV3Metadata] = {}  # a checked document without its shape, pickled -> zarr's metadata of it


def _zarr_metadata(document: Mapping[str, Any], where: str) -> ArrayV3Metadata:
    """zarr's ``ArrayV3Metadata`` of ``document``; ``StoreError`` naming ``where`` when zarr refuses it.

    zarr's parser takes about 0.2 ms a document, half of a reader's open. The level arrays of a cohort
    share a few documents that differ only in ``shape``, so each is parsed once for a shape of its
    length and copied with the document's own shape: zarr's checks of a shape are that its entries are
    non-negative integers, one per axis of the chunk grid, which :func:`array_layout` checks first
    (with the limits). The parts are immutable but for ``attributes``, which each copy gets anew.
    """
    from zarr.core.metadata.v3 import ArrayV3Metadata

    shape = tuple(document.get("shape") or ())
    unshaped = {k: v for k, v in document.items() if k != "shape"}
    key = pickle.dumps((len(shape), unshaped), protocol=pickle.HIGHEST_PROTOCOL)
    parsed = _PARSED.get(key)
    if parsed is None:
        try:
            parsed = ArrayV3Metadata.from_dict(dict(document))
        except Exception as exc:  # noqa: BLE001 - zarr raises many kinds on a hostile document
            raise StoreError(f"{where}: invalid zarr v3 array metadata: {type(exc).__name__}: {_short(exc)}") from None
        if len(_PARSED) >= _MAX_PARSED:
            _PARSED.clear()
        _PARSED[key] = parsed
    metadata = copy.copy(parsed)
    object.__setattr__(metadata, "shape", shape)  # a frozen dataclass: zarr's own __init__ sets its fields so
    object.__setattr__(metadata, "attributes", dict(parsed.attributes))
    return metadata


def max_file_bytes(metadata: ArrayV3Metadata) -> int:
    """The most bytes one chunk or shard file of an array checked by :func:`parse_array_metadata` may hold.

    Twice the decoded size of its chunks plus 64 KiB each (more than any codec
    stores), and the shard index.
    """
    from zarr.codecs import ShardingCodec

    inner = tuple(int(n) for n in metadata.chunk_grid.chunk_shape)  # type: ignore[attr-defined,union-attr,unused-ignore]
    per_file, codecs = 1, tuple(metadata.codecs)
    while len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        shard, inner = inner, tuple(int(n) for n in codecs[0].chunk_shape)
        per_file *= math.prod(s // n for s, n in zip(shard, inner, strict=True))
        codecs = tuple(codecs[0].codecs)
    chunk = math.prod(inner) * metadata.dtype.to_native_dtype().itemsize
    return per_file * (2 * chunk + 2**16 + 16) + 2**16


def _integers(value: object, where: str, name: str, *, low: int, high: int) -> tuple[int, ...]:
    """``value`` as a tuple of integers in ``[low, high]``, one to 32 of them; else a ``StoreError``."""
    if isinstance(value, list) and 1 <= len(value) <= _MAX_AXES and all(type(v) is int for v in value):
        numbers = tuple(operator.index(v) for v in value)
        if all(low <= v <= high for v in numbers):
            return numbers
    raise StoreError(f"{where}: {name} must be a list of 1 to {_MAX_AXES} integers from {low} to {high}, got {_short(value)}")


def new_array(location: Location, store: Any, name: str, **settings: Any) -> zarr.Array[Any]:
    """A new array at ``name`` (in a staging area of ``location``), made as ``zarr.create_array(store, name=name,
    **settings)`` would make it, bound to ``store``: its ``zarr.json`` is the one thing written.

    ``zarr.create_array`` on the store itself first deletes whatever is at ``name`` and writes a group document
    into every folder above it: about 30 requests a group on an object store (a listing, and a HEAD and a
    listing for each folder), up to six small files a group on a disk, none of which the staging area needs
    (the group's own document is written at the end of its write). Here zarr makes the metadata in memory, with
    the codec pipeline of the ``zarr.config`` in force, as it would on ``store``.
    """
    import zarr
    from zarr.core.buffer import default_buffer_prototype

    made = zarr.create_array(zarr.storage.MemoryStore(), name=name, **settings)
    document = made.metadata.to_buffer_dict(default_buffer_prototype())[ZARR_JSON].to_bytes()
    Staging(location).stage_file(name, ZARR_JSON, document)
    bound = zarr.AsyncArray(metadata=made.metadata, store_path=zarr.storage.StorePath(store, name), config=made.async_array.config)
    return zarr.Array(bound)
