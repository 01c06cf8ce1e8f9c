"""Tiled inference: a model over the tiles of a tissue → a prediction source → the one writer.

``predict_tissue`` / ``predict_cohort`` (``spora-zarr predict``) in
:mod:`~spora_zarr.inference.predict`, the streaming source in
:mod:`~spora_zarr.inference.source`, model loading in
:mod:`~spora_zarr.inference.models`, and the PyTorch ``Dataset`` over patch
specs in :mod:`~spora_zarr.inference.dataset`. Importing this package loads
no torch; the modules do when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PatchSpecsDataset", "PredictOptions", "PredictionSource", "load_model", "predict_cohort", "predict_tissue"]

_HOMES = {
    "PredictOptions": "predict",
    "predict_cohort": "predict",
    "predict_tissue": "predict",
    "PredictionSource": "source",
    "load_model": "models",
    "PatchSpecsDataset": "dataset",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
