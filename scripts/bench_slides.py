#!/usr/bin/env python
"""JPEG slide benchmark: add-image of an Aperio-style SVS at its own size, against --lossless and tiffslide.

The slide (generated once into the work directory) is ``HELike`` from
:mod:`spora_zarr.testing.slides`: skimage's immunohistochemistry patch tiled,
each copy flipped and tinted, written by tifffile as an Aperio-style SVS
(ImageDescription ``Aperio ...|MPP = 0.2520``, 256 px JPEG tiles in RGB colour
space at quality 80, a thumbnail, reduced levels at 4x and 16x).

In one run the script measures, each add-image in its own process (seconds,
peak RSS):

- ``spora-zarr add-image`` (JPEG tiles kept as chunks) and ``--lossless``;
- store size / slide size for both;
- random 224 px windows of level 0 read by ``HEImagingDataset.read_tile``
  from the JPEG store, by ``tiffslide.TiffSlide.read_region`` on the slide,
  and by ``read_tile`` from the lossless store, interleaved round by round in
  one process (windows/s and the ratios; a few windows are checked against
  tifffile's decode first);

prints the ratios and writes the ``## JPEG slides`` section of ``docs/benchmarks.md``.

Usage::

    python scripts/bench_slides.py                  # 40,000² slide in /tmp/spora_bench
    python scripts/bench_slides.py --edge 8192 --windows 500 --no-docs
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _benchmarks_doc import write_section

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
TARGET_SIZE = 1.3  # store / slide
TARGET_READ = 1.0  # read_tile / tiffslide.read_region


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def make_slide(path: Path, edge: int) -> float:
    """Write the slide unless it is there; seconds spent."""
    if path.exists():
        return 0.0
    from spora_zarr.testing.slides import he_like, write_svs

    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    partial = path.with_name(path.stem + ".partial.svs")
    write_svs(partial, he_like(edge, edge, seed=0), mpp=0.252, factors=(4, 16), tile=256, quality=80)
    partial.rename(path)
    return time.perf_counter() - start


_CHILD = """
import json, resource, sys, time
from spora_zarr import add_image
start = time.perf_counter()
result = add_image(sys.argv[1], sys.argv[2], modality="he", tissue_id="S", lossless=sys.argv[3] == "1")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "levels": [(lv.name, lv.from_source) for lv in result.levels]}))
"""


def add_image(slide: Path, store: Path, lossless: bool) -> dict[str, Any]:
    """add-image in a fresh process: seconds, peak RSS, levels, store size."""
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(store), str(slide), "1" if lossless else "0"], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    record: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    record["store_bytes"] = _size(store / "he/images/S")
    return record


def read_windows(slide: Path, jpeg_store: Path, lossless_store: Path, count: int, rounds: int) -> dict[str, float]:
    """Windows/s of each reader over the same random 224 px windows, interleaved by round."""
    import numpy as np
    import tifffile
    import tiffslide

    from spora_zarr.datasets import HEImagingDataset

    jpeg = HEImagingDataset("t", str(jpeg_store), 0.252, 224)
    lossless = HEImagingDataset("t", str(lossless_store), 0.252, 224)
    slide_handle = tiffslide.TiffSlide(str(slide))
    height, width = slide_handle.dimensions[1], slide_handle.dimensions[0]
    rng = np.random.default_rng(1)
    ys, xs = rng.integers(0, height - 224, count), rng.integers(0, width - 224, count)
    with tifffile.TiffFile(slide) as tiff:  # correctness first: the three readers agree with tifffile's decode
        import zarr

        z = zarr.open_array(tiff.series[0].aszarr(level=0), mode="r")
        for y, x in zip(ys[:5], xs[:5]):
            expected = np.asarray(z[y : y + 224, x : x + 224]).transpose(2, 0, 1)
            assert np.array_equal(jpeg.read_tile("S", int(y), int(x), preprocess=False).numpy(), expected)
            assert np.array_equal(lossless.read_tile("S", int(y), int(x), preprocess=False).numpy(), expected)
            region = slide_handle.read_region((int(x), int(y)), 0, (224, 224), as_array=True)
            assert np.array_equal(np.asarray(region)[..., :3].transpose(2, 0, 1), expected)
    readers = {
        "read_tile (JPEG store)": lambda y, x: jpeg.read_tile("S", y, x, preprocess=False),
        "tiffslide.read_region": lambda y, x: slide_handle.read_region((x, y), 0, (224, 224), as_array=True),
        "read_tile (lossless store)": lambda y, x: lossless.read_tile("S", y, x, preprocess=False),
    }
    seconds = dict.fromkeys(readers, 0.0)
    per_round = np.array_split(np.arange(count), rounds)
    for part in per_round:
        for name, read in readers.items():
            start = time.perf_counter()
            for i in part:
                read(int(ys[i]), int(xs[i]))
            seconds[name] += time.perf_counter() - start
    return {name: count / s for name, s in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edge", type=int, default=40_000, help="slide edge in px (default %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/spora_bench"), help="work directory (slide cached there)")
    parser.add_argument("--windows", type=int, default=2000, help="random 224 px windows per reader")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the windows are split into")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()

    slide = args.work / f"slide_{args.edge}.svs"
    generated = make_slide(slide, args.edge)
    slide_bytes = _size(slide)
    print(f"slide {slide} ({args.edge}², {slide_bytes / MiB:.1f} MiB){f', generated in {generated:.0f} s' if generated else ''}")
    stores = {"jpeg": args.work / f"slide_{args.edge}_jpeg.zarr", "lossless": args.work / f"slide_{args.edge}_lossless.zarr"}
    runs = {name: add_image(slide, store, name == "lossless") for name, store in stores.items()}
    for name, run in runs.items():
        ratio = int(run["store_bytes"]) / slide_bytes
        print(f"add-image {name:9s}: {run['seconds']:7.1f} s, peak RSS {run['rss_mib']:6.0f} MiB, "
              f"store {int(run['store_bytes']) / MiB:8.1f} MiB = {ratio:5.2f}x the slide, levels {run['levels']}")  # fmt: skip
    rates = read_windows(slide, stores["jpeg"], stores["lossless"], args.windows, args.rounds)
    for name, rate in rates.items():
        print(f"{name:28s}: {rate:8.0f} windows/s")
    jpeg_rate = rates["read_tile (JPEG store)"]
    vs_tiffslide, vs_lossless = jpeg_rate / rates["tiffslide.read_region"], jpeg_rate / rates["read_tile (lossless store)"]
    size_ratio = int(runs["jpeg"]["store_bytes"]) / slide_bytes
    lossless_ratio = int(runs["lossless"]["store_bytes"]) / slide_bytes
    print(f"ratios: store/slide {size_ratio:.2f} (target <= {TARGET_SIZE}), lossless store/slide {lossless_ratio:.2f}, "
          f"read_tile/tiffslide {vs_tiffslide:.2f} (target >= {TARGET_READ}), JPEG/lossless read_tile {vs_lossless:.2f}")  # fmt: skip
    if args.no_docs:
        return 0
    import tiffslide

    jpeg_run, lossless_run = runs["jpeg"], runs["lossless"]
    jpeg_mib, lossless_mib = jpeg_run["store_bytes"] / MiB, lossless_run["store_bytes"] / MiB
    levels = ", ".join(f"{name} ({'own' if own else 'computed'})" for name, own in jpeg_run["levels"])
    section = (
        f"""## JPEG slides
