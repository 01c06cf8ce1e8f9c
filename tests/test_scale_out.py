"""Parallel, distributed and object-store conversions give the same store as a serial one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from spora_zarr import ConvertOptions, WriteOptions, convert_cohort, open_cohort, validate_store
from spora_zarr.store.layout import MASK_KINDS
from spora_zarr.testing.cohorts import make_synthetic_cohort

from .conftest import read_source_chw, source_images

WRITE = WriteOptions(shard=224, chunk=112)


def arrays_of(location: str | Path, storage_options: dict | None = None) -> dict[str, object]:
    """Every level array (pixels and metadata) and group's attributes, keyed by path."""
    cohort = open_cohort(str(location), storage_options)
    found: dict[str, object] = {}
    groups = [(m, t) for m in cohort.modalities for t in cohort.tissues(m)] + [(k, t) for k in MASK_KINDS for t in cohort.mask_tissues(k)]
    for modality, tissue in groups:
        found[cohort.group_path(modality, tissue)] = cohort.group_metadata(modality, tissue).to_attributes()
        for res in cohort.resolutions(modality, tissue):
            array = cohort.open_array(modality, tissue, res)
            found[f"{cohort.group_path(modality, tissue)}/{res}"] = (array.metadata.to_dict(), array[...].tobytes())
    return found


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("scale")
    src = make_synthetic_cohort(root / "src", tissues=("A", "B"), he_shape=(333, 421), seed=7)
    report = convert_cohort(src, root / "serial.zarr", ConvertOptions(progress=False, write=WRITE))
    assert report.ok
    return src, arrays_of(root / "serial.zarr")


def test_worker_processes_equal_serial(serial: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    src, expected = serial
    report = convert_cohort(src, tmp_path / "w.zarr", ConvertOptions(progress=False, workers=2, write=WRITE))
    assert report.ok, report.summary()
    assert arrays_of(tmp_path / "w.zarr") == expected


@pytest.mark.timeout(300)
def test_running_distributed_scheduler_equals_serial(serial: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    from distributed import LocalCluster

    src, expected = serial
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "spora_zarr.cli",
                "convert",
                str(src),
                str(tmp_path / "d.zarr"),
                "--no-progress",
                "--scheduler",
                cluster.scheduler_address,
                "--shard",
                "224",
                "--chunk",
                "112",
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert len(cluster.workers) == 2
    assert arrays_of(tmp_path / "d.zarr") == expected


@pytest.mark.timeout(300)
def test_local_cluster_option_equals_serial(serial: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    src, expected = serial
    report = convert_cohort(src, tmp_path / "lc.zarr", ConvertOptions(progress=False, workers=2, scheduler="local", write=WRITE))
    assert report.ok, report.summary()
    assert arrays_of(tmp_path / "lc.zarr") == expected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1"
    )
    import s3fs

    s3fs.S3FileSystem(anon=False).mkdir("cohorts")
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_convert_into_s3_with_aws_environment(serial: tuple[Path, dict[str, object]], s3_server: str) -> None:
    src, expected = serial
    url = "s3://cohorts/env.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "spora_zarr.cli", "convert", str(src), url, "--no-progress", "--shard", "224", "--chunk", "112"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    assert arrays_of(url) == expected
    cohort = open_cohort(url)
    for modality, res, tissue, path in source_images(src):
        stored = cohort.open_array(modality, tissue, res)[...]
        source = read_source_chw(path)
        np.testing.assert_array_equal(stored, source[0] if modality in MASK_KINDS else source)
    group = zarr.open_group(f"{url}/imc/images/A", mode="r", storage_options={"anon": False})
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0_5mpp"
    assert validate_store(url) == []
    serial_tissues = open_cohort(src.parent / "serial.zarr").read_table("metadata/tissues.parquet")
    assert cohort.read_table("metadata/tissues.parquet").equals(serial_tissues)
    import s3fs

    assert not s3fs.S3FileSystem().exists("cohorts/env.zarr/.spora_tmp")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_s3_source_and_storage_options(serial: tuple[Path, dict[str, object]], s3_server: str, tmp_path: Path) -> None:
    import s3fs

    src, expected = serial
    s3fs.S3FileSystem().put(str(src), "cohorts/tiff-src", recursive=True)
    options = {"client_kwargs": {"endpoint_url": s3_server}, "key": "testing", "secret": "testing"}
    report = convert_cohort(
        "s3://cohorts/tiff-src",
        "s3://cohorts/opts.zarr",
        ConvertOptions(progress=False, write=WRITE),
        storage_options=options,
        source_storage_options=options,
    )
    assert report.ok, report.summary()
    assert arrays_of("s3://cohorts/opts.zarr", options) == expected
    again = convert_cohort(
        "s3://cohorts/tiff-src",
        "s3://cohorts/opts.zarr",
        ConvertOptions(progress=False, write=WRITE),
        storage_options=options,
        source_storage_options=options,
    )
    assert all(o.skipped for o in again.outcomes)
    overwritten = convert_cohort(
        "s3://cohorts/tiff-src",
        "s3://cohorts/opts.zarr",
        ConvertOptions(progress=False, overwrite=True, write=WRITE),
        storage_options=options,
        source_storage_options=options,
    )
    assert overwritten.ok and not any(o.skipped for o in overwritten.outcomes)
    assert arrays_of("s3://cohorts/opts.zarr", options) == expected
    assert json.loads(s3fs.S3FileSystem().cat_file("cohorts/opts.zarr/zarr.json"))["attributes"]["spora"]["modalities"]
