"""Synthetic spora TIFF cohorts and large multiplex slides, for tests and benchmarks."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile

from ..access.resolution import parse_resolution
from .tiff_layout import (
    DEFAULT_TILE,
    TiffWriteArgs,
    cast,
    cells_table,
    channel_tables,
    compression_arg,
    downsample_image,
    downsample_labels,
    norm,
    prepare,
    scaled_shape,
    standardization_table,
    tile_arg,
    tile_tables,
    tissues_table,
    write_legacy_zarr,
    write_mask_tiff,
    write_multiplex_tiff,
    write_rgb_tiff,
)

logger = logging.getLogger(__name__)

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


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Random smooth field in [0, 1] with features about ``scale`` pixels wide."""
    from skimage.transform import resize

    small = (max(2, shape[0] // scale + 2), max(2, shape[1] // scale + 2))
    field = resize(rng.random(small), shape, order=3, mode="reflect", anti_aliasing=False)
    return norm(field, 0.5, 99.5)


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
    res_values = sorted({parse_resolution(r).mpp for r in resolutions})
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
            he = cast(255.0 * np.exp(-od * 1.2) - 3.0 * rng.random(shape + (1,)), np.uint8)
        ihc = {}
        for marker in ihc_markers:
            dab = tissue * _smooth_field(rng, shape, 25) ** 2
            od = hema[..., None] * np.array([0.65, 0.70, 0.29]) + dab[..., None] * np.array([0.27, 0.57, 0.78]) * 1.5
            ihc[marker] = cast(255.0 * np.exp(-od) - 3.0 * rng.random(shape + (1,)), np.uint8)
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
            mx[modality] = np.stack([cast(planes[n], dtype) for n in per_tissue[tid]])

        for r in res_values:
            out_hw = shapes[r]
            rdir = parse_resolution(r).name
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
                write_rgb_tiff(dest / "ihc" / f"ihc_{marker}" / rdir / "images" / fname, img, tiled=tiled, compression=compression)
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

    tissues_table(
        dest / "metadata" / "tissues.parquet",
        [{"tissue_id": tid, "patient_id": f"P{k // 2:03d}", "diagnosis": ("normal", "tumor")[k % 2]} for k, tid in enumerate(tissues)],
    )
    for modality in multiplex_modalities:
        channel_tables(dest, modality, [(n, q, u) for (n, u), q in zip(panel, qc)], per_tissue)
    if with_tables:
        if with_masks:
            cells_table(dest / "metadata" / "cells.parquet", cell_masks[finest])
        for (modality, r), images in mx_images.items():
            standardization_table(
                dest / modality / parse_resolution(r).name / "standardization" / "quantile_clipping" / "uq_0.99_image" / "stats.parquet",
                images,
                per_tissue,
            )
        if with_masks:
            for r in res_values:
                tile_tables(dest, r, int(tile_size), tissue_masks[r], cell_masks[r])
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
    return cast(values, dtype)


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
    tile = tile_arg((int(tile[0]), int(tile[1]))) or DEFAULT_TILE
    if bigtiff is None:
        bigtiff = c * h * w * dtype.itemsize >= 2**31
    path = prepare(path)
    n_ty, n_tx = -(-h // tile[0]), -(-w // tile[1])

    def tiles(channels: Sequence[int]) -> Iterator[np.ndarray]:
        for ch in channels:
            for ty in range(n_ty):
                for tx in range(n_tx):
                    yield large_multiplex_tile((c, h, w), dtype, ch, ty, tx, tile=tile, seed=seed)

    kwargs = TiffWriteArgs(dtype=dtype, tile=tile, photometric="minisblack", compression=compression_arg(compression))
    logger.info("writing a %s %s multiplex TIFF to %s", (c, h, w), dtype, path)
    if page_per_channel:
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            for ch in range(c):
                tw.write(tiles([ch]), shape=(h, w), **kwargs)
    else:
        tifffile.imwrite(path, tiles(range(c)), shape=(c, h, w), bigtiff=bigtiff, metadata={"axes": "CYX"}, **kwargs)
    return path
