"""Names and paths of the cohort store and of the spora TIFF layout; no I/O here.

Resolution directories become pyramid levels named by their resolution:
``1.0 <-> "1_0mpp"``, ``0.65 <-> "0_65mpp"`` (:class:`~spora_zarr.access.Resolution`).
Every function that takes a resolution accepts a ``Resolution``, the float or the name.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterable

from ..access.resolution import ResolutionLike, is_level_name, parse_resolution
from ..errors import InvalidInputError

FORMAT_VERSION = "1"
MASK_KINDS = ("tissue_masks", "cell_masks")
PREDICTIONS_DIR = "predictions"
IHC_PREFIX = "ihc_"


def is_resolution_name(name: str) -> bool:
    """Whether ``name`` is a resolution directory name such as ``"1_0mpp"``."""
    return is_level_name(name)


def resolution_value(resolution: ResolutionLike) -> float:
    """Microns per pixel of ``resolution`` (a float, ``"1_0mpp"`` or ``"1.0"``); see :func:`parse_resolution`."""
    return parse_resolution(resolution).mpp


def resolution_name(resolution: ResolutionLike) -> str:
    """The level/directory name of ``resolution``: dots to underscores, at least one decimal."""
    return parse_resolution(resolution).name


RESERVED_NAMES = ("images", "metadata", "segmentations", "tiling")
"""Directories the store layout owns: never the first segment of a modality; ``images`` is no segment of one."""


@functools.lru_cache(maxsize=2**16)
def _segment_problem(segment: str) -> str | None:
    """Why ``segment`` is not safe as one path segment, or ``None`` (cached: a cohort's names are checked again and again)."""
    if not segment:
        return "it is empty"
    if "/" in segment or "\\" in segment:
        return "it contains a path separator"
    if segment in (".", ".."):
        return f"{segment!r} is a relative step, not a name"
    if segment.startswith("."):
        return "it starts with a dot"
    if not segment.isprintable() and any(unicodedata.category(ch).startswith("C") for ch in segment):  # printable: no C*
        return "it contains a control character"
    if segment != segment.strip():
        return "it has leading or trailing whitespace"
    if len(segment.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return f"it is longer than {NAME_MAX} bytes, a file system's limit for one name"
    return None


#: The longest name of a file or folder (bytes, UTF-8) on Linux and macOS file systems.
NAME_MAX = 255


def _invalid(what: str, name: object, reason: str, source: str) -> InvalidInputError:
    where = f"{source}: " if source else ""
    return InvalidInputError(f"{where}invalid {what} {name!r}: {reason}")


def validate_name(name: object, *, what: str = "name", source: str = "") -> str:
    """Return ``name`` if it is safe as one path segment, else raise ``InvalidInputError`` naming ``what`` it is.

    Safe: a non-empty string of at most ``NAME_MAX`` bytes without ``/`` or ``\\``, leading dot (so no ``.``
    or ``..``), control character, or leading or trailing whitespace, and not ``zarr.json``.
    """
    if not isinstance(name, str):
        raise InvalidInputError(f"{source + ': ' if source else ''}{what} must be a string, got {name!r}")
    reason = _segment_problem(name)
    if name == "zarr.json":  # a folder named so would collide with its parent folder's own document
        reason = "'zarr.json' is the name of a zarr document"
    if reason:
        raise _invalid(what, name, reason, source)
    return name


def validate_tissue_id(tissue_id: object, *, source: str = "") -> str:
    """Return ``tissue_id`` if it is safe as one path segment, else raise ``InvalidInputError``."""
    return validate_name(tissue_id, what="tissue id", source=source)


def validate_relative_path(path: object, *, what: str = "path", source: str = "") -> str:
    """Return ``path`` if it names a place inside its folder, else raise ``InvalidInputError``.

    A confined relative path: ``/``-separated segments, each safe as a path
    segment (:func:`validate_name`), so no absolute path, no empty, ``.`` or
    ``..`` segment, no backslash.
    """
    if not isinstance(path, str):
        raise InvalidInputError(f"{source + ': ' if source else ''}{what} must be a string, got {path!r}")
    if not path:
        raise _invalid(what, path, "it is empty", source)
    if path.startswith("/"):
        raise _invalid(what, path, "it is an absolute path; give a path relative to the store", source)
    for segment in path.split("/"):
        reason = _segment_problem(segment)
        if reason:
            raise _invalid(what, path, f"segment {segment!r}: {reason}", source)
    return path


def validate_modality(modality: object, *, source: str = "") -> str:
    """Return ``modality`` if it is a safe modality directory, else raise ``InvalidInputError``.

    A modality is one or more safe segments (``he``, ``ihc/ihc_CD3``,
    ``predictions/<name>``); its first segment is none of
    :data:`RESERVED_NAMES` and no segment is ``images`` (that would place it
    inside another modality's image groups).
    """
    validate_relative_path(modality, what="modality", source=source)
    assert isinstance(modality, str)
    segments = modality.split("/")
    if segments[0] in RESERVED_NAMES:
        raise _invalid("modality", modality, f"{segments[0]!r} is a folder the store layout reserves ({', '.join(RESERVED_NAMES)})", source)
    for reserved in ("images", "zarr.json"):
        if reserved in segments:
            raise _invalid("modality", modality, f"a segment {reserved!r} is reserved (the path would lie inside an image group)", source)
    return modality


def modality_dir(modality: str, marker: str | None = None) -> str:
    """Directory of a modality: ``"imc"``, or ``"ihc/ihc_CD3"`` for an IHC marker; the name is validated (:func:`validate_modality`)."""
    if marker is not None:
        return validate_modality(f"ihc/{IHC_PREFIX}{marker}")
    return validate_modality(modality)


def image_group_path(modality: str, tissue_id: str) -> str:
    """Path of a tissue's multiscale image group inside the store."""
    return f"{modality_dir(modality)}/images/{validate_tissue_id(tissue_id)}"


def label_group_path(kind: str, tissue_id: str, *, extra_kinds: Iterable[str] = ()) -> str:
    """Path of a tissue's mask (NGFF labels) multiscale group inside the store.

    ``extra_kinds`` are further kinds the store records (label predictions,
    ``segmentations/<name>``; the root's ``mask_kinds``).
    """
    validate_name(kind, what="mask kind")
    if kind not in MASK_KINDS and kind not in extra_kinds:
        raise InvalidInputError(f"unknown mask kind {kind!r}; expected one of {', '.join(dict.fromkeys([*MASK_KINDS, *extra_kinds]))}")
    return f"segmentations/{kind}/{validate_tissue_id(tissue_id)}"


def prediction_dir(name: str) -> str:
    """Modality directory of the image predictions called ``name``: ``predictions/<name>`` (images below ``images/``)."""
    return f"{PREDICTIONS_DIR}/{validate_name(name, what='prediction name')}"


def standardization_dir(modality: str, resolution: ResolutionLike, spec: str) -> str:
    """Directory of standardization statistics parquet files (same path as the TIFF layout)."""
    spec = spec.strip("/")
    if spec:
        validate_relative_path(spec, what="standardization spec")
    return f"{modality_dir(modality)}/{resolution_name(resolution)}/standardization/{spec}"


def tile_table_path(resolution: ResolutionLike, size: int, *, strategy: str = "default", table: str = "coordinates") -> str:
    """Path of a tile table: ``tiling/<res>/<strategy>/<size>_tile_<table>.parquet``."""
    validate_name(strategy, what="tiling strategy")
    validate_name(table, what="tile table")
    return f"tiling/{resolution_name(resolution)}/{strategy}/{int(size)}_tile_{table}.parquet"


def channels_table_path(modality: str) -> str:
    """Path of a modality's channel QC table."""
    return f"{modality_dir(modality)}/channels.parquet"


def channels_per_tissue_table_path(modality: str) -> str:
    """Path of a modality's table of channels measured per tissue."""
    return f"{modality_dir(modality)}/channels_per_tissue.parquet"


#: The key of a standardization ``stats.parquet``'s footer metadata: JSON naming its spec, modality, resolution,
#: tissues and the content digests of each tissue's image and mask levels it was computed from.
STANDARDIZATION_META_KEY = b"spora_standardization"
TISSUES_TABLE = "metadata/tissues.parquet"
CELLS_TABLE = "metadata/cells.parquet"
