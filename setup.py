"""The compiled part of spora_zarr: the direct read engine's inner loop (spora_zarr/read/engines/_window.c).

A plain C shared library loaded through ctypes (no Python headers needed). It is declared here rather
than in pyproject.toml because setuptools still calls its pyproject ``ext-modules`` table experimental
and warns on every install. Without a compiler the install still succeeds and reads go to tensorstore
(docs/datasets.md). Everything else about the package is in pyproject.toml.
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
        )
    ]
)
