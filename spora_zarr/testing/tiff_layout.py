"""Writers and readers of the spora TIFF layout (the converter's source side), for tests, benchmarks and the demo.

The layout::

    metadata/tissues.parquet                       tissue_id, patient_id, ...
    metadata/cells.parquet                         tissue_id, cell_id, x, y, area
    he/<res>/images/<tissue_id>.tif                (H, W, 3) uint8
    ihc/ihc_<MARKER>/<res>/images/<tissue_id>.tif  (H, W, 3) uint8
    <mx>/<res>/images/<tissue_id>.tif              (C, H, W) uint16 or float32
    <mx>/<res>/<tissue_id>.zarr                    legacy (H, W, C) zarr v3 array
    <mx>/channels.parquet                          channel_name, qc_pass, uniprot_id
    <mx>/channels_per_tissue.parquet               tissue_id, channel_name (page order)
    <mx>/<res>/standardization/<spec>/stats.parquet  tissue_id, channel_name, quantile, upper, mean, std
    segmentations/<res>/tissue_masks/<tissue_id>.tif   (H, W) uint8 0/1
    segmentations/<res>/cell_masks/<tissue_id>.tif     (H, W) uint32 labels
    tiling/<res>/default/<size>_tile_coordinates.parquet   tissue_id, tile_id, row, col
    tiling/<res>/default/<size>_tile_stats.parquet         tissue_id, tile_id, tissue_fraction, n_cells

where ``<mx>`` is a multiplex modality (``imc``, ``cycif``). Every image of
a tissue at one resolution has the same (H, W) as its masks at that
resolution. A coarser resolution is the finest one resampled: its shape is

Multiplex TIFFs come in three flavours (see :func:`write_multiplex_tiff`):
one page per channel, each written by its own ``TiffWriter.write`` call
(tifffile reads these back as C separate 2-D series, and
``tifffile.imread(path)`` returns only the first channel); one (C, H, W)
series of C pages; or one planar page holding C samples. The table and
image helpers need scikit-image and scipy (the ``demo`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile
from numpy.typing import DTypeLike

from ..access.resolution import parse_resolution
from ..standardize.statistics import statistics_schema
from ..tiling.tilers import get_grid_tile

DEFAULT_TILE = (256, 256)


class TiffWriteArgs(TypedDict, total=False):
    """Keyword arguments that the ``tifffile`` writes of one image share."""

    dtype: np.dtype
    tile: tuple[int, int] | None
    compression: str | None
    compressionargs: dict[str, Any] | None
    predictor: bool | None
    photometric: str


# ---------------------------------------------------------------------------
# TIFF / zarr writers and readers
# ---------------------------------------------------------------------------


def tile_arg(tiled: bool | tuple[int, int]) -> tuple[int, int] | None:
    if tiled is True:
        return DEFAULT_TILE
    if not tiled:
        return None
    tile = (int(tiled[0]), int(tiled[1]))
    if tile[0] % 16 or tile[1] % 16 or min(tile) <= 0:
        raise ValueError(f"TIFF tile dimensions must be positive multiples of 16, got {tiled!r}")
    return tile


def compression_arg(compression: str | None) -> str | None:
    if compression is None or str(compression).lower() in ("", "none", "raw"):
        return None
    name = str(compression).lower()
    if name not in ("zlib", "deflate", "lzw", "zstd", "lzma", "packbits"):
        raise ValueError(f"unsupported TIFF compression {compression!r}: use zlib, lzw, zstd, lzma, packbits or None")
    return name


def level_arg(compression: str | None, level: int | None) -> dict[str, Any] | None:
    if level is None or compression_arg(compression) is None:
        return None
    return {"level": int(level)}


def prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_multiplex_tiff(
    path: str | Path,
    array_chw: np.ndarray,
    *,
    page_per_channel: bool = True,
    tiled: bool | tuple[int, int] = True,
    compression: str | None = "zlib",
    predictor: bool = False,
    planar: bool = False,
    level: int | None = None,
) -> Path:
    """Write a (C, H, W) multiplex image as a TIFF.

    Parameters
    ----------
    path
        Output file; parent directories are created.
    array_chw
        Image, channels first.
    page_per_channel
        One ``TiffWriter.write`` call per channel: tifffile reads the file
        back as C series of shape (H, W). Otherwise one (C, H, W) series of
        C minisblack pages.
    tiled
        ``True`` for 256 x 256 tiles, a (th, tw) tuple, or ``False`` for strips.
    compression
        ``"zlib"``, ``"lzw"``, ``"zstd"``, ... or ``None``.
    predictor
        Horizontal differencing (smaller files for smooth images).
    planar
        With ``page_per_channel=False`` and C > 1: one page holding C
        samples in separate planes (the layout tifffile once chose by
        default for 3- or 4-channel stacks) instead of C pages.
    level
        Compression level (codec default if ``None``).

    Returns
    -------
    Path
        ``path``.
    """
    array_chw = np.asarray(array_chw)
    if array_chw.ndim != 3:
        raise ValueError(f"multiplex image must be (C, H, W), got shape {array_chw.shape}")
    path = prepare(path)
    kwargs = TiffWriteArgs(
        tile=tile_arg(tiled),
        compression=compression_arg(compression),
        compressionargs=level_arg(compression, level),
        predictor=bool(predictor) or None,
        photometric="minisblack",
    )
    if page_per_channel:
        with tifffile.TiffWriter(path) as tw:
            for plane in array_chw:
                tw.write(plane, **kwargs)
    elif planar and array_chw.shape[0] > 1:
        tifffile.imwrite(path, array_chw, planarconfig="separate", metadata={"axes": "CYX"}, **kwargs)
    else:
        tifffile.imwrite(path, array_chw, metadata={"axes": "CYX"}, **kwargs)
    return path


def write_rgb_tiff(
    path: str | Path,
    array_hwc: np.ndarray,
    *,
    tiled: bool | tuple[int, int] = True,
    compression: str | None = "zlib",
    predictor: bool = False,
    level: int | None = None,
) -> Path:
    """Write an (H, W, 3) uint8 RGB image (H&E, IHC) as a TIFF; return ``path``.

    ``tiled``, ``compression``, ``predictor`` and ``level`` are as in
    :func:`write_multiplex_tiff`.
    """
    array_hwc = np.asarray(array_hwc)
    if array_hwc.ndim != 3 or array_hwc.shape[-1] != 3:
        raise ValueError(f"RGB image must be (H, W, 3), got shape {array_hwc.shape}")
    path = prepare(path)
    tifffile.imwrite(
        path,
        array_hwc,
        photometric="rgb",
        tile=tile_arg(tiled),
        compression=compression_arg(compression),
        compressionargs=level_arg(compression, level),
        predictor=bool(predictor) or None,
    )
    return path


def write_mask_tiff(
    path: str | Path,
    array_hw: np.ndarray,
    *,
    tiled: bool | tuple[int, int] = False,
    compression: str | None = "zlib",
) -> Path:
    """Write an (H, W) mask (uint8 0/1 tissue mask, uint32 cell labels) as a TIFF; return ``path``."""
    array_hw = np.asarray(array_hw)
    if array_hw.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {array_hw.shape}")
    if array_hw.dtype == bool:
        array_hw = array_hw.astype(np.uint8)
    path = prepare(path)
    tifffile.imwrite(
        path,
        array_hw,
        photometric="minisblack",
        tile=tile_arg(tiled),
        compression=compression_arg(compression),
    )
    return path


def write_legacy_zarr(path: str | Path, array_hwc: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> Path:
    """Write an (H, W, C) image as a plain zarr v3 array (the old spora tissue format).

    Parameters
    ----------
    path
        Output ``<tissue_id>.zarr`` directory; replaced if present.
    array_hwc
        Image, channels last.
    chunks
        Chunk shape; default (256, 256, C) clipped to the image.

    Returns
    -------
    Path
        ``path``.
    """
    import zarr

    array_hwc = np.asarray(array_hwc)
    if array_hwc.ndim != 3:
        raise ValueError(f"legacy zarr tissue must be (H, W, C), got shape {array_hwc.shape}")
    path = prepare(path)
    if chunks is None:
        h, w, c = array_hwc.shape
        chunks = (min(256, h), min(256, w), c)
    arr = zarr.create_array(str(path), shape=array_hwc.shape, dtype=array_hwc.dtype, chunks=chunks, zarr_format=3, overwrite=True)
    arr[...] = array_hwc
    return path


def read_multiplex_tiff(path: str | Path) -> np.ndarray:
    """Read a multiplex TIFF of any flavour as (C, H, W).

    Page-per-channel files are C series of one page each, and
    ``tifffile.imread(path)`` returns only the first of them, so this
    stacks the pages whenever there is more than one series.
    """
    with tifffile.TiffFile(path) as tf:
        if len(tf.series) > 1:
            return np.stack([page.asarray() for page in tf.pages])
        data = tf.series[0].asarray()
    return data[np.newaxis] if data.ndim == 2 else data


def tiff_channel_count(path: str | Path) -> int:
    """Number of channels of a multiplex TIFF written by :func:`write_multiplex_tiff`."""
    with tifffile.TiffFile(path) as tf:
        if len(tf.series) > 1:
            return len(tf.pages)
        shape = tf.series[0].shape
    return 1 if len(shape) == 2 else int(shape[0])


# ---------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------


def scaled_shape(shape: Sequence[int], from_mpp: float | str, to_mpp: float | str) -> tuple[int, int]:
    """(H, W) of an image at ``to_mpp`` given its (H, W) at ``from_mpp``: ``floor(n * from / to)``."""
    ratio = parse_resolution(from_mpp).mpp / parse_resolution(to_mpp).mpp
    return tuple(max(1, int(math.floor(n * ratio + 1e-9))) for n in shape[:2])  # type: ignore[return-value]


def cast(values: np.ndarray, dtype: DTypeLike) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        value: np.ndarray = np.clip(np.rint(values), info.min, info.max).astype(dtype)
        return value
    return values.astype(dtype)


def downsample_image(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resample an (H, W), (H, W, C) image to ``out_hw`` (smaller), keeping its dtype.

    An exact integer factor uses a block mean over the cropped image;
    otherwise ``skimage.transform.resize`` with anti-aliasing. Integers are
    rounded.
    """
    h, w = image.shape[:2]
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (oh, ow) == (h, w):
        return image.copy()
    f = h // oh
    if f >= 2 and h // f == oh and w // f == ow:
        crop = image[: oh * f, : ow * f].astype(np.float64)
        return cast(crop.reshape((oh, f, ow, f) + crop.shape[2:]).mean(axis=(1, 3)), image.dtype)
    from skimage.transform import resize

    out = resize(
        image.astype(np.float64),
        (oh, ow) + image.shape[2:],
        order=1,
        mode="reflect",
        anti_aliasing=True,
        preserve_range=True,
    )
    return cast(out, image.dtype)


