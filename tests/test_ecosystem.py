"""Images from other tools in (ngff-zarr, ome-zarr-py, bioformats2raw layouts, named zarr arrays), NGFF conformance of
what the store writes (the official strict schemas), and masks in the dtypes torch and MONAI operate on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from spora_zarr import ConvertOptions, InvalidInputError, StoreError, add_image, convert_cohort, open_cohort, validate_store
from spora_zarr.datasets import ComposedImagingDataset, HEImagingDataset, MultiplexImagingDataset
from spora_zarr.testing.cohorts import make_synthetic_cohort
from spora_zarr.torch import TileDataset
from spora_zarr.write.ngff import MAX_COLORED_LABEL

ngff_zarr = pytest.importorskip("ngff_zarr")

NAMES = ["DNA1", "CD3", "PanCK"]


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)


def _ngff_zarr_image(path: Path, data: np.ndarray, *, version: str, scale: float = 0.5, unit: str = "micrometer") -> Path:
    """``data`` (c, y, x) written by ngff-zarr as an NGFF ``version`` image with two levels and omero channel labels."""
    from ngff_zarr import Omero, OmeroChannel, OmeroWindow
    from ngff_zarr.methods import Methods

    image = ngff_zarr.to_ngff_image(
        data, dims=("c", "y", "x"), scale={"y": scale, "x": scale}, axes_units={"y": unit, "x": unit}, name="sample"
    )
    multiscales = ngff_zarr.to_multiscales(image, scale_factors=[2], method=Methods.DASK_IMAGE_NEAREST)
    window = OmeroWindow(min=0.0, max=4000.0, start=0.0, end=4000.0)
    multiscales.metadata.omero = Omero(channels=[OmeroChannel(color="FFFFFF", window=window, label=n) for n in NAMES])
    ngff_zarr.to_ngff_zarr(str(path), multiscales, version=version)
    return path


def _levels_of(path: Path, image: str = "") -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r", path=image)
    attrs = dict(group.attrs)
    multiscales = (attrs.get("ome") or attrs)["multiscales"][0]
    return [np.asarray(group[d["path"]][:]) for d in multiscales["datasets"]]


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_an_ngff_zarr_image_is_added_with_names_scale_and_exact_levels(tmp_path: Path, version: str) -> None:
    data = _pixels((3, 96, 130))
    source = _ngff_zarr_image(tmp_path / f"image_{version}.ome.zarr", data, version=version)
    assert zarr.open_group(str(source), mode="r").metadata.zarr_format == (3 if version == "0.5" else 2)
    store = tmp_path / "cohort.zarr"
    add_image(store, str(source), modality="imc", tissue_id="T1")
    cohort = open_cohort(store)
    metadata = cohort.group_metadata("imc", "T1")
    assert metadata.channel_names == NAMES
    assert metadata.spora.source_levels == ("0_5mpp", "1_0mpp")  # the image's own 2x level is kept as it is
    levels = _levels_of(source)
    np.testing.assert_array_equal(cohort.open_image("imc", "T1", 0.5).values, data)
    np.testing.assert_array_equal(cohort.open_image("imc", "T1", 1.0).values, levels[1])
    assert metadata.level("0_5mpp").scale == (1.0, 0.5, 0.5)
    assert validate_store(store) == []


@pytest.mark.parametrize(("unit", "scale"), [("nanometer", 250.0), ("millimeter", 0.00025)])
def test_scale_units_are_converted_to_microns(tmp_path: Path, unit: str, scale: float) -> None:
    data = _pixels((3, 40, 50), seed=2)
    source = _ngff_zarr_image(tmp_path / "image.ome.zarr", data, version="0.5", scale=scale, unit=unit)
    store = tmp_path / "cohort.zarr"
    add_image(store, str(source), modality="imc", tissue_id="T1")
    cohort = open_cohort(store)
    assert cohort.group_metadata("imc", "T1").level_names[0] == "0_25mpp"
    np.testing.assert_array_equal(cohort.open_image("imc", "T1", 0.25).values, data)


def _ngff_04_by_hand(group: zarr.Group, data: np.ndarray, scale: float) -> None:
    """An NGFF 0.4 image as ome-zarr-py writes it: 5-D ``t, c, z, y, x`` levels ``0``, ``1`` in a zarr v2 group."""
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = []
    for level, pixels in enumerate((data, data[:, ::2, ::2])):
        group.create_array(str(level), data=pixels[None, :, None], chunks=(1, 1, 1, 32, 32))
        factor = 2.0**level
        transform = {"type": "scale", "scale": [1.0, 1.0, 1.0, scale * factor, scale * factor]}
        datasets.append({"path": str(level), "coordinateTransformations": [transform]})
    window = {"start": 0, "end": 4000, "min": 0, "max": 4000}
    group.attrs.update(
        multiscales=[{"version": "0.4", "name": "sample", "axes": axes, "datasets": datasets}],
        omero={"version": "0.4", "channels": [{"label": n, "color": "FFFFFF", "window": window} for n in NAMES]},
    )


def _ome_zarr_py_image(path: Path, data: np.ndarray) -> Path:
    """An NGFF 0.4 image written by ome-zarr-py where it is installed, else by hand as it writes one (zarr v2)."""
    try:
        from ome_zarr.format import FormatV04
        from ome_zarr.io import parse_url
        from ome_zarr.writer import write_image
    except ImportError:
        _ngff_04_by_hand(zarr.open_group(str(path), mode="w", zarr_format=2), data, 0.5)
        return path
    root = zarr.open_group(parse_url(str(path), mode="w", fmt=FormatV04()).store, mode="w", zarr_format=2)
    scale = {"t": 1.0, "c": 1.0, "z": 1.0, "y": 0.5, "x": 0.5}
    units = {"y": "micrometer", "x": "micrometer"}
    write_image(data[None, :, None], root, scale_factors=(2,), axes="tczyx", fmt=FormatV04(), scale=scale, axes_units=units)
    root.attrs["omero"] = {"channels": [{"label": n, "color": "FFFFFF"} for n in NAMES]}
    return path


def test_an_ome_zarr_py_image_and_a_bioformats2raw_layout_are_added(tmp_path: Path) -> None:
    data = _pixels((3, 64, 70), seed=3)
    plain = _ome_zarr_py_image(tmp_path / "plain.ome.zarr", data)
    layout = zarr.open_group(str(tmp_path / "b2r.ome.zarr"), mode="w", zarr_format=2)
    layout.attrs["bioformats2raw.layout"] = 3
    _ngff_04_by_hand(layout.create_group("0"), data, 0.5)
    store = tmp_path / "cohort.zarr"
    for tissue, path in (("P", plain), ("B", tmp_path / "b2r.ome.zarr")):
        add_image(store, str(path), modality="imc", tissue_id=tissue)
        cohort = open_cohort(store)
        assert cohort.group_metadata("imc", tissue).channel_names == NAMES
        assert cohort.group_metadata("imc", tissue).axes == ("c", "y", "x")  # t and z of size 1 dropped
        np.testing.assert_array_equal(cohort.open_image("imc", tissue, 0.5).values, data)
    assert validate_store(store) == []


def test_more_than_one_timepoint_is_refused_in_one_line(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "movie.zarr"), mode="w", zarr_format=2)
    _ngff_04_by_hand(group, _pixels((3, 32, 32)), 0.5)
    group.create_array("0", data=np.zeros((4, 3, 1, 32, 32), np.uint16), overwrite=True)
    with pytest.raises(InvalidInputError, match=r"movie.zarr/0: 4 timepoints \(axis t\)"):
        add_image(tmp_path / "cohort.zarr", str(tmp_path / "movie.zarr"), modality="imc", tissue_id="T1")


def test_an_ngff_z_stack_becomes_a_stack(tmp_path: Path) -> None:
    data = _pixels((2, 3, 40, 48), seed=4)
    image = ngff_zarr.to_ngff_image(
        data,
        dims=("c", "z", "y", "x"),
        scale={"z": 2.0, "y": 0.5, "x": 0.5},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    ngff_zarr.to_ngff_zarr(str(tmp_path / "stack.ome.zarr"), ngff_zarr.to_multiscales(image, scale_factors=[]))
    store = tmp_path / "cohort.zarr"
    add_image(store, str(tmp_path / "stack.ome.zarr"), modality="imc", tissue_id="S")
    cohort = open_cohort(store)
    metadata = cohort.group_metadata("imc", "S")
    assert metadata.axes == ("c", "z", "y", "x") and metadata.levels[0].scale == (1.0, 2.0, 0.5, 0.5)
    np.testing.assert_array_equal(cohort.open_image("imc", "S", 0.5).values, data)


@pytest.mark.parametrize(("names", "order"), [(("c", "y", "x"), (0, 1, 2)), (("y", "x", "c"), (2, 0, 1)), (("x", "y", "c"), (2, 1, 0))])
def test_a_zarr_array_is_read_in_the_order_of_its_dimension_names(tmp_path: Path, names: tuple[str, ...], order: tuple[int, ...]) -> None:
    chw = _pixels((3, 40, 50), seed=5)
    stored = chw.transpose(np.argsort(order))
    array = zarr.create_array(str(tmp_path / "named.zarr"), shape=stored.shape, dtype=stored.dtype, dimension_names=names)
    array[:] = stored
    store = tmp_path / "cohort.zarr"
    add_image(store, str(tmp_path / "named.zarr"), modality="imc", tissue_id="T1", mpp=0.5)
    np.testing.assert_array_equal(open_cohort(store).open_image("imc", "T1", 0.5).values, chw)


def test_open_cohort_and_validate_say_what_the_root_is(tmp_path: Path) -> None:
    image = _ngff_zarr_image(tmp_path / "image.ome.zarr", _pixels((3, 32, 32)), version="0.5")
    with pytest.raises(StoreError, match=r"image.ome.zarr: an OME-Zarr image \(NGFF 0.5\), not a cohort store"):
        open_cohort(image)
    assert validate_store(image) == [
        f"{image}: an OME-Zarr image (NGFF 0.5), not a cohort store; add it to a cohort with `spora-zarr add-image COHORT {image} ...`"
    ]
    with pytest.raises(StoreError, match="not a cohort store"):
        add_image(image, str(image), modality="imc", tissue_id="T1")  # nothing is written into the image
    assert json.loads((image / "zarr.json").read_text())["attributes"].keys() == {"ome"}
    old = _ngff_zarr_image(tmp_path / "old.ome.zarr", _pixels((3, 32, 32)), version="0.4")
    with pytest.raises(StoreError, match=r"a zarr v2 \(zarr_format 2\) group holding an OME-Zarr image \(NGFF 0.4\), not a cohort store"):
        open_cohort(old)
    assert "zarr v2" in validate_store(old)[0]


# ------------------------------------------------------------------------------ NGFF conformance
def _strict_schemas() -> dict[str, dict]:
    """The official strict NGFF 0.5 JSON schemas of image and label groups, as ngff-zarr ships them."""
    root = Path(ngff_zarr.__file__).parent / "spec" / "0.5" / "schemas"
    found = {name: root / f"strict_{name}.schema" for name in ("image", "label")}
    if not all(path.is_file() for path in found.values()):
        pytest.skip(f"no strict NGFF 0.5 schemas under {root}")
    return {name: json.loads(path.read_text()) for name, path in found.items()}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("conformance")
    source = make_synthetic_cohort(root / "tiff", tissues=("A", "B"), he_shape=(150, 170), seed=7, tile_size=32)
    store = root / "cohort.zarr"
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    return store


def test_every_group_validates_against_the_strict_ngff_schemas(converted: Path) -> None:
    from jsonschema import Draft202012Validator
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    schemas = _strict_schemas()
    documents = [json.loads(p.read_text()) for p in (Path(ngff_zarr.__file__).parent / "spec" / "0.5" / "schemas").glob("*.schema")]
    registry = Registry().with_resources((d["$id"], DRAFT202012.create_resource(d)) for d in documents)
    checked = 0
    for document in converted.rglob("zarr.json"):
        if ".spora_tmp" in document.parts:
            continue
        attributes = json.loads(document.read_text()).get("attributes", {})
        if "multiscales" not in attributes.get("ome", {}):
            continue
        kind = "label" if "image-label" in attributes["ome"] else "image"
        errors = [e.message for e in Draft202012Validator(schemas[kind], registry=registry).iter_errors(attributes)]
        if kind == "label" and "colors" not in attributes["ome"]["image-label"]:  # an instance mask: ids beyond 255
            assert int(zarr.open_array(str(document.parent / "0_5mpp"), mode="r")[:].max()) > MAX_COLORED_LABEL
            assert errors == ["'colors' is a required property"], f"{document.parent}: {errors}"
            checked += 1
            continue
        assert not errors, f"{document.parent}: {errors[0]}"
        checked += 1
    assert checked >= 2 * 5  # he, imc, ihc, tissue and cell masks of both tissues


def test_a_mask_points_only_to_an_image_with_its_levels(converted: Path) -> None:
    cohort = open_cohort(converted)
    for kind in ("tissue_masks", "cell_masks"):
        mask = json.loads((converted / "segmentations" / kind / "A" / "zarr.json").read_text())["attributes"]["ome"]
        source = mask["image-label"].get("source", {}).get("image")
        assert source is not None
        image = json.loads((converted / "segmentations" / kind / "A" / source / "zarr.json").resolve().read_text())["attributes"]["ome"]
        assert len(image["multiscales"][0]["datasets"]) == len(mask["multiscales"][0]["datasets"])
        ids = int(zarr.open_array(str(converted / "segmentations" / kind / "A" / "0_5mpp"), mode="r")[:].max())
        if ids > MAX_COLORED_LABEL:  # an instance mask: the viewer's own colours
            assert "colors" not in mask["image-label"]
            continue
        colors = mask["image-label"]["colors"]  # few ids: one colour per id, 0 transparent
        assert [c["label-value"] for c in colors] == list(range(ids + 1)) and colors[0]["rgba"] == [0, 0, 0, 0]
        assert all(c["rgba"][3] == 255 for c in colors[1:])
    assert cohort.group_metadata("cell_masks", "A").is_label


def test_napari_ome_zarr_colours_every_label_and_leaves_many_ids_to_its_own_colours(converted: Path, tmp_path: Path) -> None:
    from napari_ome_zarr import napari_get_reader

    from spora_zarr.sources import ArraySource
    from spora_zarr.write.writer import write_labels

    path = str(converted / "segmentations" / "tissue_masks" / "A")
    ((_, kwargs, kind),) = napari_get_reader(path)(path)
    assert kind == "labels" and kwargs["colormap"][0][3] == 0 and kwargs["colormap"][1][3] == 1  # tissue drawn, background not
    many = np.arange(40 * 50, dtype=np.uint32).reshape(40, 50)  # an instance mask: ids beyond 255
    write_labels(tmp_path / "s.zarr", "segmentations/cell_masks/X", {0.5: ArraySource(many)})
    attributes = json.loads((tmp_path / "s.zarr" / "segmentations/cell_masks/X/zarr.json").read_text())["attributes"]["ome"]
    assert "colors" not in attributes["image-label"]
    path = str(tmp_path / "s.zarr" / "segmentations/cell_masks/X")
    ((_, kwargs, kind),) = napari_get_reader(path)(path)
    assert kind == "labels" and "colormap" not in kwargs  # napari's own colours, not every cell transparent


def test_a_mask_whose_image_has_other_levels_names_no_source(tmp_path: Path) -> None:
    source = make_synthetic_cohort(tmp_path / "tiff", tissues=("A",), he_shape=(120, 140), ihc_markers=(), seed=8)
    for kind in ("tissue_masks", "cell_masks"):  # masks at 1.0 mpp only, images at 0.5 and 1.0
        for path in (source / "segmentations" / "0_5mpp" / kind).iterdir():
            path.unlink()
    store = tmp_path / "cohort.zarr"
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    mask = json.loads((store / "segmentations" / "cell_masks" / "A" / "zarr.json").read_text())["attributes"]["ome"]
    assert len(mask["multiscales"][0]["datasets"]) == 1 and "source" not in mask["image-label"]


# ------------------------------------------------------------------------------ ML conventions
def test_masks_come_in_dtypes_torch_and_monai_operate_on(converted: Path) -> None:
    stored = zarr.open_array(str(converted / "segmentations" / "cell_masks" / "A" / "0_5mpp"), mode="r").dtype
    assert stored == np.uint32
    he = HEImagingDataset("c", converted, 0.5, 32, verbose=False)
    tile = he.read_mask_tile("A", 0, 0, 32, mask="cell_masks")
    assert tile.dtype == torch.int64  # uint32 ids do not all fit int32
    np.testing.assert_array_equal(tile.numpy(), zarr.open_array(str(converted / "segmentations/cell_masks/A/0_5mpp"), mode="r")[:32, :32])
    assert he.read_mask_tile("A", 0, 0, 32, mask="tissue_masks").dtype == torch.int32
    tiles = TileDataset(ComposedImagingDataset([he, MultiplexImagingDataset("c", converted, 0.5, 32, verbose=False)]))
    assert tiles.mask_dtypes == {"tissue_masks": np.dtype(np.int32), "cell_masks": np.dtype(np.int64)}
    mask = tiles[0]["cell_masks"]
    assert mask.dtype == torch.int64
    torch.flip(mask, dims=(0,))
    torch.rot90(mask, 1, dims=(0, 1))
    torch.nn.functional.one_hot(mask[:4, :4] % 3)
    torch.nn.functional.interpolate(mask[None, None].float(), scale_factor=2, mode="nearest").to(mask.dtype)
    batch = next(iter(torch.utils.data.DataLoader(tiles, batch_size=4)))
    assert batch["cell_masks"].dtype == torch.int64 and batch["tissue_masks"].dtype == torch.int32


def test_a_monai_dict_pipeline_runs_over_tile_dataset_items(converted: Path) -> None:
    transforms = pytest.importorskip("monai.transforms")
    he = HEImagingDataset("c", converted, 0.5, 32, verbose=False)
    tiles = TileDataset(ComposedImagingDataset([he]))
    keys = ["he", "tissue_masks", "cell_masks"]
    pipeline = transforms.Compose(
        [
            transforms.EnsureChannelFirstd(keys=["tissue_masks", "cell_masks"], channel_dim="no_channel"),
            transforms.RandFlipd(keys=keys, prob=1.0, spatial_axis=1),
            transforms.RandRotate90d(keys=keys, prob=1.0, max_k=3),
            transforms.RandSpatialCropd(keys=keys, roi_size=(24, 24), random_size=False),
        ]
    )
    pipeline.set_random_state(seed=0)
    item = tiles[0]
    out = pipeline({k: item[k] for k in keys})
    assert tuple(out["he"].shape) == (3, 24, 24) and tuple(out["cell_masks"].shape) == (1, 24, 24)
    assert out["cell_masks"].dtype == torch.int64 and out["tissue_masks"].dtype == torch.int32
    ids = set(np.unique(item["cell_masks"].numpy()))
    assert set(np.unique(np.asarray(out["cell_masks"]))) <= ids  # labels moved, never interpolated


def test_anisotropic_ngff_pixels_are_refused_as_a_tiffs_are_and_mpp_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spora_zarr.cli import main

    data = _pixels((2, 40, 60), seed=5)
    units = {"y": "micrometer", "x": "micrometer"}
    image = ngff_zarr.to_ngff_image(data, dims=("c", "y", "x"), scale={"y": 0.5, "x": 0.25}, axes_units=units)
    source = tmp_path / "aniso.ome.zarr"
    ngff_zarr.to_ngff_zarr(str(source), ngff_zarr.to_multiscales(image, scale_factors=[]), version="0.5")
    store = tmp_path / "cohort.zarr"
    args = ["add-image", str(store), str(source), "--modality", "imc", "--tissue", "T1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "anisotropic pixels (0.5 µm in y, 0.25 µm in x); resample the image along y" in err
    assert main([*args, "--mpp", "0.25"]) == 0  # as for a TIFF: --mpp stores it at one pixel size
    np.testing.assert_array_equal(open_cohort(store).open_image("imc", "T1", 0.25).values, data)


def test_uint64_mask_ids_past_int64_are_refused_not_wrapped(converted: Path, tmp_path: Path) -> None:
    import shutil

    from spora_zarr.sources import ArraySource
    from spora_zarr.write.writer import write_labels

    store = tmp_path / "cohort.zarr"
    shutil.copytree(converted, store)
    shape = zarr.open_array(str(store / "segmentations/cell_masks/A/0_5mpp"), mode="r").shape
    ids = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    ids[0, 0] = 2**63 + 7  # int64 would read it as -2**63 + 7
    write_labels(store, "segmentations/cell_masks/A", {0.5: ArraySource(ids)}, overwrite=True)
    he = HEImagingDataset("c", store, 0.5, 32, verbose=False)
    with pytest.raises(InvalidInputError, match=r"cell_masks of tissue 'A' holds label id 9223372036854775815") as error:
        he.read_mask_tile("A", 0, 0, 32, mask="cell_masks")
    assert "\n" not in str(error.value)
    with pytest.raises(InvalidInputError, match="9223372036854775815"):
        he.get_cell_mask("A")
    tile = he.read_mask_tile("A", 32, 32, 32, mask="cell_masks")  # a window of small ids reads as before
    assert tile.dtype == torch.int64
    np.testing.assert_array_equal(tile.numpy(), ids[32:64, 32:64].astype(np.int64))
