"""The compiled parts of spora_zarr: the direct read engine's inner loop (spora_zarr/read/engines/_window.c)
and the histogram counter of the standardization statistics (spora_zarr/standardize/_histogram.c).

Plain C shared libraries loaded through ctypes (no Python headers needed). They are declared here rather
than in pyproject.toml because setuptools still calls its pyproject ``ext-modules`` table experimental
and warns on every install. Without a compiler the install still succeeds: reads go to tensorstore
(docs/datasets.md) and histograms to numpy. Everything else about the package is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "spora_zarr.read.engines._window",
            sources=["spora_zarr/read/engines/_window.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
        Extension(
            "spora_zarr.standardize._histogram",
            sources=["spora_zarr/standardize/_histogram.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
            optional=True,
        ),
    ]
)
