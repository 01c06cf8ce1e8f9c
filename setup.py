"""The compiled parts of spora_zarr: the direct read engine's inner loop (spora_zarr/read/engines/_window.c)
and the kernels of standardization, its histogram counter and transforms (spora_zarr/standardize/_kernels.c).

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
            "spora_zarr.standardize._kernels",
            sources=["spora_zarr/standardize/_kernels.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
            optional=True,
        ),
    ]
)
