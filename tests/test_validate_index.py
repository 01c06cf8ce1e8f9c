"""The cohort metadata index (issue 30): every ``zarr.json`` read once, concurrently; the same answers and findings.

``validate`` and ``info`` work on the parsed documents of the index and run the
schema libraries once per distinct document shape; each damage below is found
as the libraries find it on the real group (checked here with the libraries
themselves, through zarr).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
import zarr

from spora_zarr import StoreError, open_cohort, validate_store
from spora_zarr.read.info import describe
from spora_zarr.store.arrays import read_array_metadata
from spora_zarr.store.location import Location
from spora_zarr.store.staging import Staging
from spora_zarr.store.summary import SUMMARY_NAME

from .conftest import convert_small_cohort

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tissues A, B, C (H&E, IMC, both masks) at one resolution (:func:`convert_small_cohort`); never modified."""
    return convert_small_cohort(tmp_path_factory.mktemp("index"))


@pytest.fixture
def store(converted: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted, tmp_path / "c.zarr"))


def _groups(store: str | Path) -> list[tuple[str, str]]:
    cohort = open_cohort(store)
    groups = [(m, t) for m in cohort.modalities for t in cohort.tissues(m)]
    return groups + [(k, t) for k in cohort.mask_kinds for t in cohort.mask_tissues(k)]


def test_the_index_answers_as_reading_each_file(converted: Path) -> None:
    cohort, location = open_cohort(converted), Location.parse(converted)
    staging = Staging(location)
    assert len(_groups(converted)) == 12
    for modality, tissue_id in _groups(converted):
        path = cohort.group_path(modality, tissue_id)
        assert cohort.group_attributes(modality, tissue_id) == staging.read_attributes(path)
        for name in cohort.resolutions(modality, tissue_id):
            indexed = cohort.level_metadata(modality, tissue_id, name)
            assert indexed.to_dict() == read_array_metadata(location, f"{path}/{name}").to_dict()
            array = zarr.open_array(str(converted / path / name), mode="r")
            layout = cohort.array_layout(f"{path}/{name}")  # from the JSON, without zarr's parser
            assert (layout.shape, layout.dtype, layout.chunks, layout.shards) == (array.shape, array.dtype, array.chunks, array.shards)
    for directory in ("he/images", "imc/images", "segmentations/cell_masks", "segmentations/tissue_masks"):
        names = sorted(n for n in os.listdir(converted / directory) if not n.startswith(".") and n != "zarr.json")
        assert cohort.listing(directory) == [n for n in names if staging.is_complete(f"{directory}/{n}")] == ["A", "B", "C"]


@pytest.mark.parametrize(
    ("data_type", "codecs"),
    [
        ("int16", [{"name": "bytes", "configuration": {"endian": "little"}}]),
        ("float64", [{"name": "sharding_indexed", "configuration": {"chunk_shape": [4, 5], "codecs": [{"name": "bytes"}]}}]),
        ({"name": "numpy.datetime64", "configuration": {"unit": "s", "scale_factor": 1}}, [{"name": "bytes"}]),  # zarr's
    ],
)
def test_an_array_layout_is_what_zarr_makes_of_the_document(tmp_path: Path, data_type: Any, codecs: list[dict[str, Any]]) -> None:
    from spora_zarr.store.arrays import array_layout, parse_array_metadata

    document = {
        "zarr_format": 3, "node_type": "array", "shape": [17, 30], "data_type": data_type, "fill_value": 0,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [8, 10]}},
        "chunk_key_encoding": {"name": "default"}, "codecs": codecs,
    }  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "a/zarr.json").write_text(json.dumps(document))
    array = zarr.open_array(str(tmp_path / "a"), mode="r")
    layout = array_layout(document, where="a")
    assert (layout.shape, layout.dtype, layout.chunks, layout.shards) == (array.shape, array.dtype, array.chunks, array.shards)
    assert parse_array_metadata(document, where="a").to_dict() == array.metadata.to_dict()


