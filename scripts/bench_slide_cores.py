#!/usr/bin/env python
"""One slide on every core: add-image of one large slide on one core against two, in one run.

The slide is the Aperio-style SVS of ``scripts/bench_slides.py`` (its
``make_slide``: 256 px JPEG tiles, quality 80, own levels at 4x and 16x),
generated once into the work directory. Each conversion is ``spora-zarr
add-image`` in its own process, pinned with ``taskset -c`` to the first core of
this process's affinity (one core) or its first two (two cores); the writer
streams one lane per core it may run on (``WriteOptions.lanes``).

Routes: ``jpeg`` (the default: the slide's JPEG tiles kept as chunks) and
``lossless`` (``--lossless``: every tile decoded, stored with the lossless
codec; the CPU-heavy one). Next to each conversion runs a reference job of
the same shape, perfectly parallel (``--reference-gib`` of BLAKE2 hashing
split over one thread per core, in its own process): its efficiency is the
most that the machine's load let any program reach at that moment.

Runs are interleaved (per repeat and route: reference on one core, the
conversion on one core, reference on two, conversion on two) so that other
processes' load falls on both sides alike; each starts after ``sync``, so
that none pays for writing back another's store, and each writes a new
store, all removed at the end, so that none makes its files just after
another's were deleted (which ext4 without a journal charges for a minute).
For each run: seconds, CPU seconds (user + sys of the child, from
``os.wait4``), cores busy (CPU / wall seconds),
cores wanted (the child's runnable threads, capped at its cores, sampled from
``/proc``: what it asks of its cores whoever else runs there), peak RSS and
the 1-minute load average before and after; per route the speedup t1 / t2 and
the per-core efficiency t1 / (2 t2) of the summed seconds, the reference's, and
whether the one-core and two-core stores hold the same pixels and metadata.

With ``--memory-stores`` each route is also converted into stores in memory
(``/dev/shm``, tmpfs), side by side with the disk in the same run: a
conversion on disk leaves the kernel gigabytes to write back (4.9 GB for
the lossless route), and the kernel's writeback runs on a core outside the
one-core run's but shares the two-core run's cores (and makes its threads
wait on the disk); in memory there is nothing to write back, so the figure
is the conversion's own. A store in memory is removed right after its
digest.

Prints a table and writes the ``## One slide on every core`` section of
``docs/benchmarks.md``.

Usage::

    python scripts/bench_slide_cores.py                         # 40,000² slide in /tmp/slidecores
    python scripts/bench_slide_cores.py --repeat 2 --routes lossless
    python scripts/bench_slide_cores.py --edge 16384 --no-docs
    python scripts/bench_slide_cores.py --routes lossless --repeat 2 --memory-stores
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from _benchmarks_doc import write_section
from bench_slides import make_slide

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20
ROUTES = ("jpeg", "lossless")
NAMES = {"jpeg": "add-image (JPEG tiles kept)", "lossless": "add-image --lossless", "reference": "reference (BLAKE2, parallel)"}
MEMORY_STORES = Path("/dev/shm/spora_slidecores")
IN_MEMORY = ", store in memory"  # the suffix of a route written into MEMORY_STORES
TARGET_EFFICIENCY = 0.9  # t1 / (2 t2)

#: ``spora-zarr`` as its console script runs it, with this interpreter.
_CLI = "import sys; from spora_zarr.cli import run; sys.argv[0] = 'spora-zarr'; run()"

#: The reference job: ``argv[1]`` GiB of BLAKE2 (which drops the GIL) split over ``argv[2]`` threads.
_REFERENCE = """
import hashlib, sys, threading
gib, threads = float(sys.argv[1]), int(sys.argv[2])
block = bytes(64 << 20)
rounds = round(gib * 16)
def work(n):
    for _ in range(n):
        hashlib.blake2b(block).digest()
