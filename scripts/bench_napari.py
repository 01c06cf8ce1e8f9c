"""napari benchmark: how long the spora reader takes to hand a tissue to napari, against stock napari-ome-zarr.

A store written by spora_zarr's writer holds one tissue: a 24-channel 20k x 20k uint16 multiplex
image at 1.0 um/px, an RGB H&E at 0.5 um/px (40k x 40k), tissue and cell masks and a 10,000-tile
table. The pixels are a cheap pattern (the reader must not read them; the writer still writes every
chunk of every level). Measured side by side in one run, each in a fresh process so that nothing
is cached in Python:

- the spora reader returning every layer of the tissue (``napari_get_reader(store)(store)``);
- a headless ``ViewerModel`` with those layers added;
- stock ``napari-ome-zarr`` opening the multiplex image group alone.

Bytes read are the process's ``rchar`` (bytes returned by read syscalls) around the call.
Figures go to ``docs/benchmarks.md`` (section "napari").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _benchmarks_doc import write_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MEASURE = r"""
import json, sys, time
def rchar():
    for line in open("/proc/self/io"):
        if line.startswith("rchar"):
            return int(line.split()[1])
import napari  # imported before timing, as napari loads its plugins at start
from napari.components import ViewerModel
mode, path = sys.argv[1], sys.argv[2]
if mode.startswith("spora"):
    from spora_zarr.napari import add_layers, napari_get_reader
    if not mode.endswith("_cold"):  # the modules a first read loads, as in a napari session that has read a store
        import spora_zarr.read.cohort, spora_zarr.napari.reader, pyarrow.parquet
        import ome_zarr_models.v05.image, ome_zarr_models.v05.image_label, pandas  # pyarrow's to_numpy loads pandas
else:
    from napari_ome_zarr import napari_get_reader
before, start, cpu = rchar(), time.perf_counter(), time.process_time()
if mode.startswith("spora_viewer"):
    viewer = ViewerModel()
    layers = add_layers(viewer, napari_get_reader(path)(path))
elif mode == "napari_ome_zarr_viewer":
    viewer = ViewerModel()
    added = [viewer._add_layer_from_data(*data) for data in napari_get_reader(path)(path)]
    layers = [layer for result in added for layer in (result if isinstance(result, list) else [result])]
else:
    layers = napari_get_reader(path)(path)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu, "bytes": rchar() - before, "layers": len(layers)}))
