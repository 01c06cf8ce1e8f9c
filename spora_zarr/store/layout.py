"""Names and paths of the cohort store and of the spora TIFF layout; no I/O here.

Resolution directories become pyramid levels named by their resolution:
``1.0 <-> "1_0mpp"``, ``0.65 <-> "0_65mpp"``. Every function that takes a
resolution accepts the float or the name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from ..errors import InvalidInputError

Resolution = float | int | str

FORMAT_VERSION = "1"
MASK_KINDS = ("tissue_masks", "cell_masks")
PREDICTIONS_DIR = "predictions"
IHC_PREFIX = "ihc_"
_RESOLUTION_NAME = re.compile(r"^(\d+)_(\d+)mpp$")


def is_resolution_name(name: str) -> bool:
    """Whether ``name`` is a resolution directory name such as ``"1_0mpp"``."""
    return bool(_RESOLUTION_NAME.match(name))


def resolution_value(resolution: Resolution) -> float:
    """Microns per pixel of ``resolution`` (a float, ``"1_0mpp"`` or ``"1.0"``)."""
    if isinstance(resolution, bool):
        raise InvalidInputError(f"resolution must be a number or a name like '1_0mpp', got {resolution!r}")
    if isinstance(resolution, (int, float)):
        value = float(resolution)
    else:
        text = str(resolution).strip()
        match = _RESOLUTION_NAME.match(text)
        if match:
            value = float(f"{match.group(1)}.{match.group(2)}")
        else:
            try:
                if "_" in text:  # float() reads "1_0" as 10.0
                    raise ValueError(text)
                value = float(text)
            except ValueError:
                raise InvalidInputError(
                    f"{resolution!r} is not a resolution: expected microns per pixel "
                    "as a number (1.0) or a name like '1_0mpp' or '0_65mpp'"
                ) from None
    if not value > 0 or value != value or value == float("inf"):
        raise InvalidInputError(f"resolution must be a positive number of microns per pixel, got {resolution!r}")
    return value


def resolution_name(resolution: Resolution) -> str:
    """The level/directory name of ``resolution``: dots to underscores, at least one decimal."""
    text = f"{resolution_value(resolution):.6f}".rstrip("0")
    if text.endswith("."):
        text += "0"
    return text.replace(".", "_") + "mpp"


def validate_tissue_id(tissue_id: object, *, source: str = "") -> str:
    """Return ``tissue_id`` if it is safe as one path segment, else raise ``InvalidInputError``."""
    where = f"{source}: " if source else ""
    if not isinstance(tissue_id, str):
        raise InvalidInputError(f"{where}tissue id must be a string, got {tissue_id!r}")
    reason = None
    if not tissue_id:
        reason = "it is empty"
    elif "/" in tissue_id or "\\" in tissue_id:
        reason = "it contains a path separator"
    elif tissue_id.startswith("."):
        reason = "it starts with a dot"
    elif any(unicodedata.category(ch).startswith("C") for ch in tissue_id):
        reason = "it contains a control character"
    elif tissue_id != tissue_id.strip():
        reason = "it has leading or trailing whitespace"
    if reason:
        raise InvalidInputError(f"{where}invalid tissue id {tissue_id!r}: {reason}")
    return tissue_id


def modality_dir(modality: str, marker: str | None = None) -> str:
    """Directory of a modality: ``"imc"``, or ``"ihc/ihc_CD3"`` for an IHC marker."""
    if marker is not None:
        return f"ihc/{IHC_PREFIX}{marker}"
    return modality.strip("/")


def image_group_path(modality: str, tissue_id: str) -> str:
    """Path of a tissue's multiscale image group inside the store."""
    return f"{modality_dir(modality)}/images/{validate_tissue_id(tissue_id)}"


def label_group_path(kind: str, tissue_id: str, *, extra_kinds: Iterable[str] = ()) -> str:
    """Path of a tissue's mask (NGFF labels) multiscale group inside the store.

    ``extra_kinds`` are further kinds the store records (label predictions,
    ``segmentations/<name>``; the root's ``mask_kinds``).
    """
    if kind not in MASK_KINDS and kind not in extra_kinds:
        raise InvalidInputError(f"unknown mask kind {kind!r}; expected one of {', '.join(dict.fromkeys([*MASK_KINDS, *extra_kinds]))}")
    return f"segmentations/{kind}/{validate_tissue_id(tissue_id)}"


def prediction_dir(name: str) -> str:
    """Modality directory of the image predictions called ``name``: ``predictions/<name>`` (images below ``images/``)."""
    return f"{PREDICTIONS_DIR}/{validate_tissue_id(name, source='prediction name')}"


def standardization_dir(modality: str, resolution: Resolution, spec: str) -> str:
    """Directory of standardization statistics parquet files (same path as the TIFF layout)."""
    return f"{modality_dir(modality)}/{resolution_name(resolution)}/standardization/{spec.strip('/')}"


def tile_table_path(resolution: Resolution, size: int, *, strategy: str = "default", table: str = "coordinates") -> str:
    """Path of a tile table: ``tiling/<res>/<strategy>/<size>_tile_<table>.parquet``."""
    return f"tiling/{resolution_name(resolution)}/{strategy}/{int(size)}_tile_{table}.parquet"


def channels_table_path(modality: str) -> str:
    """Path of a modality's channel QC table."""
    return f"{modality_dir(modality)}/channels.parquet"


def channels_per_tissue_table_path(modality: str) -> str:
    """Path of a modality's table of channels measured per tissue."""
    return f"{modality_dir(modality)}/channels_per_tissue.parquet"


TISSUES_TABLE = "metadata/tissues.parquet"
CELLS_TABLE = "metadata/cells.parquet"
