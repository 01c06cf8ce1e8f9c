"""Stitching: real images cut into overlapping tiles stitch back exactly; labels keep their partition; bad input fails first."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from skimage import color, data, filters, measure
from skimage.segmentation import relabel_sequential

from spora_zarr import WriteOptions, open_cohort, validate_store
from spora_zarr.errors import InvalidInputError, NotFoundError
from spora_zarr.stitching import (
    MosaicSource,
    StitchOptions,
    Tileset,
    apply_new_ids,
    blend,
    deduplicate_blob_ids,
    get_centroids,
    get_offsets,
    get_tiles_overlaps,
    get_top_surface,
    overlapping,
    preview,
    stitch,
)

from .conftest import in_forked_child

OPTIONS = WriteOptions(chunk=32, shard=64, max_top_size=64)


def grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of tiles covering the image, the last row/column anchored at the image end."""

    def starts(n: int) -> list[int]:
        out = list(range(0, max(1, n - tile) + 1, tile - overlap))
        return out if out[-1] + tile >= n else [*out, n - tile]

    return [(y, x) for y in starts(height) for x in starts(width)]


def cut(
    image: np.ndarray,
    folder: Path,
    tile: int = 96,
    overlap: int = 20,
    labels: np.ndarray | None = None,
    shifts: dict[int, tuple[int, int]] | None = None,
) -> Path:
    """Write ``image`` ``(C, H, W)`` as TIFF tiles and an offsets CSV; ``labels`` as per-tile sequential label tiles."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, (y, x) in enumerate(grid(image.shape[-2], image.shape[-1], tile, overlap)):
        dy, dx = (shifts or {}).get(n, (0, 0))
        tifffile.imwrite(folder / f"t{n:03d}.tif", image[:, y + dy : y + dy + tile, x + dx : x + dx + tile])
        row = {"file": f"t{n:03d}.tif", "x": x, "y": y}
        if labels is not None:
            local = relabel_sequential(labels[y : y + tile, x : x + tile])[0].astype(np.uint16)
            tifffile.imwrite(folder / f"l{n:03d}.tif", local)
            row["labels"] = f"l{n:03d}.tif"
        rows.append(row)
    return write_offsets(folder / "offsets.csv", rows)


def write_offsets(table: Path, rows: list[dict[str, object]]) -> Path:
    """Write an offsets CSV (columns from the first row) and return its path."""
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


def rgb() -> np.ndarray:
    return np.moveaxis(data.immunohistochemistry()[:300, :400], -1, 0).copy()


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """The adjusted Rand index of two partitions of the same pixels."""
    a, b = a.ravel().astype(np.int64), b.ravel().astype(np.int64)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    _, table = np.unique(ai * (bi.max() + 1) + bi, return_counts=True)

    def pairs(counts: np.ndarray) -> float:
        return float((counts.astype(float) * (counts - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(np.bincount(ai)), pairs(np.bincount(bi))
    expected = rows * cols / pairs(np.array([a.size]))
    return (index - expected) / ((rows + cols) / 2 - expected)


@pytest.mark.parametrize("mode", ["none", "max", "linear"])
def test_a_real_image_cut_into_tiles_stitches_back_exactly(tmp_path: Path, mode: str) -> None:
    image = rgb()
    table = cut(image, tmp_path / "tiles")
    store = tmp_path / "c.zarr"
    result = stitch(tmp_path / "tiles", table, store, StitchOptions(modality="he", tissue_id="T1", mpp=0.5, blend=mode), write=OPTIONS)
    assert not result.image.skipped
    cohort = open_cohort(store)
    np.testing.assert_array_equal(cohort.open_image("he", "T1", 0.5).values, image)
    assert validate_store(store) == []


def test_linear_blending_feathers_differing_overlaps(tmp_path: Path) -> None:
    image = np.full((1, 120, 200), 100, np.uint16)
    folder = tmp_path / "tiles"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image[:, :, :120])
    tifffile.imwrite(folder / "b.tif", image[:, :, :120] + 100)
    (folder / "offsets.csv").write_text("file,x,y\na.tif,0,0\nb.tif,80,0\n")
    with Tileset.from_offsets_table(folder, folder / "offsets.csv") as tileset:
        row = MosaicSource(tileset, blend="linear").read(60, 61, 0, 200)[0, 0]
        assert row[0] == 100 and row[-1] == 200
        assert np.all(np.diff(row[80:120].astype(int)) >= 0) and 100 < row[100] < 200  # a ramp across the overlap
        assert MosaicSource(tileset, blend="none").read(60, 61, 0, 200)[0, 0, 80] == 200  # the last tile wins
        assert MosaicSource(tileset, blend="max").read(60, 61, 0, 200)[0, 0, 80] == 200


def test_the_mosaic_reads_only_the_tiles_of_a_window(tmp_path: Path) -> None:
    table = cut(rgb(), tmp_path / "tiles")
    with Tileset.from_offsets_table(tmp_path / "tiles", table) as tileset:
        source = MosaicSource(tileset)
        assert len(source.tiles_in(0, 1, 0, 10, 0, 10)) == 1
        assert len(source.tiles_in(0, 1, 80, 90, 80, 90)) == 4  # a corner where four tiles overlap
        assert len(tileset.readers._open) == 0
        source.read(0, 10, 0, 10)
        assert len(tileset.readers._open) == 1


def test_labels_cut_by_tile_borders_are_merged(tmp_path: Path) -> None:
    coins = data.coins()
    labels = measure.label(coins > filters.threshold_otsu(coins))
    image = coins[None]
    table = cut(image, tmp_path / "tiles", labels=labels)
    store = tmp_path / "c.zarr"
    result = stitch(
        tmp_path / "tiles", table, store, StitchOptions(modality="imc", tissue_id="T1", mpp=1.0, labels="cell_masks"), write=OPTIONS
    )
    stitched = np.asarray(zarr.open_group(store, mode="r")["segmentations/cell_masks/T1/1_0mpp"]).reshape(labels.shape)
    assert adjusted_rand_index(stitched, labels) == pytest.approx(1.0)
    assert result.objects == labels.max() == len(np.unique(stitched)) - 1
    assert validate_store(store) == []
    ids, centroids = get_centroids(store, "cell_masks", "T1")
    assert len(ids) == labels.max()
    truth = {tuple(np.round(p.centroid[::-1], 6)) for p in measure.regionprops(labels)}
    assert {tuple(np.round(c, 6)) for c in centroids} == truth


def test_objects_hidden_by_later_tiles_are_neither_numbered_nor_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each tile segmented on its own (its own Otsu threshold): some objects of a tile lie wholly in the part a later tile
    covers (the last tile wins). The written labels hold ids ``1..K`` with no gap, ``K`` is the count reported, and the image
    is the last-tile-wins composite of the label tiles, renumbered."""
    hematoxylin = color.rgb2hed(data.immunohistochemistry())[..., 0]
    folder = tmp_path / "tiles"
    folder.mkdir()
    rows: list[dict[str, object]] = []
    offsets, pictures = [], []
    for n, (y, x) in enumerate(grid(*hematoxylin.shape, 128, 32)):
        part = hematoxylin[y : y + 128, x : x + 128]
        local = measure.label(part > filters.threshold_otsu(part)).astype(np.uint16)
        tifffile.imwrite(folder / f"t{n:03d}.tif", np.rint(part / hematoxylin.max() * 255).astype(np.uint8))
        tifffile.imwrite(folder / f"l{n:03d}.tif", local)
        rows.append({"file": f"t{n:03d}.tif", "x": x, "y": y, "labels": f"l{n:03d}.tif"})
        offsets.append((x, y))
        pictures.append(np.where(local > 0, local.astype(np.int64) + n * 2**16, 0))  # ids unique across tiles
    table = write_offsets(folder / "offsets.csv", rows)
    store = tmp_path / "c.zarr"
    options = StitchOptions(modality="imc", tissue_id="T1", mpp=1.0, labels="cell_masks")
    with caplog.at_level("INFO", logger="spora_zarr"):
        result = stitch(folder, table, store, options, write=OPTIONS)
    stitched = np.asarray(zarr.open_group(store, mode="r")["segmentations/cell_masks/T1/1_0mpp"]).reshape(hematoxylin.shape)
    ids = np.unique(stitched)
    assert result.objects is not None and result.objects > 100
    assert ids.tolist() == list(range(result.objects + 1))  # 0 and 1..K, no gap
    assert result.hidden is not None and result.hidden > 0
    assert f"{result.hidden} label object(s) lie wholly under later tiles" in caplog.text
    composite = blend(np.array(offsets), pictures)  # the tiles' own ids, last tile wins
    pairs = np.unique(np.stack([composite.ravel(), stitched.ravel().astype(np.int64)]), axis=1)
    assert np.array_equal(np.unique(pairs[0]), pairs[0])  # each tile object shown is one stitched object
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()  # background stays background
    assert validate_store(store) == []


