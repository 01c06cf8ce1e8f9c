"""A lossy opt-in: an 8-bit RGB source whose tiles the writer stores as JPEG at a stated quality."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .base import EncodedTiles, ImageSource

__all__ = ["JPEG_TILE", "JpegEncoded"]

#: Edge of the JPEG tiles (chunks) made from pixels: a slide scanner's usual tile.
JPEG_TILE = 256


class JpegEncoded(ImageSource):
    """``source`` (8-bit RGB) as it is, offering its tiles JPEG-encoded at ``quality`` (1-100) to the writer.

    The writer stores them as it stores a JPEG slide's own tiles (same codec,
    same read path); edge tiles are padded by repeating the last row and
    column, which zarr crops away. The tiles may be encoded by several threads
    at once; ``source`` is read by one at a time. Closing it leaves ``source``
    to its owner.
    """

    def __init__(self, source: ImageSource, quality: int) -> None:
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise InvalidInputError(f"{source.name}: JPEG quality must be an integer 1-100, got {quality!r}")
        if source.shape[0] != 3 or np.dtype(source.dtype) != np.uint8 or not source.info.is_rgb:
            raise InvalidInputError(f"{source.name}: JPEG storage is for 8-bit RGB images, this one is {source.shape[0]} x {source.dtype}")
        if int(getattr(source, "nz", 1)) > 1:
            raise InvalidInputError(f"{source.name}: JPEG storage is for 2-D images, this one is a stack of {source.nz} z planes")
        self.source, self.quality = source, quality
        self._reading = threading.Lock()  # sources need not be thread-safe
        self.name, self.shape, self.dtype, self.info = source.name, source.shape, source.dtype, source.info

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.source.read(y0, y1, x0, x1)

    def encoded_tiles(self) -> EncodedTiles:
        import imagecodecs

        _, height, width = self.shape

        def read(row: int, col: int) -> bytes:
            y0, x0 = row * JPEG_TILE, col * JPEG_TILE
            with self._reading:
                block = self.source.read(y0, min(y0 + JPEG_TILE, height), x0, min(x0 + JPEG_TILE, width))
            pad = ((0, 0), (0, JPEG_TILE - block.shape[1]), (0, JPEG_TILE - block.shape[2]))
            tile = np.ascontiguousarray(np.pad(block, pad, mode="edge").transpose(1, 2, 0))
            return bytes(imagecodecs.jpeg8_encode(tile, level=self.quality))

        codec: dict[str, Any] = {"level": self.quality}
        return EncodedTiles(codec=codec, tile=(JPEG_TILE, JPEG_TILE), read=read)