def downsample_labels(labels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resample of an (H, W) mask or label image to ``out_hw``, keeping its dtype."""
    h, w = labels.shape[:2]
    rows = np.minimum(((np.arange(out_hw[0]) + 0.5) * h / out_hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_hw[1]) + 0.5) * w / out_hw[1]).astype(np.int64), w - 1)
    value: np.ndarray = labels[rows[:, None], cols[None, :]]
    return value


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def write_table(path: Path, columns: Mapping[str, Sequence[Any]], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({name: pa.array(list(columns[name]), type=schema.field(name).type) for name in schema.names})
    pq.write_table(table.cast(schema), path)
    return path


CHANNELS_SCHEMA = pa.schema([("channel_name", pa.string()), ("qc_pass", pa.bool_()), ("uniprot_id", pa.string())])
CPT_SCHEMA = pa.schema([("tissue_id", pa.string()), ("channel_name", pa.string())])
TILES_SCHEMA = pa.schema([("tissue_id", pa.string()), ("tile_id", pa.int64()), ("row", pa.int64()), ("col", pa.int64())])
TILE_STATS_SCHEMA = pa.schema(
    [
        ("tissue_id", pa.string()),
        ("tile_id", pa.int64()),
        ("tissue_fraction", pa.float64()),
        ("n_cells", pa.int64()),
    ]
)
STATS_SCHEMA = statistics_schema()  # the source layout's statistics tables are the store's
CELLS_SCHEMA = pa.schema(
    [
        ("tissue_id", pa.string()),
        ("cell_id", pa.int64()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("area", pa.int64()),
    ]
)


def tile_tables(dest: Path, res: float, size: int, tissue_masks: Mapping[str, np.ndarray], cell_masks: Mapping[str, np.ndarray]) -> None:
    coords: dict[str, list[Any]] = {"tissue_id": [], "tile_id": [], "row": [], "col": []}
    stats: dict[str, list[Any]] = {"tissue_id": [], "tile_id": [], "tissue_fraction": [], "n_cells": []}
    for tid, mask in tissue_masks.items():
        cells = cell_masks.get(tid)
        tiles, _, _ = get_grid_tile(mask, size, tolerance=0.75)  # tissue fraction >= 0.25
        for tile_id, tile in enumerate(tiles):
            row, col, fraction = tile.row, tile.col, tile.valid / (size * size)
            coords["tissue_id"].append(tid)
            coords["tile_id"].append(tile_id)
            coords["row"].append(row)
            coords["col"].append(col)
            n_cells = 0
            if cells is not None:
                window = cells[row : row + size, col : col + size]
                n_cells = int(np.unique(window[window > 0]).size)
            stats["tissue_id"].append(tid)
            stats["tile_id"].append(tile_id)
            stats["tissue_fraction"].append(fraction)
            stats["n_cells"].append(n_cells)
    base = dest / "tiling" / parse_resolution(res).name / "default"
    write_table(base / f"{size}_tile_coordinates.parquet", coords, TILES_SCHEMA)
    write_table(base / f"{size}_tile_stats.parquet", stats, TILE_STATS_SCHEMA)


def standardization_table(
    path: Path, images: Mapping[str, np.ndarray], channels: Mapping[str, Sequence[str]], quantile: float = 0.99
) -> None:
    cols: dict[str, list[Any]] = {k: [] for k in STATS_SCHEMA.names}
    for tid, image in images.items():
        for name, plane in zip(channels[tid], image):
            values = plane.astype(np.float64)
            upper = float(np.quantile(values, quantile))
            clipped = np.clip(values, 0, upper)
            cols["tissue_id"].append(tid)
            cols["channel_name"].append(name)
            cols["quantile"].append(quantile)
            cols["upper"].append(upper)
            cols["mean"].append(float(clipped.mean()))
            cols["std"].append(float(clipped.std()))
    write_table(path, cols, STATS_SCHEMA)


def cells_table(path: Path, cell_masks: Mapping[str, np.ndarray]) -> None:
    from scipy import ndimage as ndi

    cols: dict[str, list[Any]] = {k: [] for k in CELLS_SCHEMA.names}
    for tid, labels in cell_masks.items():
        n = int(labels.max())
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        area = ndi.sum_labels(np.ones(labels.shape), labels, index)
        keep = area > 0
        centers = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, index[keep])).reshape(-1, 2)
        cols["tissue_id"].extend([tid] * int(keep.sum()))
        cols["cell_id"].extend(int(i) for i in index[keep])
        cols["y"].extend(float(v) for v in centers[:, 0])
        cols["x"].extend(float(v) for v in centers[:, 1])
        cols["area"].extend(int(a) for a in area[keep])
    write_table(path, cols, CELLS_SCHEMA)


def tissues_table(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    names = list(rows[0].keys())
    schema = pa.schema([(name, pa.string()) for name in names])
    write_table(path, {name: [r[name] for r in rows] for name in names}, schema)


def channel_tables(
    dest: Path,
    modality: str,
    panel: Sequence[tuple[str, bool, str | None]],
    per_tissue: Mapping[str, Sequence[str]],
) -> None:
    base = dest / modality
    write_table(
        base / "channels.parquet",
        {
            "channel_name": [p[0] for p in panel],
            "qc_pass": [bool(p[1]) for p in panel],
            "uniprot_id": [p[2] for p in panel],
        },
        CHANNELS_SCHEMA,
    )
    tids = [tid for tid, names in per_tissue.items() for _ in names]
    names = [name for _, ns in per_tissue.items() for name in ns]
    write_table(base / "channels_per_tissue.parquet", {"tissue_id": tids, "channel_name": names}, CPT_SCHEMA)


# ---------------------------------------------------------------------------
# Image content helpers
# ---------------------------------------------------------------------------


def norm(x: np.ndarray, lo: float = 1.0, hi: float = 99.5) -> np.ndarray:
    a, b = np.percentile(x, [lo, hi])
    if b <= a:
        return np.zeros(x.shape, np.float64)
    value: np.ndarray = np.clip((x - a) / (b - a), 0.0, 1.0)
    return value


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    value: np.ndarray = keep[labels]
    return value


def tissue_mask_from_rgb(rgb: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Tissue mask of a bright-field RGB image: optical density threshold, closing, hole filling."""
    from scipy import ndimage as ndi

    od = -np.log(np.maximum(rgb.astype(np.float64), 1.0) / 255.0).sum(axis=-1)
    mask = od > threshold
    mask = ndi.binary_closing(mask, structure=np.ones((5, 5), bool), iterations=2, border_value=0)
    mask = ndi.binary_fill_holes(mask)
    mask = remove_small(mask, 64)
    return mask.astype(np.uint8)


def cell_labels(nuclear: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Cell label image: label of a thresholded nuclear channel inside the tissue."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    inside = nuclear[tissue > 0]
    if inside.size == 0 or np.ptp(inside) == 0:
        return np.zeros(nuclear.shape, np.uint32)
    threshold = max(threshold_otsu(inside), float(np.quantile(inside, 0.8)))
    binary = (nuclear > threshold) & (tissue > 0)
    binary = ndi.binary_opening(binary, structure=np.ones((2, 2), bool))
    binary = remove_small(binary, 6)
    value: np.ndarray = label(binary, connectivity=1).astype(np.uint32)
    return value