def test_register_recovers_jittered_offsets(tmp_path: Path) -> None:
    gray = data.camera()[None]
    rng = np.random.default_rng(0)
    corners = grid(512, 512, 160, 40)
    shifts = {n: (0, 0) if n == 0 else (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))) for n in range(len(corners))}
    shifts = {
        n: (dy if 0 <= y + dy <= 512 - 160 else 0, dx if 0 <= x + dx <= 512 - 160 else 0)
        for n, ((y, x), (dy, dx)) in enumerate(zip(corners, shifts.values()))
    }
    table = cut(gray, tmp_path / "tiles", tile=160, overlap=40, shifts=shifts)
    store = tmp_path / "c.zarr"
    result = stitch(tmp_path / "tiles", table, store, StitchOptions(modality="imc", tissue_id="T1", mpp=1.0, register=True), write=OPTIONS)
    truth = np.array([[x + shifts[n][1], y + shifts[n][0]] for n, (y, x) in enumerate(corners)])
    assert np.abs(result.offsets[:, :2] - truth).max() <= 1.0
    assert any(v != (0, 0) for v in shifts.values())
    refined = open_cohort(store).read_table("imc/stitching/T1/offsets.parquet").to_pydict()
    assert refined["x"] == pytest.approx(result.offsets[:, 0].tolist())


