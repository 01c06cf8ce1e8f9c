"""Whole-tissue prediction written back into the store (``spora-zarr predict``).

:func:`predict_tissue` runs a model over one tissue of a dataset and writes the
prediction through the one writer (:func:`~spora_zarr.write.writer.write_image`
or :func:`~spora_zarr.write.writer.write_labels`) from a
:class:`~spora_zarr.inference.source.PredictionSource`: streaming, with a
pyramid, staged (visible only when complete) and validated metadata.

- images: ``predictions/<name>/images/<tissue_id>``, float32, one channel per
  model output channel; ``predictions/<name>`` is recorded as a modality in the
  root attributes and gets ``channels.parquet`` / ``channels_per_tissue.parquet``,
  so ``open_cohort(...).open_image("predictions/<name>", tissue)`` and
  ``MultiplexImagingDataset(..., modality="predictions/<name>")`` read it.
- labels: ``segmentations/<name>/<tissue_id>``, label-preserving pyramid;
  ``<name>`` is recorded in the root's ``mask_kinds`` so the cohort reads it as
  a mask kind.

:func:`predict_cohort` runs one task per tissue through the one runner
(:func:`~spora_zarr.run.runner.run_tasks`): workers, dask.distributed, a
failure summary, and resume (a tissue whose group is complete is skipped).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..access.resolution import Resolution, ResolutionLike, parse_resolution
from ..errors import InvalidInputError, NotFoundError
from ..process import PerProcess
from ..store.defaults import PREDICTION_MEMORY_BUDGET
from ..store.layout import (
    IHC_PREFIX,
    MASK_KINDS,
    channels_per_tissue_table_path,
    channels_table_path,
    image_group_path,
    label_group_path,
    prediction_dir,
    validate_name,
    validate_tissue_id,
)
from ..store.location import Location
from ..store.lock import writes_store
from ..tiling.patching import check_tiling
from ..write.options import WriteOptions
from ..write.writer import WriteResult
from .models import Model, load_model, model_channel_names, model_digest, model_label
from .source import MODES, InputWindows, PredictionSource

if TYPE_CHECKING:
    from ..access.tissue import TissueSource
    from ..datasets import BaseImagingDataset
    from ..run import ProgressCallback, RunOptions, RunReport, TaskOutcome

__all__ = [
    "PREDICTION_MEMORY_BUDGET",
    "PredictOptions",
    "PredictTask",
    "PredictTissueOptions",
    "make_dataset",
    "output_path",
    "predict_cohort",
    "predict_tissue",
    "prediction_write_options",
]


def prediction_write_options() -> WriteOptions:
    """The writer options of a prediction when none are given: the defaults with :data:`PREDICTION_MEMORY_BUDGET`."""
    return WriteOptions(memory_budget=PREDICTION_MEMORY_BUDGET)


def output_path(name: str, tissue_id: str, *, labels: bool = False) -> str:
    """Store path of a tissue's prediction: ``predictions/<name>/images/<id>`` or ``segmentations/<name>/<id>``."""
    if labels:
        if name in MASK_KINDS:
            raise InvalidInputError(f"prediction name {name!r} is a mask kind of the converter; choose another name")
        return label_group_path(validate_name(name, what="prediction name"), tissue_id, extra_kinds=(name,))
    return image_group_path(prediction_dir(name), tissue_id)


def make_dataset(
    store: str | Location,
    modality: str,
    resolution: ResolutionLike,
    tile_size: int,
    *,
    standardization: str = "identity",
    storage_options: dict[str, Any] | None = None,
) -> BaseImagingDataset:
    """The dataset of ``modality``: ``he`` (H&E), ``ihc/ihc_<marker>``, or a multiplex modality (any other, predictions too).

    H&E and IHC input is normalised by a mean/std preset: ``standardization`` ``imagenet`` (also the default,
    ``identity``) or ``hibou``; a multiplex spec is refused for them.
    """
    from ..datasets import HEImagingDataset, MultiplexImagingDataset, SingleIHCImagingDataset
    from ..standardize.specs import IDENTITY
    from ..standardize.standardizers import MEAN_STD

    kwargs: dict[str, Any] = {"verbose": False, "storage_options": storage_options}
    if modality == "he" or modality.startswith(f"ihc/{IHC_PREFIX}"):
        if standardization not in (IDENTITY, *MEAN_STD):
            raise InvalidInputError(
                f"standardization {standardization!r} is not a preset for {modality} input, which is normalised by a mean/std "
                f"preset: {', '.join(MEAN_STD)} (default imagenet); statistics specs are for multiplex input"
            )
        kwargs["mean_std_type"] = "imagenet" if standardization == IDENTITY else standardization
    if modality == "he":
        return HEImagingDataset("predict", store, resolution, tile_size, **kwargs)
    if modality.startswith(f"ihc/{IHC_PREFIX}"):
        return SingleIHCImagingDataset("predict", store, modality.split(IHC_PREFIX, 1)[1], resolution, tile_size, **kwargs)
    return MultiplexImagingDataset("predict", store, resolution, tile_size, modality=modality, standardization=standardization, **kwargs)


