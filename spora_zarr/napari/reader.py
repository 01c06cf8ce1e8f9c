"""The npe2 reader: a cohort root, a modality, an image group or a mask group as napari layers, in microns.

:func:`napari_get_reader` is cheap: it reads the one ``zarr.json`` at the path
(local or fsspec URL) and declines anything that is not a spora store part.
The returned reader gives, for one tissue, :func:`tissue_layers`:

- each modality as a multiscale image layer handed every pyramid level lazily
  (lazy arrays read shard by shard through the read layer, dask arrays for a
  z stack; no pixels are read): multiplex images
  split into one layer per channel (``channel_axis``) named by the channel,
  coloured and contrast-limited from ``omero`` (defaults, with a warning, where
  ``omero`` lacks a colour or a window); RGB H&E and IHC as one RGB layer;
- tissue and cell masks as multiscale labels layers named ``<tissue>: <kind>``;
- the tile table as a shapes layer of rectangles, or above
  :data:`MAX_TILE_SHAPES` tiles as a labels layer rasterised at a coarse grid
  (a shapes layer freezes napari there);
- every layer scaled and translated in microns from the NGFF transforms, so
  modalities stored at different resolutions overlay.

Layer metadata carry ``{"spora": {...}}`` (store, modality, tissue, kind) so the
dock widget knows what it shows. Nothing is printed; warnings go to the
``spora_zarr`` logger.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..access.resolution import parse_resolution
from ..errors import SporaZarrError
from ..read.cohort import Cohort, open_cohort
from ..store.location import Location
from ..store.metadata import GroupMetadata
from ..store.staging import Staging

log = logging.getLogger("spora_zarr")

__all__ = ["MAX_TILE_SHAPES", "LayerData", "napari_get_reader", "read_store", "tile_tables", "tissue_layers"]

LayerData = tuple[Any, dict[str, Any], str]

#: Above this many tiles, a tile table is shown as a rasterised labels layer instead of rectangles:
#: napari 0.9 meshes each rectangle in Python (10,000 of them took 3.7 s to add here, and ~50,000
#: freeze it), while the raster costs one labels layer whatever the count (docs/napari.md).
MAX_TILE_SHAPES = 2_000

_DEFAULT_COLORS = ("0000FF", "00FF00", "FF00FF", "FFFF00", "00FFFF", "FF0000", "FF8000", "8000FF")


@dataclass(frozen=True)
class Target:
    """What a path names: the cohort root location and, where the path says, a modality, tissue or mask kind."""

    root: Location
    modality: str | None = None
    tissue_id: str | None = None
    mask_kind: str | None = None


def napari_get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """The reader for ``path`` when it is a spora store, modality, image or mask group; else ``None``.

    One metadata read (the ``zarr.json`` at ``path``, and at the modality
    directory for a modality path); anything else is declined at once.
    """
    if not isinstance(path, str):
        if len(path) != 1:
            return None
        path = path[0]
    target = locate(str(path))
    return None if target is None else functools.partial(_read_target, target)


def locate(path: str) -> Target | None:
    """The :class:`Target` a path names, from the group document there; ``None`` when it is no spora part."""
    try:
        location = Location.parse(path.rstrip("/"))
        attributes = Staging(location).read_attributes("")
    except (OSError, ValueError, ImportError):
        return None
    if attributes is None:
        return None
    spora = attributes.get("spora")
    if not isinstance(spora, dict):
        return _locate_modality(location)
    if "modalities" in spora:
        return Target(location)
    tissue_id, modality, mask_kind = spora.get("tissue_id"), spora.get("modality"), spora.get("mask_kind")
    if spora.get("kind") == "image" and isinstance(modality, str) and isinstance(tissue_id, str):
        suffix = f"{modality}/images/{tissue_id}"
    elif spora.get("kind") == "label" and isinstance(mask_kind, str) and isinstance(tissue_id, str):
        suffix = f"segmentations/{mask_kind}/{tissue_id}"
    else:
        return None
    if not location.root.endswith("/" + suffix):
        return None
    root = Location(location.root[: -len(suffix) - 1], location.storage_options)
    return Target(root, modality=modality, tissue_id=tissue_id, mask_kind=mask_kind)


def _locate_modality(location: Location) -> Target | None:
    """A modality directory (``imc``, ``ihc/ihc_CD3``) or its ``images`` group inside a spora store."""
    parts = location.root.rstrip("/").split("/")
    if parts[-1] == "images":
        parts = parts[:-1]
    for depth in (1, 2):  # imc, or ihc/ihc_CD3
        root = Location("/".join(parts[:-depth]), location.storage_options)
        attributes = Staging(root).read_attributes("")
        spora = (attributes or {}).get("spora")
        modality = "/".join(parts[-depth:])
        if isinstance(spora, dict) and modality in spora.get("modalities", {}):
            return Target(root, modality=modality)
    return None


def _read_target(target: Target, path: Any = None) -> list[LayerData]:
    _contours_when_added()
    cohort = open_cohort(target.root)
    if target.mask_kind is not None and target.tissue_id is not None:
        return [_label_layer(cohort, target.mask_kind, target.tissue_id)]
    if target.tissue_id is not None and target.modality is not None:
        return tissue_layers(cohort, target.tissue_id, modalities=[target.modality], tiles=None)
    modalities = [target.modality] if target.modality else cohort.modalities
    tissues = sorted({t for m in modalities for t in cohort.tissues(m)})
    if not tissues:
        log.warning("%s: no tissue to show", target.root)
        return []
    return tissue_layers(cohort, tissues[0], modalities=modalities)


_CONTOURED: weakref.WeakSet[Any] = weakref.WeakSet()


def _contours_when_added() -> None:
    """Have napari's current viewer draw spora masks as contours when it adds them.

    napari's ``Labels`` takes ``contour`` only after it is made, and a reader
    only returns layer data; so the viewer that called the reader sets it from
    the layer's ``metadata["spora"]["contour"]`` on insertion. Nothing happens
    outside a running napari (no ``napari.Viewer`` made in this process).
    """
    viewers = sys.modules.get("napari.viewer")  # imported wherever a Viewer exists; importing it here would load Qt
    viewer = viewers.current_viewer() if viewers is not None else None
    if viewer is None or viewer in _CONTOURED:
        return

    def on_inserted(event: Any) -> None:
        contour = getattr(event.value, "metadata", {}).get("spora", {}).get("contour")
        if contour and hasattr(event.value, "contour") and not event.value.contour:
            event.value.contour = contour

    viewer.layers.events.inserted.connect(on_inserted)
    _CONTOURED.add(viewer)


def read_store(
    path: str, tissue_id: str | None = None, *, modalities: Sequence[str] | None = None, kind: str = "complete"
) -> list[LayerData]:
    """The layers of one tissue of the store at ``path`` (the first tissue when ``tissue_id`` is None)."""
    cohort = open_cohort(path)
    shown = list(modalities) if modalities else cohort.modalities
    for modality in shown:
        cohort.check_modality(modality)
    if tissue_id is None:
        tissues = sorted({t for m in shown for t in cohort.tissues(m)})
        if not tissues:
            raise SporaZarrError(f"{cohort.location}: no tissue has {', '.join(shown)}")
        tissue_id = tissues[0]
    return tissue_layers(cohort, tissue_id, modalities=shown, kind=kind)


def tile_tables(cohort: Cohort) -> list[str]:
    """Store paths of the tile coordinate tables (``tiling/<res>/<strategy>/<size>_tile_coordinates.parquet``)."""
    return [t for t in cohort.tables() if t.startswith("tiling/") and t.endswith("_tile_coordinates.parquet")]


def tissue_layers(
    cohort: Cohort,
    tissue_id: str,
    *,
    modalities: Sequence[str] | None = None,
    kind: str = "complete",
    masks: Sequence[str] | None = None,
    tiles: str | None = "first",
) -> list[LayerData]:
    """Every layer of one tissue: its modalities, its masks (default: every recorded kind) and a tile table (``"first"``: the first)."""
    layers: list[LayerData] = []
    for modality in modalities if modalities is not None else cohort.modalities:
        if tissue_id in cohort.tissues(modality):
            layers.append(_image_layer(cohort, modality, tissue_id, kind))
    for mask_kind in cohort.known_mask_kinds if masks is None else masks:
        if tissue_id in cohort.mask_tissues(mask_kind):
            layers.append(_label_layer(cohort, mask_kind, tissue_id))
    if tiles == "first":
        found = tile_tables(cohort)
        tiles = found[0] if found else None
    if tiles is not None:
        layer = _tiles_layer(cohort, tiles, tissue_id)
        if layer is not None:
            layers.append(layer)
    return layers


# -- layers ---------------------------------------------------------------------------------
def _levels(cohort: Cohort, group: str, metadata: GroupMetadata, *, rgb: bool = False) -> list[Any]:
    """Every level of the group at store path ``group``, nothing read, finest first.

    A :class:`~spora_zarr.napari.levels.LazyLevel` for a 2-D image or mask; a z stack as a dask
    array over its zarr level (one dask chunk per plane-deep shard), so that napari's slider reads
    one plane at a time.
    """
    from ..read.engines.zarr import open_array
    from ..read.levels import open_level
    from .levels import LazyLevel

    arrays: list[Any] = []
    for name in metadata.level_names:
        array = open_array(cohort.location, f"{group}/{name}")
        shard = array.shards or array.chunks
        if "z" in metadata.axes:
            import dask.array as da

            from_zarr: Callable[..., Any] = da.from_zarr  # dask's function is untyped
            arrays.append(from_zarr(array, chunks=shard))
            continue
        reader = open_level(cohort.location, f"{group}/{name}")
        arrays.append(LazyLevel(reader, (int(shard[-2]), int(shard[-1])), rgb=rgb))
    return arrays


def _placement(metadata: GroupMetadata) -> dict[str, Any]:
    """``scale`` and ``translate`` in microns of the finest level: ``(y, x)``, or ``(z, y, x)`` for a stack."""
    n = 3 if "z" in metadata.axes else 2
    level = metadata.levels[0]
    offsets = level.translation[-n:] if len(level.translation) >= n else (0.0,) * n
    return {"scale": tuple(level.scale[-n:]), "translate": tuple(float(v) for v in offsets), "units": ("micrometer",) * n}


def _meta(cohort: Cohort, **values: Any) -> dict[str, Any]:
    return {"spora": {"store": cohort.location.root, **values}}


def _image_layer(cohort: Cohort, modality: str, tissue_id: str, kind: str) -> LayerData:
    metadata = cohort.group_metadata(modality, tissue_id)
    data = _levels(cohort, cohort.group_path(modality, tissue_id), metadata, rgb=_is_rgb(metadata))
    channels = list(metadata.channels)
    names = metadata.channel_names
    common = {**_placement(metadata), "multiscale": len(data) > 1, "metadata": _meta(cohort, modality=modality, tissue_id=tissue_id)}
    if _is_rgb(metadata):
        return (_one_or_all(data), {**common, "name": f"{tissue_id}: {modality}", "rgb": True}, "image")
    selected = _channel_selection(cohort, modality, tissue_id, names, kind)
    if selected is not None:
        data = [level[selected] for level in data]
        channels = [channels[i] for i in selected] if channels else []
        names = [names[i] for i in selected]
    if not names:
        log.warning("%s: %s %s has no %s channels to show", cohort.location, modality, tissue_id, kind)
    colors, limits = _colors_and_limits(cohort, modality, tissue_id, names, channels, data[-1])
    kwargs = {
        **common,
        "channel_axis": 0,
        "name": list(names),
        "colormap": [f"#{c.lower()}" for c in colors],  # napari maps black to this colour
        "contrast_limits": limits,
        "blending": "additive",
    }
    return (_one_or_all(data), kwargs, "image")


def _one_or_all(levels: list[Any]) -> Any:
    """Every level for a multiscale layer; the array itself when there is one level (napari wants it plain)."""
    return levels if len(levels) > 1 else levels[0]


def _is_rgb(metadata: GroupMetadata) -> bool:
    colors = [c.color for c in metadata.channels]
    return "z" not in metadata.axes and metadata.channel_names == ["red", "green", "blue"] and colors == ["FF0000", "00FF00", "0000FF"]


def _channel_selection(cohort: Cohort, modality: str, tissue_id: str, names: list[str], kind: str) -> list[int] | None:
    """Indices of the channels a kind keeps (``None``: all), from the modality's ``channels.parquet``."""
    if kind == "complete":
        return None
    from ..access.tissue import CHANNEL_KINDS, channels_of_kind  # noqa: PLC0415 - pandas loads with the first filtered kind

    if kind not in CHANNEL_KINDS:
        raise SporaZarrError(f"unknown channel kind {kind!r}; expected one of {', '.join(CHANNEL_KINDS)}")
    keep = set(channels_of_kind(cohort.read_table(posixpath.join(modality, "channels.parquet")).to_pandas(), kind))
    return [i for i, n in enumerate(names) if n in keep]


