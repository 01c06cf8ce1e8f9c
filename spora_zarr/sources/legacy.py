"""Earlier spora tissues stored as plain ``(H, W, C)`` zarr arrays (``<tissue>.zarr``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .base import AxesView, ImageSource, SourceInfo, reason


class LegacyZarrSource(ImageSource):
    """An earlier spora tissue: a plain zarr array ``<tissue>.zarr`` in ``(H, W, C)`` order."""

    def __init__(self, path: str, store: Any = None) -> None:
        import zarr

        self.name = path
        try:
            self._array = zarr.open_array(store if store is not None else path, mode="r")
        except Exception as exc:
            raise InvalidInputError(f"{path}: unreadable zarr array ({reason(exc)})") from None
        if self._array.ndim == 2:
            self._view = AxesView(self._array, "YX", path)
        elif self._array.ndim == 3:
            self._view = AxesView(self._array, "YXS", path)
        else:
            raise InvalidInputError(f"{path}: expected an (H, W, C) array, got shape {self._array.shape}")
        self.shape = (self._view.channels, self._view.height, self._view.width)
        self.dtype = np.dtype(self._array.dtype)
        self.info = SourceInfo(is_rgb=self._array.ndim == 3 and self._array.shape[-1] == 3 and self.dtype == np.uint8)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            return self._view.read(y0, y1, x0, x1)
        except Exception as exc:
            raise InvalidInputError(f"{self.name}: unreadable zarr data ({reason(exc)})") from None