def predict_tissue(
    model: str | Model,
    dataset: TissueSource,
    tissue_id: str,
    options: PredictTissueOptions,
    *,
    write: WriteOptions | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    record: bool = True,
) -> WriteResult:
    """Predict one tissue of ``dataset`` with ``model`` and write it into the dataset's store as ``options.name``.

    Parameters
    ----------
    model
        A TorchScript file, ``module:callable``, or a callable / ``nn.Module``
        (:func:`~spora_zarr.inference.models.load_model`).
    dataset
        A :class:`~spora_zarr.access.TissueSource` (a spora dataset, :mod:`spora_zarr.datasets`):
        its store, modality, resolution and preprocessing (standardization) give the model input.
    tissue_id
        The tissue.
    options
        The prediction's name, tiling, model call and output (:class:`PredictTissueOptions`).
    write, overwrite, progress
        As for :func:`~spora_zarr.write.writer.write_image` (default ``write``:
        :func:`prediction_write_options`).
    record
        Record the prediction in the root attributes and channel tables
        (:func:`predict_cohort` records once after all tissues instead).

    Returns
    -------
    WriteResult
        ``skipped`` when the prediction was already complete (nothing run).
    """
    from ..standardize.standardizers import IdentityStandardizer
    from ..store.staging import Staging
    from ..write.writer import write_image, write_labels

    o = options
    output, labels, tile_size, overlap, min_tissue = o.name, o.labels, o.tile_size, o.overlap, o.min_tissue
    write = write or prediction_write_options()
    path = output_path(output, tissue_id, labels=labels)
    cohort = dataset.cohort
    location: Location = cohort.location
    modality = dataset.modality_dir()
    dataset.check_tissue(tissue_id)  # NotFoundError naming the tissue
    provenance = {
        **_input_digests(location, modality, tissue_id, dataset.resolution, min_tissue is not None),
        **_preprocessing(dataset, tissue_id, o),
    }
    if not overwrite and Staging(location).is_complete(path):
        _check_same_prediction(location, path, _prediction_record(model, modality, dataset.resolution, None, o, provenance))
        return WriteResult(path, skipped=True)
    loaded = load_model(model, o.device)
    where = f"model {model_label(model)}, tissue {tissue_id!r}"
    reader = dataset.level(tissue_id)
    mask = dataset.level(tissue_id, "tissue_masks") if min_tissue is not None else None
    channels = dataset.channel_indices(tissue_id, o.kind)

    def standardize(tensor: Any) -> Any:
        return dataset.preprocess(tensor, tissue_id, o.kind)

    # the identity standardization is the cast into the batch buffer: no float32 copy of each window first
    identity = dataset.preprocessor is None or isinstance(dataset.preprocessor, IdentityStandardizer)
    inputs = InputWindows(reader, channels, standardize if o.preprocess and not identity else None, mask)
    mpp = parse_resolution(dataset.resolution).mpp
    source = PredictionSource(
        loaded,
        inputs,
        tile_size,
        overlap,
        o.batch_size,
        mode=o.mode,
        labels=labels,
        device=o.device,
        min_tissue=min_tissue,
        fill_value=o.fill_value,
        name=where,
        mpp=mpp,
    )
    if not labels:
        names = list(o.channel_names or model_channel_names(loaded) or [])
        if not names:
            names = [output] if source.shape[0] == 1 else [f"{output}_{k}" for k in range(source.shape[0])]
        if len(names) != source.shape[0]:
            raise InvalidInputError(f"{where}: the model gives {source.shape[0]} channels but {len(names)} channel names were given")
    spora = {
        "tissue_id": tissue_id,
        "prediction": _prediction_record(model, modality, dataset.resolution, source.tile_size, o, provenance),
    }
    if labels:
        spora["mask_kind"] = output
        result = write_labels(
            location,
            path,
            {mpp: source},
            source_image=f"../../../{image_group_path(modality, tissue_id)}",
            spora=spora,
            options=write,
            overwrite=overwrite,
            progress=progress,
        )
    else:
        spora["modality"] = prediction_dir(output)
        result = write_image(
            location, path, {mpp: source}, channel_names=names, spora=spora, options=write, overwrite=overwrite, progress=progress
        )
    if record:
        record_predictions(location, output, labels=labels)
    return result


