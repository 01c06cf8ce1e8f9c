"""Tile-read speed and size of codec / chunk layouts on one level array (a script, not a test).

Rewrites the level of a store made by ``scripts/bench_tiles.py`` in several layouts and reads the
same random and grid 224 px windows from each with tensorstore alone, next to numpy slicing of the
level in memory (the ceiling). Prints a table; the figures behind ``docs/benchmarks.md``'s codec
sweep.

    python scripts/bench_codecs.py [--level PATH_TO_LEVEL_ARRAY]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
import time

import numpy as np
import tensorstore as ts
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

LAYOUTS = [
    ("lz4 + byte shuffle, 112 / 896 (default)", "lz4", 5, BloscShuffle.shuffle, 112),
    ("lz4 + bitshuffle, 112 / 896", "lz4", 5, BloscShuffle.bitshuffle, 112),
    ("lz4, no shuffle, 112 / 896", "lz4", 5, BloscShuffle.noshuffle, 112),
    ("blosclz + shuffle, 112 / 896", "blosclz", 5, BloscShuffle.shuffle, 112),
    ("lz4 + shuffle, 224 / 896", "lz4", 5, BloscShuffle.shuffle, 224),
    ("lz4 + shuffle, 56 / 896", "lz4", 5, BloscShuffle.shuffle, 56),
    ("zstd 1 + bitshuffle, 112 / 896", "zstd", 1, BloscShuffle.bitshuffle, 112),
]


def rate(read, windows, passes: int = 3) -> float:
    """Best windows/s over ``passes``."""
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        for y, x in windows:
            read(y, x)
        best = max(best, len(windows) / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = next(iter(sorted(glob.glob("/tmp/spora_tiles/default.zarr/imc/images/*/1_0mpp"))), None)
    parser.add_argument("--level", default=default, help="a level array of a converted store (default: the bench_tiles multiplex level)")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    data = zarr.open_array(args.level, mode="r")[...]
    channels, height, width, size = *data.shape, args.size
    rng = np.random.default_rng(0)
    random_windows = list(zip(rng.integers(0, height - size, 400).tolist(), rng.integers(0, width - size, 400).tolist()))
    grid_windows = [(y, x) for y in range(0, height - size, size) for x in range(0, width - size, size)][:361]
    ceiling = [rate(lambda y, x: data[:, y : y + size, x : x + size].copy(), w) for w in (random_windows, grid_windows)]
    print(f"numpy ceiling: random {ceiling[0]:,.0f}/s, grid {ceiling[1]:,.0f}/s")
    scratch = tempfile.mkdtemp(prefix="spora_codecs_")
    try:
        for name, cname, clevel, shuffle, chunk in LAYOUTS:
            path = os.path.join(scratch, "level.zarr")
            shutil.rmtree(path, ignore_errors=True)
            with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
                array = zarr.create_array(path, shape=data.shape, dtype=data.dtype, chunks=(channels, chunk, chunk),
                                          shards=(channels, 896, 896), compressors=[BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)])
                array[...] = data
            stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / data.nbytes
            handle = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}, read=True).result()
            speeds = [rate(lambda y, x: handle[:, y : y + size, x : x + size].read().result(), w) for w in (random_windows, grid_windows)]
            print(f"{name:42s} stored/raw {stored:.3f}  random {speeds[0]:7,.0f} ({speeds[0] / ceiling[0]:.2f})"
                  f"  grid {speeds[1]:7,.0f} ({speeds[1] / ceiling[1]:.2f})", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
