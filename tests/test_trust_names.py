"""Nothing escapes the store: every name that becomes a path is validated, nothing is written through links or over foreign files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile

from spora_zarr import open_cohort
from spora_zarr.cli import main
from spora_zarr.errors import InvalidInputError, StoreError
from spora_zarr.store import layout
from spora_zarr.testing.cohorts import make_synthetic_cohort

BAD_MODALITIES = [
    "../x",
    "ihc/../../y",
    "/abs/path",
    "",
    "./z",
    "imc/./q",
    "images",
    "metadata",
    "segmentations",
    "tiling",
    "imc/images",
    "he/",
    "a//b",
]


def one_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """The one ``error:`` line printed, checked to hold ``fragments`` and no traceback."""
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(f in lines[0] for f in fragments), (fragments, lines[0])
    return lines[0]


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8))
    return path


def add(store: Path, image: Path, modality: str, tissue: str = "T") -> int:
    return main(
        ["add-image", str(store), str(image), "--modality", modality, "--tissue", tissue, "--mpp", "1", "--chunk", "32", "--shard", "0"]
    )


# -- modality names ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", BAD_MODALITIES)
def test_add_image_refuses_an_unsafe_modality(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], modality: str) -> None:
    before = tree(tmp_path)
    assert add(tmp_path / "s.zarr", image, modality) == 1
    one_error(capsys, "invalid modality", repr(modality))
    assert tree(tmp_path) == before  # nothing written: not outside the store, not at its root


@pytest.mark.parametrize(("tissue", "reason"), [("zarr.json", "is the name of a zarr document"), ("t" * 256, "longer than 255 bytes")])
def test_a_name_that_is_a_zarr_document_or_too_long_for_a_file_system_is_refused(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], tissue: str, reason: str
) -> None:
    """``imc/images/zarr.json`` would be the images folder's own document (a label prediction named so wedged the
    store's recovery); a name over 255 bytes failed each tissue with the file system's error after the work."""
    before = tree(tmp_path)
    assert add(tmp_path / "s.zarr", image, "imc", tissue) == 1
    one_error(capsys, "invalid tissue id", reason)
    assert tree(tmp_path) == before
    with pytest.raises(InvalidInputError, match=reason):
        layout.label_group_path(tissue, "A", extra_kinds=[tissue])  # a label prediction's name, as predict --labels makes it


def test_a_modality_inside_an_existing_image_group_is_refused(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "imc") == 0
    capsys.readouterr()
    before = tree(store)
    assert add(store, image, "imc/images/T") == 1
    one_error(capsys, "invalid modality", "'images'")
    assert tree(store) == before


@pytest.mark.parametrize("modality", ["he", "imc", "cycif", "ihc/ihc_CD3", "predictions/unet", "my modality"])
def test_spora_modality_names_are_valid(modality: str) -> None:
    assert layout.validate_modality(modality) == modality


def tiles(folder: Path, names: tuple[str, ...] = ("a.tif", "b.tif")) -> Path:
    """Two 16 px tiles side by side in ``folder`` and their offsets CSV (file names as given)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["file,x,y"]
    for n, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tifffile.imwrite(path, np.full((16, 16), n + 1, dtype=np.uint16))
        rows.append(f"{name},{16 * n},0")
    table = folder.parent / "offsets.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def stitch_cli(tiles_dir: Path, table: Path, store: Path, *extra: str, modality: str = "imc") -> int:
    return main(
        ["stitch", str(tiles_dir), str(table), str(store), "--modality", modality, "--tissue", "T", "--mpp", "1", "--no-progress", *extra]
    )


@pytest.mark.parametrize("modality", ["../x", "/abs/path", "tiling"])
def test_stitch_refuses_an_unsafe_modality(tmp_path: Path, capsys: pytest.CaptureFixture[str], modality: str) -> None:
    table = tiles(tmp_path / "tiles")
    before = tree(tmp_path)
    assert stitch_cli(tmp_path / "tiles", table, tmp_path / "s.zarr", modality=modality) == 1
    one_error(capsys, "invalid modality")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("labels", [False, True])
def test_predict_names_the_prediction_in_its_error(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], labels: bool) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "imc") == 0
    capsys.readouterr()
    argv = ["predict", str(store), "--model", "nowhere:model", "--modality", "imc", "--resolution", "1", "--name", "../x", "--no-progress"]
    assert main([*argv, *(["--labels"] if labels else [])]) == 1
    line = one_error(capsys, "prediction name", "'../x'")
    assert "tissue id" not in line
    assert not (tmp_path / "x").exists()


