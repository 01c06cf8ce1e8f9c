"""add-image on an existing cohort: resolutions merged into the pyramid, tables extended, root kept truthful."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from spora_zarr import ConvertOptions, InvalidInputError, add_image, convert_cohort, open_cohort, validate_store
from spora_zarr.cli import main
from spora_zarr.datasets import MultiplexImagingDataset
from spora_zarr.testing.cohorts import make_synthetic_cohort

from .conftest import read_source_chw


def _ome(path: Path, data: np.ndarray, mpp: float, names: list[str] | None = None, rgb: bool = False) -> Path:
    metadata: dict[str, object] = {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
    if names:
        metadata.update(axes="CYX", Channel={"Name": names})
    tifffile.imwrite(path, data, ome=True, photometric="rgb" if rgb else None, metadata=metadata)
    return path


@pytest.fixture
def converted(tmp_path: Path) -> tuple[Path, Path]:
    source = make_synthetic_cohort(tmp_path / "tiff", tissues=("A",), he_shape=(128, 160), ihc_markers=(), seed=6)
    store = tmp_path / "cohort.zarr"
    assert convert_cohort(source, store, ConvertOptions(progress=False)).ok
    return source, store


def test_a_new_resolution_is_merged_into_the_pyramid(converted: tuple[Path, Path], tmp_path: Path) -> None:
    source, store = converted
    before = open_cohort(store)
    assert before.group_metadata("he", "A").spora.source_levels == ("0_5mpp", "1_0mpp")
    fine = np.random.default_rng(1).integers(0, 255, (256, 320, 3), dtype=np.uint8)
    result = add_image(store, str(_ome(tmp_path / "he_0_25.ome.tif", fine, 0.25, rgb=True)), modality="he", tissue_id="A")
    assert not result.skipped
    cohort = open_cohort(store)
    metadata = cohort.group_metadata("he", "A")
    assert metadata.spora.source_levels == ("0_25mpp", "0_5mpp", "1_0mpp")
    np.testing.assert_array_equal(cohort.open_image("he", "A", 0.25).values, fine.transpose(2, 0, 1))
    for res in ("0_5mpp", "1_0mpp"):  # the source levels that masks and tile tables refer to stay pixel-exact
        np.testing.assert_array_equal(cohort.open_image("he", "A", res).values, read_source_chw(source / f"he/{res}/images/A.tif"))
    assert cohort.attributes.modalities["he"] == ("0_25mpp", "0_5mpp", "1_0mpp")
    assert validate_store(store) == []


def test_an_existing_resolution_is_kept_unless_overwritten(
    converted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, store = converted
    root_before = json.loads((store / "zarr.json").read_text())
    other = np.full((128, 160, 3), 7, np.uint8)
    path = _ome(tmp_path / "he_0_5.ome.tif", other, 0.5, rgb=True)
    assert main(["add-image", str(store), str(path), "--modality", "he", "--tissue", "A"]) == 0
    assert capsys.readouterr().out.startswith("kept existing")
    assert json.loads((store / "zarr.json").read_text()) == root_before
    add_image(store, str(path), modality="he", tissue_id="A", overwrite=True)
    cohort = open_cohort(store)
    np.testing.assert_array_equal(cohort.open_image("he", "A", 0.5).values, other.transpose(2, 0, 1))
    np.testing.assert_array_equal(cohort.open_image("he", "A", 1.0).values, read_source_chw(source / "he/1_0mpp/images/A.tif"))
    assert cohort.group_metadata("he", "A").spora.source_levels == ("0_5mpp", "1_0mpp")
    assert validate_store(store) == []


def test_a_multiplex_image_extends_the_channel_tables(converted: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = converted
    cohort = open_cohort(store)
    channels_before = cohort.read_table("imc/channels.parquet").to_pandas()
    image = np.random.default_rng(2).integers(0, 900, (2, 64, 80), dtype=np.uint16)
    names = [str(channels_before.channel_name[0]), "NEW1"]
    add_image(store, str(_ome(tmp_path / "b.ome.tif", image, 1.0, names)), modality="imc", tissue_id="B")
    cohort = open_cohort(store)
    channels = cohort.read_table("imc/channels.parquet").to_pandas()
    assert channels.iloc[: len(channels_before)].equals(channels_before)  # existing rows untouched
    assert channels.channel_name.tolist()[len(channels_before) :] == ["NEW1"]
    per_tissue = cohort.read_table("imc/channels_per_tissue.parquet").to_pandas()
    assert per_tissue[per_tissue.tissue_id == "B"].channel_name.tolist() == names
    assert "B" in cohort.read_table("metadata/tissues.parquet").column("tissue_id").to_pylist()
    imc = MultiplexImagingDataset("c", store, 1.0, 32, modality="imc", verbose=False)
    np.testing.assert_array_equal(imc.get_tissue("B", preprocess=False).image.numpy(), image)
    assert imc.channel_names("B") == names

    fresh = tmp_path / "fresh.zarr"
    add_image(fresh, str(tmp_path / "b.ome.tif"), modality="cycif", tissue_id="B")
    cycif = MultiplexImagingDataset("c", fresh, 1.0, 32, modality="cycif", verbose=False)
    np.testing.assert_array_equal(cycif.read_tile("B", 0, 0, preprocess=False).numpy(), image[:, :32, :32])
    with pytest.raises(InvalidInputError, match="share their channels"):
        add_image(fresh, str(_ome(tmp_path / "c.ome.tif", image, 2.0, ["X", "Y"])), modality="cycif", tissue_id="B")


def test_a_tissue_table_with_columns_of_its_own_keeps_them_and_a_column_of_another_type_is_one_line(
    converted: tuple[Path, Path], tmp_path: Path
) -> None:
    _, store = converted
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_path = store / "metadata/tissues.parquet"
    users = pa.table(
        {
            "tissue_id": pa.array(["A"], pa.string()).dictionary_encode(),
            "collected": pa.array([1_700_000_000_000], pa.timestamp("ms")),
            "age": pa.array([61.5], pa.float64()),
            "site": pa.array(["2024-01-01"], pa.large_string()),
        }
    )
    pq.write_table(users, table_path)
    image = np.random.default_rng(3).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    add_image(store, str(_ome(tmp_path / "he_b.ome.tif", image, 0.5, rgb=True)), modality="he", tissue_id="2024-02-02")
    tissues = pq.read_table(table_path)
    assert tissues.schema == users.schema  # the user's types (and the date-like id) kept: no column re-inferred
    assert tissues.slice(0, 1).to_pylist() == users.to_pylist()
    assert tissues.column("tissue_id").to_pylist() == ["A", "2024-02-02"]
    assert tissues.slice(1).drop_columns(["tissue_id"]).to_pylist() == [{"collected": None, "age": None, "site": None}]

    pq.write_table(pa.table({"tissue_id": pa.array([7], pa.int64())}), table_path)
    before = table_path.read_bytes()
    for tissue in ("C", "007"):  # never parsed into the column's kind: "007" would be the 7 already there
        with pytest.raises(
            InvalidInputError, match=rf"tissues.parquet: column 'tissue_id' holds int64, which cannot hold the new rows' '{tissue}'"
        ):
            add_image(store, str(_ome(tmp_path / "he_c.ome.tif", image, 0.5, rgb=True)), modality="he", tissue_id=tissue)
        assert table_path.read_bytes() == before
        assert tissue not in open_cohort(store).tissues("he")


def test_channel_tables_of_other_column_types_get_the_new_rows_as_their_types_say_or_a_one_line_error(
    converted: tuple[Path, Path], tmp_path: Path
) -> None:
    """A column the new rows leave null takes nulls of its own type (pandas writes an all-None column as type null);
    a value is converted only into a column of its kind that holds it exactly; a required column the rows leave out,
    or a value of another kind, is a one-line error naming the table, and nothing is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, store = converted
    channels_path = store / "imc/channels.parquet"
    listed = pq.read_table(channels_path).column("channel_name").to_pylist()
    image = np.random.default_rng(5).integers(0, 900, (2, 48, 40), dtype=np.uint16)

    def add(tissue: str, names: list[str]) -> None:
        add_image(store, str(_ome(tmp_path / f"{tissue}.ome.tif", image, 1.0, names)), modality="imc", tissue_id=tissue)

    users = pa.table(
        {
            "channel_name": pa.array(listed, pa.large_string()),
            "qc_pass": pa.array([True] * len(listed)),
            "uniprot_id": pa.nulls(len(listed)),  # pandas' type of an all-None column
            "aliases": pa.array([["x"]] * len(listed), pa.list_(pa.string())),
        }
    )
    pq.write_table(users, channels_path)
    add("N1", [*listed[:1], "NEW1"])
    table = pq.read_table(channels_path)
    assert table.schema == users.schema
    assert table.slice(len(listed)).to_pylist() == [{"channel_name": "NEW1", "qc_pass": True, "uniprot_id": None, "aliases": None}]

    refusals = {
        "qc_pass": (pa.array(["yes"] * len(listed)), r"column 'qc_pass' holds string, which cannot hold the new rows' True"),
        "channel_name": (
            pa.array(range(len(listed)), pa.int64()),
            r"column 'channel_name' holds int64, which cannot hold the new rows' .*'NEW2'",
        ),
    }
    for column, (values, message) in refusals.items():
        pq.write_table(users.set_column(users.schema.get_field_index(column), column, values), channels_path)
        before = channels_path.read_bytes()
        with pytest.raises(InvalidInputError, match=message):
            add("N2", [*listed[:1], "NEW2"])
        assert channels_path.read_bytes() == before and "N2" not in open_cohort(store).tissues("imc")

    required = pa.schema([pa.field("channel_name", pa.string()), pa.field("panel", pa.string(), nullable=False)])
    pq.write_table(pa.table({"channel_name": listed, "panel": ["a"] * len(listed)}, schema=required), channels_path)
    before = channels_path.read_bytes()
    with pytest.raises(InvalidInputError, match=r"channels.parquet: column 'panel' may not be null, and the new rows give it no value"):
        add("N3", [*listed[:1], "NEW3"])
    assert channels_path.read_bytes() == before and "N3" not in open_cohort(store).tissues("imc")


