#!/usr/bin/env python
"""Conversion benchmark: spora-zarr against ngff-zarr on a ~1 GB multiplex slide and an 8192² H&E.

Each route converts the same TIFF, in its own process, timed inside that process:

- ``spora``: ``spora_zarr.convert_cohort`` with its defaults on a one-tissue cohort;
- ``ngff_bin_shrink``: ngff-zarr's fastest method, ``Methods.DASK_BIN_SHRINK``
  on a lazy (dask over tifffile's zarr view) source;
- ``ngff_default``: ngff-zarr's default method (``ITKWASM_GAUSSIAN``) on the
  same lazy source.

Both ngff-zarr routes produce the levels, chunk and shard shapes and codec spora
produces (checked and printed). The script prints seconds, MB/s of source pixels,
peak RSS and stored / raw size per route, the speed ratios against the targets,
and ``--workers 2`` against serial on a two-tissue cohort, and writes the
``## Conversion`` section of ``docs/benchmarks.md`` (other sections are kept).

Usage::

    python scripts/bench_convert.py                      # everything, sources cached in /tmp/spora_bench
    python scripts/bench_convert.py --sources multiplex,multiplex_zlib,he   # plus a zlib-compressed slide
    python scripts/bench_convert.py --repeat 1 --routes spora,ngff_bin_shrink --no-workers --no-docs
    python scripts/bench_convert.py --generate-only

The ngff-zarr default method needs ``pip install 'spora_zarr[bench]'`` (itkwasm-downsample).
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

from _benchmarks_doc import DOCS, write_section

MiB = 2**20
REPO = Path(__file__).resolve().parent.parent

MULTIPLEX_SHAPE = (16, 5120, 6144)  # (C, H, W) uint16: 1.0 GB
HE_EDGE = 8192  # (H, W, 3) uint8: 201 MB
TILE = (256, 256)
TARGET_BIN_SHRINK = 3.0  # spora speed / ngff-zarr DASK_BIN_SHRINK speed
TARGET_DEFAULT = 20.0  # spora speed / ngff-zarr default-method speed
TARGET_RSS_MIB = 700  # spora peak RSS on the 1 GB slide
ROUTES = ("spora", "ngff_bin_shrink", "ngff_default")
SOURCES = ("multiplex", "multiplex_zlib", "he")


# ---------------------------------------------------------------------------
# Sources (generated once, tile by tile, into the work directory)
# ---------------------------------------------------------------------------


def _tissues_table(root: Path, ids: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"tissue_id": ids}), root / "metadata" / "tissues.parquet")


def he_tile(row: int, col: int, *, edge: int = HE_EDGE, tile: tuple[int, int] = TILE, seed: int = 0) -> Any:
    """One (th, tw, 3) uint8 tile of a synthetic H&E slide, regenerable on its own.

    Colour follows Beer-Lambert stain mixing (Ruifrok-Johnston optical density
    vectors): a blobby tissue area on glass, eosin stroma with a fibrous
    texture, hematoxylin nuclei (jittered ellipses, one per 32 px cell at most)
    and per-pixel noise, so JPEG ratios resemble a real scan's.
    """
    import numpy as np

    th, tw = tile
    y = np.arange(row * th, row * th + th, dtype=np.float32)[:, None]
    x = np.arange(col * tw, col * tw + tw, dtype=np.float32)[None, :]
    s = edge / 8192.0
    field = (
        np.sin(2 * np.pi * y / (3100 * s) + 0.3) * np.cos(2 * np.pi * x / (2700 * s) - 0.8)
        + 0.6 * np.sin(2 * np.pi * (x + 0.7 * y) / (1900 * s) + 1.1)
        + 0.3 * np.cos(2 * np.pi * (x - y) / (730 * s))
    )
    tissue = np.clip((field + 0.35) * 4.0, 0.0, 1.0)  # soft-edged tissue area
    rng = np.random.default_rng([seed, row, col])
    fibres = 0.5 + 0.5 * np.sin(2 * np.pi * (0.9 * x + 0.4 * y) / 23.0 + 3 * np.sin(2 * np.pi * y / 170.0))
    eosin = tissue * (0.22 + 0.12 * fibres + 0.05 * rng.standard_normal((th, tw), dtype=np.float32))
    # Nuclei: cells of 32 px, each with a nucleus (probability follows the tissue) at a jittered centre.
    cell = 32
    cy, cx = th // cell, tw // cell
    centre_y = rng.uniform(9, cell - 9, (cy, cx)).astype(np.float32)
    centre_x = rng.uniform(9, cell - 9, (cy, cx)).astype(np.float32)
    ry, rx = rng.uniform(3.5, 8.0, (cy, cx)), rng.uniform(3.5, 8.0, (cy, cx))
    density = tissue[cell // 2 :: cell, cell // 2 :: cell] ** 2 * 0.8
    present = rng.random((cy, cx)) < density
    local_y = (np.arange(th, dtype=np.float32) % cell)[:, None]
    local_x = (np.arange(tw, dtype=np.float32) % cell)[None, :]
    iy, ix = np.arange(th)[:, None] // cell, np.arange(tw)[None, :] // cell
    d2 = ((local_y - centre_y[iy, ix]) / ry[iy, ix]) ** 2 + ((local_x - centre_x[iy, ix]) / rx[iy, ix]) ** 2
    nuclei = np.where(present[iy, ix], np.clip(1.3 - d2, 0.0, 1.0), 0.0).astype(np.float32)
    chromatin = 0.8 + 0.2 * rng.standard_normal((th, tw), dtype=np.float32)
    hema = tissue * 0.12 + nuclei * chromatin * 0.9
    od_h = np.array([0.65, 0.70, 0.29], np.float32)
    od_e = np.array([0.07, 0.99, 0.11], np.float32)
    od = hema[..., None] * od_h + eosin[..., None] * od_e + 0.02 * rng.standard_normal((th, tw, 1), dtype=np.float32)
    glass = np.array([248, 247, 250], np.float32)
    rgb = glass * np.exp(-np.maximum(od, 0.0) * 1.3)
    return np.clip(rgb + rng.normal(0, 1.5, rgb.shape), 0, 255).astype(np.uint8)


def write_he_tiff(path: Path, *, edge: int = HE_EDGE, seed: int = 0) -> Path:
    """Write the synthetic H&E slide as a tiled JPEG (quality 85) RGB TIFF, tile by tile."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    n = -(-edge // TILE[0])

    def tiles():
        for r in range(n):
            for c in range(n):
                yield he_tile(r, c, edge=edge, seed=seed)

    tmp = path.with_suffix(".partial")
    with tifffile.TiffWriter(tmp) as tw:
        tw.write(
            tiles(), shape=(edge, edge, 3), dtype="uint8", tile=TILE, photometric="rgb", compression="jpeg", compressionargs={"level": 85}
        )
    tmp.rename(path)
    return path


