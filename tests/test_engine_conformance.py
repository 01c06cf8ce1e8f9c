"""Every read engine against the conformance class of ``spora_zarr.testing.engines``, and the numpy reference through it."""

from __future__ import annotations

import numpy as np

from spora_zarr.read.levels import LevelReader, WindowReader
from spora_zarr.store.location import Location
from spora_zarr.testing.engines import EngineConformance, NumpyEngine


class TestDirect(EngineConformance):
    engine = "direct"


class TestTensorstore(EngineConformance):
    engine = "tensorstore"


class TestZarrs(EngineConformance):
    engine = "zarrs"


class TestZarr(EngineConformance):
    engine = "zarr"


class TestNumpyReference(EngineConformance):
    """The window logic of the readers (clipping, channels) over numpy slicing: checks the test class itself."""

    engine = "numpy"
    reads_damaged = False

    def open_reader(self, location: Location, path: str, data: np.ndarray) -> LevelReader:
        return WindowReader(NumpyEngine(data), location, path, data.shape, data.dtype)