def test_add_image_makes_and_extends_its_tables_without_importing_pandas(tmp_path: Path) -> None:
    """pyarrow imports pandas (0.3 s a process) for any table made from Python objects, and pyarrow.compute (0.15 s)
    for a cast; add-image makes its tables (a new store) and extends them (the next tissue) without either."""
    image = np.random.default_rng(4).integers(0, 900, (2, 48, 40), dtype=np.uint16)
    first, second = _ome(tmp_path / "m.ome.tif", image, 1.0, ["CD3", "CD8"]), _ome(tmp_path / "n.ome.tif", image, 1.0, ["CD3", "PD1"])
    store = str(tmp_path / "s.zarr")
    script = (
        "import sys; from spora_zarr.cli import main; "
        f"assert main(['add-image', {store!r}, {str(first)!r}, '--modality', 'imc', '--tissue', 'T']) == 0; "
        f"assert main(['add-image', {store!r}, {str(second)!r}, '--modality', 'imc', '--tissue', 'U']) == 0; "
        "print(sorted(m for m in ('pandas', 'pyarrow', 'pyarrow.compute') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "['pyarrow']"
    cohort = open_cohort(store)
    assert cohort.read_table("imc/channels.parquet").to_pylist() == [
        {"channel_name": name, "qc_pass": True, "uniprot_id": None} for name in ("CD3", "CD8", "PD1")
    ]
    assert cohort.read_table("imc/channels_per_tissue.parquet").to_pylist() == [
        {"tissue_id": tissue, "channel_name": name} for tissue, name in (("T", "CD3"), ("T", "CD8"), ("U", "CD3"), ("U", "PD1"))
    ]
    assert cohort.read_table("metadata/tissues.parquet").column("tissue_id").to_pylist() == ["T", "U"]


def test_validate_catches_root_attributes_that_disagree_with_the_groups(converted: tuple[Path, Path]) -> None:
    _, store = converted
    document = json.loads((store / "zarr.json").read_text())
    document["attributes"]["spora"]["modalities"]["he"] = ["0_25mpp", "0_5mpp"]
    del document["attributes"]["spora"]["modalities"]["imc"]
    (store / "zarr.json").write_text(json.dumps(document))
    problems = validate_store(store)
    assert any("modality imc has images on disk but is not listed" in p for p in problems), problems
    assert any("he lists level 0_25mpp, but no tissue of he has it" in p for p in problems), problems
    assert any("source level 1_0mpp, which is not listed for he" in p for p in problems), problems
