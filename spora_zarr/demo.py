"""Builders of spora TIFF cohorts: the bundled demo, synthetic test cohorts, big slides.

The spora TIFF layout written here (the converter's source side)::

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
``floor(fine_shape * fine_mpp / mpp)`` (see :func:`scaled_shape`).

Multiplex TIFFs come in three flavours (see :func:`write_multiplex_tiff`):
one page per channel, each written by its own ``TiffWriter.write`` call
(tifffile reads these back as C separate 2-D series, and
``tifffile.imread(path)`` returns only the first channel); one (C, H, W)
series of C pages; or one planar page holding C samples.

The TIFF and zarr writers and the large-slide writer need only numpy and
tifffile; the cohort builders also need scikit-image (the ``demo`` extra)
and its scipy. Run ``python -m spora_zarr.demo DEST`` to build the demo
cohort.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile

from .layout import resolution_name, resolution_value

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_CHANNELS",
    "DEMO_TISSUES",
    "PANEL",
    "downsample_image",
    "downsample_labels",
    "grid_tiles",
    "large_multiplex_region",
    "large_multiplex_tile",
    "make_demo_cohort",
    "make_synthetic_cohort",
    "read_multiplex_tiff",
    "scaled_shape",
    "tiff_channel_count",
    "write_large_multiplex_tiff",
    "write_legacy_zarr",
    "write_mask_tiff",
    "write_multiplex_tiff",
    "write_rgb_tiff",
]

DEFAULT_TILE = (256, 256)

#: Marker panel of the synthetic cohorts: (channel_name, uniprot_id or None).
#: Channels past its end are named ``CH<i>``.
PANEL: tuple[tuple[str, str | None], ...] = (
    ("DNA1", None),
    ("CD3", "P07766"),
    ("CD20", "P11836"),
    ("PanCK", None),
    ("Vimentin", "P08670"),
    ("Ki67", "P46013"),
    ("CD45", "P08575"),
    ("CD68", "P34810"),
    ("SMA", "P62736"),
    ("Collagen1", "P02452"),
)

#: The demo's imc panel: (channel_name, qc_pass, uniprot_id or None).
DEMO_CHANNELS: tuple[tuple[str, bool, str | None], ...] = (
    ("DNA1", True, None),
    ("CD3", True, "P07766"),
    ("CD20", True, "P11836"),
    ("PanCK", True, None),
    ("Vimentin", True, "P08670"),
    ("Ki67", False, "P46013"),
)

#: The demo's tissues: id -> (H, W) at 1_0mpp (0_5mpp is exactly twice that).
DEMO_TISSUES: dict[str, tuple[int, int]] = {
    "T01": (523, 700),
    "T02": (301, 347),
    "T03": (257, 283),
}

_GLASS = (248, 247, 250)  # background colour of the bright-field slides

_DEMO_CHANNELS_PER_TISSUE: dict[str, tuple[str, ...]] = {
    "T01": ("DNA1", "CD3", "CD20", "PanCK", "Vimentin", "Ki67"),
    "T02": ("DNA1", "PanCK", "CD3", "Vimentin"),  # a subset, not in panel order
    "T03": ("DNA1", "CD3", "CD20", "PanCK", "Vimentin", "Ki67"),
}

# ---------------------------------------------------------------------------
# TIFF / zarr writers and readers
# ---------------------------------------------------------------------------


def _tile_arg(tiled: bool | tuple[int, int]) -> tuple[int, int] | None:
    if tiled is True:
        return DEFAULT_TILE
    if not tiled:
        return None
    tile = (int(tiled[0]), int(tiled[1]))
    if tile[0] % 16 or tile[1] % 16 or min(tile) <= 0:
        raise ValueError(f"TIFF tile dimensions must be positive multiples of 16, got {tiled!r}")
    return tile


def _compression_arg(compression: str | None) -> str | None:
    if compression is None or str(compression).lower() in ("", "none", "raw"):
        return None
    name = str(compression).lower()
    if name not in ("zlib", "deflate", "lzw", "zstd", "lzma", "packbits"):
        raise ValueError(f"unsupported TIFF compression {compression!r}: use zlib, lzw, zstd, lzma, packbits or None")
    return name


def _level_arg(compression: str | None, level: int | None) -> dict | None:
    if level is None or _compression_arg(compression) is None:
        return None
    return {"level": int(level)}


def _prepare(path: str | Path) -> Path:
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
    path = _prepare(path)
    kwargs = dict(
        tile=_tile_arg(tiled),
        compression=_compression_arg(compression),
        compressionargs=_level_arg(compression, level),
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
    path = _prepare(path)
    tifffile.imwrite(
        path,
        array_hwc,
        photometric="rgb",
        tile=_tile_arg(tiled),
        compression=_compression_arg(compression),
        compressionargs=_level_arg(compression, level),
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
    path = _prepare(path)
    tifffile.imwrite(
        path,
        array_hw,
        photometric="minisblack",
        tile=_tile_arg(tiled),
        compression=_compression_arg(compression),
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
    path = _prepare(path)
    if chunks is None:
        h, w, c = array_hwc.shape
        chunks = (min(256, h), min(256, w), c)
    arr = zarr.create_array(
        str(path), shape=array_hwc.shape, dtype=array_hwc.dtype, chunks=chunks, zarr_format=3, overwrite=True
    )
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
    ratio = resolution_value(from_mpp) / resolution_value(to_mpp)
    return tuple(max(1, int(math.floor(n * ratio + 1e-9))) for n in shape[:2])  # type: ignore[return-value]


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
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
        return _cast(crop.reshape((oh, f, ow, f) + crop.shape[2:]).mean(axis=(1, 3)), image.dtype)
    from skimage.transform import resize

    out = resize(
        image.astype(np.float64),
        (oh, ow) + image.shape[2:],
        order=1,
        mode="reflect",
        anti_aliasing=True,
        preserve_range=True,
    )
    return _cast(out, image.dtype)


def downsample_labels(labels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resample of an (H, W) mask or label image to ``out_hw``, keeping its dtype."""
    h, w = labels.shape[:2]
    rows = np.minimum(((np.arange(out_hw[0]) + 0.5) * h / out_hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_hw[1]) + 0.5) * w / out_hw[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def _write_table(path: Path, columns: Mapping[str, Sequence], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({name: pa.array(list(columns[name]), type=schema.field(name).type) for name in schema.names})
    pq.write_table(table.cast(schema), path)
    return path


_CHANNELS_SCHEMA = pa.schema([("channel_name", pa.string()), ("qc_pass", pa.bool_()), ("uniprot_id", pa.string())])
_CPT_SCHEMA = pa.schema([("tissue_id", pa.string()), ("channel_name", pa.string())])
_TILES_SCHEMA = pa.schema(
    [("tissue_id", pa.string()), ("tile_id", pa.int64()), ("row", pa.int64()), ("col", pa.int64())]
)
_TILE_STATS_SCHEMA = pa.schema(
    [
        ("tissue_id", pa.string()),
        ("tile_id", pa.int64()),
        ("tissue_fraction", pa.float64()),
        ("n_cells", pa.int64()),
    ]
)
_STATS_SCHEMA = pa.schema(
    [
        ("tissue_id", pa.string()),
        ("channel_name", pa.string()),
        ("quantile", pa.float64()),
        ("upper", pa.float64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
    ]
)
_CELLS_SCHEMA = pa.schema(
    [
        ("tissue_id", pa.string()),
        ("cell_id", pa.int64()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("area", pa.int64()),
    ]
)


def grid_tiles(tissue_mask: np.ndarray, size: int, *, min_fraction: float = 0.5) -> list[tuple[int, int, float]]:
    """Fixed-grid tiles over a tissue mask, as spora's ``get_grid_tile``.

    Windows of ``size`` start every ``size`` pixels; edge windows reaching
    past the image count the outside as background and keep their top-left
    corner. A window is kept when its tissue fraction is ``>= min_fraction``.

    Returns
    -------
    list of (row, col, tissue_fraction)
    """
    mask = np.asarray(tissue_mask) > 0
    h, w = mask.shape
    out = []
    for row in range(0, h, size):
        for col in range(0, w, size):
            fraction = float(mask[row : row + size, col : col + size].sum()) / (size * size)
            if fraction >= min_fraction:
                out.append((row, col, fraction))
    return out


def _tile_tables(
    dest: Path, res: float, size: int, tissue_masks: Mapping[str, np.ndarray], cell_masks: Mapping[str, np.ndarray]
) -> None:
    coords: dict[str, list] = {"tissue_id": [], "tile_id": [], "row": [], "col": []}
    stats: dict[str, list] = {"tissue_id": [], "tile_id": [], "tissue_fraction": [], "n_cells": []}
    for tid, mask in tissue_masks.items():
        cells = cell_masks.get(tid)
        for tile_id, (row, col, fraction) in enumerate(grid_tiles(mask, size, min_fraction=0.25)):
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
    base = dest / "tiling" / resolution_name(res) / "default"
    _write_table(base / f"{size}_tile_coordinates.parquet", coords, _TILES_SCHEMA)
    _write_table(base / f"{size}_tile_stats.parquet", stats, _TILE_STATS_SCHEMA)


def _standardization_table(
    path: Path, images: Mapping[str, np.ndarray], channels: Mapping[str, Sequence[str]], quantile: float = 0.99
) -> None:
    cols: dict[str, list] = {k: [] for k in _STATS_SCHEMA.names}
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
    _write_table(path, cols, _STATS_SCHEMA)


def _cells_table(path: Path, cell_masks: Mapping[str, np.ndarray]) -> None:
    from scipy import ndimage as ndi

    cols: dict[str, list] = {k: [] for k in _CELLS_SCHEMA.names}
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
    _write_table(path, cols, _CELLS_SCHEMA)


def _tissues_table(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    names = list(rows[0].keys())
    schema = pa.schema([(name, pa.string()) for name in names])
    _write_table(path, {name: [r[name] for r in rows] for name in names}, schema)


def _channel_tables(
    dest: Path,
    modality: str,
    panel: Sequence[tuple[str, bool, str | None]],
    per_tissue: Mapping[str, Sequence[str]],
) -> None:
    base = dest / modality
    _write_table(
        base / "channels.parquet",
        {
            "channel_name": [p[0] for p in panel],
            "qc_pass": [bool(p[1]) for p in panel],
            "uniprot_id": [p[2] for p in panel],
        },
        _CHANNELS_SCHEMA,
    )
    tids = [tid for tid, names in per_tissue.items() for _ in names]
    names = [name for _, ns in per_tissue.items() for name in ns]
    _write_table(base / "channels_per_tissue.parquet", {"tissue_id": tids, "channel_name": names}, _CPT_SCHEMA)


# ---------------------------------------------------------------------------
# Image content helpers
# ---------------------------------------------------------------------------


def _norm(x: np.ndarray, lo: float = 1.0, hi: float = 99.5) -> np.ndarray:
    a, b = np.percentile(x, [lo, hi])
    if b <= a:
        return np.zeros(x.shape, np.float64)
    return np.clip((x - a) / (b - a), 0.0, 1.0)


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def _tissue_mask_from_rgb(rgb: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Tissue mask of a bright-field RGB image: optical density threshold, closing, hole filling."""
    from scipy import ndimage as ndi

    od = -np.log(np.maximum(rgb.astype(np.float64), 1.0) / 255.0).sum(axis=-1)
    mask = od > threshold
    mask = ndi.binary_closing(mask, structure=np.ones((5, 5), bool), iterations=2, border_value=0)
    mask = ndi.binary_fill_holes(mask)
    mask = _remove_small(mask, 64)
    return mask.astype(np.uint8)


def _cell_labels(nuclear: np.ndarray, tissue: np.ndarray) -> np.ndarray:
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
    binary = _remove_small(binary, 6)
    return label(binary, connectivity=1).astype(np.uint32)


# ---------------------------------------------------------------------------
# Demo cohort
# ---------------------------------------------------------------------------


def _demo_sources() -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per tissue: (H&E RGB at 0_5mpp, IHC CD3 RGB at 0_5mpp or None), both uint8."""
    from scipy import ndimage as ndi
    from skimage import data
    from skimage.color import hed2rgb, rgb2hed
    from skimage.transform import rescale

    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}

    # T01: the middle of the retina fundus photograph; its black surround becomes glass.
    h, w = (2 * n for n in DEMO_TISSUES["T01"])
    retina = data.retina()
    top, left = (retina.shape[0] - h) // 2, (retina.shape[1] - w) // 2
    crop = retina[top : top + h, left : left + w].copy()
    fundus = crop.astype(np.float64).mean(axis=-1) > 25
    fundus = ndi.binary_fill_holes(ndi.binary_opening(fundus, iterations=2))
    crop[~fundus] = _GLASS
    out["T01"] = (crop, None)

    # T02, T03: the IHC sample (DAB + haematoxylin), resized, set on a glass background;
    # its H&E is the same section re-stained (haematoxylin kept, DAB density -> eosin).
    ihc = data.immunohistochemistry()
    placements = {
        "T02": (ihc, 1.2, (0, 0)),
        "T03": (np.rot90(ihc)[::-1], 1.0, (9, 40)),
    }
    for tid, (img, scale, (oy, ox)) in placements.items():
        h, w = (2 * n for n in DEMO_TISSUES[tid])
        big = img
        if scale != 1.0:
            big = rescale(img, scale, channel_axis=-1, anti_aliasing=False, order=1, preserve_range=True)
            big = np.clip(np.rint(big), 0, 255).astype(np.uint8)
        canvas = np.empty((h, w, 3), np.uint8)
        canvas[...] = _GLASS
        ph, pw = min(big.shape[0], h - oy), min(big.shape[1], w - ox)
        canvas[oy : oy + ph, ox : ox + pw] = big[:ph, :pw]
        hed = rgb2hed(canvas)
        section = -np.log(np.maximum(canvas, 1) / 255.0).sum(axis=-1) > 0.25
        eosin = hed[..., 2] * 0.3 + 0.02 * ndi.gaussian_filter(section.astype(np.float64), 2.0)
        restained = np.stack([hed[..., 0], eosin, np.zeros(hed.shape[:2])], axis=-1)
        he = np.clip(np.rint(hed2rgb(restained) * 255), 0, 255).astype(np.uint8)
        out[tid] = (he, canvas)
    return out


def _demo_stains(tid: str, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nuclear, cytoplasmic) stain maps in [0, 1] of a demo tissue's source RGB at 1_0mpp."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed

    rgb = ndi.gaussian_filter(rgb.astype(np.float64), (0.8, 0.8, 0))
    if tid == "T01":  # retina: vessels and fine dark structure / blue absorbance
        od = -np.log(np.maximum(rgb, 1.0) / 255.0)
        green = od[..., 1]
        return _norm(np.maximum(green - ndi.gaussian_filter(green, 6), 0)), _norm(od[..., 2])
    hed = rgb2hed(np.clip(rgb, 0, 255).astype(np.uint8))
    return _norm(hed[..., 0]), _norm(hed[..., 2])


def _demo_multiplex(
    tid: str,
    rgb: np.ndarray,
    nuclear: np.ndarray,
    stain: np.ndarray,
    tissue: np.ndarray,
    cells: np.ndarray,
    names: Sequence[str],
) -> np.ndarray:
    """The demo's imc channels ``names`` of one tissue at 1_0mpp, (C, H, W) uint16 counts."""
    from scipy import ndimage as ndi
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    t = tissue.astype(np.float64)
    h, w = tissue.shape
    blobs = data.binary_blobs(
        max(h, w), blob_size_fraction=0.04, volume_fraction=0.12, rng=int(tid[1:]) if tid[1:].isdigit() else 0
    )[:h, :w]
    maps = {
        "DNA1": (nuclear * t, 300.0),
        "CD3": (nuclear * (1.0 - ndi.gaussian_filter(stain, 3)) * t, 120.0),
        "CD20": (ndi.gaussian_filter(blobs.astype(np.float64), 1.5) * t, 80.0),
        "PanCK": (ndi.gaussian_filter(stain, 1.0) * t, 200.0),
        "Vimentin": (ndi.gaussian_filter(_norm(sobel(rgb2gray(rgb))), 1.0) * t, 150.0),
        "Ki67": (nuclear * ((cells % 5) == 1), 60.0),
    }
    return np.stack([_cast(maps[n][0] * maps[n][1], np.uint16) for n in names])


def make_demo_cohort(dest: str | Path) -> Path:
    """Build the bundled demo spora TIFF cohort from scikit-image sample images.

    Three tissues: ``T01`` (523 x 700 at 1_0mpp, the retina photograph),
    ``T02`` (301 x 347) and ``T03`` (257 x 283) (the IHC sample; its H&E is
    it re-stained). H&E at 0_5mpp and 1_0mpp; a 6-channel ``imc`` at 1_0mpp
    (``T02`` measures 4 of them, in its own order; ``Ki67`` fails QC;
    ``DNA1`` and ``PanCK`` have no UniProt id); ``ihc/ihc_CD3`` at 1_0mpp
    for ``T02`` and ``T03``; tissue masks at both resolutions, cell masks at
    1_0mpp; tissues, cells and channel tables, one standardization table and
    a 224 grid tiling at 1_0mpp. About 4 MB.

    Parameters
    ----------
    dest
        Cohort directory; created if missing, files of the same names overwritten.

    Returns
    -------
    Path
        ``dest``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    logger.info("building the demo cohort in %s", dest)
    sources = _demo_sources()
    fine, coarse = 0.5, 1.0
    fine_dir, coarse_dir = resolution_name(fine), resolution_name(coarse)
    small = dict(predictor=True, level=15)
    he_opts = {
        "T01": dict(tiled=True, compression="zstd"),
        "T02": dict(tiled=True, compression="zstd"),
        "T03": dict(tiled=False, compression="zstd"),
    }
    imc_opts = {
        "T01": dict(page_per_channel=True, tiled=True, compression="zstd"),
        "T02": dict(page_per_channel=False, tiled=True, compression="zstd"),
        "T03": dict(page_per_channel=False, tiled=False, compression="zlib"),
    }
    tissue_masks: dict[str, np.ndarray] = {}
    cell_masks: dict[str, np.ndarray] = {}
    imc_images: dict[str, np.ndarray] = {}
    for tid, (he_fine, ihc_fine) in sources.items():
        out_hw = DEMO_TISSUES[tid]
        he_coarse = downsample_image(he_fine, out_hw)
        write_rgb_tiff(dest / "he" / fine_dir / "images" / f"{tid}.tif", he_fine, **small, **he_opts[tid])
        write_rgb_tiff(dest / "he" / coarse_dir / "images" / f"{tid}.tif", he_coarse, **small, **he_opts[tid])
        source = he_coarse
        if ihc_fine is not None:
            source = downsample_image(ihc_fine, out_hw)
            write_rgb_tiff(
                dest / "ihc" / "ihc_CD3" / coarse_dir / "images" / f"{tid}.tif",
                source,
                tiled=True,
                compression="zlib",
                predictor=True,
            )
        mask_fine = _tissue_mask_from_rgb(he_fine)
        mask_coarse = _tissue_mask_from_rgb(he_coarse)
        nuclear, stain = _demo_stains(tid, source)
        cells = _cell_labels(nuclear, mask_coarse)
        write_mask_tiff(dest / "segmentations" / fine_dir / "tissue_masks" / f"{tid}.tif", mask_fine)
        write_mask_tiff(dest / "segmentations" / coarse_dir / "tissue_masks" / f"{tid}.tif", mask_coarse)
        write_mask_tiff(dest / "segmentations" / coarse_dir / "cell_masks" / f"{tid}.tif", cells)
        tissue_masks[tid], cell_masks[tid] = mask_coarse, cells
        names = _DEMO_CHANNELS_PER_TISSUE[tid]
        imc = _demo_multiplex(tid, source, nuclear, stain, mask_coarse, cells, names)
        write_multiplex_tiff(dest / "imc" / coarse_dir / "images" / f"{tid}.tif", imc, **small, **imc_opts[tid])
        imc_images[tid] = imc

    _tissues_table(
        dest / "metadata" / "tissues.parquet",
        [
            {"tissue_id": "T01", "patient_id": "P001", "diagnosis": "normal", "organ": "retina"},
            {"tissue_id": "T02", "patient_id": "P002", "diagnosis": "adenocarcinoma", "organ": "colon"},
            {"tissue_id": "T03", "patient_id": "P002", "diagnosis": "adenocarcinoma", "organ": "colon"},
        ],
    )
    _cells_table(dest / "metadata" / "cells.parquet", cell_masks)
    _channel_tables(dest, "imc", DEMO_CHANNELS, _DEMO_CHANNELS_PER_TISSUE)
    _standardization_table(
        dest / "imc" / coarse_dir / "standardization" / "quantile_clipping" / "uq_0.99_image" / "stats.parquet",
        imc_images,
        _DEMO_CHANNELS_PER_TISSUE,
    )
    _tile_tables(dest, coarse, 224, tissue_masks, cell_masks)
    logger.info("demo cohort written to %s", dest)
    return dest


# ---------------------------------------------------------------------------
# Synthetic cohort
# ---------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Random smooth field in [0, 1] with features about ``scale`` pixels wide."""
    from skimage.transform import resize

    small = (max(2, shape[0] // scale + 2), max(2, shape[1] // scale + 2))
    field = resize(rng.random(small), shape, order=3, mode="reflect", anti_aliasing=False)
    return _norm(field, 0.5, 99.5)


def _panel(n: int) -> list[tuple[str, str | None]]:
    return [PANEL[i] if i < len(PANEL) else (f"CH{i}", None) for i in range(n)]


def make_synthetic_cohort(
    dest: str | Path,
    *,
    tissues: Sequence[str] = ("A", "B"),
    he_shape: tuple[int, int] | Mapping[str, tuple[int, int]] = (301, 517),
    imc_channels: int = 5,
    resolutions: Sequence[float | str] = (0.5, 1.0),
    page_per_channel: bool | Mapping[str, bool] = True,
    tiled: bool | tuple[int, int] = True,
    compression: str | None = "zlib",
    with_masks: bool = True,
    legacy_zarr_tissue: str | None = None,
    seed: int = 0,
    multiplex_modalities: Sequence[str] = ("imc",),
    multiplex_dtype: str | np.dtype = "uint16",
    channels_per_tissue: Mapping[str, Sequence[str]] | None = None,
    ihc_markers: Sequence[str] = ("CD3",),
    with_he: bool = True,
    with_tables: bool = True,
    tile_size: int = 64,
    suffix: str = ".tif",
) -> Path:
    """Build a small, seeded, random spora TIFF cohort for tests.

    Parameters
    ----------
    dest
        Cohort directory; created if missing.
    tissues
        Tissue ids.
    he_shape
        (H, W) at the finest resolution, for all tissues or per tissue id.
        Coarser shapes are :func:`scaled_shape` of it.
    imc_channels
        Panel size of each multiplex modality (names from :data:`PANEL`; the
        last channel fails QC when there are at least 2; ``DNA1`` and
        ``PanCK`` have no UniProt id).
    resolutions
        Resolutions (mpp) of every image and mask; coarser ones are the
        finest one downsampled (block mean for integer factors).
    page_per_channel
        Multiplex TIFF flavour, for all tissues or per tissue id (missing ids: ``True``).
    tiled, compression
        TIFF tiling (``True``: 256 x 256, a tuple, ``False``: strips) and
        compression (``"zlib"``, ``"lzw"``, ``"zstd"``, ``None``).
    with_masks
        Write tissue and cell masks at every resolution.
    legacy_zarr_tissue
        A tissue whose multiplex images are legacy ``<mx>/<res>/<id>.zarr``
        (H, W, C) zarr arrays instead of TIFFs.
    seed
        Everything written is a function of the arguments and ``seed``.
    multiplex_modalities
        Multiplex modality directories, e.g. ``("imc", "cycif")``.
    multiplex_dtype
        ``"uint16"`` or ``"float32"``.
    channels_per_tissue
        Channel names measured by each tissue, in page order. Default: all
        of the panel, except that with 2+ tissues and 3+ channels the last
        tissue skips the second channel and stores the rest in reverse order.
    ihc_markers
        IHC markers (``ihc/ihc_<MARKER>``), every tissue and resolution.
    with_he
        Write H&E images.
    with_tables
        Write a quantile-clipping standardization table per multiplex
        modality and resolution and, with ``with_masks``, the cells table and
        a ``tile_size`` grid tiling at every resolution.
    tile_size
        Size of the grid tiles in the tiling tables.
    suffix
        Image file suffix, ``".tif"`` or ``".tiff"``.

    Returns
    -------
    Path
        ``dest``.
    """
    from scipy import ndimage as ndi

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tissues = list(tissues)
    if legacy_zarr_tissue is not None and legacy_zarr_tissue not in tissues:
        raise ValueError(f"legacy_zarr_tissue {legacy_zarr_tissue!r} is not one of the tissues {tissues}")
    res_values = sorted({resolution_value(r) for r in resolutions})
    if not res_values:
        raise ValueError("at least one resolution is needed")
    finest = res_values[0]
    dtype = np.dtype(multiplex_dtype)
    panel = _panel(int(imc_channels))
    names_all = [p[0] for p in panel]
    qc = [not (i == len(panel) - 1 and len(panel) >= 2) for i in range(len(panel))]
    if channels_per_tissue is None:
        per_tissue = {tid: list(names_all) for tid in tissues}
        if len(tissues) >= 2 and len(names_all) >= 3:
            subset = [n for i, n in enumerate(names_all) if i != 1]
            per_tissue[tissues[-1]] = subset[::-1]
    else:
        per_tissue = {tid: list(channels_per_tissue.get(tid, names_all)) for tid in tissues}
        for tid, names in per_tissue.items():
            unknown = set(names) - set(names_all)
            if unknown:
                raise ValueError(f"tissue {tid!r} lists channels not in the panel: {sorted(unknown)}")
    logger.info("building a synthetic cohort of %d tissues in %s", len(tissues), dest)

    tissue_masks: dict[float, dict[str, np.ndarray]] = {r: {} for r in res_values}
    cell_masks: dict[float, dict[str, np.ndarray]] = {r: {} for r in res_values}
    mx_images: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    for k, tid in enumerate(tissues):
        rng = np.random.default_rng([int(seed), k])
        shape = he_shape[tid] if isinstance(he_shape, Mapping) else he_shape
        shape = (int(shape[0]), int(shape[1]))
        shapes = {r: scaled_shape(shape, finest, r) for r in res_values}

        region = _smooth_field(rng, shape, 60)
        tissue = (region > 0.3).astype(np.uint8)
        nuclei_field = rng.random(shape)
        nuclei = (ndi.gaussian_filter(nuclei_field, 1.2) > 0.56) & (tissue > 0)
        labels, _ = ndi.label(nuclei)
        labels = labels.astype(np.uint32)
        hema = 0.15 * tissue + 0.9 * nuclei + 0.05 * rng.random(shape)
        eosin = tissue * (0.3 + 0.5 * _smooth_field(rng, shape, 20))

        he = None
        if with_he:
            od = hema[..., None] * np.array([0.65, 0.70, 0.29]) + eosin[..., None] * np.array([0.07, 0.99, 0.11])
            he = _cast(255.0 * np.exp(-od * 1.2) - 3.0 * rng.random(shape + (1,)), np.uint8)
        ihc = {}
        for marker in ihc_markers:
            dab = tissue * _smooth_field(rng, shape, 25) ** 2
            od = hema[..., None] * np.array([0.65, 0.70, 0.29]) + dab[..., None] * np.array([0.27, 0.57, 0.78]) * 1.5
            ihc[marker] = _cast(255.0 * np.exp(-od) - 3.0 * rng.random(shape + (1,)), np.uint8)
        mx = {}
        for modality in multiplex_modalities:
            planes = {}
            for i, name in enumerate(names_all):
                if i == 0:
                    base = hema
                else:
                    base = tissue * _smooth_field(rng, shape, 10 + 7 * i) * (0.5 + 0.5 * nuclei)
                values = base + 0.05 * rng.random(shape)
                planes[name] = values * (1000.0 + 100 * i) if dtype.kind in "ui" else values * (1.0 + i)
            mx[modality] = np.stack([_cast(planes[n], dtype) for n in per_tissue[tid]])

        for r in res_values:
            out_hw = shapes[r]
            rdir = resolution_name(r)
            fname = f"{tid}{suffix}"
            if r == finest:
                he_r, ihc_r, mx_r, tm_r, cm_r = he, ihc, mx, tissue, labels
            else:
                he_r = None if he is None else downsample_image(he, out_hw)
                ihc_r = {m: downsample_image(v, out_hw) for m, v in ihc.items()}
                mx_r = {
                    mod: np.stack([downsample_image(p, out_hw) for p in v]) if len(v) else np.zeros((0, *out_hw), dtype)
                    for mod, v in mx.items()
                }
                tm_r = downsample_labels(tissue, out_hw)
                cm_r = downsample_labels(labels, out_hw)
            if he_r is not None:
                write_rgb_tiff(dest / "he" / rdir / "images" / fname, he_r, tiled=tiled, compression=compression)
            for marker, img in ihc_r.items():
                write_rgb_tiff(
                    dest / "ihc" / f"ihc_{marker}" / rdir / "images" / fname, img, tiled=tiled, compression=compression
                )
            for modality, img in mx_r.items():
                if tid == legacy_zarr_tissue:
                    write_legacy_zarr(dest / modality / rdir / f"{tid}.zarr", np.moveaxis(img, 0, -1))
                else:
                    ppc = page_per_channel.get(tid, True) if isinstance(page_per_channel, Mapping) else page_per_channel
                    write_multiplex_tiff(
                        dest / modality / rdir / "images" / fname,
                        img,
                        page_per_channel=bool(ppc),
                        tiled=tiled,
                        compression=compression,
                    )
                mx_images.setdefault((modality, r), {})[tid] = img
            if with_masks:
                write_mask_tiff(dest / "segmentations" / rdir / "tissue_masks" / fname, tm_r, compression=compression)
                write_mask_tiff(dest / "segmentations" / rdir / "cell_masks" / fname, cm_r, compression=compression)
            tissue_masks[r][tid] = tm_r
            cell_masks[r][tid] = cm_r

    _tissues_table(
        dest / "metadata" / "tissues.parquet",
        [
            {"tissue_id": tid, "patient_id": f"P{k // 2:03d}", "diagnosis": ("normal", "tumor")[k % 2]}
            for k, tid in enumerate(tissues)
        ],
    )
    for modality in multiplex_modalities:
        _channel_tables(dest, modality, [(n, q, u) for (n, u), q in zip(panel, qc)], per_tissue)
    if with_tables:
        if with_masks:
            _cells_table(dest / "metadata" / "cells.parquet", cell_masks[finest])
        for (modality, r), images in mx_images.items():
            _standardization_table(
                dest / modality / resolution_name(r) / "standardization" / "quantile_clipping" / "uq_0.99_image"
                / "stats.parquet",
                images,
                per_tissue,
            )
        if with_masks:
            for r in res_values:
                _tile_tables(dest, r, int(tile_size), tissue_masks[r], cell_masks[r])
    return dest


# ---------------------------------------------------------------------------
# Large slides, streamed tile by tile
# ---------------------------------------------------------------------------


def _value_scale(dtype: np.dtype) -> float:
    if dtype.kind in "ui":
        return float(min(np.iinfo(dtype).max, 65535))
    return 1000.0


def large_multiplex_tile(
    shape_chw: Sequence[int],
    dtype: str | np.dtype,
    channel: int,
    tile_row: int,
    tile_col: int,
    *,
    tile: tuple[int, int] = DEFAULT_TILE,
    seed: int = 0,
) -> np.ndarray:
    """One tile of the image :func:`write_large_multiplex_tiff` writes, clipped at the image edge.

    The content is a low-frequency pattern of the global pixel position plus
    noise seeded by ``(seed, channel, tile_row, tile_col)``, so any tile can
    be regenerated on its own.
    """
    c, h, w = (int(n) for n in shape_chw)
    dtype = np.dtype(dtype)
    th, tw = tile
    y0, x0 = tile_row * th, tile_col * tw
    if not (0 <= channel < c and 0 <= y0 < h and 0 <= x0 < w):
        raise IndexError(f"tile ({channel}, {tile_row}, {tile_col}) is outside an image of shape {tuple(shape_chw)}")
    y = np.arange(y0, min(y0 + th, h), dtype=np.float32)[:, None]
    x = np.arange(x0, min(x0 + tw, w), dtype=np.float32)[None, :]
    phase = 0.37 * channel + 0.11 * seed
    py, px = 700.0 + 130.0 * (channel % 5), 900.0 + 170.0 * (channel % 7)
    pattern = (
        0.45
        + 0.25 * np.sin(2 * np.pi * y / py + phase) * np.cos(2 * np.pi * x / px - phase)
        + 0.15 * np.sin(2 * np.pi * (x + y) / 2900.0 + 2 * phase)
    )
    rng = np.random.default_rng([int(seed), int(channel), int(tile_row), int(tile_col)])
    noise = rng.standard_normal(pattern.shape, dtype=np.float32) * 0.04
    values = np.clip(pattern + noise, 0.0, 1.0) * _value_scale(dtype)
    return _cast(values, dtype)


def large_multiplex_region(
    shape_chw: Sequence[int],
    dtype: str | np.dtype,
    rows: tuple[int, int],
    cols: tuple[int, int],
    *,
    channels: Sequence[int] | None = None,
    tile: tuple[int, int] = DEFAULT_TILE,
    seed: int = 0,
) -> np.ndarray:
    """The (C', h, w) region ``[rows[0]:rows[1], cols[0]:cols[1]]`` of a :func:`write_large_multiplex_tiff` image."""
    c = int(shape_chw[0])
    channels = range(c) if channels is None else channels
    (r0, r1), (c0, c1) = rows, cols
    th, tw = tile
    out = np.empty((len(channels), r1 - r0, c1 - c0), np.dtype(dtype))
    for k, ch in enumerate(channels):
        for ty in range(r0 // th, (r1 - 1) // th + 1):
            for tx in range(c0 // tw, (c1 - 1) // tw + 1):
                t = large_multiplex_tile(shape_chw, dtype, ch, ty, tx, tile=tile, seed=seed)
                ya, xa = ty * th, tx * tw
                sy0, sy1 = max(r0, ya), min(r1, ya + t.shape[0])
                sx0, sx1 = max(c0, xa), min(c1, xa + t.shape[1])
                out[k, sy0 - r0 : sy1 - r0, sx0 - c0 : sx1 - c0] = t[sy0 - ya : sy1 - ya, sx0 - xa : sx1 - xa]
    return out


def write_large_multiplex_tiff(
    path: str | Path,
    shape_chw: Sequence[int],
    dtype: str | np.dtype,
    *,
    tile: tuple[int, int] = DEFAULT_TILE,
    page_per_channel: bool = True,
    seed: int = 0,
    compression: str | None = None,
    bigtiff: bool | None = None,
) -> Path:
    """Write a big tiled (C, H, W) multiplex TIFF one tile at a time, never holding the image.

    Parameters
    ----------
    path
        Output file.
    shape_chw
        Image shape.
    dtype
        Pixel type, e.g. ``"uint16"`` or ``"float32"``.
    tile
        TIFF tile shape (multiples of 16).
    page_per_channel
        One ``TiffWriter.write`` per channel (C series), else one (C, H, W) series.
    seed
        Content seed; see :func:`large_multiplex_tile` and :func:`large_multiplex_region`.
    compression
        TIFF compression or ``None`` (fastest).
    bigtiff
        Default: BigTIFF when the raw image is 2 GiB or more.

    Returns
    -------
    Path
        ``path``.
    """
    c, h, w = (int(n) for n in shape_chw)
    dtype = np.dtype(dtype)
    tile = _tile_arg((int(tile[0]), int(tile[1]))) or DEFAULT_TILE
    if bigtiff is None:
        bigtiff = c * h * w * dtype.itemsize >= 2**31
    path = _prepare(path)
    n_ty, n_tx = -(-h // tile[0]), -(-w // tile[1])

    def tiles(channels: Sequence[int]) -> Iterator[np.ndarray]:
        for ch in channels:
            for ty in range(n_ty):
                for tx in range(n_tx):
                    yield large_multiplex_tile((c, h, w), dtype, ch, ty, tx, tile=tile, seed=seed)

    kwargs = dict(dtype=dtype, tile=tile, photometric="minisblack", compression=_compression_arg(compression))
    logger.info("writing a %s %s multiplex TIFF to %s", (c, h, w), dtype, path)
    if page_per_channel:
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            for ch in range(c):
                tw.write(tiles([ch]), shape=(h, w), **kwargs)
    else:
        tifffile.imwrite(path, tiles(range(c)), shape=(c, h, w), bigtiff=bigtiff, metadata={"axes": "CYX"}, **kwargs)
    return path


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spora_zarr.demo",
        description="Build the demo spora TIFF cohort (or a synthetic one) in DEST.",
    )
    parser.add_argument("dest", help="cohort directory to create")
    parser.add_argument("--synthetic", action="store_true", help="build a small random synthetic cohort instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.synthetic:
        out = make_synthetic_cohort(args.dest, seed=args.seed)
    else:
        out = make_demo_cohort(args.dest)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
