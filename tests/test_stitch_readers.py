"""Stitching readers: BigDataViewer H5 datasets written with h5py stitch back exactly; nd2 positions and stage offsets; missing extras."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from skimage import data

from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.stitching import MosaicSource, Tileset
from spora_zarr.stitching.nikon import nd2_tiles, position_frames, stage_to_offsets
from spora_zarr.store.location import Location
from spora_zarr.write.options import WriteOptions
from spora_zarr.write.writer import write_image

from .test_stitch import grid

h5py = pytest.importorskip("h5py")


def he16() -> np.ndarray:
    """A real RGB image as 3 channels of uint16 spanning 0..65535 (values above 32767 test BDV's signed storage)."""
    return np.moveaxis(data.immunohistochemistry()[:200, :260], -1, 0).astype(np.uint16) * 257


def write_bdv(
    folder: Path, image: np.ndarray, tile: int = 96, overlap: int = 24, depth_tile: int | None = None, tile_attributes: bool = True
) -> Path:
    """``image`` ``(C, Z, H, W)`` cut into overlapping tiles as a BDV H5 + XML (one setup per tile and channel, int16 cells).

    Each view gets a calibration affine and a translation affine (BDV's two-transform registrations).
    """
    channels, depth, height, width = image.shape
    zs = [0] if depth_tile is None else [0, depth - depth_tile]
    dz = depth if depth_tile is None else depth_tile
    boxes = [(z, y, x) for z in zs for y, x in grid(height, width, tile, overlap)]
    setups, registrations = [], []
    with h5py.File(folder / "dataset.h5", "w") as h5:
        for t, (z, y, x) in enumerate(boxes):
            for c in range(channels):
                s = t * channels + c
                cells = image[c, z : z + dz, y : y + tile, x : x + tile].view(np.int16)
                h5.create_dataset(f"t00000/s{s:02d}/0/cells", data=cells, chunks=(1, 32, 32))
                h5.create_dataset(f"s{s:02d}/resolutions", data=np.ones((1, 3)))
                h5.create_dataset(f"s{s:02d}/subdivisions", data=np.array([[32, 32, 1]]))
                attributes = f"<attributes><illumination>0</illumination><channel>{c}</channel><tile>{t}</tile></attributes>"
                setups.append(
                    f"<ViewSetup><id>{s}</id><name>{s}</name><size>{tile} {tile} {dz}</size><voxelSize><unit>um</unit>"
                    f"<size>1 1 1</size></voxelSize>{attributes if tile_attributes else ''}</ViewSetup>"
                )
                registrations.append(
                    f'<ViewRegistration timepoint="0" setup="{s}">'
                    f'<ViewTransform type="affine"><Name>Translation</Name><affine>1 0 0 {x} 0 1 0 {y} 0 0 1 {z}</affine></ViewTransform>'
                    f'<ViewTransform type="affine"><Name>calibration</Name><affine>1 0 0 0 0 1 0 0 0 0 1 0</affine></ViewTransform>'
                    f"</ViewRegistration>"
                )
    xml = folder / "dataset.xml"
    xml.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><SpimData version="0.2"><BasePath type="relative">.</BasePath><SequenceDescription>'
        '<ImageLoader format="bdv.hdf5"><hdf5 type="relative">dataset.h5</hdf5></ImageLoader>'
        f'<ViewSetups>{"".join(setups)}</ViewSetups><Timepoints type="range"><first>0</first><last>0</last></Timepoints>'
        f"</SequenceDescription><ViewRegistrations>{''.join(registrations)}</ViewRegistrations></SpimData>"
    )
    return xml


def test_a_bdv_h5_stitches_back_exactly_through_the_writer(tmp_path: Path) -> None:
    image = he16()
    xml = write_bdv(tmp_path, image[:, None])
    tileset = Tileset()
    tileset.init_from_bdv(xml)
    assert len(tileset) == len(grid(200, 260, 96, 24)) and tileset.channels == 3 and tileset.dtype == np.uint16
    store = tmp_path / "c.zarr"
    write_image(
        Location.parse(str(store)),
        "imc/images/T1",
        {1.0: MosaicSource(tileset, blend="max")},
        channel_names=["r", "g", "b"],
        options=WriteOptions(chunk=32, shard=64, max_top_size=64),
    )
    tileset.close()
    ome: Any = zarr.open_group(str(store / "imc/images/T1"), mode="r").attrs["ome"]
    full = ome["multiscales"][0]["datasets"][0]["path"]
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(store / "imc/images/T1" / full), mode="r")[:]), image)


