"""Benchmark ``spora-zarr stitch`` against ``add-image`` (the convert path) of the same output image.

The issue's target: 400 FOVs of 2048² x 8 channels uint16 with 10 % overlap
(25 GiB of tiles). Tiles of a square grid of ``max(--counts)`` FOVs of
``--fov``² are written once (uncompressed tiled TIFF, with uint16 label tiles);
each smaller count stitches the top-left sub-grid of the same tiles. The pixels
are a deterministic function of global coordinates, so the tiles and the
reference TIFF (the output image, written tile by tile) are generated without
the whole image in memory. Each measurement runs in its own process, set up as
the CLI sets up ``stitch`` and ``add-image`` (bounded allocator), which reports
its peak RSS; each store is deleted once measured, to bound the disk used.

Reported per FOV count: stitch time, MB/s of output, peak RSS; for ``--compare``
FOVs (default: the smallest count; MB/s do not depend on the size)
``add-image`` of the same output image (MB/s, RSS); for the largest count label
stitching (discs on a lattice, cut into per-tile ids): objects found vs ground
truth. Writes the ``## Stitching`` section of ``docs/benchmarks.md``.

    .venv/bin/python scripts/bench_stitch.py [--fov 2048] [--counts 100 400] [--workdir /tmp] [--no-docs]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _benchmarks_doc import DOCS, write_section

CHANNELS = 8
SPACING, RADIUS = 37, 12


def pixels(y0: int, y1: int, x0: int, x1: int, channels: range = range(CHANNELS)) -> np.ndarray:
    """The global image's window ``(C, h, w)`` uint16: smooth ramps plus a hashed texture."""
    yy, xx = np.arange(y0, y1, dtype=np.int64)[:, None], np.arange(x0, x1, dtype=np.int64)[None, :]
    texture = (xx * 7919 + yy * 104729 + xx * yy) % 251
    return np.stack([((xx * (c + 1) + yy * 3) % 3000 + texture * (c + 1)) for c in channels]).astype(np.uint16)


