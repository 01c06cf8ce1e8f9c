"""Directory summaries (issue 30): one small document per directory of groups, kept by the writers, trusted only where it holds.

A reader of a summarized directory knows the complete groups, their levels and
layouts without reading a group's documents; a group the summary does not vouch
for (not in it, or locally with another inode or change time) is read from its documents; a
promotion removes the summary of its directory and the writer's lock release
puts it back; ``validate`` reads every document and names a summary that lies.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from spora_zarr import add_image, open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.datasets import MultiplexImagingDataset
from spora_zarr.read.info import describe
from spora_zarr.sources import ArraySource
from spora_zarr.store.location import Location
from spora_zarr.store.summary import SUMMARY_NAME, group_directories, read_summary, write_summaries
from spora_zarr.torch import TileDataset
from spora_zarr.write.writer import write_labels

from .conftest import convert_small_cohort


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tissues A, B, C (C with 4 channels, the others 5), both masks, one resolution, a tile table; never modified."""
    store = convert_small_cohort(tmp_path_factory.mktemp("summary"))
    assert main(["tile", str(store), "--resolution", "1", "--tile-size", "32", "--strategy", "grid"]) == 0
    return store


@pytest.fixture
def store(converted: Path, tmp_path: Path) -> Path:
    """A copy of the store: new inodes and change times, so its summaries are not whole until a writer rewrites them (here, by hand)."""
    copy = Path(shutil.copytree(converted, tmp_path / "c.zarr"))
    before = open_cohort(copy)
    assert before.tissues("imc") == ["A", "B", "C"] and before._index._vouched["imc/images"] == {}
    write_summaries(Location.parse(copy))
    after = open_cohort(copy)
    assert after.tissues("imc") == ["A", "B", "C"] and sorted(after._index._vouched["imc/images"]) == ["A", "B", "C"]
    return copy


def _stamp(path: Path) -> tuple[int, int]:
    status = os.lstat(path)
    return status.st_ino, status.st_ctime_ns


def _answers(store: Path | str, *, summaries: bool) -> dict[str, object]:
    cohort = open_cohort(store, summaries=summaries)
    found: dict[str, object] = {}
    for name in [*cohort.modalities, *cohort.known_mask_kinds]:
        for tissue in cohort.tissues(name):
            for level in cohort.listed_levels(name, tissue):
                layout = cohort.array_layout(f"{cohort.group_path(name, tissue)}/{level}")
                found[f"{name}/{tissue}/{level}"] = (layout.shape, layout.dtype, layout.chunks, layout.shards)
    return found


def test_a_conversion_leaves_summaries_that_answer_as_the_documents(converted: Path) -> None:
    location = Location.parse(converted)
    directories = group_directories(location)
    assert set(directories) >= {"he/images", "imc/images", "segmentations/tissue_masks", "segmentations/cell_masks"}
    for directory in directories:
        summary = read_summary(location, directory)
        assert summary is not None and sorted(summary.groups) == ["A", "B", "C"] and summary.others == {}, directory
        assert all(group.stamp == _stamp(converted / directory / name) for name, group in summary.groups.items())
    assert _answers(converted, summaries=True) == _answers(converted, summaries=False)
    assert _answers(converted, summaries=True)["imc/C/1_0mpp"][0] == (4, 90, 130)  # type: ignore[index]
    assert validate_store(converted) == []


def test_construction_over_a_summarized_cohort_reads_no_group_or_level_document(converted: Path) -> None:
    dataset = MultiplexImagingDataset("c", converted, 1.0, 32, verbose=False, tiling_strategy="grid")
    tiles = TileDataset(dataset, preprocess=False)
    assert len(tiles) > 0 and tiles.masks == ("tissue_masks", "cell_masks")
    assert tiles.dtypes == {"imc": np.dtype(np.uint16)}
    index = dataset.cohort._index
    assert index._groups == {} and index._arrays == {}  # every answer came from the summaries
    item = tiles[0]  # the first read parses the tissue's own documents
    assert item["imc"].shape[-2:] == (32, 32) and index._groups != {}


