"""Scan a spora TIFF cohort into a plan: one task per tissue image of a modality and per mask.

The cohort is checked first (tables, tissue ids, directory names); a problem
there stops the run before anything is written (``docs/tiff_layout.md``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..access.resolution import is_level_name, parse_resolution
from ..errors import InvalidInputError, reason
from ..sources import RASTER_SUFFIXES, TIFF_SUFFIXES
from ..store.guard import unreadable_reason
from ..store.layout import (
    IHC_PREFIX,
    MASK_KINDS,
    TISSUES_TABLE,
    channels_per_tissue_table_path,
    channels_table_path,
    image_group_path,
    label_group_path,
    validate_modality,
    validate_tissue_id,
)
from ..store.location import Location

log = logging.getLogger("spora_zarr")

RESERVED_TOP = ("metadata", "segmentations", "tiling")
LAYOUT_IMAGES = "<modality>/<res>/images/<tissue_id>.tif (or segmentations/<res>/<tissue_masks|cell_masks>/<tissue_id>.tif)"


@dataclass(frozen=True)
class ImageTask:
    """One tissue image of one modality: its source file per resolution."""

    modality: str
    tissue_id: str
    files: tuple[tuple[float, str], ...]
    channel_names: tuple[str, ...] | None = None
    panel: tuple[str, ...] | None = None

    @property
    def path(self) -> str:
        return image_group_path(self.modality, self.tissue_id)

    @property
    def label(self) -> str:
        return f"{self.modality} {self.tissue_id}"


@dataclass(frozen=True)
class MaskTask:
    """One tissue mask of one kind, with the images whose shape it must match."""

    kind: str
    tissue_id: str
    files: tuple[tuple[float, str], ...]
    images: tuple[tuple[float, str], ...] = ()
    source_image: str | None = None

    @property
    def path(self) -> str:
        return label_group_path(self.kind, self.tissue_id)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.tissue_id}"


Task = ImageTask | MaskTask


@dataclass
class CohortPlan:
    """Everything a conversion will do, found by scanning the source cohort."""

    source: Location
    tissue_ids: list[str]
    tasks: list[Task]
    tables: list[str]
    modalities: dict[str, list[str]]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def scan_cohort(source: Location | str, storage_options: dict[str, Any] | None = None) -> CohortPlan:
    """Scan a spora TIFF cohort and check it; raise ``InvalidInputError`` on a cohort-level problem."""
    src = Location.parse(source, storage_options)
    fs = src.fs()
    if not fs.isdir(src.fs_path()):
        raise InvalidInputError(f"{src}: source cohort directory not found")
    if fs.exists(src.fs_path("zarr.json")):
        raise InvalidInputError(f"{src}: this is a zarr store (it has a zarr.json), not a spora TIFF cohort; nothing to convert")
    tissue_ids = _read_tissue_ids(src)
    known = set(tissue_ids)
    files, skipped = _list_files(src)
    tables = sorted(f for f in files if f.endswith(".parquet") and ".zarr/" not in f)
    for rel in tables:
        why = unreadable_reason(src, rel)
        if why:
            raise InvalidInputError(f"{src.join(rel)}: {why}")

    images: dict[tuple[str, str], dict[float, str]] = {}
    masks: dict[tuple[str, str], dict[float, str]] = {}
    for rel in files:
        parts = rel.split("/")
        found = _classify(src, rel, parts)
        if found is not None and not isinstance(found, str):
            found = unreadable_reason(src, rel) or found
        if found is None:
            continue
        if isinstance(found, str):
            skipped.append((src.join(rel), found))
            continue
        group, key_name, res, tissue_id = found
        validate_tissue_id(tissue_id, source=src.join(rel))
        if tissue_id not in known:
            raise InvalidInputError(f"{src.join(rel)}: tissue {tissue_id!r} is not listed in {TISSUES_TABLE}")
        target = masks if group == "mask" else images
        per_res = target.setdefault((key_name, tissue_id), {})
        mpp = parse_resolution(res).mpp
        if mpp in per_res:
            raise InvalidInputError(f"{src.join(rel)}: duplicate tissue id {tissue_id!r} (also {per_res[mpp]})")
        per_res[mpp] = src.join(rel)

    channel_tables = {m: _read_channels_per_tissue(src, m) for m in {m for m, _ in images}}
    panels = {m: _read_panel(src, m) for m in channel_tables}
    tasks: list[Task] = []
    for (modality, tissue_id), per_res in sorted(images.items()):
        table = channel_tables[modality]
        names = tuple(table.get(tissue_id, [])) if table is not None else None
        tasks.append(ImageTask(modality, tissue_id, tuple(sorted(per_res.items())), names, panels[modality]))
    for (kind, tissue_id), per_res in sorted(masks.items()):
        related = tuple(
            sorted((mpp, path) for (m, t), res in images.items() if t == tissue_id for mpp, path in res.items() if mpp in per_res)
        )
        # NGFF: the image a label points to MUST have its levels, so the image's resolutions must be the mask's
        matching = (m for (m, t), res in sorted(images.items()) if t == tissue_id and set(res) == set(per_res))
        source_image = next((f"../../../{image_group_path(m, tissue_id)}" for m in matching), None)
        tasks.append(MaskTask(kind, tissue_id, tuple(sorted(per_res.items())), related, source_image))
    modalities: dict[str, list[str]] = {}
    for (modality, _), per_res in images.items():
        modalities.setdefault(modality, [])
        modalities[modality] = sorted({*modalities[modality], *(parse_resolution(mpp).name for mpp in per_res)}, key=parse_resolution)
    for path, why in skipped:
        log.warning("%s: skipped: %s", path, why)
    if not tasks:
        found = f"; {len(skipped)} image file(s) skipped (listed above)" if skipped else ""
        raise InvalidInputError(f"{src}: nothing to convert: no image found at {LAYOUT_IMAGES}{found}")
    return CohortPlan(src, tissue_ids, tasks, tables, dict(sorted(modalities.items())), skipped)


def _list_files(src: Location) -> tuple[list[str], list[tuple[str, str]]]:
    """All files below the source root (a legacy ``.zarr`` array counts as one file), relative paths; and the folders
    skipped, with why: links to folders, whose files are not listed."""
    fs = src.fs()
    root = src.fs_path()
    found = set()
    linked: list[tuple[str, str]] = []
    for path in fs.find(root, withdirs=True):
        rel = path[len(root) :].strip("/")
        if not rel or any(p.startswith(".") for p in rel.split("/")):
            continue
        if ".zarr/" in rel + "/":
            head = rel[: rel.index(".zarr") + len(".zarr")]
            found.add(head)
            continue
        if not fs.isdir(path):
            found.add(rel)
        elif src.is_local and os.path.islink(path):  # fsspec lists it and does not descend into it
            linked.append((src.join(rel), f"a symbolic link to a folder ({os.readlink(path)}); links to folders are not followed"))
    return sorted(found), linked


def _classify(src: Location, rel: str, parts: list[str]) -> tuple[str, str, str, str] | str | None:
    """``("image"|"mask", modality or kind, resolution name, tissue id)`` for an image file of the layout.

    ``None`` for a file that is not an image; the reason, for an image file
    outside the layout (skipped, and said so).
    """
    name = parts[-1]
    lower = name.lower()
    is_image = lower.endswith((*TIFF_SUFFIXES, *RASTER_SUFFIXES, ".zarr"))
    if not is_image:
        return None
    tissue_id = name[: name.rfind(".")] if not lower.endswith(".zarr") else name[: -len(".zarr")]
    where = src.join(rel)
    if parts[0] == "segmentations":
        if len(parts) == 4 and parts[2] in MASK_KINDS:
            _check_resolution_dir(parts[1], src.join(*parts[:2]))
            return "mask", parts[2], parts[1], tissue_id
        raise InvalidInputError(f"{where}: masks belong in segmentations/<res>/{{{','.join(MASK_KINDS)}}}/<tissue_id>.tif")
    if parts[0] in RESERVED_TOP:
        return f"image files under {parts[0]}/ are not part of the layout"
    modality_parts = parts[:2] if parts[0] == "ihc" and len(parts) > 1 and parts[1].startswith(IHC_PREFIX) else parts[:1]
    rest = parts[len(modality_parts) :]
    modality = "/".join(modality_parts)
    if (len(rest) == 3 and rest[1] == "images") or (len(rest) == 2 and lower.endswith(".zarr")):
        validate_modality(modality, source=where)
        _check_resolution_dir(rest[0], src.join(modality, rest[0]))
        return "image", modality, rest[0], tissue_id
    if "images" in rest:
        raise InvalidInputError(f"{where}: images belong in <modality>/<res>/images/<tissue_id>.tif")
    return f"not in the layout: images belong in {LAYOUT_IMAGES}"


def _check_resolution_dir(name: str, where: str) -> None:
    if not is_level_name(name):
        raise InvalidInputError(f"{where}: {name!r} is not a resolution directory name (expected e.g. '1_0mpp' or '0_65mpp')")


def read_table(src: Location, rel: str) -> Any:
    import pyarrow.parquet as pq

    why = unreadable_reason(src, rel) if src.fs().exists(src.fs_path(rel)) else None
    if why:
        raise InvalidInputError(f"{src.join(rel)}: {why}")
    try:
        with src.fs().open(src.fs_path(rel), "rb") as handle:
            return pq.read_table(handle)
    except FileNotFoundError:
        raise InvalidInputError(f"{src.join(rel)}: required table is missing") from None
    except Exception as exc:
        raise InvalidInputError(f"{src.join(rel)}: unreadable parquet table ({reason(exc)})") from None


def _read_tissue_ids(src: Location) -> list[str]:
    table = read_table(src, TISSUES_TABLE)
    where = src.join(TISSUES_TABLE)
    if "tissue_id" not in table.column_names:
        raise InvalidInputError(f"{where}: no 'tissue_id' column (columns: {', '.join(table.column_names)})")
    ids: list[str] = table.column("tissue_id").to_pylist()
    seen: set[str] = set()
    for tissue_id in ids:
        validate_tissue_id(tissue_id, source=where)
        if tissue_id in seen:
            raise InvalidInputError(f"{where}: duplicate tissue id {tissue_id!r}")
        seen.add(tissue_id)
    return ids


def _read_panel(src: Location, modality: str) -> tuple[str, ...] | None:
    """The channel names of a modality's ``channels.parquet`` in table order, or ``None`` without one."""
    rel = channels_table_path(modality)
    if not src.fs().exists(src.fs_path(rel)):
        return None
    table = read_table(src, rel)
    if "channel_name" not in table.column_names:
        raise InvalidInputError(f"{src.join(rel)}: no 'channel_name' column (columns: {', '.join(table.column_names)})")
    return tuple(map(str, table.column("channel_name").to_pylist()))


def _read_channels_per_tissue(src: Location, modality: str) -> dict[str, list[str]] | None:
    rel = channels_per_tissue_table_path(modality)
    if not src.fs().exists(src.fs_path(rel)):
        return None
    table = read_table(src, rel)
    missing = {"tissue_id", "channel_name"} - set(table.column_names)
    if missing:
        raise InvalidInputError(f"{src.join(rel)}: missing column(s) {', '.join(sorted(missing))}")
    per_tissue: dict[str, list[str]] = {}
    for tissue_id, channel in zip(table.column("tissue_id").to_pylist(), table.column("channel_name").to_pylist()):
        per_tissue.setdefault(tissue_id, []).append(channel)
    return per_tissue
