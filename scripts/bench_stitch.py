"""Benchmark ``spora-zarr stitch`` against ``add-image`` (the convert path) of the same output image.

The issue's target is 400 FOVs of 2048² x 8 channels uint16 (25 GiB of tiles);
this machine (2 shared cores) runs a scaled-down version: FOVs of ``--fov``²
x 8 channels uint16 with 10 % overlap on square grids of ``--counts`` FOVs. The
pixels are a deterministic function of global coordinates, so each tile and
the reference TIFF (the output image, written tile by tile) are generated
without the whole image in memory. Each measurement runs in its own process,
which reports its peak RSS.

Reported per FOV count: stitch time, MB/s of output, peak RSS; for the largest
count also ``add-image`` of the same output image (MB/s, RSS), and label
stitching (discs on a lattice, cut into per-tile sequential ids): objects
found vs ground truth.

    .venv/bin/python scripts/bench_stitch.py [--fov 512] [--counts 25 100]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHANNELS = 8
SPACING, RADIUS = 37, 12


def pixels(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The global image's window ``(C, h, w)`` uint16: smooth ramps plus a hashed texture."""
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.int64)
    texture = (xx * 7919 + yy * 104729 + xx * yy) % 251
    return np.stack([((xx * (c + 1) + yy * 3) % 3000 + texture * (c + 1)) for c in range(CHANNELS)]).astype(np.uint16)


def discs(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Global label ids ``(h, w)``: one disc per lattice point (id = lattice index + 1), 0 outside."""
    yy, xx = np.mgrid[y0:y1, x0:x1]
    cy, cx = np.rint(yy / SPACING).astype(np.int64), np.rint(xx / SPACING).astype(np.int64)
    inside = (yy - cy * SPACING) ** 2 + (xx - cx * SPACING) ** 2 <= RADIUS**2
    return np.where(inside, cy * 100000 + cx + 1, 0)


def make(folder: Path, side: int, fov: int) -> tuple[Path, int, int]:
    """Tiles of a ``side`` x ``side`` grid with 10 % overlap, their offsets CSV; returns (table, height, width)."""
    import tifffile
    from skimage.segmentation import relabel_sequential

    step = fov - fov // 10
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,x,y,labels"]
    for r in range(side):
        for c in range(side):
            y, x = r * step, c * step
            name = f"r{r:03d}c{c:03d}"
            tifffile.imwrite(folder / f"{name}.tif", pixels(y, y + fov, x, x + fov), tile=(256, 256), photometric="minisblack")
            labels = relabel_sequential(discs(y, y + fov, x, x + fov))[0].astype(np.uint32)
            tifffile.imwrite(folder / f"{name}_labels.tif", labels, tile=(256, 256))
            lines.append(f"{name}.tif,{x},{y},{name}_labels.tif")
    (folder / "offsets.csv").write_text("\n".join(lines) + "\n")
    size = (side - 1) * step + fov
    return folder / "offsets.csv", size, size


def reference_tiff(path: Path, height: int, width: int) -> None:
    """The output image as one tiled TIFF, written tile by tile."""
    import tifffile

    def tiles():  # type: ignore[no-untyped-def]
        for c in range(CHANNELS):
            for y in range(0, height, 256):
                for x in range(0, width, 256):
                    block = np.zeros((256, 256), np.uint16)
                    part = pixels(y, min(height, y + 256), x, min(width, x + 256))[c]
                    block[: part.shape[0], : part.shape[1]] = part
                    yield block

    tifffile.imwrite(path, tiles(), shape=(CHANNELS, height, width), dtype=np.uint16, tile=(256, 256), photometric="minisblack")


def truth_objects(height: int, width: int) -> int:
    ids: set[int] = set()
    for y in range(0, height, 1024):
        ids.update(np.unique(discs(y, min(height, y + 1024), 0, width)).tolist())
    return len(ids - {0})


CHILD = """
import json, resource, sys, time
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


def child(kind: str, **args: object) -> dict[str, float]:
    from spora_zarr.runtime import configure_writer_process  # noqa: F401  (imported to fail early when the package is missing)

    out = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps(args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fov", type=int, default=512, help="FOV edge in pixels (target: 2048)")
    parser.add_argument("--counts", type=int, nargs="+", default=[25, 100], help="FOV counts, square numbers (target: 100 400)")
    parser.add_argument("--workdir", type=Path, default=None, help="where tiles and stores go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        print(f"FOV {args.fov}² x {CHANNELS} channels uint16, 10 % overlap")
        for count in args.counts:
            side = math.isqrt(count)
            table, height, width = make(root / f"tiles{count}", side, args.fov)
            megabytes = CHANNELS * height * width * 2 / 1e6
            stitched = child("stitch", tiles=str(table.parent), table=str(table), dest=str(root / f"s{count}.zarr"), tissue="T")
            print(f"{side * side} FOVs -> {height} x {width} ({megabytes:,.0f} MB): stitch {stitched['seconds']:.1f} s, "
                  f"{megabytes / stitched['seconds']:.1f} MB/s, peak RSS {stitched['rss_mib']:.0f} MiB")
            if count == max(args.counts):
                reference = root / "reference.tif"
                began = time.perf_counter()
                reference_tiff(reference, height, width)
                print(f"  (reference TIFF written in {time.perf_counter() - began:.1f} s)")
                converted = child("add-image", file=str(reference), dest=str(root / f"c{count}.zarr"), tissue="T")
                ratio = converted["seconds"] / stitched["seconds"]
                print(f"  add-image of the same output: {converted['seconds']:.1f} s, {megabytes / converted['seconds']:.1f} MB/s, "
                      f"peak RSS {converted['rss_mib']:.0f} MiB; stitch speed = {ratio:.2f} x add-image")
                labelled = child("stitch", tiles=str(table.parent), table=str(table), dest=str(root / f"l{count}.zarr"), tissue="T",
                                 labels="cell_masks")
                print(f"  with labels: {labelled['seconds']:.1f} s, peak RSS {labelled['rss_mib']:.0f} MiB, "
                      f"{labelled['objects']} objects (ground truth {truth_objects(height, width)})")


if __name__ == "__main__":
    main()
