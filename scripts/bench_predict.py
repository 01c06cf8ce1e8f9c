#!/usr/bin/env python
"""Inference benchmark: ``spora-zarr predict`` against ``spora-zarr add-image`` of the same slide, in one run.

For each slide size a 16-channel uint16 tiled TIFF is generated tile by tile
(cached in the work directory), then, each in its own process, timed inside it:

1. ``add-image`` (the converter's writer) writes it into a fresh store;
2. ``predict`` with an identity TorchScript model (crop mode, tile 256, overlap 32)
   writes ``predictions/identity`` (float32) beside it;
3. on the smaller slide only, ``predict`` with a small convolution model
   (16 -> 8 -> 2 channels, 3x3) for tiles/s.

It prints seconds, MB/s of source pixels (the uint16 input for both, so the
ratio compares the plumbing, not the output dtype), peak RSS per process, the
predict/convert speed ratio (target >= 0.5) and the RSS of the two sizes
(target within 10 %), and a markdown block for ``docs/benchmarks.md``.

Usage::

    python scripts/bench_predict.py                         # 8192² and 16384², 16 channels
    python scripts/bench_predict.py --sizes 4096,8192 --channels 16 --workdir /tmp/spora_bench_predict
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

MiB = 2**20
REPO = Path(__file__).resolve().parent.parent
TILE, OVERLAP, BATCH = 256, 32, 16

_MEASURE = r"""
import json, resource, sys, time
from spora_zarr.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
print(json.dumps({"rc": code, "seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _measured(argv: list[str]) -> dict:
    """Run the CLI with ``argv`` in a fresh process; its own seconds and peak RSS."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, cwd=REPO, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"failed: spora-zarr {' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result["rc"]:
        raise SystemExit(f"spora-zarr {' '.join(argv)} exited {result['rc']}\n{proc.stderr[-2000:]}")
    return result


def _models(workdir: Path, channels: int) -> tuple[Path, Path]:
    import torch

    identity = workdir / "identity.pt"
    torch.jit.script(torch.nn.Identity()).save(str(identity))
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1)).eval()
    conv_path = workdir / "conv.pt"
    torch.jit.trace(conv, torch.zeros(1, channels, 64, 64)).save(str(conv_path))
    return identity, conv_path


def _slide(workdir: Path, edge: int, channels: int) -> Path:
    from spora_zarr.testing.cohorts import write_large_multiplex_tiff

    path = workdir / f"slide_{channels}x{edge}.tif"
    if not path.exists():
        print(f"generating {path.name} ...", flush=True)
        write_large_multiplex_tiff(path, (channels, edge, edge), "uint16", page_per_channel=False, bigtiff=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8192,16384", help="slide edges in pixels, comma-separated (default %(default)s)")
    parser.add_argument("--channels", type=int, default=16, help="channels of the slides (default %(default)s)")
    parser.add_argument("--workdir", default="/tmp/spora_bench_predict", help="where slides and stores go (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    args = parser.parse_args()
    from spora_zarr.tiling.patching import axis_tiles

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    identity, conv = _models(workdir, args.channels)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for edge in sizes:
        slide = _slide(workdir, edge, args.channels)
        raw = args.channels * edge * edge * 2
        store = workdir / f"store_{edge}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        convert = _measured(["add-image", str(store), str(slide), "--modality", "imc", "--tissue-id", "T", "--mpp", "1.0"])
        common = ["--modality", "imc", "--resolution", "1.0", "--tile-size", str(TILE), "--overlap", str(OVERLAP),
                  "--batch-size", str(BATCH), "--no-progress"]
        predict = _measured(["predict", str(store), "--model", str(identity), "--name", "identity", *common])
        row = {"edge": edge, "raw": raw, "convert": convert, "predict": predict}
        if edge == min(sizes):
            row["conv"] = _measured(["predict", str(store), "--model", str(conv), "--name", "conv", *common])
            row["tiles"] = len(axis_tiles(edge, TILE, OVERLAP)) ** 2
        rows.append(row)
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
        print(
            f"{args.channels}x{edge}²: add-image {convert['seconds']:.1f} s ({raw / convert['seconds'] / 1e6:.0f} MB/s, "
            f"{convert['peak_rss'] / MiB:.0f} MiB), predict identity {predict['seconds']:.1f} s "
            f"({raw / predict['seconds'] / 1e6:.0f} MB/s, {predict['peak_rss'] / MiB:.0f} MiB), "
            f"ratio {convert['seconds'] / predict['seconds']:.2f}",
            flush=True,
        )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python scripts/bench_predict.py --sizes {args.sizes} --channels {args.channels}` "
        f"(identity TorchScript model, crop mode, tile {TILE}, overlap {OVERLAP}, batch {BATCH}, CPU; each command in its own process).",
        "",
        "| slide (uint16) | add-image s | add-image MB/s | predict s | predict MB/s | predict / add-image speed | predict peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c, p, raw = row["convert"], row["predict"], row["raw"]
        lines.append(
            f"| {args.channels} x {row['edge']}² ({raw / 2**30:.1f} GiB) | {c['seconds']:.1f} | {raw / c['seconds'] / 1e6:.0f} | "
            f"{p['seconds']:.1f} | {raw / p['seconds'] / 1e6:.0f} | {c['seconds'] / p['seconds']:.2f} | {p['peak_rss'] / MiB:.0f} MiB |"
        )
    if len(rows) > 1:
        small, big = rows[0]["predict"]["peak_rss"], rows[-1]["predict"]["peak_rss"]
        lines += ["", f"Peak RSS of predict, largest / smallest slide: {big / small:.2f} (target within 10 %)."]
    first = rows[0]
    if "conv" in first:
        lines += ["", f"Small conv model ({args.channels}->8->2, 3x3) on the {first['edge']}² slide: {first['tiles']} tiles in "
                  f"{first['conv']['seconds']:.1f} s = {first['tiles'] / first['conv']['seconds']:.1f} tiles/s (CPU)."]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