def test_micrometer_offsets(tmp_path: Path) -> None:
    image = rgb()
    table = cut(image, tmp_path / "tiles")
    rows = list(csv.DictReader(table.read_text().splitlines()))
    write_offsets(table, [{"file": r["file"], "x": int(r["x"]) * 0.25, "y": int(r["y"]) * 0.25} for r in rows])
    with Tileset.from_offsets_table(tmp_path / "tiles", table, offset_unit="micrometer", mpp=0.25) as tileset:
        np.testing.assert_array_equal(MosaicSource(tileset).read(0, 300, 0, 400), image)


def test_three_d_tiles_stitch_back_exactly(tmp_path: Path) -> None:
    volume = np.stack([np.roll(data.camera()[:200, :260], 7 * z, axis=1) for z in range(5)])
    folder = tmp_path / "tiles"
    folder.mkdir()
    lines = ["file,x,y,z"]
    for n, (y, x) in enumerate(grid(200, 260, 96, 24)):
        tifffile.imwrite(folder / f"s{n}.tif", volume[:, y : y + 96, x : x + 96])
        lines.append(f"s{n}.tif,{x},{y},0")
    (folder / "offsets.csv").write_text("\n".join(lines) + "\n")
    with Tileset.from_offsets_table(folder, folder / "offsets.csv") as tileset:
        assert tileset.ndim == 3 and tileset.shape == (5, 200, 260)
        for mode in ("none", "max", "linear"):
            np.testing.assert_array_equal(MosaicSource(tileset, blend=mode).read_volume(0, 5, 0, 200, 0, 260)[0], volume)
        np.testing.assert_array_equal(tileset.get_slice(1, 3)[0], volume[3, :96, 72:168])


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ("file,x,y\nt000.tif,0,0\nmissing.tif,0,0\n", NotFoundError, "missing.tif: tile file not found"),
        ("file,x,y\nt000.tif,0,0\n,5,5\n", InvalidInputError, "row 2 names no file"),
        ("file,x,y\nt000.tif,-4,0\n", InvalidInputError, "x='-4' must be finite and not negative"),
        ("file,x,y\nt000.tif,abc,0\n", InvalidInputError, "x='abc' is not a number"),
        ("file,x,y\nt000.tif,0,1e12\n", InvalidInputError, "y='1e12' is beyond 1,048,576 px"),  # ran for ever
        ("file,x,y\nt000.tif,1e300,0\n", InvalidInputError, "x='1e300' is beyond 1,048,576 px"),  # an OverflowError
        ("file,x\nt000.tif,0\n", InvalidInputError, "lacks column"),
        ("file,x,y\nt000.tif,0,0\nbytes.tif,10,0\n", InvalidInputError, "dtype uint16"),
        ("file,x,y\nt000.tif,0,0\ngray.tif,10,0\n", InvalidInputError, "1 channels"),
    ],
)
def test_bad_input_fails_before_anything_is_written(tmp_path: Path, content: str, error: type, match: str) -> None:
    cut(rgb(), tmp_path / "tiles")
    tifffile.imwrite(tmp_path / "tiles" / "bytes.tif", np.zeros((3, 96, 96), np.uint16))
    tifffile.imwrite(tmp_path / "tiles" / "gray.tif", np.zeros((96, 96), np.uint8))
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(error, match=match):
        stitch(tmp_path / "tiles", tmp_path / "bad.csv", tmp_path / "c.zarr", StitchOptions(modality="he", tissue_id="T1", mpp=1.0))
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize(
    ("ndim", "rows", "match"),
    [
        # a stray row: one tile 200,000 px out (under MAX_OFFSET), the mosaic 700 times the tiles' area
        (2, "t000.tif,0,0\nt001.tif,76,0\nt002.tif,200000,0\n", "cover 0.14% of the 200,096 x 96 px mosaic"),
        # micrometer offsets read as pixels at 0.01 um a pixel: every offset 100x
        (2, "t000.tif,0,0\nt001.tif,7600,0\nt004.tif,0,7600\nt005.tif,7600,7600\n", "cover 0.062% of the 7,696 x 7,696 px mosaic"),
        # z in micrometers (1.5 um a plane) where planes were meant, on a stack 5 planes deep: z is what spreads
        (3, "s0.tif,0,0,0\ns1.tif,72,0,300\ns2.tif,0,0,600\n", "cover 1.4% of the 168 x 96 px x 605 planes mosaic"),
    ],
)
def test_offsets_spanning_a_mostly_empty_mosaic_are_refused_before_writing(tmp_path: Path, ndim: int, rows: str, match: str) -> None:
    """Offsets under MAX_OFFSET can still span a mosaic the tiles barely cover (a wrong unit, a stray row), which would
    write empty pixels for minutes: refused first, naming the table, the mosaic, the tiles' area and the farthest tile."""
    folder = tmp_path / "tiles"
    if ndim == 2:
        cut(rgb(), folder)
    else:
        folder.mkdir()
        volume = np.stack([np.roll(data.camera()[:96, :200], 7 * z, axis=1) for z in range(5)])
        for n in range(3):
            tifffile.imwrite(folder / f"s{n}.tif", volume[:, :, 72 * (n % 2) : 72 * (n % 2) + 96], metadata={"axes": "ZYX"})
    table = folder / "sparse.csv"
    table.write_text(("file,x,y,z\n" if ndim == 3 else "file,x,y\n") + rows)
    store = tmp_path / "c.zarr"
    options = StitchOptions(modality="he", tissue_id="T1", mpp=1.0)
    with pytest.raises(InvalidInputError, match=match) as caught:
        stitch(folder, table, store, options)
    message = str(caught.value)
    assert message.startswith(f"{table}: the tiles cover ") and "\n" not in message
    far = rows.strip().splitlines()[-1].split(",")
    assert f"the farthest, row {len(rows.strip().splitlines())} {far[0]}, at x={int(far[1]):,}, y={int(far[2]):,}" in message
    assert "check the offsets' unit and origin, or pass allow_sparse=True" in message
    assert not store.exists()


