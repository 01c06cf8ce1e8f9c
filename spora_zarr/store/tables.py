"""The parquet tables of a store: read one, write one whole (staged: complete at its path or absent).

Tables keep their spora relative paths (``metadata/tissues.parquet``,
``<modality>/channels.parquet``, ``tiling/...``, ``.../standardization/...``).
Tile tables, statistics and the channel tables that ``add-image`` extends are
all written through :func:`write_table`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NotFoundError, StoreError
from .location import Location
from .staging import Staging

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["read_table", "table_exists", "write_table"]


def table_exists(location: Location, path: str) -> bool:
    """Whether the store has a table at ``path``."""
    return bool(location.fs().exists(location.fs_path(path)))


def read_table(location: Location, path: str) -> pa.Table:
    """The table at ``path``; ``NotFoundError`` if there is none, ``StoreError`` if it is not parquet."""
    import pyarrow.parquet as pq

    if not table_exists(location, path):
        raise NotFoundError(f"{location}: no table {path}")
    try:
        with location.fs().open(location.fs_path(path), "rb") as handle:
            return pq.read_table(handle)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise StoreError(f"{location.join(path)}: unreadable parquet table ({str(exc).splitlines()[0][:200]})") from None


def write_table(location: Location, path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` whole: readers see the old table or the new one, never a part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    Staging(location).write_file(path, sink.getvalue().to_pybytes())