def _colors_and_limits(
    cohort: Cohort, modality: str, tissue_id: str, names: list[str], channels: list[Any], top: Any
) -> tuple[list[str], list[tuple[float, float]]]:
    """Colour and contrast limits per channel from ``omero``; defaults (with a warning) where it lacks them."""
    colors: list[str] = []
    limits: list[tuple[float, float]] = []
    missing: list[str] = []
    coarsest = None
    for i, name in enumerate(names):
        channel = channels[i] if i < len(channels) else None
        color = channel.color if channel is not None and channel.color else None
        window = channel.window if channel is not None and channel.window else None
        if color is None:
            color = _DEFAULT_COLORS[i % len(_DEFAULT_COLORS)]
            missing.append(f"{name} colour")
        if window is not None and "start" in window and "end" in window and window["end"] > window["start"]:
            limits.append((float(window["start"]), float(window["end"])))
        else:
            if coarsest is None:
                coarsest = np.asarray(top)  # the coarsest level only: small by construction
            plane = coarsest[i]
            low, high = (float(plane.min()), float(plane.max())) if plane.size else (0.0, 1.0)
            limits.append((low, high if high > low else low + 1.0))
            missing.append(f"{name} window")
        colors.append(color)
    if missing:
        log.warning("%s: %s %s: omero lacks %s; using defaults", cohort.location, modality, tissue_id, ", ".join(missing))
    return colors, limits


