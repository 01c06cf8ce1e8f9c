#!/usr/bin/env python
"""One slide on every core: add-image of one large slide on one core against two, in one run.

The slide is the Aperio-style SVS of :mod:`scripts.bench_slides` (``make_slide``:
256 px JPEG tiles, quality 80, own levels at 4x and 16x), generated once into
the work directory. Each conversion is ``spora-zarr add-image`` in its own
process, pinned with ``taskset -c`` to the first core of this process's
affinity (one core) or its first two (two cores); the writer streams one
lane per core it may run on (``WriteOptions.lanes``). Runs are interleaved
(one core, two cores, one core, two cores, ... per route and repeat) so that
the load of other processes falls on both sides alike.

Routes: ``jpeg`` (the default: the slide's JPEG tiles kept as chunks) and
``lossless`` (``--lossless``: every tile decoded, stored with the lossless
codec; the CPU-heavy one). For each run: seconds, CPU seconds (user + sys of
the child, from ``os.wait4``), cores busy (CPU / wall seconds), peak RSS, and
the 1-minute load average before and after; per route the speedup t1 / t2 and
the per-core efficiency t1 / (2 t2) of the summed seconds, and whether the
one-core and two-core stores hold the same pixels and metadata.

Prints a table and writes the ``## One slide on every core`` section of
``docs/benchmarks.md``.

Usage::

    python scripts/bench_slide_cores.py                         # 40,000² slide in /tmp/slidecores
    python scripts/bench_slide_cores.py --repeat 2 --routes lossless
    python scripts/bench_slide_cores.py --edge 16384 --no-docs
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _benchmarks_doc import write_section
from bench_slides import make_slide

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
ROUTES = ("jpeg", "lossless")
TARGET_EFFICIENCY = 0.9  # t1 / (2 t2)

#: ``spora-zarr`` as its console script runs it, with this interpreter.
_CLI = "import sys; from spora_zarr.cli import main; sys.argv[0] = 'spora-zarr'; sys.exit(main())"


@dataclass
class Run:
    """One add-image in its own process."""

    route: str
    cores: int
    seconds: float
    cpu_seconds: float
    rss_mib: float
    load_before: float
    load_after: float
    digest: str

    @property
    def busy(self) -> float:
        """Cores busy on average: CPU seconds per second."""
        return self.cpu_seconds / self.seconds


def core_sets() -> dict[int, str]:
    """``taskset -c`` lists for one core and two: the first one and two CPUs this process may run on."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(f"this process may run on {len(cpus)} CPU(s); the benchmark needs two")
    return {1: str(cpus[0]), 2: f"{cpus[0]},{cpus[1]}"}


def store_digest(image: Path) -> str:
    """BLAKE2 of an image group's metadata documents and of every level's pixels, shard by shard.

    Pixels, not shard files: zarrs places a shard's chunks in the order its
    threads finish them, so the files of equal levels may differ byte for byte.
    """
    import zarr

    digest = hashlib.blake2b(digest_size=16)
    for document in sorted(image.rglob("zarr.json")):
        digest.update(str(document.relative_to(image)).encode() + b"\0" + document.read_bytes())
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        group = zarr.open_group(image, mode="r")
        for name in sorted(group.array_keys()):
            array = group[name]
            assert isinstance(array, zarr.Array)
            step = array.shards or array.chunks
            for y in range(0, array.shape[-2], step[-2]):
                for x in range(0, array.shape[-1], step[-1]):
                    digest.update(array[..., y : y + step[-2], x : x + step[-1]].tobytes())
    return digest.hexdigest()


def add_image(slide: Path, store: Path, route: str, cores: int, cpus: str) -> Run:
    """``spora-zarr add-image`` under ``taskset -c cpus``: wall and CPU seconds, peak RSS, load, the store's digest."""
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = ["taskset", "-c", cpus, sys.executable, "-c", _CLI, "add-image", str(store), str(slide), "--modality", "he", "--tissue", "S"]
    if route == "lossless":
        command.append("--lossless")
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        load_after = os.getloadavg()[0]
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen from waiting again
        if child.returncode:
            stderr.seek(0)
            message = stderr.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"add-image ({route}, {cores} core(s)) exited with {child.returncode}:\n{message}")
    digest = store_digest(store / "he" / "images" / "S")
    shutil.rmtree(store)
    return Run(route, cores, seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, load_before, load_after, digest)