def test_a_sparse_mosaic_is_stitched_when_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Just past the limit (two 96 px tiles 3,000 px apart: 16.1 times their area) is refused; allow_sparse stitches it."""
    from spora_zarr.cli import main

    image = rgb()
    cut(image, tmp_path / "tiles")
    table = write_offsets(tmp_path / "tiles" / "far.csv", [{"file": "t000.tif", "x": 0, "y": 0}, {"file": "t001.tif", "x": 3000, "y": 0}])
    store = tmp_path / "c.zarr"
    argv = ["stitch", str(tmp_path / "tiles"), str(table), str(store), "--modality", "he", "--tissue", "T1", "--mpp", "1", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "cover 6.2% of the 3,096 x 96 px mosaic" in err and "pass --allow-sparse-mosaic" in err and err.count("\n") == 0
    assert not store.exists()
    options = StitchOptions(modality="he", tissue_id="T1", mpp=1.0, allow_sparse=True)
    stitch(tmp_path / "tiles", table, store, options, write=OPTIONS)
    stitched = open_cohort(store).open_image("he", "T1", 1.0).values
    assert stitched.shape == (3, 96, 3096)
    np.testing.assert_array_equal(stitched[:, :, 3000:], image[:, :96, 76:172])
    assert not stitched[:, :, 96:3000].any()


def test_bdv_xml_offsets(tmp_path: Path) -> None:
    views = "".join(
        f'<ViewRegistration timepoint="0" setup="{s}"><ViewTransform type="affine"><affine>1 0 0 {x} 0 1 0 {y} 0 0 1 0</affine>'
        f'</ViewTransform><ViewTransform type="affine"><affine>2 0 0 1 0 2 0 0 0 0 1 0</affine></ViewTransform></ViewRegistration>'
        for s, (x, y) in enumerate([(0, 0), (100, 5)])
    )
    (tmp_path / "d.xml").write_text(f"<SpimData><ViewRegistrations>{views}</ViewRegistrations></SpimData>")
    np.testing.assert_allclose(get_offsets(tmp_path / "d.xml"), [[1, 0, 0], [101, 5, 0]])
    (tmp_path / "empty.xml").write_text("<SpimData><ViewRegistrations/></SpimData>")
    with pytest.raises(InvalidInputError, match="without registrations"):
        get_offsets(tmp_path / "empty.xml")


def test_seed_helpers(tmp_path: Path) -> None:
    assert overlapping((0, 0, 0), (90, 0, 0), (100, 100, 1)) and not overlapping((0, 0, 0), (100, 0, 0), (100, 100, 1))
    assert get_tiles_overlaps(np.array([[0, 0, 0], [90, 0, 0], [300, 0, 0]]), (100, 100, 1)) == {(0, 1)}
    a, b = np.ones((4, 4), np.uint8), np.full((4, 4), 2, np.uint8)
    np.testing.assert_array_equal(blend(np.array([[0, 0], [2, 0]]), [a, b])[0], [1, 1, 2, 2, 2, 2])
    image = rgb()
    table = cut(image, tmp_path / "tiles")
    with Tileset.from_offsets_table(tmp_path / "tiles", table, mpp=0.5) as tileset:
        np.testing.assert_array_equal(preview(tileset, down_sample=4), image[:, ::4, ::4])
        np.testing.assert_allclose(tileset.local_to_global(np.array([[1, 2.0, 3.0, 0.0]])), [[2.0 + 76 * 0.5, 3.0, 0.0]])
        tileset.scale_intensity((10, 200))
        assert MosaicSource(tileset).dtype == np.uint8
        tileset.scale_offset((2, 2, 1))
        assert tileset[1].offset[0] == 152
        stack = np.zeros((6, 3, 3), np.uint16)
        stack[4:, 1, 1] = 100
        stack[2:, 0, 0] = 100
        _, top, _ = get_top_surface(stack, thresh=50)
        assert top[1, 1] == 5 and top[2, 2] == -1


def test_deduplicated_ids_map_tiles(tmp_path: Path) -> None:
    labels = np.zeros((100, 180), np.uint16)
    labels[40:60, 70:110] = 7  # one object across the overlap of two tiles
    folder = tmp_path / "tiles"
    folder.mkdir()
    for name, x in (("a", 0), ("b", 60)):
        tifffile.imwrite(folder / f"{name}.tif", np.zeros((100, 120), np.uint8))
        tifffile.imwrite(folder / f"{name}_l.tif", relabel_sequential(labels[:, x : x + 120])[0])
    (folder / "o.csv").write_text("file,x,y,labels\na.tif,0,0,a_l.tif\nb.tif,60,0,b_l.tif\n")
    with Tileset.from_offsets_table(folder, folder / "o.csv") as tileset:
        new_ids = deduplicate_blob_ids(tileset)
        assert new_ids == {(0, 1): 1, (1, 1): 1}
        assert apply_new_ids(np.array([[0, 1]]), new_ids, 1).tolist() == [[0, 1]]


@pytest.mark.parametrize("ndim", [2, 3])
def test_last_tile_wins_over_irregular_overlaps_equals_blend(tmp_path: Path, ndim: int) -> None:
    """Blend ``none`` reads only each tile's visible part: tiles of several sizes, three over one corner, one inside
    another, a gap left uncovered; every window (aligned or not) equals the in-memory ``blend`` of the tiles."""
    rng = np.random.default_rng(7)
    # (x, y, z, width, height, depth): tiles 1-3 cover one corner of tile 0, tile 4 lies inside tile 1, tile 5 stands apart
    boxes = [
        (0, 0, 0, 60, 50, 4),
        (40, 30, 1, 50, 45, 4),
        (50, 20, 0, 40, 40, 5),
        (30, 40, 2, 35, 30, 3),
        (45, 35, 1, 10, 12, 2),
        (110, 5, 0, 20, 70, 6),
    ]
    folder = tmp_path / "tiles"
    folder.mkdir()
    pictures, lines = [], ["file,x,y" + (",z" if ndim == 3 else "")]
    for n, (x, y, z, w, h, d) in enumerate(boxes):
        picture = rng.integers(1, 60000, (d, h, w) if ndim == 3 else (h, w), dtype=np.uint16)
        tifffile.imwrite(folder / f"t{n}.tif", picture, metadata={"axes": "ZYX" if ndim == 3 else "YX"})
        pictures.append(picture)
        lines.append(f"t{n}.tif,{x},{y}" + (f",{z}" if ndim == 3 else ""))
    (folder / "offsets.csv").write_text("\n".join(lines) + "\n")
    offsets = np.array([b[:ndim] for b in boxes])
    expected = blend(offsets, pictures)
    expected = expected if ndim == 3 else expected[None]
    with Tileset.from_offsets_table(folder, folder / "offsets.csv") as tileset:
        source = MosaicSource(tileset)
        assert (source.depth, *source.shape[1:]) == expected.shape
        depth, height, width = expected.shape
        np.testing.assert_array_equal(source.read_volume(0, depth, 0, height, 0, width)[0], expected)
        for z0, z1, y0, y1, x0, x1 in [(0, 6, 25, 61, 37, 95), (1, 3, 0, 17, 0, 130), (2, 6, 44, 75, 88, 120), (5, 6, 60, 75, 0, 40)]:
            z0, z1 = min(z0, depth - 1), min(z1, depth)
            np.testing.assert_array_equal(source.read_volume(z0, z1, y0, y1, x0, x1)[0], expected[z0:z1, y0:y1, x0:x1])


def test_prefetch_is_best_effort(tmp_path: Path) -> None:
    """Reading tiles ahead never fails a stitch: a missing file is ignored, the mosaic reads back the same pixels."""
    from spora_zarr.stitching import readers

    readers.prefetch(str(tmp_path / "missing.tif"))
    image = rgb()
    table = cut(image, tmp_path / "tiles")
    with Tileset.from_offsets_table(tmp_path / "tiles", table) as tileset:
        np.testing.assert_array_equal(MosaicSource(tileset).read(0, 300, 0, 400), image)
        if hasattr(os, "posix_fadvise"):  # the advice thread ran every request
            assert readers.PREFETCHER.get().submit(lambda: True).result()


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(os, "posix_fadvise"), reason="needs fork and posix_fadvise")
def test_a_forked_child_prefetches_on_a_thread_of_its_own(tmp_path: Path) -> None:
    """The parent's advice thread does not exist in a forked child (a stitch in a forked worker): the child starts its own."""
    from spora_zarr.stitching import readers

    tile = tmp_path / "tile.bin"
    tile.write_bytes(b"x" * 4096)
    readers.prefetch(str(tile))
    parent = readers.PREFETCHER.get()

    def in_child() -> bool:
        readers.prefetch(str(tile))
        pool = readers.PREFETCHER.get()
        return pool is not parent and pool.submit(lambda: True).result(timeout=20)

    assert in_forked_child(in_child)