def write_multiplex(path: Path, compression: str | None, seed: int = 0) -> Path:
    """Write the 16 x 5120 x 6144 uint16 slide: tiled BigTIFF, one page per channel, 256 px tiles."""
    from spora_zarr.testing.cohorts import write_large_multiplex_tiff

    tmp = path.with_name(path.stem + ".partial.tif")
    write_large_multiplex_tiff(
        tmp, MULTIPLEX_SHAPE, "uint16", tile=TILE, page_per_channel=True, compression=compression, bigtiff=True, seed=seed
    )
    tmp.rename(path)
    return path


def _cohort(root: Path, images: dict[str, Any]) -> Path:
    """A cohort at ``root`` whose tissue images (relative path -> writer) are made when missing."""
    for rel, make in images.items():
        path = root / rel
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            make(path)
    _tissues_table(root, [Path(rel).stem for rel in images])
    return root


def prepare_sources(workdir: Path, sources: list[str], two_tissues: bool) -> dict[str, Path]:
    """The cohorts the run needs, made once in ``workdir`` and reused.

    ``multiplex`` (uncompressed), ``multiplex_zlib`` and ``he`` are one-tissue
    cohorts; ``multiplex2`` holds the uncompressed slide (hard link) and a
    second one of other content, for ``--workers 2`` against serial.
    """
    made = {}
    if "multiplex" in sources or two_tissues:
        made["multiplex"] = _cohort(workdir / "multiplex_raw", {"imc/1_0mpp/images/big.tif": lambda p: write_multiplex(p, None)})
    if "multiplex_zlib" in sources:
        made["multiplex_zlib"] = _cohort(workdir / "multiplex_zlib", {"imc/1_0mpp/images/big.tif": lambda p: write_multiplex(p, "zlib")})
    if "he" in sources:
        made["he"] = _cohort(workdir / "he", {"he/0_5mpp/images/big.tif": write_he_tiff})
    if two_tissues:
        first = made["multiplex"] / "imc/1_0mpp/images/big.tif"
        made["multiplex2"] = _cohort(
            workdir / "multiplex2_raw",
            {
                "imc/1_0mpp/images/big.tif": lambda p: os.link(first, p),
                "imc/1_0mpp/images/big2.tif": lambda p: write_multiplex(p, None, seed=1),
            },
        )
    return made


