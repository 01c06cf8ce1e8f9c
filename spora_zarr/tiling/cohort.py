"""Tile the tissue masks of a cohort store and write the tile tables beside them (``spora-zarr tile``).

Each tissue is one task of the common runner (:func:`spora_zarr.run.runner.run_tasks`):
its tissue-mask level is read through :func:`spora_zarr.read.levels.open_level`
in row bands (a whole-slide mask is never held whole), the valid pixels of each
``gcd(tile_size, stride)`` cell are accumulated band by band, and the tiler
runs on those counts. The task writes a *part*, one parquet file with the
tissue's tiles and its stats (in the file's metadata), under
``.spora_tmp/tiling-parts/<res>/<strategy>/<size>_<parameters>/``. When the run
is over, the parts and the rows of tissues already in the final tables are
assembled into ``tiling/<res>/<strategy>/<size>_tile_coordinates.parquet``
(``tissue_id, tile_id, row, col``) and ``<size>_tile_stats.parquet`` (one row
per tissue), each written whole (:func:`spora_zarr.store.tables.write_table`),
coordinates first, stats last.

Resume: a tissue already in the final stats table with the same parameters,
or with a complete part, is skipped, unless its mask was replaced since: each
stats row records the content digest of the mask level it was tiled from
(``mask_digest``, :mod:`spora_zarr.write.digest`), and a tissue whose mask has
another one now is tiled again. A run with other parameters than the
existing tables' is refused unless ``overwrite`` (which recomputes every
tissue of the run and replaces the tables with them). Tissues that failed are
left out of the tables (the report says which) and are retried by the next
run. Parts are removed once assembled; a ``convert`` or ``add-image`` run in
between clears ``.spora_tmp`` and with it the parts (those tissues are then
recomputed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..access.resolution import Resolution, parse_resolution
from ..errors import InvalidInputError, NotFoundError
from ..store.layout import tile_table_path, validate_tissue_id
from ..store.location import Location
from ..store.lock import writes_store
from .tilers import CellCounter, best_tiling_from_counts, check_parameters, grid_tiling_from_counts

if TYPE_CHECKING:
    import pyarrow as pa

    from ..run import ProgressCallback, RunOptions, RunReport, TaskOutcome

__all__ = ["STRATEGIES", "TilingOptions", "TilingReport", "tile_cohort"]

STRATEGIES = ("best", "grid")
"""Tilers of :func:`tile_cohort`; each writes under ``tiling/<res>/<strategy>/``."""

PARTS_DIR = ".spora_tmp/tiling-parts"
#: Bytes of mask read at once (a row band of whole chunk rows, at least one chunk row).
BAND_BYTES = 16 * 2**20
_MASK_KIND = "tissue_masks"
_STATS_KEY = b"spora_tile_stats"


@dataclass(frozen=True, kw_only=True)
class TilingOptions:
    """What to tile and how; see :func:`~spora_zarr.tiling.tilers.best_mask_tiling_try_to_stop`.

    ``coverage_goal``, ``min_gain_ratio``, ``max_tiles`` and ``allow_overlap``
    apply to the ``best`` strategy only. ``resolution`` holds a
    :class:`~spora_zarr.access.Resolution` (a number or level name given is parsed).
    """

    resolution: Resolution
    tile_size: int
    strategy: str = "best"
    stride: int | None = None
    tolerance: float = 0.2
    coverage_goal: float = 0.99
    min_gain_ratio: float = 0.05
    max_tiles: int | None = None
    allow_overlap: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InvalidInputError(f"unknown tiling strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        object.__setattr__(self, "resolution", parse_resolution(self.resolution))
        size, stride, tolerance, goal, ratio, cap = check_parameters(
            self.tile_size, self.stride, self.tolerance, self.coverage_goal, self.min_gain_ratio, self.max_tiles
        )
        for name, value in (("tile_size", size), ("stride", stride), ("tolerance", tolerance), ("max_tiles", cap)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "coverage_goal", goal)
        object.__setattr__(self, "min_gain_ratio", ratio)
        object.__setattr__(self, "allow_overlap", bool(self.allow_overlap))

    def parameters(self) -> dict[str, Any]:
        """The parameters recorded in the stats table (``None`` where the strategy has no such parameter)."""
        best = self.strategy == "best"
        return {
            "strategy": self.strategy,
            "resolution": self.resolution.name,
            "tile_size": self.tile_size,
            "stride": self.stride,
            "tolerance": self.tolerance,
            "coverage_goal": self.coverage_goal if best else None,
            "min_gain_ratio": self.min_gain_ratio if best else None,
            "max_tiles": self.max_tiles if best else None,
            "allow_overlap": self.allow_overlap if best else None,
        }

    def key(self) -> str:
        """A short digest of :meth:`parameters`, naming the parts directory."""
        return hashlib.sha1(json.dumps(self.parameters(), sort_keys=True).encode()).hexdigest()[:12]

    def table(self, which: str) -> str:
        return tile_table_path(self.resolution, self.tile_size, strategy=self.strategy, table=which)

    def parts_dir(self) -> str:
        return f"{PARTS_DIR}/{self.resolution}/{self.strategy}/{self.tile_size}_{self.key()}"


@dataclass(frozen=True)
class TileTask:
    """One tissue to tile: its part's store path (``path``) and what the work needs."""

    path: str
    label: str
    tissue_id: str
    location: Location
    options: TilingOptions
    overwrite: bool = False


