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

Reported per FOV count: stitch time, MB/s of output, peak RSS, and
``add-image`` of the same output image (the reference TIFF of that count);
for the largest count label stitching (discs on a lattice, cut into per-tile
ids): objects found vs ground truth. Every measurement starts with its inputs
(tiles, or the reference TIFF) evicted from the page cache (``fsync`` then
``posix_fadvise`` ``DONTNEED``), so both sides read from disk. Disk use is
bounded by order: at the largest count the stitch and label runs come first,
then the reference TIFF is written and the tiles deleted (unless
``--keep-tiles``) before ``add-image`` reads it. Writes the ``## Stitching``
section of ``docs/benchmarks.md``.

    .venv/bin/python scripts/bench_stitch.py [--fov 2048] [--counts 100 400] [--workdir /tmp] [--no-docs] [--keep-tiles]
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
RAM = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
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

    tifffile.imwrite(path, tiles(), shape=(CHANNELS, size, size), dtype=np.uint16, tile=(256, 256), photometric="minisblack", bigtiff=True)


def truth_objects(size: int) -> int:
    """Discs with at least one pixel in the ``size``² output, counted band by band."""
    ids: set[int] = set()
    for y in range(0, size, 512):
        ids.update(np.unique(discs(y, min(size, y + 512), 0, size)).tolist())
    return len(ids - {0})


def evict(path: Path) -> None:
    """Drop a file's (or a folder's files') pages from the page cache, so the next reader reads them from disk."""
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


CHILD = """
import json, resource, sys, time
from spora_zarr.runtime import configure_writer_process
configure_writer_process()
kind, args = sys.argv[1], json.loads(sys.argv[2])
start = time.perf_counter()
if kind == "stitch":
    from spora_zarr.stitching import StitchOptions, stitch
    options = StitchOptions(modality="imc", tissue_id=args["tissue"], mpp=1.0, labels=args.get("labels"))
    result = stitch(args["tiles"], args["table"], args["dest"], options)
    extra = {"objects": result.objects}
else:
    from spora_zarr.convert import add_image
    add_image(args["dest"], args["file"], modality="imc", tissue_id=args["tissue"], mpp=1.0)
    extra = {}
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}))
"""


FREE: list[int] = []  # free disk bytes sampled during the runs (the stores peak while written)