def test_info_reads_each_groups_document_once_and_the_level_layouts_from_the_summaries(store: Path) -> None:
    location = Location.parse(store)
    reads: list[int] = []
    read_documents = Location.read_documents

    def counted(self: Location, paths: list[str]) -> object:
        reads.append(len(paths))
        return read_documents(self, paths)

    try:
        Location.read_documents = counted  # type: ignore[assignment,method-assign]
        text = describe(location)
    finally:
        Location.read_documents = read_documents  # type: ignore[method-assign]
    assert "    1_0mpp: shape (4, 90, 130) uint16" in text and "channels " in text
    assert sum(reads) == 4 * 3 and max(reads) == 3  # each directory's three group documents in one pass; no level document
    for directory in group_directories(location):
        (store / directory / SUMMARY_NAME).unlink()
    assert describe(location) == text  # as the documents say


def test_a_promotion_removes_its_directorys_summary_and_the_writer_puts_it_back(store: Path, tmp_path: Path) -> None:
    location = Location.parse(store)
    labels = np.arange(90 * 130, dtype=np.uint32).reshape(90, 130) % 7
    write_labels(store, "segmentations/cell_masks/A", {1.0: ArraySource(labels)}, overwrite=True)  # no verb: no lock, no rebuild
    assert not (store / "segmentations/cell_masks" / SUMMARY_NAME).exists()
    assert read_summary(location, "imc/images") is not None  # other directories keep theirs
    assert open_cohort(store).mask_tissues("cell_masks") == ["A", "B", "C"]  # read from the documents

    image = tmp_path / "d.tif"
    tifffile.imwrite(image, np.arange(5 * 40 * 50, dtype=np.uint16).reshape(5, 40, 50))
    add_image(store, str(image), modality="imc", tissue_id="D", mpp=1.0)
    for directory in ("imc/images", "segmentations/cell_masks"):
        summary = read_summary(location, directory)
        assert summary is not None and sorted(summary.groups) == (["A", "B", "C", "D"] if directory == "imc/images" else ["A", "B", "C"])
    assert _answers(store, summaries=True) == _answers(store, summaries=False)
    assert validate_store(store) == []


def test_a_writer_rereads_only_the_groups_its_run_changed(store: Path, tmp_path: Path) -> None:
    location = Location.parse(store)
    read: list[str] = []
    read_documents = Location.read_documents

    def recorded(self: Location, paths: list[str]) -> object:
        read.extend(paths)
        return read_documents(self, paths)

    image = tmp_path / "b.tif"
    tifffile.imwrite(image, (np.arange(5 * 90 * 130) % 251).astype(np.uint8).reshape(5, 90, 130))  # a new dtype, the masks' shape
    names = open_cohort(store).channel_names("imc", "B")
    try:
        Location.read_documents = recorded  # type: ignore[assignment,method-assign]
        add_image(store, str(image), modality="imc", tissue_id="B", mpp=1.0, channel_names=names, overwrite=True)
    finally:
        Location.read_documents = read_documents  # type: ignore[method-assign]
    assert "imc/images/B/zarr.json" in read and "imc/images/B/1_0mpp/zarr.json" in read
    assert not [path for path in read if path.startswith(("imc/images/A/", "imc/images/C/"))], read  # kept from the summary
    summary = read_summary(location, "imc/images")
    assert summary is not None and sorted(summary.groups) == ["A", "B", "C"]
    assert summary.groups["B"].layout("1_0mpp").dtype == np.uint8 and summary.groups["C"].layout("1_0mpp").dtype == np.uint16
    assert summary.groups["B"].stamp == _stamp(store / "imc/images/B")
    assert _answers(store, summaries=True) == _answers(store, summaries=False)
    assert validate_store(store) == []


def test_groups_the_summary_does_not_vouch_for_are_read_from_their_documents(store: Path) -> None:
    images = store / "imc/images"
    shutil.copytree(images / "A", images / "Z")  # added by hand: not in the summary
    shutil.rmtree(images / "B")  # removed by hand: in the summary, not listed
    shutil.rmtree(images / "C")
    time.sleep(0.01)  # past the file system's change-time tick (4 ms on ext4)
    shutil.copytree(images / "A", images / "C")  # replaced by hand: maybe the same inode, a later change time
    cohort = open_cohort(store)
    assert cohort.tissues("imc") == ["A", "C", "Z"]
    assert cohort.array_layout("imc/images/C/1_0mpp").shape == (5, 90, 130)  # the document's, not the summary's 4 channels
    assert _answers(store, summaries=True) == _answers(store, summaries=False)