"""


class PatternSource:
    """A ``(C, H, W)`` source of a cheap deterministic pattern (an ImageSource for the one writer)."""

    def __init__(self, shape: tuple[int, int, int], dtype: str, name: str, rgb: bool = False) -> None:
        from spora_zarr.sources import SourceInfo

        self.shape, self.dtype, self.name = shape, np.dtype(dtype), name
        self.info = SourceInfo(is_rgb=rgb)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        yy = np.arange(y0, y1, dtype=np.uint32)[:, None] // 64
        xx = np.arange(x0, x1, dtype=np.uint32)[None, :] // 64
        plane = ((yy * 7 + xx * 13) % 200).astype(self.dtype)
        return np.broadcast_to(plane, (self.shape[0], y1 - y0, x1 - x0)).copy()

    def close(self) -> None:
        return None


def build(store: Path, size: int, channels: int, tiles: int) -> float:
    import pyarrow as pa

    from spora_zarr.runtime import configure_writer_process
    from spora_zarr.sources import ImageSource
    from spora_zarr.store.location import Location
    from spora_zarr.store.metadata import update_cohort_attributes
    from spora_zarr.store.staging import Staging
    from spora_zarr.store.tables import write_table
    from spora_zarr.write import write_image, write_labels

    configure_writer_process()
    start = time.perf_counter()
    location = Location.parse(store)
    update_cohort_attributes(location, modalities={"imc": ["1_0mpp"], "he": ["0_5mpp"]}, mask_kinds=["tissue_masks", "cell_masks"])
    staging = Staging(location)
    for group in ("imc/images", "he/images", "segmentations/tissue_masks", "segmentations/cell_masks"):
        staging.ensure_groups(group)
    names = [f"M{i:02d}" for i in range(channels)]
    imc: ImageSource = PatternSource((channels, size, size), "uint16", "imc")  # type: ignore[assignment]
    write_image(location, "imc/images/T", {1.0: imc}, channel_names=names, spora={"tissue_id": "T", "modality": "imc"})
    he: ImageSource = PatternSource((3, 2 * size, 2 * size), "uint8", "he", rgb=True)  # type: ignore[assignment]
    write_image(
        location, "he/images/T", {0.5: he}, channel_names=["red", "green", "blue"], rgb=True, spora={"tissue_id": "T", "modality": "he"}
    )
    for kind, dtype in (("tissue_masks", "uint8"), ("cell_masks", "uint32")):
        mask: ImageSource = PatternSource((1, size, size), dtype, kind)  # type: ignore[assignment]
        write_labels(location, f"segmentations/{kind}/T", {1.0: mask}, spora={"tissue_id": "T", "mask_kind": kind})
    side = int(np.ceil(np.sqrt(tiles)))
    rows, cols = np.divmod(np.arange(tiles), side)
    step = size // side
    write_table(
        location,
        "tiling/1_0mpp/default/224_tile_coordinates.parquet",
        pa.table({"tissue_id": ["T"] * tiles, "tile_id": np.arange(tiles), "row": rows * step, "col": cols * step}),
    )
    return time.perf_counter() - start


def measure(mode: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, mode, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/spora_bench_napari", help="where the store is written (reused)")
    parser.add_argument("--size", type=int, default=20_000, help="multiplex edge in pixels (H&E is twice that)")
    parser.add_argument("--channels", type=int, default=24)
    parser.add_argument("--tiles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each route; the best is reported")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    store = Path(args.workdir) / f"napari_{args.size}_{args.channels}.zarr"
    if not (store / "imc/images/T/zarr.json").exists():
        print(f"writing {store} ...", flush=True)
        print(f"  written in {build(store, args.size, args.channels, args.tiles):.0f} s", flush=True)
    modes = ("spora", "spora_viewer", "spora_viewer_cold", "napari_ome_zarr", "napari_ome_zarr_viewer")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    load = os.getloadavg()[0]
    for _ in range(args.repeat):
        for mode in ("spora", "spora_viewer", "spora_viewer_cold"):
            results[mode].append(measure(mode, store))
        for mode in ("napari_ome_zarr", "napari_ome_zarr_viewer"):
            results[mode].append(measure(mode, store / "imc/images/T"))
    load = max(load, os.getloadavg()[0])
    best = {mode: min(runs, key=lambda r: r["seconds"]) for mode, runs in results.items()}
    labels = {
        "spora": "spora reader: every layer of the tissue",
        "spora_viewer": "spora reader + headless ViewerModel with the layers",
        "spora_viewer_cold": "the same, the reader's imports (ome-zarr-models, pyarrow, pandas) included",
        "napari_ome_zarr": "stock napari-ome-zarr: the multiplex image group alone",
        "napari_ome_zarr_viewer": "stock napari-ome-zarr + headless ViewerModel: the multiplex image group alone",
    }
    lines = [f"| route | seconds (best of {args.repeat}) | CPU seconds of that run | layers | bytes read |", "|---|---|---|---|---|"]
    for mode, result in best.items():
        lines.append(
            f"| {labels[mode]} | {result['seconds']:.2f} | {result['cpu']:.2f} | {int(result['layers'])} | {int(result['bytes']):,} |"
        )
    ratio = best["spora"]["seconds"] / best["napari_ome_zarr"]["seconds"]
    viewer_ratio = best["spora_viewer"]["seconds"] / best["napari_ome_zarr_viewer"]["seconds"]
    lines.append("")
    lines.append(
        f"spora / napari-ome-zarr, seconds in the same run: reader {ratio:.2f}, first view in a ViewerModel {viewer_ratio:.2f} "
        f"(spora: every layer of the tissue; napari-ome-zarr: the multiplex image alone); load average up to {load:.1f}"
    )
    table = "\n".join(lines)
    print(table)
    if not args.no_docs:
        section = (
            f"## napari\n\n`python scripts/bench_napari.py` ({time.strftime('%Y-%m-%d')}; 2 shared cores). One tissue written by "
            f"the writer: {args.channels} x {args.size:,} x {args.size:,} uint16 multiplex at 1.0 um/px, RGB H&E "
            f"{2 * args.size:,}^2 at 0.5 um/px, tissue and cell masks, a {args.tiles:,}-tile table. Each route in a fresh "
            "process (napari and `ViewerModel` imported before timing; for the first two routes also the modules the reader "
            "loads on its first call, as in a napari session that has opened a store before); bytes read = the process's "
            "`rchar` around the call (the reader reads metadata and the tile table only: omero carries every colour and "
            "window; the viewer reads the coarsest level of each layer).\n\n"
            f"{table}\n"
        )
        write_section(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
