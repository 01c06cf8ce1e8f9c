"""Tiled inference: a model over the tiles of a tissue → a prediction source → the one writer.

``predict_tissue`` / ``predict_cohort`` (``spora-zarr predict``) in
:mod:`~spora_zarr.inference.predict`, the streaming source in
:mod:`~spora_zarr.inference.source`, model loading in
:mod:`~spora_zarr.inference.models`, and the PyTorch ``Dataset`` over patch
specs in :mod:`~spora_zarr.inference.dataset`. Importing this package loads
no torch; the modules do when used.
"""

from __future__ import annotations

from .._lazy import lazy_module_attributes

__all__ = ["PatchSpecsDataset", "PredictOptions", "PredictionSource", "load_model", "predict_cohort", "predict_tissue"]

__getattr__, __dir__ = lazy_module_attributes(
    __name__,
    {
        "PredictOptions": ".predict",
        "predict_cohort": ".predict",
        "predict_tissue": ".predict",
        "PredictionSource": ".source",
        "load_model": ".models",
        "PatchSpecsDataset": ".dataset",
    },
)
