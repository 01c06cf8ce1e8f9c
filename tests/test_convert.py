"""A spora TIFF cohort in, a cohort store out: pixel-exact, tables intact, valid NGFF, opens in napari."""

from __future__ import annotations

from pathlib import Path

import ngff_zarr
import numpy as np
import pyarrow.parquet as pq
import zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from spora_zarr import open_cohort, validate_store
from spora_zarr.store.layout import MASK_KINDS, resolution_name

from .conftest import read_source_chw, source_images


def test_every_source_image_reads_back_byte_identical(cohort_pair: tuple[Path, Path]) -> None:
    src, dest = cohort_pair
    images = source_images(src)
    assert {m for m, *_ in images} >= {"he", "imc", "ihc/ihc_CD3", "tissue_masks", "cell_masks"}
    assert any(p.suffix == ".zarr" for *_, p in images), "the legacy (H, W, C) zarr tissue is exercised"
    cohort = open_cohort(dest)
    for modality, res, tissue, path in images:
        expected = read_source_chw(path)
        stored = cohort.open_array(modality, tissue, res)[...]
        if modality in MASK_KINDS:
            expected = expected[0]
        assert stored.dtype == expected.dtype, (path, stored.dtype, expected.dtype)
        assert stored.shape == expected.shape, (path, stored.shape, expected.shape)
        np.testing.assert_array_equal(stored, expected, err_msg=str(path))


def test_tables_are_copied_unchanged(cohort_pair: tuple[Path, Path]) -> None:
    src, dest = cohort_pair
    tables = sorted(p.relative_to(src) for p in src.rglob("*.parquet"))
    assert len(tables) >= 5
    for rel in tables:
        assert pq.read_table(dest / rel).equals(pq.read_table(src / rel)), rel
        assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel
    assert sorted(open_cohort(dest).tables()) == sorted(str(t) for t in tables)


def _groups(dest: Path) -> list[tuple[str, str]]:
    cohort = open_cohort(dest)
    groups = [(m, t) for m in cohort.modalities for t in cohort.tissues(m)]
    return groups + [(k, t) for k in MASK_KINDS for t in cohort.mask_tissues(k)]


def test_every_group_validates(cohort_pair: tuple[Path, Path]) -> None:
    _, dest = cohort_pair
    cohort = open_cohort(dest)
    groups = _groups(dest)
    assert len(groups) == 3 * 3 + 2 * 3
    for modality, tissue in groups:
        group = zarr.open_group(dest / cohort.group_path(modality, tissue), mode="r")
        model = ImageLabel if modality in MASK_KINDS else Image
        model.from_zarr(group)
        ngff_zarr.validate(dict(group.attrs), version="0.5", model="label" if modality in MASK_KINDS else "image")
        for level in group.attrs["ome"]["multiscales"][0]["datasets"]:
            assert group[level["path"]].metadata.dimension_names is not None
    assert validate_store(dest) == []


def test_levels_are_named_by_resolution_and_carry_microns(cohort_pair: tuple[Path, Path]) -> None:
    _, dest = cohort_pair
    cohort = open_cohort(dest)
    attrs = cohort.group_metadata("imc", "A").to_attributes()
    multiscale = attrs["ome"]["multiscales"][0]
    assert [d["path"] for d in multiscale["datasets"]] == ["0_5mpp", "1_0mpp"]
    assert [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]] == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0]]
    assert [a.get("unit") for a in multiscale["axes"]] == [None, "micrometer", "micrometer"]
    channels = attrs["ome"]["omero"]["channels"]
    assert [c["label"] for c in channels] == cohort.channel_names("imc", "A")
    for channel in channels:
        window = channel["window"]
        assert window["min"] <= window["start"] < window["end"] <= window["max"]
    he = cohort.group_metadata("he", "A").to_attributes()["ome"]["omero"]["channels"]
    assert [(c["label"], c["color"]) for c in he] == [("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF")]


def test_channel_names_follow_channels_per_tissue(cohort_pair: tuple[Path, Path]) -> None:
    src, dest = cohort_pair
    table = pq.read_table(src / "imc/channels_per_tissue.parquet").to_pandas()
    cohort = open_cohort(dest)
    for tissue in cohort.tissues("imc"):
        assert cohort.channel_names("imc", tissue) == table[table.tissue_id == tissue].channel_name.tolist()


def test_open_image_is_lazy_and_labelled(cohort_pair: tuple[Path, Path]) -> None:
    src, dest = cohort_pair
    cohort = open_cohort(dest)
    image = cohort.open_image("imc", "B", 1.0)
    assert image.dims == ("c", "y", "x")
    assert list(image.c.values) == cohort.channel_names("imc", "B")
    assert image.attrs["mpp"] == 1.0 and image.attrs["resolution"] == "1_0mpp"
    np.testing.assert_allclose(image.x.values[:3], [0.0, 1.0, 2.0])
    assert hasattr(image.data, "dask")
    np.testing.assert_array_equal(image.values, read_source_chw(src / "imc/1_0mpp/images/B.tif"))
    mask = cohort.open_image("cell_masks", "B", "0_5mpp")
    assert mask.dims == ("y", "x")
    np.testing.assert_allclose(mask.y.values[:2], [0.0, 0.5])


