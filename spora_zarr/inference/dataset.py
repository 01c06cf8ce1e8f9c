"""A PyTorch ``Dataset`` over patch or tile specs, read through the datasets' fast tile path.

One item is ``{"image": (C, h, w) tensor, "specs": the spec}`` (plus ``"mask"``
when a mask kind is asked for): the patch at ``coords`` of size
``patch_size`` of the tissue ``dataset.tissue_ids[data_idx]``, zero-padded past
the image (a tile of an image smaller than a tile). Like
:class:`spora_zarr.torch.TileDataset` it pickles to its dataset's constructor
arguments and specs, so each DataLoader worker (fork or spawn) opens its own
readers; pass ``worker_init_fn=spora_zarr.torch.worker_init_fn`` to keep codec
threads from oversubscribing the cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InvalidInputError
from ..tiling.patching import PatchSpecs

if TYPE_CHECKING:
    from ..datasets import BaseImagingDataset

__all__ = ["PatchSpecsDataset"]


class PatchSpecsDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Patches of a spora dataset named by :class:`~spora_zarr.tiling.patching.PatchSpecs` (2D).

    Parameters
    ----------
    dataset
        A spora imaging dataset (:mod:`spora_zarr.datasets`); ``data_idx``
        indexes its ``tissue_ids``.
    specs
        Patch or tile specs (``tile_specs(...)``, ``random_patch_specs(...)``).
    kind
        Channel kind of multiplex datasets.
    preprocess
        Standardize as ``read_tile`` does (float32), else stored values.
    mask
        A mask kind (``tissue_masks``, ``cell_masks``) read alongside, or ``None``.
    """

    def __init__(
        self,
        dataset: BaseImagingDataset,
        specs: Sequence[PatchSpecs],
        *,
        kind: str = "complete",
        preprocess: bool = True,
        mask: str | None = None,
    ) -> None:
        self.dataset, self.specs, self.kind, self.preprocess, self.mask = dataset, list(specs), kind, preprocess, mask
        count = len(dataset.tissue_ids)
        for spec in self.specs:
            if len(spec["coords"]) != 2 or len(spec["patch_size"]) != 2:
                raise InvalidInputError(f"{dataset.name}: PatchSpecsDataset reads 2D patches, got coords {tuple(spec['coords'])}")
            if not 0 <= spec["data_idx"] < count:
                raise InvalidInputError(f"{dataset.name}: data_idx {spec['data_idx']} is not one of its {count} tissues")

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        spec = self.specs[index]
        tissue_id = self.dataset.tissue_ids[spec["data_idx"]]
        (y, x), (height, width) = (int(v) for v in spec["coords"]), (int(v) for v in spec["patch_size"])
        size = max(height, width)
        image = self.dataset.read_tile(tissue_id, y, x, size, kind=self.kind, preprocess=self.preprocess, pad=True)
        item: dict[str, Any] = {"image": image[:, :height, :width], "specs": spec}
        if self.mask is not None:
            item["mask"] = self.dataset.read_mask_tile(tissue_id, y, x, size, mask=self.mask, pad=True)[:height, :width]
        return item
