"""The spora dataset API over a cohort store: modalities, typed tissues, unimodal and composed datasets.

The names and signatures are those of spora_io (``../shared/seeds/001``); see ``docs/datasets.md``.
"""

from .composed import ComposedImagingDataset, SporaDataset, pixel_scale
from .imaging import (
    CHANNEL_KINDS,
    IMAGE_MODES,
    MEAN_STD,
    BaseImagingDataset,
    HEImagingDataset,
    MultiplexImagingDataset,
    SingleIHCImagingDataset,
    Standardizer,
    identity_standardizer,
    label_dtype,
    resolve_standardizer,
    whole_number,
)
from .modalities import (
    MULTIPLEX_MODALITIES,
    CycIFModality,
    HEModality,
    IHCModality,
    IMCModality,
    Modality,
    MultiplexModality,
    as_multiplex_modality,
)
from .tissues import CellMask, ComposedTissue, HETissue, IHCTissue, MultiplexTissue, TissueMask

__all__ = [
    "CHANNEL_KINDS",
    "IMAGE_MODES",
    "MEAN_STD",
    "MULTIPLEX_MODALITIES",
    "BaseImagingDataset",
    "CellMask",
    "ComposedImagingDataset",
    "ComposedTissue",
    "CycIFModality",
    "HEImagingDataset",
    "HEModality",
    "HETissue",
    "IHCModality",
    "IHCTissue",
    "IMCModality",
    "Modality",
    "MultiplexImagingDataset",
    "MultiplexModality",
    "MultiplexTissue",
    "SingleIHCImagingDataset",
    "SporaDataset",
    "Standardizer",
    "TissueMask",
    "as_multiplex_modality",
    "identity_standardizer",
    "label_dtype",
    "pixel_scale",
    "resolve_standardizer",
    "whole_number",
]
