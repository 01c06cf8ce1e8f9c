"""The ``spora-zarr`` command line: each command a thin wrapper over one library function.

Errors a user can fix are printed as one line (``error: <file>: <reason>``)
with exit code 1, never as a traceback.

One module, although long: its one job is the command line (the parser with
every verb's flags, and a few lines a verb turning flags into one library
call). The work itself lives in the library packages, and this module imports
them inside each verb, so ``info`` or ``validate`` load no writer, dask or
torch; split by verb, the flags that several verbs share (layout, runner,
storage options) would be spread over modules that import each other.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .access.resolution import parse_resolution
from .errors import SporaZarrError
from .runtime import configure_writer_process
from .store import defaults

if TYPE_CHECKING:
    from .run import RunOptions
    from .write.options import WriteOptions


#: The library's parameter names and the flags that set them: the library's errors name parameters
#: (``mpp=...``, ``overwrite=True``), and :func:`flag_message` says them as flags when the CLI prints them.
PARAMETER_FLAGS = {
    "allow_outside": "--allow-outside-tiles-dir",
    "allow_sparse": "--allow-sparse-mosaic",
    "batch_size": "--batch-size",
    "channel_names": "--channel-names",
    "chunk": "--chunk",
    "clevel": "--clevel",
    "cname": "--cname",
    "device": "--device",
    "jpeg_quality": "--jpeg-quality",
    "labels": "--labels",
    "lossless": "--lossless",
    "memory_budget": "--memory-budget",
    "min_saving": "--min-saving",
    "min_tissue": "--min-tissue",
    "mode": "--mode",
    "modality": "--modality",
    "mpp": "--mpp",
    "overlap": "--overlap",
    "overwrite": "--overwrite",
    "resolution": "--resolution",
    "scheduler": "--scheduler",
    "shard": "--shard",
    "specs": "--spec",
    "tile_size": "--tile-size",
    "tissue_id": "--tissue",
    "tissues": "--tissue",
    "tolerance": "--tolerance",
    "within_mask": "--within-mask",
    "workers": "--workers",
    "z_mpp": "--z-mpp",
}
_PARAMETER = re.compile(r"(?<![\w./-])(" + "|".join(sorted(PARAMETER_FLAGS, key=len, reverse=True)) + r")=(True\b)?")


def flag_message(message: str) -> str:
    """``message`` with each ``parameter=value`` said as its flag: ``mpp=0`` -> ``--mpp 0``, ``overwrite=True`` -> ``--overwrite``."""

    def flag(match: re.Match[str]) -> str:
        name = PARAMETER_FLAGS[match.group(1)]
        if match.group(2) or match.end() == len(message) or message[match.end()].isspace():
            return name
        return f"{name} "

    return _PARAMETER.sub(flag, message)


def _json_option(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--storage-options is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--storage-options must be a JSON object")
    return value


def _positive_number(text: str) -> float:
    """An argparse type: a positive finite number (argparse names the flag in its error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spora_zarr")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    """The parser of every command (its defaults are constants of ``store.defaults``: building it imports no writer)."""
    parser = argparse.ArgumentParser(prog="spora-zarr", description="OME-Zarr (NGFF 0.5) cohort stores for spora imaging cohorts.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def layout_options(p: argparse.ArgumentParser, memory_budget: int = defaults.MEMORY_BUDGET) -> None:
        p.add_argument("--chunk", type=int, default=defaults.CHUNK, help="chunk edge in px, all channels per chunk (default %(default)s)")
        p.add_argument("--shard", type=int, default=defaults.SHARD, help="shard edge in pixels, 0: no sharding (default %(default)s)")
        p.add_argument("--cname", choices=defaults.BLOSC_CNAMES, default=defaults.CNAME, help="blosc compressor (default %(default)s)")
        p.add_argument(
            "--clevel", type=int, choices=range(10), metavar="0-9", default=defaults.CLEVEL, help="blosc level (default %(default)s)"
        )
        p.add_argument(
            "--min-saving",
            type=float,
            default=defaults.MIN_SAVING,
            help="store an image uncompressed when blosc saves less than this share of its bytes (default %(default)s; 0: always compress)",
        )
        p.add_argument(
            "--memory-budget", type=_positive_number, default=memory_budget / defaults.MiB, help="MiB of pixel buffers per worker"
        )
        p.add_argument(
            "--overwrite", action="store_true", help="redo complete groups (the old version stays until the new one is complete)"
        )
        p.add_argument("--storage-options", type=_json_option, default=None, help="fsspec options of the destination, as JSON")

    def tissue_option(p: argparse.ArgumentParser, help: str, *, repeat: bool = False) -> None:
        """``--tissue``, the one spelling of the tissue; ``--tissue-id`` stays a hidden alias for one release (docs/cli.md)."""
        action = "append" if repeat else "store"
        group = p.add_mutually_exclusive_group(required=not repeat)
        group.add_argument("--tissue", action=action, help=help)
        group.add_argument("--tissue-id", dest="tissue", action=action, help=argparse.SUPPRESS)

    def runner_options(p: argparse.ArgumentParser, done: str) -> None:
        """The flags of the one runner, shared by every cohort-wide verb."""
        p.add_argument("--workers", type=_positive_int, default=1, help=f"tissues {done} in parallel")
        p.add_argument("--scheduler", help="address of a running dask.distributed scheduler (tcp://HOST:PORT)")
        p.add_argument("--cluster", choices=["local"], help="start a dask.distributed LocalCluster of --workers processes")
        p.add_argument(
            "--no-progress", action="store_true", help="no progress output (bars on a terminal, else one line per finished tissue)"
        )

    convert = commands.add_parser("convert", help="convert a spora TIFF cohort into a cohort store")
    convert.add_argument("source", help="the spora TIFF cohort: a directory or fsspec URL holding metadata/tissues.parquet")
    convert.add_argument("dest", help="the cohort store to create or extend (a local path or fsspec URL such as s3://bucket/cohort.zarr)")
    runner_options(convert, "converted")
    convert.add_argument("--source-storage-options", type=_json_option, default=None, help="fsspec options of the source, as JSON")
    layout_options(convert)

    add = commands.add_parser("add-image", help="add one image file to a store (created if missing)")
    add.add_argument("dest", help="the cohort store (created if missing)")
    add.add_argument(
        "file",
        help="the image: TIFF / OME-TIFF / Aperio SVS / NDPI, an OME-Zarr image (channel names, pixel size and levels read from it), "
        "a zarr array, PNG or JPEG",
    )
    add.add_argument("--modality", required=True, help="modality directory in the store: he, imc, cycif, ihc/ihc_<marker>, ...")
    tissue_option(add, "tissue id (one path segment: no '/', no leading dot)")
    add.add_argument("--mpp", type=_positive_number, help="microns per pixel (read from OME-TIFF, SVS, TIFF tags or OME-Zarr when omitted)")
    add.add_argument("--channel-names", help="comma-separated channel names")
    add.add_argument(
        "--lossless",
        action="store_true",
        help="decode a JPEG slide and store it losslessly (readable by every zarr reader) instead of keeping its JPEG tiles",
    )
    add.add_argument(
        "--jpeg-quality",
        type=int,
        metavar="Q",
        help="store an 8-bit RGB image that is not JPEG-compressed as JPEG tiles of quality Q (1-100): lossy, about 5-10x smaller",
    )
    layout_options(add)

    info = commands.add_parser("info", help="summarise a store")
    info.add_argument("store", help="the cohort store (local path or fsspec URL)")
    info.add_argument("--storage-options", type=_json_option, default=None, help="fsspec options of the store, as JSON")

    standardize = commands.add_parser(
        "standardize", help="compute standardization statistics (stats.parquet per spec) from a store's images"
    )
    standardize.add_argument("store", help="the cohort store (local path or fsspec URL)")
    standardize.add_argument("--modality", required=True, help="multiplex modality directory in the store: imc, cycif, ...")
    standardize.add_argument("--resolution", required=True, help="the level: microns per pixel (1.0) or a name (1_0mpp)")
    standardize.add_argument(
        "--spec",
        action="append",
        required=True,
        help="a spec to compute, repeatable: quantile_clipping/uq_0.99_image, quantile_clipping_log1p/uq_0.99_global, ...",
    )
    standardize.add_argument("--within-mask", action="store_true", help="count only pixels inside the tissue mask of that resolution")
    standardize.add_argument("--overwrite", action="store_true", help="recompute the stored per-tissue histograms")
    runner_options(standardize, "read")
    standardize.add_argument("--storage-options", type=_json_option, default=None, help="fsspec options of the store, as JSON")

    tile = commands.add_parser("tile", help="tile the tissue masks of a store; write tiling/<res>/<strategy>/<size>_tile_*.parquet")
    tile.add_argument("store", help="the cohort store (local path or fsspec URL)")
    tile.add_argument("--resolution", required=True, help="the mask level to tile: microns per pixel (1.0) or a name (1_0mpp)")
    tile.add_argument("--tile-size", type=_positive_int, required=True, help="tile edge in pixels of that resolution")
    tile.add_argument(
        "--strategy",
        choices=["best", "grid"],
        default="best",
        help="best: greedy best coverage (best_mask_tiling_try_to_stop); grid: fixed grid (get_grid_tile) (default %(default)s)",
    )
    tile.add_argument("--stride", type=_positive_int, help="step of the candidate grid in pixels (default: the tile size)")
    tile.add_argument("--tolerance", type=float, default=0.2, help="largest invalid fraction in a tile, in [0, 1] (default %(default)s)")
    tile.add_argument(
        "--coverage-goal",
        type=float,
        default=0.99,
        help="best: coverage below which it does not stop while tiles add pixels (default %(default)s)",
    )
    tile.add_argument(
        "--min-gain-ratio",
        type=float,
        default=0.05,
        help="best: past the goal, stop once the best tile adds under this share of its area; 0: stop at the goal (default %(default)s)",
    )
    tile.add_argument("--max-tiles", type=int, help="best: at most this many tiles per tissue")
    tile.add_argument("--no-overlap", action="store_true", help="best: picked tiles never overlap")
    tissue_option(tile, "tissue id to tile (repeatable; default: every tissue with a tissue mask)", repeat=True)
    tile.add_argument(
        "--overwrite", action="store_true", help="recompute tissues already in the tables; replace tables made with other parameters"
    )
    runner_options(tile, "tiled")
    tile.add_argument("--storage-options", type=_json_option, default=None, help="fsspec options of the store, as JSON")

    predict = commands.add_parser(
        "predict", help="run a model over whole tissues; write predictions/<name>/images/<id> or segmentations/<name>/<id>"
    )
    predict.add_argument("store", help="the cohort store (local path or fsspec URL)")
    predict.add_argument("--model", required=True, help="a TorchScript file, or module:callable (an nn.Module, a class, or a function)")
    predict.add_argument("--modality", required=True, help="input modality directory: he, imc, ihc/ihc_CD3, predictions/<name>, ...")
    predict.add_argument("--resolution", required=True, help="the input level: microns per pixel (1.0) or a name (1_0mpp)")
    predict.add_argument("--name", required=True, help="name of the prediction (one path segment)")
    predict.add_argument("--labels", action="store_true", help="write labels (argmax of per-class scores) to segmentations/<name>")
    predict.add_argument(
        "--mode",
        choices=["crop", "blend"],
        default="crop",
        help="crop: keep each tile's centre; blend: Gaussian-weighted average of overlaps (default %(default)s)",
    )
    predict.add_argument("--tile-size", type=_positive_int, default=256, help="tile edge in pixels (default %(default)s)")
    predict.add_argument("--overlap", type=int, default=32, help="overlap of neighbouring tiles in pixels (default %(default)s)")
    predict.add_argument("--batch-size", type=_positive_int, default=8, help="tiles per model call (default %(default)s)")
    predict.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ... (default %(default)s)")
    predict.add_argument("--channel-names", help="comma-separated names of the output channels (images)")
    predict.add_argument("--kind", default="complete", help="channel kind of multiplex input (complete, qc_filtered, uniprot_filtered)")
    predict.add_argument(
        "--standardization",
        default="identity",
        help="standardization spec of multiplex input (default %(default)s); H&E and IHC: imagenet (default) or hibou",
    )
    predict.add_argument("--min-tissue", type=float, help="skip tiles whose tissue-mask fraction is below this; they get --fill-value")
    predict.add_argument("--fill-value", type=float, default=0.0, help="value of pixels of skipped tiles (default %(default)s)")
    tissue_option(predict, "tissue id to predict (repeatable; default: every tissue of the modality)", repeat=True)
    runner_options(predict, "predicted")
    layout_options(predict, defaults.PREDICTION_MEMORY_BUDGET)

    validate = commands.add_parser("validate", help="check a store against NGFF 0.5 and the spora rules")
    validate.add_argument("store", help="the cohort store (local path or fsspec URL)")
    validate.add_argument("--storage-options", type=_json_option, default=None, help="fsspec options of the store, as JSON")
    validate.add_argument("--deep", action="store_true", help="also decode every shard and check the tables and masks against the images")
    stitch = commands.add_parser("stitch", help="stitch overlapping tiles (fields of view) + offsets into one image of a store")
    stitch.add_argument("tiles_dir", help="folder of the TIFF tiles (the table's file names are relative to it)")
    stitch.add_argument("offsets", help="offsets table, CSV or parquet: file, x, y[, z][, labels]; top-left of each tile")
    stitch.add_argument("dest", help="the cohort store (created if missing)")
    stitch.add_argument("--modality", required=True, help="modality directory in the store: imc, cycif, he, ...")
    tissue_option(stitch, "tissue id (one path segment: no '/', no leading dot)")
    stitch.add_argument("--mpp", type=_positive_number, required=True, help="microns per pixel of the stitched image")
    stitch.add_argument("--z-mpp", type=_positive_number, help="microns between planes of a 3-D stack (default: --mpp)")
    stitch.add_argument(
        "--blend",
        choices=["none", "max", "linear"],
        default="none",
        help="overlaps: last tile in table order wins (none, the default), max, or linear feathering",
    )
    stitch.add_argument(
        "--labels",
        choices=["cell_masks", "tissue_masks"],
        help="also stitch the table's 'labels' column into segmentations/<KIND>/<tissue> (ids unique, cut objects merged)",
    )
    stitch.add_argument("--register", action="store_true", help="refine offsets by phase correlation + least squares first")
    stitch.add_argument("--offset-unit", choices=["pixel", "micrometer"], default="pixel", help="unit of x, y (default %(default)s)")
    stitch.add_argument("--channel-names", help="comma-separated channel names")
    stitch.add_argument(
        "--allow-outside-tiles-dir",
        action="store_true",
        help="let the table name files outside TILES_DIR (absolute paths, '..', links out); refused by default",
    )
    stitch.add_argument(
        "--allow-sparse-mosaic",
        action="store_true",
        help="stitch even when the offsets span over 16x the tiles' total area (a mostly empty mosaic); refused by default",
    )
    stitch.add_argument("--no-progress", action="store_true", help="no progress bar")
    layout_options(stitch)

    view = commands.add_parser("view", help="open a tissue of a store in napari (needs the napari extra)")
    view.add_argument("store", help="the cohort store (local path or fsspec URL)")
    view.add_argument("--tissue", help="tissue id to show first (default: the first tissue)")
    view.add_argument("tissue_positional", nargs="?", metavar="TISSUE", help=argparse.SUPPRESS)  # the alias of earlier releases
    view.add_argument("--modality", action="append", help="modality to show (repeatable; default: all)")
    view.add_argument("--kind", default="complete", help="channel kind of multiplex modalities (complete, qc_filtered, uniprot_filtered)")
    return parser


def _run_options(args: argparse.Namespace) -> RunOptions:
    """Where a cohort-wide verb runs, from its runner flags."""
    from .run import RunOptions

    if args.scheduler and args.cluster:
        raise SporaZarrError("give --scheduler or --cluster, not both")
    return RunOptions(workers=args.workers, scheduler=args.scheduler or args.cluster, progress=not args.no_progress)


def _write_options(args: argparse.Namespace) -> WriteOptions:
    from .write.options import WriteOptions

    return WriteOptions(
        chunk=args.chunk,
        shard=args.shard or None,
        cname=args.cname,
        clevel=args.clevel,
        min_saving=args.min_saving,
        memory_budget=int(args.memory_budget * 2**20),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command in ("convert", "add-image", "predict", "stitch"):
        configure_writer_process()
    try:
        return _COMMANDS[args.command](args)
    except SporaZarrError as exc:
        print(f"error: {flag_message(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


def _convert(args: argparse.Namespace) -> int:
    from .convert import ConvertOptions, convert_cohort

    report = convert_cohort(
        args.source,
        args.dest,
        ConvertOptions(overwrite=args.overwrite),
        write=_write_options(args),
        run=_run_options(args),
        storage_options=args.storage_options,
        source_storage_options=args.source_storage_options,
    )
    print(report.summary(), file=sys.stderr if not report.ok else sys.stdout)
    return 0 if report.ok else 1


def _add_image(args: argparse.Namespace) -> int:
    from .convert import add_image

    names = _channel_names(args)
    result = add_image(
        args.dest,
        args.file,
        modality=args.modality,
        tissue_id=args.tissue,
        mpp=args.mpp,
        channel_names=names,
        write=_write_options(args),
        overwrite=args.overwrite,
        storage_options=args.storage_options,
        lossless=args.lossless,
        jpeg_quality=args.jpeg_quality,
    )
    print(f"{'kept existing' if result.skipped else 'wrote'} {result.path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .read.info import describe

    print(describe(args.store, args.storage_options))
    return 0


def _standardize(args: argparse.Namespace) -> int:
    from .standardize.statistics import compute_statistics

    report = compute_statistics(
        args.store,
        args.modality,
        parse_resolution(args.resolution),
        args.spec,
        within_mask=args.within_mask,
        run=_run_options(args),
        overwrite=args.overwrite,
        storage_options=args.storage_options,
    )
    print(report.summary(), file=sys.stderr if not report.ok else sys.stdout)
    return 0 if report.ok else 1


def _tile(args: argparse.Namespace) -> int:
    from .tiling import TilingOptions, tile_cohort

    options = TilingOptions(
        resolution=parse_resolution(args.resolution),
        tile_size=args.tile_size,
        strategy=args.strategy,
        stride=args.stride,
        tolerance=args.tolerance,
        coverage_goal=args.coverage_goal,
        min_gain_ratio=args.min_gain_ratio,
        max_tiles=args.max_tiles,
        allow_overlap=not args.no_overlap,
    )
    run = _run_options(args)
    report = tile_cohort(args.store, options, tissues=args.tissue, run=run, overwrite=args.overwrite, storage_options=args.storage_options)
    print(report.summary(), file=sys.stderr if not report.ok else sys.stdout)
    return 0 if report.ok else 1


def _predict(args: argparse.Namespace) -> int:
    from .inference.predict import PredictOptions, predict_cohort

    names = _channel_names(args)
    options = PredictOptions(
        modality=args.modality,
        resolution=parse_resolution(args.resolution),
        name=args.name,
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        mode=args.mode,
        labels=args.labels,
        device=args.device,
        kind=args.kind,
        standardization=args.standardization,
        channel_names=names,
        min_tissue=args.min_tissue,
        fill_value=args.fill_value,
    )
    report = predict_cohort(
        args.store,
        args.model,
        options,
        tissues=args.tissue,
        write=_write_options(args),
        run=_run_options(args),
        overwrite=args.overwrite,
        storage_options=args.storage_options,
    )
    print(report.summary("tissues"), file=sys.stderr if not report.ok else sys.stdout)
    return 0 if report.ok else 1


def _channel_names(args: argparse.Namespace) -> tuple[str, ...] | None:
    """``--channel-names A,B,C`` as names, stripped; ``None`` when not given."""
    return tuple(n.strip() for n in args.channel_names.split(",")) if args.channel_names else None


def _stitch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .stitching import StitchOptions, stitch

    bars: dict[str, Any] = {}

    def progress(stage: str, nbytes: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(desc=stage, unit="B", unit_scale=True, disable=args.no_progress, leave=False)
        bars[stage].update(nbytes)

    names = _channel_names(args)
    options = StitchOptions(
        modality=args.modality,
        tissue_id=args.tissue,
        mpp=args.mpp,
        z_mpp=args.z_mpp,
        blend=args.blend,
        labels=args.labels,
        register=args.register,
        offset_unit=args.offset_unit,
        channel_names=names,
        allow_outside=args.allow_outside_tiles_dir,
        allow_sparse=args.allow_sparse_mosaic,
    )
    try:
        result = stitch(
            args.tiles_dir,
            args.offsets,
            args.dest,
            options,
            write=_write_options(args),
            overwrite=args.overwrite,
            progress=progress,
            storage_options=args.storage_options,
        )
    finally:
        for bar in bars.values():
            bar.close()
    print(f"{'kept existing' if result.image.skipped else 'wrote'} {result.image.path}")
    if result.labels is not None:
        hidden = f"; {result.hidden:,} wholly under later tiles left out" if result.hidden else ""
        print(f"{'kept existing' if result.labels.skipped else 'wrote'} {result.labels.path} ({result.objects:,} objects{hidden})")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .read.validate import validate_store

    problems = validate_store(args.store, args.storage_options, deep=args.deep)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print("valid")
    return 0


def _display_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """Why Qt could not open a window here, or ``None``: on Linux it needs ``DISPLAY`` or ``WAYLAND_DISPLAY``
    (or a ``QT_QPA_PLATFORM`` such as ``offscreen``); without one, Qt aborts the process instead of raising."""
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or environ.get("QT_QPA_PLATFORM"):
        return None
    if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    return "spora-zarr view needs a display: neither DISPLAY nor WAYLAND_DISPLAY is set (use ssh -X, a desktop session, or Xvfb)"


def _view(args: argparse.Namespace) -> int:
    from .datasets.imaging import CHANNEL_KINDS
    from .read.cohort import open_cohort

    if args.kind not in CHANNEL_KINDS:
        raise SporaZarrError(f"unknown channel kind {args.kind!r}; expected one of {', '.join(CHANNEL_KINDS)}")
    if args.tissue is not None and args.tissue_positional is not None and args.tissue != args.tissue_positional:
        raise SporaZarrError(f"two tissues given: --tissue {args.tissue} and {args.tissue_positional}; give one, with --tissue")
    tissue = args.tissue if args.tissue is not None else args.tissue_positional
    cohort = open_cohort(args.store)
    for modality in args.modality or ():
        cohort.check_modality(modality)
    tissues = sorted({t for m in (args.modality or cohort.modalities) for t in cohort.tissues(m)})
    if tissue is not None and tissue not in tissues:
        raise SporaZarrError(f"{args.store}: no tissue {tissue!r}; it has {', '.join(tissues[:20]) or 'none'}")
    problem = _display_problem()
    if problem:
        raise SporaZarrError(problem)
    try:
        import napari
    except ImportError:
        raise SporaZarrError("spora-zarr view needs napari: pip install 'spora_zarr[napari]'") from None
    from .napari.widget import CohortBrowser, CohortWidget

    viewer = napari.Viewer(title=f"spora-zarr {args.store}")
    browser = CohortBrowser(viewer, args.store, modalities=args.modality, kind=args.kind)
    if tissues:
        browser.show(tissue or tissues[0])
    viewer.window.add_dock_widget(CohortWidget(viewer, browser=browser), name="spora cohort", area="right")
    napari.run()
    return 0


_COMMANDS = {
    "convert": _convert,
    "add-image": _add_image,
    "info": _info,
    "validate": _validate,
    "view": _view,
    "standardize": _standardize,
    "tile": _tile,
    "predict": _predict,
    "stitch": _stitch,
}


def run() -> None:
    """The ``spora-zarr`` command: :func:`main` on ``sys.argv``, then the process exits with its code.

    The objects the command made are frozen first (``gc.freeze``), so that the
    interpreter's last collection does not walk them all only to find the
    cycles the exit frees anyway: 0.3 s after ``info`` on 1,250 tissues, 0.05 s
    frozen. Every file the commands write is closed by then, and the ``atexit``
    handlers (logging's flush) still run. Output to a pipe whose reader has gone
    ends the command quietly with 141, as the shell reports a command ``SIGPIPE``
    ended.
    """
    try:
        code = main()
        sys.stdout.flush()  # a reader that went away is found here, not in the interpreter's last flush
    except BrokenPipeError:  # `spora-zarr info STORE | head -1`: no traceback, the rest goes nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, as the shell reports a command the closed pipe ended
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