workers = [threading.Thread(target=work, args=(rounds // threads + (i < rounds % threads),)) for i in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
"""


@dataclass
class Run:
    """One child process: a conversion or the reference job."""

    route: str
    cores: int
    seconds: float
    cpu_seconds: float
    wanted: float
    rss_mib: float
    load_before: float
    load_after: float
    digest: str = ""

    @property
    def busy(self) -> float:
        """Cores busy on average: CPU seconds per second."""
        return self.cpu_seconds / self.seconds

    def line(self, cpus: str) -> str:
        return (
            f"{self.route:9s} {self.cores} core(s) (taskset -c {cpus}): {self.seconds:7.1f} s, CPU {self.cpu_seconds:7.1f} s "
            f"({self.busy:.2f} busy, {self.wanted:.2f} wanted), peak RSS {self.rss_mib:5.0f} MiB, "
            f"load {self.load_before:.2f} -> {self.load_after:.2f}"
        )


def core_sets() -> dict[int, str]:
    """``taskset -c`` lists for one core and two: the first one and two CPUs this process may run on."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(f"this process may run on {len(cpus)} CPU(s); the benchmark needs two")
    return {1: str(cpus[0]), 2: f"{cpus[0]},{cpus[1]}"}


class Demand:
    """How many cores process ``pid`` could keep busy: its runnable threads, capped at ``cores``, sampled over time.

    Every ``interval`` seconds the states of ``/proc/PID/task/*/stat`` are read;
    a thread that runs or waits for a core is ``R``. The mean of
    ``min(runnable, cores)`` is what the process asks of its cores, whoever else
    runs on them: on an idle machine it would be its cores busy. Threads
    sleeping on I/O, a lock or a queue are not counted.
    """

    def __init__(self, pid: int, cores: int, interval: float = 0.02) -> None:
        self.pid, self.cores, self.interval = pid, cores, interval
        self._total = self._samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        tasks = Path(f"/proc/{self.pid}/task")
        while not self._done.wait(self.interval):
            runnable = 0
            try:
                for task in tasks.iterdir():
                    with contextlib.suppress(OSError, IndexError):  # a thread that ended meanwhile
                        runnable += (task / "stat").read_text().rpartition(")")[2].split()[0] == "R"
            except OSError:  # the process ended
                continue
            self._total += min(runnable, self.cores)
            self._samples += 1

    def stop(self) -> float:
        """Stop sampling; the mean runnable threads (capped at ``cores``)."""
        self._done.set()
        self._thread.join()
        return self._total / max(1, self._samples)


def store_digest(image: Path) -> str:
    """BLAKE2 of an image group's metadata documents and of every level's pixels, shard by shard.

    Pixels, not shard files: zarrs places a shard's chunks in the order its
    threads finish them, so the files of equal levels may differ byte for byte.
    """
    import zarr

    digest = hashlib.blake2b(digest_size=16)
    for document in sorted(image.rglob("zarr.json")):
        digest.update(str(document.relative_to(image)).encode() + b"\0" + document.read_bytes())
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Array is unsupported by ZarrsCodecPipeline")  # the JPEG level: zarr's own pipeline
        group = zarr.open_group(image, mode="r")
        for name in sorted(group.array_keys()):
            array = group[name]
            assert isinstance(array, zarr.Array)
            step = array.shards or array.chunks
            for y in range(0, array.shape[-2], step[-2]):
                for x in range(0, array.shape[-1], step[-1]):
                    digest.update(array[..., y : y + step[-2], x : x + step[-1]].tobytes())
    return digest.hexdigest()


def measure(route: str, cores: int, cpus: str, arguments: list[str]) -> Run:
    """Run ``python arguments`` under ``taskset -c cpus`` with this checkout first on the path: its figures."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    os.sync()  # the earlier runs' stores written back first: no run pays for another's writes
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(["taskset", "-c", cpus, sys.executable, *arguments], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        sampler = Demand(child.pid, cores)  # polls while the child runs: a zombie keeps no task entries
        _, status, usage = os.wait4(child.pid, 0)
        wanted = sampler.stop()
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen from waiting again
        if child.returncode:
            stderr.seek(0)
            message = stderr.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"{route} on {cores} core(s) exited with {child.returncode}:\n{message}")
    cpu = usage.ru_utime + usage.ru_stime
    return Run(route, cores, seconds, cpu, wanted, usage.ru_maxrss / 1024, load_before, os.getloadavg()[0])


#: ext4 without a journal (this machine's) skips the inodes deleted in the last 60 s (300 s while their inode
#: table is not yet written back) when it makes a file, checking them one by one: a conversion right after a
#: store of thousands of files was deleted spends seconds of kernel time making its own.
RECENTLY_DELETED_S = 60


def add_image(slide: Path, store: Path, route: str, cores: int, cpus: str) -> Run:
    """``spora-zarr add-image`` of ``slide`` into the new ``store`` (``--lossless`` for that route); the store's digest kept.

    A store on disk is left in place: the runs' stores are removed together at the end, so that no run makes its
    files just after another's were deleted (``RECENTLY_DELETED_S``), as no user converting into a new store does.
    A store in memory (``MEMORY_STORES``: tmpfs, which has no such cost) is removed at once; its run's route is
    named with ``IN_MEMORY``.
    """
    lossless = ["--lossless"] if route == "lossless" else []
    in_memory = store.is_relative_to(MEMORY_STORES)
    run = measure(
        route + (IN_MEMORY if in_memory else ""),
        cores,
        cpus,
        ["-c", _CLI, "add-image", str(store), str(slide), "--modality", "he", "--tissue", "S", *lossless],
    )
    run.digest = store_digest(store / "he" / "images" / "S")
    if in_memory:
        shutil.rmtree(store)
    return run


def name(route: str) -> str:
    """A route's name in the tables (a route in memory: its disk route's, with ``IN_MEMORY``)."""
    disk = route.removesuffix(IN_MEMORY)
    return NAMES[disk] + route[len(disk) :]


def remove_stores(stores: Path) -> None:
    """Remove the runs' stores left by an earlier run, then wait until ext4 no longer counts their inodes as recently deleted."""
    if stores.exists():
        shutil.rmtree(stores)
        os.sync()
        print(f"removed {stores} (left by an earlier run); waiting {RECENTLY_DELETED_S} s before the runs")
        time.sleep(RECENTLY_DELETED_S)


def reference(gib: float, cores: int, cpus: str) -> Run:
    """The reference job: ``gib`` GiB of hashing in one thread per core."""
    return measure("reference", cores, cpus, ["-c", _REFERENCE, str(gib), str(cores)])


def efficiency(runs: list[Run], route: str) -> tuple[float, float]:
    """Speedup t1 / t2 and per-core efficiency t1 / (2 t2) of the summed seconds of ``route``."""
    t1 = sum(r.seconds for r in runs if r.route == route and r.cores == 1)
    t2 = sum(r.seconds for r in runs if r.route == route and r.cores == 2)
    return t1 / t2, t1 / (2 * t2)


def mean_wanted(runs: list[Run], route: str, cores: int) -> float:
    """Mean cores wanted by the runs of ``route`` on ``cores``, weighted by their seconds."""
    chosen = [r for r in runs if r.route == route and r.cores == cores]
    return sum(r.wanted * r.seconds for r in chosen) / sum(r.seconds for r in chosen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edge", type=int, default=40_000, help="slide edge in px (default %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/slidecores"), help="work directory (slide cached there)")
    parser.add_argument("--repeat", type=int, default=1, help="one-core / two-core pairs per route (default %(default)s)")
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated, of: " + ", ".join(ROUTES))
    parser.add_argument("--reference-gib", type=float, default=4.0, help="GiB hashed by the reference job (default %(default)s)")
    parser.add_argument(
        "--memory-stores", action="store_true", help=f"also convert each route into stores in memory ({MEMORY_STORES}, tmpfs)"
    )
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
    stores = args.work / "stores"
    remove_stores(stores)
    places = [stores, MEMORY_STORES] if args.memory_stores else [stores]
    runs: list[Run] = []
    try:
        for repeat in range(args.repeat):
            for route in routes:
                for place in places:
                    for cores in (1, 2):
                        store = place / f"slide_{args.edge}_{route}_{cores}_{repeat}.zarr"
                        for run in (reference(args.reference_gib, cores, cpus[cores]), add_image(slide, store, route, cores, cpus[cores])):
                            runs.append(run)
                            print(run.line(cpus[cores]))
    finally:
        for place in places:
            shutil.rmtree(place, ignore_errors=True)
    load_end = os.getloadavg()
    print(f"load average {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} (1, 5, 15 min) at the end")
    measured = list(dict.fromkeys(r.route for r in runs))  # the routes, and each in memory after it
    results = {route: efficiency(runs, route) for route in measured}
    disk = {route: route.removesuffix(IN_MEMORY) for route in measured if route != "reference"}
    digests = {route: {r.digest for r in runs if r.route.removesuffix(IN_MEMORY) == disk[route]} for route in disk}
    same = {route: len(found) == 1 for route, found in digests.items()}  # on 1 and 2 cores, on disk and in memory
    for route, (speedup, per_core) in results.items():
        stores = f", stores {'identical' if same[route] else 'DIFFER'}" if route in same else ""
        print(f"{route}: speedup t1/t2 {speedup:.2f}, efficiency per core {per_core:.2f} (target >= {TARGET_EFFICIENCY}), "
              f"cores wanted on two cores {mean_wanted(runs, route, 2):.2f}{stores}")  # fmt: skip
    if not args.no_docs:
        write_section(section(args, runs, results, same, cpus, slide_mib, load_start[0], load_end[0]))
        print("wrote the One slide on every core section of docs/benchmarks.md")
    return 0


def section(
    args: argparse.Namespace,
    runs: list[Run],
    results: dict[str, tuple[float, float]],
    same: dict[str, bool],
    cpus: dict[int, str],
    slide_mib: float,
    load_start: float,
    load_end: float,
) -> str:
    """The ``## One slide on every core`` section of ``docs/benchmarks.md``."""
    rows = "\n".join(
        f"| {name(r.route)} | {r.cores} (`taskset -c {cpus[r.cores]}`) | {r.seconds:.1f} | {r.cpu_seconds:.1f} | {r.busy:.2f} | "
        f"{r.wanted:.2f} | {r.rss_mib:.0f} MiB | {r.load_before:.2f} -> {r.load_after:.2f} |"
        for r in runs
    )
    ceiling = results["reference"][1]
    verdicts = "\n".join(
        f"| {name(route)} | {speedup:.2f} | **{per_core:.2f}** | {per_core / ceiling:.2f} | {mean_wanted(runs, route, 2):.2f} | "
        f"{('yes' if same[route] else 'NO') if route in same else '-'} |"
        for route, (speedup, per_core) in results.items()
    )
    options = "".join(
        f" {flag} {value}"
        for flag, value, default in (
            ("--edge", args.edge, 40_000),
            ("--repeat", args.repeat, 1),
            ("--routes", args.routes, ",".join(ROUTES)),
            ("--reference-gib", args.reference_gib, 4.0),
        )
        if value != default
    ) + (" --memory-stores" if args.memory_stores else "")
    where = "on 1 and 2 cores" + (" and in memory" if args.memory_stores else "")
    memory = (
        f" With `--memory-stores` each route was also converted into stores in memory (`{MEMORY_STORES}`, tmpfs), side by"
        " side in the same run: on disk the kernel writes the store back (4.9 GB for the lossless route) on a core outside"
        " the one-core run's but on the two-core run's own cores, where the conversion's threads also wait on the disk;"
        " in memory nothing is written back, so its row is the conversion's own parallelism."
        if args.memory_stores
        else ""
    )
    return f"""## One slide on every core
`python scripts/bench_slide_cores.py{options}` ({_dt.date.today()}, {platform.machine()}, {os.cpu_count()} cores shared
with other sessions: 1-minute load average {load_start:.2f} at the start and {load_end:.2f} at the end, per run in the
table). The {args.edge:,}² px Aperio-style SVS of the JPEG slides section ({slide_mib:.1f} MiB), converted by
`spora-zarr add-image`, each run in its own process pinned by `taskset` to one core or two (the writer streams one lane
per core it may run on). Next to each conversion, a reference job in its own process: {args.reference_gib:g} GiB of
BLAKE2 hashing split over one thread per core, perfectly parallel, so its efficiency is the most the load let any
program reach. Reference and conversion, one core and two, interleaved, each run started after `sync` and
writing a new store (all removed at the end: ext4 without a journal charges a minute for making files just
after others were deleted). CPU seconds: the child's user + system time;
cores busy: CPU / wall seconds; cores wanted: the child's runnable threads (running or waiting for a core), capped at
its cores, sampled every 20 ms from `/proc`.

| job | cores | seconds | CPU seconds | cores busy | cores wanted | peak RSS | load before -> after |
|---|---|---|---|---|---|---|---|
{rows}

| job | speedup t1 / t2 | efficiency per core t1 / (2 t2) | / the reference's | cores wanted on two cores | same store {where} |
|---|---|---|---|---|---|
{verdicts}

Target: efficiency >= {TARGET_EFFICIENCY} per core. On this shared machine the wall-time efficiency is capped by the
other sessions' load (the reference's row): a one-core run has its core mostly to itself (the scheduler moves other
work to the second core), a two-core run shares both. The reference runs for seconds, a lossless conversion for a
minute: the load can change in between (the load column). Cores wanted says how much of two cores a conversion would use
on an idle machine; the same store on one and two cores is compared by pixels and metadata documents (zarrs may
order the chunks inside a shard file differently from run to run).{memory}"""


if __name__ == "__main__":
    sys.exit(main())