def _label_layer(cohort: Cohort, kind: str, tissue_id: str) -> LayerData:
    metadata = cohort.mask_metadata(kind, tissue_id)
    data = _levels(cohort, cohort.mask_group_path(kind, tissue_id), metadata)
    kwargs = {
        **_placement(metadata),
        "name": f"{tissue_id}: {kind}",
        "multiscale": len(data) > 1,
        "visible": True,
        "opacity": 0.8,
        "metadata": _meta(cohort, mask_kind=kind, tissue_id=tissue_id, contour=1 if kind == "cell_masks" else 3),
    }
    return (_one_or_all(data), kwargs, "labels")


def _tiles_layer(cohort: Cohort, table_path: str, tissue_id: str) -> LayerData | None:
    """The tiles of one tissue as rectangles (or, above :data:`MAX_TILE_SHAPES`, a coarse labels raster), in microns."""
    parts = table_path.split("/")
    mpp = parse_resolution(parts[1]).mpp
    size = int(parts[-1].split("_", 1)[0])
    table = cohort.read_table(table_path)
    tissues = table.column("tissue_id").to_pylist()
    mine = np.fromiter((str(t) == tissue_id for t in tissues), bool, len(tissues))  # ids stored as text or numbers
    if not mine.any():
        return None
    rows, cols = (np.asarray(table.column(name).to_numpy(), np.int64)[mine] for name in ("row", "col"))
    name = f"{tissue_id}: tiles {parts[1]} {parts[2]} {size}px"
    meta = _meta(cohort, tiles=table_path, tissue_id=tissue_id)
    if len(rows) <= MAX_TILE_SHAPES:
        corners = np.stack(
            [
                np.stack([rows, cols], -1),
                np.stack([rows, cols + size], -1),
                np.stack([rows + size, cols + size], -1),
                np.stack([rows + size, cols], -1),
            ],
            axis=1,
        ).astype(np.float64)
        kwargs = {
            "name": name,
            "shape_type": "rectangle",
            "scale": (mpp, mpp),
            "units": ("micrometer", "micrometer"),
            "edge_color": "yellow",
            "face_color": "transparent",
            "edge_width": max(1.0, size / 32),
            "metadata": meta,
        }
        return (list(corners), kwargs, "shapes")
    cell = max(1, size // 8)  # 8 x 8 raster cells per tile
    height = int(((rows.max() + size) // cell) + 1)
    width = int(((cols.max() + size) // cell) + 1)
    raster = np.zeros((height, width), np.int32)
    ids = np.asarray(table.column("tile_id").to_numpy(), np.int64)[mine] + 1
    edge = -(-size // cell)
    for r, c, label in zip(rows // cell, cols // cell, ids):
        raster[max(r, 0) : r + edge, max(c, 0) : c + edge] = label
    kwargs = {"name": name, "scale": (mpp * cell, mpp * cell), "units": ("micrometer", "micrometer"), "opacity": 0.3, "metadata": meta}
    return (raster, kwargs, "labels")
