"""The writer's multiscales metadata, computed without ngff-zarr, equals what ``ngff_zarr.to_multiscales`` models."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any, Literal

import dask.array as da
import ngff_zarr
import numpy as np
import pytest
from ngff_zarr.methods import Methods

from spora_zarr.store.metadata import GroupMetadata, SporaGroupAttributes
from spora_zarr.write.ngff import NGFF_VERSION, image_metadata, label_metadata, multiscales_metadata
from spora_zarr.write.pyramid import Level, Method, plan_levels


def reference_entry(levels: list[Level], *, name: str, method: Method, labels: bool, z_mpp: float | None) -> dict[str, Any]:
    """The entry as the writer built it before: ``ngff_zarr.to_multiscales`` on the coarsest source, finer sources prepended."""
    dims: tuple[Literal["c", "z", "y", "x"], ...] = ("y", "x") if labels else ("c", "y", "x")
    source_levels = [level for level in levels if level.from_source]
    base, computed = source_levels[-1], levels[len(source_levels) :]
    shape: tuple[int, ...] = base.shape[1:] if labels else base.shape
    axes: tuple[str, ...] = ("y", "x")
    factors: list[Any] = [2 ** (i + 1) for i in range(len(computed))]
    if z_mpp is not None:
        dims, shape, axes = (*dims[:-2], "z", "y", "x"), (*shape[:-2], 1, *shape[-2:]), ("z", "y", "x")
        factors = [{"z": 1, "y": f, "x": f} for f in factors]
    scale: dict[Hashable, float] = {axis: z_mpp if axis == "z" and z_mpp is not None else base.mpp for axis in axes}
    image = ngff_zarr.to_ngff_image(
        da.zeros(shape, dtype=np.uint8, chunks=shape),
        dims=dims,
        scale=scale,
        translation=dict.fromkeys(axes, 0.0),
        axes_units=dict.fromkeys(axes, "micrometer"),
        name=name,
    )
    multiscales = ngff_zarr.to_multiscales(image, scale_factors=factors, method=Methods(method.value))
    entry = dataclasses.asdict(multiscales.metadata.to_version(NGFF_VERSION))
    datasets = entry["datasets"]
    for dataset, level in zip(datasets, levels[len(source_levels) - 1 :]):
        dataset["path"] = level.name
    finer = []
    for level in source_levels[:-1]:
        spatial = [level.mpp, level.mpp] if z_mpp is None else [z_mpp, level.mpp, level.mpp]
        finer.append({"path": level.name, "scale": spatial if labels else [1.0, *spatial]})
    return {"axes": entry["axes"], "datasets": datasets, "finer": finer, "name": entry["name"]}


def comparable(entry: dict[str, Any]) -> dict[str, Any]:
    """The parts of an entry ngff-zarr models, in the reference's form (``None`` values dropped)."""
    axes = [{k: v for k, v in axis.items() if v is not None} for axis in entry["axes"]]
    return {"axes": axes, "datasets": entry["datasets"], "name": entry["name"]}


SHAPES = [(3, 256, 256), (5, 1001, 777), (1, 4097, 4095), (2, 2049, 9000), (1, 3, 5000)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mpp", [0.25, 0.65, 0.4536])
@pytest.mark.parametrize("labels", [False, True])
def test_multiscales_equal_to_ngff_zarr(shape: tuple[int, int, int], mpp: float, labels: bool) -> None:
    levels = plan_levels({mpp: (1 if labels else shape[0], *shape[1:])}, max_top_size=512)
    method = Method.MODE if labels else Method.BIN_SHRINK
    entry = multiscales_metadata(levels, name="imc/T1", method=method, labels=labels)
    reference = reference_entry(levels, name="imc/T1", method=method, labels=labels, z_mpp=None)
    expected = {**comparable(reference), "datasets": [_strip(d) for d in reference["datasets"]]}
    assert comparable(entry) == expected
    assert entry["type"] == (method.value if len(levels) > 1 else "none")


@pytest.mark.parametrize("z_mpp", [None, 2.0, 0.3])
def test_finer_source_levels_and_stacks_equal_to_ngff_zarr(z_mpp: float | None) -> None:
    levels = plan_levels({0.65: (4, 6000, 5000), 1.3: (4, 3000, 2500), 2.6: (4, 1500, 1250)}, max_top_size=300)
    for labels in (False, True):
        method = Method.MODE if labels else Method.BIN_SHRINK
        entry = multiscales_metadata(levels, name="x", method=method, labels=labels, z_mpp=z_mpp)
        reference = reference_entry(levels, name="x", method=method, labels=labels, z_mpp=z_mpp)
        finer = [
            {"path": f["path"], "coordinateTransformations": [{"type": "scale", "scale": f["scale"]},
                                                               {"type": "translation", "translation": [0.0] * len(f["scale"])}]}
            for f in reference["finer"]
        ]  # fmt: skip
        assert comparable(entry) == {**comparable(reference), "datasets": finer + [_strip(d) for d in reference["datasets"]]}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def test_layouts_are_computed_once_and_copied() -> None:
    levels = plan_levels({1.0: (5, 3000, 3000)}, max_top_size=512)
    first = multiscales_metadata(levels, name="a", method=Method.BIN_SHRINK, labels=False)
    second = multiscales_metadata(levels, name="b", method=Method.BIN_SHRINK, labels=False)
    first["datasets"][0]["path"] = "changed"
    assert second["name"] == "b" and second["datasets"][0]["path"] == "1_0mpp"


@pytest.mark.parametrize("labels", [False, True])
def test_group_attributes_are_what_validation_gives_back(labels: bool) -> None:
    """The attributes the writer stores equal ome-zarr-models' validated form of them (validated once per layout)."""
    levels = plan_levels({0.5: (1 if labels else 3, 3000, 2000)}, max_top_size=512)
    if labels:
        spora = SporaGroupAttributes(kind="label", tissue_id="T1", mask_kind="cell_masks", source_levels=("0_5mpp",))
        attributes = label_metadata(levels, name="m", source_image="../../../he/images/T1", spora=spora, where="w", ids=(0, 7))
    else:
        spora = SporaGroupAttributes(kind="image", tissue_id="T1", channel_names=("r", "g", "b"), source_levels=("0_5mpp",))
        windows = [{"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0}] * 3
        attributes = image_metadata(levels, name="i", channel_names=["r", "g", "b"], windows=windows, rgb=True, spora=spora, where="w")
    assert GroupMetadata.from_attributes(attributes, where="w").to_attributes() == attributes


def test_lanes_stream_the_same_pyramid_as_one(tmp_path: Any) -> None:
    """An image streamed by two lanes stores the same levels and metadata as one lane (a subtree per lane)."""
    import zarr

    from spora_zarr import WriteOptions, write_image
    from spora_zarr.sources import ArraySource

    rng = np.random.default_rng(1)
    array = rng.integers(0, 4000, size=(2, 1500, 1300), dtype=np.uint16)
    stored = []
    for threads in (1, 2):
        options = WriteOptions(chunk=64, shard=128, max_top_size=200, codec_threads=threads)
        assert options.lanes(2, 2, 4, 128) == threads
        write_image(tmp_path / f"{threads}.zarr", "x/images/T", {1.0: ArraySource(array)}, options=options)
        group = zarr.open_group(tmp_path / f"{threads}.zarr/x/images/T", mode="r")
        stored.append(({name: group[name][...] for name in group.array_keys()}, dict(group.attrs)))
    (one, one_attrs), (two, two_attrs) = stored
    assert one.keys() == two.keys() and one_attrs == two_attrs
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)
