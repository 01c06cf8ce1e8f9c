"""Convert a spora TIFF cohort into one cohort store, resumably, through the one runner.

The cohort is scanned and checked first (:mod:`.scan`); a problem there stops
the run before anything is written. Tables are copied, then each image of a
modality for one tissue, and each mask, is one task run by
:mod:`.runner` (serially, in worker processes or on dask.distributed). A task
that fails is reported with its file and reason; the other tasks finish;
complete groups are never touched by a later failure. See ``docs/conversion.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import posixpath
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError
from ..read.cohort import open_cohort
from ..run import RunOptions, RunReport, run_tasks
from ..store.guard import check_destination
from ..store.layout import channels_per_tissue_table_path
from ..store.location import Location
from ..store.lock import writes_store
from ..store.metadata import is_cohort_store, update_cohort_attributes
from ..store.staging import Staging
from ..store.tables import channel_table_updates, listed_channels, write_table
from ..write.options import WriteOptions
from .scan import CohortPlan, ImageTask, MaskTask, read_table, scan_cohort
from .tasks import RGB_MODALITIES, run_task

__all__ = ["ConversionReport", "ConvertOptions", "convert_cohort"]


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """What a conversion redoes (``overwrite``).

    ``workers``, ``scheduler``, ``progress`` and ``write`` are the spelling of
    earlier releases, kept working: :func:`convert_cohort` takes them as
    ``run=`` :class:`~spora_zarr.run.RunOptions` and ``write=``
    :class:`~spora_zarr.write.options.WriteOptions` like every verb; giving
    both spellings is refused.
    """

    workers: int | None = None
    scheduler: str | None = None
    overwrite: bool = False
    progress: bool | None = None
    write: WriteOptions | None = None

    def __post_init__(self) -> None:
        self.run_options()  # refuses impossible worker counts and scheduler addresses up front

    def run_options(self) -> RunOptions:
        """The run options these fields give (the defaults where they are unset)."""
        progress = True if self.progress is None else self.progress
        return RunOptions(workers=1 if self.workers is None else self.workers, scheduler=self.scheduler, progress=progress)

    def resolved(self, write: WriteOptions | None, run: RunOptions | None) -> tuple[WriteOptions, RunOptions]:
        """The write and run options of a conversion from ``write=``/``run=`` or these fields; ``InvalidInputError`` for both."""
        if write is not None and self.write is not None:
            raise InvalidInputError("write= and options.write both given; give write= only")
        legacy = [name for name in ("workers", "scheduler", "progress") if getattr(self, name) is not None]
        if run is not None and legacy:
            raise InvalidInputError(f"run= and options.{legacy[0]} both given; give run= only")
        return write or self.write or WriteOptions(), run or self.run_options()


@dataclass
class ConversionReport(RunReport):
    """What a conversion did, task by task, and the tables it copied."""

    tables: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    made: list[str] = field(default_factory=list)  # channel tables made from the images (the source had none)

    def summary(self, noun: str = "groups") -> str:
        head, *failures = super().summary(noun).split("\n")
        made = f", {len(self.made)} channel tables made from the images' channel names" if self.made else ""
        skipped = f", {len(self.skipped)} files skipped (not in the layout)" if self.skipped else ""
        return "\n".join([f"{head}, {len(self.tables)} tables copied{made}{skipped}", *failures])


@writes_store("convert", "dest")
def convert_cohort(
    source: str | Location,
    dest: str | Location,
    options: ConvertOptions | None = None,
    *,
    write: WriteOptions | None = None,
    run: RunOptions | None = None,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
) -> ConversionReport:
    """Convert the spora TIFF cohort at ``source`` into the cohort store ``dest`` (created or extended).

    What the store already holds stays: complete groups are kept (redone with
    ``overwrite``) and the root attributes gain this cohort's modalities and
    mask kinds, keeping those added before (by another conversion or
    ``add-image``). ``dest`` may not be ``source`` or inside it; a folder that
    is not a store and holds files is refused unless ``overwrite`` (its files
    are kept: only groups and tables spora_zarr wrote are ever replaced).
    ``write`` sets the array layout, ``run`` where the tasks run.
    """
    options = options or ConvertOptions()
    write, run = options.resolved(write, run)
    plan = scan_cohort(source, source_storage_options)
    dst = Location.parse(dest, storage_options)
    staging = Staging(dst)
    claimed = [*plan.tables, *(t.path for t in plan.tasks)]
    check_destination(dst, overwrite=options.overwrite, source=plan.source, is_store=is_cohort_store(dst), claimed=claimed)
    _record_plan(dst, plan)
    staging.recover()
    tables = _copy_tables(plan, dst, staging, options.overwrite)
    for group in {posixpath.dirname(t.path) for t in plan.tasks}:
        staging.ensure_groups(group)
    if run.workers > 1 and write.codec_threads is None:
        write = dataclasses.replace(write, codec_threads=run.codec_threads)
    work = functools.partial(run_task, dest=dst, source=plan.source, options=write, overwrite=options.overwrite)
    report = run_tasks(plan.tasks, work, run)
    _record_plan(dst, plan)  # again: a store rewritten meanwhile (another add-image) keeps both
    made = _channel_tables(plan, dst, {o.path for o in report.outcomes if not o.skipped and not o.error})
    staging.recover()
    return ConversionReport(report.outcomes, tables, plan.skipped, made)


def _channel_tables(plan: CohortPlan, dst: Location, written: set[str]) -> list[str]:
    """The channel tables of each multiplex modality whose source has none, made (or extended) from the converted
    groups' channel names as ``add-image`` makes them: the datasets read a modality's channels from them. Only the
    groups ``written`` now and the tissues the tables do not list yet are read (a rerun of a large cohort reads none).
    """
    tissues: dict[str, list[str]] = {}
    for task in plan.tasks:
        if not isinstance(task, ImageTask) or task.modality.split("/")[0] in RGB_MODALITIES:
            continue
        if channels_per_tissue_table_path(task.modality) not in plan.tables:
            tissues.setdefault(task.modality, []).append(task.tissue_id)
    if not tissues:
        return []
    made, cohort = [], open_cohort(dst)
    for modality, ids in sorted(tissues.items()):
        listed = listed_channels(dst, modality)
        wanted = [t for t in ids if t not in listed or cohort.group_path(modality, t) in written]
        names = {t: cohort.channel_names(modality, t) for t in wanted if cohort.has_tissue(modality, t)}  # not a failed one
        for rel, table in channel_table_updates(dst, modality, names).items():
            write_table(dst, rel, table)
            made.append(rel)
    return made


def _record_plan(dst: Location, plan: CohortPlan) -> None:
    mask_kinds = {t.kind for t in plan.tasks if isinstance(t, MaskTask)}
    update_cohort_attributes(dst, modalities=plan.modalities, mask_kinds=mask_kinds)


def _copy_tables(plan: CohortPlan, dst: Location, staging: Staging, overwrite: bool) -> list[str]:
    """Copy every parquet table byte for byte to the same relative path; each appears whole."""
    copied = []
    src_fs, dst_fs = plan.source.fs(), dst.fs()
    for rel in plan.tables:
        data = src_fs.cat_file(plan.source.fs_path(rel))
        target = dst.fs_path(rel)
        if not overwrite and dst_fs.exists(target) and dst_fs.size(target) == len(data) and dst_fs.cat_file(target) == data:
            continue
        read_table(plan.source, rel)  # refuse to copy a file that is not a readable parquet table
        staging.write_file(rel, data)
        copied.append(rel)
    return copied
