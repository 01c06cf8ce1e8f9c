"""Several modalities of one cohort as one dataset, and several cohorts sampled together."""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import torch

from ..access.resolution import parse_resolution
from ..errors import InvalidInputError
from .imaging import BaseImagingDataset, MultiplexImagingDataset
from .tissues import ComposedTissue


def pixel_scale(base: BaseImagingDataset, dataset: BaseImagingDataset) -> float:
    """Pixels of ``dataset`` per pixel of ``base`` (their resolutions' ratio)."""
    return parse_resolution(base.resolution).mpp / parse_resolution(dataset.resolution).mpp


class ComposedImagingDataset:
    """Several unimodal datasets of the same cohort as one multi-modal handle."""

    def __init__(self, datasets: Mapping[str, BaseImagingDataset] | Sequence[BaseImagingDataset], name: str | None = None) -> None:
        items = datasets.items() if isinstance(datasets, Mapping) else ((d.modality_dir(), d) for d in datasets)
        self.datasets: dict[str, BaseImagingDataset] = dict(items)
        if not self.datasets:
            raise InvalidInputError("ComposedImagingDataset needs at least one dataset")
        self.name = name or "+".join(self.datasets)

    @property
    def primary(self) -> BaseImagingDataset:
        return next(iter(self.datasets.values()))

    @functools.cached_property
    def tissue_ids(self) -> list[str]:
        """Tissues present in every modality."""
        common = set.intersection(*(set(d.tissue_ids) for d in self.datasets.values()))
        return [t for t in self.primary.tissue_ids if t in common]

    def __len__(self) -> int:
        return len(self.tissue_ids)

    def get_tissue(self, tissue_id: str, kind: str = "complete", preprocess: bool = True, image_mode: str = "CHW") -> ComposedTissue:
        modalities = {}
        for name, dataset in self.datasets.items():
            modality_kind = kind if isinstance(dataset, MultiplexImagingDataset) else "complete"
            modalities[name] = dataset.get_tissue(tissue_id, modality_kind, preprocess, image_mode)
        return ComposedTissue(tissue_id, modalities)

    def read_tile(
        self, tissue_id: str, row: int, col: int, size: int | None = None, *, kind: str = "complete", preprocess: bool = True
    ) -> dict[str, torch.Tensor]:
        """The same window of every modality (row/col at the primary dataset's resolution, scaled for the others)."""
        base = self.primary
        window = base.tile_window(row, col, size)  # whole numbers before scaling, which would round a float
        (row, col), size = window.start, window.shape[0]
        tiles = {}
        for name, dataset in self.datasets.items():
            factor = pixel_scale(base, dataset)
            modality_kind = kind if isinstance(dataset, MultiplexImagingDataset) else "complete"
            tiles[name] = dataset.read_tile(
                tissue_id, round(row * factor), round(col * factor), round(size * factor), kind=modality_kind, preprocess=preprocess
            )
        return tiles

    @property
    def tile_coordinates(self) -> pd.DataFrame:
        tiles = self.primary.tile_coordinates
        return tiles[tiles.tissue_id.isin(self.tissue_ids)].reset_index(drop=True)


class SporaDataset:
    """Several composed datasets, possibly from several cohorts, sampled by tissue or by tile."""

    def __init__(
        self, datasets: Iterable[ComposedImagingDataset | BaseImagingDataset], sampling: str = "tissue", seed: int | None = None
    ) -> None:
        self.datasets = [d if isinstance(d, ComposedImagingDataset) else ComposedImagingDataset([d]) for d in datasets]
        if sampling not in ("tissue", "tile"):
            raise InvalidInputError(f"sampling must be 'tissue' or 'tile', got {sampling!r}")
        self.sampling = sampling
        self._rng = random.Random(seed)

    @functools.cached_property
    def index(self) -> list[tuple[int, str, int | None]]:
        """``(dataset index, tissue_id, tile_id or None)`` of every sample."""
        if self.sampling == "tissue":
            return [(i, t, None) for i, d in enumerate(self.datasets) for t in d.tissue_ids]
        return [(i, str(r.tissue_id), int(r.tile_id)) for i, d in enumerate(self.datasets) for r in d.tile_coordinates.itertuples()]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> ComposedTissue | dict[str, torch.Tensor]:
        dataset_index, tissue_id, tile_id = self.index[i]
        dataset = self.datasets[dataset_index]
        if tile_id is None:
            return dataset.get_tissue(tissue_id)
        row, col = dataset.primary.tile_position(tissue_id, tile_id)
        return dataset.read_tile(tissue_id, row, col)

    def sample(self, n: int) -> list[tuple[int, str, int | None]]:
        """``n`` samples drawn uniformly (with replacement) across all datasets."""
        return [self._rng.choice(self.index) for _ in range(n)]