def test_a_root_document_listing_an_escaping_modality_is_an_error(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "he") == 0
    shutil.copytree(store / "he", tmp_path / "evil")  # a sibling folder that looks like a modality
    document = json.loads((store / "zarr.json").read_text())
    document["attributes"]["spora"]["modalities"]["../evil"] = ["1_0mpp"]
    (store / "zarr.json").write_text(json.dumps(document))
    with pytest.raises(StoreError, match=r"invalid modality '\.\./evil'"):
        open_cohort(store)
    capsys.readouterr()
    assert main(["info", str(store)]) == 1
    one_error(capsys, "invalid modality '../evil'")


def test_a_root_document_listing_an_escaping_mask_kind_is_an_error(tmp_path: Path, image: Path) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "he") == 0
    document = json.loads((store / "zarr.json").read_text())
    document["attributes"]["spora"]["mask_kinds"] = ["../../elsewhere"]
    (store / "zarr.json").write_text(json.dumps(document))
    with pytest.raises(StoreError, match="invalid mask kind"):
        open_cohort(store)


# -- tables and other layout paths -----------------------------------------------------------------------------------------
def test_read_table_reads_only_inside_the_store(tmp_path: Path, image: Path) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "he") == 0
    pq.write_table(pa.table({"secret": [1]}), tmp_path / "x.parquet")
    cohort = open_cohort(store)
    assert cohort.read_table("metadata/tissues.parquet").column("tissue_id").to_pylist() == ["T"]
    for path in ("../x.parquet", str(tmp_path / "x.parquet"), "metadata/../../x.parquet"):
        with pytest.raises(InvalidInputError, match="invalid table path"):
            cohort.read_table(path)


def test_tile_and_standardization_paths_stay_in_the_store() -> None:
    with pytest.raises(InvalidInputError, match="tiling strategy"):
        layout.tile_table_path(1.0, 224, strategy="../../x")
    with pytest.raises(InvalidInputError, match="standardization spec"):
        layout.standardization_dir("imc", 1.0, "quantile_clipping/../../../x")
    with pytest.raises(InvalidInputError, match="invalid modality"):
        layout.standardization_dir("../imc", 1.0, "quantile_clipping/uq_0.99_image")
    spec = "quantile_clipping/uq_0.99_image"
    assert layout.standardization_dir("imc", 1.0, spec) == f"imc/1_0mpp/standardization/{spec}"


# -- stitch: the offsets table's files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_stitch_refuses_a_file_outside_the_tiles_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str) -> None:
    outside = tmp_path / "outside.tif"
    tifffile.imwrite(outside, np.full((16, 16), 7, dtype=np.uint16))
    folder = tmp_path / "tiles"
    folder.mkdir()
    if how == "symlink":
        (folder / "b.tif").symlink_to(outside)
    name = {"dotdot": "../outside.tif", "absolute": str(outside), "symlink": "b.tif"}[how]
    table = tiles(folder, ("a.tif", name))
    store = tmp_path / "s.zarr"
    assert stitch_cli(folder, table, store) == 1
    one_error(capsys, repr(name), "outside", "--allow-outside-tiles-dir")
    assert not store.exists()
    assert stitch_cli(folder, table, store, "--allow-outside-tiles-dir") == 0  # the explicit opt-in
    assert int(open_cohort(store).open_image("imc", "T").values[0, 0, 20]) == 7


def test_an_unreadable_non_tiff_tile_is_not_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tiles(tmp_path / "tiles")
    (tmp_path / "tiles" / "b.tif").write_text("SECRET=hunter2\n")
    assert stitch_cli(tmp_path / "tiles", table, tmp_path / "s.zarr") == 1
    line = one_error(capsys, "b.tif", "unreadable TIFF")
    assert "SECR" not in line and "hunter" not in line


