"""The one interface of a read engine, and how engines report damaged data."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ...errors import StoreError

if TYPE_CHECKING:
    import zarr

    from ...store.location import Location

try:
    from zarr.core.chunk_grids import RegularChunkGrid  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # later zarr 3 releases: the metadata holds the regular grid as RegularChunkGridMetadata
    from zarr.core.metadata.v3 import RegularChunkGridMetadata as RegularChunkGrid  # type: ignore[attr-defined,no-redef,unused-ignore]

__all__ = ["DATA_ERRORS", "Engine", "Opener", "RegularChunkGrid", "UnsupportedLayout", "damaged"]

# What tensorstore (ValueError), zarrs (RuntimeError) and zarr-python (ValueError, RuntimeError and
# whatever numcodecs raises) raise on bytes they cannot read or decode; OSError for the file system.
# zarr-python 3.4 raises them inside the ExceptionGroup of its task group.
DATA_ERRORS: tuple[type[Exception], ...] = (ValueError, RuntimeError, OSError, LookupError, ExceptionGroup)


class UnsupportedLayout(Exception):
    """An engine does not read this array (its layout, or the engine is not built here); the message says why."""


@runtime_checkable
class Engine(Protocol):
    """Reads windows of one array for :mod:`spora_zarr.read.levels`.

    An engine may also offer ``read_into(index, out)``, decoding into a given
    array (the direct engine does); :meth:`LevelReader.read` with ``out=``
    uses it where present and copies a :meth:`read` otherwise.

    Attributes
    ----------
    engine : str
        The name of the engine that reads (one of ``spora_zarr.read.ENGINES``).
    resident_bytes : int
        About the memory one engine object holds once it has read (measured; what the reader caches count).
    """

    engine: str
    resident_bytes: int

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The window ``index`` as a new array in the stored dtype.

        Parameters
        ----------
        index : tuple of slice
            One slice per axis, integer bounds inside the array, ``start < stop``, step 1.

        Raises
        ------
        StoreError
            The stored bytes are damaged or cannot be read; the message names the array.
        """
        ...


Opener = Callable[["Location", str, "zarr.Array[Any]"], Engine]
"""Makes an engine for ``(location, path, metadata handle)``; raises ``UnsupportedLayout`` for an array it does not read."""


def damaged(where: str, engine: str, exc: BaseException) -> StoreError:
    """The StoreError for a read of array ``where`` that ``engine`` failed with ``exc`` (the first error of a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return StoreError(f"array {where}: {engine} cannot read it (damaged or unreadable chunk data): {type(exc).__name__}: {exc}")
