"""A model's prediction over a whole tissue, as an ``ImageSource`` the one writer streams.

The writer asks :class:`PredictionSource` for windows ``read(y0, y1, x0, x1)``
block by block. The source finds the tiles (:func:`~spora_zarr.tiling.patching.axis_tiles`)
that the window needs, reads their input through :mod:`spora_zarr.read`
(one window per batch of tiles, cast once into a reused float32 batch
buffer), runs the model in batches and assembles the window:

``crop``
    each pixel comes from the one tile whose crop holds it (the crops
    partition the image), as careamics stitches.
``blend``
    each pixel is the average of the tiles that hold it, weighted by a
    Gaussian window (sigma = tile / 8, floored at 1e-3), as MONAI blends.

Each tile's *footprint* (its crop, or in blend mode its window inside the
image) is pasted into the block being read, and only the part of it outside
that block is kept (strips of a few rows or columns, at most four boxes) until
the neighbouring blocks take it; the writer's blocks partition the image, so
a footprint is dropped once all its pixels are taken. These leftovers are bounded by
``cache_bytes`` (least recently used out first; an evicted tile runs again),
so each tile runs once and memory holds one batch, one block and the strips,
whatever the size of the slide. Tiles whose tissue-mask fraction is below
``min_tissue`` do not run: their pixels are ``fill_value``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..access.window import Window
from ..errors import InvalidInputError, reason
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
        ``(C, h, w)`` tensor of the stored dtype -> float tensor (standardization),
        or ``None`` (the stored values, as float32).
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

    @property
    def channel_count(self) -> int:
        """Channels of a window."""
        if self.channels is not None:
            return len(self.channels)
        return int(self.reader.shape[0]) if len(self.reader.shape) == 3 else 1

    def fill(self, batch: np.ndarray, corners: Sequence[tuple[int, int]]) -> None:
        """Put the windows at ``corners`` (top-left, of ``batch``'s edge) into ``batch[:len(corners)]``.

        The bounding window of all of them is read once; each tile is then cast
        into its float32 slot (the one conversion), zeros past the image.
        """
        size_y, size_x = batch.shape[-2:]
        tiles = [Window.from_corner(y, x, size_y, size_x) for y, x in corners]
        bounding = Window(tuple(map(min, zip(*(t.start for t in tiles)))), tuple(map(max, zip(*(t.stop for t in tiles)))))
        span = bounding.clip((self.height, self.width))
        assert span is not None  # tiles start inside the image
        data = self.reader.read(*span.corner, self.channels)
        if data.ndim == 2:
            data = data[None]
        if self.preprocess is not None:
            import torch

            data = self.preprocess(torch.from_numpy(np.ascontiguousarray(data))).numpy()
        for slot, tile in zip(batch, tiles):
            part = tile.intersect(span)
            assert part is not None
            if part != tile:
                slot.fill(0)
            np.copyto(slot[part.relative_to(tile).index], data[part.relative_to(span).index], casting="unsafe")

    def tissue_fraction(self, y0: int, x0: int, size_y: int, size_x: int) -> float:
        """The share of mask pixels != 0 in the part of the window inside the image."""
        inside = Window.from_corner(y0, x0, size_y, size_x).clip((self.height, self.width))
        if inside is None:
            return 0.0
        data = self.mask.read(*inside.corner)
        return float(np.count_nonzero(data)) / max(1, int(data.size))


def blend_window(size_y: int, size_x: int) -> np.ndarray:
    """The blend weights of a tile: a separable Gaussian (sigma = size / 8) scaled to 1 at its centre, floored at 1e-3."""

    def axis(n: int) -> np.ndarray:
        centre, sigma = (n - 1) / 2, max(n / 8, 1e-6)
        weights: np.ndarray = np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2)
        return weights

    return np.maximum(np.outer(axis(size_y), axis(size_x)), 1e-3).astype(np.float32)


def _area(box: Window | None) -> int:
    return 0 if box is None else box.size


#: Pieces of a tile's footprint not yet taken: image window and its pixels (``None``: a skipped tile).
Pieces = list[tuple[Window, "np.ndarray | None"]]


#: Called with a tile's key, a piece ``(box, data)`` and the ``region`` of the piece in the block being read.
Use = Callable[[tuple[int, int], Window, "np.ndarray | None", Window], None]


def _nbytes(pieces: Pieces) -> int:
    return sum(0 if data is None else int(data.nbytes) for _, data in pieces)


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
        Bytes of tile leftovers kept for neighbouring blocks.

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
        self._cache: OrderedDict[tuple[int, int], Pieces] = OrderedDict()
        self._cached = 0
        self.tiles_run = 0
        self.tiles_skipped = 0
        self._batch = np.empty((batch_size, inputs.channel_count, self.tile_size, self.tile_size), np.float32)
        probe = self._run([(0, 0)])[0]
        self.scores = int(probe.shape[0])
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
            if not float(fill_value).is_integer() or not 0 <= fill_value <= np.iinfo(self.dtype).max:
                raise InvalidInputError(
                    f"{name}: the fill value of labels must be a whole number in 0 to {np.iinfo(self.dtype).max}, got {fill_value!r}"
                )
            if mode == "blend" and self.scores == 1:
                raise InvalidInputError(f"{name}: blend mode needs per-class scores for labels (K > 1 channels), the model gives 1")
        channels = 1 if labels else self.scores
        if channel_names is not None and len(channel_names) != channels and not labels:
            raise InvalidInputError(f"{name}: the model gives {channels} channels but {len(channel_names)} channel names were given")
        self.shape = (channels, inputs.height, inputs.width)
        self.info = SourceInfo(channel_names=list(channel_names) if channel_names else None, mpp=mpp)
        self._weights = blend_window(self.tile_size, self.tile_size) if mode == "blend" else None
        if min_tissue is None:  # the probe is tile (0, 0): keep it for the first block
            self._take((0, 0), self._fresh((0, 0), probe), Window((0, 0), (0, 0)), None, owned=False)

    # -- the model -------------------------------------------------------------------
    def _run(self, keys: Sequence[tuple[int, int]]) -> np.ndarray:
        """Outputs ``(n, K, T, T)`` of tiles ``keys`` (at most a batch); a view of the batch buffer for in-place models."""
        batch = self._batch[: len(keys)]
        self.inputs.fill(batch, [self._corner(*key) for key in keys])
        outputs = self._model_batch(batch)
        self.tiles_run += len(keys)
        return outputs

    def _model_batch(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on ``(B, C, T, T)`` float32; ``(B, K, T, T)`` numpy out (floats as float32)."""
        import torch

        tensor = torch.from_numpy(batch).to(self.device)
        try:
            with torch.inference_mode():
                out = self.model(tensor)
        except Exception as exc:  # the model's own failure, named with the tissue
            raise InvalidInputError(f"{self.name}: the model failed on a batch of shape {tuple(batch.shape)}: {reason(exc)}") from None
        if not isinstance(out, torch.Tensor):
            raise InvalidInputError(f"{self.name}: the model returned {type(out).__name__}, expected a tensor")
        if out.ndim == 3:
            out = out[:, None]
        if out.ndim != 4 or out.shape[0] != batch.shape[0] or tuple(out.shape[-2:]) != tuple(batch.shape[-2:]):
            raise InvalidInputError(
                f"{self.name}: the model output has shape {tuple(out.shape)} for input {tuple(batch.shape)}; "
                "expected (B, K, H, W) with the input's spatial size"
            )
        if out.is_complex():
            raise InvalidInputError(f"{self.name}: the model output is {out.dtype} (complex); predictions must be real numbers")
        array = out.detach().cpu().numpy()
        if np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
            array = array.astype(np.float32)
        return array

    def _as_output(self, scores: np.ndarray) -> np.ndarray:
        """``(K, h, w)`` scores -> the written ``(channels, h, w)`` pixels."""
        if not self.labels:
            return scores.astype(np.float32, copy=False)
        if self.scores > 1:
            labels: np.ndarray = np.argmax(scores, axis=0)[None].astype(self.dtype)
            return labels
        if scores.size and scores.dtype != self.dtype:
            lo, hi, info = scores.min(), scores.max(), np.iinfo(self.dtype)
            if lo < info.min or hi > info.max:
                raise InvalidInputError(
                    f"{self.name}: the model gives labels {lo} to {hi}, outside the {self.dtype} labels stored ({info.min} to {info.max})"
                )
        return scores.astype(self.dtype, copy=False)

    # -- tiles, footprints and leftovers ------------------------------------------------------
    def _corner(self, i: int, j: int) -> tuple[int, int]:
        return self.tiles_y.starts[i], self.tiles_x.starts[j]

    def _footprint(self, i: int, j: int) -> Window:
        """The pixels tile ``(i, j)`` gives: its crop, or (blend) its window inside the image."""
        if self._weights is None:
            ty, tx = self.tiles_y, self.tiles_x
            return Window.from_bounds(ty.crop_starts[i], ty.crop_stops[i], tx.crop_starts[j], tx.crop_stops[j])
        inside = self._tile(i, j).clip(self.shape)
        assert inside is not None  # tiles start inside the image
        return inside

    def _tile(self, i: int, j: int) -> Window:
        """The whole window of tile ``(i, j)`` (it may reach past the image)."""
        return Window.from_corner(*self._corner(i, j), self.tile_size, self.tile_size)

    def _fresh(self, key: tuple[int, int], scores: np.ndarray | None) -> Pieces:
        """A tile's whole footprint from its ``(K, T, T)`` scores: output pixels of its crop, or weighted scores (blend)."""
        box = self._footprint(*key)
        if scores is None:
            return [(box, None)]
        window = scores[box.relative_to(self._tile(*key)).index]
        if self._weights is None:
            return [(box, self._as_output(window))]
        return [(box, window.astype(np.float32, copy=False) * self._weights[: box.shape[0], : box.shape[1]])]

    def _visit(self, keys: Sequence[tuple[int, int]], block: Window, use: Use) -> None:
        """Call ``use(key, box, data, region)`` for the pieces ``(box, data)`` of the tiles ``keys`` that meet ``block`` there.

        Kept pieces that hold a tile's part of the block are used; the other
        tiles run in batches. What is left of each footprint outside ``block``
        is kept.
        """
        missing = []
        for key in keys:
            need = self._footprint(*key).intersect(block)
            if need is None:
                continue
            pieces = self._cache.pop(key, None)
            if pieces is not None:
                self._cached -= _nbytes(pieces)
                if sum(_area(box.intersect(need)) for box, _ in pieces) == need.size:
                    self._take(key, pieces, block, use, owned=True)
                    continue
            missing.append(key)
        size = self.tile_size
        for start in range(0, len(missing), self.batch_size):
            group = missing[start : start + self.batch_size]
            if self.min_tissue is not None:
                for key in [k for k in group if self.inputs.tissue_fraction(*self._corner(*k), size, size) < self.min_tissue]:
                    group.remove(key)
                    self.tiles_skipped += 1
                    self._take(key, self._fresh(key, None), block, use, owned=True)
            if group:
                for key, scores in zip(group, self._run(group)):
                    self._take(key, self._fresh(key, scores), block, use, owned=False)

    def _take(self, key: tuple[int, int], pieces: Pieces, block: Window, use: Use | None, *, owned: bool) -> None:
        """Give ``use`` what ``block`` takes of ``pieces`` and keep the rest (copied unless ``owned``), least recently used out first."""
        kept: Pieces = []
        for box, data in pieces:
            region = box.intersect(block)
            if region is None:
                kept.append((box, data if owned or data is None else np.array(data)))
                continue
            if use is not None:
                use(key, box, data, region)
            for rest in box.subtract(block):
                kept.append((rest, None if data is None else np.array(data[rest.relative_to(box).index])))
        size = _nbytes(kept)
        if not kept or size > self.cache_bytes:
            return
        self._cache[key] = kept
        self._cached += size
        while self._cached > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached -= _nbytes(old)

    # -- the ImageSource ------------------------------------------------------------------
    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self.mode == "crop":
            return self._read_crop(y0, y1, x0, x1)
        return self._read_blend(y0, y1, x0, x1)

    def _read_crop(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.empty((self.shape[0], y1 - y0, x1 - x0), dtype=self.dtype)  # the crops partition the image
        block = Window.from_bounds(y0, y1, x0, x1)

        def paste(key: tuple[int, int], box: Window, data: np.ndarray | None, region: Window) -> None:
            target = out[region.relative_to(block).index]
            if data is None:
                target[...] = self.fill_value
            else:
                target[...] = data[region.relative_to(box).index]

        rows, cols = self.tiles_y.covering(y0, y1), self.tiles_x.covering(x0, x1)
        self._visit([(i, j) for i in rows for j in cols], block, paste)
        return out

    def _read_blend(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        acc = np.zeros((self.scores, y1 - y0, x1 - x0), np.float32)
        weight = np.zeros((y1 - y0, x1 - x0), np.float32)
        weights = self._weights
        assert weights is not None
        block = Window.from_bounds(y0, y1, x0, x1)

        def add(key: tuple[int, int], box: Window, data: np.ndarray | None, region: Window) -> None:
            if data is None:
                return
            into = region.relative_to(block)
            acc[into.index] += data[region.relative_to(box).index]
            weight[into.slices] += weights[region.relative_to(self._tile(*key)).slices]

        rows, cols = self.tiles_y.touching(y0, y1), self.tiles_x.touching(x0, x1)
        self._visit([(i, j) for i in rows for j in cols], block, add)
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
