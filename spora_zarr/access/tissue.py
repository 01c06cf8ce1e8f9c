"""The tissue interface: what every feature reads tissues through (torch-free).

:class:`TissueSource` is the contract: the tissues of one modality of a cohort
at one resolution, their shapes, their channels by kind, windows of their
images and masks (``read``/``read_mask`` with a :class:`~spora_zarr.access.Window`),
and the preprocessing hook. :class:`TissueReader` implements it over a
:class:`~spora_zarr.read.cohort.Cohort`; the spora datasets
(:mod:`spora_zarr.datasets`) are thin torch wrappers over it (they subclass it
and override :meth:`TissueReader.preprocess` with their standardizer), and
TileDataset, the prediction source, patch specs and the batch standardizer use
only the names of :class:`TissueSource`.

Readers open lazily, one per (group, tissue), kept in a least-recently-used
cache (:class:`~spora_zarr.read.levels.ReaderCache`) of at most ``max_readers`` per process, and
at most :data:`~spora_zarr.read.levels.MAX_OPEN_READER_BYTES` of their memory: a forked child starts with an
empty cache, and a pickled reader carries only its constructor arguments.

Multiplex channel kinds (``docs/datasets.md``): ``complete`` is every channel
the tissue measured, in stored order; ``qc_filtered`` keeps those with
``qc_pass``; ``uniprot_filtered`` those that also have a ``uniprot_id``. RGB
modalities (``he``, ``ihc/ihc_<marker>``) have ``complete`` only.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ..errors import InvalidInputError, NotFoundError
from ..read.cohort import Cohort, open_cohort
from ..read.levels import LevelReader, ReaderCache, open_level
from ..store.layout import IHC_PREFIX, channels_per_tissue_table_path, channels_table_path
from ..store.location import Location
from .resolution import ResolutionLike, parse_resolution
from .window import Window

__all__ = ["CHANNEL_KINDS", "DEFAULT_MAX_READERS", "Preprocess", "TissueReader", "TissueSource", "channels_of_kind", "is_multiplex"]

CHANNEL_KINDS = ("complete", "qc_filtered", "uniprot_filtered")

#: Level readers a :class:`TissueReader` keeps open per process (least recently used out first): an image and two
#: masks of 10,922 tissues, so an epoch over a cohort of that size reopens none (about 5 kB a direct reader that has read).
DEFAULT_MAX_READERS = 32768

#: The preprocessing hook: ``(pixels, tissue_id, channel_names) -> pixels`` (a standardizer).
Preprocess = Callable[[Any, str, Sequence[str]], Any]


def is_multiplex(modality: str) -> bool:
    """Whether ``modality`` has a channel table (every modality but ``he`` and ``ihc/ihc_<marker>``, predictions too)."""
    return modality != "he" and not modality.startswith(f"ihc/{IHC_PREFIX}")


def channels_of_kind(channels: pd.DataFrame, kind: str) -> list[str]:
    """The names of a ``channels.parquet`` table that channel kind ``kind`` keeps, in table order."""
    if kind not in CHANNEL_KINDS:
        raise InvalidInputError(f"unknown channel kind {kind!r}; expected one of {', '.join(CHANNEL_KINDS)}")
    table = channels
    if kind in ("qc_filtered", "uniprot_filtered"):
        table = table[table.qc_pass.astype(bool)]
    if kind == "uniprot_filtered":
        table = table[table.uniprot_id.notna() & (table.uniprot_id.astype(str).str.len() > 0)]
    return [str(n) for n in table.channel_name]


@runtime_checkable
class TissueSource(Protocol):
    """The tissues of one modality at one resolution, read window by window.

    Attributes
    ----------
    name : str
        Shown in errors.
    resolution : str
        The level name every read is at (``"1_0mpp"``).
    engine : str or None
        The read engine asked for (``None``: the default).
    """

    name: str
    resolution: str
    engine: str | None

    @property
    def tissue_ids(self) -> list[str]:
        """Tissues with an image of this modality at this resolution."""
        ...

    @property
    def cohort(self) -> Cohort:
        """The store the tissues are read from."""
        ...

    def modality_dir(self) -> str:
        """The modality's directory in the store (``"imc"``, ``"he"``, ``"ihc/ihc_CD3"``)."""
        ...

    def check_tissue(self, tissue_id: str) -> None:
        """``NotFoundError`` naming the tissue (or listing its resolutions) unless it is one of :attr:`tissue_ids`."""
        ...

    def image_shape(self, tissue_id: str) -> tuple[int, ...]:
        """Stored shape ``(C, H, W)`` of the tissue's image (no pixels read)."""
        ...

    def level(self, tissue_id: str, group: str | None = None) -> LevelReader:
        """The reader of the tissue's image (``group`` None) or mask kind ``group`` at this resolution."""
        ...

    def channel_names(self, tissue_id: str, kind: str = "complete") -> list[str]:
        """Names of the channels a read of ``kind`` returns, in order."""
        ...

    def channel_indices(self, tissue_id: str, kind: str = "complete") -> list[int] | None:
        """Stored channel indices of ``kind`` (``None``: all, in stored order)."""
        ...

    def kind_channels(self, kind: str) -> list[str]:
        """The channel-table names ``kind`` keeps, in table order (multiplex modalities)."""
        ...

    def has_mask(self, tissue_id: str, kind: str) -> bool:
        """Whether the tissue has a mask of ``kind`` at this resolution."""
        ...

    def stored_dtype(self, tissue_id: str, group: str | None = None) -> np.dtype:
        """The stored dtype of the tissue's image (``group`` None) or mask kind ``group`` at this resolution (no reader opened)."""
        ...

    def read(
        self, tissue_id: str, window: Window, channels: Sequence[int] | None = None, *, pad: bool = False, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``(C, h, w)`` stored pixels of ``window``: the part inside the image, or (``pad``) all of it, zeros outside."""
        ...

    def read_mask(
        self, tissue_id: str, window: Window, kind: str = "tissue_masks", *, pad: bool = False, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``(h, w)`` stored ids of the mask ``kind`` in ``window``, aligned with :meth:`read`."""
        ...

    @property
    def preprocessor(self) -> Preprocess | None:
        """The preprocessing hook ``(pixels, tissue_id, channel_names) -> pixels`` (a standardizer), or ``None``."""
        ...

    def preprocess(self, data: Any, tissue_id: str, kind: str) -> Any:
        """The preprocessing hook applied to pixels read with the channels of ``kind``."""
        ...

    def forget_readers(self) -> None:
        """Drop the open readers of this process (they reopen on the next read)."""
        ...


class TissueReader:
    """:class:`TissueSource` over a cohort store: one modality at one resolution.

    Parameters
    ----------
    path : str, Location or Cohort
        The store (local path or fsspec URL), or an open cohort.
    modality : str
        The modality directory (``"imc"``, ``"he"``, ``"ihc/ihc_CD3"``, ``"predictions/<name>"``).
    resolution : float or str
        The level every read is at (``1.0`` or ``"1_0mpp"``).
    name : str, optional
        Shown in errors (default: the modality).
    engine : str, optional
        The read engine (:func:`~spora_zarr.read.levels.open_level`).
    storage_options : dict, optional
        fsspec options of a remote store.
    preprocess : callable, optional
        ``(pixels, tissue_id, channel_names) -> pixels``; default: unchanged.
    max_readers : int
        Level readers kept open per process (and no more than
        :data:`~spora_zarr.read.levels.MAX_OPEN_READER_BYTES` of their engines' memory).
    multiplex : bool, optional
        Whether the modality has channel tables (default: :func:`is_multiplex`).

    Raises
    ------
    NotFoundError
        No such modality, or no tissue of it at ``resolution``.
    """

    def __init__(
        self,
        path: str | Location | Cohort,
        modality: str,
        resolution: ResolutionLike,
        *,
        name: str | None = None,
        engine: str | None = None,
        storage_options: dict[str, Any] | None = None,
        preprocess: Preprocess | None = None,
        max_readers: int = DEFAULT_MAX_READERS,
        multiplex: bool | None = None,
    ) -> None:
        self.name = name or modality
        self.path: str | Location = path.location if isinstance(path, Cohort) else path
        self.resolution = parse_resolution(resolution).name
        self.engine = engine
        self.storage_options = storage_options
        self._hook = preprocess
        self.max_readers = max(1, int(max_readers))
        self.multiplex = is_multiplex(modality) if multiplex is None else multiplex
        self._modality = modality
        self.cohort: Cohort = path if isinstance(path, Cohort) else open_cohort(path, storage_options)
        self.cohort.check_modality(modality)
        self._require_tissues()

    def _require_tissues(self) -> None:
        """``NotFoundError`` when the modality has no image at this resolution."""
        if not self.tissue_ids:
            available = self.cohort.attributes.modalities.get(self.modality_dir(), ())
            raise NotFoundError(
                f"{self.cohort.location}: {self.modality_dir()} has no images at resolution {self.resolution}; "
                f"it has {', '.join(available) or 'none'}"
            )

    # -- pickling: constructor arguments only; readers reopen in each process ---------------
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}
        state.pop("cohort", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.cohort = open_cohort(self.path, self.storage_options)

    def modality_dir(self) -> str:
        return self._modality

    # -- tissues -----------------------------------------------------------------------------
    @functools.cached_property
    def tissue_ids(self) -> list[str]:
        """Tissues with an image of this modality at this resolution.

        From the levels each group's ``ome.multiscales`` lists (:meth:`Cohort.tissues_at`): the group's
        NGFF metadata is validated when the tissue is first read, not for every tissue here.
        """
        at = self.cohort.tissues_at(self.modality_dir(), self.resolution)
        return [t for t in self.cohort.tissues(self.modality_dir()) if t in at]

    @functools.cached_property
    def tissue_set(self) -> frozenset[str]:
        """:attr:`tissue_ids` as a set (membership tests)."""
        return frozenset(self.tissue_ids)

    def check_tissue(self, tissue_id: str) -> None:
        if tissue_id not in self.tissue_set:
            if tissue_id in self.cohort.tissues(self.modality_dir()):
                self.cohort.level_path(self.modality_dir(), tissue_id, self.resolution)  # raises listing resolutions
            raise NotFoundError(f"{self.name}: unknown tissue {tissue_id!r} in {self.modality_dir()} ({len(self.tissue_ids)} tissues)")

    def has_mask(self, tissue_id: str, kind: str) -> bool:
        return tissue_id in self.cohort.tissues_at(kind, self.resolution)

    def stored_dtype(self, tissue_id: str, group: str | None = None) -> np.dtype:
        """The stored dtype of the tissue's image (``group`` None) or mask kind ``group``, from the cohort's metadata index.

        The group's NGFF metadata is validated when the tissue is read, not here.
        """
        group = group or self.modality_dir()
        dtype = self.cohort.level_dtype(group, tissue_id, self.resolution)
        return dtype if dtype is not None else np.dtype(self.level(tissue_id, group).dtype)  # raises naming its resolutions

    def check_mask_kind(self, kind: str) -> None:
        """``InvalidInputError`` unless ``kind`` is a mask kind of the store."""
        if kind not in self.cohort.known_mask_kinds:
            raise InvalidInputError(f"unknown mask {kind!r}; expected one of {', '.join(self.cohort.known_mask_kinds)}")

    # -- readers: a bounded LRU per process ---------------------------------------------------
    def _readers(self) -> ReaderCache:
        """This process's readers (a forked child starts with none)."""
        if self.__dict__.get("_cache_readers_pid") != os.getpid():
            self.__dict__["_cache_readers"] = ReaderCache()
            self.__dict__["_cache_readers_pid"] = os.getpid()
        cache: ReaderCache = self.__dict__["_cache_readers"]
        return cache

    def level(self, tissue_id: str, group: str | None = None) -> LevelReader:
        group = group or self.modality_dir()
        cache = self._readers()
        key = (group, tissue_id)
        reader = cache.get(key)
        if reader is not None:
            return reader
        mask = self.cohort.is_mask_kind(group)
        level_path = self.cohort.mask_level_path if mask else self.cohort.level_path
        path = level_path(group, tissue_id, self.resolution)
        reader = open_level(self.cohort.location, path, engine=self.engine)
        if len(reader.shape) > (2 if mask else 3):
            where = self.cohort.location.join(path)
            raise InvalidInputError(f"{where}: tissue {tissue_id!r} is a z stack {reader.shape}; the datasets read 2-D tissues only")
        cache.add(key, reader, max_readers=self.max_readers)
        return reader

    def forget_readers(self) -> None:
        self.__dict__.pop("_cache_readers", None)
        self.__dict__.pop("_cache_readers_pid", None)

    def image_shape(self, tissue_id: str) -> tuple[int, ...]:
        self.check_tissue(tissue_id)
        return tuple(self.level(tissue_id).shape)

    # -- channels ------------------------------------------------------------------------------
    @functools.cached_property
    def channels(self) -> pd.DataFrame:
        """The modality's ``channels.parquet`` (multiplex modalities)."""
        return self.cohort.read_table(channels_table_path(self.modality_dir())).to_pandas()

    @functools.cached_property
    def channels_per_tissue(self) -> pd.DataFrame:
        """The modality's ``channels_per_tissue.parquet`` (multiplex modalities)."""
        return self.cohort.read_table(channels_per_tissue_table_path(self.modality_dir())).to_pandas()

    def check_kind(self, kind: str) -> None:
        """``InvalidInputError`` unless ``kind`` is a channel kind of this modality."""
        if not self.multiplex:
            if kind != "complete":
                raise InvalidInputError(f"{self.name}: channel kind {kind!r} applies to multiplex datasets only; use 'complete'")
        elif kind not in CHANNEL_KINDS:
            raise InvalidInputError(f"unknown channel kind {kind!r}; expected one of {', '.join(CHANNEL_KINDS)}")

    def kind_channels(self, kind: str) -> list[str]:
        self.check_kind(kind)
        if not self.multiplex:
            raise InvalidInputError(f"{self.name}: {self.modality_dir()} has no channel table; only multiplex modalities have a panel")
        return channels_of_kind(self.channels, kind)

    def channel_indices(self, tissue_id: str, kind: str = "complete") -> list[int] | None:
        cache = self.__dict__.setdefault("_cache_channels", {})
        if (tissue_id, kind) not in cache:
            self.check_kind(kind)
            if kind == "complete":
                cache[(tissue_id, kind)] = None
            else:
                keep = set(self.kind_channels(kind))
                stored = self.cohort.channel_names(self.modality_dir(), tissue_id)
                cache[(tissue_id, kind)] = [i for i, n in enumerate(stored) if n in keep]
        indices: list[int] | None = cache[(tissue_id, kind)]
        return indices

    def channel_names(self, tissue_id: str, kind: str = "complete") -> list[str]:
        cache = self.__dict__.setdefault("_cache_names", {})  # looked up on every standardized read
        if (tissue_id, kind) not in cache:
            stored = self.cohort.channel_names(self.modality_dir(), tissue_id)
            indices = self.channel_indices(tissue_id, kind)
            cache[(tissue_id, kind)] = stored if indices is None else [stored[i] for i in indices]
        return list(cache[(tissue_id, kind)])

    # -- windows -------------------------------------------------------------------------------
    def read(
        self, tissue_id: str, window: Window, channels: Sequence[int] | None = None, *, pad: bool = False, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``(C, h, w)`` stored pixels of ``window``: the part inside the image, or (``pad``) all of it, zeros outside.

        ``out`` (the result's shape and the stored dtype) receives the pixels
        without a copy where the engine decodes into it. A window wholly outside
        the image is an ``InvalidInputError`` naming it.
        """
        return self.read_group(self.modality_dir(), tissue_id, window, channels, pad=pad, out=out)

    def read_mask(
        self, tissue_id: str, window: Window, kind: str = "tissue_masks", *, pad: bool = False, out: np.ndarray | None = None
    ) -> np.ndarray:
        """``(h, w)`` stored ids of the mask ``kind`` in ``window``, aligned with :meth:`read`."""
        self.check_mask_kind(kind)
        return self.read_group(kind, tissue_id, window, None, pad=pad, out=out)

    def inside(self, group: str, tissue_id: str, window: Window) -> Window:
        """The part of ``window`` inside the tissue's ``group`` image; ``InvalidInputError`` naming it when there is none."""
        shape = self.level(tissue_id, group).shape
        inner = window.clip(shape[-2:])
        if inner is None:
            height, width = shape[-2:]
            raise InvalidInputError(
                f"{self.name}: window row={window.start[0]} col={window.start[1]} size={window.shape[0]} lies outside "
                f"{group} tissue {tissue_id!r} of shape {height}x{width}"
            )
        return inner

    def read_group(
        self, group: str, tissue_id: str, window: Window, channels: Sequence[int] | None, *, pad: bool, out: np.ndarray | None = None
    ) -> np.ndarray:
        """A window of the tissue's image or mask ``group`` (:meth:`read` and :meth:`read_mask`)."""
        reader = self.level(tissue_id, group)
        inner = self.inside(group, tissue_id, window)
        if out is None:
            data = _read(reader, inner, channels)
            if not pad or inner == window:
                return data
            out = np.zeros((*data.shape[:-2], *window.shape), dtype=data.dtype)
            out[inner.relative_to(window).index] = data
            return out
        target = out
        if pad and inner != window:
            out[...] = 0
            target = out[inner.relative_to(window).index]
        _read(reader, inner, channels, out=target)
        return out

    @property
    def preprocessor(self) -> Preprocess | None:
        """The hook :meth:`preprocess` applies (``None``: none)."""
        return self._hook

    def preprocess(self, data: Any, tissue_id: str, kind: str) -> Any:
        hook = self.preprocessor
        return data if hook is None else hook(data, tissue_id, self.channel_names(tissue_id, kind))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}: {len(self.tissue_ids)} tissues of {self.modality_dir()} at {self.resolution})"


def _read(reader: LevelReader, window: Window, channels: Sequence[int] | None, out: np.ndarray | None = None) -> np.ndarray:
    """A window (inside the image) of ``channels`` (``None``: all), into ``out`` if given; no channels is ``(0, h, w)``."""
    if channels is not None and len(channels) == 0:
        return out if out is not None else np.zeros((0, *window.shape), reader.dtype)
    return reader.read(*window.corner, channels, out=out)
