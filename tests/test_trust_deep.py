"""``spora-zarr validate --deep``: a converted store damaged one way at a time is reported, naming the path.

The store is converted by the real converter with small shards (2 x 2 chunks of
16 px) and computed levels above the one source level, then copied and damaged
on disk: shard files deleted, truncated, their index rewritten, chunk bytes
overwritten, table rows added, a mask level changed. Shard indexes are parsed
here from the zarr v3 sharding format (index at the end: uint64 offset/size
pairs, crc32c), independently of spora_zarr's reader.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from spora_zarr import ConvertOptions, WriteOptions, convert_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.testing.cohorts import make_synthetic_cohort

CHUNKS_PER_SHARD = 4  # (32 / 16) ** 2: shards hold all channels
NO_CHUNK = 2**64 - 1


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tissues A and B (H&E, 5-channel IMC, masks) at 0.5 mpp, levels 1, 2, 4 mpp computed; 32 px shards, blosc."""
    root = tmp_path_factory.mktemp("deep")
    src = make_synthetic_cohort(
        root / "tiff", tissues=("A", "B"), he_shape=(96, 160), resolutions=(0.5,), ihc_markers=(), with_tables=False, seed=2
    )
    write = WriteOptions(chunk=16, shard=32, max_top_size=32, min_saving=0)
    report = convert_cohort(src, root / "s.zarr", ConvertOptions(progress=False, write=write))
    assert report.ok, report.summary()
    return root / "s.zarr"


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "s.zarr"
    shutil.copytree(pristine, copy)
    return copy


def shard_index(path: Path) -> np.ndarray:
    """(offset, size) per inner chunk of a shard file, C order."""
    raw = path.read_bytes()
    body = raw[-(16 * CHUNKS_PER_SHARD + 4) : -4]
    assert google_crc32c.value(body) == int.from_bytes(raw[-4:], "little")
    return np.frombuffer(body, "<u8").reshape(-1, 2).copy()


def rewrite_index(path: Path, entries: np.ndarray) -> None:
    """Replace a shard's index by ``entries`` with a valid checksum."""
    raw = path.read_bytes()
    body = entries.astype("<u8").tobytes()
    path.write_bytes(raw[: -(16 * CHUNKS_PER_SHARD + 4)] + body + google_crc32c.value(body).to_bytes(4, "little"))


