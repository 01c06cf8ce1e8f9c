"""BigDataViewer datasets: offsets from the XML (each view's affine transforms accumulated), views of the H5 pixels.

A BDV H5 (``ImageLoader format="bdv.hdf5"``) stores each view setup of each
timepoint as ``t{tp:05d}/s{setup:02d}/{level}/cells`` (``ZYX``); 16-bit data is
stored as ``int16`` and read as ``uint16``, as BigDataViewer does. Setups that
share a ``tile`` attribute and differ by ``channel`` form one multi-channel tile.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError, NotFoundError, reason

__all__ = ["BdvTile", "bdv_h5_tiles", "bdv_tiles", "get_offsets", "require_h5py", "tile_offsets"]


@dataclass(frozen=True)
class BdvTile:
    """One tile of a BDV dataset: its H5 file, the ``cells`` datasets of its channels, and its offset ``(x, y, z)``."""

    h5: str
    datasets: tuple[str, ...]
    offset: tuple[float, float, float]


def require_h5py(path: str) -> None:
    """Fail with one line naming the extra when h5py is not installed."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise InvalidInputError(f"{path}: reading BDV H5 pixels needs h5py: pip install 'spora-zarr[stitch]'") from None


def _xml_path(filename: str | os.PathLike[str]) -> str:
    path = os.fspath(filename)
    if path.endswith(".h5"):
        path = path[:-3] + ".xml"
    if not os.path.isfile(path):
        raise NotFoundError(f"{path}: BigDataViewer XML not found")
    return path


def _parse(path: str) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InvalidInputError(f"{path}: not valid XML ({exc})") from None


def view_translations(root: ET.Element, path: str) -> dict[int, np.ndarray]:
    """Per setup id (first timepoint, sorted) the translation of its ``ViewTransform``s multiplied in document order."""
    registrations = root.findall(".//ViewRegistrations/ViewRegistration")
    if not registrations:
        raise InvalidInputError(f"{path}: no ViewRegistration elements (a BigDataViewer XML without registrations)")
    views: dict[tuple[int, int], np.ndarray] = {}
    for registration in registrations:
        key = (int(registration.get("timepoint", 0)), int(registration.get("setup", len(views))))
        total = np.eye(4)
        for transform in registration.findall("ViewTransform"):
            text = (transform.findtext("affine") or "").split()
            try:
                values = [float(v) for v in text]
            except ValueError:
                values = []
            if len(values) != 12:
                raise InvalidInputError(f"{path}: view setup {key[1]}: an affine must be 12 numbers, got {' '.join(text)!r}")
            matrix = np.eye(4)
            matrix[:3] = np.reshape(values, (3, 4))
            total = total @ matrix
        views[key] = total[:3, 3]
    first = min(t for t, _ in views)
    return {setup: views[(t, setup)] for t, setup in sorted(views) if t == first}


def get_offsets(filename: str | os.PathLike[str]) -> np.ndarray:
    """``(N, 3)`` offsets ``(x, y, z)``: per view (ordered by setup id) the translation of its transforms' product.

    The ``ViewTransform`` elements of a ``ViewRegistration`` are multiplied in
    document order (BDV lists the last applied first). A file with no
    ``ViewRegistration`` is an error.
    """
    path = _xml_path(filename)
    return np.array(list(view_translations(_parse(path), path).values()))


def _groups(root: ET.Element, setups: list[int]) -> list[list[int]]:
    """Setup ids per tile: setups sharing a ``tile`` attribute (channels ordered by ``channel``), else one setup per tile."""
    attributes: dict[int, tuple[str | None, str]] = {}
    for setup in root.findall(".//ViewSetups/ViewSetup"):
        sid = int(setup.findtext("id", "-1"))
        attributes[sid] = (setup.findtext("attributes/tile"), setup.findtext("attributes/channel") or "0")
    if not setups or any(attributes.get(s, (None, ""))[0] is None for s in setups):
        return [[s] for s in setups]
    tiles: dict[str, list[int]] = {}
    for s in setups:
        tiles.setdefault(str(attributes[s][0]), []).append(s)
    return [sorted(group, key=lambda s: _natural(attributes[s][1])) for group in tiles.values()]


def _natural(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 62, text)


def tile_offsets(filename: str | os.PathLike[str]) -> np.ndarray:
    """``(N, 3)`` offsets ``(x, y, z)`` per tile: the translation of each tile's first setup (channels grouped by ``tile``)."""
    path = _xml_path(filename)
    root = _parse(path)
    translations = view_translations(root, path)
    return np.array([translations[group[0]] for group in _groups(root, list(translations))])


def bdv_tiles(filename: str | os.PathLike[str]) -> list[BdvTile]:
    """The tiles of a BDV XML whose pixels are in a BDV H5 (``ImageLoader format="bdv.hdf5"``), first timepoint, full resolution."""
    path = _xml_path(filename)
    root = _parse(path)
    translations = view_translations(root, path)
    loader = root.find(".//SequenceDescription/ImageLoader")
    if loader is None or loader.get("format") != "bdv.hdf5" or not (loader.findtext("hdf5") or "").strip():
        found = "none" if loader is None else repr(loader.get("format"))
        raise InvalidInputError(f"{path}: the ImageLoader is {found}, not bdv.hdf5; pass the views as TIFF tiles")
    element = loader.find("hdf5")
    h5 = (element.text or "").strip() if element is not None else ""
    if element is not None and element.get("type", "relative") == "relative":
        base = root.find("BasePath")
        folder = os.path.dirname(os.path.abspath(path))
        if base is not None and base.get("type", "relative") == "relative":
            folder = os.path.join(folder, (base.text or ".").strip())
        elif base is not None:
            folder = (base.text or "").strip()
        h5 = os.path.normpath(os.path.join(folder, h5))
    timepoint = _first_timepoint(root)
    return [
        BdvTile(h5, tuple(f"t{timepoint:05d}/s{s:02d}/0/cells" for s in group), tuple(float(v) for v in translations[group[0]]))  # type: ignore[arg-type]
        for group in _groups(root, list(translations))
    ]


def _first_timepoint(root: ET.Element) -> int:
    points = root.find(".//SequenceDescription/Timepoints")
    if points is None:
        return 0
    if points.get("type") == "range":
        return int(points.findtext("first", "0"))
    listed = (points.findtext("integerpattern") or points.findtext("list") or "0").replace(",", " ").split()
    return min(int(v) for v in listed if v.lstrip("-").isdigit()) if listed else 0


def bdv_h5_tiles(filename: str | os.PathLike[str]) -> list[BdvTile]:
    """The view setups of a BDV-layout H5 read without its XML (first timepoint, full resolution), offsets zero."""
    import h5py

    path = os.fspath(filename)
    if not os.path.isfile(path):
        raise NotFoundError(f"{path}: H5 file not found")
    try:
        with h5py.File(path, "r") as h5:
            timepoints = sorted(k for k in h5 if re.fullmatch(r"t\d{5}", k))
            if not timepoints:
                raise InvalidInputError(f"{path}: no t00000-style timepoint group (not a BigDataViewer H5)")
            group = h5[timepoints[0]]
            setups = sorted(k for k in group if re.fullmatch(r"s\d+", k) and f"{k}/0/cells" in group)
            names = [f"{timepoints[0]}/{s}/0/cells" for s in setups]
    except OSError as exc:
        raise InvalidInputError(f"{path}: unreadable H5 ({reason(exc)})") from None
    if not names:
        raise InvalidInputError(f"{path}: no s<setup>/0/cells datasets under {timepoints[0]}")
    return [BdvTile(path, (name,), (0.0, 0.0, 0.0)) for name in names]