def _tile_tissue(task: TileTask, progress: ProgressCallback | None) -> TaskOutcome:
    """Tile one tissue mask, streamed in row bands, into its part file (runner work function)."""
    from ..read import open_cohort
    from ..read.levels import open_level
    from ..run import TaskOutcome
    from ..store.tables import table_exists, write_table

    options, location = task.options, task.location
    cohort = open_cohort(location)
    digest = cohort.content_digest(_MASK_KIND, task.tissue_id, options.resolution)
    if not task.overwrite and table_exists(location, task.path):
        part = _part_stats(location, task.path)
        if part is not None and part.get("mask_digest") == digest:
            return TaskOutcome(task.path, task.label, skipped=True)
    level = cohort.mask_level_path(_MASK_KIND, task.tissue_id, options.resolution)  # NotFoundError lists the levels it has
    reader = open_level(location, level)
    if len(reader.shape) not in (2, 3) or (len(reader.shape) == 3 and reader.shape[0] != 1):
        raise InvalidInputError(f"tissue {task.tissue_id!r}: tissue mask {level} has shape {reader.shape}, expected (H, W)")
    height, width = (int(n) for n in reader.shape[-2:])
    if height == 0 or width == 0:
        raise InvalidInputError(f"tissue {task.tissue_id!r}: tissue mask {level} is empty ({height}x{width})")
    cell = math.gcd(options.tile_size, options.stride or options.tile_size)
    counter = CellCounter(height, width, cell)
    band = _band_rows(cohort, level, height, width, reader.dtype.itemsize)
    read = 0
    for y0 in range(0, height, band):
        data = reader.read(y0, 0, min(band, height - y0), width)
        counter.add(y0, data)
        read += data.nbytes
        if progress is not None:
            progress(data.nbytes)
    if options.strategy == "best":
        tiles, stats, _ = best_tiling_from_counts(
            counter.counts,
            height,
            width,
            options.tile_size,
            options.stride,
            options.tolerance,
            options.coverage_goal,
            options.min_gain_ratio,
            options.max_tiles,
            options.allow_overlap,
        )
    else:
        tiles, stats, _ = grid_tiling_from_counts(counter.counts, height, width, options.tile_size, options.stride, options.tolerance)
    row = {"tissue_id": task.tissue_id, **_stats_row(stats), **options.parameters(), "mask_digest": digest}
    write_table(location, task.path, _part_table(tiles, row))
    return TaskOutcome(task.path, task.label, bytes_read=read)


