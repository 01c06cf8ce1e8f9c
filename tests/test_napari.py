"""The napari plugin on converted stores, driven through a headless ``ViewerModel`` (no Qt).

A real ``napari.Viewer`` under Xvfb is exercised in ``tests/test_napari_viewer.py``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from spora_zarr import ConvertOptions, add_image, convert_cohort, open_cohort
from spora_zarr.napari import CohortBrowser, add_layers, napari_get_reader, read_store, tissue_layers
from spora_zarr.napari.levels import LazyLevel
from spora_zarr.napari.reader import MAX_TILE_SHAPES
from spora_zarr.store.tables import write_table
from spora_zarr.testing.mixed import MIXED_CHANNELS, MIXED_TILE, make_mixed_cohort

napari = pytest.importorskip("napari")
from napari.components import ViewerModel  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("napari")
    dest = root / "cohort.zarr"
    assert convert_cohort(make_mixed_cohort(root / "tiff"), dest, ConvertOptions(progress=False)).ok
    return dest


def test_the_reader_recognises_spora_parts_and_declines_the_rest(store: Path, tmp_path: Path) -> None:
    for part in ("", "imc", "imc/images", "imc/images/R1", "he/images/R2", "segmentations/cell_masks/R3"):
        assert napari_get_reader(str(store / part)) is not None, part
    (tmp_path / "plain.zarr").mkdir()
    (tmp_path / "plain.zarr" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    for other in (str(tmp_path), str(tmp_path / "plain.zarr"), str(tmp_path / "missing"), str(store / "imc/1_0mpp")):
        assert napari_get_reader(other) is None, other
    assert napari_get_reader([str(store), str(store)]) is None


def test_a_tissue_as_layers_in_microns(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = napari_get_reader(str(store))(str(store))  # type: ignore[misc]
    assert capsys.readouterr().out == ""  # the reader prints nothing
    by_type = [(kind, kwargs["name"]) for _, kwargs, kind in layers]
    assert by_type == [
        ("image", "R1: he"),
        ("image", list(MIXED_CHANNELS["R1"])),
        ("labels", "R1: tissue_masks"),
        ("labels", "R1: cell_masks"),
        ("shapes", f"R1: tiles 1_0mpp default {MIXED_TILE}px"),
    ]
    cohort = open_cohort(store)
    he, imc = layers[0], layers[1]
    assert he[1]["rgb"] and he[1]["scale"] == (0.5, 0.5) and he[0].shape[-1] == 3
    assert imc[1]["scale"] == (1.0, 1.0) and imc[1]["channel_axis"] == 0
    metadata = cohort.group_metadata("imc", "R1")
    for i, channel in enumerate(metadata.channels):
        assert imc[1]["contrast_limits"][i] == (channel.window["start"], channel.window["end"])
        assert imc[1]["colormap"][i] == f"#{channel.color.lower()}"
    tiles = cohort.read_table(f"tiling/1_0mpp/default/{MIXED_TILE}_tile_coordinates.parquet").to_pandas()
    assert len(layers[4][0]) == int((tiles.tissue_id == "R1").sum())
    # H&E at 0.5 um/px and the multiplex at 1.0 um/px cover the same microns
    he_extent = np.array(he[0].shape[:2]) * 0.5
    imc_extent = np.array(imc[0].shape[1:]) * 1.0
    np.testing.assert_allclose(he_extent, imc_extent, atol=1.0)


def test_layers_in_a_viewer_model(store: Path) -> None:
    viewer = ViewerModel()
    add_layers(viewer, read_store(str(store), "R2"))
    colors = {c.label: c for c in open_cohort(store).group_metadata("imc", "R2").channels}
    names = [layer.name for layer in viewer.layers]
    assert names[:4] == ["R2: he", *MIXED_CHANNELS["R2"]]
    assert viewer.layers["R2: cell_masks"].contour == 1 and viewer.layers["R2: cell_masks"].visible
    assert viewer.layers["R2: tissue_masks"].contour == 3  # the tissue outline
    for layer in viewer.layers:
        if layer.name.startswith("R2: he"):
            assert layer.rgb and tuple(layer.scale) == (0.5, 0.5)
        elif layer.name in MIXED_CHANNELS["R2"]:
            assert tuple(layer.scale) == (1.0, 1.0)
            assert layer.blending == "additive"
            channel = colors[layer.name]
            np.testing.assert_allclose(layer.colormap.colors[0], [0, 0, 0, 1])  # black to the omero colour
            assert "".join(f"{round(v * 255):02X}" for v in layer.colormap.colors[-1][:3]) == channel.color
            assert tuple(layer.contrast_limits) == (channel.window["start"], channel.window["end"])


def test_multiscale_levels_are_all_handed_lazily(tmp_path: Path) -> None:
    big = np.random.default_rng(0).integers(0, 1000, (2, 600, 700), dtype=np.uint16)
    import tifffile

    tifffile.imwrite(tmp_path / "b.ome.tif", big, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["A", "B"]}})
    store = tmp_path / "c.zarr"
    from spora_zarr import WriteOptions

    add_image(store, str(tmp_path / "b.ome.tif"), modality="cycif", tissue_id="T", mpp=0.5, write=WriteOptions(max_top_size=128))
    data, kwargs, _ = read_store(str(store))[0]
    assert kwargs["multiscale"] and len(data) == len(open_cohort(store).resolutions("cycif", "T")) == 4
    assert all(isinstance(level, LazyLevel) for level in data)  # lazy: shards are read when napari indexes
    np.testing.assert_array_equal(np.asarray(data[0][1, 10:20, 30:40]), big[1, 10:20, 30:40])


def test_channel_kinds_select_channels(store: Path) -> None:
    cohort = open_cohort(store)
    layers = tissue_layers(cohort, "R1", modalities=["imc"], kind="uniprot_filtered", masks=(), tiles=None)
    assert layers[0][1]["name"] == ["CD3", "CD20"]  # qc_pass and a UniProt id; Ki67 fails QC
    assert layers[0][0].shape[0] == 2


def test_big_tile_tables_become_a_labels_layer(store: Path) -> None:
    cohort = open_cohort(store)
    n = MAX_TILE_SHAPES + 1
    rows, cols = np.divmod(np.arange(n), 200)
    table = pa.table({"tissue_id": ["R1"] * n, "tile_id": np.arange(n), "row": rows * 2, "col": cols * 2})
    write_table(cohort.location, "tiling/1_0mpp/dense/2_tile_coordinates.parquet", table)
    cohort = open_cohort(store)
    layers = tissue_layers(cohort, "R1", modalities=[], masks=(), tiles="tiling/1_0mpp/dense/2_tile_coordinates.parquet")
    data, kwargs, kind = layers[0]
    assert kind == "labels" and data.max() == n and kwargs["scale"] == (1.0, 1.0)
    assert data[2 * 7, 2 * 3] == 7 * 200 + 3 + 1  # tile (row 14, col 6) is label tile_id + 1
    small = tissue_layers(cohort, "R1", modalities=[], masks=(), tiles=f"tiling/1_0mpp/default/{MIXED_TILE}_tile_coordinates.parquet")
    assert small[0][2] == "shapes"


def test_browsing_keeps_contrast_per_channel_name(store: Path) -> None:
    viewer = ViewerModel()
    browser = CohortBrowser(viewer, str(store), modalities=["imc"])
    assert browser.tissues() == ["R1", "R2", "R3"] and browser.tissues("r2") == ["R2"]
    browser.show("R1")
    viewer.layers["DNA1"].contrast_limits = (3.0, 33.0)
    viewer.add_points(np.zeros((1, 2)), name="mine")  # a layer of the user's: kept
    browser.show("R2", kind="qc_filtered")
    names = [layer.name for layer in viewer.layers]
    assert "mine" in names and "R1: cell_masks" not in names and "R2: cell_masks" in names
    assert [n for n in names if n in MIXED_CHANNELS["R2"]] == ["CD3", "DNA1"]  # Ki67 fails QC
    assert tuple(viewer.layers["DNA1"].contrast_limits) == (3.0, 33.0)


def test_missing_optional_parts_open_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import imageio.v3 as iio

    image = np.random.default_rng(1).integers(0, 255, (50, 60), dtype=np.uint8)
    iio.imwrite(tmp_path / "x.png", image)
    store = tmp_path / "c.zarr"
    add_image(store, str(tmp_path / "x.png"), modality="cycif", tissue_id="T", mpp=1.0)
    document_path = store / "cycif/images/T/zarr.json"
    document = json.loads(document_path.read_text())
    del document["attributes"]["ome"]["omero"]
    document_path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="spora_zarr"):
        layers = napari_get_reader(str(store))(str(store))  # type: ignore[misc]
    assert [kind for _, _, kind in layers] == ["image"]  # no masks, no tiles
    assert "omero lacks" in caplog.text
    kwargs = layers[0][1]
    assert kwargs["contrast_limits"][0] == (float(image.min()), float(image.max()))
    viewer = ViewerModel()
    add_layers(viewer, layers)
    assert len(viewer.layers) == 1


def test_view_refuses_an_unknown_tissue_before_opening_a_window(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spora_zarr.cli import main

    assert main(["view", str(store), "NOPE"]) == 1
    err = capsys.readouterr().err
    assert "no tissue 'NOPE'" in err and "R1" in err


def test_napari_discovers_the_plugin_and_its_reader(store: Path) -> None:
    """The installed npe2 manifest loads (its name must match the distribution) and offers the reader for store paths."""
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    assert "spora_zarr" in manager._manifests, "the spora_zarr napari manifest did not register"
    for path in (store, store / "imc" / "images" / "R1", store / "segmentations" / "cell_masks" / "R1"):
        readers = [reader.plugin_name for reader in manager.iter_compatible_readers([str(path)])]
        assert "spora_zarr" in readers, (path, readers)
    widgets = [w.command for w in manager.get_manifest("spora_zarr").contributions.widgets or []]
    assert widgets == ["spora_zarr.cohort_widget"]


def test_a_z_stack_opens_with_its_z_spacing(tmp_path: Path) -> None:
    """A stitched z stack: channel layers and labels of (z, y, x) in microns, one plane read per slice."""
    from spora_zarr.sources import ArraySource
    from spora_zarr.store.location import Location
    from spora_zarr.store.metadata import update_cohort_attributes
    from spora_zarr.write import WriteOptions, write_image, write_labels

    rng = np.random.default_rng(5)
    volume = rng.integers(0, 4000, (2, 6, 300, 280), dtype=np.uint16)
    labels = rng.integers(0, 50, (1, 6, 300, 280), dtype=np.uint32)
    location = Location.parse(tmp_path / "s.zarr")
    update_cohort_attributes(location, modalities={"exm": ["0_5mpp"]}, mask_kinds=["cell_masks"])
    options = WriteOptions(max_top_size=128)
    write_image(
        location,
        "exm/images/T1",
        {0.5: ArraySource(volume)},
        channel_names=["a", "b"],
        options=options,
        z_mpp=2.0,
        spora={"tissue_id": "T1", "modality": "exm"},
    )
    write_labels(
        location,
        "segmentations/cell_masks/T1",
        {0.5: ArraySource(labels)},
        options=options,
        z_mpp=2.0,
        spora={"tissue_id": "T1", "mask_kind": "cell_masks"},
    )
    viewer = ViewerModel()
    add_layers(viewer, read_store(str(tmp_path / "s.zarr")))
    assert [layer.name for layer in viewer.layers] == ["a", "b", "T1: cell_masks"]
    for layer in viewer.layers:
        assert layer.ndim == 3 and tuple(layer.scale) == (2.0, 0.5, 0.5) and layer.multiscale
    np.testing.assert_array_equal(np.asarray(viewer.layers["b"].data[0][4, 10:20, 30:40]), volume[1, 4, 10:20, 30:40])
    np.testing.assert_array_equal(np.asarray(viewer.layers["T1: cell_masks"].data[0][5]), labels[0, 5])
    assert viewer.dims.range[0].stop == pytest.approx(10.0)  # 6 planes of 2 um
