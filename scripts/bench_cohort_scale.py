#!/usr/bin/env python
"""Cohort-scale benchmark (issue 30): what each verb costs as a cohort of small tissues grows.

For each cohort size N (``--sizes``) the script builds, once per work directory,
a spora TIFF cohort of N small multiplex tissues (``imc``, 5 x 256² uint16 at
1.0 mpp, with tissue and cell masks; :func:`spora_zarr.testing.cohorts.make_synthetic_cohort`)
plus N/4 H&E images (512² RGB at 0.5 mpp), and times, each in its own process:

- ``convert`` (``spora-zarr convert``, default ``--workers 1``, and at the
  smallest N ``--workers 2`` into a second store: per-core efficiency of a cohort);
- ``tile`` (``spora-zarr tile --strategy grid``, 128 px: the tile table the loader needs);
- ``validate`` and ``info`` (CLI subprocesses; ``python -c 'import spora_zarr.cli'``
  is the start-up floor);
- ``open_cohort``, ``tissues()``, ``MultiplexImagingDataset(...)`` and
  ``TileDataset(...)`` construction (in a fresh process);
- with ``--s3``, at the smallest N: convert, tile, validate, info and the
  construction steps again against a local moto S3 server (``s3://cohorts/...``);
- one ``TileLoader`` (2 fork workers, batch 32, shuffle, tissue and cell masks)
  run: tiles / s of the first epoch (worker start, every reader opened) and of
  the steady state, the epochs after the second (at least ``--epochs`` - 2 of
  them and ``WARM_TILES`` tiles, so that a small cohort's sub-second epochs are
  not one noisy sample). Epoch 2 is not timed: a worker reads about half of a
  tissue's tiles an epoch (1.6 of them here), so after epoch 1 each worker has
  yet to open the readers of about a third of the tissues (0.5 ** 1.6), after
  epoch 2 of about one in nine (those opens stay in the timed epochs, fewer of
  them at a large N, which a longer warm-up would only favour). With
  ``--loader-rounds R`` the loader runs R times, the sizes in turn, and the
  medians count (``--loader-only``: just that, on the stores of an earlier run).

A metadata-only cohort of ``--meta-tissues`` tissues (default 10,000) is made
from the smallest converted store: each tissue's ``zarr.json`` files copied
under a new id (no shard files: the arrays read as zeros) and the tables
(tissues, channels per tissue, tile table) repeated row by row; on it the
script times ``open_cohort``, ``tissues()`` and ``TileDataset(...)``.

The ratios the issue asks for (validate / convert <= 0.1, info / convert <= 0.02,
epoch tiles/s at the largest N / the smallest N >= 0.9, construction at 10,000
tissues < 1 s) are printed from the same run, and the ``## Cohort scale``
section of ``docs/benchmarks.md`` is written (other sections are kept).
``--profile DIR`` also runs validate, info, convert (``--workers 1``), the
construction steps and the metadata-only construction under ``cProfile``
(``DIR/<step>_<N>.prof``) and prints the top functions by cumulative time.

Usage::

    nice -n 19 python scripts/bench_cohort_scale.py                     # N = 100, a few minutes
    nice -n 19 python scripts/bench_cohort_scale.py --sizes 250,1250 --profile /tmp/spora_scale/prof
    nice -n 19 python scripts/bench_cohort_scale.py --sizes 250,1250,2500
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _benchmarks_doc import DOCS, write_section

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Cohort scale"
WARM_TILES = 8000  # the least tiles the loader reads after its first epoch
TILE = 128  # tile edge of the tile table and the loader (1.0 mpp)
BATCH = 32
MX_EDGE, HE_EDGE, CHANNELS = 256, 512, 5
TARGETS = {"validate": 0.1, "info": 0.02}  # at most this share of the conversion time
LOADER_TARGET = 0.9  # epoch tiles/s at the largest N / the smallest N
CONSTRUCT_LIMIT_S = 1.0  # open_cohort, tissues(), TileDataset(...) at 10,000 tissues


def tissue_ids(n: int) -> list[str]:
    return [f"T{i:05d}" for i in range(n)]


# ----------------------------------------------------------------------------- cohorts


def make_source(root: Path, n: int) -> Path:
    """The TIFF cohort of ``n`` multiplex tissues and ``n // 4`` H&E images, made once (``.done`` marks it)."""
    if (root / ".done").exists():
        return root
    import numpy as np

    from spora_zarr.testing.cohorts import make_synthetic_cohort
    from spora_zarr.testing.tiff_layout import write_rgb_tiff

    shutil.rmtree(root, ignore_errors=True)
    print(f"generating {n} tissues in {root} ...", flush=True)
    ids = tissue_ids(n)
    make_synthetic_cohort(
        root,
        tissues=ids,
        he_shape=(MX_EDGE, MX_EDGE),
        imc_channels=CHANNELS,
        resolutions=(1.0,),
        with_he=False,
        ihc_markers=(),
        with_tables=False,
    )
    y, x = np.mgrid[0:HE_EDGE, 0:HE_EDGE]
    for k, tid in enumerate(ids[: n // 4]):
        rng = np.random.default_rng([1, k])
        base = 200 - 60 * (np.sin((x + 7 * k) / 23.0) * np.cos(y / 31.0)) ** 2
        rgb = np.stack([base, base * 0.8, base * 0.95], -1) + rng.normal(0, 4, (HE_EDGE, HE_EDGE, 3))
        write_rgb_tiff(root / "he" / "0_5mpp" / "images" / f"{tid}.tif", np.clip(rgb, 0, 255).astype(np.uint8))
    (root / ".done").touch()
    return root


def make_metadata_cohort(template: Path, dest: Path, n: int) -> Path:
    """A cohort of ``n`` tissues made of ``template``'s metadata only (zarr.json files and tables, no shards)."""
    if (dest / ".done").exists():
        return dest
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    print(f"generating a metadata-only cohort of {n} tissues in {dest} ...", flush=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    ids = tissue_ids(n)
    seed = "T00000"  # has images of every modality and both masks
    for path in template.rglob("zarr.json"):
        rel = path.relative_to(template)
        if seed in rel.parts:
            continue
        if any(p.startswith("T") and p[1:].isdigit() for p in rel.parts):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / rel)
    groups = [p.parent for p in template.rglob(f"{seed}/zarr.json")]
    texts = {g: {p.relative_to(g): p.read_text() for p in g.rglob("zarr.json")} for g in groups}
    he_ids = set(ids[: n // 4])
    for group, files in texts.items():
        rel_group = group.relative_to(template)
        for tid in ids if rel_group.parts[0] != "he" else sorted(he_ids):
            for rel, text in files.items():
                out = dest / rel_group.parent / tid / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(text.replace(seed, tid))
    for table in template.rglob("*.parquet"):
        rel = table.relative_to(template)
        data = pq.read_table(table)
        if "tissue_id" in data.schema.names:
            one = data.filter(pc.equal(data["tissue_id"], seed)) if data.num_rows else data
            columns = {name: pa.concat_arrays([one[name].combine_chunks()] * n) for name in data.schema.names}
            columns["tissue_id"] = pa.array([t for t in ids for _ in range(one.num_rows)])
            data = pa.table(columns, schema=data.schema)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, dest / rel)
    (dest / ".done").touch()
    return dest


# ----------------------------------------------------------------------------- steps


def cli(*args: str, profile: Path | None = None) -> list[str]:
    """The command line of a ``spora-zarr`` verb, under cProfile when ``profile`` is given."""
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    return [sys.executable, *prof, "-m", "spora_zarr.cli", *args]


def timed(command: list[str]) -> float:
    """Wall seconds of a subprocess (output discarded; a failure stops the run)."""
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False, timeout=3600)
    took = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return took


def construct_child(store: str, profile: str | None) -> dict[str, Any]:
    """In a fresh process: seconds of open_cohort, tissues(), the dataset and the TileDataset over ``store``."""
    from spora_zarr import open_cohort
    from spora_zarr.datasets import MultiplexImagingDataset
    from spora_zarr.torch import TileDataset

    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()

    out: dict[str, Any] = {}
    start = time.perf_counter()
    cohort = open_cohort(store)
    out["open_cohort"] = time.perf_counter() - start
    start = time.perf_counter()
    out["tissues_count"] = len(cohort.tissues("imc"))
    out["tissues"] = time.perf_counter() - start
    start = time.perf_counter()
    dataset = MultiplexImagingDataset("bench", store, 1.0, TILE, verbose=False, tiling_strategy="grid")
    out["dataset"] = time.perf_counter() - start
    start = time.perf_counter()
    tiles = TileDataset(dataset)
    out["tile_dataset"] = time.perf_counter() - start
    out["tiles_count"] = len(tiles)
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    return out


def loader_child(store: str, epochs: int) -> dict[str, Any]:
    """In a fresh process: a 2-worker fork TileLoader over the tile table; tiles/s of epoch 1 and of epochs 3+."""
    import torch

    from spora_zarr.datasets import MultiplexImagingDataset
    from spora_zarr.torch import TileDataset, TileLoader

    tiles = TileDataset(MultiplexImagingDataset("bench", store, 1.0, TILE, verbose=False, tiling_strategy="grid"))
    loader = TileLoader(
        tiles,
        BATCH,
        shuffle=True,
        num_workers=2,
        multiprocessing_context="fork",
        timeout=600,
        generator=torch.Generator().manual_seed(0),
    )

    def epoch() -> tuple[int, float]:
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch["row"])
        return count, time.perf_counter() - start

    count, seconds = epoch()
    first = count / seconds
    epoch()  # not timed: each worker opens the readers of many tissues it did not meet in epoch 1
    warm_tiles, warm_seconds, warm_epochs = 0, 0.0, 0
    while warm_epochs < epochs - 2 or warm_tiles < WARM_TILES:  # a 250-tissue epoch lasts under a second: several
        count, seconds = epoch()
        warm_tiles, warm_seconds, warm_epochs = warm_tiles + count, warm_seconds + seconds, warm_epochs + 1
    return {"tiles": len(tiles), "masks": list(tiles.masks), "epochs": [first, warm_tiles / warm_seconds], "warm_epochs": warm_epochs}


def child(mode: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), f"--{mode}-child", *args],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def top(profile: Path, count: int = 25) -> str:
    """The ``count`` functions of most cumulative time in ``profile``, as pstats prints them."""
    import io

    stream = io.StringIO()
    stats = pstats.Stats(str(profile), stream=stream)
    stats.strip_dirs().sort_stats("cumulative").print_stats(count)
    return stream.getvalue()


