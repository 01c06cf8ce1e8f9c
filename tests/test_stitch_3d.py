"""3-D stacks: the writer's z axis, stitched stacks (image, labels, registration) and the readers downstream."""

from __future__ import annotations

import itertools
from pathlib import Path

import ngff_zarr
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel
from scipy import ndimage
from skimage import measure
from skimage.segmentation import relabel_sequential

from spora_zarr import WriteOptions, open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.datasets import MultiplexImagingDataset
from spora_zarr.errors import InvalidInputError
from spora_zarr.read.info import describe
from spora_zarr.read.levels import open_level
from spora_zarr.sources.base import ArraySource
from spora_zarr.stitching import MosaicSource, StitchOptions, Tileset, get_centroids, stitch
from spora_zarr.write.pyramid import bin_shrink, mode_shrink
from spora_zarr.write.writer import write_image, write_labels
from tests.test_stitch import adjusted_rand_index, write_offsets

OPTIONS = WriteOptions(chunk=32, shard=64, max_top_size=64)


def smooth_volume(shape: tuple[int, ...], sigma: float = 2.0, seed: int = 0) -> np.ndarray:
    """A smooth random ``uint16`` volume (texture for phase correlation, blobs when thresholded)."""
    noise = np.random.default_rng(seed).random(shape)
    smooth = ndimage.gaussian_filter(noise, sigma=[0] * (len(shape) - 3) + [sigma] * 3)
    smooth -= smooth.min()
    return np.rint(smooth / smooth.max() * 60000).astype(np.uint16)


def starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering ``n`` pixels, the last tile anchored at the end."""
    out = list(range(0, max(1, n - tile) + 1, tile - overlap))
    return out if out[-1] + tile >= n else [*out, n - tile]


def cut_stack(
    volume: np.ndarray,
    folder: Path,
    tile: tuple[int, int, int] = (8, 64, 64),
    overlap: tuple[int, int, int] = (3, 16, 16),
    labels: np.ndarray | None = None,
    shifts: dict[int, tuple[int, int, int]] | None = None,
) -> Path:
    """``volume`` ``(C, Z, Y, X)`` as ZCYX (or ZYX) TIFF tiles on a z, y, x grid and an offsets CSV with a z column.

    ``shifts[n]`` ``(dz, dy, dx)`` moves tile ``n``'s pixels while its table row keeps the grid position (stage jitter).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    corners = itertools.product(*(starts(n, t, o) for n, t, o in zip(volume.shape[1:], tile, overlap)))
    for n, (z, y, x) in enumerate(corners):
        dz, dy, dx = (shifts or {}).get(n, (0, 0, 0))
        box = (slice(z + dz, z + dz + tile[0]), slice(y + dy, y + dy + tile[1]), slice(x + dx, x + dx + tile[2]))
        pixels = volume[(slice(None), *box)]
        if volume.shape[0] == 1:
            tifffile.imwrite(folder / f"t{n:03d}.tif", pixels[0], metadata={"axes": "ZYX"})
        else:
            tifffile.imwrite(folder / f"t{n:03d}.tif", np.moveaxis(pixels, 0, 1), metadata={"axes": "ZCYX"})
        row = {"file": f"t{n:03d}.tif", "x": x, "y": y, "z": z}
        if labels is not None:
            local = relabel_sequential(labels[box])[0].astype(np.uint16)
            tifffile.imwrite(folder / f"l{n:03d}.tif", local, metadata={"axes": "ZYX"})
            row["labels"] = f"l{n:03d}.tif"
        rows.append(row)
    return write_offsets(folder / "offsets.csv", rows)