`python scripts/bench_slides.py --edge {args.edge} --windows {args.windows}` ({_dt.date.today()}, {platform.machine()},
{os.cpu_count()} cores, shared and noisy: compare the ratios, measured side by side in one run). An Aperio-style SVS of
{args.edge:,}² px (`spora_zarr.testing.slides`: skimage's immunohistochemistry patch tiled, flipped and tinted; 256 px JPEG
tiles, quality 80, RGB colour space as Aperio writes it; MPP 0.2520; own levels at 4x and 16x), {slide_bytes / MiB:.1f} MiB.
Each add-image ran in its own process.

| route | seconds | peak RSS | store | store / slide |
|---|---|---|---|---|
| add-image (JPEG tiles kept) | {jpeg_run["seconds"]:.1f} | {jpeg_run["rss_mib"]:.0f} MiB | {jpeg_mib:.1f} MiB | **{size_ratio:.2f}** |
| add-image --lossless | {lossless_run["seconds"]:.1f} | {lossless_run["rss_mib"]:.0f} MiB | {lossless_mib:.1f} MiB | {lossless_ratio:.2f} |

Levels: {levels}.

Random 224 px windows of level 0, {args.windows} per reader in {args.rounds} interleaved rounds, one process (the first
windows checked equal to tifffile's decode for all three; tiffslide {tiffslide.__version__}, the newest for Python 3.11):

| reader | windows/s |
|---|---|
"""
        + "\n".join(f"| {name} | {rate:.0f} |" for name, rate in rates.items())
        + f"""

read_tile (JPEG store) / tiffslide.read_region: **{vs_tiffslide:.2f}** (target >= {TARGET_READ}); JPEG / lossless store
read_tile: {vs_lossless:.2f}. The JPEG store reads slower than the lossless one (a JPEG decode per chunk against a copy of
uncompressed bytes) and stores {lossless_ratio / size_ratio:.1f}x less; `--lossless` remains the portable choice
(`docs/store_layout.md`)."""
    )
    write_section(section)
    print("wrote the JPEG slides section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