def measure(workdir: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every cost of the N-tissue cohort, each step in its own process."""
    source = make_source(workdir / f"src_{n}", n)
    store, store2 = workdir / f"store_{n}.zarr", workdir / f"store_{n}_w2.zarr"
    prof = args.profile
    r: dict[str, Any] = {"n": n, "he": n // 4}
    for path in (store, store2):
        shutil.rmtree(path, ignore_errors=True)
    print(f"[{n}] convert ...", flush=True)
    r["convert"] = timed(cli("convert", str(source), str(store), "--no-progress"))
    if not args.no_workers and n == min(int(s) for s in args.sizes.split(",")):  # slow: at the smallest N only
        print(f"[{n}] convert --workers 2 ...", flush=True)
        r["convert_w2"] = timed(cli("convert", str(source), str(store2), "--no-progress", "--workers", "2"))
        shutil.rmtree(store2, ignore_errors=True)
    print(f"[{n}] tile ...", flush=True)
    r["tile"] = timed(cli("tile", str(store), "--resolution", "1.0", "--tile-size", str(TILE), "--strategy", "grid", "--no-progress"))
    r["import"] = timed([sys.executable, "-c", "import spora_zarr.cli"])
    for verb in ("validate", "info"):
        print(f"[{n}] {verb} ...", flush=True)
        r[verb] = min(timed(cli(verb, str(store))) for _ in range(args.repeat))
    print(f"[{n}] construction ...", flush=True)
    runs = [child("construct", str(store)) for _ in range(args.repeat)]
    r["construct"] = {k: min(run[k] for run in runs) for k in runs[0]}
    print(f"[{n}] loader ...", flush=True)
    r["loader"] = child("loader", str(store), str(args.epochs))  # the first round (loader_rounds adds the others)
    if prof:
        prof.mkdir(parents=True, exist_ok=True)
        print(f"[{n}] profiles ...", flush=True)
        for verb in ("validate", "info"):
            timed(cli(verb, str(store), profile=prof / f"{verb}_{n}.prof"))
        if n == min(int(s) for s in args.sizes.split(",")):  # the per-tissue overhead: once, at the smallest N
            shutil.rmtree(store2, ignore_errors=True)
            timed(cli("convert", str(source), str(store2), "--no-progress", profile=prof / f"convert_{n}.prof"))
            shutil.rmtree(store2, ignore_errors=True)
        child("construct", str(store), str(prof / f"construct_{n}.prof"))
    return r


def loader_rounds(workdir: Path, sizes: list[int], args: argparse.Namespace, first: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """``args.loader_rounds`` loader runs per size (``first``: runs already made), the sizes in turn.

    Each size gets its runs (``rounds``: epoch 1 and epochs 3+ tiles/s), their
    medians (``epochs``), the ratios to the smallest size per round
    (``round_ratios``) and their medians (``ratios``).
    """
    runs: dict[int, list[dict[str, Any]]] = {n: [first[n]] if n in first else [] for n in sizes}
    while min(len(r) for r in runs.values()) < args.loader_rounds:
        for n in sizes:
            store = workdir / f"store_{n}.zarr"
            if not store.is_dir():
                raise SystemExit(f"{store}: no store (run without --loader-only first)")
            print(f"[{n}] loader round {len(runs[n]) + 1} ...", flush=True)
            runs[n].append(child("loader", str(store), str(args.epochs)))
    out = {}
    bases = [run["epochs"] for run in runs[sizes[0]]]
    for n in sizes:
        rounds = [run["epochs"] for run in runs[n]]
        round_ratios = [[a / b for a, b in zip(mine, base, strict=True)] for mine, base in zip(rounds, bases, strict=True)]
        out[n] = {
            **runs[n][0],
            "rounds": rounds,
            "epochs": [statistics.median(r[i] for r in rounds) for i in (0, 1)],
            "round_ratios": round_ratios,
            "ratios": [statistics.median(r[i] for r in round_ratios) for i in (0, 1)],
        }
    return out


def measure_metadata(workdir: Path, template: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Construction on the metadata-only cohort from the groups' own documents, then from directory summaries.

    The summaries are written as a writer writes them when it releases the store's lock (timed: what the
    end of a run that changed every directory pays).
    """
    from spora_zarr.store.location import Location
    from spora_zarr.store.summary import SUMMARY_NAME, write_summaries

    store = make_metadata_cohort(template, workdir / f"meta_{n}.zarr", n)
    for summary in store.rglob(SUMMARY_NAME):
        summary.unlink()
    out: dict[str, Any] = {}
    for label in ("documents", "summaries"):
        if label == "summaries":
            start = time.perf_counter()
            write_summaries(Location.parse(store))
            out["write_summaries"] = time.perf_counter() - start
        print(f"[meta {n}] construction from the {label} ...", flush=True)
        runs = [child("construct", str(store)) for _ in range(args.repeat)]
        out[label] = {k: min(run[k] for run in runs) for k in runs[0]}
        if args.profile:
            child("construct", str(store), str(args.profile / f"construct_meta_{n}_{label}.prof"))
    return out


def start_s3() -> Any:
    """A local moto S3 server (as ``tests/test_scale_out.py`` starts one), its bucket ``cohorts``, AWS_* set for children."""
    import socket

    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not one line per request
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_DEFAULT_REGION="us-east-1",
    )
    s3fs.S3FileSystem(anon=False).mkdir("cohorts")
    return server