# ---------------------------------------------------------------------------
# The routes, each run in a child process: ``bench_convert.py child ROUTE SRC DEST``
# ---------------------------------------------------------------------------


def _source_file(cohort: Path) -> tuple[Path, float]:
    """The one image of a one-tissue cohort and its microns per pixel."""
    (path,) = sorted(cohort.glob("*/*/images/*.tif"))
    mpp = float(path.parent.parent.name.removesuffix("mpp").replace("_", "."))
    return path, mpp


def _peak_rss(who: str = "self") -> int:
    """Peak resident set size in bytes of this process (``"self"``) or of its largest finished child (``"children"``)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF if who == "self" else resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def child_spora(src: Path, dest: Path, workers: int) -> dict[str, Any]:
    """spora-zarr with its defaults (``--workers`` only when asked), in a process set up as the CLI sets it up."""
    from spora_zarr import ConvertOptions, convert_cohort
    from spora_zarr.runtime import configure_writer_process

    configure_writer_process()  # what `spora-zarr convert` does first: the bounded allocator
    import dask.array  # noqa: F401 - loaded by the writer on first use; imports are not timed (module docstring)
    import ngff_zarr  # noqa: F401

    start = time.perf_counter()
    report = convert_cohort(src, dest, ConvertOptions(progress=False, workers=workers))
    seconds = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(report.summary())
    return {"seconds": seconds}


def child_ngff(src: Path, dest: Path, method_name: str | None, n_levels: int, crop: int | None, compressed: bool) -> dict[str, Any]:
    """ngff-zarr: lazy dask source, ``to_multiscales`` with spora's levels and chunks, ``to_ngff_zarr`` with its shards and codec.

    ``compressed`` is spora's choice for this image (it stores images that blosc barely shrinks uncompressed).
    """
    import dask
    import dask.array as da
    import ngff_zarr
    import tifffile
    import zarr
    from ngff_zarr.methods import Methods

    from spora_zarr.write.options import WriteOptions

    path, mpp = _source_file(src)
    start = time.perf_counter()
    view = zarr.open(tifffile.imread(path, aszarr=True, is_shaped=False), mode="r")
    array = da.from_zarr(view)
    if array.ndim == 3 and array.shape[-1] == 3:  # RGB (H, W, 3) -> (3, H, W), as spora stores it
        array = array.transpose(2, 0, 1)
    if crop:
        array = array[:, :crop, :crop]
    image = ngff_zarr.to_ngff_image(array, dims=("c", "y", "x"), scale={"y": mpp, "x": mpp}, name="image")
    multiscales = ngff_zarr.to_multiscales(
        image,
        scale_factors=[2**i for i in range(1, n_levels)],
        method=Methods[method_name] if method_name else None,  # None: ngff-zarr's default
        chunks={"c": array.shape[0], "y": 112, "x": 112},
    )
    codecs = [WriteOptions().compressor()] if compressed else []  # spora's codec, or none as spora chose ([]: none)
    with dask.config.set(scheduler="threads"):
        ngff_zarr.to_ngff_zarr(str(dest), multiscales, version="0.5", chunks_per_shard=8, compressors=codecs)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "source_bytes": int(array.nbytes)}


def child_main(argv: list[str]) -> None:
    route, src, dest = argv[0], Path(argv[1]), Path(argv[2])
    extra = json.loads(argv[3]) if len(argv) > 3 else {}
    if route == "spora":
        result = child_spora(src, dest, extra.get("workers", 1))
    else:
        method = {"ngff_bin_shrink": "DASK_BIN_SHRINK", "ngff_default": None}[route]
        result = child_ngff(src, dest, method, extra["levels"], extra.get("crop"), extra["compressed"])
    result["peak_rss"] = max(_peak_rss("self"), _peak_rss("children"))
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# The parent: run the routes, check the layouts, report
# ---------------------------------------------------------------------------


def _arrays(store: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(path, metadata)`` of every zarr v3 array below ``store``, finest level first."""
    found = []
    for doc in store.rglob("zarr.json"):
        meta = json.loads(doc.read_text())
        if meta.get("node_type") == "array":
            found.append((str(doc.parent.relative_to(store)), meta))
    return sorted(found, key=lambda item: -_prod(item[1]["shape"]))