def test_a_damaged_summary_is_ignored_with_a_warning_and_validate_names_it(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    summary = store / "imc/images" / SUMMARY_NAME
    document = json.loads(summary.read_text())
    document["groups"]["A"]["levels"] = {"../../escape": document["groups"]["A"]["levels"]["1_0mpp"]}
    summary.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="spora_zarr"):
        assert open_cohort(store).listed_levels("imc", "A") == ["1_0mpp"]
    assert any("ignoring a damaged directory summary" in r.getMessage() and "level path" in r.getMessage() for r in caplog.records)
    problems = validate_store(store)
    assert len(problems) == 1 and SUMMARY_NAME in problems[0] and "readers ignore it" in problems[0], problems


def test_validate_names_a_summary_that_lies(store: Path) -> None:
    summary = store / "segmentations/tissue_masks" / SUMMARY_NAME
    document = json.loads(summary.read_text())
    document["groups"]["B"]["levels"]["1_0mpp"]["dtype"] = "float64"  # the stamp still matches: readers trust it
    summary.write_text(json.dumps(document))
    assert open_cohort(store).array_layout("segmentations/tissue_masks/B/1_0mpp").dtype == np.float64
    problems = validate_store(store)
    assert problems == [
        f"segmentations/tissue_masks/B: the directory summary's levels differ from its documents' "
        f"(delete {Location.parse(store).join('segmentations/tissue_masks', SUMMARY_NAME)}: the next writer of the store rebuilds it)"
    ]
    summary.unlink()
    assert validate_store(store) == []
    assert main(["tile", str(store), "--resolution", "1", "--tile-size", "16", "--strategy", "grid"]) == 0  # a writer
    assert read_summary(Location.parse(store), "segmentations/tissue_masks") is not None


def test_an_object_store_keeps_summaries_without_stamps(tmp_path: Path) -> None:
    url = f"memory://summary-{os.getpid()}/cohort.zarr"
    image = tmp_path / "b.tif"
    tifffile.imwrite(image, np.arange(2 * 64 * 80, dtype=np.uint16).reshape(2, 64, 80))
    for tissue in ("A", "B"):
        assert main(["add-image", url, str(image), "--modality", "imc", "--tissue", tissue, "--mpp", "1"]) == 0
    summary = read_summary(Location.parse(url), "imc/images")
    assert summary is not None and sorted(summary.groups) == ["A", "B"] and {g.stamp for g in summary.groups.values()} == {None}
    cohort = open_cohort(url)
    assert cohort.tissues("imc") == ["A", "B"] and cohort._index._groups == {}
    assert _answers(url, summaries=True) == _answers(url, summaries=False)


def test_a_damaged_layout_in_a_summary_is_read_from_the_document_with_a_warning(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    summary = store / "imc/images" / SUMMARY_NAME
    document = json.loads(summary.read_text())
    document["groups"]["B"]["levels"]["1_0mpp"]["dtype"] = "complex1024"  # checked when first used, not when read
    summary.write_text(json.dumps(document))
    cohort = open_cohort(store)
    with caplog.at_level(logging.WARNING, logger="spora_zarr"):
        assert cohort.level_dtype("imc", "B", 1.0) == np.uint16
        assert cohort.array_layout("imc/images/B/1_0mpp").shape == (5, 90, 130)
    assert any("damaged directory summary entry" in r.getMessage() and "complex1024" in r.getMessage() for r in caplog.records)
    assert cohort._index._arrays != {}  # the level's own document
    assert len(validate_store(store)) == 1


def test_a_summary_of_the_first_format_is_read_as_none_and_rewritten(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    summary = store / "imc/images" / SUMMARY_NAME
    document = json.loads(summary.read_text())
    summary.write_text(json.dumps({"spora_summary": 1, "groups": {}, "others": {}}))  # inodes alone: no longer trusted
    with caplog.at_level(logging.WARNING, logger="spora_zarr"):
        cohort = open_cohort(store)
        assert cohort.tissues("imc") == ["A", "B", "C"] and cohort._index._vouched["imc/images"] == {}
    assert not caplog.records
    assert validate_store(store) == []
    assert main(["tile", str(store), "--resolution", "1", "--tile-size", "16", "--strategy", "grid"]) == 0  # a writer
    assert json.loads(summary.read_text()) == document
