"""Open a cohort store: modalities, tissues, resolutions, and lazy labelled arrays.

``open_cohort`` reads metadata only; pixels are read when a returned
``xarray.DataArray`` (backed by dask, one dask chunk per shard) is computed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import posixpath
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ..access.resolution import ResolutionLike, parse_resolution
from ..errors import NotFoundError, SporaZarrError, StoreError
from ..store.arrays import ArrayLayout
from ..store.layout import MASK_KINDS, image_group_path, label_group_path, validate_tissue_id
from ..store.location import Location
from ..store.lock import writer_at_work
from ..store.metadata import CohortAttributes, GroupMetadata, read_cohort_attributes
from ..store.staging import STAGING_DIR, is_complete_group
from ..store.tables import read_table, read_table_metadata
from .engines.zarr import ZarrEngine, open_array
from .index import MetadataIndex

if TYPE_CHECKING:
    from zarr.core.metadata.v3 import ArrayV3Metadata

log = logging.getLogger("spora_zarr")


class Cohort:
    """A handle on a cohort store. Cheap to pickle: it pickles as its location.

    Group and level metadata come from the handle's :class:`~.index.MetadataIndex`:
    each directory of groups is listed and read once, concurrently, and kept
    for the handle's life; ``summaries=False`` leaves the directory summaries
    (:mod:`spora_zarr.store.summary`) unread and reads every group's own documents.
    """

    def __init__(self, location: Location, *, summaries: bool = True) -> None:
        self.location = location
        attributes = read_cohort_attributes(location)
        if attributes is None:
            raise NotFoundError(f"{location}: not a cohort store (no zarr group at its root)")
        self.attributes: CohortAttributes = attributes
        self._index = MetadataIndex(location, summaries=summaries)
        self._metadata: dict[str, GroupMetadata] = {}
        self._sets: dict[str, frozenset[str]] = {}  # modality or mask kind -> its tissues
        self._at: dict[tuple[str, ResolutionLike], frozenset[str]] = {}  # (modality or mask kind, level) -> its tissues

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial(open_cohort, summaries=self._index.summaries), (self.location,))

    def __repr__(self) -> str:
        return f"Cohort({self.location.root!r}, modalities={self.modalities})"

    # -- what is there --------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        """Modality directories holding images (``he``, ``imc``, ``ihc/ihc_CD3``, ...)."""
        return sorted(self.attributes.modalities)

    @property
    def mask_kinds(self) -> list[str]:
        """Mask kinds with a complete mask: ``tissue_masks``, ``cell_masks``, then the label predictions the root records."""
        return [k for k in self.known_mask_kinds if self.listing(f"segmentations/{k}")]

    @property
    def known_mask_kinds(self) -> list[str]:
        """``MASK_KINDS`` and the further kinds of the root's ``mask_kinds`` (label predictions)."""
        return list(dict.fromkeys([*MASK_KINDS, *self.attributes.mask_kinds]))

    def is_mask_kind(self, name: str) -> bool:
        """Whether ``name`` is a mask kind of this store (``segmentations/<name>``) rather than a modality."""
        return name in MASK_KINDS or name in self.attributes.mask_kinds

    def tissues(self, modality: str) -> list[str]:
        """Tissue ids with a complete image of ``modality`` (a mask kind gives :meth:`mask_tissues`)."""
        return self.listing(self._directory(modality))

    def mask_tissues(self, kind: str) -> list[str]:
        """Tissue ids with a complete mask of ``kind``."""
        return self.listing(self._directory(kind))

    def _directory(self, name: str) -> str:
        """The directory of the groups of modality or mask kind ``name`` (``NotFoundError`` for an unknown modality)."""
        if self.is_mask_kind(name):
            return label_group_path(name, "x", extra_kinds=self.attributes.mask_kinds).rsplit("/", 1)[0]
        self.check_modality(name)
        return f"{name}/images"

    def has_tissue(self, modality: str, tissue_id: str) -> bool:
        """Whether ``tissue_id`` has a complete image of ``modality`` or mask of that kind (a set lookup)."""
        return tissue_id in self._tissue_sets(modality)

    def tissues_at(self, name: str, resolution: ResolutionLike) -> frozenset[str]:
        """Tissues whose complete image (``name`` a modality) or mask (a mask kind) lists the level ``resolution``.

        From the level names the groups list (:meth:`listed_levels`: no NGFF validation), worked out once per
        name and resolution.
        """
        key = (name, resolution)  # as given: a dataset asks once per tile of a large table
        found = self._at.get(key)
        if found is None:
            found = self._at[key] = self._index.groups_with_level(self._directory(name), parse_resolution(resolution).name)
        return found

    def level_dtype(self, name: str, tissue_id: str, resolution: ResolutionLike) -> np.dtype | None:
        """The stored dtype of the level ``resolution`` of a tissue's image (``name`` a modality) or mask (a mask kind).

        ``None`` when the tissue has no complete group listing that level. From the metadata index for every
        tissue of ``name`` at once (the directory summary's layouts, else each level's ``zarr.json``).
        """
        level = parse_resolution(resolution).name
        if tissue_id not in self._index.groups_with_level(self._directory(name), level):
            return None
        return self._index.level_dtypes(self._directory(name), level)[tissue_id]

    def _tissue_sets(self, modality: str) -> frozenset[str]:
        if modality not in self._sets:
            self._sets[modality] = frozenset(self.tissues(modality))
        return self._sets[modality]

    def listing(self, path: str) -> list[str]:
        """Names of the complete multiscale groups directly below ``path`` (read once for the handle's life)."""
        return self._index.complete_groups(path)

    def check_modality(self, modality: str) -> None:
        """Raise ``NotFoundError`` listing the modalities there if ``modality`` is not one of them."""
        if modality not in self.modalities:
            raise NotFoundError(f"{self.location}: no modality {modality!r}; it has {', '.join(self.modalities) or 'none'}")

    # -- groups and levels --------------------------------------------------------
    # Images are named by a modality, masks by a mask kind: the ``mask_*`` methods. The image methods
    # still accept a mask kind for ``modality`` (the spelling of earlier releases) and hand it on.
    def group_path(self, modality: str, tissue_id: str) -> str:
        """Store path of a tissue image of ``modality`` (a mask kind is handed to :meth:`mask_group_path`)."""
        if self.is_mask_kind(modality):
            return self.mask_group_path(modality, tissue_id)
        self.check_modality(modality)
        return image_group_path(modality, tissue_id)

    def mask_group_path(self, kind: str, tissue_id: str) -> str:
        """Store path of a tissue's mask of ``kind`` (``tissue_masks``, ``cell_masks``, a label prediction)."""
        return label_group_path(kind, tissue_id, extra_kinds=self.attributes.mask_kinds)

    def read_group_documents(self, name: str) -> None:
        """Read the ``zarr.json`` of every group of modality or mask kind ``name`` in one pass, before asking for each.

        Where a directory summary vouches for a group, its own document is read when first asked for; a
        caller about to ask for every tissue's metadata saves one round trip a tissue.
        """
        self._index.read_groups(self._directory(name))

    def group_metadata(self, modality: str, tissue_id: str) -> GroupMetadata:
        """Metadata of a complete image group; ``NotFoundError`` otherwise, ``StoreError`` if invalid."""
        return self._group_metadata(self.group_path(modality, validate_tissue_id(tissue_id)), modality, tissue_id)

    def mask_metadata(self, kind: str, tissue_id: str) -> GroupMetadata:
        """Metadata of a complete mask group; ``NotFoundError`` otherwise, ``StoreError`` if invalid."""
        return self._group_metadata(self.mask_group_path(kind, validate_tissue_id(tissue_id)), kind, tissue_id)

    def _group_metadata(self, path: str, what: str, tissue_id: str) -> GroupMetadata:
        if path not in self._metadata:
            attributes = self._group_attributes(path, what, tissue_id)
            self._metadata[path] = GroupMetadata.from_attributes(attributes, where=self.location.join(path))
        return self._metadata[path]

    def group_attributes(self, modality: str, tissue_id: str) -> dict[str, Any]:
        """The attributes of a complete image or mask group as stored (JSON); ``NotFoundError`` otherwise."""
        return self._group_attributes(self.group_path(modality, validate_tissue_id(tissue_id)), modality, tissue_id)

    def _group_attributes(self, path: str, what: str, tissue_id: str) -> dict[str, Any]:
        attributes = self._index.group_attributes(path)
        if attributes is None or not is_complete_group(attributes):
            raise NotFoundError(f"{self.location}: no tissue {tissue_id!r} in {what!r}")
        return attributes

    def level_metadata(self, modality: str, tissue_id: str, resolution: ResolutionLike | None = None) -> ArrayV3Metadata:
        """The checked ``zarr.json`` of one level array (shape, data type, chunks), without opening it in zarr.

        ``NotFoundError`` when it is missing, ``InvalidInputError`` when it is a group, ``StoreError`` when it is
        damaged (:func:`~spora_zarr.store.arrays.read_array_metadata`).
        """
        return self._index.array_metadata(self.level_path(modality, tissue_id, resolution))

    def listed_levels(self, name: str, tissue_id: str) -> list[str]:
        """Level names of a tissue's image (``name`` a modality) or mask (a mask kind) as its ``ome.multiscales`` lists them.

        From the metadata index, without validating the group's NGFF metadata
        (:meth:`resolutions` does, and every read of the group goes through it):
        cheap enough to ask for every tissue of a large cohort. Empty when there
        is no complete group.
        """
        return self._index.level_names(self.group_path(name, validate_tissue_id(tissue_id)))

    def documents(self, paths: Sequence[str]) -> dict[str, dict[str, Any] | SporaZarrError]:
        """The ``zarr.json`` documents at store ``paths`` (or the error reading each), from the metadata index."""
        return self._index.documents(paths)

    def array_layout(self, path: str) -> ArrayLayout:
        """Shape, dtype, chunks and shards of the level array at store ``path``, from the metadata index without zarr's parser."""
        return self._index.array_layout(path)

    def resolutions(self, modality: str, tissue_id: str) -> list[str]:
        """Level names of a tissue's image, finest first."""
        return self.group_metadata(modality, tissue_id).level_names

    def mask_resolutions(self, kind: str, tissue_id: str) -> list[str]:
        """Level names of a tissue's mask of ``kind``, finest first."""
        return self.mask_metadata(kind, tissue_id).level_names

    def level_path(self, modality: str, tissue_id: str, resolution: ResolutionLike | None = None) -> str:
        """Store path of one level array of an image; ``resolution=None`` is the finest level."""
        names = self.resolutions(modality, tissue_id)
        return self._level_path(self.group_path(modality, tissue_id), names, modality, tissue_id, resolution)

    def mask_level_path(self, kind: str, tissue_id: str, resolution: ResolutionLike | None = None) -> str:
        """Store path of one level array of a mask; ``resolution=None`` is the finest level."""
        return self._level_path(self.mask_group_path(kind, tissue_id), self.mask_resolutions(kind, tissue_id), kind, tissue_id, resolution)

    def _level_path(self, group: str, names: list[str], what: str, tissue_id: str, resolution: ResolutionLike | None) -> str:
        if resolution is None:
            return f"{group}/{names[0]}"
        name = parse_resolution(resolution).name
        if name not in names:
            raise NotFoundError(f"{self.location}: {what} tissue {tissue_id!r} has no resolution {name}; it has {', '.join(names)}")
        return f"{group}/{name}"

    def content_digest(self, name: str, tissue_id: str, resolution: ResolutionLike) -> str | None:
        """The digest of the pixels of a tissue's image (``name`` a modality) or mask (a mask kind) at ``resolution``.

        As the writer recorded it (:mod:`spora_zarr.write.digest`); ``None`` for a group written without
        digests. ``NotFoundError`` when there is no such group.
        """
        metadata = self._group_metadata(self.group_path(name, validate_tissue_id(tissue_id)), name, tissue_id)
        return metadata.spora.content_digests.get(parse_resolution(resolution).name)

    def changed_since(self, name: str, resolution: ResolutionLike, recorded: Mapping[str, str | None]) -> tuple[list[str], list[str]]:
        """The tissues of ``recorded`` (tissue -> the :meth:`content_digest` a result recorded) whose image or mask
        ``name`` holds other pixels at ``resolution`` now, and those without that group now; the groups' documents
        are read in one pass."""
        with contextlib.suppress(NotFoundError):  # a modality gone: every tissue is missing
            self.read_group_documents(name)
        changed, missing = [], []
        for tissue_id, digest in recorded.items():
            try:
                if self.content_digest(name, tissue_id, resolution) != digest:
                    changed.append(tissue_id)
            except NotFoundError:
                missing.append(tissue_id)
        return changed, missing

    def channel_names(self, modality: str, tissue_id: str) -> list[str]:
        """Channel labels of a tissue image, in stored order."""
        return self.group_metadata(modality, tissue_id).channel_names

    def open_array(self, modality: str, tissue_id: str, resolution: ResolutionLike | None = None) -> zarr.Array[Any]:
        """The zarr array of one image level (no pixels read); ``StoreError`` naming it when its ``zarr.json`` is damaged."""
        return open_array(self.location, self.level_path(modality, tissue_id, resolution))

    def open_mask_array(self, kind: str, tissue_id: str, resolution: ResolutionLike | None = None) -> zarr.Array[Any]:
        """The zarr array of one mask level (no pixels read); ``StoreError`` naming it when its ``zarr.json`` is damaged."""
        return open_array(self.location, self.mask_level_path(kind, tissue_id, resolution))

    def open_image(self, modality: str, tissue_id: str, resolution: ResolutionLike | None = None) -> Any:
        """A level as a lazy ``xarray.DataArray``: dims ``(c, y, x)``, channel names, micron coordinates.

        A z stack has a ``z`` before ``y`` (coordinates in microns from its z scale). A mask kind
        for ``modality`` gives :meth:`open_mask`.
        """
        if self.is_mask_kind(modality):
            return self.open_mask(modality, tissue_id, resolution)
        array = self.open_array(modality, tissue_id, resolution)
        return self._data_array(array, self.group_metadata(modality, tissue_id), modality, tissue_id)

    def open_mask(self, kind: str, tissue_id: str, resolution: ResolutionLike | None = None) -> Any:
        """A mask level as a lazy ``xarray.DataArray``: dims ``(y, x)`` (``z`` first for a stack), micron coordinates."""
        return self._data_array(self.open_mask_array(kind, tissue_id, resolution), self.mask_metadata(kind, tissue_id), kind, tissue_id)

    def _data_array(self, array: zarr.Array[Any], metadata: GroupMetadata, what: str, tissue_id: str) -> Any:
        import dask.array as da
        import xarray as xr

        name = array.path.rsplit("/", 1)[-1]
        level = metadata.level(name)
        mpp, offset = level.mpp, level.offset
        chunks = array.shards or array.chunks
        # Through the zarr engine: damaged chunks and non-regular files are StoreErrors naming the array.
        source = ZarrEngine(self.location, array.path, array)
        data = da.from_array(source, chunks=chunks, name=False, meta=np.empty((0,) * array.ndim, array.dtype))
        coords: dict[str, Any] = {
            "y": offset + mpp * np.arange(array.shape[-2]),
            "x": offset + mpp * np.arange(array.shape[-1]),
        }
        dims: Sequence[str] = metadata.axes
        if len(dims) != array.ndim:
            raise StoreError(f"{self.location.join(array.path)}: {array.ndim} axes but the multiscales names {len(dims)}")
        if "z" in dims:
            coords["z"] = level.scale[dims.index("z")] * np.arange(array.shape[dims.index("z")])
        if "c" in dims:
            coords["c"] = metadata.channel_names
        attrs = {"tissue_id": tissue_id, "modality": what, "resolution": name, "mpp": mpp, "units": "micrometer"}
        return xr.DataArray(data, dims=dims, coords=coords, name=f"{what}/{tissue_id}", attrs=attrs)

    # -- tables ---------------------------------------------------------------------
    def read_table(self, path: str) -> Any:
        """A parquet table of the cohort (same relative path as the TIFF layout) as a ``pyarrow.Table``."""
        return read_table(self.location, path)

    def read_table_metadata(self, path: str) -> Any:
        """The footer of a parquet table of the cohort (``pyarrow.parquet.FileMetaData``: rows, schema), no row read."""
        return read_table_metadata(self.location, path)

    def tables(self) -> list[str]:
        """Relative paths of every parquet table in the store.

        The directories of image and mask groups are not listed (tables never live
        there, and their groups and shard files are most of the store's entries).
        """
        fs = self.location.fs()
        root = self.location.fs_path().rstrip("/")
        groups = {self._directory(name) for name in [*self.modalities, *self.known_mask_kinds]}
        found = []
        for directory, subdirs, files in fs.walk(root, topdown=True):
            relative = directory.strip("/")[len(root.strip("/")) :].strip("/")  # memory:// lists "/x" for "x"
            parts = relative.split("/") if relative else []
            if parts[:1] == [STAGING_DIR]:
                subdirs[:] = []
                continue
            found += [posixpath.join(relative, name) for name in files if name.endswith(".parquet")]
            if parts[-1:] == ["images"] or (len(parts) == 2 and parts[0] == "segmentations"):
                subdirs[:] = []  # a modality's image groups or a mask kind's tissue groups
            else:
                subdirs[:] = [name for name in subdirs if posixpath.join(relative, name) not in groups]
        return sorted(found)


def open_cohort(location: str | Location, storage_options: dict[str, Any] | None = None, *, summaries: bool = True) -> Cohort:
    """Open the cohort store at a local path or fsspec URL (``s3://``, ``https://`` read-only, ``memory://``); reads no pixels.

    ``summaries=False``: read every group's own ``zarr.json`` instead of trusting the directory summaries the
    store's writers keep (:mod:`spora_zarr.store.summary`), as ``validate`` does.

    Logs a warning when a writer is at work on the store: a tissue it
    overwrites may read as a mix of old and new pixels (``docs/store_layout.md``).
    """
    parsed = Location.parse(location, storage_options)
    writer = writer_at_work(parsed)
    if writer is not None:
        log.warning("%s: %s is writing this store; a tissue it overwrites may read as a mix of old and new pixels", parsed, writer)
    return Cohort(parsed, summaries=summaries)
