"""Typed tissues returned by the datasets' ``get_tissue`` and mask getters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class HETissue:
    tissue_id: str
    image: torch.Tensor
    image_mode: str = "CHW"


@dataclass
class MultiplexTissue:
    tissue_id: str
    image: torch.Tensor
    channel_names: list[str]
    measured_mask: torch.Tensor
    image_loading_mask: torch.Tensor
    uniprot_ids: list[str | None] | None = None


@dataclass
class IHCTissue:
    tissue_id: str
    image: torch.Tensor
    marker: str
    image_mode: str = "CHW"


@dataclass
class ComposedTissue:
    tissue_id: str
    modalities: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.modalities[name]


@dataclass
class TissueMask:
    tissue_id: str
    mask: torch.Tensor


@dataclass
class CellMask:
    tissue_id: str
    mask: torch.Tensor