@pytest.mark.parametrize("layout", ["tiled", "compressed", "strips", "rgba"])
def test_tiff_windows_read_straight_into_a_strided_output(tmp_path: Path, layout: str) -> None:
    """``TiffSource.read(out=...)`` (the mosaic's path for 2-D TIFF tiles) fills a view of a larger array as ``read`` returns it."""
    from spora_zarr.sources.tiff import TiffSource

    rng = np.random.default_rng(3)
    if layout == "rgba":
        image = rng.integers(0, 255, (70, 90, 4), dtype=np.uint8)
        tifffile.imwrite(tmp_path / "t.tif", image, photometric="rgb", extrasamples=["unassalpha"])
    else:
        image = rng.integers(0, 60000, (3, 70, 90), dtype=np.uint16)
        options = {"tiled": {"tile": (16, 32)}, "compressed": {"tile": (16, 32), "compression": "zlib"}, "strips": {"rowsperstrip": 8}}
        tifffile.imwrite(tmp_path / "t.tif", image, photometric="minisblack", **options[layout])
    source = TiffSource(tmp_path / "t.tif")
    try:
        window = source.read(13, 61, 7, 80)
        big = np.zeros((source.shape[0], 2, 60, 100), source.dtype)
        target = big[:, 1, 5:53, 11:84]
        assert source.read(13, 61, 7, 80, out=target) is target
        np.testing.assert_array_equal(target, window)
        assert not big[:, 0].any() and not big[:, 1, :5].any() and not big[:, 1, :, :11].any()
    finally:
        source.close()