def deep(store: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Exit status and output lines of ``spora-zarr validate --deep``."""
    capsys.readouterr()
    code = main(["validate", "--deep", str(store)])
    return code, capsys.readouterr().out.splitlines()


def append_rows(path: Path | str, rows: list[dict[str, str]], fs: fsspec.AbstractFileSystem | None = None) -> None:
    fs = fs or fsspec.filesystem("file")
    with fs.open(str(path), "rb") as handle:
        table = pq.read_table(handle)
    with fs.open(str(path), "wb") as handle:
        pq.write_table(pa.concat_tables([table, pa.Table.from_pylist(rows, schema=table.schema)]), handle)


def test_an_undamaged_store_passes_deep(pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The writer leaves out shards and chunks of masks that hold only the fill value: not a problem.
    absent = [p for p in (pristine / "segmentations/cell_masks/A/4_0mpp").iterdir() if p.name != "zarr.json"]
    assert absent == []
    assert deep(pristine, capsys) == (0, ["valid"])


def test_damaged_shards_are_each_named(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    level = store / "imc/images/A/0_5mpp/c/0"
    corrupt, truncated, past_end = level / "0/1", level / "1/1", level / "2/2"
    offset, size = map(int, shard_index(corrupt)[0])
    data = bytearray(corrupt.read_bytes())
    data[offset : offset + size] = bytes(size)  # the first chunk's blosc buffer zeroed
    corrupt.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    entries = shard_index(past_end)
    entries[1, 0] = past_end.stat().st_size + 10
    rewrite_index(past_end, entries)
    assert validate_store(store) == []  # plain validation reads no shard

    code, lines = deep(store, capsys)
    assert code == 1
    assert lines == [
        f"imc/images/A/0_5mpp/c/0/0/1: cannot decode the chunk of {size} bytes at offset {offset}: not a valid blosc buffer",
        "imc/images/A/0_5mpp/c/0/1/1: the checksum of its chunk index does not match (corrupt file)",
        "imc/images/A/0_5mpp/c/0/2/2: its index points past the end of the file (corrupt file)",
    ]


def test_a_shard_shorter_than_its_index(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shard = store / "he/images/B/1_0mpp/c/0/1/2"
    shard.write_bytes(shard.read_bytes()[:10])
    code, lines = deep(store, capsys)
    assert code == 1
    assert lines == [f"he/images/B/1_0mpp/c/0/1/2: shard is 10 bytes, too short for its {16 * CHUNKS_PER_SHARD + 4}-byte index"]


def test_missing_shards_and_chunks_where_the_pyramid_has_data(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (store / "imc/images/B/0_5mpp/c/0/2/2").unlink()
    (store / "segmentations/tissue_masks/A/1_0mpp/c/0/0").unlink()
    shard = store / "he/images/A/0_5mpp/c/0/1/3"
    entries = shard_index(shard)
    entries[3] = NO_CHUNK  # the chunk at (y, x) = (3, 7) of the level marked never written
    rewrite_index(shard, entries)
    (store / "imc/images/A/4_0mpp/c/0/0/0").unlink()  # the coarsest level: nothing shows it held data
    assert validate_store(store) == []

    code, lines = deep(store, capsys)
    assert code == 1
    assert lines == [
        "he/images/A/0_5mpp/c/0/1/3: chunk [0, 3, 7] is absent from the shard index, but level 1_0mpp, computed from it, has data there",
        "imc/images/B/0_5mpp/c/0/2/2: shard file is missing, but level 1_0mpp, computed from it, has data there",
        "segmentations/tissue_masks/A/1_0mpp/c/0/0: shard file is missing, but level 2_0mpp, computed from it, has data there",
    ]


def test_orphan_tissue_and_phantom_channel_rows(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    append_rows(store / "metadata/tissues.parquet", [{"tissue_id": "Z", "patient_id": "P9", "diagnosis": "normal"}])
    append_rows(
        store / "imc/channels_per_tissue.parquet",
        [
            {"tissue_id": "A", "channel_name": "Ghost"},
            {"tissue_id": "Z", "channel_name": "DNA1"},
            {"tissue_id": "Z", "channel_name": "CD3"},
        ],
    )
    assert validate_store(store) == []

    code, lines = deep(store, capsys)
    assert code == 1
    assert lines == [
        "metadata/tissues.parquet: tissue 'Z' has no image in any modality",
        "imc/channels_per_tissue.parquet: tissue 'A' lists channel 'Ghost', which imc/images/A does not have "
        "(it has DNA1, CD3, CD20, PanCK, Vimentin)",
        "imc/channels_per_tissue.parquet: tissue 'Z' has no imc image (2 channel row(s))",
    ]


def test_mask_levels_must_match_the_image(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    group = store / "segmentations/cell_masks/B"
    document = json.loads((group / "zarr.json").read_text())
    document["attributes"]["ome"]["multiscales"][0]["datasets"].pop()  # the mask loses its coarsest level 4_0mpp
    (group / "zarr.json").write_text(json.dumps(document))
    shutil.rmtree(group / "4_0mpp")
    assert validate_store(store) == []  # the levels it has still match

    code, lines = deep(store, capsys)
    assert code == 1
    assert lines == [
        "segmentations/cell_masks/B: levels 0_5mpp, 1_0mpp, 2_0mpp are not the levels of its image-label source he/images/B "
        "(0_5mpp, 1_0mpp, 2_0mpp, 4_0mpp), as NGFF requires (a resolution added to the image later does not rewrite its "
        "masks: add the mask again with --overwrite)"
    ]
    del document["attributes"]["ome"]["image-label"]["source"]  # without a source: levels of an image of the tissue
    (group / "zarr.json").write_text(json.dumps(document))
    assert deep(store, capsys) == (0, ["valid"])
    document["attributes"]["ome"]["multiscales"][0]["datasets"][-1]["path"] = "3_0mpp"
    (group / "2_0mpp").rename(group / "3_0mpp")
    (group / "zarr.json").write_text(json.dumps(document))
    code, lines = deep(store, capsys)
    assert (
        code == 1
        and (
            "segmentations/cell_masks/B: levels 0_5mpp, 1_0mpp, 3_0mpp are not levels of he/images/B (0_5mpp, 1_0mpp, 2_0mpp, "
            "4_0mpp) or of any other image of the tissue"
        )
        in lines
    )


def test_masks_at_fewer_resolutions_than_their_image_as_the_writers_make_them_pass_deep_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mask at 1.0 mpp of an image at 0.5 and 1.0 mpp has no source and passes; a mask whose source image gains a
    resolution later is named, with what to do, and passes once added again."""
    import tifffile

    store, rng = str(tmp_path / "s.zarr"), np.random.default_rng(8)
    files = {}
    for name, shape in {"img05": (2, 400, 300), "img10": (2, 200, 150), "mask05": (400, 300), "mask10": (200, 150)}.items():
        files[name] = str(tmp_path / f"{name}.tif")
        data = rng.integers(0, 9, shape).astype(np.uint16 if name.startswith("img") else np.uint32)
        tifffile.imwrite(files[name], data, photometric="minisblack", metadata={"axes": "CYX" if data.ndim == 3 else "YX"})

    def add(file: str, modality: str, mpp: str, *more: str) -> None:
        assert main(["add-image", store, files[file], "--modality", modality, "--tissue", "T", "--mpp", mpp, *more]) == 0

    add("img05", "imc", "0.5")
    add("mask05", "tissue_masks", "0.5")  # the image's levels: its source is the image
    assert deep(Path(store), capsys) == (0, ["valid"])
    add("img10", "imc", "1.0")  # the image gains a level, the mask is not rewritten
    code, lines = deep(Path(store), capsys)
    assert code == 1 and lines[0] == (
        "segmentations/tissue_masks/T: levels 0_5mpp are not the levels of its image-label source imc/images/T (0_5mpp, "
        "1_0mpp), as NGFF requires (a resolution added to the image later does not rewrite its masks: add the mask "
        "again with --overwrite)"
    )
    add("mask05", "tissue_masks", "0.5", "--overwrite")
    add("mask10", "cell_masks", "1.0")  # fewer resolutions than the image: no source
    assert deep(Path(store), capsys) == (0, ["valid"])


def test_a_mask_level_of_the_wrong_shape(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    level = "segmentations/cell_masks/A/1_0mpp"
    shutil.rmtree(store / level)
    zarr.create_array(store / level, shape=(48, 70), chunks=(16, 16), dtype="uint32", fill_value=0, dimension_names=("y", "x"))[:] = 1
    code, lines = deep(store, capsys)
    assert code == 1
    assert "segmentations/cell_masks/A: level 1_0mpp shape (48, 70) does not match he/images/A (48, 80)" in lines
    assert all(line.startswith("segmentations/cell_masks/A") for line in lines)


def test_deep_on_an_fsspec_store(pristine: Path) -> None:
    # zarr-python's pipeline reads the shards here; shard indexes are not parsed apart (absent chunks go unchecked).
    fs = fsspec.filesystem("memory")
    fs.put(str(pristine), "/deep-check", recursive=True)
    try:
        fs.pipe("/deep-check/imc/images/A/0_5mpp/c/0/1/1", fs.cat("/deep-check/imc/images/A/0_5mpp/c/0/1/1")[:-100])
        fs.rm("/deep-check/imc/images/B/0_5mpp/c/0/2/2")
        append_rows("/deep-check/metadata/tissues.parquet", [{"tissue_id": "Z", "patient_id": "P9", "diagnosis": "normal"}], fs)
        assert validate_store("memory://deep-check") == []

        problems = validate_store("memory://deep-check", deep=True)
        assert problems[0] == "metadata/tissues.parquet: tissue 'Z' has no image in any modality"
        assert problems[1].startswith("imc/images/A/0_5mpp/c/0/1/1: zarr cannot read it (damaged or unreadable chunk data)")
        assert problems[2:] == ["imc/images/B/0_5mpp/c/0/2/2: shard file is missing, but level 1_0mpp, computed from it, has data there"]
    finally:
        fs.rm("/deep-check", recursive=True)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_shard_that_is_no_regular_file_is_reported_never_a_hang(store: Path, kind: str) -> None:
    import os
    import subprocess
    import sys

    shard = store / "he/images/B/2_0mpp/c/0/0/0"
    shard.unlink()
    os.mkfifo(shard) if kind == "fifo" else shard.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "spora_zarr.cli", "validate", "--deep", str(store)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr
    what = "FIFO" if kind == "fifo" else kind
    assert f"he/images/B/2_0mpp/c/0/0/0: not a regular file (a {what}); only regular files are read" in done.stdout.splitlines()
