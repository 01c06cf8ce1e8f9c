"""The spora dataset API over the store: tiles, crops and tissues equal the source TIFFs, for every kind."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from spora_zarr.datasets import (
    CellMask,
    ComposedImagingDataset,
    CycIFModality,
    HEImagingDataset,
    HETissue,
    IMCModality,
    MultiplexImagingDataset,
    MultiplexTissue,
    SingleIHCImagingDataset,
    SporaDataset,
    TissueMask,
)
from spora_zarr.errors import InvalidInputError, NotFoundError

from .conftest import read_source_chw

SIZE = 64


@pytest.fixture(scope="module")
def store(cohort_pair: tuple[Path, Path]) -> tuple[Path, Path]:
    return cohort_pair


def expected_channels(src: Path, tissue: str, kind: str) -> list[str]:
    channels = pq.read_table(src / "imc/channels.parquet").to_pandas()
    per_tissue = pq.read_table(src / "imc/channels_per_tissue.parquet").to_pandas()
    stored = per_tissue[per_tissue.tissue_id == tissue].channel_name.tolist()
    keep = channels
    if kind != "complete":
        keep = keep[keep.qc_pass]
    if kind == "uniprot_filtered":
        keep = keep[keep.uniprot_id.notna()]
    return [c for c in stored if c in set(keep.channel_name)]


def source_path(src: Path, modality: str, res: str, tissue: str) -> Path:
    found = list((src / modality / res).glob(f"images/{tissue}.tif")) or list((src / modality / res).glob(f"{tissue}.zarr"))
    return found[0]


@pytest.mark.parametrize("kind", ["complete", "qc_filtered", "uniprot_filtered"])
def test_multiplex_tiles_and_tissues_equal_source(store: tuple[Path, Path], kind: str) -> None:
    src, dest = store
    dataset = MultiplexImagingDataset("t", dest, 1.0, SIZE, modality="imc")
    for tissue in dataset.tissue_ids:
        full = read_source_chw(source_path(src, "imc", "1_0mpp", tissue))
        stored_names = (
            pq.read_table(src / "imc/channels_per_tissue.parquet").to_pandas().query("tissue_id == @tissue").channel_name.tolist()
        )
        names = expected_channels(src, tissue, kind)
        picked = full[[stored_names.index(n) for n in names]]
        assert dataset.channel_names(tissue, kind) == names
        for row, col in [(0, 0), (17, 33), (full.shape[1] - SIZE, full.shape[2] - SIZE)]:
            tile = dataset.read_tile(tissue, row, col, kind=kind, preprocess=False)
            np.testing.assert_array_equal(tile.numpy(), picked[:, row : row + SIZE, col : col + SIZE])
        tissue_obj = dataset.get_tissue(tissue, kind=kind, preprocess=False)
        assert isinstance(tissue_obj, MultiplexTissue)
        np.testing.assert_array_equal(tissue_obj.image.numpy(), picked)
        assert tissue_obj.channel_names == names
        panel = pq.read_table(src / "imc/channels.parquet").to_pandas().channel_name.tolist()
        assert tissue_obj.measured_mask.tolist() == [c in stored_names for c in panel]
        assert tissue_obj.image_loading_mask.tolist() == [c in names for c in stored_names]
        preprocessed = dataset.read_tile(tissue, 0, 0, kind=kind)
        assert preprocessed.dtype == torch.float32 and preprocessed.shape == (len(names), SIZE, SIZE)


def test_edge_tiles_slice_directly_by_default_and_pad_otherwise(store: tuple[Path, Path]) -> None:
    src, dest = store
    full = read_source_chw(src / "he/1_0mpp/images/A.tif")
    height, width = full.shape[1:]
    row, col = height - 10, width - 20
    direct = HEImagingDataset("t", dest, 1.0, SIZE).read_tile("A", row, col, preprocess=False)
    np.testing.assert_array_equal(direct.numpy(), full[:, row:, col:])
    padded = HEImagingDataset("t", dest, 1.0, SIZE, tiling_strategy="best_mask").read_tile("A", row, col, preprocess=False)
    assert padded.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(padded[:, :10, :20].numpy(), full[:, row:, col:])
    assert padded[:, 10:, :].abs().sum() == 0 and padded[:, :, 20:].abs().sum() == 0


def test_read_tile_into_out(store: tuple[Path, Path]) -> None:
    """``out=`` receives exactly what a plain read returns (channel subsets, zero padding over stale values, masks)."""
    _, dest = store
    imc = MultiplexImagingDataset("t", dest, 1.0, SIZE, modality="imc", tiling_strategy="best_mask")
    tissue = imc.tissue_ids[0]
    height, width = imc.image_shape(tissue)[1:]
    for kind in ("complete", "qc_filtered"):
        for row, col in [(0, 0), (17, 33), (height - 10, width - 20), (-5, -7)]:
            want = imc.read_tile(tissue, row, col, kind=kind, preprocess=False)
            out = torch.full(want.shape, 999, dtype=want.dtype)
            assert imc.read_tile(tissue, row, col, kind=kind, preprocess=False, out=out) is out
            assert torch.equal(out, want), (kind, row, col)
            array = np.full(tuple(want.shape), 999, np.uint16)
            np.testing.assert_array_equal(imc.read_tile(tissue, row, col, kind=kind, preprocess=False, out=array).numpy(), want.numpy())
    mask = imc.read_mask_tile(tissue, height - 10, 3, mask="cell_masks")
    out = torch.full(mask.shape, 5, dtype=mask.dtype)
    assert torch.equal(imc.read_mask_tile(tissue, height - 10, 3, mask="cell_masks", out=out), mask) and out.sum() == mask.sum()
    with pytest.raises(InvalidInputError, match="takes stored values; pass preprocess=False"):
        imc.read_tile(tissue, 0, 0, out=torch.zeros(want.shape, dtype=torch.float32))
    with pytest.raises(InvalidInputError, match="out for a window of"):
        imc.read_tile(tissue, 0, 0, preprocess=False, out=torch.zeros((1, SIZE, SIZE), dtype=torch.uint16))


def test_he_modes_normalisation_and_crops(store: tuple[Path, Path]) -> None:
    src, dest = store
    full = read_source_chw(src / "he/0_5mpp/images/B.tif")
    dataset = HEImagingDataset("t", dest, "0_5mpp", SIZE, mean_std_type="hibou")
    tissue = dataset.get_tissue("B", image_mode="HWC", preprocess=False)
    assert isinstance(tissue, HETissue) and tissue.image_mode == "HWC"
    np.testing.assert_array_equal(tissue.image.numpy(), full.transpose(1, 2, 0))
    normalised = dataset.read_tile("B", 5, 7)
    mean, std = torch.tensor([0.7068, 0.5755, 0.722]).view(3, 1, 1), torch.tensor([0.195, 0.2316, 0.1816]).view(3, 1, 1)
    expected = (torch.from_numpy(full[:, 5 : 5 + SIZE, 7 : 7 + SIZE]).float() / 255 - mean) / std
    torch.testing.assert_close(normalised, expected)
    tiles = pd.read_parquet(src / f"tiling/0_5mpp/default/{SIZE}_tile_coordinates.parquet")
    first = tiles[tiles.tissue_id == "B"].iloc[0]
    crop = dataset.get_crop("B", int(first.tile_id), image_mode="HWC", preprocess=False)
    np.testing.assert_array_equal(crop.numpy(), full[:, first.row : first.row + SIZE, first.col : first.col + SIZE].transpose(1, 2, 0))


def test_masks_ihc_and_composed(store: tuple[Path, Path]) -> None:
    src, dest = store
    he = HEImagingDataset("t", dest, 1.0, SIZE)
    cells = read_source_chw(src / "segmentations/1_0mpp/cell_masks/A.tif")[0]
    np.testing.assert_array_equal(he.read_mask_tile("A", 3, 4, mask="cell_masks").numpy(), cells[3 : 3 + SIZE, 4 : 4 + SIZE])
    assert isinstance(he.get_cell_mask("A"), CellMask) and isinstance(he.get_tissue_mask("A"), TissueMask)
    np.testing.assert_array_equal(he.get_cell_mask("A").mask.numpy(), cells)
    ihc = SingleIHCImagingDataset("t", dest, "CD3", 1.0, SIZE)
    ihc_tile = ihc.read_tile("A", 0, 0, preprocess=False)
    np.testing.assert_array_equal(ihc_tile.numpy(), read_source_chw(src / "ihc/ihc_CD3/1_0mpp/images/A.tif")[:, :SIZE, :SIZE])
    composed = ComposedImagingDataset([he, MultiplexImagingDataset("t", dest, 1.0, SIZE), ihc])
    assert composed.tissue_ids == ["A", "B", "C"]
    tiles = composed.read_tile("B", 8, 9, preprocess=False)
    assert set(tiles) == {"he", "imc", "ihc/ihc_CD3"}
    assert composed.get_tissue("B").modalities["ihc/ihc_CD3"].marker == "CD3"
    spora = SporaDataset([composed, ComposedImagingDataset([he])], sampling="tile", seed=0)
    assert len(spora) == 2 * len(he.tile_coordinates)
    assert len(spora.sample(5)) == 5


def test_modalities_and_pickling(store: tuple[Path, Path]) -> None:
    _, dest = store
    assert IMCModality().directory == "imc" and CycIFModality().name == "cycif"
    dataset = MultiplexImagingDataset("t", dest, 1.0, SIZE, modality=IMCModality())
    before = dataset.read_tile("A", 0, 0, preprocess=False)
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 50_000
    assert torch.equal(clone.read_tile("A", 0, 0, preprocess=False), before)


def test_bad_requests(store: tuple[Path, Path]) -> None:
    _, dest = store
    dataset = MultiplexImagingDataset("t", dest, 1.0, SIZE)
    with pytest.raises(NotFoundError, match="unknown tissue 'nope'"):
        dataset.read_tile("nope", 0, 0)
    with pytest.raises(NotFoundError, match="0_5mpp, 1_0mpp"):
        MultiplexImagingDataset("t", dest, 2.0, SIZE)
    with pytest.raises(InvalidInputError, match="unknown channel kind 'qc'"):
        dataset.read_tile("A", 0, 0, kind="qc")
    with pytest.raises(InvalidInputError, match="outside"):
        dataset.read_tile("A", 10_000, 0)
    with pytest.raises(InvalidInputError, match="outside"):
        dataset.read_tile("A", -SIZE, 0)
    with pytest.raises(NotFoundError, match="no modality 'cycif'"):
        MultiplexImagingDataset("t", dest, 1.0, SIZE, modality="cycif")
    with pytest.raises(InvalidInputError, match="malformed standardization spec"):
        MultiplexImagingDataset("t", dest, 1.0, SIZE, standardization="quantile_clipping/uq_0.99_everywhere")
    with pytest.raises(InvalidInputError, match="multiplex"):
        HEImagingDataset("t", dest, 1.0, SIZE).read_tile("A", 0, 0, kind="qc_filtered")
