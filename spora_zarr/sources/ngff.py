"""OME-Zarr (NGFF 0.4 / 0.5) images and named zarr arrays as sources.

:func:`open_zarr_source` opens what a ``.zarr`` path holds:

- an NGFF image group (``multiscales``; written by ngff-zarr, ome-zarr-py,
  bioformats2raw, whose root holds the image at ``0``): axes in the order the
  metadata names them, channel names from ``omero``, microns per pixel from
  the level's ``scale`` in its axis unit; levels that halve the finest one
  (scale ratio ``2**k``) are kept as source levels (:meth:`NgffSource.levels`);
- a zarr array with ``dimension_names`` (``c, y, x``, ``y, x, c``, ...): read in
  that order;
- a zarr array without names: an earlier spora tissue, ``(H, W, C)``
  (:class:`~spora_zarr.sources.legacy.LegacyZarrSource`).

``t`` and ``z`` axes of size 1 are dropped; more than one timepoint is
refused; an NGFF image with more than one z plane is a z stack (``nz``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..store.metadata import ngff_kind
from .base import ImageSource, SourceInfo, reason

#: Microns per unit of the NGFF (UDUNITS-2) length units.
MICRONS_PER_UNIT = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
_AXIS_NAMES = {"c": "c", "channel": "c", "z": "z", "t": "t", "time": "t", "y": "y", "x": "x"}
_RGB = ("FF0000", "00FF00", "0000FF")


class AxisView:
    """Windows of one array whose axes are named ``c, z, t, y, x`` (any order, ``c``/``z``/``t`` optional), as ``(C, [Z,] h, w)``.

    ``t`` must have size 1; ``z`` of size 1 is dropped, a larger ``z`` is
    allowed only with ``allow_z`` (then :meth:`read` takes planes).
    """

    def __init__(self, array: Any, axes: Sequence[str], name: str, *, allow_z: bool = False) -> None:
        if len(axes) != array.ndim or len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes) or not set(axes) <= set("cztyx"):
            raise InvalidInputError(
                f"{name}: axes {tuple(axes)} of an array of shape {tuple(array.shape)}: "
                "expected distinct names among c, z, t, y, x with y and x"
            )
        self.array, self.axes, self.name = array, tuple(axes), name
        sizes = dict(zip(self.axes, (int(n) for n in array.shape)))
        if sizes.get("t", 1) > 1:
            raise InvalidInputError(f"{name}: {sizes['t']} timepoints (axis t); add-image takes one timepoint, write each as its own image")
        self.nz = sizes.get("z", 1)
        if self.nz > 1 and not allow_z:
            raise InvalidInputError(f"{name}: {self.nz} z planes (axis z); a plain array is one plane (write a z stack as an NGFF image)")
        self.channels, self.height, self.width = sizes.get("c", 1), sizes["y"], sizes["x"]

    def read(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Planes ``z0:z1`` of the window as ``(C, z1 - z0, h, w)``."""
        bounds = {"z": slice(z0, z1), "t": slice(0, 1), "c": slice(None), "y": slice(y0, y1), "x": slice(x0, x1)}
        try:
            window = np.asarray(self.array[tuple(bounds[a] for a in self.axes)])
        except Exception as exc:
            raise InvalidInputError(f"{self.name}: unreadable zarr data ({reason(exc)})") from None
        present = list(self.axes)
        for axis in "ctz":
            if axis not in present:
                window, present = window[None], [axis, *present]
        return window.transpose([present.index(a) for a in ("c", "t", "z", "y", "x")])[:, 0]


