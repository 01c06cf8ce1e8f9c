"""A human summary of a cohort store: modalities, tissues, levels, channels and tables."""

from __future__ import annotations

from typing import Any

from ..store.layout import MASK_KINDS
from ..store.location import Location
from ..store.metadata import GroupMetadata
from .cohort import Cohort, open_cohort
from .engines.zarr import open_array


def describe(location: str | Location, storage_options: dict[str, Any] | None = None) -> str:
    """Multi-line text describing the store at ``location``."""
    cohort = open_cohort(location, storage_options)
    lines = [f"cohort store {cohort.location}", f"format version {cohort.attributes.format_version}"]
    for modality in cohort.modalities:
        tissues = cohort.tissues(modality)
        lines.append(f"\nmodality {modality}: {len(tissues)} tissue(s)")
        for tissue_id in tissues:
            lines.append(f"  {tissue_id}: channels {', '.join(cohort.channel_names(modality, tissue_id))}")
            metadata = cohort.group_metadata(modality, tissue_id)
            lines += _levels(cohort, cohort.group_path(modality, tissue_id), metadata)
    for kind in MASK_KINDS:
        tissues = cohort.mask_tissues(kind)
        if tissues:
            lines.append(f"\nmasks {kind}: {len(tissues)} tissue(s)")
            for tissue_id in tissues:
                lines.append(f"  {tissue_id}")
                lines += _levels(cohort, cohort.mask_group_path(kind, tissue_id), cohort.mask_metadata(kind, tissue_id))
    tables = cohort.tables()
    lines.append(f"\ntables ({len(tables)}):")
    for table in tables:
        meta = cohort.read_table(table)
        lines.append(f"  {table}: {meta.num_rows} rows, columns {', '.join(meta.column_names)}")
    return "\n".join(lines)


def _levels(cohort: Cohort, group: str, metadata: GroupMetadata) -> list[str]:
    """One line per level of the image or mask group at ``group``."""
    lines = []
    stored = set(metadata.spora.source_levels)
    for name in metadata.level_names:
        array = open_array(cohort.location, f"{group}/{name}")
        shards = f" shards {tuple(array.shards)}" if array.shards else ""
        origin = "from source" if name in stored else "computed"
        lines.append(f"    {name}: shape {tuple(array.shape)} {array.dtype} chunks {tuple(array.chunks)}{shards} ({origin})")
    return lines
