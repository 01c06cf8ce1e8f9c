"""Browse a cohort in napari: pick a tissue (filtered by text), its modalities, the channel kind and the tile table.

:class:`CohortBrowser` does the work on any napari viewer, a headless
``ViewerModel`` included: switching tissue replaces the layers it shows and
keeps the contrast limits the user set, per channel name. :class:`CohortWidget`
is its dock widget (magicgui, Qt), contributed by the plugin manifest and
opened by ``spora-zarr view``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..read.cohort import open_cohort
from .reader import LayerData, tile_tables, tissue_layers

__all__ = ["CohortBrowser", "CohortWidget", "add_layers"]


def add_layers(viewer: Any, layers: Iterable[LayerData]) -> list[Any]:
    """Add reader layers to ``viewer``; cell masks are drawn as contours (a property napari does not take at creation)."""
    added: list[Any] = []
    for data, kwargs, layer_type in layers:
        result = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        for layer in result if isinstance(result, list) else [result]:
            contour = layer.metadata.get("spora", {}).get("contour")
            if contour:
                layer.contour = contour
            added.append(layer)
    return added


class CohortBrowser:
    """One tissue of a cohort at a time in a napari viewer.

    Parameters
    ----------
    viewer
        ``napari.Viewer`` or ``napari.components.ViewerModel``.
    store
        The cohort store (local path or fsspec URL).
    modalities
        Modalities to show (default all); masks are always shown when the tissue has them.
    kind
        Channel kind of multiplex modalities: ``complete``, ``qc_filtered`` or ``uniprot_filtered``.
    tiles
        Tile table to show (a path from :meth:`tile_tables`), ``"first"`` or ``None``.
    """

    def __init__(
        self, viewer: Any, store: str, *, modalities: Sequence[str] | None = None, kind: str = "complete", tiles: str | None = "first"
    ) -> None:
        self.viewer = viewer
        self.cohort = open_cohort(store)
        self.modalities = list(modalities) if modalities else self.cohort.modalities
        for modality in self.modalities:
            self.cohort.check_modality(modality)
        self.kind = kind
        self.tiles = tiles
        self.tissue_id: str | None = None
        self._contrast: dict[str, tuple[float, float]] = {}

    def tissues(self, text: str = "") -> list[str]:
        """Tissues with any shown modality or a mask, whose id contains ``text`` (case-insensitive)."""
        found = {t for m in self.modalities for t in self.cohort.tissues(m)}
        found |= {t for k in self.cohort.known_mask_kinds for t in self.cohort.mask_tissues(k)}
        needle = text.strip().lower()
        return sorted(t for t in found if needle in t.lower())

    def tile_tables(self) -> list[str]:
        return tile_tables(self.cohort)

    def show(
        self, tissue_id: str, *, modalities: Sequence[str] | None = None, kind: str | None = None, tiles: str | None | bool = True
    ) -> list[Any]:
        """Replace the layers shown by those of ``tissue_id``; contrast limits set by the user stay per channel name.

        ``tiles=True`` keeps the current tile table choice.
        """
        if modalities is not None:
            self.modalities = list(modalities)
        if kind is not None:
            self.kind = kind
        if tiles is not True:
            self.tiles = tiles if isinstance(tiles, str) else None
        for layer in self._own_layers():
            if layer.__class__.__name__ == "Image" and not getattr(layer, "rgb", False):
                self._contrast[layer.name] = tuple(layer.contrast_limits)
            self.viewer.layers.remove(layer)
        layers = add_layers(
            self.viewer, tissue_layers(self.cohort, tissue_id, modalities=self.modalities, kind=self.kind, tiles=self.tiles)
        )
        for layer in layers:
            if layer.name in self._contrast:
                layer.contrast_limits = self._contrast[layer.name]
        self.tissue_id = tissue_id
        return layers

    def _own_layers(self) -> list[Any]:
        root = self.cohort.location.root
        return [layer for layer in list(self.viewer.layers) if layer.metadata.get("spora", {}).get("store") == root]


def CohortWidget(napari_viewer: Any, store: str | None = None, *, browser: CohortBrowser | None = None) -> Any:  # noqa: N802 - the widget's name in napari
    """The dock widget: store, tissue filter and list, modalities, channel kind, tile table.

    Given a ``browser`` (as ``spora-zarr view`` does), it drives that one and
    starts from what it shows; otherwise it makes one when a store is entered.
    """
    from magicgui import widgets

    from ..access.tissue import CHANNEL_KINDS

    store_edit = widgets.LineEdit(label="store", value=store or (browser.cohort.location.root if browser else ""))
    text = widgets.LineEdit(label="filter")
    tissue = widgets.ComboBox(label="tissue", choices=[])
    modalities = widgets.Select(label="modalities", choices=[])
    kind = widgets.ComboBox(label="channel kind", choices=list(CHANNEL_KINDS), value=browser.kind if browser else "complete")
    tiles = widgets.ComboBox(label="tile table", choices=["(none)"])
    choosers = (tissue, modalities, kind, tiles)
    container = widgets.Container(widgets=[store_edit, text, *choosers])
    state: dict[str, CohortBrowser] = {"browser": browser} if browser is not None else {}

    def load(*_: Any) -> None:
        current = state.get("browser")
        if current is None or current.cohort.location.root != store_edit.value:
            if not store_edit.value:
                return
            current = state["browser"] = CohortBrowser(napari_viewer, store_edit.value)
        with tissue.changed.blocked(), modalities.changed.blocked(), tiles.changed.blocked():
            modalities.choices = current.cohort.modalities
            modalities.value = current.modalities
            tiles.choices = ["(none)", *current.tile_tables()]
            tiles.value = current.tiles if current.tiles in tiles.choices else "(none)"
        refilter()

    def refilter(*_: Any) -> None:
        current = state.get("browser")
        if current is None:
            return
        with tissue.changed.blocked():
            tissue.choices = current.tissues(text.value)
            if current.tissue_id in tissue.choices:
                tissue.value = current.tissue_id

    def show(*_: Any) -> None:
        current = state.get("browser")
        if current is None or not tissue.value:
            return
        table = None if tiles.value == "(none)" else tiles.value
        current.show(tissue.value, modalities=list(modalities.value) or None, kind=kind.value, tiles=table)

    store_edit.changed.connect(load)
    text.changed.connect(refilter)
    for chooser in choosers:
        chooser.changed.connect(show)
    load()
    return container
