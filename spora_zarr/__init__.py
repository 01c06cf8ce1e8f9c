"""spora_zarr: OME-Zarr (NGFF 0.5, zarr v3) cohort stores for spora tissue imaging cohorts.

Every command of ``spora-zarr`` is one library function here:

========================  ==========================================================
``convert``               :func:`convert_cohort` (:class:`ConvertOptions`, :class:`ConversionReport`)
``add-image``             :func:`add_image`
``info``                  :func:`describe`
``validate``              :func:`validate_store`
``tile``                  :func:`tile_cohort` (:class:`TilingOptions`, :class:`TilingReport`)
``standardize``           :func:`compute_statistics` (:class:`StandardizeReport`)
``predict``               :func:`predict_cohort` (:class:`PredictOptions`; one tissue: :class:`PredictTissueOptions`)
``stitch``                :func:`stitch` (:class:`StitchOptions`, :class:`StitchResult`)
``view``                  the napari plugin (:mod:`spora_zarr.napari`)
========================  ==========================================================

with the runner's :class:`RunOptions` and :class:`RunReport` shared by the
cohort-wide ones, the reading side (:func:`open_cohort`, :class:`Cohort`), and the
resolution value every verb takes (:class:`Resolution`, :func:`parse_resolution`).

Importing the package is cheap: the public names load their modules on first
use (:mod:`spora_zarr._lazy`), and none of them imports torch, tensorstore,
zarrs, napari or dask.distributed (``docs/architecture.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_module_attributes
from .errors import InvalidInputError, NotFoundError, SporaZarrError, StoreError

if TYPE_CHECKING:
    from .access.resolution import Resolution, parse_resolution
    from .convert import ConversionReport, ConvertOptions, convert_cohort, scan_cohort
    from .convert.add_image import add_image
    from .inference.predict import PredictOptions, PredictTissueOptions, predict_cohort
    from .read import Cohort, limit_codec_threads, open_cohort
    from .read.info import describe
    from .read.validate import validate_store
    from .run import RunOptions, RunReport
    from .standardize.statistics import StandardizeReport, compute_statistics
    from .stitching.stitch import StitchOptions, StitchResult, stitch
    from .store import resolution_name, resolution_value, validate_tissue_id
    from .tiling.cohort import TilingOptions, TilingReport, tile_cohort
    from .write import WriteOptions, write_image, write_labels

_HOMES = {
    "Resolution": ".access.resolution",
    "parse_resolution": ".access.resolution",
    "Cohort": ".read.cohort",
    "open_cohort": ".read.cohort",
    "limit_codec_threads": ".read.levels",
    "describe": ".read.info",
    "validate_store": ".read.validate",
    "ConversionReport": ".convert",
    "ConvertOptions": ".convert",
    "add_image": ".convert",
    "convert_cohort": ".convert",
    "scan_cohort": ".convert",
    "TilingOptions": ".tiling.cohort",
    "TilingReport": ".tiling.cohort",
    "tile_cohort": ".tiling.cohort",
    "StandardizeReport": ".standardize.statistics",
    "compute_statistics": ".standardize.statistics",
    "PredictOptions": ".inference.predict",
    "PredictTissueOptions": ".inference.predict",
    "predict_cohort": ".inference.predict",
    "StitchOptions": ".stitching.stitch",
    "StitchResult": ".stitching.stitch",
    "stitch": ".stitching.stitch",
    "RunOptions": ".run.runner",
    "RunReport": ".run.runner",
    "resolution_name": ".store.layout",
    "resolution_value": ".store.layout",
    "validate_tissue_id": ".store.layout",
    "WriteOptions": ".write.writer",
    "write_image": ".write.writer",
    "write_labels": ".write.writer",
}

__all__ = [
    "Cohort",
    "ConversionReport",
    "ConvertOptions",
    "InvalidInputError",
    "NotFoundError",
    "PredictOptions",
    "PredictTissueOptions",
    "Resolution",
    "RunOptions",
    "RunReport",
    "SporaZarrError",
    "StandardizeReport",
    "StitchOptions",
    "StitchResult",
    "StoreError",
    "TilingOptions",
    "TilingReport",
    "WriteOptions",
    "add_image",
    "compute_statistics",
    "convert_cohort",
    "describe",
    "limit_codec_threads",
    "open_cohort",
    "parse_resolution",
    "predict_cohort",
    "resolution_name",
    "resolution_value",
    "scan_cohort",
    "stitch",
    "tile_cohort",
    "validate_store",
    "validate_tissue_id",
    "write_image",
    "write_labels",
]

__getattr__, __dir__ = lazy_module_attributes(__name__, _HOMES)
