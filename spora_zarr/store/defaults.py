"""The defaults of the written layout and of the writer's memory: plain constants, importing nothing.

The one place for them, so that the command line shows them without loading
the writer (numpy, zarr's codecs, dask, ngff-zarr): ``spora-zarr info`` and
``validate`` start without those. :class:`~spora_zarr.write.options.WriteOptions`
takes its defaults from here; why these values, ``docs/benchmarks.md``.
"""

from __future__ import annotations

MiB = 2**20

CHUNK = 112
"""Chunk edge in pixels (all channels in one chunk)."""
SHARD = 896
"""Shard edge in pixels."""
BLOSC_CNAMES = ("lz4", "lz4hc", "blosclz", "zstd", "zlib")
"""The blosc compressors a store may use."""
CNAME = "lz4"
"""The blosc compressor of written arrays."""
CLEVEL = 5
"""The blosc level of written arrays."""
MIN_SAVING = 0.1
"""An image whose sampled chunks blosc shrinks by less than this share is stored uncompressed."""
MAX_TOP_SIZE = 2048
"""Levels are added until the coarsest fits this edge in pixels."""
MEMORY_BUDGET = 512 * MiB
"""Bytes of pixel buffers one writer holds at most."""
PREDICTION_MEMORY_BUDGET = 256 * MiB
"""The writer's memory budget of a prediction: half the converter's, because the predicting process also holds the
model runtime and its batches, and its float32 output has twice the bytes of uint16 input. Blocks and shards of
448 px then hold a 16-channel float32 prediction, so one more pyramid level (a slide twice as wide) adds 13 MiB,
not 51 (docs/benchmarks.md, "Inference")."""