def test_documents_that_differ_in_shape_alone_are_each_what_zarr_makes_of_them() -> None:
    """The parser keeps one parse per document without its shape: the copies carry each document's own shape."""
    from zarr.core.metadata.v3 import ArrayV3Metadata

    from spora_zarr.errors import StoreError
    from spora_zarr.store.arrays import parse_array_metadata

    def document(shape: list[int], **changes: Any) -> dict[str, Any]:
        return {
            "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": "uint16", "fill_value": 7,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 64, 64]}},
            "chunk_key_encoding": {"name": "default"}, "attributes": {"note": "a"},
            "codecs": [{"name": "sharding_indexed", "configuration": {"chunk_shape": [2, 32, 32], "codecs": inner}}],
        } | changes  # fmt: skip

    inner = [{"name": "bytes"}, {"name": "blosc", "configuration": {"cname": "lz4"}}]

    parsed = [parse_array_metadata(document(shape), where="a") for shape in ([5, 300, 17], [5, 90, 130], [5, 300, 17])]
    for metadata, shape in zip(parsed, ([5, 300, 17], [5, 90, 130], [5, 300, 17]), strict=True):
        assert metadata == ArrayV3Metadata.from_dict(document(shape))
        assert metadata.shape == tuple(shape)
    parsed[0].attributes["note"] = "changed"  # zarr's metadata is frozen but for its attributes dict
    assert parsed[1].attributes == parsed[2].attributes == parse_array_metadata(document([5, 1, 1]), where="a").attributes == {"note": "a"}
    assert parse_array_metadata(document([5, 8, 8], fill_value=3), where="a").fill_value == 3  # anything else: parsed anew
    with pytest.raises(StoreError, match="a: chunk_shape"):
        parse_array_metadata(document([5, 8]), where="a")  # an axis short of the chunk grid: refused before any parse