def record_predictions(location: Location, name: str, *, labels: bool = False) -> None:
    """Record the complete predictions ``name`` in the root attributes (and, for images, the channel tables).

    Images: ``predictions/<name>`` becomes a modality with the level names of
    its tissues, and ``predictions/<name>/channels.parquet`` /
    ``channels_per_tissue.parquet`` list its channels (all ``qc_pass``, no
    UniProt id). Labels: ``<name>`` joins the root's ``mask_kinds``.
    """
    from ..read.cohort import open_cohort
    from ..store.metadata import update_cohort_attributes

    if labels:
        update_cohort_attributes(location, mask_kinds=[name])
        return
    directory = prediction_dir(name)
    cohort = open_cohort(location)
    tissues = cohort.listing(f"{directory}/images")
    if not tissues:
        return
    levels: set[str] = set()
    per_tissue: dict[str, list[str]] = {}
    for tissue_id in tissues:
        metadata = _metadata(location, directory, tissue_id)
        levels.update(metadata.level_names)
        per_tissue[tissue_id] = metadata.channel_names
    _write_channel_tables(location, directory, per_tissue)
    update_cohort_attributes(location, modalities={directory: sorted(levels, key=parse_resolution)})


def _prediction_record(
    model: str | Model, modality: str, resolution: Any, tile_size: int | None, o: PredictTissueOptions, provenance: dict[str, Any]
) -> dict[str, Any]:
    """How a prediction group was made, as its ``spora.prediction`` attributes record it.

    ``provenance``: the digests of the levels read (:func:`_input_digests`) and the preprocessing applied (:func:`_preprocessing`).
    """
    return {
        "model": model_label(model),
        "model_digest": model_digest(model),
        "input": modality,
        "resolution": resolution,
        "tile_size": tile_size,
        "overlap": int(o.overlap),
        "mode": o.mode,
        "min_tissue": o.min_tissue,
        "fill_value": o.fill_value,
        **provenance,
    }


def _input_digests(location: Location, modality: str, tissue_id: str, resolution: Any, with_mask: bool) -> dict[str, str | None]:
    """The content digests of the image level predicted from, and of the tissue mask's when ``--min-tissue`` reads it.

    Read from the store now: a dataset opened earlier may hold the metadata of groups replaced since.
    """
    from ..store.metadata import SporaGroupAttributes
    from ..store.staging import Staging

    level = parse_resolution(resolution).name

    def digest(path: str) -> str | None:
        spora = (Staging(location).read_attributes(path) or {}).get("spora") or {}
        return SporaGroupAttributes.from_dict(spora, where=location.join(path)).content_digests.get(level)

    digests = {"input_digest": digest(image_group_path(modality, tissue_id))}
    if with_mask:
        digests["mask_digest"] = digest(label_group_path(MASK_KINDS[0], tissue_id))
    return digests


def _preprocessing(dataset: TissueSource, tissue_id: str, o: PredictTissueOptions) -> dict[str, Any]:
    """What the dataset does to the input before the model: the channel kind (multiplex input), the standardization it
    applies (its spec, or a callable's name; ``None`` without ``preprocess``) and a digest of the statistics it reads
    for this tissue (a stats-backed one; it also refuses statistics of pixels replaced since, its ``PixelsCheck``)."""
    from ..standardize.standardizers import StatsBackedStandardizer

    hook = dataset.preprocessor if o.preprocess else None
    digest = None
    if isinstance(hook, StatsBackedStandardizer):
        parameters = hook.channel_parameters(tissue_id, dataset.channel_names(tissue_id, o.kind))
        values = [np.asarray(p, dtype=np.float64).tolist() for p in parameters[:4]]
        digest = hashlib.sha1(json.dumps([values, parameters[4]]).encode(), usedforsecurity=False).hexdigest()
    return {
        "kind": o.kind if getattr(dataset, "multiplex", True) else None,
        "standardization": None if hook is None else getattr(hook, "spec", None) or getattr(hook, "__qualname__", type(hook).__name__),
        "standardization_digest": digest,
    }


