"""Convert a spora TIFF cohort into one cohort store, resumably, in parallel or on dask.distributed.

The cohort is scanned and checked first (tables, tissue ids, directory names);
a problem there stops the run before anything is written. Then each image of
a modality for one tissue, and each mask, is one task. A task that fails is
reported with its file and reason; the other tasks finish; complete groups are
never touched by a later failure. See ``docs/conversion.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import multiprocessing

from ..store.staging import Staging
from ..store.location import Location
from ..errors import InvalidInputError, SporaZarrError
from ..store.layout import (
    FORMAT_VERSION,
    IHC_PREFIX,
    MASK_KINDS,
    TISSUES_TABLE,
    channels_per_tissue_table_path,
    image_group_path,
    is_resolution_name,
    label_group_path,
    resolution_name,
    resolution_value,
    validate_tissue_id,
)
from ..sources import RASTER_SUFFIXES, TIFF_SUFFIXES, ImageSource, open_source
from ..write.writer import WriteOptions, WriteResult, write_image, write_labels

log = logging.getLogger("spora_zarr")

RESERVED_TOP = ("metadata", "segmentations", "tiling")
RGB_MODALITIES = ("he", "ihc")


# -- the plan -----------------------------------------------------------------
@dataclass(frozen=True)
class ImageTask:
    """One tissue image of one modality: its source file per resolution."""

    modality: str
    tissue_id: str
    files: tuple[tuple[float, str], ...]
    channel_names: tuple[str, ...] | None = None

    @property
    def path(self) -> str:
        return image_group_path(self.modality, self.tissue_id)

    @property
    def label(self) -> str:
        return f"{self.modality} {self.tissue_id}"


@dataclass(frozen=True)
class MaskTask:
    """One tissue mask of one kind, with the images whose shape it must match."""

    kind: str
    tissue_id: str
    files: tuple[tuple[float, str], ...]
    images: tuple[tuple[float, str], ...] = ()
    source_image: str | None = None

    @property
    def path(self) -> str:
        return label_group_path(self.kind, self.tissue_id)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.tissue_id}"


Task = ImageTask | MaskTask


@dataclass
class CohortPlan:
    """Everything a conversion will do, found by scanning the source cohort."""

    source: Location
    tissue_ids: list[str]
    tasks: list[Task]
    tables: list[str]
    modalities: dict[str, list[str]]


@dataclass
class TaskOutcome:
    """The result of one task: written, skipped (already complete) or failed with a one-line reason."""

    path: str
    label: str
    skipped: bool = False
    error: str | None = None
    bytes_read: int = 0


@dataclass
class ConversionReport:
    """What a conversion did, task by task."""

    outcomes: list[TaskOutcome] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.error]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        written = sum(1 for o in self.outcomes if not o.error and not o.skipped)
        skipped = sum(1 for o in self.outcomes if o.skipped)
        lines = [f"{written} groups written, {skipped} already complete, {len(self.failed)} failed, {len(self.tables)} tables copied"]
        lines += [f"FAILED {o.label}: {o.error}" for o in self.failed]
        return "\n".join(lines)


def scan_cohort(source: Location | str, storage_options: dict[str, Any] | None = None) -> CohortPlan:
    """Scan a spora TIFF cohort and check it; raise ``InvalidInputError`` on a cohort-level problem."""
    src = Location.parse(source, storage_options)
    fs = src.fs()
    if not fs.isdir(src.fs_path()):
        raise InvalidInputError(f"{src}: source cohort directory not found")
    tissue_ids = _read_tissue_ids(src)
    known = set(tissue_ids)
    files = _list_files(src)
    tables = sorted(f for f in files if f.endswith(".parquet") and ".zarr/" not in f)

    images: dict[tuple[str, str], dict[float, str]] = {}
    masks: dict[tuple[str, str], dict[float, str]] = {}
    for rel in files:
        parts = rel.split("/")
        found = _classify(src, rel, parts)
        if found is None:
            continue
        group, key_name, res, tissue_id = found
        validate_tissue_id(tissue_id, source=src.join(rel))
        if tissue_id not in known:
            raise InvalidInputError(f"{src.join(rel)}: tissue {tissue_id!r} is not listed in {TISSUES_TABLE}")
        target = masks if group == "mask" else images
        per_res = target.setdefault((key_name, tissue_id), {})
        mpp = resolution_value(res)
        if mpp in per_res:
            raise InvalidInputError(f"{src.join(rel)}: duplicate tissue id {tissue_id!r} (also {per_res[mpp]})")
        per_res[mpp] = src.join(rel)

    channel_tables = {m: _read_channels_per_tissue(src, m) for m in {m for m, _ in images}}
    tasks: list[Task] = []
    for (modality, tissue_id), per_res in sorted(images.items()):
        names = channel_tables[modality].get(tissue_id, []) if channel_tables[modality] is not None else None
        tasks.append(ImageTask(modality, tissue_id, tuple(sorted(per_res.items())), tuple(names) if names is not None else None))
    for (kind, tissue_id), per_res in sorted(masks.items()):
        related = tuple(sorted((mpp, path) for (m, t), res in images.items() if t == tissue_id for mpp, path in res.items() if mpp in per_res))
        source_image = next((f"../../../{image_group_path(m, t)}" for (m, t) in sorted(images) if t == tissue_id), None)
        tasks.append(MaskTask(kind, tissue_id, tuple(sorted(per_res.items())), related, source_image))
    modalities: dict[str, list[str]] = {}
    for (modality, _), per_res in images.items():
        modalities.setdefault(modality, [])
        modalities[modality] = sorted({*modalities[modality], *map(resolution_name, per_res)}, key=resolution_value)
    return CohortPlan(src, tissue_ids, tasks, tables, dict(sorted(modalities.items())))


def _list_files(src: Location) -> list[str]:
    """All files below the source root (a legacy ``.zarr`` array counts as one file), relative paths."""
    fs = src.fs()
    root = src.fs_path()
    found = set()
    for path in fs.find(root, withdirs=True):
        rel = path[len(root):].strip("/")
        if not rel or any(p.startswith(".") for p in rel.split("/")):
            continue
        if ".zarr/" in rel + "/" :
            head = rel[: rel.index(".zarr") + len(".zarr")]
            found.add(head)
            continue
        if not fs.isdir(path):
            found.add(rel)
    return sorted(found)


def _classify(src: Location, rel: str, parts: list[str]) -> tuple[str, str, str, str] | None:
    """``("image"|"mask", modality or kind, resolution name, tissue id)`` for an image file, else ``None``."""
    name = parts[-1]
    lower = name.lower()
    is_image = lower.endswith(TIFF_SUFFIXES + RASTER_SUFFIXES) or lower.endswith(".zarr")
    if not is_image:
        return None
    tissue_id = name[: name.rfind(".")] if not lower.endswith(".zarr") else name[: -len(".zarr")]
    where = src.join(rel)
    if parts[0] == "segmentations":
        if len(parts) == 4 and parts[2] in MASK_KINDS:
            _check_resolution_dir(parts[1], src.join(*parts[:2]))
            return "mask", parts[2], parts[1], tissue_id
        raise InvalidInputError(f"{where}: masks belong in segmentations/<res>/{{{','.join(MASK_KINDS)}}}/<tissue_id>.tif")
    if parts[0] in RESERVED_TOP:
        return None
    modality_parts = parts[:2] if parts[0] == "ihc" and len(parts) > 1 and parts[1].startswith(IHC_PREFIX) else parts[:1]
    rest = parts[len(modality_parts):]
    modality = "/".join(modality_parts)
    if len(rest) == 3 and rest[1] == "images":
        _check_resolution_dir(rest[0], src.join(modality, rest[0]))
        return "image", modality, rest[0], tissue_id
    if len(rest) == 2 and lower.endswith(".zarr"):
        _check_resolution_dir(rest[0], src.join(modality, rest[0]))
        return "image", modality, rest[0], tissue_id
    if "images" in rest:
        raise InvalidInputError(f"{where}: images belong in <modality>/<res>/images/<tissue_id>.tif")
    return None


def _check_resolution_dir(name: str, where: str) -> None:
    if not is_resolution_name(name):
        raise InvalidInputError(f"{where}: {name!r} is not a resolution directory name (expected e.g. '1_0mpp' or '0_65mpp')")


def _read_table(src: Location, rel: str) -> Any:
    import pyarrow.parquet as pq

    try:
        with src.fs().open(src.fs_path(rel), "rb") as handle:
            return pq.read_table(handle)
    except FileNotFoundError:
        raise InvalidInputError(f"{src.join(rel)}: required table is missing") from None
    except Exception as exc:
        raise InvalidInputError(f"{src.join(rel)}: unreadable parquet table ({str(exc).splitlines()[0][:200]})") from None


def _read_tissue_ids(src: Location) -> list[str]:
    table = _read_table(src, TISSUES_TABLE)
    where = src.join(TISSUES_TABLE)
    if "tissue_id" not in table.column_names:
        raise InvalidInputError(f"{where}: no 'tissue_id' column (columns: {', '.join(table.column_names)})")
    ids = table.column("tissue_id").to_pylist()
    seen: set[str] = set()
    for tissue_id in ids:
        validate_tissue_id(tissue_id, source=where)
        if tissue_id in seen:
            raise InvalidInputError(f"{where}: duplicate tissue id {tissue_id!r}")
        seen.add(tissue_id)
    return ids


def _read_channels_per_tissue(src: Location, modality: str) -> dict[str, list[str]] | None:
    rel = channels_per_tissue_table_path(modality)
    if not src.fs().exists(src.fs_path(rel)):
        return None
    table = _read_table(src, rel)
    missing = {"tissue_id", "channel_name"} - set(table.column_names)
    if missing:
        raise InvalidInputError(f"{src.join(rel)}: missing column(s) {', '.join(sorted(missing))}")
    per_tissue: dict[str, list[str]] = {}
    for tissue_id, channel in zip(table.column("tissue_id").to_pylist(), table.column("channel_name").to_pylist()):
        per_tissue.setdefault(tissue_id, []).append(channel)
    return per_tissue


# -- running one task -------------------------------------------------------------
def run_task(
    task: Task,
    dest: Location,
    source: Location,
    options: WriteOptions | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> TaskOutcome:
    """Convert one task; never raises for bad input (the outcome carries the one-line error)."""
    fs = None if source.is_local else source.fs()
    opened: list[Any] = []

    def open_(path: str) -> ImageSource:
        src = open_source(path if fs is None else path.split("://", 1)[1], fs)
        opened.append(src)
        return src

    if not overwrite and Staging(dest).is_complete(task.path):
        return TaskOutcome(task.path, task.label, skipped=True)  # resume: no source is opened
    try:
        if isinstance(task, ImageTask):
            result = _run_image(task, dest, open_, options, overwrite, progress)
        else:
            result = _run_mask(task, dest, open_, options, overwrite, progress)
        return TaskOutcome(task.path, task.label, skipped=result.skipped, bytes_read=result.bytes_read)
    except SporaZarrError as exc:
        return TaskOutcome(task.path, task.label, error=str(exc))
    finally:
        for src in opened:
            close = getattr(src, "close", None)
            if close:
                close()


def _run_image(task: ImageTask, dest: Location, open_: Callable[[str], ImageSource], options: WriteOptions | None, overwrite: bool, progress: Any) -> WriteResult:
    sources = {mpp: open_(path) for mpp, path in task.files}
    first_mpp = min(sources)
    first = sources[first_mpp]
    info = getattr(first, "info", None)
    if task.channel_names == ():
        table = channels_per_tissue_table_path(task.modality)
        raise InvalidInputError(f"{first.name}: tissue {task.tissue_id!r} has no rows in {table}")
    names = list(task.channel_names) if task.channel_names is not None else None
    rgb = bool(info and info.is_rgb) or (task.modality.split("/")[0] in RGB_MODALITIES and first.shape[0] == 3 and first.dtype.itemsize == 1)
    if names is None:
        names = list(info.channel_names) if info and info.channel_names else (["red", "green", "blue"] if rgb else None)
    for src in sources.values():
        if names is not None and src.shape[0] != len(names):
            table = channels_per_tissue_table_path(task.modality) if task.channel_names is not None else "its channel names"
            raise InvalidInputError(f"{src.name}: {src.shape[0]} channels but {table} lists {len(names)} for tissue {task.tissue_id!r}")
    spora = {"tissue_id": task.tissue_id, "modality": task.modality}
    return write_image(dest, task.path, sources, channel_names=names, rgb=rgb, spora=spora, options=options, overwrite=overwrite, progress=progress)


def _run_mask(task: MaskTask, dest: Location, open_: Callable[[str], ImageSource], options: WriteOptions | None, overwrite: bool, progress: Any) -> WriteResult:
    sources = {mpp: open_(path) for mpp, path in task.files}
    for mpp, image_path in task.images:
        image = open_(image_path)
        mask = sources[mpp]
        if mask.shape[1:] != image.shape[1:]:
            raise InvalidInputError(f"{mask.name}: mask shape {mask.shape[1:]} does not match image {image.name} shape {image.shape[1:]}")
    spora = {"tissue_id": task.tissue_id, "mask_kind": task.kind}
    return write_labels(dest, task.path, sources, source_image=task.source_image, spora=spora, options=options, overwrite=overwrite, progress=progress)


# -- running a cohort -------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """How a conversion runs: parallelism, scheduler and what to redo."""

    workers: int = 1
    scheduler: str | None = None
    overwrite: bool = False
    progress: bool = True
    write: WriteOptions = field(default_factory=WriteOptions)


def convert_cohort(
    source: str | Location,
    dest: str | Location,
    options: ConvertOptions | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
) -> ConversionReport:
    """Convert the spora TIFF cohort at ``source`` into the cohort store ``dest``.

    ``scheduler`` is ``None`` (this machine, ``workers`` processes), ``"local"``
    (a dask ``LocalCluster`` of ``workers`` processes) or a ``tcp://`` address.
    """
    options = options or ConvertOptions()
    plan = scan_cohort(source, source_storage_options)
    dst = Location.parse(dest, storage_options)
    staging = Staging(dst)
    staging.ensure_groups("", _root_attributes(plan))
    staging.recover()
    report = ConversionReport()
    report.tables = _copy_tables(plan, dst, staging, options.overwrite)
    for group in {posixpath.dirname(t.path) for t in plan.tasks}:
        staging.ensure_groups(group)
    write = options.write
    if options.workers > 1 and write.codec_threads is None:
        write = dataclasses.replace(write, codec_threads=max(1, (os.cpu_count() or 1) // options.workers))
    runner = _run_distributed if options.scheduler else (_run_processes if options.workers > 1 else _run_serial)
    report.outcomes = runner(plan, dst, write, options)
    staging.write_group_document("", _root_attributes(plan))
    staging.recover()
    return report


def _root_attributes(plan: CohortPlan) -> dict[str, Any]:
    return {
        "spora": {
            "format_version": FORMAT_VERSION,
            "modalities": plan.modalities,
            "mask_kinds": sorted({t.kind for t in plan.tasks if isinstance(t, MaskTask)}),
        }
    }


def _copy_tables(plan: CohortPlan, dst: Location, staging: Staging, overwrite: bool) -> list[str]:
    """Copy every parquet table byte for byte to the same relative path; each appears whole."""
    copied = []
    src_fs, dst_fs = plan.source.fs(), dst.fs()
    for rel in plan.tables:
        data = src_fs.cat_file(plan.source.fs_path(rel))
        target = dst.fs_path(rel)
        if not overwrite and dst_fs.exists(target) and dst_fs.size(target) == len(data) and dst_fs.cat_file(target) == data:
            continue
        _read_table(plan.source, rel)  # refuse to copy a file that is not a readable parquet table
        staging.write_file(rel, data)
        copied.append(rel)
    return copied


def _progress_bar(total: int, enabled: bool, desc: str, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="group", **kwargs)


def _tissue_bar(task: Task, enabled: bool, position: int = 1) -> Any:
    from tqdm.auto import tqdm

    return tqdm(desc=task.label, disable=not enabled, unit="B", unit_scale=True, leave=False, position=position)


def _run_serial(plan: CohortPlan, dst: Location, write: WriteOptions, options: ConvertOptions) -> list[TaskOutcome]:
    outcomes = []
    with _progress_bar(len(plan.tasks), options.progress, "cohort") as bar:
        for task in plan.tasks:
            with _tissue_bar(task, options.progress) as tissue:
                outcomes.append(run_task(task, dst, plan.source, write, options.overwrite, tissue.update))
            _report(outcomes[-1])
            bar.update()
    return outcomes


def _worker_init(threads: int | None) -> None:
    if threads:
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        os.environ.setdefault("BLOSC_NTHREADS", str(threads))


def _run_task_in_worker(task: Task, dst: Location, source: Location, write: WriteOptions, overwrite: bool, progress: bool) -> TaskOutcome:
    position = (os.getpid() % 8) + 1
    with _tissue_bar(task, progress, position) as tissue:
        return run_task(task, dst, source, write, overwrite, tissue.update)


def _run_processes(plan: CohortPlan, dst: Location, write: WriteOptions, options: ConvertOptions) -> list[TaskOutcome]:
    context = multiprocessing.get_context("spawn")  # no fork: codec thread pools do not survive it
    outcomes = []
    with ProcessPoolExecutor(options.workers, mp_context=context, initializer=_worker_init, initargs=(write.codec_threads,)) as pool:
        futures = [pool.submit(_run_task_in_worker, t, dst, plan.source, write, options.overwrite, options.progress) for t in plan.tasks]
        with _progress_bar(len(futures), options.progress, "cohort", position=0) as bar:
            for future in as_completed(futures):
                outcomes.append(future.result())
                _report(outcomes[-1])
                bar.update()
    return _in_plan_order(plan, outcomes)


def _run_distributed(plan: CohortPlan, dst: Location, write: WriteOptions, options: ConvertOptions) -> list[TaskOutcome]:
    try:
        from distributed import Client, LocalCluster, as_completed as dask_completed
    except ImportError:
        raise SporaZarrError("--scheduler/--cluster need dask.distributed: pip install 'spora_zarr[distributed]'") from None
    cluster = None
    if options.scheduler == "local":
        cluster = LocalCluster(n_workers=max(2, options.workers), threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(options.scheduler)
    outcomes = []
    try:
        futures = [
            client.submit(run_task, t, dst, plan.source, write, options.overwrite, None, key=f"spora-{t.path}-{i}", pure=False)
            for i, t in enumerate(plan.tasks)
        ]
        with _progress_bar(len(futures), options.progress, "cohort") as bar:
            for future in dask_completed(futures):
                outcomes.append(future.result())
                _report(outcomes[-1])
                bar.update()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return _in_plan_order(plan, outcomes)


def _in_plan_order(plan: CohortPlan, outcomes: Iterable[TaskOutcome]) -> list[TaskOutcome]:
    order = {t.path: i for i, t in enumerate(plan.tasks)}
    return sorted(outcomes, key=lambda o: order[o.path])


def _report(outcome: TaskOutcome) -> None:
    if outcome.error:
        log.error("%s", outcome.error)
    else:
        log.info("%s %s", "kept" if outcome.skipped else "wrote", outcome.path)


# -- adding one image ---------------------------------------------------------------
def add_image(
    dest: str | Location,
    path: str,
    *,
    modality: str,
    tissue_id: str,
    mpp: float | None = None,
    channel_names: Sequence[str] | None = None,
    options: WriteOptions | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> WriteResult:
    """Add one image file as ``<modality>/images/<tissue_id>``; create the store if needed.

    OME-TIFF channel names and pixel size are read from the file; other files
    need ``mpp``.
    """
    validate_tissue_id(tissue_id, source=path)
    dst = Location.parse(dest, storage_options)
    source = open_source(path)
    try:
        info = getattr(source, "info", None)
        file_mpp = info.mpp if info else None
        resolution = mpp if mpp is not None else file_mpp
        if resolution is None:
            raise InvalidInputError(f"{path}: the file does not record its pixel size; pass --mpp")
        names = list(channel_names) if channel_names else (list(info.channel_names) if info and info.channel_names else None)
        if names is not None and len(names) != source.shape[0]:
            raise InvalidInputError(f"{path}: {source.shape[0]} channels but {len(names)} channel names given")
        rgb = bool(info and info.is_rgb)
        if names is None and rgb:
            names = ["red", "green", "blue"]
        staging = Staging(dst)
        root = staging.read_attributes("")
        staging.ensure_groups("", {"spora": {"format_version": FORMAT_VERSION, "modalities": {}, "mask_kinds": []}})
        staging.recover()
        target = image_group_path(modality, tissue_id)
        staging.ensure_groups(posixpath.dirname(target))
        result = write_image(
            dst, target, {resolution_value(resolution): source}, channel_names=names, rgb=rgb,
            spora={"tissue_id": tissue_id, "modality": modality}, options=options, overwrite=overwrite,
        )
        attributes = staging.read_attributes("") or root or {}
        spora = attributes.setdefault("spora", {"format_version": FORMAT_VERSION})
        modalities = spora.setdefault("modalities", {})
        levels = modalities.setdefault(modality, [])
        name = resolution_name(resolution)
        if name not in levels:
            modalities[modality] = sorted([*levels, name], key=resolution_value)
        staging.write_group_document("", attributes)
        return result
    finally:
        close = getattr(source, "close", None)
        if close:
            close()
