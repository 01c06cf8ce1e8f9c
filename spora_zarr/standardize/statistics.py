"""Standardization statistics computed from the store in one streaming pass, through the one runner.

Each tissue is one runner task: its level is read block by block (blocks of
whole chunks of about ``BLOCK_EDGE`` pixels, never the whole slide; one block
per core at a time, each read and counted on a pool thread with the GIL
released) and every channel's value histogram is accumulated
(:mod:`.histograms`, one accumulator per thread, merged) and written as a compact parquet table,
``<modality>/<res>/standardization/_histograms/<all_pixels|within_mask>/<tissue>.parquet``
(columns ``channel_name, value, count``). A tissue whose histogram table is
already there for the same level (shape, dtype, channel names) and the same
pixels (the content digests of the image's and the mask's level, recorded
with the histograms; a table written before they were recorded counts as
matching a group written before) is kept, so a run is resumable per tissue, a tissue whose image or
mask was replaced since is counted again, and a new spec or quantile level is
derived from the histograms without reading pixels again.

Every spec's ``stats.parquet`` (``tissue_id, channel_name, quantile, upper,
mean, std``, one row per tissue and channel the tissue measured) is then a
function of the histograms: ``upper`` is the clipping quantile of the tissue's
channel (``_image``) or of the channel over the cohort (``_global``, merged
histograms); ``mean`` and ``std`` (ddof 0) are per channel over the cohort, of
``clip(x, 0, upper)`` with each tissue's own ``upper`` (after ``log1p`` for the
log1p spec), repeated on each of the channel's rows. See ``docs/standardization.md``.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..access.resolution import ResolutionLike, parse_resolution
from ..errors import InvalidInputError, NotFoundError, StoreError
from ..process import available_cores
from ..read.cohort import open_cohort
from ..read.levels import open_level
from ..run import ProgressCallback, RunOptions, RunReport, TaskOutcome, run_tasks
from ..store.layout import STANDARDIZATION_META_KEY, modality_dir, standardization_dir
from ..store.location import Location
from ..store.lock import writes_store
from ..store.tables import read_table, table_exists, write_table
from .histograms import ChannelHistogram, HistogramAccumulator, clipped_moments, merge, quantile
from .specs import Spec, parse_spec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "HISTOGRAMS_DIR",
    "STATS_FILE",
    "HistogramTask",
    "StandardizeReport",
    "available_specs",
    "compute_statistics",
    "derive_statistics",
    "histogram_path",
    "read_histograms",
    "read_statistics",
]

log = logging.getLogger("spora_zarr")

HISTOGRAMS_DIR = "_histograms"
STATS_FILE = "stats.parquet"
_META_KEY = b"spora_histogram"
BLOCK_EDGE = 224  # pixels: a (24, 224, 224) uint16 block (2.4 MB) is counted while it is still in the cache


def statistics_schema() -> pa.Schema:
    """Columns of a standardization statistics table (one row per tissue, channel and quantile)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("tissue_id", pa.string()),
            ("channel_name", pa.string()),
            ("quantile", pa.float64()),
            ("upper", pa.float64()),
            ("mean", pa.float64()),
            ("std", pa.float64()),
        ]
    )


def histogram_path(modality: str, resolution: ResolutionLike, tissue_id: str, within_mask: bool = False) -> str:
    """Store path of a tissue's persisted channel histograms."""
    kind = "within_mask" if within_mask else "all_pixels"
    return f"{modality_dir(modality)}/{parse_resolution(resolution).name}/standardization/{HISTOGRAMS_DIR}/{kind}/{tissue_id}.parquet"


def stats_path(modality: str, resolution: ResolutionLike, spec: str) -> str:
    """Store path of a spec's ``stats.parquet``."""
    return f"{standardization_dir(modality, resolution, spec)}/{STATS_FILE}"


