"""The NGFF schema checks of one image or label group, run once per distinct document shape.

``validate`` checks every group with ome-zarr-models (the ``Image`` or
``ImageLabel`` group model over the group's attributes and its level arrays)
and with ngff-zarr's JSON schemas. Run per group they cost milliseconds each
(ome-zarr-models builds a pydantic class per level per call), yet the groups of
a cohort differ only in a few per-tissue values: the multiscales ``name``, the
``omero`` channel labels, colours and windows, the label colours and source
image, the ``spora`` attributes, and the array shapes. :func:`schema_problems` checks
those values here, against what the schemas ask of them, replaces them by
fixed values of the same kind (the *shape* of the document), and runs both
libraries once per distinct shape. A value that is not plainly what the
schemas accept leaves the document as it is, so the libraries check the real
document and report in their own words, as they did for every group before.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store.metadata import validate_ngff

if TYPE_CHECKING:
    from zarr.core.metadata.v3 import ArrayV3Metadata

__all__ = ["ngff_validator", "schema_problems"]

_MAX_SHAPES = 1024
_CHECKED: dict[str, tuple[str, ...]] = {}  # document shape (JSON) -> the problems both libraries find in it
_HEX_COLOR = re.compile(r"[0-9a-fA-F]{6}")
_WINDOW_KEYS = {"min", "max", "start", "end"}
_NGFF_URI = "https://ngff.openmicroscopy.org"


def schema_problems(attributes: Mapping[str, Any], arrays: Mapping[str, ArrayV3Metadata], *, labels: bool) -> list[str]:
    """What ome-zarr-models and ``ngff_zarr.validate`` find wrong in a group, one line each.

    ``attributes`` are the group's attributes as stored, ``arrays`` the checked
    metadata of each level array the multiscales names (by path).
    """
    document = {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes), "members": _members(arrays)}
    shape = _shape(document)
    if shape is None:
        return _problems(document, labels)
    key = json.dumps([labels, shape], sort_keys=True)
    if key not in _CHECKED:
        if len(_CHECKED) >= _MAX_SHAPES:
            _CHECKED.clear()
        _CHECKED[key] = tuple(_problems(shape, labels))
    return list(_CHECKED[key])


def _problems(document: Mapping[str, Any], labels: bool) -> list[str]:
    """Run both libraries on one group document (attributes and level arrays)."""
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    problems = []
    try:  # what ``Image.from_zarr`` and ``ImageLabel.from_zarr`` check, on the documents instead of zarr nodes
        image = validate_ngff(Image, document)
        if labels:
            validate_ngff(ImageLabel, {"attributes": image.attributes.model_dump(), "members": image.members})
    except Exception as exc:  # noqa: BLE001 - a library's finding, reported as a line
        problems.append(f"ome-zarr-models: {_first_line(exc)}")
    try:
        ngff_validator("label" if labels else "image").validate(document["attributes"])
    except Exception as exc:  # noqa: BLE001
        problems.append(f"ngff_zarr.validate: {_first_line(exc)}")
    return problems


@functools.cache
def ngff_validator(model: str) -> Any:
    """The JSON-schema validator ``ngff_zarr.validate(..., version="0.5", model=model)`` uses, without importing ngff_zarr.

    The schemas are the ones ngff-zarr bundles (``spec/0.5/schemas``), found
    without running the package (its ``__init__`` loads dask, scikit-image and
    xarray, seconds of start-up for ``spora-zarr validate``); every schema of the
    folder is registered under its ``$id`` as ngff-zarr does, so cross-file
    references resolve offline.
    """
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    spec = importlib.util.find_spec("ngff_zarr")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("ngff-zarr is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "spec" / "0.5" / "schemas"
    resources = []
    for path in sorted(folder.glob("*.schema")):
        contents = json.loads(path.read_text())
        resources.append((contents.get("$id", _NGFF_URI), Resource.from_contents(contents, default_specification=DRAFT202012)))
    schema = json.loads((folder / f"{model}.schema").read_text())
    return Draft202012Validator(schema, registry=Registry().with_resources(resources))


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_ARRAY_FIELDS = (
    "zarr_format",
    "node_type",
    "attributes",
    "shape",
    "data_type",
    "chunk_grid",
    "chunk_key_encoding",
    "fill_value",
    "codecs",
    "storage_transformers",
    "dimension_names",
)


def _members(arrays: Mapping[str, ArrayV3Metadata]) -> dict[str, Any]:
    """The level arrays as the group models take them (the fields of zarr's dict of each array's metadata)."""
    members = {}
    for path, metadata in arrays.items():
        fields = metadata.to_dict()
        members[path] = {key: fields.get(key) for key in _ARRAY_FIELDS}
    return members


def _shape(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """``document`` with its per-tissue values replaced by fixed ones; ``None`` when one is not plainly valid."""
    attributes = document["attributes"]
    ome = attributes.get("ome")
    if not isinstance(ome, Mapping) or not isinstance(ome.get("multiscales"), list):
        return None
    shaped_ome = dict(ome)
    if len(ome["multiscales"]) != 1:
        return None  # the schema wants distinct multiscales: names may be what tells them apart
    multiscales = []
    for multiscale in ome["multiscales"]:
        if not isinstance(multiscale, Mapping):
            return None
        if "name" in multiscale:
            if not isinstance(multiscale["name"], str):
                return None
            multiscale = {**multiscale, "name": "name"}
        multiscales.append(multiscale)
    shaped_ome["multiscales"] = multiscales
    if "omero" in ome:
        omero = _omero_shape(ome["omero"])
        if omero is None:
            return None
        shaped_ome["omero"] = omero
    if "image-label" in ome:
        label = _label_shape(ome["image-label"])
        if label is None:
            return None
        shaped_ome["image-label"] = label
    shaped = {**attributes, "ome": shaped_ome}
    if "spora" in shaped:
        shaped["spora"] = {}  # ours: no NGFF schema looks at it; SporaGroupAttributes checks it
    members = {}
    for path, array in document["members"].items():
        ndim = len(array["shape"])
        grid = {**array["chunk_grid"], "configuration": {**array["chunk_grid"]["configuration"], "chunk_shape": [1] * ndim}}
        codecs = [_unsharded(codec, ndim) for codec in array["codecs"]]
        members[path] = {**array, "shape": [1] * ndim, "chunk_grid": grid, "codecs": codecs}
    return {**document, "attributes": shaped, "members": members}


def _unsharded(codec: Any, ndim: int) -> Any:
    """A sharding codec with its inner chunk shape fixed (zarr checked the real one)."""
    if isinstance(codec, Mapping) and codec.get("name") == "sharding_indexed":
        configuration = codec.get("configuration") or {}
        return {**codec, "configuration": {**configuration, "chunk_shape": [1] * ndim}}
    return codec


def _omero_shape(omero: Any) -> dict[str, Any] | None:
    """``omero`` with each channel's label, colour and window fixed, when each is plainly valid."""
    if not isinstance(omero, Mapping) or not isinstance(omero.get("channels"), list):
        return None
    channels = []
    for channel in omero["channels"]:
        if not isinstance(channel, Mapping):
            return None
        shaped = dict(channel)
        if "label" in channel:
            if not isinstance(channel["label"], str):
                return None
            shaped["label"] = "label"
        if "color" in channel:
            if not isinstance(channel["color"], str) or not _HEX_COLOR.fullmatch(channel["color"]):
                return None
            shaped["color"] = "FFFFFF"
        if "window" in channel:
            window = channel["window"]
            if not isinstance(window, Mapping) or set(window) != _WINDOW_KEYS or not all(_number(v) for v in window.values()):
                return None
            shaped["window"] = {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
        channels.append(shaped)
    return {**omero, "channels": channels}


def _label_shape(label: Any) -> dict[str, Any] | None:
    """``image-label`` with its source image fixed and its colours cut to one fixed entry, when every entry is plainly
    valid and unique."""
    if not isinstance(label, Mapping) or "properties" in label:
        return None
    shaped = dict(label)
    if "source" in label:
        source = label["source"]
        if not isinstance(source, Mapping) or not isinstance(source.get("image", ""), str):
            return None
        shaped["source"] = {**source, "image": "image"} if "image" in source else dict(source)
    colors = label.get("colors")
    if colors is None:
        return shaped
    if not isinstance(colors, list) or not colors:
        return None
    values = set()
    for color in colors:
        if not isinstance(color, Mapping) or set(color) != {"label-value", "rgba"}:
            return None
        value, rgba = color["label-value"], color["rgba"]
        if type(value) is not int or value in values:
            return None
        if not isinstance(rgba, list) or len(rgba) != 4 or not all(type(c) is int and 0 <= c <= 255 for c in rgba):
            return None
        values.add(value)
    return {**shaped, "colors": [{"label-value": 1, "rgba": [255, 255, 255, 255]}]}


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)
