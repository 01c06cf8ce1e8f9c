"""Add one image file to a cohort store (created if missing) as a resolution of ``<modality>/images/<tissue_id>``.

A new tissue gets a new multiscale image. A tissue whose image exists gets the
file as one more source resolution, merged into its pyramid: the other source
levels are kept pixel-exact (masks and tile tables refer to them), the computed
levels are recomputed, and the new pyramid replaces the old one only once it is
complete (the writer's staging). A resolution the image already has from a
source is kept, unless ``overwrite`` replaces that level's pixels.

The tables the datasets read are extended too: the tissue is added to
``metadata/tissues.parquet``, and the channels of a multiplex image to
``<modality>/channels.parquet`` (a new channel with ``qc_pass`` true and no
UniProt id) and ``<modality>/channels_per_tissue.parquet``. Rows already there
are never rewritten; a tissue listed with other channels is an error before
anything is written. The tables and the root document are staged with the
image and promoted with it in one step, so a failure or a kill leaves every
file as it was (or, once committed, the next run finishes the step).

``modality`` ``tissue_masks`` or ``cell_masks`` writes the file as the
tissue's mask (an NGFF label group at ``segmentations/<kind>/<tissue_id>``);
H&E (``he``) and IHC (``ihc/...``) images must be RGB. See
``docs/conversion.md``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from ..access.resolution import parse_resolution
from ..errors import InvalidInputError
from ..sources import ArraySource, ImageSource, open_source
from ..sources.lossy import JpegEncoded
from ..store.layout import (
    MASK_KINDS,
    image_group_path,
    label_group_path,
    validate_modality,
    validate_tissue_id,
)
from ..store.location import Location
from ..store.lock import writes_store
from ..store.metadata import GroupMetadata, read_cohort_attributes, staged_root_document
from ..store.staging import ZARR_JSON, Staging, is_complete_group
from ..store.tables import modality_panel, table_bytes, tissue_table_updates
from ..write.options import WriteOptions
from ..write.writer import WriteResult, write_image, write_labels
from .tasks import RGB_MODALITIES

__all__ = ["add_image"]


@writes_store("add-image", "dest")
def add_image(
    dest: str | Location,
    path: str,
    *,
    modality: str,
    tissue_id: str,
    mpp: float | None = None,
    channel_names: Sequence[str] | None = None,
    write: WriteOptions | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    lossless: bool = False,
    jpeg_quality: int | None = None,
) -> WriteResult:
    """Add one image file as a resolution of ``<modality>/images/<tissue_id>`` (or a mask); create the store if needed.

    OME-TIFF and OME-Zarr channel names and the pixel size of OME-TIFF, Aperio
    SVS, TIFF resolution tags and OME-Zarr are read from the file; other files
    need ``mpp``. A source's own reduced levels at ``2**k`` of its size (a
    slide's pyramid, an OME-Zarr image's levels) become pyramid levels
    pixel-exact. The JPEG tiles of a JPEG-compressed RGB slide are kept as its
    chunks unless ``lossless`` (then they are decoded and stored with the
    lossless codec, readable everywhere); ``jpeg_quality`` (1-100) stores
    any other 8-bit RGB image's levels as JPEG tiles of that quality (lossy,
    the same codec and read path). ``write`` sets the array layout
    (:class:`~spora_zarr.write.options.WriteOptions`). Returns the write's result;
    ``skipped`` when the image already has this resolution from a source and
    ``overwrite`` is false.
    """
    validate_tissue_id(tissue_id, source=path)
    validate_modality(modality, source=path)
    if mpp is not None and not (isinstance(mpp, (int, float)) and 0 < mpp < float("inf")):
        raise InvalidInputError(f"{path}: mpp={mpp!r} is not a positive number of microns per pixel")
    if modality in MASK_KINDS and channel_names:
        raise InvalidInputError(f"{path}: a mask ({modality}) has no channel names; leave out the channel names")
    if jpeg_quality is not None and lossless:
        raise InvalidInputError(f"{path}: jpeg_quality={jpeg_quality!r} (lossy) and lossless=True exclude each other")
    dst = Location.parse(dest, storage_options)
    with open_source(path) as source, contextlib.ExitStack() as closing:
        info = source.info
        resolution = mpp if mpp is not None else info.mpp
        if resolution is None and info.anisotropic is not None:
            (y, x), axis = info.anisotropic, "y" if info.anisotropic[0] > info.anisotropic[1] else "x"
            raise InvalidInputError(
                f"{path}: anisotropic pixels ({y:g} µm in y, {x:g} µm in x); resample the image along {axis} "
                f"to {min(y, x):g} µm per pixel first (or pass mpp=... to store it at one pixel size)"
            )
        if resolution is None:
            raise InvalidInputError(f"{path}: the file does not record its pixel size; pass mpp=...")
        finest = parse_resolution(resolution).mpp
        staging = Staging(dst)
        staging.recover()
        try:
            if modality in MASK_KINDS:
                return _add_mask(dst, path, source, modality, tissue_id, finest, write, overwrite)
            levels = _own_levels(source, finest, jpeg_quality, closing)
            return _add_image(dst, path, source, modality, tissue_id, levels, channel_names, write, overwrite, keep_encoded=not lossless)
        finally:
            staging.recover()  # tidies the staging folder a failed write leaves


def _own_levels(
    source: ImageSource, resolution: float, jpeg_quality: int | None, closing: contextlib.ExitStack
) -> dict[float, ImageSource]:
    """The file's levels by mpp: the source at ``resolution`` and its own reduced levels (closed with ``closing``).

    With ``jpeg_quality``, a level that has no JPEG tiles of its own is encoded as JPEG tiles of that quality.
    """
    own: dict[float, ImageSource] = {resolution: source}
    for factor, reduced in source.reduced_levels().items():
        closing.callback(reduced.close)
        own[parse_resolution(resolution * factor).mpp] = reduced
    if jpeg_quality is None:
        return own
    lossy = {mpp: JpegEncoded(level, jpeg_quality) for mpp, level in own.items()}  # checks the quality and the image, always
    return {mpp: level if level.encoded_tiles() is not None else lossy[mpp] for mpp, level in own.items()}


def _add_image(
    dst: Location,
    path: str,
    source: ImageSource,
    modality: str,
    tissue_id: str,
    levels: dict[float, ImageSource],
    channel_names: Sequence[str] | None,
    write: WriteOptions | None,
    overwrite: bool,
    *,
    keep_encoded: bool,
) -> WriteResult:
    """The file (``levels``: its own levels by mpp, the finest first) as a resolution of the tissue's image, tables staged with it."""
    info = source.info
    rgb = _is_rgb(path, modality, source)
    names = list(channel_names) if channel_names else (list(info.channel_names) if info.channel_names else None)
    if names is None:
        names = ["red", "green", "blue"] if rgb else [f"channel_{i}" for i in range(source.shape[0])]
    if len(names) != source.shape[0]:
        raise InvalidInputError(f"{path}: {source.shape[0]} channels but {len(names)} channel names given")
    target = image_group_path(modality, tissue_id)
    existing = _existing(dst, target)
    level = parse_resolution(min(levels)).name
    if existing is not None and existing.channel_names != names:
        raise InvalidInputError(
            f"{path}: {target} has channels {existing.channel_names}, the file {names}; a tissue's resolutions share their channels"
        )
    tables = tissue_table_updates(dst, path, modality, tissue_id, names, multiplex=not rgb)  # checks before any write
    if existing is not None and level in existing.spora.source_levels and not overwrite:
        return WriteResult(target, skipped=True)
    sources = dict(levels)
    kept_digests: dict[str, str | None] = {}
    if existing is not None:
        group = zarr.open_group(dst.zarr_store(read_only=True), path=target, mode="r")
        for kept in existing.spora.source_levels:
            if parse_resolution(kept).mpp not in sources:
                sources[parse_resolution(kept).mpp] = _stored_level(dst, f"{target}/{kept}", group[kept])
                kept_digests[kept] = existing.spora.content_digests.get(kept)
        kept_digests.update(_unchanged_computed_levels(existing, group, max(levels)))
    files = {rel: table_bytes(table) for rel, table in tables.items()}
    files.update(staged_root_document(dst, modalities={modality: [parse_resolution(mpp).name for mpp in sources]}))
    return write_image(
        dst,
        target,
        sources,
        channel_names=names,
        rgb=rgb,
        panel=modality_panel(dst, modality) if not rgb else None,
        spora={"tissue_id": tissue_id, "modality": modality},
        options=write,
        overwrite=existing is not None or overwrite,
        files=files,
        keep_encoded=keep_encoded,
        z_mpp=info.z_mpp,
        kept_digests=kept_digests,
    )


