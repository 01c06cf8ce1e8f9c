"""A model's prediction over a whole tissue, as an ``ImageSource`` the one writer streams.

The writer asks :class:`PredictionSource` for windows ``read(y0, y1, x0, x1)``
block by block. The source finds the tiles (:func:`~spora_zarr.tiling.patching.axis_tiles`)
that the window needs, reads their input through :mod:`spora_zarr.read`
(one window per batch of tiles), runs the model in batches and assembles the
window:

``crop``
    each pixel comes from the one tile whose crop holds it (the crops
    partition the image), as careamics stitches.
``blend``
    each pixel is the average of the tiles that hold it, weighted by a
    Gaussian window (sigma = tile / 8, floored at 1e-3), as MONAI blends.

Tile outputs are kept in a small least-recently-used cache (``cache_bytes``),
so a tile whose crop spans two of the writer's blocks usually runs once;
memory holds one batch, one block and the cache, whatever the size of the
slide. Tiles whose tissue-mask fraction is below ``min_tissue`` do not run:
their pixels are ``fill_value``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..sources.base import ImageSource, SourceInfo
from ..tiling.patching import AxisTiles, axis_tiles
from .models import Model

__all__ = ["MODES", "InputWindows", "PredictionSource", "blend_window"]

MODES = ("crop", "blend")
MiB = 2**20


@dataclass
class InputWindows:
    """Model input windows of one tissue: read through ``reader``, preprocessed, zero-padded past the image.

    Attributes
    ----------
    reader
        A :class:`~spora_zarr.read.levels.LevelReader` of the input level.
    channels
        Channel indices to read (``None``: all).
    preprocess
        ``(C, h, w)`` float tensor -> float tensor (standardization), or ``None``.
    mask
        A reader of the tissue mask at the same level, for ``min_tissue``.
    """

    reader: Any
    channels: Sequence[int] | None = None
    preprocess: Callable[[Any], Any] | None = None
    mask: Any = None

    @property
    def height(self) -> int:
        return int(self.reader.shape[-2])

    @property
    def width(self) -> int:
        return int(self.reader.shape[-1])

    def read(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """A float32 ``(C, height, width)`` window; zeros (after preprocessing) outside the image."""
        import torch

        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + height, self.height), min(x0 + width, self.width)
        data = self.reader.read(ya, xa, yb - ya, xb - xa, self.channels)
        if data.ndim == 2:
            data = data[None]
        if self.preprocess is not None:
            data = self.preprocess(torch.from_numpy(np.ascontiguousarray(data))).numpy()
        data = np.asarray(data, dtype=np.float32)
        if data.shape[-2:] == (height, width):
            return data
        out = np.zeros((data.shape[0], height, width), np.float32)
        out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = data
        return out

    def tissue_fraction(self, y0: int, x0: int, size_y: int, size_x: int) -> float:
        """The share of mask pixels != 0 in the part of the window inside the image."""
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + size_y, self.height), min(x0 + size_x, self.width)
        data = self.mask.read(ya, xa, yb - ya, xb - xa)
        return float(np.count_nonzero(data)) / max(1, data.size)


def blend_window(size_y: int, size_x: int) -> np.ndarray:
    """The blend weights of a tile: a separable Gaussian (sigma = size / 8) scaled to 1 at its centre, floored at 1e-3."""

    def axis(n: int) -> np.ndarray:
        centre, sigma = (n - 1) / 2, max(n / 8, 1e-6)
        return np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2)

    return np.maximum(np.outer(axis(size_y), axis(size_x)), 1e-3).astype(np.float32)


class PredictionSource(ImageSource):
    """The prediction of ``model`` over a tissue, read window by window (see the module docstring).

    Parameters
    ----------
    model
        Maps a float32 tensor ``(B, C, T, T)`` to ``(B, K, T, T)`` (or ``(B, T, T)``).
    inputs
        The tissue's input windows.
    tile_size, overlap
        The tiling (:func:`~spora_zarr.tiling.patching.tile_specs`).
    batch_size
        Tiles per model call.
    mode
        ``"crop"`` or ``"blend"``.
    labels
        Write integer labels: the argmax over ``K > 1`` scores, or the
        model's integer output when ``K == 1``.
    device
        Where the model runs (``"cpu"``, ``"cuda"``, ...).
    min_tissue
        Skip tiles whose tissue-mask fraction is below this (needs ``inputs.mask``).
    fill_value
        Value of pixels no tile predicted.
    name
        Shown in errors (model and tissue).
    cache_bytes
        Bytes of tile outputs kept for neighbouring blocks.

    The first tile runs in the constructor: a model whose output has another
    spatial size than its input, or that fails, is an ``InvalidInputError``
    before anything is written.
    """

    def __init__(
        self,
        model: Model,
        inputs: InputWindows,
        tile_size: int,
        overlap: int,
        batch_size: int = 8,
        *,
        mode: str = "crop",
        labels: bool = False,
        device: str = "cpu",
        min_tissue: float | None = None,
        fill_value: float = 0,
        name: str = "<prediction>",
        channel_names: Sequence[str] | None = None,
        mpp: float | None = None,
        cache_bytes: int = 128 * MiB,
    ) -> None:
        if mode not in MODES:
            raise InvalidInputError(f"{name}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"{name}: batch size must be a whole number >= 1, got {batch_size!r}")
        if min_tissue is not None and (not 0 <= min_tissue <= 1 or inputs.mask is None):
            raise InvalidInputError(f"{name}: min_tissue must be in [0, 1] and needs a tissue mask, got {min_tissue!r}")
        self.model, self.inputs, self.batch_size, self.mode, self.labels = model, inputs, batch_size, mode, labels
        self.device, self.min_tissue, self.fill_value, self.name = device, min_tissue, fill_value, name
        self.tiles_y: AxisTiles = axis_tiles(inputs.height, tile_size, overlap)
        self.tiles_x: AxisTiles = axis_tiles(inputs.width, tile_size, overlap)
        self.tile_size = self.tiles_y.tile_size
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cached = 0
        self.tiles_run = 0
        self.tiles_skipped = 0
        probe = self._model_batch(self.inputs.read(0, 0, self.tile_size, self.tile_size)[None])[0]
        self.scores = int(probe.shape[0])
        self._score_dtype = probe.dtype
        self.dtype = np.dtype(np.float32)
        if labels:
            if self.scores > 1:
                self.dtype = np.dtype(np.uint8 if self.scores <= 256 else np.uint16 if self.scores <= 65536 else np.uint32)
            elif np.issubdtype(probe.dtype, np.integer) or probe.dtype == np.bool_:
                self.dtype = np.dtype(probe.dtype if probe.dtype in (np.uint8, np.uint16, np.uint32) else np.uint32)
            else:
                raise InvalidInputError(
                    f"{name}: labels need per-class scores (K > 1 channels) or one channel of integers; the model gives "
                    f"one channel of {probe.dtype}"
                )
            if mode == "blend" and self.scores == 1:
                raise InvalidInputError(f"{name}: blend mode needs per-class scores for labels (K > 1 channels), the model gives 1")
        channels = 1 if labels else self.scores
        if channel_names is not None and len(channel_names) != channels and not labels:
            raise InvalidInputError(f"{name}: the model gives {channels} channels but {len(channel_names)} channel names were given")
        self.shape = (channels, inputs.height, inputs.width)
        self.info = SourceInfo(channel_names=list(channel_names) if channel_names else None, mpp=mpp)
        self._weights = blend_window(self.tile_size, self.tile_size) if mode == "blend" else None
        if min_tissue is None:  # the probe is tile (0, 0): keep it
            self._remember((0, 0), self._keep((0, 0), probe))
            self.tiles_run = 1

    # -- the model -------------------------------------------------------------------
    def _model_batch(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on ``(B, C, T, T)`` float32; ``(B, K, T, T)`` numpy out (floats as float32)."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        try:
            with torch.inference_mode():
                out = self.model(tensor)
        except Exception as exc:  # the model's own failure, named with the tissue
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInputError(f"{self.name}: the model failed on a batch of shape {tuple(batch.shape)}: {text[:200]}") from None
        if not isinstance(out, torch.Tensor):
            raise InvalidInputError(f"{self.name}: the model returned {type(out).__name__}, expected a tensor")
        if out.ndim == 3:
            out = out[:, None]
        if out.ndim != 4 or out.shape[0] != batch.shape[0] or tuple(out.shape[-2:]) != tuple(batch.shape[-2:]):
            raise InvalidInputError(
                f"{self.name}: the model output has shape {tuple(out.shape)} for input {tuple(batch.shape)}; "
                "expected (B, K, H, W) with the input's spatial size"
            )
        array = out.detach().cpu().numpy()
        if np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
            array = array.astype(np.float32)
        return array

    def _as_output(self, scores: np.ndarray) -> np.ndarray:
        """``(K, h, w)`` scores -> the written ``(channels, h, w)`` pixels."""
        if not self.labels:
            return scores.astype(np.float32, copy=False)
        if self.scores > 1:
            return np.argmax(scores, axis=0)[None].astype(self.dtype)
        return scores.astype(self.dtype, copy=False)

    # -- tiles and the cache ---------------------------------------------------------------
    def _tile_box(self, i: int, j: int) -> tuple[int, int]:
        return self.tiles_y.starts[i], self.tiles_x.starts[j]

    def _compute(self, wanted: Sequence[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray | None]:
        """Outputs of tiles ``wanted`` (cached or computed now); ``None`` for a skipped tile."""
        found: dict[tuple[int, int], np.ndarray | None] = {}
        missing = []
        for key in wanted:
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
            else:
                missing.append(key)
        size = self.tile_size
        for start in range(0, len(missing), self.batch_size):
            group = missing[start : start + self.batch_size]
            if self.min_tissue is not None:
                keep = []
                for key in group:
                    y, x = self._tile_box(*key)
                    if self.inputs.tissue_fraction(y, x, size, size) >= self.min_tissue:
                        keep.append(key)
                    else:
                        found[key] = None
                        self._remember(key, None)
                        self.tiles_skipped += 1
                group = keep
            if not group:
                continue
            boxes = [self._tile_box(*key) for key in group]
            y0, x0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
            y1, x1 = max(b[0] for b in boxes) + size, max(b[1] for b in boxes) + size
            window = self.inputs.read(y0, x0, y1 - y0, x1 - x0)
            batch = np.stack([window[:, y - y0 : y - y0 + size, x - x0 : x - x0 + size] for y, x in boxes])
            outputs = self._model_batch(batch)
            self.tiles_run += len(group)
            for key, out in zip(group, outputs):
                kept = self._keep(key, out)
                found[key] = kept
                self._remember(key, kept)
        return found

    def _keep(self, key: tuple[int, int], out: np.ndarray) -> np.ndarray:
        """What the cache holds of a tile: its crop (crop mode, as output pixels) or its weighted scores (blend)."""
        if self._weights is not None:  # blend
            return (out.astype(np.float32, copy=False) * self._weights).astype(np.float32, copy=False)
        i, j = key
        ys, xs = self._tile_box(i, j)
        cy0, cy1 = self.tiles_y.crop_starts[i] - ys, self.tiles_y.crop_stops[i] - ys
        cx0, cx1 = self.tiles_x.crop_starts[j] - xs, self.tiles_x.crop_stops[j] - xs
        return np.ascontiguousarray(self._as_output(out[:, cy0:cy1, cx0:cx1]))

    def _remember(self, key: tuple[int, int], value: np.ndarray | None) -> None:
        if value is not None and value.nbytes > self.cache_bytes:
            return
        self._cache[key] = value
        self._cached += 0 if value is None else value.nbytes
        while self._cached > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached -= 0 if old is None else old.nbytes

    # -- the ImageSource ------------------------------------------------------------------
    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.mode == "crop":
            return self._read_crop(y0, y1, x0, x1)
        return self._read_blend(y0, y1, x0, x1)

    def _read_crop(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.full((self.shape[0], y1 - y0, x1 - x0), self.fill_value, dtype=self.dtype)
        rows, cols = self.tiles_y.covering(y0, y1), self.tiles_x.covering(x0, x1)
        crops = self._compute([(i, j) for i in rows for j in cols])
        for (i, j), crop in crops.items():
            if crop is None:
                continue
            cy, cx = self.tiles_y.crop_starts[i], self.tiles_x.crop_starts[j]
            ya, yb = max(y0, cy), min(y1, cy + crop.shape[1])
            xa, xb = max(x0, cx), min(x1, cx + crop.shape[2])
            out[:, ya - y0 : yb - y0, xa - x0 : xb - x0] = crop[:, ya - cy : yb - cy, xa - cx : xb - cx]
        return out

    def _read_blend(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        acc = np.zeros((self.scores, y1 - y0, x1 - x0), np.float32)
        weight = np.zeros((y1 - y0, x1 - x0), np.float32)
        assert self._weights is not None
        rows, cols = self.tiles_y.touching(y0, y1), self.tiles_x.touching(x0, x1)
        tiles = self._compute([(i, j) for i in rows for j in cols])
        for (i, j), weighted in tiles.items():
            if weighted is None:
                continue
            ty, tx = self._tile_box(i, j)
            ya, yb = max(y0, ty), min(y1, ty + self.tile_size)
            xa, xb = max(x0, tx), min(x1, tx + self.tile_size)
            acc[:, ya - y0 : yb - y0, xa - x0 : xb - x0] += weighted[:, ya - ty : yb - ty, xa - tx : xb - tx]
            weight[ya - y0 : yb - y0, xa - x0 : xb - x0] += self._weights[ya - ty : yb - ty, xa - tx : xb - tx]
        covered = weight > 0
        out = np.full((self.shape[0], y1 - y0, x1 - x0), self.fill_value, dtype=self.dtype)
        if covered.any():
            mean = acc / np.where(covered, weight, 1)[None]
            values = self._as_output(mean)
            out[:, covered] = values[:, covered]
        return out

    @property
    def tiles_total(self) -> int:
        """Tiles of the whole tissue."""
        return len(self.tiles_y) * len(self.tiles_x)

