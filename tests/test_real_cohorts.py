"""The training path on a cohort as real ones are (``spora_zarr.testing.mixed``).

Mixed multiplex dtypes across tissues (uint16, float32, uint8), cell masks stored as uint16 and
uint32 (ids beyond 65535), channels out of panel order, a tissue with no UniProt-mapped channel.
Every item of a multi-worker DataLoader is checked against the source pixels scattered into the panel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spora_zarr import ConvertOptions, convert_cohort, open_cohort
from spora_zarr.datasets import CHANNEL_KINDS, ComposedImagingDataset, HEImagingDataset, MultiplexImagingDataset
from spora_zarr.testing.mixed import MIXED_CHANNELS, MIXED_PANEL, MIXED_TILE, make_mixed_cohort
from spora_zarr.torch import TileDataset, worker_init_fn

from .conftest import read_source_chw

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mixed")
    source = make_mixed_cohort(root / "tiff")
    store = root / "cohort.zarr"
    report = convert_cohort(source, store, ConvertOptions(progress=False))
    assert report.ok, report.summary()
    return source, store


def _panel(kind: str) -> list[str]:
    keep = {
        "complete": lambda qc, uniprot: True,
        "qc_filtered": lambda qc, uniprot: qc,
        "uniprot_filtered": lambda qc, uniprot: qc and uniprot is not None,
    }[kind]
    return [name for name, qc, uniprot in MIXED_PANEL if keep(qc, uniprot)]


def _window(image: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """``image[..., row:row+size, col:col+size]`` zero-padded past the edges."""
    out = np.zeros((*image.shape[:-2], size, size), image.dtype)
    part = image[..., row : row + size, col : col + size]
    out[..., : part.shape[-2], : part.shape[-1]] = part
    return out


def _expected_multiplex(source: Path, tissue: str, row: int, col: int, kind: str, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    image = read_source_chw(source / f"imc/1_0mpp/images/{tissue}.tif")
    panel = _panel(kind)
    planes = np.zeros((len(panel), MIXED_TILE, MIXED_TILE), dtype)
    measured = np.zeros(len(panel), bool)
    for position, name in enumerate(panel):
        if name in MIXED_CHANNELS[tissue]:
            planes[position] = _window(image[MIXED_CHANNELS[tissue].index(name)], row, col, MIXED_TILE)
            measured[position] = True
    return planes, measured


@pytest.mark.timeout(600)
@pytest.mark.parametrize("preprocess", [False, True])
@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_dataloader_items_equal_the_source_pixels(mixed: tuple[Path, Path], kind: str, preprocess: bool) -> None:
    source, store = mixed
    he = HEImagingDataset("mixed", store, 0.5, 2 * MIXED_TILE, verbose=False)
    imc = MultiplexImagingDataset("mixed", store, 1.0, MIXED_TILE, modality="imc", verbose=False)
    tiles = TileDataset(ComposedImagingDataset([imc, he]), kind=kind, preprocess=preprocess)
    assert tiles.masks == ("tissue_masks", "cell_masks")
    imc_dtype = np.dtype(np.float32)  # uint16, float32 and uint8 tissues: numpy's promotion, exact for all three
    float32 = np.dtype(np.float32)
    assert tiles.dtypes == {"imc": float32 if preprocess else imc_dtype, "he": float32 if preprocess else np.dtype(np.uint8)}
    assert tiles.mask_dtypes == {"tissue_masks": np.dtype(np.int32), "cell_masks": np.dtype(np.int64)}  # as torch operates on them
    loader = DataLoader(tiles, batch_size=4, num_workers=2, worker_init_fn=worker_init_fn, timeout=300)
    seen = 0
    for batch in loader:
        assert batch["imc"].dtype == torch.float32
        assert batch["cell_masks"].dtype == torch.int64
        for i in range(len(batch["tissue_id"])):
            tissue, row, col = batch["tissue_id"][i], int(batch["row"][i]), int(batch["col"][i])
            planes, measured = _expected_multiplex(source, tissue, row, col, kind, imc_dtype)
            np.testing.assert_array_equal(batch["imc"][i].numpy(), planes)
            np.testing.assert_array_equal(batch["imc_channel_mask"][i].numpy(), measured)
            rgb = _window(read_source_chw(source / f"he/0_5mpp/images/{tissue}.tif"), 2 * row, 2 * col, 2 * MIXED_TILE)
            if preprocess:
                expected = ((rgb / 255.0 - MEAN[:, None, None]) / STD[:, None, None]).astype(np.float32)
                np.testing.assert_allclose(batch["he"][i].numpy(), expected, rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(batch["he"][i].numpy(), rgb)
            for mask in ("tissue_masks", "cell_masks"):
                stored = read_source_chw(source / f"segmentations/1_0mpp/{mask}/{tissue}.tif")[0]
                np.testing.assert_array_equal(batch[mask][i].numpy(), _window(stored, row, col, MIXED_TILE))
            seen += 1
    assert seen == len(tiles) > 0


def test_a_kind_with_no_channels_for_a_tissue_reads_zero_channels(mixed: tuple[Path, Path]) -> None:
    _, store = mixed
    imc = MultiplexImagingDataset("mixed", store, 1.0, MIXED_TILE, modality="imc", verbose=False)
    assert imc.channel_names("R3", "uniprot_filtered") == []
    tile = imc.read_tile("R3", 0, 0, kind="uniprot_filtered", preprocess=False)
    assert tuple(tile.shape) == (0, MIXED_TILE, MIXED_TILE)
    tissue = imc.get_tissue("R3", kind="uniprot_filtered")
    assert tuple(tissue.image.shape) == (0, *imc.image_shape("R3")[1:])
    assert tissue.channel_names == [] and not tissue.measured_mask[[2]].any()


def test_channel_colours_follow_the_panel(mixed: tuple[Path, Path]) -> None:
    _, store = mixed
    cohort = open_cohort(store)
    colours: dict[str, set[str | None]] = {}
    for tissue in cohort.tissues("imc"):
        for channel in cohort.group_metadata("imc", tissue).channels:
            colours.setdefault(channel.label, set()).add(channel.color)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # one colour per marker


def test_mask_tissues_are_listed_like_images(mixed: tuple[Path, Path]) -> None:
    _, store = mixed
    cohort = open_cohort(store)
    assert cohort.tissues("cell_masks") == cohort.mask_tissues("cell_masks") == ["R1", "R2", "R3"]
