"""The ImageSource seam: any object that produces pixels by window feeds the one writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spora_zarr import WriteOptions, open_cohort, validate_store, write_image
from spora_zarr.sources import ArraySource, ImageSource, SourceInfo
from spora_zarr.store.location import Location
from spora_zarr.store.metadata import update_cohort_attributes
from spora_zarr.store.staging import Staging


class Gradient(ImageSource):
    """A computed image (as a stitched mosaic or a model's prediction would be): pixels made per window."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.name, self.shape, self.dtype, self.info = "<gradient>", shape, np.dtype(np.uint16), SourceInfo()
        self.windows: list[tuple[int, int, int, int]] = []
        self.closed = False

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.windows.append((y0, y1, x0, x1))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return np.stack([(yy + c * xx) % 4096 for c in range(self.shape[0])]).astype(np.uint16)

    def close(self) -> None:
        self.closed = True


def test_a_computed_source_is_written_window_by_window(tmp_path: Path) -> None:
    location = Location.parse(tmp_path / "c.zarr")
    update_cohort_attributes(location, modalities={"synthetic": ["1_0mpp"]})
    Staging(location).ensure_groups("synthetic/images")
    with Gradient((2, 700, 900)) as source:
        options = WriteOptions(chunk=64, shard=256, max_top_size=256)
        write_image(location, "synthetic/images/T", {1.0: source}, channel_names=["a", "b"], options=options)
    assert source.closed
    assert max((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in source.windows) <= 256 * 256  # never the whole image at once
    yy, xx = np.mgrid[:700, :900]
    expected = np.stack([(yy + c * xx) % 4096 for c in range(2)]).astype(np.uint16)
    cohort = open_cohort(location)
    np.testing.assert_array_equal(cohort.open_image("synthetic", "T", 1.0).values, expected)
    assert cohort.resolutions("synthetic", "T") == ["1_0mpp", "2_0mpp", "4_0mpp"]
    assert validate_store(location) == []


def test_array_sources_are_sources() -> None:
    source = ArraySource(np.zeros((5, 6), np.uint8))
    assert isinstance(source, ImageSource) and source.shape == (1, 5, 6)
    with source as opened:
        assert opened.read(1, 3, 2, 5).shape == (1, 2, 3)