class _AxisSource(ImageSource):
    """A source over an :class:`AxisView`."""

    def __init__(self, view: AxisView, dtype: Any, info: SourceInfo) -> None:
        self.view, self.name, self.info = view, view.name, info
        self.shape = (view.channels, view.height, view.width)
        self.dtype = np.dtype(dtype)
        self.nz = view.nz

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.view.read(0, 1, y0, y1, x0, x1)[:, 0]

    def read_volume(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.view.read(z0, z1, y0, y1, x0, x1)


class NamedArraySource(_AxisSource):
    """A zarr array read in the order of its ``dimension_names`` (one plane, one timepoint)."""

    def __init__(self, array: Any, name: str) -> None:
        names = tuple(str(n).lower() for n in array.metadata.dimension_names)
        axes = tuple(_AXIS_NAMES.get(n, n) for n in names)
        view = AxisView(array, axes, name)
        dtype = np.dtype(array.dtype)
        super().__init__(view, dtype, SourceInfo(is_rgb=view.channels == 3 and dtype == np.uint8 and "c" in axes))


class NgffSource(_AxisSource):
    """Level 0 of an OME-Zarr (NGFF 0.4 or 0.5) image group; :meth:`levels` gives the levels kept as they are."""

    def __init__(self, group: Any, name: str) -> None:
        image = _image_group(group, name)
        name = name if image is group else f"{name}/{image.path.rsplit('/', 1)[-1]}"
        self.version, ms, omero = _ngff_attributes(image, name)
        self.axes, units = _axes(ms, name)
        datasets = ms.get("datasets") or []
        if not datasets or not all(isinstance(d, Mapping) and "path" in d for d in datasets):
            raise InvalidInputError(f"{name}: NGFF multiscales without datasets")
        global_scale = _scale(ms.get("coordinateTransformations"), len(self.axes), name)
        self._levels: list[tuple[str, Any, list[float]]] = []  # (name, array, scale) of each level
        for dataset in datasets:
            try:
                array = image[str(dataset["path"])]
            except Exception as exc:
                raise InvalidInputError(f"{name}: missing level {dataset['path']!r} ({reason(exc)})") from None
            scale = _scale(dataset.get("coordinateTransformations"), len(self.axes), name)
            self._levels.append((f"{name}/{dataset['path']}", array, [s * g for s, g in zip(scale, global_scale)]))
        level_name, array, scale = self._levels[0]
        view = AxisView(array, self.axes, level_name, allow_z=True)
        self._microns = [MICRONS_PER_UNIT.get(units.get(a, ""), math.nan) for a in self.axes]
        y, x = self._axis_microns(scale, "y"), self._axis_microns(scale, "x")  # None: no known length unit (--mpp)
        square = y is not None and x is not None and math.isclose(y, x, rel_tol=1e-3)  # as a TIFF's pixel size
        mpp = x if square else None
        anisotropic = (y, x) if y is not None and x is not None and not square else None
        z_mpp = self._axis_microns(scale, "z") if view.nz > 1 else None
        names = [str(c.get("label", "")) for c in omero.get("channels", []) if isinstance(c, Mapping)] or None
        if names is not None and (len(names) != view.channels or len(set(names)) != len(names) or "" in names):
            names = None  # the labels do not name the channels one to one: the caller's defaults apply
        colors = tuple(str(c.get("color", "")).upper() for c in omero.get("channels", []) if isinstance(c, Mapping))
        dtype = np.dtype(array.dtype)
        is_rgb = view.channels == 3 and dtype == np.uint8 and colors == _RGB
        info = SourceInfo(channel_names=names, mpp=mpp, is_rgb=is_rgb, anisotropic=anisotropic, z_mpp=z_mpp)
        super().__init__(view, dtype, info)

    def _axis_microns(self, scale: Sequence[float], axis: str) -> float | None:
        value = scale[self.axes.index(axis)] * self._microns[self.axes.index(axis)]
        return None if math.isnan(value) else float(value)

    def reduced_levels(self) -> dict[int, ImageSource]:
        """Each level whose y/x scale is ``2**k`` times level 0's (same channels and planes), by factor ``2**k``."""
        base = self._levels[0][2]
        iy, ix = self.axes.index("y"), self.axes.index("x")
        found: dict[int, ImageSource] = {}
        for level_name, array, scale in self._levels[1:]:
            ratio = scale[ix] / base[ix]
            k = round(math.log2(ratio)) if ratio > 0 else 0
            if k < 1 or not math.isclose(ratio, 2**k, rel_tol=1e-6) or not math.isclose(scale[iy] / base[iy], ratio, rel_tol=1e-6):
                continue
            view = AxisView(array, self.axes, level_name, allow_z=True)
            same = (view.channels, view.nz) == (self.view.channels, self.view.nz)
            if same and all(abs(n - m / 2**k) <= 1 for n, m in ((view.height, self.shape[1]), (view.width, self.shape[2]))):
                found.setdefault(2**k, _AxisSource(view, self.dtype, self.info))
        return found


def open_zarr_source(path: str, store: Any = None) -> ImageSource:
    """The source a ``.zarr`` path holds: an NGFF image group, a named array, or an earlier spora ``(H, W, C)`` array."""
    import zarr

    from .legacy import LegacyZarrSource

    try:
        node = zarr.open(store=store if store is not None else path, mode="r")
    except Exception as exc:
        raise InvalidInputError(f"{path}: unreadable zarr store ({reason(exc)})") from None
    if isinstance(node, zarr.Group):
        return NgffSource(node, path)
    if node.metadata.zarr_format == 3 and node.metadata.dimension_names and None not in node.metadata.dimension_names:
        return NamedArraySource(node, path)
    return LegacyZarrSource(path, store)


def _image_group(group: Any, name: str) -> Any:
    """The image group of ``group``: itself, or image ``0`` of a bioformats2raw layout."""
    attributes = dict(group.attrs)
    ome = attributes.get("ome", attributes)
    if isinstance(ome, Mapping) and "multiscales" in ome:
        return group
    if isinstance(ome, Mapping) and "bioformats2raw.layout" in ome:
        try:
            return group["0"]
        except Exception:
            raise InvalidInputError(f"{name}: a bioformats2raw layout without image 0") from None
    kind = ngff_kind(attributes)
    what = kind if kind else "a zarr group without NGFF multiscales"
    raise InvalidInputError(f"{name}: {what}; add-image takes an NGFF image group (multiscales) or a zarr array")


def _ngff_attributes(image: Any, name: str) -> tuple[str, Mapping[str, Any], Mapping[str, Any]]:
    """``(version, multiscales[0], omero)`` of an NGFF 0.4 (attributes at the top) or 0.5 (under ``ome``) image group."""
    attributes = dict(image.attrs)
    ome = attributes["ome"] if isinstance(attributes.get("ome"), Mapping) else attributes
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], Mapping):
        raise InvalidInputError(f"{name}: not an NGFF image (no multiscales)")
    version = str(ome.get("version") or multiscales[0].get("version") or "")
    if version not in ("0.4", "0.5"):
        raise InvalidInputError(f"{name}: NGFF version {version or '(none)'}; add-image reads NGFF 0.4 and 0.5 images")
    omero: Mapping[str, Any] = ome["omero"] if isinstance(ome.get("omero"), Mapping) else {}
    return version, multiscales[0], omero


