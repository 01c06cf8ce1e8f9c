"""Add one image file to a cohort store (created if missing) as ``<modality>/images/<tissue_id>``."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError
from ..sources import open_source
from ..store.layout import image_group_path, resolution_name, resolution_value, validate_tissue_id
from ..store.location import Location
from ..store.metadata import update_cohort_attributes
from ..store.staging import Staging
from ..write.writer import WriteOptions, WriteResult, write_image


def add_image(
    dest: str | Location,
    path: str,
    *,
    modality: str,
    tissue_id: str,
    mpp: float | None = None,
    channel_names: Sequence[str] | None = None,
    options: WriteOptions | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> WriteResult:
    """Add one image file as ``<modality>/images/<tissue_id>``; create the store if needed.

    OME-TIFF channel names and pixel size are read from the file; other files
    need ``mpp``.
    """
    validate_tissue_id(tissue_id, source=path)
    if mpp is not None and not (isinstance(mpp, (int, float)) and 0 < mpp < float("inf")):
        raise InvalidInputError(f"{path}: mpp must be a positive number of microns per pixel, got {mpp!r}")
    dst = Location.parse(dest, storage_options)
    with open_source(path) as source:
        info = source.info
        resolution = mpp if mpp is not None else info.mpp
        if resolution is None:
            raise InvalidInputError(f"{path}: the file does not record its pixel size; pass --mpp")
        names = list(channel_names) if channel_names else (list(info.channel_names) if info.channel_names else None)
        if names is not None and len(names) != source.shape[0]:
            raise InvalidInputError(f"{path}: {source.shape[0]} channels but {len(names)} channel names given")
        if names is None and info.is_rgb:
            names = ["red", "green", "blue"]
        update_cohort_attributes(dst)  # creates the store, or checks that it is one this version reads
        staging = Staging(dst)
        staging.recover()
        target = image_group_path(modality, tissue_id)
        staging.ensure_groups(posixpath.dirname(target))
        result = write_image(
            dst, target, {resolution_value(resolution): source}, channel_names=names, rgb=info.is_rgb,
            spora={"tissue_id": tissue_id, "modality": modality}, options=options, overwrite=overwrite,
        )
    if not result.skipped:
        update_cohort_attributes(dst, modalities={modality: [resolution_name(resolution)]})
    return result
