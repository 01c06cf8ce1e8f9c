"""Offsets from a BigDataViewer XML: each view's affine transforms accumulated, their translations."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np

from ..errors import InvalidInputError, NotFoundError

__all__ = ["get_offsets"]


def get_offsets(filename: str | os.PathLike[str]) -> np.ndarray:
    """``(N, 3)`` offsets ``(x, y, z)``: per view (ordered by setup id) the translation of its transforms' product.

    The ``ViewTransform`` elements of a ``ViewRegistration`` are multiplied in
    document order (BDV lists the last applied first). A file with no
    ``ViewRegistration`` is an error.
    """
    path = os.fspath(filename)
    if path.endswith(".h5"):
        path = path[:-3] + ".xml"
    if not os.path.isfile(path):
        raise NotFoundError(f"{path}: BigDataViewer XML not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InvalidInputError(f"{path}: not valid XML ({exc})") from None
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
    return np.array([views[key] for key in sorted(views) if key[0] == first])