def test_a_bdv_h5_reads_windows_and_stacks(tmp_path: Path) -> None:
    stack = np.stack([he16()[:, :, :180] // (z + 1) for z in range(6)], axis=1)  # (C, Z, H, W)
    xml = write_bdv(tmp_path, stack, depth_tile=4)
    tileset = Tileset(ndim=3)
    tileset.init_from_bdv(xml)
    tileset.scale_offset((0, 0, 0))
    tileset.update_offsets(xml)  # one offset per tile: the channels of a tile share it
    mosaic = MosaicSource(tileset)
    np.testing.assert_array_equal(mosaic.read_volume(0, 6, 0, 200, 0, 180), stack)
    np.testing.assert_array_equal(mosaic.read_volume(1, 5, 37, 121, 50, 170), stack[:, 1:5, 37:121, 50:170])
    np.testing.assert_array_equal(tileset.get_slice(1, 2), stack[:, 2, :96, 72:168])
    single = Tileset(ndim=3)
    single.init_from_h5(tmp_path / "dataset.h5")  # the seed's name: the H5 alone, a tile per setup, offsets zero until set
    assert len(single) == 3 * len(tileset) and single.channels == 1 and np.all(single.offsets == 0)
    single.update_offsets(xml)
    np.testing.assert_array_equal(MosaicSource(single).read_volume(0, 6, 0, 200, 0, 180), stack[2:])  # the last setups: channel 2


def test_a_bdv_h5_downscaled_and_one_setup_per_tile(tmp_path: Path) -> None:
    image = he16()[:1]
    xml = write_bdv(tmp_path, image[:, None], tile_attributes=False)
    tileset = Tileset()
    tileset.init_from_h5(str(xml)[:-4] + ".h5", downscale=(1, 2, 2))
    assert tileset[0].size == (1, 48, 48)
    expected = image[0, :96, :96].reshape(48, 2, 48, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(tileset.read_tile(0, 0, 1, 0, 48, 0, 48)[0, 0], np.rint(expected).astype(np.uint16))
    plain = Tileset()
    plain.init_from_bdv(str(xml)[:-4] + ".h5")  # the .h5 finds its .xml
    np.testing.assert_array_equal(MosaicSource(plain).read(0, 200, 0, 260), image)


def test_bdv_bad_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xml = write_bdv(tmp_path, he16()[:1, None])
    text = xml.read_text()
    (tmp_path / "tiff.xml").write_text(text.replace('format="bdv.hdf5"', 'format="spimreconstruction.filelist"'))
    with pytest.raises(InvalidInputError, match="tiff.xml: the ImageLoader is 'spimreconstruction.filelist', not bdv.hdf5"):
        Tileset().init_from_bdv(tmp_path / "tiff.xml")
    (tmp_path / "gone.xml").write_text(text.replace("dataset.h5<", "other.h5<"))
    with pytest.raises(NotFoundError, match="other.h5: H5 file not found"):
        Tileset().init_from_bdv(tmp_path / "gone.xml")
    (tmp_path / "stack").mkdir()
    write_bdv(tmp_path / "stack", np.zeros((1, 3, 96, 96), np.uint16))
    with pytest.raises(InvalidInputError, match="stack/dataset.h5:t00000/s00/0/cells: a stack of 3 planes; read it with Tileset"):
        Tileset().init_from_h5(tmp_path / "stack" / "dataset.h5")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(InvalidInputError, match=r"dataset.xml: reading BDV H5 pixels needs h5py: pip install 'spora-zarr\[stitch\]'"):
        Tileset().init_from_bdv(xml)


def test_nd2_positions_and_stage_offsets() -> None:
    s = pytest.importorskip("nd2.structures")

    points = [s.Position(s.StagePosition(100.0 + 60 * i, 50.0, 3.0)) for i in range(3)]
    experiment = [
        s.TimeLoop(count=2, nestingLevel=0, parameters=s.TimeLoopParams(0.0, 1.0, 2.0, s.PeriodDiff())),
        s.XYPosLoop(count=3, nestingLevel=1, parameters=s.XYPosLoopParams(isSettingZ=False, points=points)),
        s.ZStackLoop(count=2, nestingLevel=2, parameters=s.ZStackLoopParams(homeIndex=0, stepUm=1.0, bottomToTop=True)),
    ]
    # frames run T, P, Z (outermost first): the first timepoint holds frames 0..5
    assert position_frames(experiment) == [[0, 1], [2, 3], [4, 5]]
    stage = np.array([tuple(p.stagePositionUm) for p in points])
    np.testing.assert_allclose(stage_to_offsets(stage, (0.5, 0.5, 1.0)), [[0, 0, 0], [120, 0, 0], [240, 0, 0]])
    # a stage x axis running against the camera's (the matrix nd2 records): the last position is leftmost
    np.testing.assert_allclose(stage_to_offsets(stage, (0.5, 0.5, 1.0), (-0.5, 0, 0, 0, 0.5, 0)), [[240, 0, 0], [120, 0, 0], [0, 0, 0]])


def test_nd2_missing_file_or_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NotFoundError, match="absent.nd2: nd2 file not found"):
        nd2_tiles(tmp_path / "absent.nd2", 2)
    (tmp_path / "junk.nd2").write_bytes(b"not an nd2 file")
    with pytest.raises(InvalidInputError, match="junk.nd2: unreadable nd2"):
        Tileset().init_from_nd2(tmp_path / "junk.nd2")
    monkeypatch.setitem(sys.modules, "nd2", None)
    with pytest.raises(InvalidInputError, match=r"junk.nd2: reading nd2 needs the nd2 package: pip install 'spora-zarr\[stitch\]'"):
        Tileset().init_from_nd2(tmp_path / "junk.nd2")
