"""A human summary of a cohort store: modalities, tissues, levels, channels and tables."""

from __future__ import annotations

from typing import Any

from ..store.layout import MASK_KINDS
from ..store.location import Location
from .cohort import Cohort, open_cohort


def describe(location: str | Location, storage_options: dict[str, Any] | None = None) -> str:
    """Multi-line text describing the store at ``location``."""
    cohort = open_cohort(location, storage_options, summaries=False)
    lines = [f"cohort store {cohort.location}", f"format version {cohort.attributes.format_version}"]
    for modality in cohort.modalities:
        tissues = cohort.tissues(modality)
        lines.append(f"\nmodality {modality}: {len(tissues)} tissue(s)")
        for tissue_id in tissues:
            lines.append(f"  {tissue_id}: channels {', '.join(cohort.channel_names(modality, tissue_id))}")
            lines += _levels(cohort, modality, tissue_id)
    for kind in MASK_KINDS:
        tissues = cohort.mask_tissues(kind)
        if tissues:
            lines.append(f"\nmasks {kind}: {len(tissues)} tissue(s)")
            for tissue_id in tissues:
                lines.append(f"  {tissue_id}")
                lines += _levels(cohort, kind, tissue_id)
    tables = cohort.tables()
    lines.append(f"\ntables ({len(tables)}):")
    for table in tables:
        meta = cohort.read_table(table)
        lines.append(f"  {table}: {meta.num_rows} rows, columns {', '.join(meta.column_names)}")
    return "\n".join(lines)


def _levels(cohort: Cohort, modality: str, tissue_id: str) -> list[str]:
    """One line a level, from the cohort's metadata index (no zarr array is opened, no array document parsed by zarr)."""
    lines = []
    stored = set(cohort.group_metadata(modality, tissue_id).spora.source_levels)
    for name in cohort.resolutions(modality, tissue_id):
        array = cohort.array_layout(cohort.level_path(modality, tissue_id, name))
        sharded = f" shards {array.shards}" if array.shards else ""
        origin = "from source" if name in stored else "computed"
        lines.append(f"    {name}: shape {array.shape} {array.dtype} chunks {array.chunks}{sharded} ({origin})")
    return lines
