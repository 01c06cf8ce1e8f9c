"""Converting a slide larger than the memory budget keeps peak RSS within it, whatever the slide size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spora_zarr.testing.cohorts import write_large_multiplex_tiff

MiB = 2**20
BUDGET_MIB = 48
RUNTIME_OVERHEAD_MIB = 64

MEASURE = """
import resource, sys
import spora_zarr, tifffile, zarr, zarrs, numpy  # the imports every conversion pays for
from spora_zarr import ConvertOptions, WriteOptions, convert_cohort
from spora_zarr.runtime import configure_writer_process
configure_writer_process()  # as the CLI does
if sys.argv[1] != "-":
    report = convert_cohort(sys.argv[1], sys.argv[2], ConvertOptions(progress=False, write=WriteOptions(memory_budget={budget} * 2**20)))
    assert report.ok, report.summary()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(src: str, dest: str) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE.format(budget=BUDGET_MIB), src, dest], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def one_slide_cohort(root: Path, shape: tuple[int, int, int]) -> Path:
    (root / "metadata").mkdir(parents=True)
    pq.write_table(pa.table({"tissue_id": ["big"]}), root / "metadata/tissues.parquet")
    write_large_multiplex_tiff(root / "imc/1_0mpp/images/big.tif", shape, "uint16", page_per_channel=True, compression="zlib")
    return root


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_peak_memory_is_bounded_and_does_not_grow_with_the_slide(tmp_path: Path) -> None:
    small = one_slide_cohort(tmp_path / "small", (8, 2048, 2048))  # 64 MiB of pixels
    large = one_slide_cohort(tmp_path / "large", (8, 4096, 6144))  # 384 MiB of pixels: 8x the budget
    baseline = peak_rss("-", "-")
    small_peak = peak_rss(str(small), str(tmp_path / "small.zarr"))
    large_peak = peak_rss(str(large), str(tmp_path / "large.zarr"))
    # The budget bounds pixel buffers; thread pools and codec buffers add a fixed runtime overhead.
    assert large_peak - baseline < (BUDGET_MIB + RUNTIME_OVERHEAD_MIB) * MiB, (baseline / MiB, small_peak / MiB, large_peak / MiB)
    assert large_peak - small_peak < BUDGET_MIB * MiB / 2, (small_peak / MiB, large_peak / MiB)