def _add_mask(
    dst: Location,
    path: str,
    source: ImageSource,
    kind: str,
    tissue_id: str,
    resolution: float,
    write: WriteOptions | None,
    overwrite: bool,
) -> WriteResult:
    """The file as the tissue's mask: one level of integer labels of the shape of the tissue's image at that level."""
    target = label_group_path(kind, tissue_id)
    level = parse_resolution(resolution).name
    image = _segmented_image(dst, path, tissue_id, level, source.shape[1:])
    existing = _existing(dst, target)
    if existing is not None and not overwrite:
        if level in existing.spora.source_levels:
            return WriteResult(target, skipped=True)
        levels = ", ".join(existing.spora.source_levels)
        raise InvalidInputError(f"{path}: {target} already holds a mask from {levels}; pass overwrite=True to replace it with this file")
    return write_labels(
        dst,
        target,
        {resolution: source},
        source_image=f"../../../{image}",
        spora={"tissue_id": tissue_id, "mask_kind": kind},
        options=write,
        overwrite=overwrite,
        files=staged_root_document(dst, mask_kinds=[kind]),
    )


def _segmented_image(location: Location, path: str, tissue_id: str, level: str, shape: tuple[int, ...]) -> str:
    """The path of the tissue's first image with ``level``; an error naming what is there if none matches ``shape``."""
    attributes = read_cohort_attributes(location)
    found: dict[str, tuple[int, ...]] = {}
    for modality in attributes.modalities if attributes else {}:
        group = image_group_path(modality, tissue_id)
        metadata = _existing(location, group)
        if metadata is None:
            continue
        if level not in metadata.level_names:
            found[group] = ()
            continue
        image_shape = tuple(json.loads(location.fs().cat_file(location.fs_path(group, level, ZARR_JSON)))["shape"])
        if image_shape[1:] == tuple(shape):
            return group
        found[group] = image_shape[1:]
    if not found:
        raise InvalidInputError(f"{path}: {location} has no image of tissue {tissue_id!r}; a mask segments an image: add the image first")
    seen = "; ".join(f"{g} {'has no level ' + level if not s else f'is {s} at {level}'}" for g, s in found.items())
    raise InvalidInputError(f"{path}: mask shape {tuple(shape)} at {level} matches no image of tissue {tissue_id!r} ({seen})")