def command_hint(
    location: Location | str,
    modality: str,
    resolution: ResolutionLike,
    spec: str = "quantile_clipping/uq_0.99_image",
    *,
    within_mask: bool = False,
) -> str:
    """The command line that computes ``spec``'s statistics (``within_mask``: as a table counted within the mask was)."""
    mask = " --within-mask" if within_mask else ""
    return f"spora-zarr standardize {location} --modality {modality} --resolution {parse_resolution(resolution).name} --spec {spec}{mask}"


# -- one tissue: the streaming pass --------------------------------------------------
@dataclass(frozen=True)
class HistogramTask:
    """One tissue's histogram pass: where its result goes and which arrays it reads."""

    path: str
    label: str
    tissue_id: str
    level_path: str
    mask_path: str | None
    channel_names: tuple[str, ...]
    digests: tuple[str | None, str | None] = (None, None)
    """The content digests of the image's and the mask's level read (:mod:`spora_zarr.write.digest`)."""


def _describe_level(location: Location, path: str) -> tuple[tuple[int, ...], np.dtype, tuple[int, int]]:
    """Shape, dtype and the (y, x) edges of the blocks the pass reads: whole chunks, about ``BLOCK_EDGE`` pixels."""
    import zarr

    array = zarr.open_array(location.zarr_store(read_only=True), path=path, mode="r")
    chunk = [int(c) for c in array.chunks[-2:]]  # the inner chunks of a sharded array
    by, bx = (max(c, BLOCK_EDGE // c * c) for c in chunk)
    return tuple(int(s) for s in array.shape), np.dtype(array.dtype), (by, bx)


def _level_key(task: HistogramTask, shape: Sequence[int], dtype: np.dtype) -> dict[str, Any]:
    key = {
        "level_path": task.level_path,
        "shape": [int(s) for s in shape],
        "dtype": str(dtype),
        "channel_names": list(task.channel_names),
        "within_mask": task.mask_path is not None,
        "content_digests": list(task.digests),
    }
    if np.dtype(dtype).kind == "f":  # histograms of float data written before NaN/inf were counted are counted again
        key["left_out_counted"] = True
    return key


#: What a histogram written before the content digests were recorded holds for them: no digests, the same as a
#: group written before them has, so such a group's histograms are kept.
_BEFORE_DIGESTS = {"content_digests": [None, None]}


def _stored_key(location: Location, path: str) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    try:
        with location.fs().open(location.fs_path(path), "rb") as handle:
            metadata = pq.read_schema(handle).metadata or {}
        value = json.loads(metadata[_META_KEY])
        return value if isinstance(value, dict) else None
    except (OSError, ValueError, KeyError):
        return None


def histogram_work(
    task: HistogramTask, progress: ProgressCallback | None, *, location: Location, overwrite: bool = False, block: int | None = None
) -> TaskOutcome:
    """Accumulate and write one tissue's channel histograms (the runner's ``work``)."""
    import pyarrow as pa

    shape, dtype, edges = _describe_level(location, task.level_path)
    key = _level_key(task, shape, dtype)
    if not overwrite and table_exists(location, task.path):
        stored = _stored_key(location, task.path)
        if stored is not None and {k: stored.get(k, _BEFORE_DIGESTS.get(k)) for k in key} == key:
            return TaskOutcome(task.path, task.label, skipped=True)
    reader = open_level(location, task.level_path)
    mask_reader = open_level(location, task.mask_path) if task.mask_path else None
    if mask_reader is not None and tuple(mask_reader.shape[-2:]) != tuple(shape[-2:]):
        raise StoreError(f"{location.join(task.mask_path or '')}: mask shape {mask_reader.shape} differs from the image's {shape}")
    by, bx = (block, block) if block else edges
    height, width = shape[-2:]
    corners = [(y0, x0) for y0 in range(0, height, by) for x0 in range(0, width, bx)]
    accumulators: list[HistogramAccumulator] = []
    local = threading.local()

    def count(corner: tuple[int, int]) -> int:
        """Read and count one block on a pool thread, into that thread's accumulator."""
        accumulator = getattr(local, "accumulator", None)
        if accumulator is None:
            accumulator = local.accumulator = HistogramAccumulator(shape[0], dtype)
            accumulators.append(accumulator)
        y0, x0 = corner
        data = reader.read(y0, x0, by, bx)  # the read and the counter release the GIL: blocks overlap on the cores
        mask = mask_reader.read(y0, x0, by, bx) > 0 if mask_reader is not None else None
        accumulator.add(data, mask)
        return int(data.nbytes)

    nbytes = 0
    with ThreadPoolExecutor(min(available_cores(), len(corners)), thread_name_prefix="spora-histogram") as pool:
        for done in pool.map(count, corners):
            nbytes += done
            if progress is not None:
                progress(done)
    accumulator = accumulators[0].merge(accumulators[1:])
    names, values, counts = [], [], []
    for name, histogram in zip(task.channel_names, accumulator.result()):
        names.extend([name] * histogram.values.size)
        values.append(histogram.values)
        counts.append(histogram.counts)
    key["exact"] = accumulator.exact
    key["left_out"] = {name: int(n) for name, n in zip(task.channel_names, accumulator.left_out.tolist()) if n}
    table = pa.table(
        {
            "channel_name": pa.array(names, pa.string()).dictionary_encode(),
            "value": pa.array(np.concatenate(values) if values else np.zeros(0), pa.float64()),
            "count": pa.array(np.concatenate(counts) if counts else np.zeros(0, np.int64), pa.int64()),
        }
    ).replace_schema_metadata({_META_KEY: json.dumps(key).encode()})
    write_table(location, task.path, table)
    return TaskOutcome(task.path, task.label, bytes_read=nbytes)


def read_histograms(location: Location, path: str) -> dict[str, ChannelHistogram]:
    """A tissue's persisted histograms, by channel name (channels in stored order)."""
    import pyarrow as pa

    table = read_table(location, path)
    key = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    exact = bool(key.get("exact", True))
    left_out = key.get("left_out", {})
    column = table.column("channel_name").combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    codes = column.indices.to_numpy(zero_copy_only=False)  # channel codes, not a Python string per bin
    dictionary = column.dictionary.to_pylist()
    values = table.column("value").to_numpy()
    counts = table.column("count").to_numpy()
    out: dict[str, ChannelHistogram] = {
        name: ChannelHistogram(np.zeros(0), np.zeros(0, np.int64), exact, int(left_out.get(name, 0)))
        for name in key.get("channel_names", [])
    }
    if codes.size:
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        ends = np.r_[starts[1:], codes.size]
        for s, e in zip(starts.tolist(), ends.tolist()):
            name = str(dictionary[codes[s]])
            out[name] = ChannelHistogram(values[s:e].astype(np.float64), counts[s:e].astype(np.int64), exact, int(left_out.get(name, 0)))
    return out


# -- the cohort: derive every spec from the histograms -----------------------------------
def derive_statistics(histograms: dict[str, dict[str, ChannelHistogram]], spec: str | Spec) -> pa.Table:
    """The ``stats.parquet`` table of ``spec`` from per-tissue, per-channel histograms.

    Parameters
    ----------
    histograms
        ``{tissue_id: {channel_name: histogram}}``; a tissue lists only the channels it measured.
    spec
        A stats-backed spec (see :func:`~.specs.parse_spec`).
    """
    import pyarrow as pa

    parsed = spec if isinstance(spec, Spec) else parse_spec(spec)
    channels: dict[str, list[str]] = {}
    for tissue, by_channel in histograms.items():
        for name in by_channel:
            channels.setdefault(name, []).append(tissue)
    upper: dict[tuple[str, str], float] = {}
    for name, tissues in channels.items():
        if parsed.scope == "global":
            bound = quantile(merge([histograms[t][name] for t in tissues]), parsed.quantile)
            upper.update({(t, name): bound for t in tissues})
        else:
            upper.update({(t, name): quantile(histograms[t][name], parsed.quantile) for t in tissues})
    moments = {
        name: clipped_moments([(histograms[t][name], upper[(t, name)]) for t in tissues if histograms[t][name].total], parsed.log1p)
        for name, tissues in channels.items()
    }
    rows: dict[str, list[Any]] = {k: [] for k in ("tissue_id", "channel_name", "quantile", "upper", "mean", "std")}
    for tissue, by_channel in histograms.items():
        for name, histogram in by_channel.items():
            if not histogram.total:  # no counted pixel (an empty mask): no statistics for it
                continue
            mean, std, _ = moments[name]
            for column, value in zip(rows, (tissue, name, parsed.quantile, upper[(tissue, name)], mean, std)):
                rows[column].append(value)
    return pa.table(rows, schema=statistics_schema())


@dataclass
class StandardizeReport(RunReport):
    """What a ``standardize`` run did: the tissues' histogram passes, then the specs written.

    ``left_out`` is ``{tissue_id: {channel_name: n}}``: the NaN and infinite values of float images not counted.
    """

    specs: list[str] = field(default_factory=list)
    left_out: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self, noun: str = "tissue histograms") -> str:
        head, *failures = super().summary(noun).split("\n")
        written = f", statistics written for {', '.join(self.specs)}" if self.specs else ", no statistics written"
        total = sum(n for by_channel in self.left_out.values() for n in by_channel.values())
        if total:
            channels = sum(len(by_channel) for by_channel in self.left_out.values())
            written += f"; {total:,} NaN or infinite values left out ({channels} channel(s) of {len(self.left_out)} tissue(s))"
        return "\n".join([head + written, *failures])


@writes_store("standardize", "store")
def compute_statistics(
    store: str | Location,
    modality: str,
    resolution: ResolutionLike,
    specs: Sequence[str],
    *,
    within_mask: bool = False,
    tissues: Sequence[str] | None = None,
    run: RunOptions | None = None,
    overwrite: bool = False,
    block: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> StandardizeReport:
    """Compute and write the statistics of ``specs`` for one modality and resolution of a cohort store.

    Parameters
    ----------
    store
        The cohort store (local path or fsspec URL).
    modality, resolution
        Which images (``imc``, ``1.0`` or ``"1_0mpp"``).
    specs
        Stats-backed specs (``quantile_clipping/uq_0.99_image``, ...); several share one pass.
    within_mask
        Count only pixels inside the tissue mask of the same resolution.
    tissues
        Restrict to these tissues (default: every tissue with that level).
    run
        Where the per-tissue passes run (workers, a dask scheduler, progress).
    overwrite
        Recompute histograms that are already stored.
    block
        Block edge in pixels (default: whole chunks, about ``BLOCK_EDGE``).

    Returns
    -------
    StandardizeReport
        Per-tissue outcomes and the specs written; no ``stats.parquet`` is
        written when a tissue failed (its statistics would be partial).
    """
    parsed = [parse_spec(s) for s in specs]
    if not parsed:
        raise InvalidInputError("specs= is empty; give at least one, e.g. quantile_clipping/uq_0.99_image")
    cohort = open_cohort(store, storage_options)
    location = cohort.location
    location.check_writable("write statistics")
    name = parse_resolution(resolution).name
    ids = [t for t in cohort.tissues(modality) if name in cohort.resolutions(modality, t)]
    if tissues is not None:
        unknown = sorted(set(tissues) - set(ids))
        if unknown:
            raise NotFoundError(
                f"{location}: no {modality} image at {name} for tissues {', '.join(unknown)}; there are {', '.join(ids) or 'none'}"
            )
        ids = [t for t in ids if t in set(tissues)]
    if not ids:
        raise NotFoundError(f"{location}: {modality} has no images at resolution {name}")
    tasks = []
    for tissue in ids:
        mask_path, mask_digest = None, None
        if within_mask:
            if tissue not in cohort.mask_tissues("tissue_masks"):
                raise NotFoundError(f"{location}: within_mask=True needs a tissue mask of {tissue!r}; it has none")
            mask_path = cohort.mask_level_path("tissue_masks", tissue, name)
            mask_digest = cohort.content_digest("tissue_masks", tissue, name)
        tasks.append(
            HistogramTask(
                histogram_path(modality, name, tissue, within_mask),
                f"{modality}/{tissue}",
                tissue,
                cohort.level_path(modality, tissue, name),
                mask_path,
                tuple(cohort.channel_names(modality, tissue)),
                (cohort.content_digest(modality, tissue, name), mask_digest),
            )
        )
    work = functools.partial(histogram_work, location=location, overwrite=overwrite, block=block)
    outcome = run_tasks(tasks, work, run or RunOptions(), noun="tissue histograms")
    report = StandardizeReport(outcome.outcomes)
    if not outcome.ok:
        return report
    histograms = {t.tissue_id: read_histograms(location, t.path) for t in tasks}
    for task in tasks:
        left_out = {name: h.left_out for name, h in histograms[task.tissue_id].items() if h.left_out}
        if left_out:
            report.left_out[task.tissue_id] = left_out
            listed = ", ".join(f"{name} {n:,}" for name, n in left_out.items())
            total = sum(left_out.values())
            log.warning(
                "%s: %s NaN or infinite value(s) left out of the statistics (%s)", location.join(task.level_path), f"{total:,}", listed
            )
    exact = all(h.exact for hs in histograms.values() for h in hs.values())
    digests = {t.tissue_id: list(t.digests) for t in tasks}  # what validate --deep and the datasets check the groups against
    for spec in parsed:
        table = derive_statistics(histograms, spec)
        record = {"spec": spec.name, "modality": modality, "resolution": name, "within_mask": within_mask, "tissues": ids, "exact": exact}
        meta = json.dumps({**record, "content_digests": digests}).encode()
        write_table(location, stats_path(modality, name, spec.name), table.replace_schema_metadata({STANDARDIZATION_META_KEY: meta}))
        report.specs.append(spec.name)
    return report


# -- reading statistics back ---------------------------------------------------------------
def available_specs(
    store: str | Location, modality: str, resolution: ResolutionLike, storage_options: dict[str, Any] | None = None
) -> list[str]:
    """Specs with a ``stats.parquet`` for this modality and resolution (``method/suffix`` names)."""
    location = Location.parse(store, storage_options)
    base = standardization_dir(modality, resolution, "")
    fs = location.fs()
    root = location.fs_path(base).rstrip("/")
    try:
        found = fs.glob(f"{root}/*/*/{STATS_FILE}")
    except (FileNotFoundError, OSError):
        return []
    names = ["/".join(str(p).rstrip("/").split("/")[-3:-1]) for p in found]
    return sorted(n for n in names if not n.startswith(HISTOGRAMS_DIR))


def statistics_digests(table: pa.Table, where: str) -> tuple[bool, dict[str, tuple[Any, Any]]]:
    """Whether a spec's statistics ``table`` (:func:`statistics_table`; ``where`` names it) counted within the mask, and
    the content digests of each tissue's image and mask levels it was computed from (none for a table written before
    the digests were recorded)."""
    from ..store.tables import footer_record, standardization_digests

    record = footer_record(table.schema.metadata, STANDARDIZATION_META_KEY, where)
    return bool(record.get("within_mask")), standardization_digests(record)


def read_statistics(
    store: str | Location, modality: str, resolution: ResolutionLike, spec: str, storage_options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """A spec's statistics as a DataFrame; ``NotFoundError`` listing the specs present and the command otherwise."""
    return statistics_table(store, modality, resolution, spec, storage_options).to_pandas()


def statistics_table(
    store: str | Location, modality: str, resolution: ResolutionLike, spec: str, storage_options: dict[str, Any] | None = None
) -> pa.Table:
    """A spec's ``stats.parquet`` with its footer record; ``NotFoundError`` as :func:`read_statistics`'s."""
    parsed = parse_spec(spec)
    location = Location.parse(store, storage_options)
    path = stats_path(modality, resolution, parsed.name)
    if not table_exists(location, path):
        present = available_specs(location, modality, resolution)
        raise NotFoundError(
            f"{location}: no standardization statistics {parsed.name!r} for {modality_dir(modality)} at {parse_resolution(resolution)} "
            f"(present: {', '.join(present) or 'none'}); compute them with: {command_hint(location, modality, resolution, parsed.name)}"
        )
    return read_table(location, path)
