"""The bundled demo cohort: a small spora TIFF cohort built from scikit-image's sample images.

3 tissues, H&E at 0.5 and 1.0 µm/px, a 6-channel IMC panel (one tissue measuring a subset, not in
panel order), CD3 IHC, tissue and cell masks, channel, standardization and tile tables; < 5 MB.
``python -m spora_zarr.demo DEST`` builds it (``--synthetic`` builds a random synthetic cohort).
The writers of the TIFF layout it uses live in :mod:`spora_zarr.testing`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np

from .access.resolution import parse_resolution
from .testing.cohorts import make_synthetic_cohort
from .testing.tiff_layout import (
    cast,
    cell_labels,
    cells_table,
    channel_tables,
    downsample_image,
    norm,
    standardization_table,
    tile_tables,
    tissue_mask_from_rgb,
    tissues_table,
    write_mask_tiff,
    write_multiplex_tiff,
    write_rgb_tiff,
)

logger = logging.getLogger(__name__)

__all__ = ["DEMO_CHANNELS", "DEMO_TISSUES", "make_demo_cohort"]

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

GLASS = (248, 247, 250)  # background colour of the bright-field slides

_DEMO_CHANNELS_PER_TISSUE: dict[str, tuple[str, ...]] = {
    "T01": ("DNA1", "CD3", "CD20", "PanCK", "Vimentin", "Ki67"),
    "T02": ("DNA1", "PanCK", "CD3", "Vimentin"),  # a subset, not in panel order
    "T03": ("DNA1", "CD3", "CD20", "PanCK", "Vimentin", "Ki67"),
}


class _Compression(TypedDict):
    """Compression keywords of the demo's image writers."""

    predictor: bool
    level: int


class _RGBLayout(TypedDict):
    """TIFF layout keywords of :func:`write_rgb_tiff` that differ between the demo tissues."""

    tiled: bool
    compression: str


class _MultiplexLayout(_RGBLayout):
    """TIFF layout keywords of :func:`write_multiplex_tiff` that differ between the demo tissues."""

    page_per_channel: bool


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
    crop[~fundus] = GLASS
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
        canvas[...] = GLASS
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
        return norm(np.maximum(green - ndi.gaussian_filter(green, 6), 0)), norm(od[..., 2])
    hed = rgb2hed(np.clip(rgb, 0, 255).astype(np.uint8))
    return norm(hed[..., 0]), norm(hed[..., 2])


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
    blobs = data.binary_blobs(max(h, w), blob_size_fraction=0.04, volume_fraction=0.12, rng=int(tid[1:]) if tid[1:].isdigit() else 0)[
        :h, :w
    ]
    maps = {
        "DNA1": (nuclear * t, 300.0),
        "CD3": (nuclear * (1.0 - ndi.gaussian_filter(stain, 3)) * t, 120.0),
        "CD20": (ndi.gaussian_filter(blobs.astype(np.float64), 1.5) * t, 80.0),
        "PanCK": (ndi.gaussian_filter(stain, 1.0) * t, 200.0),
        "Vimentin": (ndi.gaussian_filter(norm(sobel(rgb2gray(rgb))), 1.0) * t, 150.0),
        "Ki67": (nuclear * ((cells % 5) == 1), 60.0),
    }
    return np.stack([cast(maps[n][0] * maps[n][1], np.uint16) for n in names])


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
    fine_dir, coarse_dir = parse_resolution(fine).name, parse_resolution(coarse).name
    small = _Compression(predictor=True, level=15)
    he_opts = {
        "T01": _RGBLayout(tiled=True, compression="zstd"),
        "T02": _RGBLayout(tiled=True, compression="zstd"),
        "T03": _RGBLayout(tiled=False, compression="zstd"),
    }
    imc_opts = {
        "T01": _MultiplexLayout(page_per_channel=True, tiled=True, compression="zstd"),
        "T02": _MultiplexLayout(page_per_channel=False, tiled=True, compression="zstd"),
        "T03": _MultiplexLayout(page_per_channel=False, tiled=False, compression="zlib"),
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
        mask_fine = tissue_mask_from_rgb(he_fine)
        mask_coarse = tissue_mask_from_rgb(he_coarse)
        nuclear, stain = _demo_stains(tid, source)
        cells = cell_labels(nuclear, mask_coarse)
        write_mask_tiff(dest / "segmentations" / fine_dir / "tissue_masks" / f"{tid}.tif", mask_fine)
        write_mask_tiff(dest / "segmentations" / coarse_dir / "tissue_masks" / f"{tid}.tif", mask_coarse)
        write_mask_tiff(dest / "segmentations" / coarse_dir / "cell_masks" / f"{tid}.tif", cells)
        tissue_masks[tid], cell_masks[tid] = mask_coarse, cells
        names = _DEMO_CHANNELS_PER_TISSUE[tid]
        imc = _demo_multiplex(tid, source, nuclear, stain, mask_coarse, cells, names)
        write_multiplex_tiff(dest / "imc" / coarse_dir / "images" / f"{tid}.tif", imc, **small, **imc_opts[tid])
        imc_images[tid] = imc

    tissues_table(
        dest / "metadata" / "tissues.parquet",
        [
            {"tissue_id": "T01", "patient_id": "P001", "diagnosis": "normal", "organ": "retina"},
            {"tissue_id": "T02", "patient_id": "P002", "diagnosis": "adenocarcinoma", "organ": "colon"},
            {"tissue_id": "T03", "patient_id": "P002", "diagnosis": "adenocarcinoma", "organ": "colon"},
        ],
    )
    cells_table(dest / "metadata" / "cells.parquet", cell_masks)
    channel_tables(dest, "imc", DEMO_CHANNELS, _DEMO_CHANNELS_PER_TISSUE)
    standardization_table(
        dest / "imc" / coarse_dir / "standardization" / "quantile_clipping" / "uq_0.99_image" / "stats.parquet",
        imc_images,
        _DEMO_CHANNELS_PER_TISSUE,
    )
    tile_tables(dest, coarse, 224, tissue_masks, cell_masks)
    logger.info("demo cohort written to %s", dest)
    return dest


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
