#!/usr/bin/env python
"""Tile-read benchmark: the fast tile path against tensorstore, dask/xarray and numpy, in one run.

On a one-tissue cohort converted with the converter's defaults from a
16 x 4096 x 4096 uint16 multiplex slide (``imc`` at 1.0 mpp) and an
8192 x 8192 RGB H&E (``he`` at 0.5 mpp), with 224 px tile tables on the grid of
each resolution, it times 224 x 224 windows, all channels:

(a) ``dataset.read_tile`` at random positions (``preprocess=False``; also ``True``);
(b) ``dataset.get_crop`` over the tile table (the 224 grid);
(c) tensorstore reading the same windows from the same level arrays, no project code;
(d) slicing the dask-backed xarray of ``cohort.open_image`` per window (fewer windows: it is slow);
(e) the same windows copied out of the whole level held in memory as numpy (the ceiling);
(f) a ``spora_zarr.torch.TileDataset`` DataLoader over the multiplex tile table, batch 32,
    ``num_workers`` 0, 1 and 2 (fork), each in a fresh process;

plus whole-tissue read MB/s and stored / raw size, and (a)/(c) on a second store
converted with ``WriteOptions(chunk=256, shard=None)`` (no shards) for comparison.
Each method reads all windows in turn (cold, as a training pass does; see
:func:`one_by_one`); each figure is the best of ``--passes`` passes (the machine
is noisy), the order of the methods reversed every other pass; ratios are taken
within the run. The script prints a table and the ratios with PASS/FAIL
against the targets and writes the ``## Tile reads`` section of
``docs/benchmarks.md`` (other sections are kept).

Usage::

    python scripts/bench_tiles.py                       # sources and stores cached in /tmp/spora_tiles
    python scripts/bench_tiles.py --passes 5 --no-docs
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _benchmarks_doc import DOCS, write_section

REPO = Path(__file__).resolve().parent.parent
SECTION = "## Tile reads"

TISSUE = "S1"
MX_SHAPE = (16, 4096, 4096)  # imc at 1.0 mpp, uint16
HE_EDGE = 8192  # he at 0.5 mpp, RGB uint8
WINDOW = 224
BATCH = 32
TARGETS = {  # name: (numerator, denominator, minimum)
    "(a) / (e)": ("a", "e", 0.25),
    "(a) / (c)": ("a", "c", 0.9),
    "(b) / (e grid)": ("b", "e_grid", 0.35),
    "(f) 2 workers / 1 worker": ("f2", "f1", 1.6),
}


# ---------------------------------------------------------------------------------- sources


def _write_table(path: Path, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def multiplex_channel(channel: int, centres: np.ndarray, tissue: np.ndarray, seed: int = 0) -> np.ndarray:
    """One (H, W) uint16 plane of an IMC-like slide: ion counts, mostly zeros.

    Each marker is expressed by a fraction of the cells (all of them for the
    DNA channel 0), with log-normal per-cell intensity spread over a ~5 px
    blob; the observed value is a Poisson draw of that expectation plus a weak
    background inside the tissue, so most pixels are 0 or small counts, as in
    real IMC data.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng([seed, channel])
    h, w = tissue.shape
    fraction = 1.0 if channel == 0 else float(rng.uniform(0.05, 0.45))
    level = 40.0 if channel == 0 else float(rng.uniform(3.0, 30.0))
    keep = centres[rng.random(len(centres)) < fraction]
    impulses = np.zeros((h, w), np.float32)
    impulses[keep[:, 0], keep[:, 1]] = rng.lognormal(np.log(level), 0.6, len(keep)).astype(np.float32)
    sigma = 2.0
    expected = ndi.gaussian_filter(impulses, sigma) * np.float32(2 * np.pi * sigma**2 / 3.0)
    expected += tissue * np.float32(rng.uniform(0.02, 0.2))
    return np.minimum(rng.poisson(expected), 65535).astype(np.uint16)


