"""``Cohort``'s mask methods: a mask is named by its kind, an image by its modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spora_zarr.access import parse_resolution
from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.read import open_cohort

from .conftest import read_source_chw


def test_mask_methods_read_the_mask(cohort_pair: tuple[Path, Path]) -> None:
    src, dest = cohort_pair
    cohort = open_cohort(dest)
    assert cohort.mask_group_path("cell_masks", "B") == "segmentations/cell_masks/B"
    assert cohort.mask_metadata("cell_masks", "B").is_label
    names = cohort.mask_resolutions("cell_masks", "B")
    assert names[0] == "0_5mpp" and names == sorted(names, key=parse_resolution)
    assert cohort.mask_level_path("cell_masks", "B") == "segmentations/cell_masks/B/0_5mpp"
    assert cohort.mask_level_path("cell_masks", "B", parse_resolution(0.5)) == "segmentations/cell_masks/B/0_5mpp"
    array = cohort.open_mask_array("cell_masks", "B", "0_5mpp")
    expected = read_source_chw(src / "segmentations/0_5mpp/cell_masks/B.tif")[0]
    np.testing.assert_array_equal(array[...], expected)
    mask = cohort.open_mask("cell_masks", "B", 0.5)
    assert mask.dims == ("y", "x")
    np.testing.assert_allclose(mask.y.values[:2], [0.0, 0.5])
    np.testing.assert_array_equal(mask.values, expected)


def test_the_old_spelling_still_reads_masks(cohort_pair: tuple[Path, Path]) -> None:
    _, dest = cohort_pair
    cohort = open_cohort(dest)
    assert cohort.group_path("tissue_masks", "A") == cohort.mask_group_path("tissue_masks", "A")
    assert cohort.resolutions("tissue_masks", "A") == cohort.mask_resolutions("tissue_masks", "A")
    assert cohort.level_path("tissue_masks", "A", 1.0) == cohort.mask_level_path("tissue_masks", "A", 1.0)
    assert cohort.group_metadata("tissue_masks", "A") == cohort.mask_metadata("tissue_masks", "A")
    assert cohort.tissues("tissue_masks") == cohort.mask_tissues("tissue_masks")
    old, new = cohort.open_image("tissue_masks", "A", 1.0), cohort.open_mask("tissue_masks", "A", 1.0)
    assert old.identical(new)


def test_mask_methods_refuse_images_and_unknown_masks(cohort_pair: tuple[Path, Path]) -> None:
    _, dest = cohort_pair
    cohort = open_cohort(dest)
    with pytest.raises(InvalidInputError, match="unknown mask kind 'imc'"):
        cohort.mask_metadata("imc", "A")  # an image modality is no mask kind
    with pytest.raises(InvalidInputError, match="unknown mask kind"):
        cohort.open_mask("nuclei", "A")
    with pytest.raises(NotFoundError, match="no tissue 'Z' in 'cell_masks'"):
        cohort.mask_resolutions("cell_masks", "Z")
    with pytest.raises(NotFoundError, match="has no resolution 8_0mpp; it has"):
        cohort.mask_level_path("cell_masks", "B", 8.0)