# -- symlinks in a destination ---------------------------------------------------------------------------------------------
def test_add_image_does_not_write_through_a_modality_link(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, elsewhere = tmp_path / "s.zarr", tmp_path / "elsewhere"
    assert add(store, image, "imc") == 0
    elsewhere.mkdir()
    (store / "he").symlink_to(elsewhere)
    capsys.readouterr()
    assert add(store, image, "he") == 1
    one_error(capsys, str(store / "he"), "symbolic link")
    assert list(elsewhere.iterdir()) == []


def test_add_image_does_not_replace_a_linked_tissue_group(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, outside = tmp_path / "s.zarr", tmp_path / "outside"
    assert add(store, image, "he", "T1") == 0
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (store / "he/images/T2").symlink_to(outside)
    capsys.readouterr()
    assert add(store, image, "he", "T2") == 1
    one_error(capsys, str(store / "he/images/T2"), "symbolic link")
    assert (store / "he/images/T2").is_symlink() and tree(outside) == {"keep.txt"}


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    return make_synthetic_cohort(
        tmp_path / "src",
        tissues=("A",),
        he_shape=(40, 60),
        resolutions=(1.0,),
        with_masks=False,
        multiplex_modalities=(),
        ihc_markers=(),
        seed=3,
    )


def convert(src: Path, dest: Path, *extra: str) -> int:
    return main(["convert", str(src), str(dest), "--no-progress", "--chunk", "32", "--shard", "0", *extra])


def test_convert_does_not_write_through_a_link_in_the_destination(
    tmp_path: Path, image: Path, cohort: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, elsewhere = tmp_path / "s.zarr", tmp_path / "elsewhere"
    assert add(store, image, "imc") == 0
    elsewhere.mkdir()
    (store / "he").symlink_to(elsewhere)
    capsys.readouterr()
    assert convert(cohort, store) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


# -- convert: where it may write, and what --overwrite may delete ----------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("inside", [False, True])
def test_convert_refuses_its_own_source(
    tmp_path: Path, cohort: Path, capsys: pytest.CaptureFixture[str], inside: bool, overwrite: bool
) -> None:
    before = tree(cohort)
    dest = cohort / "out.zarr" if inside else cohort
    assert convert(cohort, dest, *(["--overwrite"] if overwrite else [])) == 1
    one_error(capsys, "source cohort")
    assert tree(cohort) == before


def test_convert_refuses_a_folder_with_other_files_unless_overwrite(
    tmp_path: Path, cohort: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "project"
    (dest / "notes").mkdir(parents=True)
    (dest / "notes/todo.txt").write_text("keep me")
    assert convert(cohort, dest) == 1
    one_error(capsys, "not a cohort store and not empty", "--overwrite")
    assert tree(dest) == {"notes", "notes/todo.txt"}
    assert convert(cohort, dest, "--overwrite") == 0
    assert (dest / "notes/todo.txt").read_text() == "keep me"
    assert open_cohort(dest).tissues("he") == ["A"]


@pytest.mark.parametrize("foreign", ["he/images/A/notes.txt", "metadata/tissues.parquet"])
def test_overwrite_never_replaces_foreign_files_at_the_paths_it_writes(
    tmp_path: Path, cohort: Path, capsys: pytest.CaptureFixture[str], foreign: str
) -> None:
    dest = tmp_path / "project"
    (dest / foreign).parent.mkdir(parents=True)
    (dest / foreign).write_text("keep me")
    assert convert(cohort, dest, "--overwrite") == 1
    one_error(capsys, "not written by spora_zarr")
    assert tree(dest) == {str(Path(foreign).parents[n]) for n in range(len(Path(foreign).parts) - 1)} | {foreign}
    assert (dest / foreign).read_text() == "keep me"


def test_a_foreign_folder_inside_a_store_is_never_replaced(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "he", "T1") == 0
    (store / "he/images/T2").mkdir()
    (store / "he/images/T2/notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["add-image", str(store), str(image), "--modality", "he", "--tissue", "T2", "--mpp", "1", "--overwrite"]) == 1
    one_error(capsys, "did not write")
    assert tree(store / "he/images/T2") == {"notes.txt"}


def test_an_empty_folder_is_a_fine_destination(tmp_path: Path, cohort: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert convert(cohort, tmp_path / "empty") == 0
    assert open_cohort(tmp_path / "empty").tissues("he") == ["A"]


# -- info says where the store root is ---------------------------------------------------------------------------------
@pytest.mark.parametrize("inner", ["he", "he/images", "he/images/T"])
def test_info_on_a_group_inside_a_store_names_the_store(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], inner: str
) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "he") == 0
    capsys.readouterr()
    assert main(["info", str(store / inner)]) == 1
    one_error(capsys, "not the root of a cohort store", repr(inner), os.fspath(store))


def test_convert_refuses_a_source_modality_with_a_reserved_name(tmp_path: Path, cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cohort / "he").rename(cohort / "images")
    assert convert(cohort, tmp_path / "out.zarr") == 1
    one_error(capsys, "images/1_0mpp/images/A.tif", "invalid modality 'images'")
    assert not (tmp_path / "out.zarr").exists()


# -- only regular files inside the tree the user named are read ----------------------------------------------------------------
@pytest.mark.parametrize("how", ["link_out", "fifo"])
def test_convert_skips_and_says_a_source_file_it_must_not_read(
    tmp_path: Path, cohort: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    images = cohort / "he" / "1_0mpp" / "images"
    (original,) = images.glob("A.tif*")
    if how == "link_out":
        secret = tmp_path / "secret.tif"
        shutil.copy(original, secret)
        os.symlink(secret, images / "B.tif")
    else:
        os.mkfifo(images / "B.tif")
    tissues = pa.table({"tissue_id": ["A", "B"]})
    pq.write_table(tissues, cohort / "metadata" / "tissues.parquet")
    with caplog.at_level("WARNING", logger="spora_zarr"):
        assert convert(cohort, tmp_path / "d.zarr") == 0  # a FIFO read would hang here
    said = [r.getMessage() for r in caplog.records if "B.tif" in r.getMessage()]
    assert said and ("symbolic link out of" in said[0] if how == "link_out" else "not a regular file" in said[0]), said
    assert open_cohort(tmp_path / "d.zarr").tissues("he") == ["A"]


def test_convert_skips_and_says_a_linked_source_folder(
    tmp_path: Path, cohort: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """fsspec lists a link to a folder and does not descend into it: its images were left out without a word (here
    they are all the cohort has: nothing to convert, and the error counts the skip)."""
    images = cohort / "he" / "1_0mpp" / "images"
    outside = tmp_path / "elsewhere"
    images.rename(outside)
    os.symlink(outside, images)
    with caplog.at_level("WARNING", logger="spora_zarr"):
        code = convert(cohort, tmp_path / "d.zarr")
    said = [r.getMessage() for r in caplog.records]
    assert f"{images}: skipped: a symbolic link to a folder ({outside}); links to folders are not followed" in said, said
    assert code == 1
    one_error(capsys, "nothing to convert", "1 image file(s) skipped (listed above)")


def test_convert_refuses_a_table_linked_from_outside(tmp_path: Path, cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "cells.parquet"
    pq.write_table(pa.table({"cell_id": [1]}), outside)
    os.symlink(outside, cohort / "metadata" / "cells.parquet")
    assert convert(cohort, tmp_path / "d.zarr") == 1
    one_error(capsys, "cells.parquet", "symbolic link out of")


def test_add_image_refuses_a_fifo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "a.tif"
    os.mkfifo(fifo)
    assert add(tmp_path / "s.zarr", fifo, "he") == 1  # reading it would hang
    one_error(capsys, str(fifo), "not a regular file")


def test_a_linked_staging_folder_is_refused_and_nothing_behind_it_deleted(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, victim = tmp_path / "s.zarr", tmp_path / "victim"
    assert add(store, image, "imc", "A") == 0
    (victim / "sub").mkdir(parents=True)
    (victim / "sub/keep.txt").write_text("mine")
    (store / ".spora_tmp").symlink_to(victim)
    capsys.readouterr()
    assert add(store, image, "imc", "B") == 1
    one_error(capsys, str(store / ".spora_tmp"), "symbolic link")
    assert tree(victim) == {"sub", "sub/keep.txt"}


def test_recovery_never_moves_or_deletes_outside_the_store(tmp_path: Path, image: Path) -> None:
    """A left-over commit record naming ``../`` paths, or an area that is a link, is never followed out of the store."""
    folder = tmp_path / "deep"
    store, victim = folder / "s.zarr", tmp_path / "victim"
    assert add(store, image, "imc", "A") == 0
    (store / "planted").mkdir()
    (store / "planted/evil.txt").write_text("planted")
    area = store / ".spora_tmp/aaaa"
    area.mkdir(parents=True)
    (area / ".spora_commit").write_text(json.dumps({"groups": ["../../planted"], "files": ["../../planted/evil.txt"]}))
    (victim / "sub").mkdir(parents=True)
    (victim / "sub/keep.txt").write_text("mine")
    (store / ".spora_tmp/bbbb").symlink_to(victim)
    assert add(store, image, "imc", "B") == 0
    assert not (tmp_path / "planted").exists() and not (folder / "planted").exists()
    assert tree(victim) == {"sub", "sub/keep.txt"} and not (store / ".spora_tmp").exists()


def test_read_table_does_not_follow_a_link_out_of_the_store(tmp_path: Path, image: Path) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "he") == 0
    pq.write_table(pa.table({"secret": [1]}), tmp_path / "x.parquet")
    (store / "he/linked.parquet").symlink_to(tmp_path / "x.parquet")
    with pytest.raises(StoreError, match="symbolic link out of the store"):
        open_cohort(store).read_table("he/linked.parquet")


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_staging_entry_that_is_no_folder_is_one_line(tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    store = tmp_path / "s.zarr"
    assert add(store, image, "imc", "A") == 0
    (store / ".spora_tmp").write_text("x") if kind == "file" else os.mkfifo(store / ".spora_tmp")
    capsys.readouterr()
    assert add(store, image, "imc", "B") == 1
    one_error(capsys, str(store / ".spora_tmp"), "not a folder")
    assert not (store / "imc/images/B").exists()