def _prod(values: Any) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def layout_of(store: Path) -> list[dict[str, Any]]:
    """What must agree between the routes, per level: shape, dtype, shard and chunk shapes, codecs, fill value."""
    keys = ("shape", "data_type", "chunk_grid", "codecs", "fill_value", "dimension_names")
    return [json.loads(json.dumps({k: meta.get(k) for k in keys}, sort_keys=True)) for _, meta in _arrays(store)]


def describe_layout(layout: list[dict[str, Any]]) -> str:
    """One line per store: level shapes, chunk in shard, codec."""
    if not layout:
        return "(no arrays)"
    first = layout[0]
    shard = first["chunk_grid"]["configuration"]["chunk_shape"]
    codecs = first["codecs"]
    inner = codecs[0]["configuration"] if codecs[0]["name"] == "sharding_indexed" else None
    chunk = inner["chunk_shape"] if inner else shard
    chain = (inner["codecs"] if inner else codecs)[1:]
    codec = ", ".join(
        c["name"]
        + (
            ""
            if c["name"] != "blosc"
            else f" {c['configuration']['cname']} {c['configuration']['shuffle']} clevel {c['configuration']['clevel']}"
        )
        for c in chain
    )
    shapes = " > ".join("x".join(map(str, lv["shape"])) for lv in layout)
    return f"levels {shapes}; chunk {tuple(chunk)} in shard {tuple(shard)}; {codec}; {first['data_type']}"


def stored_and_raw(store: Path) -> tuple[int, int]:
    """Bytes on disk below ``store`` and the raw (uncompressed) bytes of its arrays."""
    stored = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    itemsize = {
        "uint8": 1,
        "int8": 1,
        "uint16": 2,
        "int16": 2,
        "uint32": 4,
        "int32": 4,
        "float32": 4,
        "uint64": 8,
        "int64": 8,
        "float64": 8,
    }
    raw = sum(_prod(meta["shape"]) * itemsize[meta["data_type"]] for _, meta in _arrays(store))
    return stored, raw