def summary(runs: list[Run], route: str) -> tuple[float, float, bool]:
    """Speedup t1 / t2 and efficiency t1 / (2 t2) of the summed seconds of ``route``; whether all its stores agree."""
    t1 = sum(r.seconds for r in runs if r.route == route and r.cores == 1)
    t2 = sum(r.seconds for r in runs if r.route == route and r.cores == 2)
    same = len({r.digest for r in runs if r.route == route}) == 1
    return t1 / t2, t1 / (2 * t2), same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edge", type=int, default=40_000, help="slide edge in px (default %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slidecores"), help="work directory (slide cached there)")
    parser.add_argument("--repeat", type=int, default=1, help="one-core / two-core pairs per route (default %(default)s)")
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated, of: " + ", ".join(ROUTES))
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    routes = [r for r in args.routes.split(",") if r]
    if not routes or any(r not in ROUTES for r in routes):
        parser.error(f"--routes {args.routes!r}: choose from {', '.join(ROUTES)}")
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: at least 1")
    cpus = core_sets()

    slide = args.work / f"slide_{args.edge}.svs"
    generated = make_slide(slide, args.edge)
    slide_mib = slide.stat().st_size / MiB
    print(f"slide {slide} ({args.edge}², {slide_mib:.1f} MiB){f', generated in {generated:.0f} s' if generated else ''}")
    load_start = os.getloadavg()
    print(f"load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} (1, 5, 15 min) at the start")
    runs: list[Run] = []
    for _ in range(args.repeat):
        for route in routes:
            for cores in (1, 2):
                run = add_image(slide, args.work / f"slide_{args.edge}_{route}_{cores}.zarr", route, cores, cpus[cores])
                runs.append(run)
                print(f"{route:8s} {cores} core(s) (taskset -c {cpus[cores]}): {run.seconds:7.1f} s, "
                      f"CPU {run.cpu_seconds:7.1f} s ({run.busy:.2f} cores busy), peak RSS {run.rss_mib:5.0f} MiB, "
                      f"load {run.load_before:.2f} -> {run.load_after:.2f}")  # fmt: skip
    load_end = os.getloadavg()
    print(f"load average {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} (1, 5, 15 min) at the end")
    results = {route: summary(runs, route) for route in routes}
    for route, (speedup, efficiency, same) in results.items():
        print(f"{route:8s}: speedup t1/t2 {speedup:.2f}, efficiency per core {efficiency:.2f} (target >= {TARGET_EFFICIENCY}), "
              f"stores {'identical' if same else 'DIFFER'}")  # fmt: skip
    if args.no_docs:
        return 0
    names = {"jpeg": "add-image (JPEG tiles kept)", "lossless": "add-image --lossless"}
    rows = "\n".join(
        f"| {names[r.route]} | {r.cores} (`taskset -c {cpus[r.cores]}`) | {r.seconds:.1f} | {r.cpu_seconds:.1f} | {r.busy:.2f} | "
        f"{r.rss_mib:.0f} MiB | {r.load_before:.2f} -> {r.load_after:.2f} |"
        for r in runs
    )
    verdicts = "\n".join(
        f"| {names[route]} | {speedup:.2f} | **{efficiency:.2f}** | {'yes' if same else 'NO'} |"
        for route, (speedup, efficiency, same) in results.items()
    )
    repeat = f" --repeat {args.repeat}" if args.repeat != 1 else ""
    only = f" --routes {','.join(routes)}" if routes != list(ROUTES) else ""
    section = f"""## One slide on every core
`python scripts/bench_slide_cores.py --edge {args.edge}{repeat}{only}` ({_dt.date.today()}, {platform.machine()},
{os.cpu_count()} cores shared with other sessions: their load is in the table, 1-minute load average
{load_start[0]:.2f} at the start and {load_end[0]:.2f} at the end). The {args.edge:,}² px Aperio-style SVS of the JPEG
slides section ({slide_mib:.1f} MiB), converted by `spora-zarr add-image`, each run in its own process pinned by
`taskset` to one core or two (the writer streams one lane per core it may run on), one core and two cores
interleaved. CPU seconds are the child's user + system time; cores busy is CPU / wall seconds.

| route | cores | seconds | CPU seconds | cores busy | peak RSS | load before -> after |
|---|---|---|---|---|---|---|
{rows}

| route | speedup t1 / t2 | efficiency per core t1 / (2 t2) | same store on 1 and 2 cores |
|---|---|---|---|
{verdicts}

Target: efficiency >= {TARGET_EFFICIENCY} per core. Under other sessions' load a two-core run shares its cores, so
these figures are a floor of what an idle machine gives."""
    write_section(section)
    print("wrote the One slide on every core section of docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
