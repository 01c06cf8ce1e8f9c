"""Add one image file to a cohort store (created if missing) as a resolution of ``<modality>/images/<tissue_id>``.

A new tissue gets a new multiscale image. A tissue whose image exists gets the
file as one more source resolution, merged into its pyramid: the other source
levels are kept pixel-exact (masks and tile tables refer to them), the computed
levels are recomputed, and the new pyramid replaces the old one only once it is
complete (the writer's staging). A resolution the image already has from a
source is kept, unless ``overwrite`` replaces that level's pixels.

The tables the datasets read are extended too, each written whole: the tissue
is added to ``metadata/tissues.parquet``, and the channels of a multiplex image
to ``<modality>/channels.parquet`` (a new channel with ``qc_pass`` true and no
UniProt id) and ``<modality>/channels_per_tissue.parquet``. Rows already there
are never rewritten; a tissue listed with other channels is an error before
anything is written. See ``docs/conversion.md``.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Sequence
from typing import Any

import zarr

from ..errors import InvalidInputError
from ..sources import ArraySource, ImageSource, open_source
from ..sources.lossy import JpegEncoded
from ..store.layout import (
    image_group_path,
    resolution_name,
    resolution_value,
    validate_tissue_id,
)
from ..store.location import Location
from ..store.metadata import GroupMetadata, update_cohort_attributes
from ..store.staging import Staging, is_complete_group
from ..store.tables import modality_panel, tissue_table_updates, write_table
from ..write.writer import WriteOptions, WriteResult, write_image

__all__ = ["add_image"]


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
    lossless: bool = False,
    jpeg_quality: int | None = None,
) -> WriteResult:
    """Add one image file as a resolution of ``<modality>/images/<tissue_id>``; create the store if needed.

    OME-TIFF and OME-Zarr channel names and the pixel size of OME-TIFF, Aperio
    SVS, TIFF resolution tags and OME-Zarr are read from the file; other files
    need ``mpp``. A source's own reduced levels at ``2**k`` of its size (a
    slide's pyramid, an OME-Zarr image's levels) become pyramid levels
    pixel-exact. The JPEG tiles of a JPEG-compressed RGB slide are kept as its
    chunks unless ``lossless`` (then they are decoded and stored with the
    lossless codec, readable everywhere); ``jpeg_quality`` (1-100) stores
    any other 8-bit RGB image's levels as JPEG tiles of that quality (lossy,
    the same codec and read path). Returns the write's result;
    ``skipped`` when the image already has this resolution from a source and
    ``overwrite`` is false.
    """
    validate_tissue_id(tissue_id, source=path)
    if mpp is not None and not (isinstance(mpp, (int, float)) and 0 < mpp < float("inf")):
        raise InvalidInputError(f"{path}: mpp must be a positive number of microns per pixel, got {mpp!r}")
    dst = Location.parse(dest, storage_options)
    with open_source(path) as source, contextlib.ExitStack() as closing:
        info = source.info
        resolution = mpp if mpp is not None else info.mpp
        if resolution is None and info.anisotropic is not None:
            (y, x), axis = info.anisotropic, "y" if info.anisotropic[0] > info.anisotropic[1] else "x"
            raise InvalidInputError(
                f"{path}: anisotropic pixels ({y:g} µm in y, {x:g} µm in x); resample the image along {axis} "
                f"to {min(y, x):g} µm per pixel first (or pass --mpp to store it at one pixel size)"
            )
        if resolution is None:
            raise InvalidInputError(f"{path}: the file does not record its pixel size; pass --mpp")
        if jpeg_quality is not None and lossless:
            raise InvalidInputError(f"{path}: --jpeg-quality (lossy) and --lossless exclude each other")
        lossy = JpegEncoded(source, jpeg_quality) if jpeg_quality is not None else None  # checks the quality and the image
        if lossy is not None and source.encoded_tiles() is not None:
            lossy = None  # a JPEG slide keeps its own tiles
        names = list(channel_names) if channel_names else (list(info.channel_names) if info.channel_names else None)
        if names is None:
            names = ["red", "green", "blue"] if info.is_rgb else [f"channel_{i}" for i in range(source.shape[0])]
        if len(names) != source.shape[0]:
            raise InvalidInputError(f"{path}: {source.shape[0]} channels but {len(names)} channel names given")
        update_cohort_attributes(dst)  # creates the store, or checks that it is one this version reads
        staging = Staging(dst)
        staging.recover()
        target = image_group_path(modality, tissue_id)
        existing = _existing(dst, target)
        level = resolution_name(resolution)
        if existing is not None and existing.channel_names != names:
            raise InvalidInputError(
                f"{path}: {target} has channels {existing.channel_names}, the file {names}; a tissue's resolutions share their channels"
            )
        tables = tissue_table_updates(dst, path, modality, tissue_id, names, multiplex=not info.is_rgb)
        for rel, table in tables.items():
            write_table(dst, rel, table)
        if existing is not None and level in existing.spora.source_levels and not overwrite:
            return WriteResult(target, skipped=True)
        sources: dict[float, ImageSource] = {resolution_value(resolution): lossy or source}
        own = source.reduced_levels()
        for factor, reduced in own.items():
            closing.callback(reduced.close)
            encode = jpeg_quality is not None and reduced.encoded_tiles() is None
            sources[resolution_value(resolution * factor)] = JpegEncoded(reduced, jpeg_quality) if encode and jpeg_quality else reduced
        if existing is not None:
            group = zarr.open_group(dst.zarr_store(read_only=True), path=target, mode="r")
            for kept in existing.spora.source_levels:
                if kept != level and resolution_value(kept) not in sources:
                    sources[resolution_value(kept)] = _stored_level(dst, f"{target}/{kept}", group[kept])
        panel = modality_panel(dst, modality) if not info.is_rgb else None
        staging.ensure_groups(posixpath.dirname(target))
        result = write_image(
            dst, target, sources, channel_names=names, rgb=info.is_rgb, panel=panel,
            spora={"tissue_id": tissue_id, "modality": modality}, options=options, overwrite=existing is not None or overwrite,
            keep_encoded=not lossless,
            z_mpp=info.z_mpp,
        )
    update_cohort_attributes(dst, modalities={modality: [resolution_name(mpp) for mpp in sources]})
    return result


def _existing(location: Location, path: str) -> GroupMetadata | None:
    """The metadata of the complete image group at ``path``, or ``None``."""
    attributes = Staging(location).read_attributes(path)
    if attributes is None or not is_complete_group(attributes):
        return None
    return GroupMetadata.from_attributes(attributes, where=location.join(path))


def _stored_level(location: Location, path: str, array: Any) -> ArraySource:
    """A stored level as a source; a local level of JPEG chunks offers them to be kept as they are, not re-encoded."""
    from ..read.engines.jpeg import JpegArray, is_jpeg_layout

    tiles = None
    if location.is_local and is_jpeg_layout(array.metadata):
        tiles = JpegArray(location.fs_path(path), array.metadata, threads=1).encoded_tiles()
    return ArraySource(array, name=location.join(path), tiles=tiles)
