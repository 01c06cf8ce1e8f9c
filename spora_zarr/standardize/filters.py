"""Named per-channel image filters for multiplex datasets, built from configuration (``FilterFactory``).

A filter maps one ``(h, w)`` plane to a plane of the same shape and dtype and
declares the ``margin`` of context it needs around a window. Datasets read a
window grown by the largest margin (clipped at the image border), filter it and
crop, so a filtered tile equals the filtered whole image cropped: at the image
border both see the same reflected edge, and inside the image the margin
covers the filter's reach.

Configuration: ``{"CD3": "median", "Ki67": {"name": "gaussian", "sigma": 1.0}, "*": {"name": "hot_pixel", "threshold": 50}}``
(``"*"`` is every channel not named); a channel without an entry is not filtered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["ChannelFilters", "FilterFactory", "ImageFilter"]


@dataclass(frozen=True)
class ImageFilter:
    """One named filter: ``function(plane) -> plane`` (same shape and dtype) needing ``margin`` pixels of context."""

    name: str
    function: Callable[[np.ndarray], np.ndarray]
    margin: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, plane: np.ndarray) -> np.ndarray:
        return self.function(plane)

    def __reduce__(self) -> tuple[Any, ...]:  # pickles to its name and parameters (DataLoader workers rebuild it)
        return (_create, (self.name, self.params))


def _create(name: str, params: dict[str, Any]) -> ImageFilter:
    return FilterFactory.create(name, **params)


def _identity() -> ImageFilter:
    return ImageFilter("identity", lambda plane: plane)


def _median(size: int = 3) -> ImageFilter:
    from scipy import ndimage

    if int(size) < 1:
        raise InvalidInputError(f"median filter size must be >= 1, got {size!r}")
    return ImageFilter("median", lambda p: ndimage.median_filter(p, size=int(size), mode="reflect"), int(size) // 2, {"size": int(size)})


def _gaussian(sigma: float = 1.0, truncate: float = 4.0) -> ImageFilter:
    from scipy import ndimage

    if not float(sigma) > 0:
        raise InvalidInputError(f"gaussian filter sigma must be > 0, got {sigma!r}")
    radius = int(float(truncate) * float(sigma) + 0.5)

    def smooth(plane: np.ndarray) -> np.ndarray:
        out = ndimage.gaussian_filter(plane.astype(np.float64), float(sigma), mode="reflect", truncate=float(truncate))
        if plane.dtype.kind in "ui":
            info = np.iinfo(plane.dtype)
            value: np.ndarray = np.clip(np.rint(out), info.min, info.max).astype(plane.dtype)
            return value
        value = out.astype(plane.dtype)
        return value

    return ImageFilter("gaussian", smooth, radius, {"sigma": float(sigma), "truncate": float(truncate)})


def _clip(low: float | None = None, high: float | None = None) -> ImageFilter:
    if low is None and high is None:
        raise InvalidInputError("clip filter needs low, high or both")
    return ImageFilter("clip", lambda p: np.clip(p, low, high).astype(p.dtype, copy=False), 0, {"low": low, "high": high})


def _hot_pixel(threshold: float = 50.0, size: int = 3) -> ImageFilter:
    """Pixels above the median of their neighbourhood by more than ``threshold`` become that median."""
    from scipy import ndimage

    if int(size) < 3:
        raise InvalidInputError(f"hot_pixel neighbourhood size must be >= 3, got {size!r}")

    def remove(plane: np.ndarray) -> np.ndarray:
        footprint = np.ones((int(size), int(size)), bool)
        footprint[int(size) // 2, int(size) // 2] = False  # the neighbours, not the pixel itself
        median = ndimage.median_filter(plane, footprint=footprint, mode="reflect")
        hot = plane.astype(np.float64) - median.astype(np.float64) > float(threshold)
        return np.where(hot, median, plane)

    return ImageFilter("hot_pixel", remove, int(size) // 2, {"threshold": float(threshold), "size": int(size)})


class FilterFactory:
    """Builds named filters: ``identity``, ``median``, ``gaussian``, ``clip``, ``hot_pixel``."""

    builders: dict[str, Callable[..., ImageFilter]] = {
        "identity": _identity,
        "median": _median,
        "gaussian": _gaussian,
        "clip": _clip,
        "hot_pixel": _hot_pixel,
    }

    @classmethod
    def create(cls, name: str, **params: Any) -> ImageFilter:
        """One filter by name; ``InvalidInputError`` listing the names, or naming a bad parameter."""
        builder = cls.builders.get(name)
        if builder is None:
            raise InvalidInputError(f"unknown filter {name!r}; expected one of {', '.join(cls.builders)}")
        try:
            return builder(**params)
        except TypeError as exc:
            raise InvalidInputError(f"bad parameters {params} for filter {name!r}: {exc}") from None

    @classmethod
    def from_config(cls, config: Mapping[str, str | Mapping[str, Any]] | ChannelFilters) -> ChannelFilters:
        """Per-channel filters from ``{channel or "*": name or {"name": ..., params}}``."""
        if isinstance(config, ChannelFilters):
            return config
        if not isinstance(config, Mapping):
            raise InvalidInputError(f"filters must be a mapping of channel name to filter, got {type(config).__name__}")
        built = {}
        for channel, entry in config.items():
            if isinstance(entry, str):
                built[str(channel)] = cls.create(entry)
            elif isinstance(entry, Mapping) and "name" in entry:
                built[str(channel)] = cls.create(str(entry["name"]), **{k: v for k, v in entry.items() if k != "name"})
            else:
                raise InvalidInputError(f"filter of channel {channel!r} must be a name or a mapping with 'name', got {entry!r}")
        return ChannelFilters(built)


@dataclass(frozen=True)
class ChannelFilters:
    """Filters by channel name (``"*"``: every other channel)."""

    filters: dict[str, ImageFilter]

    @property
    def margin(self) -> int:
        """Context, in pixels, the filters need around a window."""
        return max((f.margin for f in self.filters.values()), default=0)

    def for_channel(self, name: str) -> ImageFilter | None:
        return self.filters.get(name) or self.filters.get("*")

    def apply(self, image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
        """Filter the planes of a ``(C, h, w)`` array named ``channel_names`` (a new array when any filter runs)."""
        if len(channel_names) != image.shape[0]:
            raise InvalidInputError(f"image has {image.shape[0]} channels but {len(channel_names)} channel names were given")
        out = image
        for c, name in enumerate(channel_names):
            chosen = self.for_channel(name)
            if chosen is None or chosen.name == "identity":
                continue
            if out is image:
                out = image.copy()
            out[c] = chosen(image[c])
        return out


def margin_of(filters: ChannelFilters | None) -> int:
    """The margin of optional filters."""
    return 0 if filters is None else filters.margin