def _axes(multiscales: Mapping[str, Any], name: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """Axis names (``c``, ``t``, ``z``, ``y``, ``x``) in stored order, and the unit of each axis that has one."""
    axes, units = [], {}
    for axis in multiscales.get("axes") or []:
        if not isinstance(axis, Mapping):
            raise InvalidInputError(f"{name}: NGFF axes must be objects with a name, found {axis!r}")
        kind, label = axis.get("type"), str(axis.get("name", "")).lower()
        short = "c" if kind == "channel" else "t" if kind == "time" else _AXIS_NAMES.get(label, label)
        axes.append(short)
        if axis.get("unit"):
            unit = str(axis["unit"])
            if short in "zyx" and unit not in MICRONS_PER_UNIT:
                raise InvalidInputError(f"{name}: unit {unit!r} of axis {label}; expected one of {', '.join(MICRONS_PER_UNIT)}")
            units[short] = unit
    return tuple(axes), units


def _scale(transforms: Any, ndim: int, name: str) -> list[float]:
    """The ``scale`` of a list of NGFF coordinate transformations (ones when it has none)."""
    for transform in transforms or []:
        if isinstance(transform, Mapping) and transform.get("type") == "scale":
            scale = transform.get("scale")
            if not isinstance(scale, list) or len(scale) != ndim or not all(isinstance(v, (int, float)) and v > 0 for v in scale):
                raise InvalidInputError(f"{name}: NGFF scale {scale!r} must be {ndim} positive numbers")
            return [float(v) for v in scale]
    return [1.0] * ndim