def run_child(route: str, src: Path, dest: Path, extra: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one route in a fresh process; its result (seconds, peak RSS, ...) plus the stored layout and sizes."""
    shutil.rmtree(dest, ignore_errors=True)
    command = [sys.executable, str(Path(__file__).resolve()), "child", route, str(src), str(dest), json.dumps(extra)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{route} on {src.name} failed (exit {proc.returncode}): " + " | ".join(tail))
    result = json.loads(lines[-1][len("RESULT ") :])
    result["layout"] = layout_of(dest)
    result["stored"], result["raw"] = stored_and_raw(dest)
    shutil.rmtree(dest, ignore_errors=True)
    return result


def _warm(paths: list[Path]) -> None:
    """Read the sources once so every route starts from the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(64 * MiB):
                pass


def machine() -> str:
    def first(path: str, prefix: str) -> str | None:
        try:
            with open(path) as f:
                return next((line.split(":", 1)[1].strip() for line in f if line.startswith(prefix)), None)
        except OSError:
            return None

    cpu = first("/proc/cpuinfo", "model name") or "unknown CPU"
    mem_kib = first("/proc/meminfo", "MemTotal")
    mem = int(mem_kib.split()[0]) / 2**20 if mem_kib else float("nan")
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ("spora_zarr", "ngff-zarr", "zarr", "zarrs", "tifffile", "imagecodecs", "dask", "numpy", "itkwasm-downsample")
    out = []
    for name in names:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


ROUTE_LABELS = {
    "spora": "spora-zarr (defaults)",
    "ngff_bin_shrink": "ngff-zarr, DASK_BIN_SHRINK, lazy source (fastest)",
    "ngff_default": "ngff-zarr, default method (ITKWASM_GAUSSIAN), lazy source",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path("/tmp/spora_bench"), help="source cache and scratch outputs (default %(default)s)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="passes of the fast routes; the best is reported (default %(default)s)")
    parser.add_argument("--default-repeat", type=int, default=1, help="passes of ngff-zarr's slow default method (default %(default)s)")
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated subset of " + ",".join(ROUTES))
    parser.add_argument(
        "--sources", default="multiplex,he", help="comma-separated subset of multiplex,multiplex_zlib,he (default %(default)s)"
    )
    parser.add_argument("--default-crop", type=int, default=0, help="run the default method on a [:, :N, :N] crop (0: the whole slide)")
    parser.add_argument("--no-workers", action="store_true", help="skip --workers 2 against serial on two tissues")
    parser.add_argument("--no-docs", action="store_true", help=f"do not write {DOCS.relative_to(REPO)}")
    parser.add_argument("--generate-only", action="store_true", help="make the sources and stop")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one route (default %(default)s)")
    args = parser.parse_args(argv)

    routes = [r for r in args.routes.split(",") if r]
    sources = [s for s in args.sources.split(",") if s]
    if set(routes) - set(ROUTES) or set(sources) - set(SOURCES):
        parser.error(f"unknown routes or sources: {sorted(set(routes) - set(ROUTES))} {sorted(set(sources) - set(SOURCES))}")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cohorts = prepare_sources(workdir, sources, two_tissues=not args.no_workers)
    if args.generate_only:
        return 0
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    print(machine())
    print(versions())

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for source in sources:
        cohort = cohorts[source]
        path, _ = _source_file(cohort)
        _warm([path])
        per_route: dict[str, dict[str, Any]] = {}
        levels, compressed = None, True
        order = ["spora"] + [r for r in routes if r != "spora"]  # spora first: the others copy its levels and codec
        passes = max(args.repeat, args.default_repeat)
        for attempt in range(passes):
            for route in order:
                if route != "spora" and route not in routes and levels is not None:
                    continue
                wanted = args.default_repeat if route == "ngff_default" else args.repeat
                if attempt >= wanted:
                    continue
                extra: dict[str, Any] = {}
                if route != "spora":
                    extra["levels"], extra["compressed"] = levels, compressed
                    if route == "ngff_default" and args.default_crop:
                        extra["crop"] = args.default_crop
                result = run_child(route, cohort, out / f"{source}_{route}.zarr", extra, args.timeout)
                if route == "spora":
                    levels = len(result["layout"])
                    compressed = "blosc" in json.dumps(result["layout"][0]["codecs"])
                seconds = result["seconds"]
                source_bytes = result.get("source_bytes") or path_raw_bytes(path)
                print(
                    f"  {source:9s} {route:16s} pass {attempt + 1}: {seconds:7.2f} s  {source_bytes / seconds / 1e6:7.1f} MB/s  "
                    f"peak RSS {result['peak_rss'] / MiB:6.0f} MiB",
                    flush=True,
                )
                best = per_route.get(route)
                result["source_bytes"], result["passes"] = source_bytes, (best or {}).get("passes", 0) + 1
                result["peak_rss"] = max(result["peak_rss"], (best or {}).get("peak_rss", 0))
                if best is None or seconds < best["seconds"]:
                    per_route[route] = result
                else:
                    best["passes"], best["peak_rss"] = result["passes"], result["peak_rss"]
        reference = per_route["spora"]["layout"]
        for route, result in per_route.items():
            same = result["layout"] == reference
            result["same_layout"] = same
            print(
                f"  layout {source} {route}: {describe_layout(result['layout'])}"
                + ("" if route == "spora" else f"  -> {'equal to spora' if same else 'DIFFERENT from spora'}")
            )
            if not same and route != "spora":
                for mine, theirs in zip(reference, result["layout"]):
                    if mine != theirs:
                        print(f"    spora: {json.dumps(mine)}\n    {route}: {json.dumps(theirs)}")
                        break
        if "spora" not in routes:
            per_route.pop("spora")
        results[source] = per_route

    workers = None
    if not args.no_workers:
        cohort = cohorts["multiplex2"]
        _warm(sorted(cohort.glob("*/*/images/*.tif")))
        timings: dict[int, dict[str, Any]] = {}
        for attempt in range(args.repeat):
            for n in (1, 2):
                result = run_child("spora", cohort, out / f"multiplex2_w{n}.zarr", {"workers": n}, args.timeout)
                print(
                    f"  multiplex2 spora --workers {n} pass {attempt + 1}: {result['seconds']:7.2f} s  "
                    f"peak RSS {result['peak_rss'] / MiB:6.0f} MiB",
                    flush=True,
                )
                if n not in timings or result["seconds"] < timings[n]["seconds"]:
                    timings[n] = result
        raw = sum(path_raw_bytes(p) for p in cohort.glob("*/*/images/*.tif"))
        workers = {"serial": timings[1], "parallel": timings[2], "source_bytes": raw}

    report = render(results, workers, args)
    print()
    print(report)
    if not args.no_docs:
        write_section(report)
        print(f"\nwrote the '## Conversion' section of {DOCS}")
    return 0


def path_raw_bytes(path: Path) -> int:
    """Raw bytes of the pixels of a TIFF (all series at level 0)."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        series = tiff.series
        if len(series) > 1 and all(s.axes == "YX" for s in series):
            return sum(s.nbytes for s in series)
        return series[0].nbytes


def _ratio_line(what: str, ratio: float, target: float) -> str:
    return f"| {what} | {ratio:.1f}x | >= {target:g}x | {'PASS' if ratio >= target else 'FAIL'} |"


def render(results: dict[str, dict[str, dict[str, Any]]], workers: dict[str, Any] | None, args: argparse.Namespace) -> str:
    """The ``## Conversion`` section (markdown)."""
    today = _dt.date.today().isoformat()
    multiplex_desc = (
        f"16 x 5120 x 6144 uint16 ({_prod(MULTIPLEX_SHAPE) * 2 / 1e9:.2f} GB), tiled (256 x 256) BigTIFF written one page per channel,"
        " uncompressed (as IMC, MIBI and CODEX exporters commonly write them), made by"
        " `spora_zarr.testing.cohorts.write_large_multiplex_tiff` (smooth pattern + 4 % noise: barely compressible by lz4)"
    )
    he_desc = (
        f"{HE_EDGE} x {HE_EDGE} RGB uint8 H&E ({HE_EDGE * HE_EDGE * 3 / 1e6:.0f} MB), tiled (256 x 256) JPEG q85 TIFF,"
        " synthetic stain texture (tissue, stroma, nuclei)"
    )
    lines = [
        "## Conversion",
        "",
        f"`python scripts/bench_convert.py` ({today}; {machine()}; a shared, noisy machine).",
        f"Versions: {versions()}.",
        "",
        "Each route converts one source of a one-tissue cohort in its own process, timed inside that",
        "process (imports excluded, writes to the page cache, sources already in the page cache);",
        f"seconds are the best of {args.repeat} passes ({args.default_repeat} for ngff-zarr's default method), peak RSS the",
        "largest `ru_maxrss` seen. MB/s = raw source pixels / seconds. stored/raw = bytes on disk /",
        "uncompressed bytes of all stored levels. Both ngff-zarr routes read a lazy dask array over",
        "tifffile's zarr view (`imread(aszarr=True, is_shaped=False)`), call `to_multiscales` with",
        "spora's number of levels and (C, 112, 112) chunks, and `to_ngff_zarr(version='0.5',",
        "chunks_per_shard=8, compressors=...)` with spora's codec for that image (blosc lz4 shuffle clevel 5, or",
        "none where spora found that blosc saves under 10 % and stored the image uncompressed); the script",
        "checks that their level shapes, chunk and shard shapes and codecs equal spora's.",
        "",
        *([f"- multiplex: {multiplex_desc}."] if "multiplex" in results else []),
        *(
            ["- multiplex_zlib: the same slide with zlib-compressed tiles (decoding costs CPU on both sides)."]
            if "multiplex_zlib" in results
            else []
        ),
        *([f"- he: {he_desc}."] if "he" in results else []),
        "",
        "| source | route | seconds | MB/s | peak RSS (MiB) | stored/raw | layout = spora's |",
        "|---|---|---|---|---|---|---|",
    ]
    for source, per_route in results.items():
        for route, r in per_route.items():
            crop = " (crop)" if route == "ngff_default" and args.default_crop else ""
            lines.append(
                f"| {source} | {ROUTE_LABELS[route]}{crop} | {r['seconds']:.2f} | {r['source_bytes'] / r['seconds'] / 1e6:.0f} | "
                f"{r['peak_rss'] / MiB:.0f} | {r['stored'] / r['raw']:.2f} | {'yes' if r['same_layout'] else 'NO'} |"
            )
    lines += ["", "| ratio (spora-zarr speed / other) | measured | target | |", "|---|---|---|---|"]
    for source, per_route in results.items():
        spora = per_route.get("spora")
        if spora is None:
            continue
        speed = spora["source_bytes"] / spora["seconds"]
        for route, target in (("ngff_bin_shrink", TARGET_BIN_SHRINK), ("ngff_default", TARGET_DEFAULT)):
            if route in per_route:
                other = per_route[route]
                lines.append(_ratio_line(f"{source}: vs {ROUTE_LABELS[route]}", speed / (other["source_bytes"] / other["seconds"]), target))
    for source in ("multiplex", "multiplex_zlib"):
        if source in results and "spora" in results[source]:
            rss = results[source]["spora"]["peak_rss"] / MiB
            lines.append(
                f"| {source}: spora-zarr peak RSS | {rss:.0f} MiB | <= {TARGET_RSS_MIB} MiB | "
                f"{'PASS' if rss <= TARGET_RSS_MIB else 'FAIL'} |"
            )
    if workers:
        serial, parallel = workers["serial"], workers["parallel"]
        lines += [
            "",
            f"Two such multiplex tissues in one cohort ({workers['source_bytes'] / 1e9:.2f} GB; best of {args.repeat}): serial",
            f"{serial['seconds']:.2f} s ({workers['source_bytes'] / serial['seconds'] / 1e6:.0f} MB/s), `--workers 2` (two processes)",
            f"{parallel['seconds']:.2f} s ({workers['source_bytes'] / parallel['seconds'] / 1e6:.0f} MB/s): "
            f"{serial['seconds'] / parallel['seconds']:.2f}x. "
            + (
                "One conversion already keeps both cores busy (a decoding pool, two write threads and"
                " zarrs' codec threads), so on this machine two processes cannot beat it; `--workers`"
                " pays off with more cores than one conversion uses."
                if serial["seconds"] / parallel["seconds"] < 1.4
                else "Tissues are independent, so processes scale with cores."
            ),
        ]
    lines += [
        "",
        "Layout chosen (the spora-zarr defaults, `WriteOptions`): chunks (C, 112, 112) in shards (C, 896, 896),",
        "blosc lz4 with byte shuffle at clevel 5, pyramid by 2x2 bin-shrink (ngff-zarr's DASK_BIN_SHRINK,",
        "sample for sample) down to <= 2048 px, memory budget 512 MiB. All channels of a 224 px training",
        "window come from a few small chunks that lz4 decodes fastest, while whole shards keep the file",
        "count low and let the converter write every shard once, whole, in one streaming pass.",
        "",
        "Where spora-zarr's time goes (uncompressed multiplex): about 1 s of CPU in user space (tiles read",
        "with `os.pread` straight into the block, 2x2 means computed in cache-sized bands, lz4) and 1.5-3 s",
        "in the kernel (copying ~1.3 GB of shards into the page cache, faulting in fresh buffers), spread",
        "over both cores by two write threads; the kernel share is also where the run-to-run noise comes",
        "from. zlib tiles add ~2 s of CPU for decoding (a thread pool; a tile straddling two blocks is",
        "decoded once and kept for the neighbouring block).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2:])
    else:
        raise SystemExit(main())
