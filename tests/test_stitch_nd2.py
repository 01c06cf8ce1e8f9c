"""A real Nikon .nd2 file read as a tile and written as a z stack, against the nd2 package's own reading.

The file is ``cluster.nd2`` (T 3, Z 10, C 2, 31 x 38 uint16, a Nikon A1 piezo z
stack), the test file shipped in the ``pims_nd2`` 1.1 source distribution. It is
not committed here (its licence is not stated): the fixture fetches it from the
package registry once into ``~/.cache/spora_zarr/`` and skips, saying why,
when the registry cannot be reached.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from spora_zarr.errors import InvalidInputError
from spora_zarr.stitching import MosaicSource, Tileset
from spora_zarr.store.location import Location
from spora_zarr.write.options import WriteOptions
from spora_zarr.write.writer import write_image

nd2 = pytest.importorskip("nd2")

CACHE = Path.home() / ".cache" / "spora_zarr"
SDIST, MEMBER = "pims_nd2-1.1.tar.gz", "pims_nd2-1.1/pims_nd2/cluster.nd2"


@pytest.fixture(scope="module")
def cluster_nd2() -> Path:
    target = CACHE / "cluster.nd2"
    if not target.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "pims_nd2==1.1", "-d", str(CACHE)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode or not (CACHE / SDIST).is_file():
            pytest.skip(f"the real nd2 sample (pims_nd2 1.1 sdist) could not be fetched from the package registry: {done.stderr[-300:]}")
        with tarfile.open(CACHE / SDIST) as archive:
            source = archive.extractfile(MEMBER)
            assert source is not None
            target.write_bytes(source.read())
        (CACHE / SDIST).unlink()
    return target


def test_real_nd2_z_stack_reads_and_writes_as_nd2_reads_it(cluster_nd2: Path, tmp_path: Path) -> None:
    with nd2.ND2File(cluster_nd2) as handle:
        assert handle.sizes == {"T": 3, "Z": 10, "C": 2, "Y": 31, "X": 38}
        expected = np.moveaxis(handle.asarray()[0], 1, 0)  # the first timepoint, (Z, C, Y, X) -> (C, Z, Y, X)
        voxel = tuple(handle.voxel_size())
    tileset = Tileset(ndim=3)
    tileset.init_from_nd2(cluster_nd2)
    assert len(tileset) == 1 and tileset.channels == 2 and tileset.dtype == np.uint16
    assert tileset.shape == (10, 31, 38) and np.allclose(tileset.voxel_size, voxel)
    np.testing.assert_array_equal(tileset.read_tile(0, 3, 7, 5, 20, 2, 30), expected[:, 3:7, 5:20, 2:30])
    store = tmp_path / "c.zarr"
    write_image(
        Location.parse(str(store)),
        "imc/images/T1",
        {1.0: MosaicSource(tileset)},
        channel_names=["c0", "c1"],
        options=WriteOptions(chunk=16, shard=32, max_top_size=16),
    )
    tileset.close()
    ome: Any = zarr.open_group(str(store / "imc/images/T1"), mode="r").attrs["ome"]
    full = ome["multiscales"][0]["datasets"][0]["path"]
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(store / "imc/images/T1" / full), mode="r")[:]), expected)


def test_real_nd2_z_stack_needs_3d(cluster_nd2: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"cluster.nd2: 10 z planes per position; read it with Tileset\(ndim=3\)"):
        Tileset().init_from_nd2(cluster_nd2)
