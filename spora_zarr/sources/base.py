"""The ``ImageSource`` protocol: anything that produces pixels for the one writer.

A source presents its image as ``(C, H, W)`` and is read window by window, so a
slide larger than memory streams through :mod:`spora_zarr.write` block by block.
A source of a z stack says so with ``nz > 1`` (``shape`` stays ``(C, H, W)``, one
plane) and is read with :meth:`ImageSource.read_volume`; the writer streams it
plane by plane.
The converter's files (TIFF, legacy zarr, PNG/JPEG), arrays in memory, and later
stitched mosaics and model predictions are all sources: each gets the writer's
pyramid, staging, resume and validation without a writer of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidInputError, reason

__all__ = ["ArraySource", "AxesView", "ImageSource", "SourceInfo", "reason"]


@dataclass
class SourceInfo:
    """What a source says about itself beyond its pixels.

    Attributes
    ----------
    channel_names
        Names of the ``C`` channels, when the source records them (OME-TIFF).
    mpp
        Microns per pixel on y/x, when the source records it.
    is_rgb
        Whether the channels are the red, green and blue of a colour image.
    z_mpp
        Microns between z planes of a stack, when the source records it.
    """

    channel_names: list[str] | None = None
    mpp: float | None = None
    is_rgb: bool = False
    #: (y, x) microns per pixel when they differ (``mpp`` is then ``None``): anisotropic pixels.
    anisotropic: tuple[float, float] | None = None
    #: Microns between the planes of a z stack, where the file records it.
    z_mpp: float | None = None


@dataclass(frozen=True)
class EncodedTiles:
    """A source whose pixels are JPEG tiles the writer may keep as they are, as the chunks of its array.

    Attributes
    ----------
    codec
        The ``imagecodecs_jpeg`` configuration that decodes one tile to
        ``(tile_h, tile_w, C)`` exactly as the source's own decoder does
        (``tables`` and ``header`` as bytes).
    tile
        ``(tile_h, tile_w)``; edge tiles are full-size (padded), as zarr's chunks are.
    read
        The bytes of tile ``(row, col)``; empty where the source has none.
        Called by several threads at once (the writer's lanes): it must be thread-safe.
    """

    codec: dict[str, Any]
    tile: tuple[int, int]
    read: Callable[[int, int], bytes]


@runtime_checkable
class ImageSource(Protocol):
    """A ``(C, H, W)`` image read window by window; a context manager that closes it.

    Implementations set ``name`` (shown in errors), ``shape``, ``dtype`` and
    ``info``, implement :meth:`read`, and override :meth:`close` when they hold
    files or threads. Subclassing this protocol gives the context manager and a
    no-op ``close``. A source whose :meth:`read` may be called from several
    threads at once says so with a true ``concurrent_reads`` attribute (the
    writer's lanes then read it at once); without one it is read by one thread
    at a time.
    """

    name: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    info: SourceInfo
    #: Number of z planes; 1 for a 2-D image.
    nz: int = 1

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[:, y0:y1, x0:x1]`` as a ``(C, y1 - y0, x1 - x0)`` array of ``dtype``.

        The window lies inside the image. A source that cannot produce it raises
        :class:`~spora_zarr.errors.InvalidInputError` naming itself and the reason.
        """
        ...

    def read_volume(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels of planes ``z0:z1`` as ``(C, z1 - z0, y1 - y0, x1 - x0)``; a 2-D source has the one plane 0."""
        if (z0, z1) != (0, 1):
            raise InvalidInputError(f"{self.name}: a 2-D image has no planes {z0}:{z1}")
        return self.read(y0, y1, x0, x1)[:, None]

    def reduced_levels(self) -> dict[int, ImageSource]:
        """The source's own reduced images at ``2**k`` of its size, by factor (a slide's pyramid); none by default.

        The writer stores them pixel-exact as pyramid levels; the caller closes them.
        """
        return {}

    def encoded_tiles(self) -> EncodedTiles | None:
        """The source's JPEG tiles, when the writer may keep them as chunks (``None``: pixels only)."""
        return None

    def close(self) -> None:
        """Release files and threads; the source is not read afterwards."""
        return None

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass
class ArraySource(ImageSource):
    """An in-memory ``(C, H, W)`` (or ``(H, W)``, or a ``(C, Z, H, W)`` stack) numpy or any sliceable array."""

    array: Any
    name: str = "<array>"
    info: SourceInfo = field(default_factory=SourceInfo)
    #: The array's JPEG chunks as stored, for the writer to keep (a stored JPEG slide level rewritten).
    tiles: EncodedTiles | None = None

    def __post_init__(self) -> None:
        if self.array.ndim == 2:
            self.array = self.array[None]
        if self.array.ndim not in (3, 4):
            raise InvalidInputError(f"{self.name}: expected a (C, H, W), (H, W) or (C, Z, H, W) array, got shape {self.array.shape}")
        channels, *rest = (int(n) for n in self.array.shape)
        self.nz = rest[0] if len(rest) == 3 else 1
        self.shape = (channels, rest[-2], rest[-1])
        self.dtype = np.dtype(self.array.dtype)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.array.ndim == 4:
            return np.asarray(self.array[:, 0, y0:y1, x0:x1])
        return np.asarray(self.array[:, y0:y1, x0:x1])

    def encoded_tiles(self) -> EncodedTiles | None:
        return self.tiles

    def read_volume(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.array.ndim == 3:
            return super().read_volume(z0, z1, y0, y1, x0, x1)
        return np.asarray(self.array[:, z0:z1, y0:y1, x0:x1])


class AxesView:
    """Windows of one zarr view whose axes are named by tifffile letters, as ``(C, h, w)``."""

    def __init__(self, array: Any, axes: str, name: str) -> None:
        if "Y" not in axes or "X" not in axes:
            raise InvalidInputError(f"{name}: unsupported TIFF axes {axes!r} (no Y/X plane)")
        self.array, self.axes, self.name = array, axes, name
        others = [i for i, a in enumerate(axes) if a not in "YX"]
        self._order = [*others, axes.index("Y"), axes.index("X")]
        self.channels = int(np.prod([array.shape[i] for i in others], dtype=np.int64))
        self.height, self.width = array.shape[axes.index("Y")], array.shape[axes.index("X")]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        index: list[slice] = [slice(None)] * len(self.axes)
        index[self.axes.index("Y")] = slice(y0, y1)
        index[self.axes.index("X")] = slice(x0, x1)
        window = np.asarray(self.array[tuple(index)])
        return window.transpose(self._order).reshape(self.channels, y1 - y0, x1 - x0)
