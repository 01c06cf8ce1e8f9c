"""Check a cohort store: NGFF 0.5 (ome-zarr-models and ngff-zarr's schemas) and the spora rules.

The plain checks work on the parsed ``zarr.json`` documents of the cohort's
metadata index (read once, concurrently) and open no zarr node; the schema
libraries run once per distinct document shape (:mod:`.schemas`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, NotFoundError, SporaZarrError
from ..store.layout import is_resolution_name, resolution_value, validate_tissue_id
from ..store.location import Location
from ..store.summary import summary_problems
from .cohort import Cohort, open_cohort
from .schemas import schema_problems

if TYPE_CHECKING:
    from zarr.core.metadata.v3 import ArrayV3Metadata


def validate_store(location: str | Location, storage_options: dict[str, Any] | None = None, *, deep: bool = False) -> list[str]:
    """Every problem found in the store, one line each; an empty list means valid.

    The plain checks read metadata only. ``deep`` also reads every shard once
    (chunks decode, missing shards where the pyramid shows data) and checks
    that the tables and masks match the images (:mod:`.integrity`).
    """
    try:
        cohort = open_cohort(location, storage_options, summaries=False)
    except SporaZarrError as exc:
        return [str(exc)]
    problems: list[str] = []
    groups = [(m, t) for m in cohort.modalities for t in cohort.tissues(m)]
    groups += [(k, t) for k in cohort.known_mask_kinds for t in cohort.mask_tissues(k)]
    for modality, tissue_id in groups:
        found = _guarded(validate_group, cohort, modality, tissue_id)
        problems += [f"{cohort.group_path(modality, tissue_id)}: {p}" for p in found]
    imaged = {m: set(cohort.tissues(m)) for m in cohort.modalities}
    for kind in cohort.known_mask_kinds:
        for tissue_id in cohort.mask_tissues(kind):
            found = _guarded(_mask_matches_images, cohort, kind, tissue_id, imaged)
            problems += [f"{cohort.group_path(kind, tissue_id)}: {p}" for p in found]
    problems += [f"root attributes: {p}" for p in _guarded(_root_matches_groups, cohort)]
    problems += _guarded(summary_problems, cohort.location, cohort.documents)  # from the documents read above
    if deep:
        from .integrity import deep_problems

        problems += deep_problems(cohort)
    return problems


def _root_matches_groups(cohort: Cohort) -> list[str]:
    """The root's modalities and levels must be those of the image groups on disk.

    Every modality directory holding images is listed; every source level of
    a tissue image is listed for its modality; every listed level is a level
    of some tissue of the modality.
    """
    problems = []
    for modality in _image_modalities_on_disk(cohort):
        if modality not in cohort.attributes.modalities:
            problems.append(f"modality {modality} has images on disk but is not listed (open_cohort would not see it)")
    for modality, listed in cohort.attributes.modalities.items():
        tissues = cohort.tissues(modality)
        levels = {t: cohort.group_metadata(modality, t) for t in tissues}
        for tissue_id, metadata in levels.items():
            for name in metadata.spora.source_levels:
                if name not in listed:
                    problems.append(f"{modality} tissue {tissue_id!r} has source level {name}, which is not listed for {modality}")
        for name in listed:
            if tissues and not any(name in metadata.level_names for metadata in levels.values()):
                problems.append(f"{modality} lists level {name}, but no tissue of {modality} has it")
    return problems


def _image_modalities_on_disk(cohort: Cohort) -> list[str]:
    """Modality directories (``he``, ``ihc/ihc_CD3``) with at least one complete image group."""
    fs = cohort.location.fs()
    found = []

    def children(path: str) -> list[str]:
        try:
            entries = fs.ls(cohort.location.fs_path(path), detail=False)
        except (FileNotFoundError, OSError):
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]

    candidates = [n for n in children("") if not n.startswith(".") and n not in ("zarr.json", "metadata", "segmentations", "tiling")]
    candidates += [f"ihc/{n}" for n in children("ihc") if n != "zarr.json"]
    for modality in candidates:
        if cohort.listing(f"{modality}/images"):
            found.append(modality)
    return sorted(found)


def _guarded(check: Any, *args: Any) -> list[str]:
    """Run one check; a group too broken to check is itself a problem."""
    try:
        return list(check(*args))
    except Exception as exc:  # a broken group must be reported, not stop the validation
        return [f"cannot be checked: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]


def validate_group(cohort: Cohort, modality: str, tissue_id: str) -> list[str]:
    """Problems of one image or label group."""
    problems = []
    labels = cohort.is_mask_kind(modality)
    try:
        validate_tissue_id(tissue_id)
    except InvalidInputError as exc:
        problems.append(str(exc))
    metadata = cohort.group_metadata(modality, tissue_id)
    arrays = _level_metadata(cohort, modality, tissue_id, metadata.level_names)
    problems += schema_problems(cohort.group_attributes(modality, tissue_id), arrays, labels=labels)
    previous = None
    z_axis = metadata.axes.index("z") if "z" in metadata.axes else None
    planes: tuple[int, float] | None = None  # a stack's depth and z scale, the same at every level
    for level in metadata.levels:
        name = level.name
        if not is_resolution_name(name):
            problems.append(f"level {name!r} is not named by its resolution")
            continue
        expected = resolution_value(name)
        if len(level.scale) < 2 or any(abs(s - expected) > 1e-9 for s in level.scale[-2:]):
            problems.append(f"level {name} has scale {list(level.scale)}, expected {expected} micrometer on y/x")
        array = arrays[name]
        if not array.dimension_names:
            problems.append(f"level {name} has no dimension_names")
        if previous is not None and any(a > b for a, b in zip(array.shape[-2:], previous)):
            problems.append(f"level {name} {array.shape} is larger than the level before it {previous}")
        previous = array.shape[-2:]
        if z_axis is not None and len(level.scale) == array.ndim == len(metadata.axes):
            here = (int(array.shape[z_axis]), float(level.scale[z_axis]))
            if planes is not None and here != planes:
                problems.append(f"level {name} has {here[0]} planes {here[1]} micrometer apart, the finest level {planes[0]} x {planes[1]}")
            planes = planes or here
    axes = metadata.ome.multiscales[0].axes
    if any(axis.type == "space" and axis.unit != "micrometer" for axis in axes):
        problems.append("spatial axes must have unit 'micrometer'")
    if not labels:
        channels = arrays[metadata.level_names[0]].shape[0]
        if len(metadata.channels) != channels:
            problems.append(f"omero metadata must list {channels} channels")
        else:
            for i, channel in enumerate(metadata.channels):
                fields = (("label", channel.label), ("color", channel.color), ("window", channel.window))
                missing = [key for key, value in fields if not value]
                if missing:
                    problems.append(f"omero channel {i} lacks {', '.join(missing)}")
    return problems


def _mask_matches_images(cohort: Cohort, kind: str, tissue_id: str, imaged: dict[str, set[str]]) -> list[str]:
    """A mask level must have the shape of every image level of the same name (without its channel axis: ``(z,) y, x``).

    ``imaged`` maps each modality to its tissues.
    """
    problems = []
    mask_levels = _level_shapes(cohort, kind, tissue_id)
    for modality in cohort.modalities:
        if tissue_id not in imaged[modality]:
            continue
        for name, shape in _level_shapes(cohort, modality, tissue_id).items():
            if name in mask_levels and shape[1:] != mask_levels[name]:
                image = cohort.group_path(modality, tissue_id)
                problems.append(f"level {name} shape {mask_levels[name]} does not match {image} {shape[1:]}")
    return problems


def _level_shapes(cohort: Cohort, modality: str, tissue_id: str) -> dict[str, tuple[int, ...]]:
    """Shape of every level array a group's multiscales names (missing ones left out)."""
    shapes = {}
    for name in cohort.resolutions(modality, tissue_id):
        try:
            shapes[name] = tuple(cohort.level_metadata(modality, tissue_id, name).shape)
        except NotFoundError:
            continue
    return shapes


def _level_metadata(cohort: Cohort, modality: str, tissue_id: str, names: list[str]) -> dict[str, ArrayV3Metadata]:
    """The checked ``zarr.json`` of each level array (:meth:`Cohort.level_metadata`: regular files, bounded sizes and shapes).

    A level that is missing, a group, or hostile makes the group uncheckable (one line).
    """
    return {name: cohort.level_metadata(modality, tissue_id, name) for name in names}