def discs(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Lattice ids ``(h, w)`` ``(cy, cx)`` packed as ``cy * 100000 + cx + 1``: one disc per lattice point, 0 outside."""
    yy, xx = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
    cy, cx = np.rint(yy / SPACING).astype(np.int64), np.rint(xx / SPACING).astype(np.int64)
    inside = (yy - cy * SPACING) ** 2 + (xx - cx * SPACING) ** 2 <= RADIUS**2
    return np.where(inside, cy * 100000 + cx + 1, 0)


def local_labels(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """A label tile: the discs numbered from the tile's own first lattice point (so ids repeat across tiles), uint16."""
    ids = discs(y0, y1, x0, x1)
    cy0, cx0, width = round(y0 / SPACING), round(x0 / SPACING), -(-(x1 - x0) // SPACING) + 2
    local = (ids - 1) // 100000 - cy0, (ids - 1) % 100000 - cx0
    return np.where(ids > 0, local[0] * width + local[1] + 1, 0).astype(np.uint16)


def make(folder: Path, side: int, fov: int) -> int:
    """Tiles and label tiles of a ``side`` x ``side`` grid with 10 % overlap; returns the grid step."""
    import tifffile

    step = fov - fov // 10
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(side):
        for c in range(side):
            y, x = r * step, c * step
            tifffile.imwrite(folder / f"r{r:03d}c{c:03d}.tif", pixels(y, y + fov, x, x + fov), tile=(256, 256), photometric="minisblack")
            tifffile.imwrite(folder / f"r{r:03d}c{c:03d}_labels.tif", local_labels(y, y + fov, x, x + fov), tile=(256, 256))
    return step


def table(folder: Path, side: int, step: int, fov: int) -> tuple[Path, int]:
    """The offsets CSV of the top-left ``side`` x ``side`` sub-grid; returns (table, output edge)."""
    lines = ["file,x,y,labels"]
    lines += [f"r{r:03d}c{c:03d}.tif,{c * step},{r * step},r{r:03d}c{c:03d}_labels.tif" for r in range(side) for c in range(side)]
    path = folder / f"offsets{side * side}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, (side - 1) * step + fov


def reference_tiff(path: Path, size: int) -> None:
    """The output image as one tiled TIFF, written tile by tile (each channel's tiles computed alone)."""
    import tifffile

    def tiles():  # noqa: ANN202
        for c in range(CHANNELS):
            for y in range(0, size, 256):
                for x in range(0, size, 256):
                    block = np.zeros((256, 256), np.uint16)
                    part = pixels(y, min(size, y + 256), x, min(size, x + 256), range(c, c + 1))[0]
                    block[: part.shape[0], : part.shape[1]] = part
                    yield block

    tifffile.imwrite(path, tiles(), shape=(CHANNELS, size, size), dtype=np.uint16, tile=(256, 256), photometric="minisblack",
                     bigtiff=True)


def truth_objects(size: int) -> int:
    """Discs with at least one pixel in the ``size``² output, counted band by band."""
    ids: set[int] = set()
    for y in range(0, size, 512):
        ids.update(np.unique(discs(y, min(size, y + 512), 0, size)).tolist())
    return len(ids - {0})


CHILD = """
import json, resource, sys, time
from spora_zarr.runtime import configure_writer_process
configure_writer_process()
kind, args = sys.argv[1], json.loads(sys.argv[2])
start = time.perf_counter()
if kind == "stitch":
    from spora_zarr.stitching import stitch
    result = stitch(args["tiles"], args["table"], args["dest"], modality="imc", tissue_id=args["tissue"], mpp=1.0,
                    labels=args.get("labels"))
    extra = {"objects": result.objects}
else:
    from spora_zarr.convert import add_image
    add_image(args["dest"], args["file"], modality="imc", tissue_id=args["tissue"], mpp=1.0)
    extra = {}
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
"""


def child(kind: str, dest: Path, **args: object) -> dict[str, float]:
    """Run one measurement in a fresh process; the store it wrote is deleted afterwards."""
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps({"dest": str(dest), **args})], check=True,
                             capture_output=True, text=True)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def section(fov: int, counts: list[int], compare: int, rows: dict[int, dict[str, float]], extra: dict[str, float], load: str) -> str:
    """The ``## Stitching`` section of docs/benchmarks.md."""
    big, small = max(counts), min(counts)
    head = " | ".join(f"{n} FOVs ({rows[n]['edge']:,.0f}², {rows[n]['mb']:,.0f} MB)" for n in counts)
    ratio = (rows[compare]["mb"] / rows[compare]["seconds"]) / (rows[compare]["mb"] / extra["convert_seconds"])
    ratio_big = (rows[big]["mb"] / rows[big]["seconds"]) / (rows[compare]["mb"] / extra["convert_seconds"])
    growth = (rows[big]["rss_mib"] / rows[small]["rss_mib"] - 1) * 100
    peak = max(max(r["rss_mib"] for r in rows.values()), extra["labels_rss"])
    verdict = {True: "PASS", False: "FAIL"}
    lines = [
        "## Stitching",
        "",
        f"`scripts/bench_stitch.py --fov {fov} --counts {' '.join(map(str, counts))}` (2 shared cores, load average {load}). "
        f"FOVs of {fov}² x {CHANNELS} channels uint16 with 10 % overlap (uncompressed tiled TIFF tiles; pixels a deterministic "
        f"texture of global coordinates), on square grids; the {small}-FOV mosaic is the top-left sub-grid of the {big} tiles. "
        "Each measurement runs in a fresh process set up as the CLI sets up `stitch` / `add-image` and reports its own peak "
        f"RSS (imports included). The comparison is `add-image` (the convert path) of the {compare}-FOV output image, written "
        "beforehand as one tiled TIFF (MB/s taken as independent of the output size; the largest grid's ratio is given too).",
        "",
        f"| measure | {head} |",
        "|---|" + "---:|" * len(counts),
        "| `stitch` (blend none, writer defaults), s / MB/s of output | "
        + " | ".join(f"{rows[n]['seconds']:.1f} / {rows[n]['mb'] / rows[n]['seconds']:.1f}" for n in counts) + " |",
        "| `stitch` peak RSS, MiB | " + " | ".join(f"{rows[n]['rss_mib']:.0f}" for n in counts) + " |",
        "| `add-image` of the same output, s / MB/s | "
        + " | ".join(f"{extra['convert_seconds']:.1f} / {rows[n]['mb'] / extra['convert_seconds']:.1f}" if n == compare else ""
                     for n in counts) + " |",
        "| `add-image` peak RSS, MiB | " + " | ".join(f"{extra['convert_rss']:.0f}" if n == compare else "" for n in counts) + " |",
        "| `stitch --labels cell_masks` (image + labels), s / peak RSS MiB | "
        + " | ".join(f"{extra['labels_seconds']:.1f} / {extra['labels_rss']:.0f}" if n == big else "" for n in counts) + " |",
        "| objects in the stitched labels / ground truth | "
        + " | ".join(f"{extra['objects']:,.0f} / {extra['truth']:,.0f}" if n == big else "" for n in counts) + " |",
        "",
        "| target | value |",
        "|---|---|",
        f"| stitched MB/s >= 0.5 x `add-image` MB/s | {ratio:.2f} x {verdict[ratio >= 0.5]} |",
        f"| (the same at {big} FOVs: its stitched MB/s / the add-image MB/s above) | {ratio_big:.2f} x |",
        f"| peak RSS <= 700 MiB | {peak:.0f} MiB (with labels {extra['labels_rss']:.0f}) {verdict[peak <= 700]} |",
        f"| peak RSS within 10 % between {small} and {big} FOVs | {growth:+.1f} % {verdict[abs(growth) <= 10]} |",
        f"| label object count equal to ground truth | {extra['objects']:,.0f} = {extra['truth']:,.0f} "
        f"{verdict[extra['objects'] == extra['truth']]} |",
        "",
        f"Tiles written in {extra['make_seconds']:.0f} s, the reference TIFF in {extra['reference_seconds']:.0f} s (not timed above). "
        "The tiles of the largest grid can exceed the page cache (then the stitch runs read them from disk), while the "
        "reference TIFF, written just before `add-image`, is read from it. Not measured here: `--register` and "
        "`--blend linear` timings.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fov", type=int, default=512, help="FOV edge in pixels (target: 2048)")
    parser.add_argument("--counts", type=int, nargs="+", default=[25, 100], help="FOV counts, square numbers (target: 100 400)")
    parser.add_argument("--compare", type=int, default=None, help="the FOV count whose output add-image converts (default: smallest)")
    parser.add_argument("--workdir", type=Path, default=None, help="where tiles and stores go (default: a temporary folder)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--keep-tiles", action="store_true",
                        help="keep the tiles in WORKDIR/stitch_tiles_<fov>_<side> and reuse them on the next run (delete them yourself)")
    args = parser.parse_args()
    counts = sorted(args.counts)
    compare = args.compare or counts[0]
    if any(math.isqrt(n) ** 2 != n for n in counts) or compare not in counts:
        parser.error("counts must be square numbers and --compare one of them")
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root, tiles = Path(tmp), Path(tmp) / "tiles"
        if args.keep_tiles:
            tiles = Path(args.workdir or tempfile.gettempdir()) / f"stitch_tiles_{args.fov}_{math.isqrt(counts[-1])}"
        print(f"FOV {args.fov}² x {CHANNELS} channels uint16, 10 % overlap")
        began = time.perf_counter()
        if (tiles / "complete").exists():
            step, made = args.fov - args.fov // 10, float((tiles / "complete").read_text())
        else:
            step = make(tiles, math.isqrt(counts[-1]), args.fov)
            made = time.perf_counter() - began
            (tiles / "complete").write_text(f"{made}\n")
        extra = {"make_seconds": made}
        print(f"tiles written in {extra['make_seconds']:.0f} s")
        rows: dict[int, dict[str, float]] = {}
        for count in counts:
            offsets, edge = table(tiles, math.isqrt(count), step, args.fov)
            megabytes = CHANNELS * edge * edge * 2 / 1e6
            rows[count] = {**child("stitch", root / f"s{count}.zarr", tiles=str(tiles), table=str(offsets), tissue="T"),
                           "edge": edge, "mb": megabytes}
            loads.append(os.getloadavg()[0])
            r = rows[count]
            print(f"{count} FOVs -> {edge} x {edge} ({megabytes:,.0f} MB): stitch {r['seconds']:.1f} s, "
                  f"{megabytes / r['seconds']:.1f} MB/s, peak RSS {r['rss_mib']:.0f} MiB")
            if count == compare:
                reference = root / "reference.tif"
                began = time.perf_counter()
                reference_tiff(reference, edge)
                extra["reference_seconds"] = time.perf_counter() - began
                converted = child("add-image", root / f"c{count}.zarr", file=str(reference), tissue="T")
                reference.unlink()
                extra.update(convert_seconds=converted["seconds"], convert_rss=converted["rss_mib"])
                print(f"  add-image of the same output: {converted['seconds']:.1f} s, {megabytes / converted['seconds']:.1f} MB/s, "
                      f"peak RSS {converted['rss_mib']:.0f} MiB; stitch speed = {converted['seconds'] / r['seconds']:.2f} x add-image")
            if count == counts[-1]:
                labelled = child("stitch", root / f"l{count}.zarr", tiles=str(tiles), table=str(offsets), tissue="T", labels="cell_masks")
                extra.update(labels_seconds=labelled["seconds"], labels_rss=labelled["rss_mib"], objects=labelled["objects"],
                             truth=truth_objects(edge))
                print(f"  with labels: {labelled['seconds']:.1f} s, peak RSS {labelled['rss_mib']:.0f} MiB, "
                      f"{labelled['objects']} objects (ground truth {extra['truth']})")
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    if not args.no_docs:
        write_section(section(args.fov, counts, compare, rows, extra, load))
        print(f"wrote the Stitching section of {DOCS}")


if __name__ == "__main__":
    main()