def measure_s3(workdir: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """convert into the S3 server, then tile, validate, info and construction against it (no loader)."""
    source = make_source(workdir / f"src_{n}", n)
    url = f"s3://cohorts/store_{n}.zarr"
    r: dict[str, Any] = {"n": n}
    print(f"[s3 {n}] convert ...", flush=True)
    r["convert"] = timed(cli("convert", str(source), url, "--no-progress"))
    r["tile"] = timed(cli("tile", url, "--resolution", "1.0", "--tile-size", str(TILE), "--strategy", "grid", "--no-progress"))
    for verb in ("validate", "info"):
        print(f"[s3 {n}] {verb} ...", flush=True)
        r[verb] = timed(cli(verb, url))
    r["construct"] = child("construct", url)
    return r


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{len(os.sched_getaffinity(0))} cores ({cpu}), Python {platform.python_version()}"


def commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def render(res: dict[str, Any]) -> str:
    sizes = res["sizes"]
    cols = [str(r["n"]) for r in sizes]
    meta = res.get("meta")
    lines = [
        SECTION,
        "",
        (
            f"Measured {res['date']} at commit `{res['commit']}` on {res['machine']}, load average "
            f"{res['load'][0]} before and {res['load'][1]} after (a shared machine; every command under `nice -n 19`). "
            f"`scripts/bench_cohort_scale.py --sizes {','.join(cols)}`: N multiplex tissues "
            f"({CHANNELS} x {MX_EDGE}² uint16, 1.0 mpp, tissue and cell masks) plus N/4 H&E ({HE_EDGE}² RGB, 0.5 mpp); "
            "each step in its own process, seconds of wall time (CLI steps include the interpreter start, "
            "the `import` row, with spora_zarr's modules loaded from bytecode as an installed package's are). "
            "The converted stores have directory summaries (their writers leave them); the "
            "metadata-only cohort is measured first from the groups' own documents, then with the summaries written."
        ),
        "",
        "| cost | "
        + " | ".join(f"N = {c}" for c in cols)
        + (f" | {meta['documents']['tissues_count']:,} (metadata only), documents | summaries |" if meta else " |"),
        "|---|" + "---:|" * (len(cols) + 2 * bool(meta)),
    ]

    def row(label: str, values: list[str], meta_values: tuple[str, str] = ("-", "-")) -> None:
        lines.append(f"| {label} | " + " | ".join(values) + (f" | {' | '.join(meta_values)} |" if meta else " |"))

    row("`convert` (1 worker), s", [f"{r['convert']:.1f}" for r in sizes])
    row("  per tissue, ms", [f"{1000 * r['convert'] / r['n']:.0f}" for r in sizes])
    if "convert_w2" in sizes[0]:
        row("`convert --workers 2`, s", [f"{r['convert_w2']:.1f}" if "convert_w2" in r else "-" for r in sizes])
        row(
            "  per-core efficiency (1 worker / (2 x 2 workers))",
            [f"{r['convert'] / (2 * r['convert_w2']):.2f}" if "convert_w2" in r else "-" for r in sizes],
        )
    row("`tile --strategy grid`, s", [f"{r['tile']:.1f}" for r in sizes])
    for verb, limit in TARGETS.items():
        row(f"`{verb}`, s", [f"{r[verb]:.1f}" for r in sizes])
        share = [r[verb] / r["convert"] for r in sizes]
        row(f"  / convert (target <= {limit})", [f"{v:.3f} {verdict(v <= limit)}" for v in share])
    row("interpreter + `import spora_zarr.cli`, s", [f"{r['import']:.2f}" for r in sizes])
    for key, label in (
        ("open_cohort", "`open_cohort`"),
        ("tissues", "`tissues('imc')`"),
        ("dataset", "`MultiplexImagingDataset(...)`"),
        ("tile_dataset", "`TileDataset(...)`"),
    ):
        pair = (f"{meta['documents'][key]:.3f}", f"{meta['summaries'][key]:.3f}") if meta else ("-", "-")
        row(f"{label}, s", [f"{r['construct'][key]:.3f}" for r in sizes], pair)
    if meta:
        row("write the directory summaries (a writer's end), s", ["-" for _ in sizes], ("-", f"{meta['write_summaries']:.2f}"))
    count = f"{meta['documents']['tiles_count']:,}" if meta else "-"
    row("tiles in the table", [f"{r['loader']['tiles']:,}" for r in sizes], (count, count))
    row("TileLoader, 2 workers, epoch 1 tiles/s", [f"{r['loader']['epochs'][0]:,.0f}" for r in sizes])
    row("TileLoader, 2 workers, epochs 3+ tiles/s", [f"{r['loader']['epochs'][-1]:,.0f}" for r in sizes])
    row(
        f"  epoch 1, epochs 3+ / N = {sizes[0]['n']}",
        [f"{r['loader']['ratios'][0]:.2f}, {r['loader']['ratios'][-1]:.2f}" for r in sizes],
    )
    # The target is at 2,000 tissues: the largest N up to 2,500 (beyond, a worker's reader
    # caches hold fewer tissues than an epoch visits).
    small, large = sizes[0], max((r for r in sizes if r["n"] <= 2500), key=lambda r: r["n"])
    lines += [""]
    if large is not small:
        first, last = large["loader"]["ratios"]
        rounds = len(large["loader"]["rounds"])
        per_round = ", ".join(f"{r[-1]:.2f}" for r in large["loader"]["round_ratios"])
        medians = f"; medians of {rounds} rounds, the sizes in turn: epochs 3+ per round {per_round}" if rounds > 1 else ""
        lines.append(
            f"Epoch tiles/s at N = {large['n']} / N = {small['n']} (target >= {LOADER_TARGET}{medians}): "
            f"epoch 1 **{first:.2f}** ({verdict(first >= LOADER_TARGET)}), epochs 3+ **{last:.2f}** ({verdict(last >= LOADER_TARGET)})."
        )
    if meta:
        worst = max(meta["summaries"][k] for k in ("open_cohort", "tissues", "dataset", "tile_dataset"))
        slowest = max(meta["documents"][k] for k in ("open_cohort", "tissues", "dataset", "tile_dataset"))
        lines.append(
            f"At {meta['documents']['tissues_count']:,} tissues (metadata only) the slowest construction step takes "
            f"{worst:.2f} s with the directory summaries (target < {CONSTRUCT_LIMIT_S:.0f} s each: "
            f"{verdict(worst < CONSTRUCT_LIMIT_S)}), {slowest:.2f} s from the groups' own documents; "
            "`MultiplexImagingDataset(...)` is part of what a user calls before `TileDataset(...)`."
        )
    for r in res.get("s3", []):
        lines += [
            "",
            f"**The same on S3** (a local moto server, `s3://` store, N = {r['n']}, same run): convert {r['convert']:.1f} s, "
            f"tile {r['tile']:.1f} s, validate {r['validate']:.1f} s (**{r['validate'] / r['convert']:.2f} x** convert, "
            f"target <= 0.1: {verdict(r['validate'] / r['convert'] <= 0.1)}), info {r['info']:.1f} s "
            f"(**{r['info'] / r['convert']:.3f} x**, target <= 0.02: {verdict(r['info'] / r['convert'] <= 0.02)}); "
            f"`open_cohort` {r['construct']['open_cohort']:.3f} s, `tissues()` {r['construct']['tissues']:.2f} s, "
            f"`MultiplexImagingDataset(...)` {r['construct']['dataset']:.2f} s, `TileDataset(...)` {r['construct']['tile_dataset']:.2f} s.",
        ]
    lines += [
        "",
        "TileLoader: `TileDataset(MultiplexImagingDataset(store, 1.0, 128, tiling_strategy='grid'))` (float32 items and "
        f"both masks), batch {BATCH}, shuffle, fork, 2 persistent workers; epoch 1 includes the worker start and opens "
        "most tissues' readers, epoch 2 (not timed) the rest. Where the time went and what changed: "
        "`docs/cohort_scale_profile.md`; one slide on both cores: the section `One slide on every core`."
        + ("" if res.get("s3") else " S3: run with `--s3`."),
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/spora_scale"), help="sources and stores (sources reused)")
    parser.add_argument("--sizes", default="100", help="comma-separated cohort sizes (multiplex tissues)")
    parser.add_argument("--meta-tissues", type=int, default=10_000, help="tissues of the metadata-only cohort; 0: skip")
    parser.add_argument("--repeat", type=int, default=1, help="runs of validate, info and construction; the best counts")
    parser.add_argument("--epochs", type=int, default=3, help="TileLoader epochs (the first two are not the steady state)")
    parser.add_argument("--loader-rounds", type=int, default=1, help="TileLoader runs per size, the sizes in turn; medians count")
    parser.add_argument("--loader-only", action="store_true", help="only the loader rounds, on the stores of an earlier run; no docs")
    parser.add_argument("--no-workers", action="store_true", help="skip convert --workers 2 (run at the smallest N)")
    parser.add_argument("--profile", type=Path, help="also write cProfile files here and print their top functions")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--s3", action="store_true", help="also convert into a local moto S3 server and measure there (smallest N)")
    args = parser.parse_args(argv)
    # this machine sets PYTHONDONTWRITEBYTECODE=1, so every CLI step would compile spora_zarr's 40-45 modules from
    # source (0.1 s a process, a twentieth of `info` at 1,250 tissues); an installed package loads them from bytecode:
    # the steps may write it (the checkout's __pycache__ folders, which git ignores), the first of them for the rest
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    measured_commit = commit()  # the code measured, not a commit made while the run went on
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.loader_only:
        loaders = loader_rounds(args.workdir, sizes, args, {})
        for n, loader in loaders.items():
            print(
                f"N = {n}: epoch 1, epochs 3+ tiles/s per round {loader['rounds']}; / N = {sizes[0]} per round "
                f"{[[round(v, 2) for v in r] for r in loader['round_ratios']]}; medians {[round(v, 2) for v in loader['ratios']]}"
            )
        return 0
    results: dict[str, Any] = {"sizes": []}
    for n in sizes:
        results["sizes"].append(measure(args.workdir, n, args))
        (args.workdir / f"results_{n}.json").write_text(json.dumps(results["sizes"][-1], indent=2))
    loaders = loader_rounds(args.workdir, sizes, args, {r["n"]: r["loader"] for r in results["sizes"]})
    for r in results["sizes"]:
        r["loader"] = loaders[r["n"]]
    if args.s3:
        server = start_s3()
        try:
            results["s3"] = [measure_s3(args.workdir, sizes[0], args)]
        finally:
            server.stop()
    if args.meta_tissues:
        results["meta"] = measure_metadata(args.workdir, args.workdir / f"store_{sizes[0]}.zarr", args.meta_tissues, args)
    results.update(
        date=_dt.date.today().isoformat(),
        commit=measured_commit,
        machine=machine(),
        load=(f"{load_before:.2f}", f"{os.getloadavg()[0]:.2f}"),
    )
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    section = render(results)
    print()
    print(section)
    if args.profile:
        for path in sorted(args.profile.glob("*.prof")):
            print(f"==== {path.name}\n{top(path)}")
    if not args.no_docs:
        write_section(section)
        print(f"wrote the '{SECTION}' section of {DOCS}")
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--construct-child":
    print(json.dumps(construct_child(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)))
    raise SystemExit(0)

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--loader-child":
    print(json.dumps(loader_child(sys.argv[2], int(sys.argv[3]))))
    raise SystemExit(0)

if __name__ == "__main__":
    raise SystemExit(main())