def child(kind: str, dest: Path, **args: object) -> dict[str, float]:
    """Run one measurement in a fresh process, sampling the free disk meanwhile; the store it wrote is deleted afterwards."""
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, json.dumps({"dest": str(dest), **args})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while True:
            FREE.append(shutil.disk_usage(dest.parent).free)
            try:
                stdout, stderr = process.communicate(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        if process.returncode:
            raise RuntimeError(f"{kind} failed ({process.returncode}):\n{stderr}")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return json.loads(stdout.strip().splitlines()[-1])


def section(fov: int, counts: list[int], rows: dict[int, dict[str, float]], extra: dict[str, float], load: str, kept: bool) -> str:
    """The ``## Stitching`` section of docs/benchmarks.md."""
    big, small = max(counts), min(counts)
    head = " | ".join(f"{n} FOVs ({rows[n]['edge']:,.0f}², {rows[n]['mb']:,.0f} MB)" for n in counts)
    ratio = {n: rows[n]["convert_seconds"] / rows[n]["seconds"] for n in counts}
    growth = (rows[big]["rss_mib"] / rows[small]["rss_mib"] - 1) * 100
    peak = max(max(max(r["rss_mib"], r["convert_rss"]) for r in rows.values()), extra["labels_rss"])
    verdict = {True: "PASS", False: "FAIL"}

    def cells(text: object) -> str:
        return " | ".join(
            str(text).format(
                **rows[n], n=n, mbs=rows[n]["mb"] / rows[n]["seconds"], cmbs=rows[n]["mb"] / rows[n]["convert_seconds"], ratio=ratio[n]
            )
            for n in counts
        )

    at_big = " | ".join(f"{extra['labels_seconds']:.1f} / {extra['labels_rss']:.0f}" if n == big else "" for n in counts)
    objects = " | ".join(f"{extra['objects']:,.0f} / {extra['truth']:,.0f}" if n == big else "" for n in counts)
    lines = [
        "## Stitching",
        "",
        f"`scripts/bench_stitch.py --fov {fov} --counts {' '.join(map(str, counts))}` (2 shared cores, load average {load}). "
        f"FOVs of {fov}² x {CHANNELS} channels uint16 with 10 % overlap (uncompressed tiled TIFF tiles; pixels a deterministic "
        f"texture of global coordinates), on square grids; the {small}-FOV mosaic is the top-left sub-grid of the {big} tiles. "
        "Each measurement runs in a fresh process set up as the CLI sets up `stitch` / `add-image` and reports its own peak "
        "RSS (imports included). At each count `add-image` (the convert path) converts the same output image, written "
        "beforehand as one tiled TIFF, in the same run.",
        "",
        f"| measure | {head} |",
        "|---|" + "---:|" * len(counts),
        "| `stitch` (blend none, writer defaults), s / MB/s of output | " + cells("{seconds:.1f} / {mbs:.1f}") + " |",
        "| `stitch` peak RSS, MiB | " + cells("{rss_mib:.0f}") + " |",
        "| `add-image` of the same output, s / MB/s | " + cells("{convert_seconds:.1f} / {cmbs:.1f}") + " |",
        "| `add-image` peak RSS, MiB | " + cells("{convert_rss:.0f}") + " |",
        "| stitched MB/s / `add-image` MB/s | " + cells("{ratio:.2f}") + " |",
        "| the same with the inputs in the page cache (read again at once): stitch s / add-image s / ratio | "
        + " | ".join(
            f"{rows[n]['warm_seconds']:.1f} / {rows[n]['warm_convert_seconds']:.1f} / "
            f"{rows[n]['warm_convert_seconds'] / rows[n]['warm_seconds']:.2f}"
            if "warm_seconds" in rows[n]
            else "(inputs beyond 40 % of the RAM)"
            for n in counts
        )
        + " |",
        f"| `stitch --labels cell_masks` (image + labels), s / peak RSS MiB | {at_big} |",
        f"| objects in the stitched labels / ground truth | {objects} |",
        "",
        "| target | value |",
        "|---|---|",
        *(
            f"| stitched MB/s >= 0.5 x `add-image` MB/s of the same output, {n} FOVs | {ratio[n]:.2f} x {verdict[ratio[n] >= 0.5]} |"
            for n in counts
        ),
        f"| peak RSS <= 700 MiB | {peak:.0f} MiB (stitch, labels, add-image) {verdict[peak <= 700]} |",
        f"| stitch peak RSS within 10 % between {small} and {big} FOVs | {growth:+.1f} % {verdict[abs(growth) <= 10]} |",
        f"| label object count equal to ground truth | {extra['objects']:,.0f} = {extra['truth']:,.0f} "
        f"{verdict[extra['objects'] == extra['truth']]} |",
        "",
        f"Tiles written in {extra['make_seconds']:.0f} s, the reference TIFFs in "
        + ", ".join(f"{rows[n]['reference_seconds']:.0f} s" for n in counts)
        + " (not timed above). "
        "Page cache: every measurement starts with its inputs evicted (`fsync`, then `posix_fadvise(DONTNEED)` on each "
        "tile, label tile or reference TIFF), so the stitch reads its tiles and `add-image` its reference TIFF from disk; "
        "within a run each side may find in the cache what it read itself (the stitch reads its tiles ahead with "
        "`posix_fadvise(WILLNEED)`, `add-image` relies on the kernel's own readahead). Where the inputs fit in 40 % of the "
        f"RAM ({RAM / 2**30:.0f} GiB) each side is also run a second time at once, its inputs then in the page cache (a CPU-bound "
        "comparison; the targets use the first, cold runs). "
        f"Disk: the largest count's tiles ({extra['tiles_gb']:.1f} GB with the label tiles) were "
        + ("kept" if kept else "deleted before its reference TIFF was converted")
        + f"; the least free disk seen was {extra['min_free_gb']:.0f} GB. Not measured here: `--register` and `--blend linear` timings.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fov", type=int, default=512, help="FOV edge in pixels (target: 2048)")
    parser.add_argument("--counts", type=int, nargs="+", default=[25, 100], help="FOV counts, square numbers (target: 100 400)")
    parser.add_argument("--workdir", type=Path, default=None, help="where tiles and stores go (default: a temporary folder)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument(
        "--keep-tiles",
        action="store_true",
        help="keep the tiles in WORKDIR/stitch_tiles_<fov>_<side> and reuse them on the next run (delete them yourself)",
    )
    args = parser.parse_args()
    counts = sorted(args.counts)
    if any(math.isqrt(n) ** 2 != n for n in counts):
        parser.error("counts must be square numbers")
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root, tiles = Path(tmp), Path(tmp) / "tiles"
        if args.keep_tiles:
            tiles = Path(args.workdir or tempfile.gettempdir()) / f"stitch_tiles_{args.fov}_{math.isqrt(counts[-1])}"
        FREE.append(shutil.disk_usage(root).free)
        print(f"FOV {args.fov}² x {CHANNELS} channels uint16, 10 % overlap")
        began = time.perf_counter()
        if (tiles / "complete").exists():
            step, made = args.fov - args.fov // 10, float((tiles / "complete").read_text())
        else:
            step = make(tiles, math.isqrt(counts[-1]), args.fov)
            made = time.perf_counter() - began
            (tiles / "complete").write_text(f"{made}\n")
        extra = {"make_seconds": made, "tiles_gb": sum(f.stat().st_size for f in tiles.iterdir()) / 1e9}
        print(f"tiles written in {extra['make_seconds']:.0f} s ({extra['tiles_gb']:.1f} GB)")
        rows: dict[int, dict[str, float]] = {}
        for count in counts:
            offsets, edge = table(tiles, math.isqrt(count), step, args.fov)
            megabytes = CHANNELS * edge * edge * 2 / 1e6
            evict(tiles)
            rows[count] = {
                **child("stitch", root / f"s{count}.zarr", tiles=str(tiles), table=str(offsets), tissue="T"),
                "edge": edge,
                "mb": megabytes,
            }
            r = rows[count]
            warm = max(count * args.fov**2 * CHANNELS * 2, megabytes * 1e6) <= 0.4 * RAM
            if warm:  # again at once: the tiles just read are in the page cache
                r["warm_seconds"] = child("stitch", root / f"s{count}.zarr", tiles=str(tiles), table=str(offsets), tissue="T")["seconds"]
            loads.append(os.getloadavg()[0])
            FREE.append(shutil.disk_usage(root).free)
            print(
                f"{count} FOVs -> {edge} x {edge} ({megabytes:,.0f} MB): stitch {r['seconds']:.1f} s, "
                f"{megabytes / r['seconds']:.1f} MB/s, peak RSS {r['rss_mib']:.0f} MiB",
                flush=True,
            )
            if count == counts[-1]:
                evict(tiles)
                labelled = child("stitch", root / f"l{count}.zarr", tiles=str(tiles), table=str(offsets), tissue="T", labels="cell_masks")
                extra.update(
                    labels_seconds=labelled["seconds"],
                    labels_rss=labelled["rss_mib"],
                    objects=labelled["objects"],
                    truth=truth_objects(edge),
                )
                loads.append(os.getloadavg()[0])
                print(
                    f"  with labels: {labelled['seconds']:.1f} s, peak RSS {labelled['rss_mib']:.0f} MiB, "
                    f"{labelled['objects']} objects (ground truth {extra['truth']})",
                    flush=True,
                )
            reference = root / "reference.tif"
            began = time.perf_counter()
            reference_tiff(reference, edge)
            r["reference_seconds"] = time.perf_counter() - began
            FREE.append(shutil.disk_usage(root).free)
            if count == counts[-1] and not args.keep_tiles:
                shutil.rmtree(tiles)
            evict(reference)
            converted = child("add-image", root / f"c{count}.zarr", file=str(reference), tissue="T")
            loads.append(os.getloadavg()[0])
            r.update(convert_seconds=converted["seconds"], convert_rss=converted["rss_mib"])
            if warm:
                r["warm_convert_seconds"] = child("add-image", root / f"c{count}.zarr", file=str(reference), tissue="T")["seconds"]
            reference.unlink()
            print(
                f"  add-image of the same output: {converted['seconds']:.1f} s, {megabytes / converted['seconds']:.1f} MB/s, "
                f"peak RSS {converted['rss_mib']:.0f} MiB; stitch speed = {converted['seconds'] / r['seconds']:.2f} x add-image",
                flush=True,
            )
            if warm:
                print(
                    f"  inputs in the page cache: stitch {r['warm_seconds']:.1f} s, add-image {r['warm_convert_seconds']:.1f} s "
                    f"({r['warm_convert_seconds'] / r['warm_seconds']:.2f} x)",
                    flush=True,
                )
        extra["min_free_gb"] = min(FREE) / 1e9
    load = f"{min(loads):.1f}-{max(loads):.1f}"
    if not args.no_docs:
        write_section(section(args.fov, counts, rows, extra, load, args.keep_tiles))
        print(f"wrote the Stitching section of {DOCS}")


if __name__ == "__main__":
    main()
