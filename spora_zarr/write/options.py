"""The writer's options, and the layout and memory decisions taken from them for one image.

:class:`WriteOptions` holds the chunk and shard edges, the blosc codec and
the memory budget; it checks them, samples a source to decide whether to
compress it, and sizes the blocks streamed at once and the lanes that stream
them within the budget. :mod:`.writer` does the writing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec

from .. import process
from ..errors import InvalidInputError
from ..sources import ImageSource
from ..store import defaults

__all__ = ["IN_FLIGHT", "WriteOptions", "read_plane", "source_depth"]

log = logging.getLogger("spora_zarr")

#: Blocks handed to the writer's threads at most (read, waiting to be compressed and stored).
IN_FLIGHT = 3


def source_depth(source: ImageSource) -> int:
    """The number of z planes of a source (1 for a 2-D image)."""
    return int(getattr(source, "nz", 1))


def read_plane(source: ImageSource, z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The ``(C, h, w)`` window of plane ``z`` (of a 2-D source: its only plane, read with ``read``)."""
    if source_depth(source) == 1:
        return source.read(y0, y1, x0, x1)
    return source.read_volume(z, z + 1, y0, y1, x0, x1)[:, 0]


@dataclass(frozen=True, kw_only=True)
class WriteOptions:
    """Layout and resource options of written arrays.

    The defaults are the layout the tile path reads fastest (measured in
    ``docs/benchmarks.md``): all channels of a 112 x 112 window in one chunk,
    chunks grouped in 896 x 896 shards, blosc lz4 (level 5) with byte shuffle.
    ``cname="lz4hc", clevel=1`` reads sparse multiplex data 10-20 % faster
    and stores less, but made the conversion of a dense 16-channel slide
    about 2 x slower (the codec sweep in ``docs/benchmarks.md``).

    An image whose sampled chunks blosc shrinks by less than ``min_saving``
    (noisy 8-bit RGB, say) is stored uncompressed: decoding would cost more
    read time than the few bytes it saves (``docs/store_layout.md``); 0
    always compresses.
    """

    chunk: int = defaults.CHUNK
    shard: int | None = defaults.SHARD
    cname: str = defaults.CNAME
    clevel: int = defaults.CLEVEL
    min_saving: float = defaults.MIN_SAVING
    max_top_size: int = defaults.MAX_TOP_SIZE
    memory_budget: int = defaults.MEMORY_BUDGET
    codec_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("chunk", "clevel", "max_top_size", "memory_budget"):
            _check_whole(name, getattr(self, name))
        if self.memory_budget < 1:
            raise InvalidInputError(f"memory_budget={self.memory_budget} is not a positive number of bytes")
        if self.chunk < 16 or self.chunk % 2:
            raise InvalidInputError(f"chunk={self.chunk}: the chunk edge must be an even number >= 16")
        if self.shard is not None:
            _check_whole("shard", self.shard)
            if self.shard < self.chunk or self.shard % self.chunk:
                raise InvalidInputError(f"shard={self.shard}: the shard edge must be a multiple of the chunk edge {self.chunk}")
        for name in ("chunk", "shard"):  # even one channel of one byte per pixel must fit the budget
            edge = getattr(self, name)
            if edge is not None and edge * edge > self.memory_budget:
                raise InvalidInputError(
                    f"{name}={edge}: one {name} of one 8-bit channel is {_mib(edge * edge)}, "
                    f"over the memory budget of {_mib(self.memory_budget)}"
                )
        if self.cname not in defaults.BLOSC_CNAMES:
            raise InvalidInputError(f"cname={self.cname!r} is not a blosc compressor: one of {', '.join(defaults.BLOSC_CNAMES)}")
        if not 0 <= self.clevel <= 9:
            raise InvalidInputError(f"clevel={self.clevel}: the blosc level must be 0-9")
        if not 0 <= self.min_saving < 1:
            raise InvalidInputError(f"min_saving={self.min_saving} is not in [0, 1)")
        if self.max_top_size < 1:
            raise InvalidInputError(f"max_top_size={self.max_top_size} is not a whole number >= 1")
        if self.codec_threads is not None:
            _check_whole("codec_threads", self.codec_threads)
            if self.codec_threads < 1:
                raise InvalidInputError(f"codec_threads={self.codec_threads} is not a whole number >= 1")

    def compressor(self) -> BloscCodec:
        """The blosc codec of written arrays (byte shuffle)."""
        cname: Any = self.cname  # a name: BloscCname(name) fails on zarr 3.4
        return BloscCodec(cname=cname, clevel=self.clevel, shuffle="shuffle")

    def saving(self, source: ImageSource, samples: int = 16) -> float:
        """The share of bytes the blosc codec saves on ``samples`` chunks spread over ``source``.

        A small image (no more pixels than the samples) is read in one window, not once per sample.
        """
        import numcodecs

        codec = numcodecs.Blosc(cname=self.cname, clevel=self.clevel, shuffle=numcodecs.Blosc.SHUFFLE)
        channels, height, width = source.shape
        side = max(1, math.isqrt(samples))
        plane = source_depth(source) // 2
        whole = None  # an image no larger than its samples together is read once and the samples cut from it
        if height * width <= side * side * self.chunk * self.chunk:
            whole = read_plane(source, plane, 0, height, 0, width)
        raw = stored = 0
        for y in np.linspace(0, max(0, height - self.chunk), side).astype(int):
            for x in np.linspace(0, max(0, width - self.chunk), side).astype(int):
                y0, y1, x0, x1 = int(y), min(height, int(y) + self.chunk), int(x), min(width, int(x) + self.chunk)
                window = whole[:, y0:y1, x0:x1] if whole is not None else read_plane(source, plane, y0, y1, x0, x1)
                block = np.ascontiguousarray(window)
                raw += block.nbytes
                stored += len(codec.encode(block))
        return 1 - stored / raw if raw else 1.0

    def compressors_for(self, source: ImageSource) -> list[BloscCodec]:
        """The compressor of an image's arrays: blosc, or none when it saves less than ``min_saving``."""
        if self.min_saving == 0:
            return [self.compressor()]
        saving = self.saving(source)
        if saving >= self.min_saving:
            return [self.compressor()]
        log.info(
            "%s: blosc saves %.0f %% of sampled chunks (less than %.0f %%): stored uncompressed",
            source.name,
            100 * saving,
            100 * self.min_saving,
        )
        return []

    def block_edge(self, channels: int, itemsize: int, depth: int, name: str = "<image>") -> int:
        """Edge of the blocks streamed at once: the shard edge, halved until the blocks held at once fit the budget.

        Held at once: one block per level of the chain (``depth``), the block
        being read, and the blocks queued for writing (``IN_FLIGHT``). Blocks
        of one chunk that still do not fit are an ``InvalidInputError`` naming
        the chunk edge, raised before anything is written.
        """
        held = (depth + 1 + IN_FLIGHT) * channels * itemsize
        edge = self.shard or max(self.chunk, 8 * self.chunk)
        while edge > self.chunk and edge % 2 == 0 and held * edge * edge > self.memory_budget:
            half = edge // 2
            if half % self.chunk and half > self.chunk:
                half = max(self.chunk, half // self.chunk * self.chunk)
            if half == edge:
                break
            edge = half
        if held * self.chunk * self.chunk > self.memory_budget:
            raise InvalidInputError(
                f"{name}: chunk edge {self.chunk} px needs {_mib(held * self.chunk * self.chunk)} of buffers for "
                f"{channels} channel(s) of {itemsize} byte(s) ({depth + 1 + IN_FLIGHT} blocks held at once), over the "
                f"memory budget of {_mib(self.memory_budget)}; choose a smaller chunk or a larger memory budget"
            )
        return edge

    def lanes(self, channels: int, itemsize: int, depth: int, edge: int) -> int:
        """Subtrees of one image streamed at once: one per core, as many as fit the memory budget at ``edge``.

        A lane holds one block per level of the chain and the block being read;
        the ``IN_FLIGHT`` queued blocks are shared. The cores are ``codec_threads``
        when set (``--workers`` sets it to share the cores), else the cores this
        process may run on. The block edge is never made smaller for more lanes.
        """
        block = channels * itemsize * edge * edge
        fit = (self.memory_budget - IN_FLIGHT * block) // ((depth + 1) * block)
        return int(max(1, min(self.codec_threads or process.available_cores(), fit)))


def _check_whole(name: str, value: Any) -> None:
    """Refuse a layout option that is not a whole number (a bool, float or string)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name}={value!r} is not a whole number")


def _mib(nbytes: float) -> str:
    mib = nbytes / defaults.MiB
    return f"{mib:,.0f} MiB" if mib >= 100 else f"{mib:.3g} MiB"