def _band_rows(cohort: Any, level: str, height: int, width: int, itemsize: int) -> int:
    """Rows per band: whole rows of chunks, about :data:`BAND_BYTES`, at least one chunk row."""
    try:
        array = cohort.open_mask_array(_MASK_KIND, *_split_level(level))
        unit = int(array.chunks[-2])  # the inner chunks of a sharded array: each is read once
    except Exception:  # noqa: BLE001 - the layout is a read-speed hint only
        unit = 256
    per_unit = max(1, unit * width * itemsize)
    return min(height, unit * max(1, BAND_BYTES // per_unit))


def _split_level(level: str) -> tuple[str, str]:
    parts = level.split("/")
    return parts[-2], parts[-1]


def _stats_row(stats: dict[str, Any]) -> dict[str, Any]:
    keys = ("tiles", "coverage", "valid_pixels", "covered_pixels", "stop_reason", "height", "width")
    return {k: stats[k] for k in keys}


def _part_table(tiles: Sequence[Any], row: dict[str, Any]) -> pa.Table:
    import pyarrow as pa

    table = pa.table(
        {
            "tile_id": pa.array(range(len(tiles)), pa.int64()),
            "row": pa.array([t.row for t in tiles], pa.int64()),
            "col": pa.array([t.col for t in tiles], pa.int64()),
        }
    )
    return table.replace_schema_metadata({_STATS_KEY: json.dumps(row).encode()})


def _part_stats(location: Location, path: str) -> dict[str, Any] | None:
    from ..errors import StoreError
    from ..store.tables import read_table

    try:
        metadata = read_table(location, path).schema.metadata or {}
        return dict(json.loads(metadata[_STATS_KEY]))
    except (NotFoundError, StoreError, KeyError, ValueError):
        return None


# ----------------------------------------------------------------------------- the cohort


STATS_COLUMNS = (
    ("tissue_id", "string"),
    ("tiles", "int64"),
    ("coverage", "float64"),
    ("valid_pixels", "int64"),
    ("covered_pixels", "int64"),
    ("stop_reason", "string"),
    ("height", "int64"),
    ("width", "int64"),
    ("strategy", "string"),
    ("resolution", "string"),
    ("tile_size", "int64"),
    ("stride", "int64"),
    ("tolerance", "float64"),
    ("coverage_goal", "float64"),
    ("min_gain_ratio", "float64"),
    ("max_tiles", "int64"),
    ("allow_overlap", "bool_"),
    ("mask_digest", "string"),
)


@dataclass
class TilingReport:
    """What :func:`tile_cohort` did: the runner's report and the tables written."""

    run: RunReport
    tables: list[str] = field(default_factory=list)
    tissues: int = 0

    @property
    def ok(self) -> bool:
        return self.run.ok

    def summary(self) -> str:
        head, *failures = self.run.summary("tissues").split("\n")
        written = f"; {self.tissues} tissues in {', '.join(self.tables)}" if self.tables else "; no table written"
        return "\n".join([head + written, *failures])


@writes_store("tile", "store")
def tile_cohort(
    store: str | Location,
    options: TilingOptions,
    *,
    tissues: Sequence[str] | None = None,
    run: RunOptions | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> TilingReport:
    """Tile the tissue masks of a store at one resolution; write ``tiling/<res>/<strategy>/<size>_tile_*.parquet``.

    Parameters
    ----------
    store
        The cohort store (local path or fsspec URL).
    options
        Strategy, tile size, stride, tolerance and stop rules.
    tissues
        Tissue ids to tile; default: every tissue with a tissue mask.
    run
        Where to run (``--workers``, ``--scheduler``, ``--cluster local``) and progress.
    overwrite
        Recompute the tissues of this run even when the tables hold them, and
        replace tables made with other parameters.
    storage_options
        fsspec options of the store.

    Returns
    -------
    TilingReport
        The runner's outcomes (a tissue that failed is named with its reason
        and left out of the tables) and the tables written.
    """
    from ..read import open_cohort
    from ..run import RunOptions, run_tasks
    from ..store.tables import read_table, table_exists

    location = Location.parse(store, storage_options)
    location.check_writable("write tile tables")
    cohort = open_cohort(location)
    present = cohort.mask_tissues(_MASK_KIND)
    if tissues is None:
        wanted = present
        if not wanted:
            raise NotFoundError(f"{location}: no tissue masks (segmentations/{_MASK_KIND}) to tile")
    else:
        wanted = list(dict.fromkeys(validate_tissue_id(t) for t in tissues))
        missing = [t for t in wanted if t not in present]
        if missing:
            raise NotFoundError(
                f"{location}: no tissue mask for {', '.join(map(repr, missing))}; masks exist for {len(present)} tissues"
                + (f" ({', '.join(present[:10])}{', ...' if len(present) > 10 else ''})" if present else "")
            )
    coords_path, stats_path = options.table("coordinates"), options.table("stats")
    kept_coords, kept_stats = None, None
    if table_exists(location, stats_path) and table_exists(location, coords_path):
        kept_stats = read_table(location, stats_path).to_pylist()
        other = _differing_parameters(kept_stats, options.parameters())
        if other and not overwrite:
            raise InvalidInputError(
                f"{location.join(stats_path)} was computed with {other}; run with the same parameters to resume, "
                "or with overwrite=True to replace it"
            )
        if other:
            kept_stats = None
        else:
            kept_coords = read_table(location, coords_path).to_pylist()
    done = set() if overwrite else _unchanged(cohort, kept_stats or [], options.resolution)
    parts = options.parts_dir()
    tasks = [TileTask(f"{parts}/{t}.parquet", t, t, location, options, overwrite) for t in wanted if t not in done]
    report = run_tasks(tasks, _tile_tissue, run or RunOptions(), noun="tissues")
    # Assemble: rows of tissues kept from the tables (unless tiled again now: a tissue that failed is left out), then
    # this run's parts.
    fresh = {o.label for o in report.outcomes if not o.error}
    retiled = {t.tissue_id for t in tasks}
    rows_stats = [r for r in kept_stats or () if r["tissue_id"] not in retiled]
    dropped = any(r["tissue_id"] in retiled - fresh for r in kept_stats or ())
    keep_ids = {r["tissue_id"] for r in rows_stats}
    rows_coords = [r for r in kept_coords or () if r["tissue_id"] in keep_ids]
    for task in tasks:
        if task.label not in fresh:
            continue
        part = read_table(location, task.path)
        stats = _part_stats(location, task.path)
        if stats is None:
            raise NotFoundError(f"{location}: the tiling part of tissue {task.tissue_id!r} ({task.path}) vanished during the run")
        rows_stats.append(stats)
        rows_coords.extend({"tissue_id": task.tissue_id, **r} for r in part.to_pylist())
    order = {t: i for i, t in enumerate(present)}
    rows_stats.sort(key=lambda r: order.get(r["tissue_id"], len(order)))
    rows_coords.sort(key=lambda r: (order.get(r["tissue_id"], len(order)), r["tile_id"]))
    if fresh or dropped:  # else nothing new: the tables (if any) already hold every tissue that could be tiled
        _write_tables(location, coords_path, stats_path, rows_coords, rows_stats)
        _discard_parts(location, [t.path for t in tasks if t.label in fresh], parts)
    if not fresh and not kept_stats:
        return TilingReport(report, [], 0)
    return TilingReport(report, [coords_path, stats_path], len(rows_stats))


def _unchanged(cohort: Any, rows: list[dict[str, Any]], resolution: Resolution) -> set[str]:
    """Tissues of the kept ``rows`` whose mask level is still the one they were tiled from (the same ``mask_digest``)."""
    if not rows:
        return set()
    recorded = {r["tissue_id"]: r.get("mask_digest") for r in rows}
    changed, missing = cohort.changed_since(_MASK_KIND, resolution, recorded)
    return set(recorded) - set(changed) - set(missing)


def _differing_parameters(rows: list[dict[str, Any]], wanted: dict[str, Any]) -> str:
    """``"stride=112 (not 224), ..."`` for the parameters where the table's rows differ from ``wanted``; empty if none."""
    diffs = []
    for name, value in wanted.items():
        seen = {r.get(name) for r in rows}
        if seen and seen != {value}:
            diffs.append(f"{name}={'/'.join(map(str, sorted(seen, key=str)))} (not {value})")
    return ", ".join(diffs)


def _write_tables(location: Location, coords_path: str, stats_path: str, coords: list[dict[str, Any]], stats: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    from ..store.tables import write_table

    coords_schema = pa.schema([("tissue_id", pa.string()), ("tile_id", pa.int64()), ("row", pa.int64()), ("col", pa.int64())])
    stats_schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in STATS_COLUMNS])
    write_table(location, coords_path, pa.Table.from_pylist(coords, schema=coords_schema))
    write_table(location, stats_path, pa.Table.from_pylist([{k: r.get(k) for k in stats_schema.names} for r in stats], schema=stats_schema))


def _discard_parts(location: Location, paths: list[str], parts_dir: str) -> None:
    fs = location.fs()
    for path in paths:
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(location.fs_path(path))
    for path in (parts_dir, PARTS_DIR, PARTS_DIR.split("/")[0]):  # empty directories up to .spora_tmp
        with contextlib.suppress(FileNotFoundError, OSError):
            if not fs.find(location.fs_path(path)):
                fs.rm(location.fs_path(path), recursive=True)
