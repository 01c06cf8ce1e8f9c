"""Aperio-style SVS slides for tests and benchmarks, written by tifffile from an H&E-like RGB image."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["HELike", "he_like", "write_svs"]


class HELike:
    """A lazy ``(height, width, 3)`` uint8 H&E-like slide: skimage's immunohistochemistry patch tiled, each copy
    flipped and tinted at random; sliced like an array (``image[y0:y1:step, x0:x1:step]``), never held whole."""

    def __init__(self, height: int, width: int, seed: int = 0) -> None:
        from skimage import data

        self.patch = data.immunohistochemistry()
        self.shape = (height, width, 3)
        self.dtype = np.dtype(np.uint8)
        self.nbytes = height * width * 3
        ph, pw = self.patch.shape[:2]
        cells = (-(-height // ph), -(-width // pw))
        rng = np.random.default_rng(seed)
        self._flip = rng.integers(0, 2, (2, *cells)).astype(bool)
        self._tint = rng.integers(-12, 13, (*cells, 3)).astype(np.int16)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = (np.arange(*k.indices(n)) for k, n in zip(key, self.shape[:2]))
        ph, pw = self.patch.shape[:2]
        cy, cx = ys[:, None] // ph, xs[None, :] // pw
        ly, lx = ys[:, None] % ph, xs[None, :] % pw
        rows = np.where(self._flip[0][cy, cx], ph - 1 - ly, ly)
        cols = np.where(self._flip[1][cy, cx], pw - 1 - lx, lx)
        value: np.ndarray = np.clip(self.patch[rows, cols].astype(np.int16) + self._tint[cy, cx], 0, 255).astype(np.uint8)
        return value

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self[slice(None), slice(None)]


def he_like(height: int, width: int, seed: int = 0) -> HELike:
    """An H&E-like slide of ``(height, width, 3)`` (lazy: :class:`HELike`)."""
    return HELike(height, width, seed)


def _tiles(image: np.ndarray | HELike, tile: int, step: int = 1) -> Iterator[np.ndarray]:
    height, width = (-(-n // step) for n in image.shape[:2])
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = image[y * step : (y + tile) * step : step, x * step : (x + tile) * step : step]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def write_svs(
    path: str | os.PathLike[str],
    image: np.ndarray | HELike,
    *,
    mpp: float = 0.252,
    factors: Sequence[int] = (4,),
    tile: int = 256,
    quality: int = 80,
) -> None:
    """Write ``image`` (``(H, W, 3)`` uint8, an array or :class:`HELike`) as an Aperio-style SVS.

    JPEG tiles (RGB colour space, as Aperio's), a thumbnail, and reduced levels
    at ``factors`` (strided from the image).

    The first page's ImageDescription is ``Aperio Image Library ...|MPP = <mpp>``.
    """
    import tifffile

    height, width = image.shape[:2]
    description = (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"
        f"|AppMag = 40|MPP = {mpp:.4f}"
    )
    options: dict[str, Any] = dict(
        photometric="rgb", compression="jpeg", compressionargs={"level": quality, "outcolorspace": "RGB"}, metadata=None
    )
    with tifffile.TiffWriter(path, bigtiff=image.nbytes > 2**31) as writer:
        writer.write(_tiles(image, tile), shape=image.shape, dtype=np.uint8, tile=(tile, tile), description=description, **options)
        step = max(1, max(height, width) // 256)
        writer.write(np.ascontiguousarray(image[::step, ::step]), description="Aperio thumbnail", **options)
        for factor in factors:
            shape = (-(-height // factor), -(-width // factor), 3)
            writer.write(
                _tiles(image, tile, factor), shape=shape, dtype=np.uint8, tile=(tile, tile), description=f"Aperio level {factor}", **options
            )