def _tissue_field(shape: tuple[int, int], scale: int, seed: int) -> np.ndarray:
    """A blobby 0/1 tissue area (about 60 % of the slide) from upsampled noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    small = ndi.gaussian_filter(rng.random((shape[0] // scale + 1, shape[1] // scale + 1)), 1.5)
    field = ndi.zoom(small, scale, order=1)[: shape[0], : shape[1]]
    return (field > np.quantile(field[::16, ::16], 0.4)).astype(np.float32)


def write_multiplex(path: Path, seed: int = 0) -> None:
    """The (16, 4096, 4096) uint16 slide as a tiled TIFF, one page per channel (256 px tiles)."""
    import tifffile

    c, h, w = MX_SHAPE
    tissue = _tissue_field((h, w), 256, seed)
    rng = np.random.default_rng(seed)
    # about one cell per 12 x 12 px, inside the tissue
    candidates = np.stack([rng.integers(0, h, h * w // 100), rng.integers(0, w, h * w // 100)], axis=1)
    centres = candidates[tissue[candidates[:, 0], candidates[:, 1]] > 0]
    tmp = path.with_suffix(".partial")
    with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
        for ch in range(c):
            tw.write(multiplex_channel(ch, centres, tissue, seed), tile=(256, 256), photometric="minisblack")
    tmp.rename(path)


def write_he(path: Path, seed: int = 0) -> None:
    """An 8192² RGB H&E-like slide: eosin-stained tissue on glass, hematoxylin nuclei, scanner noise."""
    import tifffile
    from scipy import ndimage as ndi

    rng = np.random.default_rng([seed, 1])
    edge = HE_EDGE
    tissue = ndi.gaussian_filter(_tissue_field((edge, edge), 512, seed + 1), 8)
    nuclei = np.zeros((edge, edge), np.float32)
    n = edge * edge // 300
    ys, xs = rng.integers(0, edge, n), rng.integers(0, edge, n)
    nuclei[ys, xs] = tissue[ys, xs] * rng.uniform(0.6, 1.4, n).astype(np.float32)
    nuclei = np.minimum(ndi.gaussian_filter(nuclei, 3.0) * 40.0, 1.2)
    out = np.empty((edge, edge, 3), np.uint8)
    od_h = np.array([0.65, 0.70, 0.29], np.float32)
    od_e = np.array([0.07, 0.99, 0.11], np.float32)
    glass = np.array([242, 240, 245], np.float32)
    for y0 in range(0, edge, 1024):  # strips keep the float temporaries small
        t, nu = tissue[y0 : y0 + 1024], nuclei[y0 : y0 + 1024]
        eosin = t * (0.35 + 0.1 * rng.standard_normal(t.shape, dtype=np.float32))
        hema = 0.1 * t + nu
        od = hema[..., None] * od_h + eosin[..., None] * od_e
        rgb = glass * np.exp(-np.maximum(od, 0)) + rng.normal(0, 2.0, (*t.shape, 3)).astype(np.float32)
        out[y0 : y0 + 1024] = np.clip(rgb, 0, 255).astype(np.uint8)
    tmp = path.with_suffix(".partial")
    tifffile.imwrite(tmp, out, tile=(256, 256), photometric="rgb")
    tmp.rename(path)


def grid(height: int, width: int, size: int = WINDOW) -> tuple[list[int], list[int]]:
    """Top-left corners of the ``size`` grid over an image (edge windows included, as get_grid_tile keeps them)."""
    rows, cols = np.meshgrid(np.arange(0, height, size), np.arange(0, width, size), indexing="ij")
    return rows.ravel().tolist(), cols.ravel().tolist()


def prepare_source(workdir: Path) -> Path:
    """The TIFF cohort (generated once): images, tables and 224 px grid tile tables."""
    src = workdir / "source"
    mx = src / "imc" / "1_0mpp" / "images" / f"{TISSUE}.tif"
    he = src / "he" / "0_5mpp" / "images" / f"{TISSUE}.tif"
    if not mx.exists():
        print(f"generating {mx} ...", flush=True)
        mx.parent.mkdir(parents=True, exist_ok=True)
        write_multiplex(mx)
    if not he.exists():
        print(f"generating {he} ...", flush=True)
        he.parent.mkdir(parents=True, exist_ok=True)
        write_he(he)
    names = [
        "DNA1",
        "CD3",
        "CD20",
        "PanCK",
        "Vimentin",
        "Ki67",
        "CD45",
        "CD68",
        "SMA",
        "Collagen1",
        "CD8",
        "CD4",
        "FoxP3",
        "CD31",
        "HLA-DR",
        "Histone H3",
    ]
    _write_table(src / "metadata" / "tissues.parquet", {"tissue_id": [TISSUE]})
    _write_table(
        src / "imc" / "channels.parquet", {"channel_name": names, "qc_pass": [True] * 16, "uniprot_id": [f"P{i:05d}" for i in range(16)]}
    )
    _write_table(src / "imc" / "channels_per_tissue.parquet", {"tissue_id": [TISSUE] * 16, "channel_name": names})
    for res, edge in (("1_0mpp", MX_SHAPE[1]), ("0_5mpp", HE_EDGE)):
        rows, cols = grid(edge, edge)
        _write_table(
            src / "tiling" / res / "default" / f"{WINDOW}_tile_coordinates.parquet",
            {"tissue_id": [TISSUE] * len(rows), "tile_id": list(range(len(rows))), "row": rows, "col": cols},
        )
    return src


def convert(src: Path, dest: Path, chunk: int, shard: int | None) -> Path:
    """Convert ``src`` into ``dest`` (once) with the given layout; defaults when (112, 896)."""
    from spora_zarr import ConvertOptions, WriteOptions, convert_cohort

    stamp = dest / ".bench_complete"
    if stamp.exists():
        return dest
    print(f"converting into {dest} (chunk {chunk}, shard {shard}) ...", flush=True)
    write = WriteOptions() if (chunk, shard) == (112, 896) else WriteOptions(chunk=chunk, shard=shard)
    start = time.perf_counter()
    report = convert_cohort(src, dest, ConvertOptions(progress=False, write=write, overwrite=True))
    if not report.ok:
        raise SystemExit(report.summary())
    print(f"  {time.perf_counter() - start:.1f} s", flush=True)
    stamp.touch()
    return dest


# ---------------------------------------------------------------------------------- timing


def rate(fn: Callable[[int, int], Any], windows: Sequence[tuple[int, int]]) -> float:
    """Windows per second of ``fn(y, x)`` over ``windows``."""
    start = time.perf_counter()
    for y, x in windows:
        fn(y, x)
    return len(windows) / (time.perf_counter() - start)


def one_by_one(methods: dict[str, Callable[[int, int], Any]], windows: Sequence[tuple[int, int]], reverse: bool) -> dict[str, float]:
    """Windows per second of each method, each timed over all ``windows`` in turn.

    Every method reads each window as a training pass would: cold, long after
    the others read it (the windows of one pass hold more bytes than the CPU
    caches). Timing method after method window by window instead would let all
    but the first reader of each window find its chunks in cache. ``reverse``
    runs the methods in the opposite order, so that over passes each one runs
    early and late alike (the machine's load drifts).
    """
    out = {}
    for name, fn in reversed(methods.items()) if reverse else methods.items():
        out[name] = rate(fn, windows)
    return out


def ts_read(array: Any, y: int, x: int) -> np.ndarray:
    """A window read by tensorstore alone (clipped to the array: tensorstore does not clip)."""
    height, width = array.shape[-2:]
    return array[:, y : min(y + WINDOW, height), x : min(x + WINDOW, width)].read().result()


def random_windows(height: int, width: int, count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(0, height - WINDOW + 1)), int(rng.integers(0, width - WINDOW + 1))) for _ in range(count)]


class Slide:
    """One image of the bench store: its dataset, level path, windows and readers for (a)-(e)."""

    def __init__(
        self, name: str, dataset: Any, ts_dataset: Any, path: str, store: Path, windows: int, dask_windows: int, seed: int
    ) -> None:
        import tensorstore as ts

        self.name, self.dataset, self.ts_dataset, self.path = name, dataset, ts_dataset, path
        height, width = dataset.image_shape(TISSUE)[-2:]
        self.random = random_windows(height, width, windows, seed)
        self.dask_windows = self.random[:dask_windows]
        tiles = dataset.tile_coordinates
        step = max(1, len(tiles) // windows)
        self.crops = tiles.iloc[::step].head(max(windows, 300))
        self.grid = [(int(r), int(c)) for r, c in zip(self.crops.row, self.crops.col)]
        self.ts = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{store}/{path}"}}, read=True).result()
        self.xarray = dataset.cohort.open_image(dataset.modality_dir(), TISSUE, dataset.resolution)
        self.memory: np.ndarray | None = None

    def load(self) -> tuple[float, int]:
        """Read the whole level (``get_tissue``, stored values) and keep it; seconds and raw bytes."""
        start = time.perf_counter()
        tissue = self.dataset.get_tissue(TISSUE, preprocess=False)
        seconds = time.perf_counter() - start
        self.memory = tissue.image.numpy()
        return seconds, self.memory.nbytes

    def measure(self, reverse: bool = False) -> dict[str, float]:
        """One pass of (a)-(e), windows per second (see :func:`one_by_one`)."""
        import torch

        ds, ds_ts, arr, mem, xa, s = self.dataset, self.ts_dataset, self.ts, self.memory, self.xarray, WINDOW
        threads = torch.get_num_threads()

        def pre1(y: int, x: int) -> Any:
            torch.set_num_threads(1)  # as in DataLoader workers
            try:
                return ds.read_tile(TISSUE, y, x, preprocess=True)
            finally:
                torch.set_num_threads(threads)

        random = one_by_one(
            {
                "a": lambda y, x: ds.read_tile(TISSUE, y, x, preprocess=False),
                "a_ts": lambda y, x: ds_ts.read_tile(TISSUE, y, x, preprocess=False),
                "c": lambda y, x: ts_read(arr, y, x),
                "e": lambda y, x: mem[:, y : y + s, x : x + s].copy(),
            },
            self.random,
            reverse,
        )
        random |= one_by_one({"a_pre": lambda y, x: ds.read_tile(TISSUE, y, x, preprocess=True), "a_pre1": pre1}, self.random, reverse)
        crops = dict(zip(self.grid, (int(i) for i in self.crops.tile_id)))
        on_grid = one_by_one(
            {
                "b": lambda y, x: ds.get_crop(TISSUE, crops[(y, x)], preprocess=False),
                "b_read_tile": lambda y, x: ds.read_tile(TISSUE, y, x, preprocess=False),
                "c_grid": lambda y, x: ts_read(arr, y, x),
                "e_grid": lambda y, x: mem[:, y : y + s, x : x + s].copy(),
            },
            self.grid,
            reverse,
        )
        dask = {"d": rate(lambda y, x: xa.isel(y=slice(y, y + s), x=slice(x, x + s)).values, self.dask_windows)}
        # stored negated: best() keeps the largest value of each figure, here the shortest time
        hot = {f"hot_{name}": -us for name, us in self.hot_us().items()}
        return random | on_grid | dask | hot

    def hot_us(self, calls: int = 300, rounds: int = 7) -> dict[str, float]:
        """Microseconds per call of ``read_tile`` (default engine) and of tensorstore alone, on the same (hot) window."""
        ds, arr, s = self.dataset, self.ts, WINDOW
        y, x = self.random[0]
        best = {"project": float("inf"), "tensorstore": float("inf")}
        for _ in range(rounds):
            for name, fn in (
                ("project", lambda: ds.read_tile(TISSUE, y, x, preprocess=False)),
                ("tensorstore", lambda: arr[:, y : y + s, x : x + s].read().result()),
            ):
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - start) / calls)
        return {name: 1e6 * seconds for name, seconds in best.items()}

    def measure_layout(self, other: Slide, reverse: bool = False) -> dict[str, float]:
        """(a) and (c) of this slide's windows on another store's level (same image, other layout)."""
        ds, arr = other.dataset, other.ts
        random = one_by_one(
            {"a": lambda y, x: ds.read_tile(TISSUE, y, x, preprocess=False), "c": lambda y, x: ts_read(arr, y, x)},
            self.random,
            reverse,
        )
        return random | {"c_grid": rate(lambda y, x: ts_read(arr, y, x), self.grid)}


def open_slides(store: Path, windows: int, dask_windows: int) -> dict[str, Slide]:
    from spora_zarr.datasets import HEImagingDataset, MultiplexImagingDataset

    def both(cls: type, resolution: float) -> tuple[Any, Any]:
        """The dataset on the default engine and on tensorstore."""
        return tuple(cls("bench", store, resolution, WINDOW, verbose=False, engine=e) for e in (None, "tensorstore"))

    imc, he = both(MultiplexImagingDataset, 1.0), both(HEImagingDataset, 0.5)
    return {
        "multiplex 16 x 4096² uint16": Slide("multiplex", *imc, f"imc/images/{TISSUE}/1_0mpp", store, windows, dask_windows, 1),
        "H&E 3 x 8192² uint8": Slide("he", *he, f"he/images/{TISSUE}/0_5mpp", store, windows, dask_windows, 2),
    }


def store_codecs(store: Path) -> dict[str, str]:
    """The chunk codecs of each full-resolution level, as text."""
    out = {}
    for group, level in (("imc", "1_0mpp"), ("he", "0_5mpp")):
        meta = json.loads((store / group / "images" / TISSUE / level / "zarr.json").read_text())
        codecs = meta["codecs"][0]["configuration"]["codecs"] if meta["codecs"][0]["name"] == "sharding_indexed" else meta["codecs"]
        names = [
            c["name"] if c["name"] != "blosc" else f"blosc {c['configuration']['cname']} + {c['configuration']['shuffle']}" for c in codecs
        ]
        out[f"{group}/{level}"] = "uncompressed" if names == ["bytes"] else ", ".join(n for n in names if n != "bytes")
    return out


def store_sizes(store: Path, source: Path) -> dict[str, float]:
    """Stored bytes of each full-resolution level and of the whole store, against raw bytes."""
    import zarr

    def du(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    out: dict[str, float] = {}
    raw_total = 0
    for group in ("imc", "he"):
        images = store / group / "images" / TISSUE
        for level in sorted(p for p in images.iterdir() if p.is_dir()):
            array = zarr.open_array(str(level), mode="r")
            raw = int(np.prod(array.shape)) * array.dtype.itemsize
            raw_total += raw
            out[f"{group}/{level.name}"] = du(level) / raw
    out["store"] = du(store) / raw_total
    out["source_bytes"] = du(source / "imc") + du(source / "he")
    out["store_bytes"] = du(store)
    return out


# ---------------------------------------------------------------------------------- (f) DataLoader


def loader_child(store: str, workers: int, epochs: int, parent_reads: bool, raw: bool = False) -> dict[str, Any]:
    """In a fresh process: a fork DataLoader over the multiplex tile table; tiles/s per epoch."""
    import torch
    from torch.utils.data import DataLoader

    from spora_zarr.datasets import MultiplexImagingDataset
    from spora_zarr.torch import TileDataset

    class EngineTiles(TileDataset):
        """Items also name the engine that read them (fork only: nothing is pickled)."""

        def __getitem__(self, index: int) -> dict[str, Any]:
            item = super().__getitem__(index)
            item["engine"] = self.datasets[0].primary.level(TISSUE).engine
            return item

    tiles = EngineTiles(MultiplexImagingDataset("bench", store, 1.0, WINDOW, verbose=False), masks=(), preprocess=not raw)
    if parent_reads:
        tiles[0]  # the parent reads before forking
    loader = DataLoader(
        tiles,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        timeout=300 if workers else 0,
        multiprocessing_context="fork" if workers else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    per_epoch, engines = [], set()
    for _ in range(epochs):
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch["row"])
            engines.update(batch["engine"])
        per_epoch.append(count / (time.perf_counter() - start))
    return {"first": per_epoch[0], "steady": max(per_epoch[1:] or per_epoch), "tiles": len(tiles), "engine": "/".join(sorted(engines))}


def run_loader(store: Path, workers: int, epochs: int, parent_reads: bool = False, raw: bool = False) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--loader-child", str(store), str(workers), str(epochs)]
    command += ["--parent-reads"] * parent_reads + ["--raw"] * raw
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode:
        raise SystemExit(f"loader child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- report


def best(passes: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: max(p[k] for p in passes) for k in passes[0]}


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for name in ("tensorstore", "zarr", "zarrs", "dask", "xarray", "torch", "numpy"):
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return f"{len(os.sched_getaffinity(0))} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, " + ", ".join(versions)


def verdict(value: float, minimum: float) -> str:
    return "PASS" if value >= minimum else "FAIL"


def render(results: dict[str, Any]) -> str:
    """The ``## Tile reads`` section (markdown)."""
    r = results
    lines = [
        SECTION,
        "",
        (
            f"`python scripts/bench_tiles.py` on {r['date']}; {r['machine']}. Load average before / after: "
            f"{r['load'][0]} / {r['load'][1]} (a shared machine: every figure is the best of {r['passes']} passes, "
            "ratios are taken within this run). Each method times all windows in turn, so that it reads every window "
            "cold, as a training pass does, and the order of the methods is reversed every other pass. (Timing all "
            "methods window by window, as an earlier version did, let every reader but the first find the window's "
            "chunks in the CPU caches: the reader after the numpy copy paid for the others.)"
        ),
        "",
        (
            "**Data.** One tissue converted by `convert_cohort` with its defaults: a 16 x 4096 x 4096 uint16 "
            "multiplex slide (`imc`, 1.0 mpp) and an 8192 x 8192 RGB H&E (`he`, 0.5 mpp), both generated by the "
            "script. The multiplex content imitates IMC ion counts: cells (about one per 12 x 12 px inside a blobby "
            "tissue area over ~60 % of the slide) each express a marker with probability 5-45 % (DNA: all), "
            "log-normal intensity over a ~5 px blob, Poisson counts plus weak background, so "
            f"{r['zeros']:.0%} of the pixels are 0, as in real IMC data. (`testing.cohorts.write_large_multiplex_tiff` writes dense "
            "sinusoid-plus-noise content without zeros, stored/raw ~0.62 in NOTES: less like real data.) The H&E has "
            "eosin tissue, hematoxylin nuclei and scanner noise."
        ),
        "",
        "**Store layout** (converter defaults): chunks (C, 112, 112) in shards (C, 896, 896), levels named by "
        "resolution; codecs "
        + "; ".join(f"{k}: {v}" for k, v in r["codecs"].items())
        + " (the writer skips compression that saves under 10 % of 16 sampled chunks). Stored / raw: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["sizes"].items() if "/" in k)
        + f"; whole store {r['sizes']['store']:.2f} ({r['sizes']['store_bytes'] / 1e6:.0f} MB, "
        f"source TIFFs uncompressed {r['sizes']['source_bytes'] / 1e6:.0f} MB).",
        "",
        (
            f"**Windows**: 224 x 224, all channels. (a), (c), (e): {r['windows']} random positions; (b): "
            f"{r['grid_windows']} crops of the 224 tile table (the grid; edge tiles included); (d): the first "
            f"{r['dask_windows']} of the random windows (it is slow); (e grid): numpy on the grid windows of (b)."
        ),
        "",
        "| windows / s | " + " | ".join(r["slides"]) + " |",
        "|---|" + "---:|" * len(r["slides"]),
    ]
    rows = [
        ("(a) `read_tile`, preprocess=False (direct engine, the default)", "a"),
        ("(a) `read_tile`, preprocess=False, `engine='tensorstore'`", "a_ts"),
        (f"(a) `read_tile`, preprocess=True (torch's default {r['torch_threads']} threads)", "a_pre"),
        ("(a) `read_tile`, preprocess=True, `torch.set_num_threads(1)`", "a_pre1"),
        ("(b) `get_crop` over the tile table", "b"),
        ("(b') `read_tile` on the same grid windows", "b_read_tile"),
        ("(c) tensorstore alone, same windows", "c"),
        ("(c grid) tensorstore alone, grid windows of (b)", "c_grid"),
        ("(d) dask-backed xarray `.isel(...).values`", "d"),
        ("(e) numpy in memory (copy), random windows", "e"),
        ("(e grid) numpy in memory (copy), grid windows", "e_grid"),
    ]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(f"{r['slides'][s][key]:,.0f}" for s in r["slides"]) + " |")
    lines.append(
        "| whole-tissue read (`get_tissue`, preprocess=False), MB/s | " + " | ".join(f"{r['whole'][s]:,.0f}" for s in r["slides"]) + " |"
    )
    lines += ["", "| ratio | target | " + " | ".join(r["slides"]) + " |", "|---|---|" + "---|" * len(r["slides"])]
    for name, (num, den, minimum) in TARGETS.items():
        if num.startswith("f"):
            continue
        cells = []
        for s in r["slides"]:
            value = r["slides"][s][num] / r["slides"][s][den]
            cells.append(f"{value:.2f} {verdict(value, minimum)}")
        lines.append(f"| {name} | >= {minimum} | " + " | ".join(cells) + " |")
    lines.append(
        "| (a) / (d): gain over the dask path | report | "
        + " | ".join(f"{r['slides'][s]['a'] / r['slides'][s]['d']:.0f} x" for s in r["slides"])
        + " |"
    )
    lines.append(
        "| (c) / (e), (c grid) / (e grid): tensorstore's own ceiling | report | "
        + " | ".join(
            f"{r['slides'][s]['c'] / r['slides'][s]['e']:.2f}, {r['slides'][s]['c_grid'] / r['slides'][s]['e_grid']:.2f}"
            for s in r["slides"]
        )
        + " |"
    )
    lines.append(
        "| (b) / (b'): cost of the tile-table lookup in `get_crop` | report | "
        + " | ".join(f"{r['slides'][s]['b'] / r['slides'][s]['b_read_tile']:.2f}" for s in r["slides"])
        + " |"
    )
    f = r["loader"]
    ratio = f["2"]["steady"] / f["1"]["steady"]
    lines += [
        "",
        (
            f"**(f) DataLoader**: `TileDataset(MultiplexImagingDataset(..., 1.0, 224), masks=())` over the "
            f"{f['0']['tiles']}-tile table, batch {BATCH}, shuffle, preprocess=True (float32 (16, 224, 224) items), "
            "fork, each configuration in a fresh process whose parent builds the dataset and reads nothing, "
            "`persistent_workers`; tiles / s of the first epoch (worker start included) and the best later epoch, "
            f"best of {r['passes']} runs. Codec threads per worker: cores // num_workers (automatic)."
        ),
        "",
        "| num_workers | workers' engine | first epoch | steady |",
        "|---|---|---:|---:|",
    ]
    labels = (
        ("0", "0"),
        ("1", "1"),
        ("2", "2"),
        ("2r", "2, the parent read a tile first"),
        ("1u", "1, preprocess=False (uint16 items)"),
        ("2u", "2, preprocess=False (uint16 items)"),
    )
    for key, label in labels:
        if key in f:
            lines.append(f"| {label} | {f[key]['engine']} | {f[key]['first']:,.0f} | {f[key]['steady']:,.0f} |")
    lines += [
        "",
        f"(f) 2 workers / 1 worker (steady): **{ratio:.2f}** (target >= 1.6: {verdict(ratio, 1.6)})"
        + (f"; with uint16 items {f['2u']['steady'] / f['1u']['steady']:.2f}." if "2u" in f else "."),
        "",
    ]
    if "layout" in r:
        lines += [
            (
                "**Layouts** (same image, same windows, same run): the converter's default against "
                "`WriteOptions(chunk=256, shard=None)` (no shards)."
            ),
            "",
            "| slide | layout | stored/raw | (a) read_tile | (c) tensorstore | (c) tensorstore, grid windows |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for s, by_layout in r["layout"].items():
            for layout, v in by_layout.items():
                lines.append(f"| {s} | {layout} | {v['stored']:.2f} | {v['a']:,.0f} | {v['c']:,.0f} | {v['c_grid']:,.0f} |")
        lines.append("")
    lines += notes(r)
    return "\n".join(lines).rstrip() + "\n"


def notes(r: dict[str, Any]) -> list[str]:
    """What the figures of this run say (computed from them)."""
    mx, he = (r["slides"][s] for s in r["slides"])
    lookup_us = 1e6 * (1 / mx["b"] - 1 / mx["b_read_tile"])
    f = r["loader"]
    out = [
        "**Reading the results.**",
        "",
        (
            f"- (a) vs (c): `read_tile` on the default (direct) engine reads {mx['a'] / mx['c']:.2f} x as many "
            f"windows per second as tensorstore alone (multiplex) and {he['a'] / he['c']:.2f} x (H&E); on "
            f"`engine='tensorstore'` it keeps {mx['a_ts'] / mx['c']:.2f} and {he['a_ts'] / he['c']:.2f} of "
            "tensorstore alone, which is the project's own share (`read_tile`'s checks, window clipping, "
            "`torch.from_numpy`). Reading one window over and over (caches hot), `read_tile` takes "
            f"{-mx['hot_project']:.0f} us against tensorstore's {-mx['hot_tensorstore']:.0f} us (multiplex) and "
            f"{-he['hot_project']:.0f} against {-he['hot_tensorstore']:.0f} us (H&E). tensorstore, with its chunk "
            "cache off (the default, and what a pass over a large cohort gets), reads each window's shard index "
            "again and spends time around the decodes; the direct engine reads an index once per shard file and "
            "then, in its compiled loop with the GIL released, one `pread`, one c-blosc decode (none for the "
            "uncompressed H&E) and one copy per chunk, on two threads for windows that decode 256 KiB of blosc chunks "
            "or 1 MiB of uncompressed ones."
        ),
        (
            "- (a) / (e) and (b) / (e grid) on the multiplex slide are decode-bound: a random 224 px window decodes 3 x 3 chunks of "
            "112 px (2.25 x its area), a grid window exactly 2 x 2, and c-blosc (lz4 + shuffle) decodes one "
            "(16, 112, 112) uint16 chunk (401 KB) in about 100 us on one core here. The ceiling (e) is a copy "
            "(1.6 MB per multiplex window, 150 KB per H&E window) out of memory. tensorstore alone reaches "
            f"{mx['c'] / mx['e']:.2f} / {mx['c_grid'] / mx['e_grid']:.2f} of it on the multiplex slide and "
            f"{he['c'] / he['e']:.2f} / {he['c_grid'] / he['e_grid']:.2f} on the H&E."
        ),
        (
            "- (b): `get_crop` finds its crop in a `(tissue_id, tile_id) -> (row, col)` dict built once per process "
            f"(~{lookup_us:.0f} us a call), so it runs at {mx['b'] / mx['b_read_tile']:.2f} x `read_tile` on the same "
            f"windows (b'); (b') / (e grid) = {mx['b_read_tile'] / mx['e_grid']:.2f} (multiplex)."
        ),
        (
            "- preprocess=True adds a float32 conversion (multiplex, `identity` standardization) or a mean/std "
            f"normalisation (H&E): {mx['a_pre']:,.0f} and {he['a_pre']:,.0f} windows/s with torch's default threads, "
            f"{mx['a_pre1']:,.0f} and {he['a_pre1']:,.0f} with one torch thread (as in DataLoader workers)."
        ),
    ]
    if "2u" in f:
        zero, one, two = (f[k]["steady"] for k in ("0", "1", "2"))
        out.append(
            "- (f): a worker reads a tile, converts it to float32 and collates it into shared memory (3.2 MB per "
            "tile, 103 MB per batch of 32); on this machine that copy costs about as much as the read, so one "
            f"worker ({one:,.0f}/s) is {'slower than' if one < zero else 'about as fast as'} reading in the main "
            f"process ({zero:,.0f}/s) and two workers reach {two / one:.2f} x one. uint16 items (preprocess=False, "
            f"standardise on the GPU) halve the bytes: {f['1u']['steady']:,.0f} / {f['2u']['steady']:,.0f} tiles/s "
            f"with one / two workers. The workers of a parent that already read tiles read through the "
            f"{f['2r']['engine']} engine ({f['2r']['steady']:,.0f}/s with two)."
        )
    if "layout" in r:
        (mx_default, mx_alt), (he_default, he_alt) = (list(v.values()) for v in r["layout"].values())
        out.append(
            "- Layout, default / unsharded (C, 256, 256) chunks (same stored size): random windows "
            f"{mx_default['a'] / mx_alt['a']:.2f} (multiplex) and {he_default['a'] / he_alt['a']:.2f} (H&E), grid "
            f"windows {mx_default['c_grid'] / mx_alt['c_grid']:.2f} and {he_default['c_grid'] / he_alt['c_grid']:.2f}. "
            "A 224 px window decodes 1-2.25 x its area in 112 px chunks and ~4.6 x in 256 px chunks (usually "
            "2 x 2 of them); the gain is largest where decoding costs most (16 uint16 channels). Shards keep a "
            "slide at one file per 896 px square (256 px chunks alone: 12 x as many files)."
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/spora_tiles"), help="sources and stores (reused)")
    parser.add_argument("--windows", type=int, default=400, help="random windows per slide (>= 300)")
    parser.add_argument("--dask-windows", type=int, default=40, help="windows for the slow dask path (d)")
    parser.add_argument("--passes", type=int, default=3, help="passes; each figure is the best one")
    parser.add_argument("--epochs", type=int, default=4, help="DataLoader epochs per run (f)")
    parser.add_argument("--no-layouts", action="store_true", help="skip the chunk-256 unsharded store")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    src = prepare_source(args.workdir)
    store = convert(src, args.workdir / "default.zarr", 112, 896)
    alt = None if args.no_layouts else convert(src, args.workdir / "chunk256.zarr", 256, None)
    load_before = os.getloadavg()[0]
    import torch

    torch_threads = torch.get_num_threads()

    slides = open_slides(store, args.windows, args.dask_windows)
    alt_slides = open_slides(alt, args.windows, args.dask_windows) if alt else {}
    whole: dict[str, float] = {}
    for label, slide in slides.items():
        seconds = []
        for _ in range(args.passes):
            took, nbytes = slide.load()
            seconds.append(took)
        whole[label] = nbytes / min(seconds) / 1e6
    mx = slides["multiplex 16 x 4096² uint16"].memory
    zeros = float((mx == 0).mean())

    measured: dict[str, list[dict[str, float]]] = {label: [] for label in slides}
    layouts: dict[str, list[dict[str, float]]] = {label: [] for label in alt_slides}
    defaults: dict[str, list[dict[str, float]]] = {label: [] for label in alt_slides}
    for number in range(args.passes):
        print(f"pass {number + 1}/{args.passes} ...", flush=True)
        reverse = number % 2 == 1
        for label, slide in slides.items():
            measured[label].append(slide.measure(reverse))
            if label in alt_slides:
                defaults[label].append(slide.measure_layout(slide, reverse))
                layouts[label].append(slide.measure_layout(alt_slides[label], reverse))

    loader: dict[str, list[dict[str, Any]]] = {}
    for number in range(args.passes):
        print(f"DataLoader pass {number + 1}/{args.passes} ...", flush=True)
        for workers in (1, 2, 0):
            loader.setdefault(str(workers), []).append(run_loader(store, workers, args.epochs))
        loader.setdefault("2r", []).append(run_loader(store, 2, args.epochs, parent_reads=True))
        for workers in (1, 2):
            loader.setdefault(f"{workers}u", []).append(run_loader(store, workers, args.epochs, raw=True))
    load_after = os.getloadavg()[0]

    sizes = store_sizes(store, src)
    results: dict[str, Any] = {
        "date": _dt.date.today().isoformat(),
        "machine": machine(),
        "load": (f"{load_before:.2f}", f"{load_after:.2f}"),
        "passes": args.passes,
        "windows": args.windows,
        "dask_windows": args.dask_windows,
        "grid_windows": len(next(iter(slides.values())).grid),
        "zeros": zeros,
        "torch_threads": torch_threads,
        "sizes": sizes,
        "codecs": store_codecs(store),
        "whole": whole,
        "slides": {label: best(runs) for label, runs in measured.items()},
        "loader": {k: {**v[0], "first": max(x["first"] for x in v), "steady": max(x["steady"] for x in v)} for k, v in loader.items()},
    }
    if alt:
        alt_sizes = store_sizes(alt, src)
        level = {"multiplex 16 x 4096² uint16": "imc/1_0mpp", "H&E 3 x 8192² uint8": "he/0_5mpp"}
        results["layout"] = {
            label: {
                "(C,112,112) chunks in (C,896,896) shards (default)": {**best(defaults[label]), "stored": sizes[level[label]]},
                "(C,256,256) chunks, no shards": {**best(layouts[label]), "stored": alt_sizes[level[label]]},
            }
            for label in alt_slides
        }
    section = render(results)
    print()
    print(section)
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if not args.no_docs:
        write_section(section)
        print(f"wrote the '{SECTION}' section of {DOCS}")
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--loader-child":
    store_, workers_, epochs_ = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(loader_child(store_, workers_, epochs_, "--parent-reads" in sys.argv, "--raw" in sys.argv)))
    raise SystemExit(0)


if __name__ == "__main__":
    raise SystemExit(main())
