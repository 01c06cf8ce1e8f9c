"""NGFF 0.5 attributes of image and label groups, and the spora attributes beside them.

The multiscales model is the one ``ngff_zarr.to_multiscales`` defines for the
levels computed from the coarsest source resolution (axes, scale and
translation of each level); finer source resolutions are prepended with their
own scale. Level paths are renamed to resolution names (``1_0mpp``). ``type``
and ``metadata`` name the levels the writer computed and how (``type`` is
``"none"`` where every level is the source's own). A z stack
has axes ``c, z, y, x`` (labels ``z, y, x``) and keeps its planes at every
level (scale factors 1 on z, 2, 4, ... on y and x).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..store.metadata import GroupMetadata, SporaGroupAttributes
from .pyramid import SHRINK, Level, Method

NGFF_VERSION = "0.5"
RGB_COLORS = ("FF0000", "00FF00", "0000FF")
PALETTE = ("0000FF", "00FF00", "FF00FF", "FFFF00", "00FFFF", "FF0000", "FF8000", "8000FF", "80FF00", "FF0080", "0080FF", "FFFFFF")


def multiscales_metadata(levels: Sequence[Level], *, name: str, method: Method, labels: bool, z_mpp: float | None = None) -> dict[str, Any]:
    """The ``multiscales[0]`` entry for ``levels`` as ``ngff_zarr.to_multiscales`` models it (with a z axis of ``z_mpp`` when given).

    Computed here, once per layout (levels, method, axes): each computed level
    doubles the scale of the level above it and shifts its origin by half a
    pixel of that level (ngff-zarr's ``_next_scale_metadata``); the finer source
    levels keep their own scale. ``tests/test_ngff_metadata.py`` checks it
    against ``ngff_zarr.to_multiscales`` for a range of shapes.
    """
    entry: dict[str, Any] = json.loads(_multiscales_layout(tuple(levels), method, labels, z_mpp))
    entry["name"] = name
    return entry


@functools.lru_cache(maxsize=256)
def _multiscales_layout(levels: tuple[Level, ...], method: Method, labels: bool, z_mpp: float | None) -> str:
    """The multiscales entry without its ``name``, as JSON (a cached layout is copied for each group)."""
    dims: tuple[str, ...] = ("y", "x") if labels else ("c", "y", "x")
    if z_mpp is not None:
        dims = (*dims[:-2], "z", "y", "x")
    axes = [{"name": d, "type": "channel"} if d == "c" else {"name": d, "type": "space", "unit": "micrometer"} for d in dims]
    source_levels = [level for level in levels if level.from_source]
    computed = levels[len(source_levels) :]
    datasets = [
        {
            "path": level.name,
            "coordinateTransformations": [
                {"type": "scale", "scale": _scale(level.mpp, labels, z_mpp)},
                {"type": "translation", "translation": [0.0] * len(dims)},
            ],
        }
        for level in source_levels[:-1]
    ]
    base = source_levels[-1]
    scale = {d: 1.0 if d == "c" else (z_mpp if d == "z" and z_mpp is not None else base.mpp) for d in dims}
    translation = dict.fromkeys(dims, 0.0)
    for level in [base, *computed]:
        if level is not base:  # ngff-zarr's next level: twice the scale, origin half a pixel of the level above further
            for d in ("y", "x"):
                translation[d] = translation[d] + 0.5 * (2 - 1) * scale[d]
                scale[d] = scale[d] * 2
        datasets.append(
            {
                "path": level.name,
                "coordinateTransformations": [
                    {"scale": [scale[d] for d in dims], "type": "scale"},
                    {"translation": [translation[d] for d in dims], "type": "translation"},
                ],
            }
        )
    kind, metadata = _downsampling([level.name for level in computed], method)
    return json.dumps({"axes": axes, "datasets": datasets, "name": "", "type": kind, "metadata": metadata})


def _downsampling(names: list[str], method: Method) -> tuple[str, dict[str, Any]]:
    """``multiscales.type`` and ``metadata`` (both required by the strict schemas): the levels the writer computed, and how."""
    if not names:
        return "none", {"description": "No level was computed: every level is the source's own."}
    how = "the 2x2 mean" if method is Method.BIN_SHRINK else "the most frequent label of each 2x2 block, the smallest on a tie"
    description = (
        f"Levels {', '.join(names)} were computed by spora_zarr, each from the level above it: {how} "
        f"(ngff-zarr's {method.value} samples). The other levels are the source's own."
    )
    return method.value, {"description": description, "method": f"spora_zarr.write.pyramid.{SHRINK[method].__name__}"}


def _scale(mpp: float, labels: bool, z_mpp: float | None) -> list[float]:
    spatial = [mpp, mpp] if z_mpp is None else [z_mpp, mpp, mpp]
    return spatial if labels else [1.0, *spatial]


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def channel_colors(channel_names: Sequence[str], *, rgb: bool, panel: Sequence[str] | None = None) -> list[str]:
    """Hex ``RRGGBB`` colour of each channel.

    RGB images are red, green, blue; a single channel is white. Otherwise a
    channel's colour comes from its position in ``panel`` (the modality's
    ``channels.parquet`` order), so a marker has the same colour in every
    tissue whatever order the tissue stores its channels in; channels outside
    the panel (or all, without one) take the colours after it in turn.
    """
    if rgb:
        return [RGB_COLORS[i % len(RGB_COLORS)] for i in range(len(channel_names))]
    if len(channel_names) == 1 and not panel:
        return ["FFFFFF"]
    positions = {name: i for i, name in enumerate(panel or ())}
    extra = iter(range(len(positions), len(positions) + len(channel_names)))
    return [PALETTE[(positions[n] if n in positions else next(extra)) % len(PALETTE)] for n in channel_names]


def omero_metadata(
    channel_names: Sequence[str], windows: Sequence[dict[str, float]], *, rgb: bool, panel: Sequence[str] | None = None
) -> dict[str, Any]:
    """OMERO rendering metadata: one entry per channel with label, colour (:func:`channel_colors`) and window."""
    channels = [
        {
            "label": str(label),
            "color": color,
            "window": window,
            "active": True,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
        }
        for label, color, window in zip(channel_names, channel_colors(channel_names, rgb=rgb, panel=panel), windows)
    ]
    return {"channels": channels, "rdefs": {"model": "color"}}


def channel_windows(sample: np.ndarray, dtype: np.dtype, *, rgb: bool) -> list[dict[str, float]]:
    """Contrast windows per channel from a pixel sample ``(C, N)``.

    ``min``/``max`` are the sample's extremes, ``start``/``end`` its 0.1 % and
    99.9 % quantiles, over its finite values (NaN and infinities are left out,
    so every number is finite JSON); RGB images keep the full 0-255 range.
    """
    windows = []
    for values in sample:
        if rgb:
            windows.append({"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0})
            continue
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size == 0:
            lo = hi = start = end = 0.0
        else:
            lo, hi = float(values.min()), float(values.max())
            start, end = (float(q) for q in np.quantile(values, [0.001, 0.999]))
        if end <= start:
            end = max(start + 1.0, float(np.nextafter(start, np.inf)))
            hi = max(hi, end)
        windows.append({"min": lo, "max": hi, "start": start, "end": end})
    return windows


def image_metadata(
    levels: Sequence[Level],
    *,
    name: str,
    channel_names: Sequence[str],
    windows: Sequence[dict[str, float]],
    rgb: bool,
    panel: Sequence[str] | None = None,
    spora: SporaGroupAttributes,
    where: str,
    z_mpp: float | None = None,
) -> dict[str, Any]:
    """The attributes of an NGFF image group: multiscales and omero, validated (:func:`validated`), and the spora attributes."""
    entry = multiscales_metadata(levels, name=name, method=Method.BIN_SHRINK, labels=False, z_mpp=z_mpp)
    ome = {"version": NGFF_VERSION, "multiscales": [entry], "omero": omero_metadata(channel_names, windows, rgb=rgb, panel=panel)}
    return validated({"ome": ome, "spora": spora.to_dict()}, where=where)


#: Masks with ids up to this list a colour per id in ``image-label.colors`` (at most ~35 kB of metadata:
#: every reader of the cohort parses it, thousands of times in a cohort of small tissues).
MAX_COLORED_LABEL = 255


def label_colors(ids: tuple[int, int] | None) -> list[dict[str, Any]]:
    """``image-label.colors`` of a mask whose ids span ``ids`` (min, max): label 0 transparent, each id up to the max a palette colour.

    Empty (no ``colors``) for negative ids or more than :data:`MAX_COLORED_LABEL`: viewers
    (napari-ome-zarr 0.10 and 0.11) draw ids missing from ``colors`` transparent, and listing every
    cell of a slide would bloat the metadata, so an instance mask keeps the viewer's own colours.
    """
    low, high = ids if ids is not None else (0, 0)
    if low < 0 or high > MAX_COLORED_LABEL:
        return []
    colors: list[dict[str, Any]] = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    for value in range(1, high + 1):
        hex_color = PALETTE[(value - 1) % len(PALETTE)]
        colors.append({"label-value": value, "rgba": [int(hex_color[i : i + 2], 16) for i in (0, 2, 4)] + [255]})
    return colors


def label_metadata(
    levels: Sequence[Level],
    *,
    name: str,
    source_image: str | None,
    spora: SporaGroupAttributes,
    where: str,
    z_mpp: float | None = None,
    ids: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The attributes of an NGFF label image group: multiscales and ``image-label``, validated, and the spora attributes.

    ``ids`` is the ``(min, max)`` of the labels; :func:`label_colors` gives ``image-label.colors``.
    """
    entry = multiscales_metadata(levels, name=name, method=Method.MODE, labels=True, z_mpp=z_mpp)
    image_label: dict[str, Any] = {"version": NGFF_VERSION}
    colors = label_colors(ids)
    if colors:
        image_label["colors"] = colors
    if source_image:
        image_label["source"] = {"image": source_image}
    ome = {"version": NGFF_VERSION, "multiscales": [entry], "image-label": image_label}
    return validated({"ome": ome, "spora": spora.to_dict()}, where=where)


def validated(attributes: dict[str, Any], *, where: str) -> dict[str, Any]:
    """``attributes`` of a group this writer built, checked by ome-zarr-models once per layout.

    What those checks depend on is the ``ome`` document without the
    multiscales ``name`` and the ``omero`` rendering settings (which
    ome-zarr-models does not model); the groups of a cohort share a few such
    layouts, so each is validated (:meth:`GroupMetadata.from_attributes`,
    ``StoreError`` naming ``where`` when invalid) once per process instead of
    once per group. The ``spora`` part comes from :class:`SporaGroupAttributes`.
    """
    ome = attributes["ome"]
    layout = {**ome, "multiscales": [{**ome["multiscales"][0], "name": ""}]}
    layout.pop("omero", None)
    key = json.dumps(layout, sort_keys=True)
    if key not in _VALID_LAYOUTS:
        GroupMetadata.from_attributes(attributes, where=where)
        if len(_VALID_LAYOUTS) >= 1024:
            _VALID_LAYOUTS.clear()
        _VALID_LAYOUTS.add(key)
    return attributes


#: The ``ome`` layouts (see :func:`validated`) this process has validated.
_VALID_LAYOUTS: set[str] = set()