def _check_same_prediction(location: Location, path: str, wanted: dict[str, Any]) -> None:
    """Refuse to keep a complete prediction whose record differs from this run's ``wanted`` one (a rerun under the
    same name with another model or input kept the old tissues beside the new ones); the tile size is not compared
    (a small tissue records the size it was clamped to)."""
    from ..store.staging import Staging

    recorded = ((Staging(location).read_attributes(path) or {}).get("spora") or {}).get("prediction") or {}
    for key, value in wanted.items():
        if key == "tile_size" or key not in recorded:
            continue
        was = recorded[key]
        if key == "resolution":
            same = parse_resolution(was) == parse_resolution(value)
        else:
            same = was == value or (was != was and value != value)  # NaN, NaN
        if not same:
            again = "give --overwrite to predict it again, or another --name"
            if key.endswith("_digest"):
                what = {
                    "input_digest": "an image",
                    "mask_digest": "a tissue mask",
                    "model_digest": "a model file",
                    "standardization_digest": "standardization statistics",
                }[key]
                raise InvalidInputError(f"{location.join(path)}: predicted from {what} replaced since: {again}")
            raise InvalidInputError(f"{location.join(path)}: predicted with {key} {was!r}, not {value!r}: {again}")


def _metadata(location: Location, directory: str, tissue_id: str) -> Any:
    from ..store.metadata import GroupMetadata
    from ..store.staging import Staging

    path = f"{directory}/images/{tissue_id}"
    return GroupMetadata.from_attributes(Staging(location).read_attributes(path) or {}, where=location.join(path))


def _write_channel_tables(location: Location, directory: str, per_tissue: dict[str, list[str]]) -> None:
    import pyarrow as pa

    from ..store.tables import write_table

    panel = list(dict.fromkeys(n for names in per_tissue.values() for n in names))
    channels = pa.table(
        {
            "channel_name": pa.array(panel, pa.string()),
            "qc_pass": pa.array([True] * len(panel), pa.bool_()),
            "uniprot_id": pa.array([None] * len(panel), pa.string()),
        }
    )
    rows = [(t, n) for t, names in per_tissue.items() for n in names]
    cpt = pa.table({"tissue_id": pa.array([r[0] for r in rows], pa.string()), "channel_name": pa.array([r[1] for r in rows], pa.string())})
    write_table(location, channels_table_path(directory), channels)
    write_table(location, channels_per_tissue_table_path(directory), cpt)


# -- the cohort, through the one runner ----------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PredictTissueOptions:
    """What :func:`predict_tissue` writes and how it runs the model over a tissue.

    Attributes
    ----------
    name
        The prediction's name (``predictions/<name>`` or ``segmentations/<name>``).
    tile_size, overlap, batch_size
        The tiling (:func:`~spora_zarr.tiling.patching.tile_specs`) and tiles per model call.
    mode
        ``"crop"`` (keep each tile's centre) or ``"blend"`` (Gaussian-weighted average).
    labels
        Write labels (argmax of per-class scores, or one integer channel).
    device
        ``"cpu"``, ``"cuda"``, ...
    kind
        Channel kind of multiplex input (``complete``, ``qc_filtered``, ``uniprot_filtered``).
    preprocess
        Standardize the input as the dataset's ``read_tile`` does.
    channel_names
        Names of the output channels (default: the model's ``channel_names``, else ``<name>`` or ``<name>_<k>``).
    min_tissue
        Skip tiles whose tissue-mask fraction is below this; their pixels are ``fill_value``.
    """

    name: str
    tile_size: int = 256
    overlap: int = 32
    batch_size: int = 8
    mode: str = "crop"
    labels: bool = False
    device: str = "cpu"
    kind: str = "complete"
    standardization: str = "identity"
    preprocess: bool = True
    channel_names: tuple[str, ...] | None = None
    min_tissue: float | None = None
    fill_value: float = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        check_tiling(self.tile_size, self.overlap, "prediction")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidInputError(f"batch_size={self.batch_size!r} is not a whole number >= 1")
        if self.min_tissue is not None and not 0 <= self.min_tissue <= 1:
            raise InvalidInputError(f"min_tissue={self.min_tissue!r} is not in [0, 1]")
        output_path(self.name, "x", labels=self.labels)  # the name is a valid path segment, not a converter mask kind
        if self.channel_names is not None:
            object.__setattr__(self, "channel_names", tuple(self.channel_names))


