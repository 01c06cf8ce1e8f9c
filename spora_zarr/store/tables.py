"""The parquet tables of a store: read one, write one whole (staged: complete at its path or absent).

Tables keep their spora relative paths (``metadata/tissues.parquet``,
``<modality>/channels.parquet``, ``tiling/...``, ``.../standardization/...``).
Tile tables and statistics are written through :func:`write_table`; the
tables that ``add-image`` and ``stitch`` extend are staged with their image
(:func:`table_bytes`) and promoted with it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InvalidInputError, NotFoundError, StoreError, reason
from .guard import inside
from .layout import TISSUES_TABLE, channels_per_tissue_table_path, channels_table_path, validate_relative_path
from .location import Location, open_local_file
from .staging import STAGING_DIR, Staging

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

T = TypeVar("T")

__all__ = [
    "appended_rows",
    "channel_table_updates",
    "modality_panel",
    "read_table",
    "read_table_metadata",
    "rows_table",
    "table_bytes",
    "table_exists",
    "tissue_table_updates",
    "write_table",
]


def _check_path(location: Location, path: str) -> None:
    """Refuse a table path that leads out of the store (tables being staged live below ``.spora_tmp/``)."""
    validate_relative_path(path.removeprefix(f"{STAGING_DIR}/"), what="table path", source=str(location))


def table_exists(location: Location, path: str) -> bool:
    """Whether the store has a table at ``path`` (a path inside the store: :func:`validate_relative_path`)."""
    _check_path(location, path)
    return bool(location.fs().exists(location.fs_path(path)))


def read_table(location: Location, path: str) -> pa.Table:
    """The table at ``path``; ``NotFoundError`` if there is none, ``StoreError`` if it is not parquet."""
    return _read_parquet(location, path, lambda file: file.read())  # one file: no pyarrow.dataset (which imports pandas, 0.3 s)


def read_table_metadata(location: Location, path: str) -> pq.FileMetaData:
    """The footer of the table at ``path`` (rows, schema), its rows unread; errors as :func:`read_table`'s."""
    return _read_parquet(location, path, lambda file: file.metadata)


def _read_parquet(location: Location, path: str, read: Callable[[pq.ParquetFile], T]) -> T:
    """``read`` of the parquet file at ``path``, a regular file inside the store."""
    import pyarrow.parquet as pq

    if not table_exists(location, path):
        raise NotFoundError(f"{location}: no table {path}")
    if location.is_local:  # a regular file only: a FIFO would block the read, /dev/zero never end it
        real = os.path.realpath(location.fs_path(path))
        if not inside(real, os.path.realpath(location.root)):
            raise StoreError(f"{location.join(path)}: a symbolic link out of the store (to {real}); only tables inside the store are read")
        fd = open_local_file(location.fs_path(path))
        if fd is not None:
            os.close(fd)
    try:
        with location.fs().open(location.fs_path(path), "rb") as handle:
            return read(pq.ParquetFile(handle))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise StoreError(f"{location.join(path)}: unreadable parquet table ({reason(exc)})") from None


def table_record(location: Location, path: str, key: bytes) -> dict[str, Any]:
    """The JSON object a table's footer keeps under ``key`` (empty without one), its rows unread (:func:`footer_record`)."""
    return footer_record(read_table_metadata(location, path).metadata, key, location.join(path))


def footer_record(metadata: Mapping[bytes, bytes] | None, key: bytes, where: str) -> dict[str, Any]:
    """The JSON object a table's key-value ``metadata`` keeps under ``key`` (empty without one); ``StoreError``
    naming the table ``where`` when malformed."""
    if not metadata or key not in metadata:
        return {}
    try:
        record = json.loads(metadata[key])
    except ValueError as exc:
        raise StoreError(f"{where}: its {key.decode()} metadata is not JSON ({reason(exc)})") from None
    if not isinstance(record, dict):
        raise StoreError(f"{where}: its {key.decode()} metadata is not a JSON object")
    return record