def test_listing_leaves_out_unfinished_damaged_and_hidden_groups(store: Path) -> None:
    images = store / "imc/images"
    (images / "X").mkdir()
    (images / "X/zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"spora": {}}}))
    (images / "Y").mkdir()
    (images / "Y/zarr.json").write_bytes(b"\x00not json")
    (images / "Z").mkdir()  # no zarr.json at all
    shutil.copytree(images / "A", images / ".hidden")
    assert open_cohort(store).tissues("imc") == ["A", "B", "C"]
    assert validate_store(store) == []


def test_a_remote_store_reads_no_group_or_level_document_one_by_one(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = fsspec.filesystem("memory")
    fs.put(str(converted), "/index-check", recursive=True)
    single: list[str] = []
    read_document = Location.read_document

    def counted(self: Location, *parts: str, **kwargs: Any) -> dict[str, Any]:
        single.append("/".join(parts))
        return read_document(self, *parts, **kwargs)

    local = describe(converted).replace(str(converted), "STORE")
    monkeypatch.setattr(Location, "read_document", counted)
    try:
        assert validate_store("memory://index-check") == []
        assert describe("memory://index-check").replace("memory://index-check", "STORE") == local
        per_group = [p for p in single if p.count("/") >= 2 and not p.endswith(SUMMARY_NAME)]  # <dir>/images/<id>/zarr.json, deeper
        assert per_group == [], per_group
    finally:
        fs.rm("/index-check", recursive=True)


_FORKED_INFO = """
import os, signal, sys
from spora_zarr.read import info
forks, fork = [], os.fork
os.fork = lambda: forks.append(1) or fork()
info._PROCESS_GROUPS, info._PROCESSES = 2, 3  # 12 groups: parts of 4, the last two parts in forked processes
case = sys.argv[2] if len(sys.argv) > 2 else ""
if case == "sigchld-ignored":  # children reaped by the system: no exit code to wait for
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
elif case == "second-fork-fails":  # a limit on processes: the part not forked is done here
    def fork_once():
        if forks:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        forks.append(1)
        return fork()
    os.fork = fork_once
elif case == "child-killed":  # as by the OOM killer
    parent, lines = os.getpid(), info._group_lines
    def killed(*args):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return lines(*args)
    info._group_lines = killed
try:
    sys.stdout.write(info.describe(sys.argv[1]))
except Exception as exc:
    sys.stdout.write(f"{type(exc).__name__}: {exc}")
sys.stderr.write(f"forks {len(forks)}")
"""


def test_info_of_many_groups_in_forked_processes_is_what_one_process_says(store: Path) -> None:
    """info describes the groups of a large local cohort in a few forked processes (from a process of one thread, as
    the CLI's: a fresh one here): the same text, and the same first error, as one process."""
    from spora_zarr.store.layout import MASK_KINDS

    def forked() -> str:
        done = subprocess.run([sys.executable, "-c", _FORKED_INFO, str(store)], capture_output=True, text=True, check=True, cwd=REPO)
        assert done.stderr.strip().endswith("forks 2"), done.stderr
        return done.stdout

    assert forked() == describe(store)
    cohort = open_cohort(store)
    last = [kind for kind in MASK_KINDS if cohort.mask_tissues(kind)][-1]  # its last group is in the last part
    _edit_group(cohort.group_path(last, "C"), lambda ome: ome["multiscales"][0].update(axes="yx"))(store)
    with pytest.raises(StoreError) as alone:
        describe(store)
    assert f"{cohort.group_path(last, 'C')}" in str(alone.value) and "invalid NGFF 0.5 metadata" in str(alone.value)
    assert forked() == f"StoreError: {alone.value}"

    first = cohort.group_path(cohort.modalities[0], "A")  # in this process's own part: its error comes first
    _edit_group(first, lambda ome: ome["multiscales"][0].update(axes="yx"))(store)
    with pytest.raises(StoreError, match=first) as alone:
        describe(store)
    assert forked() == f"StoreError: {alone.value}"


@pytest.mark.parametrize("case", ["sigchld-ignored", "second-fork-fails", "child-killed"])
def test_info_forked_under_adverse_conditions_says_what_one_process_says_or_names_the_store(store: Path, case: str) -> None:
    """A caller that ignores ``SIGCHLD`` (its children reaped by the system) and a limit on processes (a fork refused)
    give the text of one process; a forked process killed gives a one-line error naming the store."""
    command = [sys.executable, "-c", _FORKED_INFO, str(store), case]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO, timeout=120)
    if case == "child-killed":
        assert done.stdout == f"StoreError: {store}: info: a process describing part of its groups was killed by signal 9 (Killed)"
    else:
        assert done.stdout == describe(store)
    assert done.stderr.strip().endswith("forks 1" if case == "second-fork-fails" else "forks 2"), done.stderr


def _edit_group(path: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        document = json.loads((store / path / "zarr.json").read_text())
        change(document["attributes"]["ome"])
        (store / path / "zarr.json").write_text(json.dumps(document))

    return damage


def _edit_level(path: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        document = json.loads((store / path / "zarr.json").read_text())
        change(document)
        (store / path / "zarr.json").write_text(json.dumps(document))

    return damage


def _window(ome: dict[str, Any]) -> None:
    ome["omero"]["channels"][1]["window"]["start"] = "low"


def _colour(ome: dict[str, Any]) -> None:
    ome["omero"]["channels"][0]["color"] = 255


def _rgba(ome: dict[str, Any]) -> None:
    ome["image-label"]["colors"][0]["rgba"] = [300, 0, 0, 255]


def _duplicate(ome: dict[str, Any]) -> None:
    ome["image-label"]["colors"].append(dict(ome["image-label"]["colors"][0]))


def _active(ome: dict[str, Any]) -> None:
    ome["omero"]["channels"][2]["active"] = "yes"


def _dimension_names(document: dict[str, Any]) -> None:
    document["dimension_names"] = ["c", "row", "col"]


DAMAGES = {  # group -> damage of tissue B only (A and C have the same document shape and stay clean)
    "omero window not a number": ("imc/images/B", _edit_group("imc/images/B", _window)),
    "omero colour not a string": ("imc/images/B", _edit_group("imc/images/B", _colour)),
    "omero active not a boolean": ("he/images/B", _edit_group("he/images/B", _active)),
    "level dimension names": ("imc/images/B", _edit_level("imc/images/B/1_0mpp", _dimension_names)),
}


def _library_findings(store: Path, group: str) -> list[str]:
    """What ome-zarr-models and ngff_zarr.validate say of the group, run on the zarr group itself."""
    import ngff_zarr
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    labels = group.startswith("segmentations/")
    node = zarr.open_group(str(store / group), mode="r")
    found = []
    try:
        (ImageLabel if labels else Image).from_zarr(node)
    except Exception as exc:  # noqa: BLE001
        found.append(f"{group}: ome-zarr-models: {str(exc).splitlines()[0]}")
    try:
        ngff_zarr.validate(node.attrs.asdict(), version="0.5", model="label" if labels else "image")
    except Exception as exc:  # noqa: BLE001
        found.append(f"{group}: ngff_zarr.validate: {str(exc).splitlines()[0]}")
    return found


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damage_of_one_tissue_is_found_as_the_libraries_find_it(store: Path, name: str) -> None:
    group, damage = DAMAGES[name]
    damage(store)
    expected = _library_findings(store, group)
    assert expected, f"{name}: the libraries find nothing (a weak case)"
    problems = validate_store(store)
    assert problems == expected, (name, problems)


@pytest.mark.parametrize("damage", [_rgba, _duplicate])
def test_a_bad_label_colour_makes_its_group_uncheckable_as_before(store: Path, damage: Callable[[dict[str, Any]], None]) -> None:
    _edit_group("segmentations/cell_masks/B", damage)(store)
    problems = validate_store(store)
    assert problems and all(p.startswith("segmentations/cell_masks/B: cannot be checked: ") for p in problems), problems
    assert all("invalid NGFF 0.5 metadata at image-label.colors" in p for p in problems), problems


def test_channel_count_and_missing_level_are_found_with_the_index(store: Path) -> None:
    channels = zarr.open_array(str(store / "imc/images/C/1_0mpp"), mode="r").shape[0]
    _edit_group("imc/images/C", lambda ome: ome["omero"]["channels"].pop())(store)
    shutil.rmtree(store / "segmentations/tissue_masks/A/1_0mpp")
    problems = validate_store(store)
    assert f"imc/images/C: omero metadata must list {channels} channels" in problems
    missing = [p for p in problems if p.startswith("segmentations/tissue_masks/A: cannot be checked: no array at")]
    assert len(missing) == 1 and missing[0].endswith("segmentations/tissue_masks/A/1_0mpp (no zarr.json)"), problems


def test_the_schema_libraries_run_once_per_document_shape(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ome_zarr_models.v05.image import Image

    from spora_zarr.read import schemas

    monkeypatch.setattr(schemas, "_CHECKED", {})
    calls: list[int] = []
    validate = Image.model_validate.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Image, "model_validate", classmethod(lambda cls, *a, **k: calls.append(1) or validate(cls, *a, **k)))
    assert validate_store(converted) == []
    cohort = open_cohort(converted)  # the shapes: one per modality and channel count, one per mask kind
    shapes = {(m, len(cohort.channel_names(m, t))) for m in cohort.modalities for t in cohort.tissues(m)} | set(cohort.mask_kinds)
    assert len(calls) == len(schemas._CHECKED) == len(shapes) < len(_groups(converted))


def test_info_and_validate_start_without_the_heavy_packages(converted: Path) -> None:
    script = (
        "import sys\nfrom spora_zarr.cli import main\n"
        "code = main([sys.argv[1], sys.argv[2]])\n"
        "heavy = {'dask', 'ngff_zarr', 'torch', 'napari', 'skimage', 'xarray', 'pandas', 'tensorstore'}\n"
        "print(code, sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for verb in ("info", "validate"):
        done = subprocess.run([sys.executable, "-c", script, verb, str(converted)], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "0 []", (verb, done.stdout[-500:])


def _label_attributes(colors: list[dict[str, object]]) -> dict[str, object]:
    axes = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    dataset = {"path": "1_0mpp", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]}
    multiscale = {"name": "A", "axes": axes, "datasets": [dataset]}
    return {"ome": {"version": "0.5", "multiscales": [multiscale], "image-label": {"version": "0.5", "colors": colors}}}


def test_many_label_colours_are_checked_without_a_model_each_and_kept_exactly() -> None:
    from spora_zarr.store.metadata import GroupMetadata

    colors: list[dict[str, object]] = [{"label-value": i, "rgba": [i % 256, 7, 9, 255]} for i in range(1, 300)]
    metadata = GroupMetadata.from_attributes(_label_attributes(colors), where="g")
    assert metadata.label_colors is not None and metadata.is_label
    assert metadata.to_attributes()["ome"]["image-label"]["colors"] == colors
    few = GroupMetadata.from_attributes(_label_attributes(colors[:3]), where="g")  # few: the model checks them
    assert few.label_colors is None and few.to_attributes()["ome"]["image-label"]["colors"] == colors[:3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rgba": [1, 2, 3, 300]}, r"colors\.5\.rgba\.3: Input should be less than or equal to 255"),
        ({"rgba": [1, 2, 3, True]}, r"colors\.5\.rgba\.3"),
        ({"label-value": 5}, "Duplicated label-value"),
        ({"label-value": "x"}, r"colors\.5\.label-value"),
    ],
)
def test_a_bad_colour_among_many_is_the_models_error(change: dict[str, object], message: str) -> None:
    from spora_zarr.errors import StoreError
    from spora_zarr.store.metadata import GroupMetadata

    colors: list[dict[str, object]] = [{"label-value": i, "rgba": [1, 2, 3, 255]} for i in range(1, 100)]
    colors[5] = {**colors[5], **change}
    with pytest.raises(StoreError, match=message):
        GroupMetadata.from_attributes(_label_attributes(colors), where="g")