def _is_rgb(path: str, modality: str, source: ImageSource) -> bool:
    """Whether the image is stored as RGB; H&E and IHC images must be (3 channels of uint8)."""
    if modality.split("/")[0] not in RGB_MODALITIES:
        return bool(source.info.is_rgb)
    if source.shape[0] != 3 or source.dtype != np.uint8:
        found = f"{source.shape[0]} channel{'s' if source.shape[0] != 1 else ''} of {source.dtype}"
        raise InvalidInputError(f"{path}: {modality} images are RGB (3 channels of uint8); the file has {found}")
    return True


def _unchanged_computed_levels(existing: GroupMetadata, group: Any, added: float) -> dict[str, str | None]:
    """The computed levels of ``existing`` a write with a source level at ``added`` mpp computes from the same pixels
    again, with their digests: those below its coarsest source level when the added level is finer, unless that level
    is stored as JPEG (a ``--jpeg-quality`` write computed them from the pixels before the encoding, the rewrite from
    the decoded ones)."""
    from ..read.engines.jpeg import is_jpeg_layout

    sources = existing.spora.source_levels
    coarsest = max(sources, key=lambda name: parse_resolution(name).mpp, default=None)
    if coarsest is None or added >= parse_resolution(coarsest).mpp or is_jpeg_layout(group[coarsest].metadata):
        return {}
    return {
        name: existing.spora.content_digests.get(name)
        for name in existing.level_names
        if name not in sources and parse_resolution(name).mpp > parse_resolution(coarsest).mpp
    }


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