def standardization_digests(record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{tissue: (image digest, mask digest)}`` of a ``stats.parquet``'s footer record (:data:`STANDARDIZATION_META_KEY`);
    empty where it names no resolution (a table written before the digests were recorded)."""
    digests = record.get("content_digests")
    if not isinstance(digests, dict) or not isinstance(record.get("resolution"), str):
        return {}
    return {str(t): (d[0], d[1]) for t, d in digests.items() if isinstance(d, list) and len(d) == 2}


def write_table(location: Location, path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` whole: readers see the old table or the new one, never a part."""
    _check_path(location, path)
    Staging(location).write_file(path, table_bytes(table))


def table_bytes(table: pa.Table) -> bytes:
    """``table`` as the bytes of a parquet file (to stage with a group, or to write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def modality_panel(location: Location, modality: str) -> list[str] | None:
    """The channel names of ``<modality>/channels.parquet`` in table order, or ``None`` without one."""
    rel = channels_table_path(modality)
    return [str(n) for n in read_table(location, rel).column("channel_name").to_pylist()] if table_exists(location, rel) else None


def tissue_table_updates(
    location: Location, path: str, modality: str, tissue_id: str, names: Sequence[str], *, multiplex: bool
) -> dict[str, Any]:
    """The tables to write (relative path -> new whole table) so the datasets find a tissue's new image.

    The tissue goes into ``metadata/tissues.parquet``; for a multiplex image
    (``multiplex``) its channels into ``<modality>/channels.parquet`` (new
    channels with ``qc_pass`` true and no UniProt id) and
    ``<modality>/channels_per_tissue.parquet``. Existing rows are kept.

    Checked before anything is written: a tissue already listed in
    ``channels_per_tissue.parquet`` with other channels is an error.
    """
    updates: dict[str, Any] = {}
    tissues = appended_rows(location, TISSUES_TABLE, "tissue_id", [{"tissue_id": tissue_id}])
    if tissues is not None:
        updates[TISSUES_TABLE] = tissues
    if multiplex:
        updates.update(channel_table_updates(location, modality, {tissue_id: names}, source=path))
    return updates


def channel_table_updates(
    location: Location, modality: str, names_by_tissue: Mapping[str, Sequence[str]], *, source: str | None = None
) -> dict[str, Any]:
    """The channel tables of ``modality`` with the tissues of ``names_by_tissue`` (tissue -> its channel names) added.

    ``<modality>/channels_per_tissue.parquet`` gets the rows of the tissues it does not list;
    ``<modality>/channels.parquet`` the channels it does not list (``qc_pass`` true, no UniProt id). Existing
    rows are kept; a table is made where there is none. A tissue already listed with other channels is an error
    (naming ``source``, the file being added, where there is one), raised before anything is written. The channel
    table comes first in the result, to be written first: a tissue's rows never name a channel it lacks.
    """
    updates: dict[str, Any] = {}
    panel = dict.fromkeys(n for names in names_by_tissue.values() for n in names)  # also a listed tissue's: a run cut short
    channels = appended_rows(
        location, channels_table_path(modality), "channel_name", [{"channel_name": n, "qc_pass": True, "uniprot_id": None} for n in panel]
    )
    if channels is not None:
        updates[channels_table_path(modality)] = channels
    per_tissue_rel = channels_per_tissue_table_path(modality)
    listed = listed_channels(location, modality)
    new: dict[str, Sequence[str]] = {}
    for tissue_id, names in names_by_tissue.items():
        stored = listed.get(tissue_id)
        if stored and stored != list(names):
            where = location.join(per_tissue_rel)
            file = source or location.join(modality)
            raise InvalidInputError(f"{file}: {where} lists channels {stored} for tissue {tissue_id!r}, the file {list(names)}")
        if not stored:
            new[tissue_id] = names
    rows = [{"tissue_id": tissue_id, "channel_name": n} for tissue_id, names in new.items() for n in names]
    per_tissue = appended_rows(location, per_tissue_rel, None, rows)
    if per_tissue is not None:
        updates[per_tissue_rel] = per_tissue
    return updates


def listed_channels(location: Location, modality: str) -> dict[str, list[str]]:
    """The channels ``<modality>/channels_per_tissue.parquet`` lists for each tissue (empty without the table)."""
    rel = channels_per_tissue_table_path(modality)
    listed: dict[str, list[str]] = {}
    if table_exists(location, rel):
        columns = read_table(location, rel).to_pydict()
        for tissue, channel in zip(columns.get("tissue_id", []), columns.get("channel_name", []), strict=True):
            listed.setdefault(tissue, []).append(channel)
    return listed


def appended_rows(location: Location, rel: str, key: str | None, rows: Sequence[Mapping[str, Any]]) -> Any:
    """The table at ``rel`` with ``rows`` appended (those whose ``key`` is new), or ``None`` when nothing is new.

    Existing rows and columns are kept as they are; new rows get nulls in the
    columns they do not name. A missing table is created from the rows.
    """
    import pyarrow as pa

    if not rows:
        return None
    if not table_exists(location, rel):
        return rows_table(rows)
    table = read_table(location, rel)
    if key is not None:
        if key not in table.column_names:
            raise InvalidInputError(f"{location.join(rel)}: no {key!r} column (columns: {', '.join(table.column_names)})")
        present = set(table.column(key).to_pylist())
        rows = [row for row in rows if row[key] not in present]
        if not rows:
            return None
    new = rows_table([{name: row.get(name) for name in table.column_names if name in row} for row in rows])
    where = location.join(rel)
    columns = []
    for field in table.schema:
        column = new.column(field.name) if field.name in new.column_names else None
        if column is None or column.null_count == len(column):  # no value given: nulls of the table's type
            if not field.nullable:
                raise InvalidInputError(f"{where}: column {field.name!r} may not be null, and the new rows give it no value")
            columns.append(pa.nulls(len(rows), field.type))
        elif column.type == field.type:  # a cast imports pyarrow.compute (0.15 s): only where the types differ
            columns.append(column)
        else:
            columns.append(_cast(column, field, where))
    return pa.concat_tables([table, pa.Table.from_arrays(columns, schema=table.schema)])


def _cast(column: pa.ChunkedArray, field: pa.Field, where: str) -> pa.ChunkedArray:
    """``column`` as the table's ``field`` holds it, where its values are of the field's kind (text, whole numbers,
    truth values; whole numbers into floats) and each fits exactly; otherwise a one-line ``InvalidInputError`` naming
    the table. Text is never parsed into another kind: the id ``"007"`` in a column of ``int64`` ids would be 7."""
    import pyarrow as pa

    target = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    kind = _kind(column.type)
    if kind is not None and (kind == _kind(target) or (kind == "integer" and pa.types.is_floating(target))):
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return column.cast(field.type)  # a safe cast: a value out of range or one a float would round is refused
    values = ", ".join(map(repr, column.to_pylist()[:3]))
    raise InvalidInputError(f"{where}: column {field.name!r} holds {field.type}, which cannot hold the new rows' {values}")


def _kind(type_: pa.DataType) -> str | None:
    """``"text"``, ``"integer"`` or ``"bool"``: what a column of pyarrow type ``type_`` holds, where it is one of those."""
    import pyarrow as pa

    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return "text"
    if pa.types.is_integer(type_):
        return "integer"
    return "bool" if pa.types.is_boolean(type_) else None


#: The pyarrow type of each Python type :func:`rows_table` takes.
_ROW_TYPES = {str: "string", bool: "bool_", int: "int64"}


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """``rows`` (values ``str``, ``bool``, ``int`` or ``None``) as a table, made without importing pandas.

    ``pa.Table.from_pylist`` and ``pa.array`` import pandas (0.3 s, a tenth of an ``add-image`` of a slide) to
    look for its types among the values; pyarrow's JSON reader does not. Each column's type is its values'
    (a column of ``None`` alone is a string column), never one the JSON reader would infer (a date-like string
    stays a string). Columns in the order the rows first name them.
    """
    import io
    import json

    import pyarrow as pa
    import pyarrow.json as pa_json

    names = list(dict.fromkeys(name for row in rows for name in row))
    fields = []
    for name in names:
        kinds = {type(row[name]) for row in rows if row.get(name) is not None}
        if len(kinds) > 1 or not kinds <= _ROW_TYPES.keys():
            raise TypeError(f"rows_table: column {name!r} has values of types {sorted(k.__name__ for k in kinds)}")
        fields.append(pa.field(name, getattr(pa, _ROW_TYPES[kinds.pop()])() if kinds else pa.string()))
    lines = "\n".join(json.dumps({name: row.get(name) for name in names}) for row in rows).encode()
    return pa_json.read_json(
        io.BytesIO(lines),
        read_options=pa_json.ReadOptions(use_threads=False),
        parse_options=pa_json.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="error"),
    )
