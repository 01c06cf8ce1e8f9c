"""A JPEG slide at its own size: its tiles kept as the chunks, read back exactly by zarr-python, the direct engine, napari."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from spora_zarr import WriteOptions, add_image, open_cohort, validate_store, write_image
from spora_zarr.cli import main
from spora_zarr.datasets import HEImagingDataset
from spora_zarr.napari.levels import LazyLevel, WindowCache
from spora_zarr.read.levels import open_level
from spora_zarr.sources import ArraySource, EncodedTiles, ImageSource, SourceInfo
from spora_zarr.sources.lossy import JpegEncoded
from spora_zarr.sources.tiff import TiffSource
from spora_zarr.store.location import Location
from spora_zarr.testing.slides import he_like, write_svs

LEVEL0, LEVEL1 = "he/images/A/0_252mpp", "he/images/A/1_008mpp"


def _size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "slide.svs"
    write_svs(path, he_like(700, 1000, seed=4), factors=(4,), tile=128)  # edge tiles padded on both axes
    return path


@pytest.fixture(scope="module")
def store(slide: Path) -> Path:
    store = slide.parent / "cohort.zarr"
    add_image(store, str(slide), modality="he", tissue_id="A")
    return store


def _codec_names(array: zarr.Array) -> list[str]:
    codecs = array.metadata.codecs
    inner = codecs[0].codecs if len(codecs) == 1 and hasattr(codecs[0], "codecs") else codecs
    return [codec.to_dict()["name"] for codec in inner]


def test_the_slide_tiles_are_the_chunks_and_the_store_is_the_slide_size(slide: Path, store: Path) -> None:
    group = zarr.open_group(store / "he/images/A", mode="r")
    for name in ("0_252mpp", "1_008mpp"):
        assert _codec_names(group[name]) == ["transpose", "imagecodecs_jpeg"]
        assert group[name].chunks == (3, 128, 128)
    with tifffile.TiffFile(slide) as tiff:  # chunk bytes are the slide's tile bytes, not re-encoded
        page = tiff.pages[0]
        tile = tiff.filehandle.read_segments([page.dataoffsets[3]], [page.databytecounts[3]])
        first = next(iter(tile))[0]
    assert first in (store / LEVEL0 / "c/0/0/0").read_bytes()
    assert _size(store / "he/images/A") <= 1.3 * slide.stat().st_size
    assert validate_store(store) == []


def test_zarr_python_reads_the_exact_pixels_of_tifffile(slide: Path, store: Path) -> None:
    group = zarr.open_group(store / "he/images/A", mode="r")
    np.testing.assert_array_equal(group["0_252mpp"][:], tifffile.imread(slide).transpose(2, 0, 1))
    np.testing.assert_array_equal(group["1_008mpp"][:], tifffile.imread(slide, series=0, level=1).transpose(2, 0, 1))


def test_the_direct_engine_and_read_tile_decode_the_jpeg_chunks(slide: Path, store: Path) -> None:
    expected = tifffile.imread(slide).transpose(2, 0, 1)
    reader = open_level(store, LEVEL0)
    assert reader.engine == "direct"
    rng = np.random.default_rng(0)
    windows = [(int(y), int(x)) for y, x in zip(rng.integers(-50, 700, 20), rng.integers(-50, 1000, 20))] + [(600, 900), (0, 0)]
    for y, x in windows:
        got = reader.read(y, x, 224, 224)
        np.testing.assert_array_equal(got, expected[:, max(y, 0) : y + 224, max(x, 0) : x + 224])
    out = np.empty((2, 224, 224), np.uint8)
    reader.read(100, 130, 224, 224, channels=[2, 0], out=out)
    np.testing.assert_array_equal(out, expected[[2, 0], 100:324, 130:354])
    tile = HEImagingDataset("t", store, 0.252, 224).read_tile("A", 300, 500, preprocess=False)
    np.testing.assert_array_equal(tile.numpy(), expected[:, 300:524, 500:724])


def test_napari_lazy_level_opens_it(slide: Path, store: Path) -> None:
    level = LazyLevel(open_level(store, LEVEL1), (512, 512), rgb=True, cache=WindowCache(2**26))
    np.testing.assert_array_equal(np.asarray(level[10:200, 5:300]), tifffile.imread(slide, series=0, level=1)[10:200, 5:300])


def test_lossless_keeps_todays_layout(slide: Path, store: Path, tmp_path: Path) -> None:
    other = tmp_path / "lossless.zarr"
    assert main(["add-image", str(other), str(slide), "--modality", "he", "--tissue", "A", "--lossless"]) == 0
    group = zarr.open_group(other / "he/images/A", mode="r")
    assert "imagecodecs_jpeg" not in _codec_names(group["0_252mpp"])
    assert group["0_252mpp"].chunks == (3, 112, 112)
    np.testing.assert_array_equal(group["0_252mpp"][:], tifffile.imread(slide).transpose(2, 0, 1))
    assert _size(other / "he/images/A") > 2 * _size(store / "he/images/A")


def _child_read(store: str, queue: object) -> None:
    reader = open_level(store, LEVEL0)
    queue.put((reader.engine, reader.read(40, 60, 224, 300)))  # type: ignore[attr-defined]


def test_a_forked_child_reads_after_the_parent_did(slide: Path, store: Path) -> None:
    import multiprocessing

    open_level(store, LEVEL0).read(0, 0, 300, 300)  # the parent's decode threads exist now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_read, args=(str(store), queue))
    child.start()
    engine, window = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0 and engine == "direct"
    np.testing.assert_array_equal(window, tifffile.imread(slide)[40:264, 60:360].transpose(2, 0, 1))


def test_on_an_object_store_the_kept_shards_go_through_zarrs_store_and_hold_the_same_bytes(slide: Path, store: Path) -> None:
    """Locally the lanes write the shard files themselves; elsewhere (here memory://) zarr's store does: the same files."""
    url = f"memory://jpeg-{os.getpid()}/cohort.zarr"
    add_image(url, str(slide), modality="he", tissue_id="A")
    location = Location.parse(url)
    for name in (LEVEL0, LEVEL1):
        remote = {p.rsplit(name, 1)[1]: location.fs().cat_file(p) for p in location.fs().find(location.fs_path(name))}
        local = {"/" + str(p.relative_to(store / name)): p.read_bytes() for p in (store / name).rglob("*") if p.is_file()}
        shards = {key: data for key, data in local.items() if key.startswith("/c/")}
        assert shards and {key: remote[key] for key in shards} == shards, name
    np.testing.assert_array_equal(open_cohort(url).open_image("he", "A", 0.252).values, tifffile.imread(slide).transpose(2, 0, 1))
    assert validate_store(url) == []


def test_a_slide_cut_short_in_its_tiles_is_one_line_naming_it_and_nothing_is_added(
    slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kept tile is read whole or the write stops: a short read is never stored as a chunk."""
    with tifffile.TiffFile(slide) as tiff:
        page = tiff.pages[0]
        end = max(o + n for o, n in zip(page.dataoffsets, page.databytecounts))
        last = int(np.argmax(page.dataoffsets))
        cut = int(page.dataoffsets[last]) + int(page.databytecounts[last]) // 2
    assert end == int(page.dataoffsets[last]) + int(page.databytecounts[last])
    short = tmp_path / "short.svs"
    short.write_bytes(slide.read_bytes()[:cut])
    store = tmp_path / "cohort.zarr"
    add_image(store, str(slide), modality="he", tissue_id="A")
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    code = main(["add-image", str(store), str(short), "--modality", "he", "--tissue", "B"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert str(short) in errors[0] and "truncated TIFF" in errors[0], err
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before
    assert validate_store(store) == []


def test_a_lossy_opt_in_stores_other_rgb_images_as_jpeg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = np.asarray(he_like(300, 700, seed=7))
    path = tmp_path / "he.tif"
    tifffile.imwrite(
        path, image, photometric="rgb", tile=(64, 64), compression="zlib", resolution=(40000, 40000), resolutionunit="CENTIMETER"
    )
    store, plain = tmp_path / "lossy.zarr", tmp_path / "plain.zarr"
    assert main(["add-image", str(store), str(path), "--modality", "he", "--tissue", "A", "--jpeg-quality", "90"]) == 0
    add_image(plain, str(path), modality="he", tissue_id="A")
    array = zarr.open_array(store / "he/images/A/0_25mpp", mode="r")
    assert _codec_names(array) == ["transpose", "imagecodecs_jpeg"]
    stored = array[:]
    assert np.abs(stored.astype(int) - image.transpose(2, 0, 1)).mean() < 4  # lossy, but close
    np.testing.assert_array_equal(open_level(store, "he/images/A/0_25mpp").read(0, 0, 300, 700), stored)  # one decode, every reader
    assert _size(store / "he/images/A") < _size(plain / "he/images/A") / 2
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.zeros((32, 32), np.uint16))
    assert main(["add-image", str(store), str(gray), "--modality", "imc", "--tissue", "B", "--mpp", "1", "--jpeg-quality", "90"]) == 1
    assert "JPEG storage is for 8-bit RGB images" in capsys.readouterr().err


@pytest.mark.parametrize(("asked", "reads"), [("tensorstore", "zarr"), ("zarrs", "zarr"), ("zarr", "zarr")])
def test_engines_without_the_codec_hand_it_to_zarr_python(slide: Path, store: Path, asked: str, reads: str) -> None:
    reader = open_level(store, LEVEL1, engine=asked)
    assert reader.engine == reads
    np.testing.assert_array_equal(reader.read(0, 0, 100, 90), tifffile.imread(slide, series=0, level=1)[:100, :90].transpose(2, 0, 1))


def test_plain_zarr_python_finds_the_codec_by_the_projects_entry_point(slide: Path, store: Path, tmp_path: Path) -> None:
    import subprocess
    import sys
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    entry = project["project"]["entry-points"]["zarr.codecs"]["imagecodecs_jpeg"]
    info = tmp_path / "spora_entry-0.dist-info"  # the installed metadata of the project's entry point, as pip writes it
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spora-entry\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[zarr.codecs]\nimagecodecs_jpeg = {entry}\n")
    code = (
        "import sys, zarr, numpy as np; assert 'spora_zarr' not in sys.modules; "
        f"print(zarr.open_array({str(store / LEVEL1)!r}, mode='r')[:].tobytes().hex())"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    expected = tifffile.imread(slide, series=0, level=1).transpose(2, 0, 1)
    assert bytes.fromhex(out.strip()) == np.ascontiguousarray(expected).tobytes()


@pytest.mark.parametrize("index_location", ["start", "end"])
def test_a_shard_of_one_jpeg_chunk_is_read_through_its_index(tmp_path: Path, index_location: str) -> None:
    from zarr.codecs import ShardingCodec

    from spora_zarr.store.codecs import _SporaJpeg, jpeg_chunk_codecs

    image = np.asarray(he_like(200, 300, seed=2)).transpose(2, 0, 1)
    transpose, registered = jpeg_chunk_codecs({"level": 90})
    # encoded by this module's class: imagecodecs.zarr.Jpeg (Python 3.12+) refuses the transposed views zarr 3.4 hands it
    jpeg = _SporaJpeg.from_dict(registered.to_dict())
    sharding = ShardingCodec(chunk_shape=(3, 128, 128), codecs=[transpose, jpeg], index_location=index_location)
    array = zarr.create_array(
        tmp_path / "a.zarr",
        shape=image.shape,
        dtype="uint8",
        chunks=(3, 128, 128),
        serializer=sharding,
        filters=None,
        compressors=None,
        fill_value=0,
    )
    array[:] = image  # zarr-python's own shards, each one chunk and its index
    reader = open_level(tmp_path / "a.zarr", "")
    assert reader.engine == "direct"
    np.testing.assert_array_equal(reader.read(0, 0, 200, 300), array[:])


def test_the_lossy_opt_in_refuses_a_z_stack_rather_than_keep_one_plane(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ngff_zarr = pytest.importorskip("ngff_zarr")
    from ngff_zarr import Omero, OmeroChannel, OmeroWindow

    data = np.random.default_rng(3).integers(0, 255, (3, 2, 40, 48), dtype=np.uint8)
    units = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    image = ngff_zarr.to_ngff_image(data, dims=("c", "z", "y", "x"), scale={"z": 2.0, "y": 0.5, "x": 0.5}, axes_units=units)
    multiscales = ngff_zarr.to_multiscales(image, scale_factors=[])
    window = OmeroWindow(min=0.0, max=255.0, start=0.0, end=255.0)
    multiscales.metadata.omero = Omero(channels=[OmeroChannel(color=c, window=window, label=c) for c in ("FF0000", "00FF00", "0000FF")])
    ngff_zarr.to_ngff_zarr(str(tmp_path / "stack.ome.zarr"), multiscales)  # an RGB z stack
    store = tmp_path / "cohort.zarr"
    args = ["add-image", str(store), str(tmp_path / "stack.ome.zarr"), "--modality", "he", "--tissue", "S", "--jpeg-quality", "90"]
    assert main(args) == 1
    assert "JPEG storage is for 2-D images, this one is a stack of 2 z planes" in capsys.readouterr().err
    assert not (store / "he/images/S").exists()


def test_adding_another_resolution_keeps_the_slides_jpeg_chunks(slide: Path, tmp_path: Path) -> None:
    store = tmp_path / "cohort.zarr"
    add_image(store, str(slide), modality="he", tissue_id="A")
    before = (store / LEVEL0 / "c/0/0/0").read_bytes()
    half = tmp_path / "half.tif"
    tifffile.imwrite(half, np.ascontiguousarray(tifffile.imread(slide)[::2, ::2]), photometric="rgb", tile=(64, 64), compression="zlib")
    add_image(store, str(half), modality="he", tissue_id="A", mpp=0.504)  # the group is rewritten with its new level
    group = zarr.open_group(store / "he/images/A", mode="r")
    assert list(group.metadata.attributes["spora"]["source_levels"]) == ["0_252mpp", "0_504mpp", "1_008mpp"]
    for name in ("0_252mpp", "1_008mpp"):
        assert _codec_names(group[name]) == ["transpose", "imagecodecs_jpeg"]
    assert (store / LEVEL0 / "c/0/0/0").read_bytes() == before  # the slide's tiles, not a lossless re-encoding
    np.testing.assert_array_equal(open_level(store, LEVEL0).read(0, 0, 700, 1000), tifffile.imread(slide).transpose(2, 0, 1))
    assert validate_store(store) == []


@pytest.mark.parametrize("quality", ["0", "101"])
def test_a_jpeg_quality_out_of_range_is_refused_for_a_jpeg_slide_too(
    slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], quality: str
) -> None:
    store = tmp_path / "cohort.zarr"
    assert main(["add-image", str(store), str(slide), "--modality", "he", "--tissue", "A", "--jpeg-quality", quality]) == 1
    assert f"JPEG quality must be an integer 1-100, got {quality}" in capsys.readouterr().err
    assert not (store / "he/images/A").exists()


class _Overlaps(ImageSource):
    """``source`` as it is, counting how many threads are inside its reads (tile bytes or pixels) at once."""

    def __init__(self, source: ImageSource) -> None:
        self.source, self.name, self.shape, self.dtype, self.info = source, source.name, source.shape, source.dtype, source.info
        self.inside = self.most = 0
        self._count = threading.Lock()

    @contextlib.contextmanager
    def _entered(self) -> Iterator[None]:
        with self._count:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(0.005)  # long enough for another thread to come in
            yield
        finally:
            with self._count:
                self.inside -= 1

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        with self._entered():
            return self.source.read(y0, y1, x0, x1)

    def encoded_tiles(self) -> EncodedTiles | None:
        tiles = self.source.encoded_tiles()
        assert tiles is not None

        def read(row: int, col: int) -> bytes:
            with self._entered():
                return tiles.read(row, col)

        return EncodedTiles(codec=tiles.codec, tile=tiles.tile, read=read)


def test_two_lanes_write_a_slides_jpeg_shards_two_at_a_time_and_the_same_files(slide: Path, tmp_path: Path) -> None:
    """The kept JPEG level is written a shard per lane at once (issue 30: one slide on every core), byte for byte as one lane."""
    written = {}
    for lanes in (1, 2):
        with TiffSource(slide) as tiff:
            source = _Overlaps(tiff)
            store = tmp_path / f"{lanes}.zarr"
            options = WriteOptions(chunk=128, shard=256, codec_threads=lanes)  # 128 px tiles: 2 x 2 per shard, 12 shards
            write_image(store, "he/images/A", {0.252: source}, rgb=True, keep_encoded=True, options=options)
        assert source.most == lanes
        level = store / "he/images/A/0_252mpp"
        written[lanes] = {str(p.relative_to(level)): p.read_bytes() for p in sorted(level.rglob("*")) if p.is_file()}
    assert len(written[1]) == 13  # 12 shards and zarr.json
    assert written[1] == written[2]


def test_lossy_tiles_are_encoded_by_several_threads_while_the_source_is_read_by_one(tmp_path: Path) -> None:
    """JpegEncoded's tiles may be read from the writer's lanes at once: the wrapped source is read by one thread at a time."""
    pixels = np.asarray(he_like(600, 700, seed=2)).transpose(2, 0, 1)
    source = _Overlaps(ArraySource(pixels, info=SourceInfo(is_rgb=True)))
    tiles = JpegEncoded(source, 90).encoded_tiles()
    cells = [(row, col) for row in range(3) for col in range(3)]
    one = [tiles.read(row, col) for row, col in cells]
    with ThreadPoolExecutor(4) as pool:
        several = list(pool.map(lambda cell: tiles.read(*cell), cells))
    assert several == one
    assert source.most == 1