def test_napari_ome_zarr_opens_every_group_with_channel_names(cohort_pair: tuple[Path, Path]) -> None:
    from napari_ome_zarr import napari_get_reader

    _, dest = cohort_pair
    cohort = open_cohort(dest)
    for modality, tissue in _groups(dest):
        path = str(dest / cohort.group_path(modality, tissue))
        layers = napari_get_reader(path)(path)
        if modality in MASK_KINDS:
            assert [kind for *_, kind in layers] == ["labels"]
        else:  # napari-ome-zarr 0.10: one layer with a channel axis; 0.11: one layer per channel
            names = cohort.channel_names(modality, tissue)
            assert {kind for *_, kind in layers} == {"image"} and len(layers) in (1, len(names))
            labels = [n for _, kwargs, _ in layers for n in (kwargs["name"] if len(layers) == 1 else [kwargs["name"]])]
            assert [n.split(": ", 1)[1] for n in labels] == names
            limits = [kwargs["contrast_limits"] for _, kwargs, _ in layers]
            assert len(limits[0] if len(layers) == 1 else limits) == len(names)
        for data, kwargs, _ in layers:
            assert [d.shape[-2:] for d in data] == [
                cohort.open_array(modality, tissue, r).shape[-2:] for r in cohort.resolutions(modality, tissue)
            ]
            assert list(kwargs["scale"])[-2:] == [0.5, 0.5]


def test_non_integer_resolutions_and_computed_levels(tmp_path: Path) -> None:
    from spora_zarr import ConvertOptions, WriteOptions, convert_cohort
    from spora_zarr.testing.cohorts import make_synthetic_cohort

    src = make_synthetic_cohort(tmp_path / "src", tissues=("X",), he_shape=(650, 389), resolutions=(0.65, 1.0), seed=3)
    dest = tmp_path / "out.zarr"
    report = convert_cohort(src, dest, ConvertOptions(progress=False, write=WriteOptions(max_top_size=128, shard=224)))
    assert report.ok, report.summary()
    cohort = open_cohort(dest)
    names = cohort.resolutions("he", "X")
    assert names[:2] == ["0_65mpp", "1_0mpp"] and names[2:] == ["2_0mpp", "4_0mpp"]
    assert cohort.resolutions("tissue_masks", "X")[:2] == ["0_65mpp", "1_0mpp"]
    for res in ("0_65mpp", "1_0mpp"):
        np.testing.assert_array_equal(cohort.open_array("he", "X", res)[...], read_source_chw(src / f"he/{res}/images/X.tif"))
    assert resolution_name(0.65) == "0_65mpp"
    assert validate_store(dest) == []


def test_a_multiplex_cohort_without_channel_tables_gets_them_from_its_images(tmp_path: Path) -> None:
    """The channel names come from the images (OME names, else ``channel_<k>``); the datasets read a modality's
    channels from its tables, so the conversion makes them as add-image does, and a rerun finds nothing to add."""
    from spora_zarr import convert_cohort
    from spora_zarr.datasets import MultiplexImagingDataset
    from spora_zarr.run import RunOptions
    from spora_zarr.testing.cohorts import make_synthetic_cohort

    src = make_synthetic_cohort(tmp_path / "src", tissues=("A", "B"), he_shape=(90, 130), resolutions=(1.0,), with_masks=False, seed=4)
    for table in ("channels.parquet", "channels_per_tissue.parquet"):
        (src / "imc" / table).unlink()
    dest = tmp_path / "out.zarr"
    report = convert_cohort(src, dest, run=RunOptions(progress=False))
    assert report.ok and sorted(report.made) == ["imc/channels.parquet", "imc/channels_per_tissue.parquet"]
    assert "2 channel tables made from the images' channel names" in report.summary()
    cohort = open_cohort(dest)
    per_tissue = pq.read_table(dest / "imc/channels_per_tissue.parquet").to_pylist()
    assert per_tissue == [{"tissue_id": t, "channel_name": n} for t in ("A", "B") for n in cohort.channel_names("imc", t)]
    panel = list(dict.fromkeys(cohort.channel_names("imc", "A") + cohort.channel_names("imc", "B")))
    channels = pq.read_table(dest / "imc/channels.parquet").to_pylist()
    assert channels == [{"channel_name": n, "qc_pass": True, "uniprot_id": None} for n in panel]
    dataset = MultiplexImagingDataset("c", dest, 1.0, 32, modality="imc", verbose=False)
    assert dataset.panel == panel
    assert validate_store(dest, deep=True) == []
    from spora_zarr.read.cohort import Cohort

    asked: list[str] = []
    channel_names = Cohort.channel_names
    try:  # a rerun reads the channel names of no group it kept and the tables list
        Cohort.channel_names = lambda self, modality, tissue: asked.append(tissue) or channel_names(self, modality, tissue)  # type: ignore[method-assign,assignment]
        again = convert_cohort(src, dest, run=RunOptions(progress=False))
    finally:
        Cohort.channel_names = channel_names  # type: ignore[method-assign]
    assert again.ok and again.made == [] and asked == []
