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
ratio compares the plumbing, not the output dtype), CPU seconds and peak RSS
per process, the predict/convert speed ratio (target >= 0.5) and the peak RSS
of the two largest slides (target within 10 %), and writes the ``## Inference``
section of ``docs/benchmarks.md`` (``--no-docs``: print it only).

Usage::

    python scripts/bench_predict.py                         # 8192² and 16384², 16 channels
    python scripts/bench_predict.py --sizes 4096,8192 --channels 16 --workdir /tmp/spora_bench_predict
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _benchmarks_doc import write_section

MiB = 2**20
REPO = Path(__file__).resolve().parent.parent
TILE, OVERLAP, BATCH = 256, 32, 16
TARGET_EDGE = 8192  # the speed target is on a 16-channel 8k x 8k slide

_MEASURE = r"""
import json, resource, sys, time
from spora_zarr.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rc": code, "seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024}))
"""


def _measured(argv: list[str]) -> dict:
    """Run the CLI with ``argv`` in a fresh process; its own seconds, CPU seconds (all threads) and peak RSS."""
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
    parser.add_argument("--no-docs", action="store_true", help="print the docs/benchmarks.md section only")
    parser.add_argument("--no-conv", action="store_true", help="skip the conv model (tiles/s) on the smallest slide")
    args = parser.parse_args()
    from spora_zarr.tiling.patching import axis_tiles

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    identity, conv = _models(workdir, args.channels)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict] = []
    loads = [os.getloadavg()[0]]
    for edge in sizes:
        slide = _slide(workdir, edge, args.channels)
        raw = args.channels * edge * edge * 2
        store = workdir / f"store_{edge}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        convert = _measured(["add-image", str(store), str(slide), "--modality", "imc", "--tissue", "T", "--mpp", "1.0"])
        common = [
            "--modality",
            "imc",
            "--resolution",
            "1.0",
            "--tile-size",
            str(TILE),
            "--overlap",
            str(OVERLAP),
            "--batch-size",
            str(BATCH),
            "--no-progress",
        ]
        predict = _measured(["predict", str(store), "--model", str(identity), "--name", "identity", *common])
        row = {"edge": edge, "raw": raw, "convert": convert, "predict": predict}
        if edge == min(sizes) and not args.no_conv:
            row["conv"] = _measured(["predict", str(store), "--model", str(conv), "--name", "conv", *common])
            row["tiles"] = len(axis_tiles(edge, TILE, OVERLAP)) ** 2
        rows.append(row)
        loads.append(os.getloadavg()[0])
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
        print(
            f"{args.channels}x{edge}²: add-image {convert['seconds']:.1f} s ({raw / convert['seconds'] / 1e6:.0f} MB/s, "
            f"{convert['peak_rss'] / MiB:.0f} MiB), predict identity {predict['seconds']:.1f} s "
            f"({raw / predict['seconds'] / 1e6:.0f} MB/s, {predict['peak_rss'] / MiB:.0f} MiB), "
            f"ratio {convert['seconds'] / predict['seconds']:.2f}",
            flush=True,
        )
    print("\n" + (text := section(args, rows, loads)))
    if not args.no_docs:
        write_section(text)


def section(args: argparse.Namespace, rows: list[dict], loads: list[float]) -> str:
    """The ``## Inference`` section of docs/benchmarks.md."""
    target = next((row for row in rows if row["edge"] == TARGET_EDGE), rows[-1])
    ratio = target["convert"]["seconds"] / target["predict"]["seconds"]
    lines = [
        "## Inference",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python scripts/bench_predict.py --sizes {args.sizes} --channels {args.channels}` "
        f"(2 shared cores, load average {min(loads):.1f}-{max(loads):.1f} while it ran). Identity TorchScript model, crop mode, tile "
        f"{TILE}, overlap {OVERLAP}, batch {BATCH}, CPU; each command in its own process, timed inside it (imports included); MB/s of "
        "the uint16 input for both; CPU s = user + system of all its threads.",
        "",
        "| slide (uint16) | add-image s | add-image MB/s | add-image CPU s | predict s | predict MB/s | predict CPU s "
        "| predict / add-image speed (CPU) | predict peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c, p, raw = row["convert"], row["predict"], row["raw"]
        lines.append(
            f"| {args.channels} x {row['edge']}² ({raw / 2**30:.1f} GiB) | {c['seconds']:.1f} | {raw / c['seconds'] / 1e6:.0f} | "
            f"{c['cpu']:.1f} | {p['seconds']:.1f} | {raw / p['seconds'] / 1e6:.0f} | {p['cpu']:.1f} | "
            f"{c['seconds'] / p['seconds']:.2f} ({c['cpu'] / p['cpu']:.2f}) | {p['peak_rss'] / MiB:.0f} MiB |"
        )
    lines += [
        "",
        f"- Speed, predict / add-image on the {target['edge']}² slide: **{ratio:.2f}** (target >= 0.5: "
        f"{'PASS' if ratio >= 0.5 else 'FAIL'}; CPU seconds {target['convert']['cpu'] / target['predict']['cpu']:.2f}).",
    ]
    if len(rows) > 1:
        small, big = rows[-2]["predict"]["peak_rss"], rows[-1]["predict"]["peak_rss"]
        lines.append(
            f"- Peak RSS of predict, {rows[-1]['edge']}² / {rows[-2]['edge']}²: **{big / small:.2f}** ({big / MiB:.0f} vs "
            f"{small / MiB:.0f} MiB; target within 10 %: {'PASS' if abs(big / small - 1) <= 0.1 else 'FAIL'})."
        )
    first = rows[0]
    if "conv" in first:
        lines.append(
            f"- Small conv model ({args.channels} -> 8 -> 2 channels, 3x3, TorchScript) on the {first['edge']}² slide: "
            f"{first['tiles']} tiles in {first['conv']['seconds']:.1f} s = **{first['tiles'] / first['conv']['seconds']:.1f} "
            "tiles/s** (CPU, imports and writing included)."
        )
    lines.append(
        "- Each tile runs once (the parts of its crop outside a writer block are kept as strips for the next blocks), "
        "windows are cast once into a reused float32 batch buffer, and the prediction writes float32: twice the bytes "
        "of the uint16 input to paste, shrink, compress and store (`docs/inference.md`)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
