"""The spora dataset API over a cohort store (the names and signatures spora_io users know).

``path`` is the store (local path or fsspec URL) and ``resolution`` a float or a
level name. The datasets are thin torch wrappers over the access layer: each is a
:class:`~spora_zarr.access.TissueReader` (tissues, shapes, channels by kind,
window reads through :mod:`spora_zarr.read.levels`, no dask graph per window)
whose preprocessing hook is its standardizer, and adds the spora_io names that
return tensors: :meth:`BaseImagingDataset.read_tile`, :meth:`get_crop`,
:meth:`get_tissue`. Datasets pickle to their constructor arguments, so each
DataLoader worker opens its own readers.

Multiplex channel kinds (``docs/datasets.md``): ``complete`` is every channel
the tissue measured, in stored order; ``qc_filtered`` keeps those with
``qc_pass``; ``uniprot_filtered`` those that also have a ``uniprot_id``. A panel
channel the tissue did not measure is absent from its image: ``measured_mask``
(over the panel, ``channels.parquet`` order) says which are missing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from .. import process
from ..access.resolution import ResolutionLike
from ..access.tissue import CHANNEL_KINDS as CHANNEL_KINDS  # re-exported by spora_zarr.datasets
from ..access.tissue import TissueReader
from ..access.window import Window, as_int
from ..errors import InvalidInputError, NotFoundError
from ..standardize.filters import ChannelFilters, FilterFactory
from ..standardize.standardizers import MEAN_STD as MEAN_STD  # re-exported by spora_zarr.datasets
from ..standardize.standardizers import (
    BaseStandardizer,
    IdentityStandardizer,
    MeanStdStandardizer,
    apply_standardizer,
    build_standardizer,
)
from ..store.layout import CELLS_TABLE, TISSUES_TABLE, tile_table_path
from ..store.location import Location
from .modalities import HEModality, IHCModality, MultiplexModality, as_multiplex_modality
from .tissues import CellMask, HETissue, IHCTissue, MultiplexTissue, TissueMask

log = logging.getLogger("spora_zarr")

IMAGE_MODES = ("CHW", "HWC")

Standardizer = Callable[[torch.Tensor, str, Sequence[str]], torch.Tensor]


def identity_standardizer(image: torch.Tensor, tissue_id: str, channel_names: Sequence[str]) -> torch.Tensor:
    """The ``identity`` spec: values unchanged, as float32."""
    return image.to(torch.float32)


def resolve_standardizer(standardization: str | Standardizer, dataset: Any = None) -> Standardizer:
    """A standardizer from a spec (:func:`~spora_zarr.standardize.build_standardizer`, statistics of ``dataset``) or a callable.

    A callable ``(image, tissue_id, channel_names) -> image`` is used as is.
    """
    if callable(standardization) and not isinstance(standardization, BaseStandardizer):
        return standardization
    if standardization == "identity":
        return IdentityStandardizer()
    return build_standardizer(standardization, dataset)


def whole_number(value: Any, what: str, where: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int`` if it is a whole number (``int``, a numpy or torch integer), else an ``InvalidInputError``.

    Floats (NaN included), bools and strings are refused rather than coerced:
    ``row=10.7`` is a caller's bug, not pixel 10.
    """
    try:
        if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
            raise InvalidInputError("a bool tensor")
        number = as_int(value, what)
    except InvalidInputError:
        raise InvalidInputError(f"{where}: {what} must be a whole number, got {value!r} ({type(value).__name__})") from None
    if minimum is None or number >= minimum:
        return number
    raise InvalidInputError(f"{where}: {what} must be >= {minimum}, got {number}")


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def label_dtype(stored: np.dtype | type) -> np.dtype:
    """The dtype masks are returned in: int32 when every id ``stored`` can hold fits, else int64.

    torch and MONAI operate on these (``flip``, ``rot90``, ``one_hot``,
    ``interpolate``); torch's uint16/uint32/uint64 support few operations.
    uint64 gives int64: the readers refuse a mask holding an id of 2**63 or
    more (an :class:`~spora_zarr.errors.InvalidInputError`) instead of wrapping it.
    """
    stored = np.dtype(stored)
    return np.dtype(np.int32) if np.can_cast(stored, np.int32) else np.dtype(np.int64)


