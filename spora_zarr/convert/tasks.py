"""Convert one task of a plan: its source files opened as sources and fed to the one writer."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

from ..errors import InvalidInputError
from ..run import ProgressCallback, TaskOutcome
from ..sources import ImageSource, open_source
from ..store.layout import channels_per_tissue_table_path
from ..store.location import Location
from ..store.staging import Staging
from ..write.options import WriteOptions
from ..write.writer import WriteResult, write_image, write_labels
from .scan import ImageTask, MaskTask, Task

RGB_MODALITIES = ("he", "ihc")


def run_task(
    task: Task,
    progress: ProgressCallback | None = None,
    *,
    dest: Location,
    source: Location,
    options: WriteOptions | None = None,
    overwrite: bool = False,
) -> TaskOutcome:
    """Convert one task (the runner's ``work``); ``skipped`` when its group is already complete.

    Bad input raises :class:`~spora_zarr.errors.InvalidInputError` naming the
    file; the runner records it as the task's failure.
    """
    if not overwrite and Staging(dest).is_complete(task.path):
        return TaskOutcome(task.path, task.label, skipped=True)  # resume: no source is opened
    fs = None if source.is_local else source.fs()
    with ExitStack() as stack:

        def open_(path: str) -> ImageSource:
            return stack.enter_context(open_source(path if fs is None else path.split("://", 1)[1], fs))

        if isinstance(task, ImageTask):
            result = _run_image(task, dest, open_, options, overwrite, progress)
        else:
            result = _run_mask(task, dest, open_, options, overwrite, progress)
    return TaskOutcome(task.path, task.label, skipped=result.skipped, bytes_read=result.bytes_read)


def _run_image(
    task: ImageTask,
    dest: Location,
    open_: Callable[[str], ImageSource],
    options: WriteOptions | None,
    overwrite: bool,
    progress: ProgressCallback | None,
) -> WriteResult:
    sources = {mpp: open_(path) for mpp, path in task.files}
    first_mpp = min(sources)
    first = sources[first_mpp]
    info = getattr(first, "info", None)
    if task.channel_names == ():
        table = channels_per_tissue_table_path(task.modality)
        raise InvalidInputError(f"{first.name}: tissue {task.tissue_id!r} has no rows in {table}")
    names = list(task.channel_names) if task.channel_names is not None else None
    rgb = bool(info and info.is_rgb) or (
        task.modality.split("/")[0] in RGB_MODALITIES and first.shape[0] == 3 and first.dtype.itemsize == 1
    )
    if names is None:
        names = list(info.channel_names) if info and info.channel_names else (["red", "green", "blue"] if rgb else None)
    for src in sources.values():
        if names is not None and src.shape[0] != len(names):
            table = channels_per_tissue_table_path(task.modality) if task.channel_names is not None else "its channel names"
            raise InvalidInputError(f"{src.name}: {src.shape[0]} channels but {table} lists {len(names)} for tissue {task.tissue_id!r}")
    spora = {"tissue_id": task.tissue_id, "modality": task.modality}
    return write_image(
        dest,
        task.path,
        sources,
        channel_names=names,
        rgb=rgb,
        panel=task.panel,
        spora=spora,
        options=options,
        overwrite=overwrite,
        progress=progress,
    )


def _run_mask(
    task: MaskTask,
    dest: Location,
    open_: Callable[[str], ImageSource],
    options: WriteOptions | None,
    overwrite: bool,
    progress: ProgressCallback | None,
) -> WriteResult:
    sources = {mpp: open_(path) for mpp, path in task.files}
    for mpp, image_path in task.images:
        image = open_(image_path)
        mask = sources[mpp]
        if mask.shape[1:] != image.shape[1:]:
            raise InvalidInputError(f"{mask.name}: mask shape {mask.shape[1:]} does not match image {image.name} shape {image.shape[1:]}")
    spora = {"tissue_id": task.tissue_id, "mask_kind": task.kind}
    return write_labels(
        dest, task.path, sources, source_image=task.source_image, spora=spora, options=options, overwrite=overwrite, progress=progress
    )