class PlaneCountingSource(ArraySource):
    """An array stack that records the depth of every window the writer asks for."""

    depths: list[int]

    def read_volume(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.depths = [*getattr(self, "depths", []), z1 - z0]
        return super().read_volume(z0, z1, y0, y1, x0, x1)


def test_the_writer_stores_a_stack_with_a_z_axis(tmp_path: Path) -> None:
    volume = smooth_volume((2, 6, 150, 130))
    labels = measure.label(volume[0] > np.percentile(volume[0], 70)).astype(np.uint16)
    source = PlaneCountingSource(volume)
    image = write_image(tmp_path, "m/images/T1", {0.5: source}, channel_names=["a", "b"], options=OPTIONS, z_mpp=2.0)
    assert set(source.depths) == {1}  # streamed plane by plane
    write_labels(
        tmp_path, "segmentations/cell_masks/T1", {0.5: ArraySource(labels[None])}, options=OPTIONS, source_image="../../../m/images/T1"
    )
    group = zarr.open_group(tmp_path / "m/images/T1", mode="r")
    masks = zarr.open_group(tmp_path / "segmentations/cell_masks/T1", mode="r")
    multiscales = group.attrs["ome"]["multiscales"][0]
    assert [(a["name"], a.get("unit")) for a in multiscales["axes"]] == [
        ("c", None),
        ("z", "micrometer"),
        ("y", "micrometer"),
        ("x", "micrometer"),
    ]
    expected, label_expected = volume, labels
    for level, dataset in zip(image.levels, multiscales["datasets"]):
        array, mask = group[level.name], masks[level.name]
        assert dataset["coordinateTransformations"][0]["scale"] == [1.0, 2.0, level.mpp, level.mpp]
        assert array.metadata.dimension_names == ("c", "z", "y", "x") and mask.metadata.dimension_names == ("z", "y", "x")
        assert array.chunks == (2, 1, 32, 32) and array.shards == (2, 1, 64, 64) and mask.chunks == (1, 32, 32)
        np.testing.assert_array_equal(array[...], expected)  # every level keeps the 6 planes, halved in y, x
        np.testing.assert_array_equal(mask[...], label_expected)
        expected, label_expected = bin_shrink(expected), mode_shrink(label_expected)
    assert len(image.levels) == 3 and group[image.levels[-1].name].shape == (2, 6, 37, 32)
    Image.from_zarr(group)
    ImageLabel.from_zarr(masks)
    ngff_zarr.validate(dict(group.attrs), version="0.5", model="image")
    ngff_zarr.validate(dict(masks.attrs), version="0.5", model="label")
    assert [c["window"]["end"] > c["window"]["start"] for c in group.attrs["ome"]["omero"]["channels"]] == [True, True]
    again = write_image(tmp_path, "m/images/T1", {0.5: PlaneCountingSource(volume)}, options=OPTIONS)
    assert again.skipped  # resume: a complete stack is left alone
    default = write_image(tmp_path, "d/images/T1", {0.5: ArraySource(volume)}, options=OPTIONS)
    scale = zarr.open_group(tmp_path / "d/images/T1").attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == [1.0, 0.5, 0.5, 0.5] and not default.skipped  # z spacing defaults to the y/x mpp
    with pytest.raises(InvalidInputError, match="z_mpp must be a positive"):
        write_image(tmp_path, "e/images/T1", {0.5: ArraySource(volume)}, z_mpp=-1.0)


def test_a_level_whose_edge_block_is_one_pixel_wide(tmp_path: Path) -> None:
    image = smooth_volume((2, 1, 150, 130))[:, 0]  # 130 -> 65 -> 32: the last 64 px block of 65 is 1 px wide
    result = write_image(tmp_path, "m/images/T1", {0.5: ArraySource(image)}, options=OPTIONS)
    group = zarr.open_group(tmp_path / "m/images/T1", mode="r")
    expected = image
    for level in result.levels:
        np.testing.assert_array_equal(group[level.name][...], expected)
        expected = bin_shrink(expected)


@pytest.mark.parametrize("mode", ["none", "max", "linear"])
def test_a_stack_cut_into_tiles_stitches_back_exactly(tmp_path: Path, mode: str) -> None:
    volume = smooth_volume((2, 14, 150, 180))
    table = cut_stack(volume, tmp_path / "tiles")
    store = tmp_path / "c.zarr"
    result = stitch(
        tmp_path / "tiles",
        table,
        store,
        StitchOptions(modality="exm", tissue_id="T1", mpp=0.5, z_mpp=1.5, blend=mode, channel_names=("dapi", "gfp")),
        write=OPTIONS,
    )
    assert sorted(set(result.offsets[:, 2])) == [0, 5, 6]  # tiles at three z offsets
    reader = open_level(store, "exm/images/T1/0_5mpp")
    np.testing.assert_array_equal(reader.read(0, 0, 150, 180), volume)
    assert reader.read(10, 20, 5, 7, channels=[1]).shape == (1, 14, 5, 7)
    assert validate_store(store) == []


def test_stitched_stack_labels_keep_their_partition(tmp_path: Path) -> None:
    volume = smooth_volume((1, 14, 150, 180), sigma=3.0, seed=1)
    labels = measure.label(volume[0] > np.percentile(volume[0], 80))
    table = cut_stack(volume, tmp_path / "tiles", labels=labels)
    store = tmp_path / "c.zarr"
    result = stitch(
        tmp_path / "tiles", table, store, StitchOptions(modality="exm", tissue_id="T1", mpp=1.0, labels="cell_masks"), write=OPTIONS
    )
    stitched = np.asarray(zarr.open_group(store, mode="r")["segmentations/cell_masks/T1/1_0mpp"])
    assert stitched.shape == labels.shape
    assert adjusted_rand_index(stitched, labels) == pytest.approx(1.0)
    assert result.objects == labels.max() == len(np.unique(stitched)) - 1
    assert validate_store(store) == []
    ids, centroids = get_centroids(store, "cell_masks", "T1", band=40)
    truth = {tuple(np.round(p.centroid[::-1], 6)) for p in measure.regionprops(labels)}  # (x, y, z)
    assert len(ids) == labels.max() and {tuple(np.round(c, 6)) for c in centroids} == truth
    group = zarr.open_group(store / "segmentations/cell_masks/T1", mode="r+")
    ome = group.attrs.asdict()["ome"]
    ome["multiscales"][0]["datasets"][2]["coordinateTransformations"][0]["scale"][0] = 4.0
    group.attrs["ome"] = ome
    problem = "segmentations/cell_masks/T1: level 4_0mpp has 14 planes 4.0 micrometer apart, the finest level 14 x 1.0"
    assert validate_store(store) == [problem]


def test_register_recovers_jittered_stack_offsets(tmp_path: Path) -> None:
    volume = smooth_volume((1, 24, 200, 200), sigma=1.0, seed=2)
    tile, overlap = (16, 96, 96), (8, 44, 44)
    corners = list(itertools.product(*(starts(n, t, o) for n, t, o in zip(volume.shape[1:], tile, overlap))))
    rng = np.random.default_rng(3)
    shifts: dict[int, tuple[int, int, int]] = {}
    for n, corner in enumerate(corners):
        jitter = [0, 0, 0] if n == 0 else [int(v) for v in rng.integers(-3, 4, size=3)]
        dz, dy, dx = (d if 0 <= c + d <= size - t else 0 for c, d, size, t in zip(corner, jitter, volume.shape[1:], tile))
        shifts[n] = (dz, dy, dx)
    table = cut_stack(volume, tmp_path / "tiles", tile=tile, overlap=overlap, shifts=shifts)
    store = tmp_path / "c.zarr"
    result = stitch(tmp_path / "tiles", table, store, StitchOptions(modality="exm", tissue_id="T1", mpp=1.0, register=True), write=OPTIONS)
    truth = np.array([[x + shifts[n][2], y + shifts[n][1], z + shifts[n][0]] for n, (z, y, x) in enumerate(corners)])
    assert any(s[0] != 0 for s in shifts.values()) and any(s[1:] != (0, 0) for s in shifts.values())
    assert np.abs(result.offsets - truth).max() <= 1.0
    refined = open_cohort(store).read_table("exm/stitching/T1/offsets.parquet").to_pydict()
    assert refined["z"] == pytest.approx(result.offsets[:, 2].tolist())


def test_readers_of_a_stacked_tissue(tmp_path: Path) -> None:
    volume = smooth_volume((2, 5, 100, 120))
    table = cut_stack(volume, tmp_path / "tiles", tile=(5, 64, 64), overlap=(0, 16, 16))
    store = tmp_path / "c.zarr"
    argv = [
        "stitch",
        str(tmp_path / "tiles"),
        str(table),
        str(store),
        "--modality",
        "exm",
        "--tissue",
        "T1",
        "--mpp",
        "0.5",
        "--z-mpp",
        "2",
        "--no-progress",
        "--chunk",
        "32",
        "--shard",
        "64",
    ]
    assert main(argv) == 0
    cohort = open_cohort(store)
    image = cohort.open_image("exm", "T1", 0.5)
    assert image.dims == ("c", "z", "y", "x") and image.coords["z"].values.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    np.testing.assert_array_equal(image.values, volume)
    assert "shape (2, 5, 100, 120)" in describe(store)
    with Tileset.from_offsets_table(tmp_path / "tiles", table) as tileset:
        np.testing.assert_array_equal(MosaicSource(tileset, z=3).read(0, 100, 0, 120), volume[:, 3])
        with pytest.raises(InvalidInputError, match="outside the stitched stack"):
            MosaicSource(tileset, z=5)
        with pytest.raises(InvalidInputError, match=r"c.zarr/exm/images/T1/0_5mpp: tissue 'T1' is a z stack .* 2-D tissues only"):
            MultiplexImagingDataset("stack", store, 0.5, 32, modality="exm").read_tile("T1", 0, 0)