@dataclass(frozen=True, kw_only=True)
class PredictOptions(PredictTissueOptions):
    """What :func:`predict_cohort` predicts: the input images (``modality`` at ``resolution``, ``standardization``) and
    :class:`PredictTissueOptions` for each tissue. ``resolution`` holds a :class:`~spora_zarr.access.Resolution`."""

    modality: str
    resolution: Resolution
    standardization: str = "identity"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "resolution", parse_resolution(self.resolution))


@dataclass(frozen=True)
class PredictTask:
    """One tissue to predict: the store path of its prediction group (``path``) and what the work needs."""

    path: str
    label: str
    tissue_id: str
    location: Location
    model: Any
    options: PredictOptions
    write: WriteOptions
    overwrite: bool = False
    run: str = ""
    """The run the task is part of (:func:`predict_cohort` names each): its dataset is made once per run and process."""


_DATASETS: PerProcess[dict[tuple[Any, ...], BaseImagingDataset]] = PerProcess(dict)


def _dataset_for(task: PredictTask) -> BaseImagingDataset:
    """The task's dataset, made once per run in each process: a later run sees the tissues and groups of its time."""
    o = task.options
    key = (task.run, task.location.root, o.modality, o.resolution, o.tile_size, o.standardization)
    datasets = _DATASETS.get()
    for other in [k for k in datasets if k[0] != task.run]:  # an earlier run's: its cohort and readers may be stale
        del datasets[other]
    if key not in datasets:
        datasets[key] = make_dataset(
            task.location,
            o.modality,
            o.resolution,
            o.tile_size,
            standardization=o.standardization,
            storage_options=task.location.storage_options or None,
        )
    return datasets[key]


def predict_task(task: PredictTask, progress: ProgressCallback | None = None) -> TaskOutcome:
    """Predict one tissue (the runner's ``work``); ``skipped`` when its prediction is complete."""
    from ..run import TaskOutcome

    result = predict_tissue(
        task.model,
        _dataset_for(task),
        task.tissue_id,
        task.options,
        write=task.write,
        overwrite=task.overwrite,
        progress=progress,
        record=False,
    )
    return TaskOutcome(task.path, task.label, skipped=result.skipped, bytes_read=result.bytes_read)


@writes_store("predict", "store")
def predict_cohort(
    store: str | Location,
    model: str | Model,
    options: PredictOptions,
    *,
    tissues: Sequence[str] | None = None,
    write: WriteOptions | None = None,
    run: RunOptions | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> RunReport:
    """Predict every tissue (or ``tissues``) of a modality of a store, one runner task per tissue.

    ``options`` say what to predict (:class:`PredictOptions`), ``write`` the
    array layout (default :func:`prediction_write_options`), ``run`` where the
    tasks run (:class:`~spora_zarr.run.RunOptions`).

    The model is loaded once here first, so a file that does not load is one
    error before anything is written; an unknown tissue is a ``NotFoundError``
    listing the tissues there. A model that fails on a tissue fails that task
    only (the report names it). Complete predictions are skipped (resume) unless
    ``overwrite``. When the run is over the predictions are recorded in the
    root attributes (:func:`record_predictions`).
    """
    from ..run import RunOptions, run_tasks

    location = Location.parse(store, storage_options)
    location.check_writable("write predictions")
    dataset = make_dataset(
        location,
        options.modality,
        options.resolution,
        options.tile_size,
        standardization=options.standardization,
        storage_options=storage_options,
    )
    available = list(dataset.tissue_ids)
    if tissues is None:
        wanted = available
    else:
        wanted = list(dict.fromkeys(validate_tissue_id(t) for t in tissues))
        missing = [t for t in wanted if t not in available]
        if missing:
            shown = ", ".join(available[:10]) + (", ..." if len(available) > 10 else "")
            raise NotFoundError(
                f"{location}: no tissue {', '.join(map(repr, missing))} in {options.modality} at {dataset.resolution}; "
                f"it has {shown or 'none'}"
            )
    load_model(model, options.device)
    layout = write or prediction_write_options()
    run_id = uuid.uuid4().hex
    tasks = [
        PredictTask(output_path(options.name, t, labels=options.labels), t, t, location, model, options, layout, overwrite, run_id)
        for t in wanted
    ]
    report = run_tasks(tasks, predict_task, run or RunOptions(), noun="tissues")
    if any(not o.error for o in report.outcomes):
        record_predictions(location, options.name, labels=options.labels)
    return report
