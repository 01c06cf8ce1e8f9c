"""A map-style PyTorch dataset over the tile tables of one or more cohorts.

:class:`TileDataset` indexes every row of the tile tables of its datasets
(``tiling/<res>/<strategy>/<size>_tile_coordinates.parquet``) once, in
``__init__``; ``__getitem__`` only slices, through the datasets' fast tile path
(:meth:`~spora_zarr.datasets.BaseImagingDataset.read_tile`, no dask graph).

One item is a dict of fixed-shape tensors, so ``DataLoader``'s default
collation batches it::

    {
        "he": (3, S, S) float32,                   # every modality of the dataset, keyed by its directory
        "imc": (P, S, S) float32,                  # multiplex: aligned to the panel of ``kind``
        "imc_channel_mask": (P,) bool,             # which panel channels this tissue measured
        "tissue_masks": (S, S), "cell_masks": (S, S),   # int32 (int64 for wider ids) per kind (mask_dtypes), primary resolution
        "tissue_id": str, "tile_id": int, "row": int, "col": int, "cohort": str,
    }

Fixed shapes
    Every window is ``size`` pixels (default: the datasets' ``crop_size``) at
    the primary modality's resolution; a modality at another resolution gets
    ``round(size * mpp_primary / mpp_modality)`` pixels, as
    :meth:`ComposedImagingDataset.read_tile` scales them. Edge windows are
    zero-padded to that size whatever the tiling strategy (the ``default``
    strategy of ``read_tile`` returns them clipped): the padding is zero in
    *stored* values and goes through preprocessing like any pixel, exactly as
    ``read_tile`` pads non-default strategies.
Multiplex channels
    Tissues of one cohort measure different channels, so a multiplex image
    is scattered into the *panel* of ``kind``: the ``channels.parquet`` rows
    that the kind keeps (all rows for ``complete``, ``qc_pass`` rows for
    ``qc_filtered``, those with a UniProt id too for ``uniprot_filtered``), in
    table order; with several datasets, the union of their panels in order of
    first appearance (:attr:`TileDataset.panels`). Planes a tissue did not
    measure are zeros and ``"<modality>_channel_mask"`` is ``False`` there,
    as are all planes of a tissue with no channel of the kind (a tissue
    without UniProt-mapped channels under ``uniprot_filtered``).
One dtype per key
    Tissues store one modality in different dtypes (uint16 counts, float32
    unmixed stains, uint8) and masks in different integer types; the default
    collation needs one. :attr:`TileDataset.dtypes` gives each modality's:
    float32 when ``preprocess=True``, else numpy's promotion of every indexed
    tissue's stored dtype (``np.result_type``: uint16 with float32 is float32,
    which holds every uint16 value exactly), so ``preprocess=False`` keeps the
    stored values. :attr:`TileDataset.mask_dtypes` gives each mask kind's: int32
    when the promotion of the stored integer types fits it (uint8, uint16,
    int32), else int64 (uint32 ids), types torch and MONAI transforms operate
    on; a mix no integer type holds (uint64 with a signed type) is an error at
    construction. Both are decided when the index is built.
Masks
    ``masks=None`` (the default) returns the mask kinds that *every* indexed
    tissue has at its dataset's resolution, so all items have the same keys;
    naming kinds explicitly makes a missing mask an error at construction.

Workers and forks
    Readers open lazily in each process. Under ``fork`` a worker inherits the
    parent's readers and :mod:`spora_zarr.read.levels` makes them reopen there.
    Local stores in the converter's layout are read by the direct engine,
    which is fork safe, whatever the parent did. Other layouts use an engine
    the parent did not make unsafe: a forked child of a process that used
    tensorstore never touches tensorstore (it would hang), nor one of a
    process that used zarrs (or converted a store: the writer runs zarrs)
    zarrs.
    Under ``spawn`` the dataset pickles to its compact index and the
    datasets' constructor arguments (cached tile tables dropped).
    In a worker, the first item calls :func:`worker_init_fn` unless the
    ``DataLoader`` already did: ``cores // num_workers`` codec threads per
    worker and one torch thread, so workers do not oversubscribe the cores.
    Pass ``timeout=`` to the ``DataLoader`` so that a stuck worker fails
    instead of hanging.
Throughput
    ``DataLoader``'s default collation hands every batch over in new shared
    memory, faulted in by the worker and again by the training process; on a
    small machine that costs more than the reads. :class:`~spora_zarr.torch.TileLoader`
    hands batches over in reused shared memory. Float32 multiplex items
    (``preprocess=True``) are twice the bytes of the stored uint16 ones:
    training that standardises on the GPU takes ``preprocess=False`` items and
    a :class:`~spora_zarr.standardize.BatchStandardizer`
    (``docs/standardization.md``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..access.tissue import TissueSource
from ..datasets import (
    CHANNEL_KINDS,
    BaseImagingDataset,
    ComposedImagingDataset,
    MultiplexImagingDataset,
    SporaDataset,
    label_dtype,
    pixel_scale,
    whole_number,
)
from ..errors import InvalidInputError, NotFoundError
from ..store.layout import MASK_KINDS
from .loader import lend_batch
from .workers import available_cores, setup_worker_once, worker_init_fn

__all__ = ["TileDataset", "available_cores", "worker_init_fn"]

DatasetLike = ComposedImagingDataset | BaseImagingDataset


def _as_dtype(tensor: torch.Tensor, dtype: np.dtype) -> torch.Tensor:
    """``tensor`` with the values cast to ``dtype`` (through numpy: torch casts few unsigned types)."""
    array = tensor.numpy()
    return tensor if array.dtype == dtype else torch.from_numpy(array.astype(dtype))


def _composed(dataset: Any) -> ComposedImagingDataset:
    if isinstance(dataset, ComposedImagingDataset):
        return dataset
    if isinstance(dataset, BaseImagingDataset):
        return ComposedImagingDataset([dataset])
    raise InvalidInputError(
        f"TileDataset takes ComposedImagingDataset or imaging datasets (HE, multiplex, IHC), got {type(dataset).__name__}"
    )


def _compact(values: np.ndarray) -> np.ndarray:
    """``values`` as int32 when they fit (pixel coordinates and tile ids do), else int64."""
    info = np.iinfo(np.int32)
    fits = values.size == 0 or (values.min() >= info.min and values.max() <= info.max)
    return values.astype(np.int32) if fits else values


def _without_cached_tables(obj: Any) -> Any:
    """A shallow copy of ``obj`` without its cached tile table (recomputed on demand)."""
    clone = object.__new__(type(obj))
    clone.__dict__.update(obj.__dict__)
    clone.__dict__.pop("tile_coordinates", None)
    if isinstance(obj, ComposedImagingDataset):
        clone.datasets = {name: _without_cached_tables(d) for name, d in obj.datasets.items()}
    return clone


class TileDataset(Dataset[dict[str, Any]]):
    """Every tile of the tile tables of one or more datasets, as fixed-shape tensors.

    Parameters
    ----------
    datasets : dataset or sequence of datasets
        :class:`~spora_zarr.datasets.ComposedImagingDataset` or unimodal
        datasets (``HEImagingDataset``, ``MultiplexImagingDataset``,
        ``SingleIHCImagingDataset``), possibly of different cohorts, or a
        :class:`~spora_zarr.datasets.SporaDataset`. All must have the same
        modalities (keys of ``ComposedImagingDataset.datasets``). Tiles come
        from each one's ``tile_coordinates`` (its primary dataset's
        resolution, ``crop_size`` and tiling strategy), over the tissues
        every modality has.
    kind : str
        Channel kind of multiplex modalities: ``"complete"``,
        ``"qc_filtered"`` or ``"uniprot_filtered"``.
    preprocess : bool
        Apply each dataset's preprocessing (RGB mean/std normalisation,
        multiplex standardization); ``False`` returns stored values and
        dtypes.
    masks : sequence of str, optional
        Mask kinds to return (``"tissue_masks"``, ``"cell_masks"``), read at
        the primary dataset's resolution. ``None``: those every indexed
        tissue has. A named kind that some tissue lacks raises
        :class:`~spora_zarr.errors.NotFoundError`.
    size : int, optional
        Window edge in pixels at the primary resolution; default the
        ``crop_size`` of the datasets (which must then agree).

    Attributes
    ----------
    modalities : dict of str to int
        Output edge in pixels of each modality.
    panels : dict of str to list of str
        Channel names of each multiplex modality's output planes.
    masks : tuple of str
        Mask kinds every item has.
    dtypes : dict of str to numpy.dtype
        The dtype of each modality's items (see "One dtype per key" above).
    mask_dtypes : dict of str to numpy.dtype
        The integer dtype of each mask kind's items.

    Raises
    ------
    InvalidInputError
        Unknown kind or mask kind, datasets with different modalities or
        crop sizes, no datasets.
    NotFoundError
        A requested mask is missing for some tissue, or a dataset has no tile
        table.
    """

    def __init__(
        self,
        datasets: DatasetLike | SporaDataset | Iterable[DatasetLike],
        *,
        kind: str = "complete",
        preprocess: bool = True,
        masks: Sequence[str] | None = None,
        size: int | None = None,
    ) -> None:
        if isinstance(datasets, SporaDataset):
            datasets = datasets.datasets
        if isinstance(datasets, (ComposedImagingDataset, BaseImagingDataset)):
            datasets = [datasets]
        self.datasets: list[ComposedImagingDataset] = [_composed(d) for d in datasets]
        if not self.datasets:
            raise InvalidInputError("TileDataset needs at least one dataset")
        if kind not in CHANNEL_KINDS:
            raise InvalidInputError(f"unknown channel kind {kind!r}; expected one of {', '.join(CHANNEL_KINDS)}")
        self.kind = kind
        self.preprocess = bool(preprocess)

        sizes = {whole_number(size, "size", "TileDataset", minimum=1)} if size is not None else {d.primary.crop_size for d in self.datasets}
        if len(sizes) != 1:
            raise InvalidInputError(f"the datasets have different crop sizes {sorted(sizes)}; pass size= to choose one")
        self.size = sizes.pop()

        self.modalities: dict[str, int] = {}
        self.panels: dict[str, list[str]] = {}
        for composed in self.datasets:
            self._add_layout(composed)

        self._build_index()
        self.masks: tuple[str, ...] = self._check_masks(masks)
        self.dtypes: dict[str, np.dtype] = {name: self._modality_dtype(name) for name in self.modalities}
        self.mask_dtypes: dict[str, np.dtype] = {kind: self._mask_dtype(kind) for kind in self.masks}

    # -- construction -----------------------------------------------------------------
    def _add_layout(self, composed: ComposedImagingDataset) -> None:
        """Record (and check) the output shape of each modality of ``composed``."""
        names = list(composed.datasets)
        if self.modalities and names != list(self.modalities):
            raise InvalidInputError(
                f"dataset {composed.primary.name!r} has modalities {names}, the first dataset {list(self.modalities)}; "
                "every dataset of a TileDataset must have the same modalities"
            )
        for name, dataset in composed.datasets.items():
            edge = round(self.size * pixel_scale(composed.primary, dataset))
            if self.modalities.setdefault(name, edge) != edge:
                raise InvalidInputError(
                    f"modality {name!r} of dataset {dataset.name!r} gives {edge} px windows, another dataset "
                    f"{self.modalities[name]} px: use the same resolutions in every dataset"
                )
            if isinstance(dataset, MultiplexImagingDataset):
                panel = self.panels.setdefault(name, [])
                panel.extend(n for n in dataset.kind_channels(self.kind) if n not in panel)

    def _build_index(self) -> None:
        """Compact arrays over all tiles: dataset, tissue (codes into ``tissue_ids``), tile_id, row, col."""
        datasets, tissues, tile_ids, rows, cols = [], [], [], [], []
        self.tissue_ids: list[str] = []
        self._tissue_dataset: list[int] = []
        for number, composed in enumerate(self.datasets):
            tiles = composed.tile_coordinates
            codes, uniques = pd.factorize(tiles.tissue_id.astype(str), sort=False)
            datasets.append(np.full(len(tiles), number, dtype=np.int32))
            tissues.append(codes.astype(np.int32) + len(self.tissue_ids))
            tile_ids.append(tiles.tile_id.to_numpy(np.int64))
            rows.append(tiles.row.to_numpy(np.int64))
            cols.append(tiles.col.to_numpy(np.int64))
            self.tissue_ids.extend(str(t) for t in uniques)
            self._tissue_dataset.extend([number] * len(uniques))
        self._dataset = np.concatenate(datasets)
        self._tissue = np.concatenate(tissues)
        self._tile_id, self._row, self._col = (_compact(np.concatenate(a)) for a in (tile_ids, rows, cols))

    def _check_masks(self, masks: Sequence[str] | None) -> tuple[str, ...]:
        requested = MASK_KINDS if masks is None else tuple([masks] if isinstance(masks, str) else masks)
        for kind in requested:
            known = {k for d in self.datasets for k in d.primary.cohort.known_mask_kinds}
            if kind not in known:
                raise InvalidInputError(f"unknown mask kind {kind!r}; expected one of {', '.join(sorted(known))}")
        kept = []
        for kind in requested:
            missing = [
                f"{self.datasets[number].primary.name}:{tissue}"
                for tissue, number in zip(self.tissue_ids, self._tissue_dataset)
                if not self.datasets[number].primary.has_mask(tissue, kind)
            ]
            if not missing:
                kept.append(kind)
            elif masks is not None:
                raise NotFoundError(
                    f"no {kind} at the dataset's resolution for tissue(s) {', '.join(missing[:10])}"
                    f"{' ...' if len(missing) > 10 else ''}; leave {kind} out of masks= or pass masks=None"
                )
        return tuple(kept)

    def _stored_dtypes(self, group: str | None, name: str) -> dict[np.dtype, list[str]]:
        """Stored dtype -> tissues, over every indexed tissue, of modality ``name`` (``group`` None) or mask ``group``."""
        found: dict[np.dtype, list[str]] = {}
        for tissue, number in zip(self.tissue_ids, self._tissue_dataset):
            composed = self.datasets[number]
            dataset = composed.datasets[name] if group is None else composed.primary
            found.setdefault(dataset.stored_dtype(tissue, group), []).append(tissue)
        return found

    def _modality_dtype(self, name: str) -> np.dtype:
        """The one dtype of a modality's items: float32 when preprocessed, else the stored dtypes promoted."""
        if self.preprocess:
            return np.dtype(np.float32)
        stored = self._stored_dtypes(None, name)
        return np.result_type(*stored) if stored else np.dtype(np.float32)

    def _mask_dtype(self, kind: str) -> np.dtype:
        """The one integer dtype of a mask kind's items, able to hold every stored id."""
        stored = self._stored_dtypes(kind, kind)
        dtype = np.result_type(*stored)
        if dtype.kind in "uib":
            return label_dtype(dtype)
        listing = "; ".join(f"{d}: {', '.join(t[:3])}{' ...' if len(t) > 3 else ''}" for d, t in stored.items())
        raise InvalidInputError(
            f"{kind} are stored as {listing}: no integer type torch collates holds them all; store the masks as one "
            "integer type (uint32 or smaller), or leave them out with masks="
        )

    # -- the index ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._row.size)

    @property
    def index(self) -> pd.DataFrame:
        """The tiles, one row per item: dataset (position), cohort, tissue_id, tile_id, row, col."""
        names = np.array([d.primary.name for d in self.datasets], dtype=object)
        return pd.DataFrame(
            {
                "dataset": self._dataset,
                "cohort": names[self._dataset],
                "tissue_id": np.array(self.tissue_ids, dtype=object)[self._tissue],
                "tile_id": self._tile_id,
                "row": self._row,
                "col": self._col,
            }
        )

    # -- items ----------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        """The tile at position ``index`` of :attr:`index`; see the module docstring for its keys."""
        return self._item(index)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The items of a batch; in a :class:`~spora_zarr.torch.TileLoader` worker, read straight into its shared buffers.

        The first item is read as :meth:`__getitem__` reads it; the loader then
        lends one buffer row per item for each of its large tensors, and the
        other items are decoded into their rows. A subclass that overrides
        :meth:`__getitem__` gets its items from it.
        """
        if not indices or type(self).__getitem__ is not TileDataset.__getitem__:
            return [self[i] for i in indices]
        first = self._item(indices[0])
        rows = lend_batch(len(indices), first)
        for key, buffer in rows.items():
            buffer.numpy()[0] = first[key].numpy()
            first[key] = buffer[0]
        return [first, *(self._item(i, rows, n) for n, i in enumerate(indices[1:], start=1))]

    def _item(self, index: int, rows: dict[str, torch.Tensor] | None = None, row_number: int = 0) -> dict[str, Any]:
        """Item ``index``; its tensors of keys in ``rows`` are written into row ``row_number`` of those buffers."""
        if setup_worker_once():
            self.forget_readers()  # also when the DataLoader holds a wrapper (Subset, ConcatDataset)
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"TileDataset indices must be integers, got {type(index).__name__}") from None
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"tile index {index} out of range for a TileDataset of {len(self)} tiles")
        number = int(self._dataset[i])
        tissue = self.tissue_ids[self._tissue[i]]
        row, col = int(self._row[i]), int(self._col[i])
        composed = self.datasets[number]
        base = composed.primary
        into = {} if rows is None else {key: buffer[row_number] for key, buffer in rows.items()}

        item: dict[str, Any] = {}
        for name, dataset in composed.datasets.items():
            factor = pixel_scale(base, dataset)
            r, c, edge = round(row * factor), round(col * factor), self.modalities[name]
            multiplex = isinstance(dataset, MultiplexImagingDataset)
            kind = self.kind if multiplex else "complete"
            positions, measured = self._panel_positions(number, name, tissue) if multiplex else (None, None)
            target = into.get(name)
            if target is not None and positions is None and not self.preprocess and target.numpy().dtype == dataset.level(tissue).dtype:
                tile = dataset.read_tile(tissue, r, c, edge, kind=kind, preprocess=False, pad=True, out=target)
            else:
                tile = _as_dtype(dataset.read_tile(tissue, r, c, edge, kind=kind, preprocess=self.preprocess, pad=True), self.dtypes[name])
                if positions is not None:  # not the whole panel in panel order: scatter into it
                    if target is None:
                        aligned = tile.new_zeros((len(self.panels[name]), edge, edge))
                    else:  # a lent row still holds an earlier batch's tile
                        aligned = target
                        aligned.numpy()[...] = 0
                    aligned.numpy()[positions] = tile.numpy()  # numpy: torch has no index_put for uint16
                    tile = aligned
                elif target is not None:
                    target.numpy()[...] = tile.numpy()
                    tile = target
            item[name] = tile
            if measured is not None:
                item[f"{name}_channel_mask"] = measured.clone()
        for kind in self.masks:
            target = into.get(kind)
            if target is not None and target.numpy().dtype == base.level(tissue, kind).dtype:
                item[kind] = base.read_mask_tile(tissue, row, col, self.size, mask=kind, pad=True, out=target)
            else:
                mask = _as_dtype(base.read_mask_tile(tissue, row, col, self.size, mask=kind, pad=True), self.mask_dtypes[kind])
                if target is not None:
                    target.numpy()[...] = mask.numpy()
                item[kind] = mask if target is None else target
        item.update(tissue_id=tissue, tile_id=int(self._tile_id[i]), row=row, col=col, cohort=base.name)
        return item

    def _panel_positions(self, number: int, name: str, tissue: str) -> tuple[np.ndarray | None, torch.Tensor]:
        """Panel positions of the planes a read returns (``None``: the panel itself), and the measured mask."""
        cache = self.__dict__.setdefault("_cache_panels", {})
        key = (number, name, tissue)
        if key not in cache:
            dataset = self.datasets[number].datasets[name]
            assert isinstance(dataset, MultiplexImagingDataset)  # only multiplex datasets have panels
            panel = {channel: p for p, channel in enumerate(self.panels[name])}
            names = dataset.channel_names(tissue, self.kind)
            unknown = [n for n in names if n not in panel]
            if unknown:
                raise InvalidInputError(
                    f"{dataset.name}: {name} tissue {tissue!r} has channels {unknown} that are not in "
                    f"{name}/channels.parquet ({self.kind} panel {self.panels[name]})"
                )
            positions = np.array([panel[n] for n in names], dtype=np.intp)
            measured = torch.zeros(len(panel), dtype=torch.bool)
            measured[torch.from_numpy(positions)] = True
            identity = positions.size == len(panel) and bool(np.all(positions == np.arange(len(panel))))
            cache[key] = (None if identity else positions), measured
        entry: tuple[np.ndarray | None, torch.Tensor] = cache[key]
        return entry

    # -- processes --------------------------------------------------------------------------
    def forget_readers(self) -> None:
        """Drop readers carried into this process (a forked worker), so datasets reopen their own."""
        for composed in self.datasets:
            for dataset in composed.datasets.values():
                dataset.forget_readers()

    def sources(self, modality: str) -> list[tuple[str, TissueSource]]:
        """Each indexed tissue with the source (dataset) its ``modality`` is read from, in :attr:`tissue_ids` order."""
        return [(tissue, self.datasets[number].datasets[modality]) for tissue, number in zip(self.tissue_ids, self._tissue_dataset)]

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}
        state["datasets"] = [_without_cached_tables(d) for d in self.datasets]
        return state

    def __repr__(self) -> str:
        cohorts = sorted({d.primary.name for d in self.datasets})
        return (
            f"TileDataset({len(self)} tiles of {len(self.tissue_ids)} tissues, cohorts {cohorts}, "
            f"modalities {self.modalities}, size {self.size}, kind {self.kind!r}, masks {list(self.masks)})"
        )