def _as_labels(data: np.ndarray, where: str) -> np.ndarray:
    """Mask ids in :func:`label_dtype`; uint64 ids of 2**63 and more, which int64 would wrap, are refused."""
    if data.dtype == np.uint64 and data.size and int(data.max()) > np.iinfo(np.int64).max:
        raise InvalidInputError(
            f"{where} holds label id {int(data.max())}: masks are returned as int64 ids, which end at 2**63 - 1; "
            "store the mask with smaller ids"
        )
    return data.astype(label_dtype(data.dtype), copy=False)


def _array_of(out: torch.Tensor | np.ndarray | None) -> np.ndarray | None:
    """The numpy view of a caller's ``out=`` (a CPU tensor or an array)."""
    return out.numpy() if isinstance(out, torch.Tensor) else out


def _tensor_of(data: np.ndarray, out: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    """A read window as a tensor: the caller's ``out`` itself when it was a tensor, else a tensor sharing ``data``."""
    if isinstance(out, torch.Tensor):
        return out
    return _to_tensor(data) if out is None else torch.from_numpy(data)


# -- datasets --------------------------------------------------------------------
class BaseImagingDataset(TissueReader):
    """Metadata, shared masks and tile tables of one cohort store at one resolution, read as tensors.

    A :class:`~spora_zarr.access.TissueReader` (the access layer's tissue
    interface) of the modality :meth:`modality_dir`; subclasses turn stored
    pixels into model input by overriding :meth:`preprocess`.
    """

    image_modality: ClassVar[str] = ""
    standardizer: Standardizer | None = None

    def __init__(
        self,
        name: str,
        path: str | Location,
        resolution: ResolutionLike,
        crop_size: int,
        load_cell_metadata: bool = False,
        verbose: bool = True,
        *,
        tiling_strategy: str = "default",
        engine: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.crop_size = whole_number(crop_size, "crop_size", name, minimum=1)
        self.load_cell_metadata = load_cell_metadata
        self.verbose = verbose
        self.tiling_strategy = tiling_strategy
        super().__init__(
            path,
            self.modality_dir(),
            resolution,
            name=name,
            engine=engine,
            storage_options=storage_options,
            multiplex=isinstance(self, MultiplexImagingDataset),
        )
        self.metadata: pd.DataFrame = self.cohort.read_table(TISSUES_TABLE).to_pandas()
        self.cell_metadata: pd.DataFrame | None = None
        if load_cell_metadata:
            self.cell_metadata = self.cohort.read_table(CELLS_TABLE).to_pandas()
        if verbose:
            log.info("%s: %d tissues of %s at %s", name, len(self.tissue_ids), self.modality_dir(), self.resolution)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("tile_coordinates", None)  # a cached table: re-read where needed, keeps pickles small
        return state

    def modality_dir(self) -> str:
        return self.image_modality

    @property
    def preprocessor(self) -> Standardizer | None:
        """The dataset's standardizer (the access layer's preprocessing hook)."""
        return self.standardizer

    def __len__(self) -> int:
        return len(self.tissue_ids)

    # -- windows -------------------------------------------------------------------
    def tile_window(self, row: Any, col: Any, size: Any = None) -> Window:
        """The square window of a tile at ``(row, col)`` of ``size`` (``None``: ``crop_size``); anything but whole numbers is refused."""
        size = self.crop_size if size is None else whole_number(size, "size", self.name, minimum=1)
        return Window.from_corner(whole_number(row, "row", self.name), whole_number(col, "col", self.name), size, size)

    def _image_window(
        self, tissue_id: str, window: Window, channels: Sequence[int] | None, pad: bool, out: np.ndarray | None
    ) -> np.ndarray:
        """The stored pixels of a tile window of the image (multiplex datasets filter them)."""
        return self.read(tissue_id, window, channels, pad=pad, out=out)

    def _pads(self, pad: bool | None) -> bool:
        """Whether edge windows are zero-padded: as asked, else for every strategy but the default."""
        return self.tiling_strategy != "default" if pad is None else pad

    @process.fork_excluded()  # a DataLoader forked meanwhile waits: a child must not find torch's statics half made
    def read_tile(
        self,
        tissue_id: str,
        row: int,
        col: int,
        size: int | None = None,
        *,
        kind: str = "complete",
        preprocess: bool = True,
        pad: bool | None = None,
        out: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """One ``(C, size, size)`` window at pixel ``(row, col)`` of this resolution.

        The default tiling strategy slices directly (an edge window may be
        smaller); other strategies, or ``pad=True``, zero-pad edge windows to
        ``size`` (before preprocessing). With ``preprocess=False`` values and
        dtype are the stored ones, and ``out`` (a CPU tensor or array of the
        window's shape and the stored dtype) receives them without a copy where
        the engine decodes into it; the result is then ``out`` (as a tensor).
        """
        self.check_tissue(tissue_id)
        if out is not None and preprocess:
            raise InvalidInputError(f"{self.name}: read_tile(out=...) takes stored values; pass preprocess=False")
        window = self.tile_window(row, col, size)
        channels = self.channel_indices(tissue_id, kind)
        data = self._image_window(tissue_id, window, channels, self._pads(pad), _array_of(out))
        tensor = _tensor_of(data, out)
        return self.preprocess(tensor, tissue_id, kind) if preprocess else tensor

    @process.fork_excluded()  # a DataLoader forked meanwhile waits: a child must not find torch's statics half made
    def read_mask_tile(
        self,
        tissue_id: str,
        row: int,
        col: int,
        size: int | None = None,
        *,
        mask: str = "tissue_masks",
        pad: bool | None = None,
        out: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """The ``(size, size)`` window of a tissue or cell mask, aligned with :meth:`read_tile`, as :func:`label_dtype` ids.

        ``out`` (as in :meth:`read_tile`) is of that dtype, or of the stored dtype to receive the stored values without a copy.
        """
        self.check_mask_kind(mask)
        window = self.tile_window(row, col, size)
        target = _array_of(out)
        pads = self._pads(pad)
        if target is not None and target.dtype == np.dtype(self.level(tissue_id, mask).dtype):
            return _tensor_of(self.read_mask(tissue_id, window, mask, pad=pads, out=target), out)
        labels = _as_labels(self.read_mask(tissue_id, window, mask, pad=pads), f"{self.name}: {mask} of tissue {tissue_id!r}")
        if target is None:
            return _to_tensor(labels)
        if target.shape != labels.shape or target.dtype != labels.dtype:
            raise InvalidInputError(
                f"{self.name}: out must be {labels.dtype} {labels.shape} for this window, got {target.dtype} {target.shape}"
            )
        target[...] = labels
        return _tensor_of(target, out)

    def get_tissue(self, tissue_id: str, kind: str = "complete", preprocess: bool = True, image_mode: str = "CHW") -> Any:
        """The whole tissue at this resolution as a typed tissue."""
        self.check_tissue(tissue_id)
        whole = Window.of_shape(self.level(tissue_id).shape[-2:])
        data = self.read(tissue_id, whole, self.channel_indices(tissue_id, kind))
        tensor = _to_tensor(self._filter(data, tissue_id, kind))
        if preprocess:
            tensor = self.preprocess(tensor, tissue_id, kind)
        return self._make_tissue(tissue_id, tensor, kind, image_mode)

    def get_crop(
        self, tissue_id: str, crop_id: int, image_mode: str = "CHW", preprocess: bool = True, kind: str = "complete"
    ) -> torch.Tensor:
        """The crop ``crop_id`` of the tissue's row in the tile table for ``crop_size``."""
        crop_id = whole_number(crop_id, "crop_id", self.name)
        try:
            row, col = self.tile_position(tissue_id, crop_id)
        except KeyError:
            raise NotFoundError(f"{self.name}: no crop {crop_id} of tissue {tissue_id!r} in {self.tile_table_path}") from None
        return _to_mode(self.read_tile(tissue_id, row, col, kind=kind, preprocess=preprocess), image_mode)

    def tile_position(self, tissue_id: str, tile_id: int) -> tuple[int, int]:
        """``(row, col)`` of a tile of the tile table; ``KeyError`` if it has none. A dict lookup."""
        lookup = self.__dict__.get("_cache_tile_positions")
        if lookup is None:  # built once per process; _cache_* attributes are not pickled
            tiles = self.tile_coordinates
            keys = zip(tiles.tissue_id.astype(str), tiles.tile_id.astype(int))
            lookup = dict(zip(keys, zip(tiles.row.astype(int), tiles.col.astype(int))))
            self.__dict__["_cache_tile_positions"] = lookup
        position: tuple[int, int] = lookup[(str(tissue_id), int(tile_id))]
        return position

    def get_tissue_mask(self, tissue_id: str) -> TissueMask:
        return TissueMask(tissue_id, self._whole_mask("tissue_masks", tissue_id))

    def get_cell_mask(self, tissue_id: str) -> CellMask:
        return CellMask(tissue_id, self._whole_mask("cell_masks", tissue_id))

    def _whole_mask(self, kind: str, tissue_id: str) -> torch.Tensor:
        data = self.read_mask(tissue_id, Window.of_shape(self.level(tissue_id, kind).shape[-2:]), kind)
        return _to_tensor(_as_labels(data, f"{self.name}: {kind} of tissue {tissue_id!r}"))

    # -- tiles -------------------------------------------------------------------------
    @property
    def tile_table_path(self) -> str:
        return tile_table_path(self.resolution, self.crop_size, strategy=self.tiling_strategy)

    @functools.cached_property
    def tile_coordinates(self) -> pd.DataFrame:
        """The tile table (tissue_id, tile_id, row, col) of this resolution, crop size and strategy."""
        try:
            table = self.cohort.read_table(self.tile_table_path).to_pandas()
        except NotFoundError:
            prefix, name = f"tiling/{self.resolution}/", f"/{self.crop_size}_tile_coordinates.parquet"
            present = sorted({t.split("/")[2] for t in self.cohort.tables() if t.startswith(prefix) and t.endswith(name)})
            raise NotFoundError(
                f"{self.name}: no {self.crop_size} px tile table for tiling_strategy={self.tiling_strategy!r} at {self.resolution} "
                f"({self.tile_table_path}); strategies present: {', '.join(present) or 'none'} (spora-zarr tile computes 'best' and 'grid')"
            ) from None
        return table[table.tissue_id.isin(self.tissue_ids)].reset_index(drop=True)

    # -- per modality ------------------------------------------------------------------
    def _filter(self, data: np.ndarray, tissue_id: str, kind: str) -> np.ndarray:
        """Image filters applied to a read (multiplex ``filters``); none here."""
        return data

    def _make_tissue(self, tissue_id: str, tensor: torch.Tensor, kind: str, image_mode: str) -> Any:
        raise NotImplementedError


def _to_mode(tensor: torch.Tensor, image_mode: str) -> torch.Tensor:
    if image_mode not in IMAGE_MODES:
        raise InvalidInputError(f"image_mode must be one of {', '.join(IMAGE_MODES)}, got {image_mode!r}")
    return tensor.permute(1, 2, 0) if image_mode == "HWC" else tensor


class _RGBDataset(BaseImagingDataset):
    """RGB images (H&E, IHC) normalised with a mean/std preset."""

    mean_std_type: str = "imagenet"
    standardizer: BaseStandardizer

    def preprocess(self, data: torch.Tensor, tissue_id: str, kind: str) -> torch.Tensor:
        """Mean/std normalisation with the ``mean_std_type`` preset."""
        return apply_standardizer(self.standardizer, data, tissue_id, ())


class HEImagingDataset(_RGBDataset):
    """H&E RGB images; ``mean_std_type`` is ``"imagenet"`` or ``"hibou"``."""

    image_modality = HEModality().directory

    def __init__(
        self,
        name: str,
        path: str | Location,
        resolution: ResolutionLike,
        crop_size: int,
        load_cell_metadata: bool = False,
        verbose: bool = True,
        mean_std_type: str = "imagenet",
        **kwargs: Any,
    ) -> None:
        self.standardizer = MeanStdStandardizer(mean_std_type)  # refuses an unknown preset
        self.mean_std_type = mean_std_type
        self.modality = HEModality()
        super().__init__(name, path, resolution, crop_size, load_cell_metadata, verbose, **kwargs)

    def _make_tissue(self, tissue_id: str, tensor: torch.Tensor, kind: str, image_mode: str) -> HETissue:
        return HETissue(tissue_id, _to_mode(tensor, image_mode), image_mode)


class SingleIHCImagingDataset(_RGBDataset):
    """Single-marker RGB IHC images of ``ihc/ihc_<marker_name>``."""

    def __init__(
        self,
        name: str,
        path: str | Location,
        marker_name: str,
        resolution: ResolutionLike,
        crop_size: int,
        load_cell_metadata: bool = False,
        verbose: bool = True,
        mean_std_type: str = "imagenet",
        **kwargs: Any,
    ) -> None:
        self.marker_name = marker_name
        self.modality = IHCModality(marker=marker_name)
        self.standardizer = MeanStdStandardizer(mean_std_type)
        self.mean_std_type = mean_std_type
        super().__init__(name, path, resolution, crop_size, load_cell_metadata, verbose, **kwargs)

    def modality_dir(self) -> str:
        return self.modality.directory

    def _make_tissue(self, tissue_id: str, tensor: torch.Tensor, kind: str, image_mode: str) -> IHCTissue:
        return IHCTissue(tissue_id, _to_mode(tensor, image_mode), self.marker_name, image_mode)


class MultiplexImagingDataset(BaseImagingDataset):
    """Multiplex ``(C, H, W)`` images with channel QC and UniProt filtering."""

    standardizer: Standardizer

    def __init__(
        self,
        name: str,
        path: str | Location,
        resolution: ResolutionLike,
        crop_size: int,
        modality: str | MultiplexModality = "imc",
        standardization: str | Standardizer = "identity",
        load_cell_metadata: bool = False,
        verbose: bool = True,
        *,
        filters: Mapping[str, Any] | ChannelFilters | None = None,
        **kwargs: Any,
    ) -> None:
        self.modality = as_multiplex_modality(modality)
        self.standardization = standardization
        self.filters = None if filters is None else FilterFactory.from_config(filters)
        super().__init__(name, path, resolution, crop_size, load_cell_metadata, verbose, **kwargs)
        self.channels_per_tissue  # noqa: B018 - the channel tables load (and a missing one fails) at construction
        self.panel: list[str] = self.channels.channel_name.tolist()
        self.standardizer = resolve_standardizer(standardization, self)  # stats-backed specs read this store's statistics

    def modality_dir(self) -> str:
        return self.modality.directory

    def preprocess(self, data: torch.Tensor, tissue_id: str, kind: str) -> torch.Tensor:
        """The dataset's standardization of a read of ``kind``."""
        return apply_standardizer(self.standardizer, data, tissue_id, self.channel_names(tissue_id, kind))

    def _filter(self, data: np.ndarray, tissue_id: str, kind: str) -> np.ndarray:
        return data if self.filters is None else self.filters.apply(data, self.channel_names(tissue_id, kind))

    def _image_window(
        self, tissue_id: str, window: Window, channels: Sequence[int] | None, pad: bool, out: np.ndarray | None
    ) -> np.ndarray:
        """A window; with ``filters``, read with their margin (clipped at the border), filtered, then cropped (into ``out``)."""
        if self.filters is None:
            return super()._image_window(tissue_id, window, channels, pad, out)
        inner = self.inside(self.modality_dir(), tissue_id, window)  # raises, naming the window
        data = self._filtered_window(tissue_id, window, inner, channels, pad)
        if out is None:
            return data
        if out.shape != data.shape or out.dtype != data.dtype:
            raise InvalidInputError(f"{self.name}: out must be {data.dtype} {data.shape} for this window, got {out.dtype} {out.shape}")
        out[...] = data
        return out

    def _filtered_window(self, tissue_id: str, window: Window, inner: Window, channels: Sequence[int] | None, pad: bool) -> np.ndarray:
        """The filtered window (its part ``inner`` inside the image, read grown by the filters' margin, then cropped)."""
        assert self.filters is not None
        grown = inner.grow(self.filters.margin).clip(self.level(tissue_id).shape[-2:])
        assert grown is not None  # it holds inner
        stored = self.cohort.channel_names(self.modality_dir(), tissue_id)
        names = stored if channels is None else [stored[i] for i in channels]
        filtered = self.filters.apply(self.read(tissue_id, grown, channels), names)
        data = np.ascontiguousarray(filtered[inner.relative_to(grown).index])
        if not pad or inner == window:
            return data
        out = np.zeros((*data.shape[:-2], *window.shape), dtype=data.dtype)
        out[inner.relative_to(window).index] = data
        return out

    def _make_tissue(self, tissue_id: str, tensor: torch.Tensor, kind: str, image_mode: str) -> MultiplexTissue:
        stored = self.cohort.channel_names(self.modality_dir(), tissue_id)
        names = self.channel_names(tissue_id, kind)
        uniprot = dict(zip(self.channels.channel_name, self.channels.uniprot_id))
        return MultiplexTissue(
            tissue_id,
            tensor,
            names,
            measured_mask=torch.tensor([c in stored for c in self.panel]),
            image_loading_mask=torch.tensor([c in names for c in stored]),
            uniprot_ids=[None if pd.isna(uniprot.get(n)) else uniprot.get(n) for n in names],
        )
