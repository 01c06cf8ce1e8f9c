"""A small cohort as real ones are: odd sizes, mixed dtypes, channels out of panel order, missing kinds.

:func:`make_mixed_cohort` writes a spora TIFF cohort whose tissues disagree the
way real cohorts do, from scikit-image's bundled sample images (no download):

- ``R1``: multiplex ``uint16``, every panel channel in panel order, one TIFF page per channel; cell mask ``uint16``;
- ``R2``: multiplex ``float32`` (colour-deconvolved stains), a subset of the panel *not* in panel order, one
  ``(C, H, W)`` series; cell mask ``uint32``;
- ``R3``: multiplex ``uint8``, only channels without a UniProt id (so ``uniprot_filtered`` selects none);
  cell mask ``uint32``;
- H&E (RGB ``uint8``) of every tissue at 0.5 µm/px, multiplex and masks at 1.0 µm/px, odd sizes;
- tissue masks ``uint8``; a 48 px grid tile table at 1.0 µm/px.

:data:`MIXED_PANEL` and :data:`MIXED_CHANNELS` describe it; :func:`mixed_source` reads back what was written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiff_layout import (
    channel_tables,
    downsample_image,
    tile_tables,
    tissues_table,
    write_mask_tiff,
    write_multiplex_tiff,
    write_rgb_tiff,
)

__all__ = ["MIXED_CHANNELS", "MIXED_DTYPES", "MIXED_PANEL", "MIXED_SHAPES", "MIXED_TILE", "make_mixed_cohort"]

#: channels.parquet of the ``imc`` modality: (channel_name, qc_pass, uniprot_id).
MIXED_PANEL: tuple[tuple[str, bool, str | None], ...] = (
    ("DNA1", True, None),
    ("CD3", True, "P07766"),
    ("CD20", True, "P11836"),
    ("PanCK", True, None),
    ("Ki67", False, "P46013"),
)

#: Channels each tissue measured, in the order its TIFF stores them.
MIXED_CHANNELS: dict[str, tuple[str, ...]] = {
    "R1": ("DNA1", "CD3", "CD20", "PanCK", "Ki67"),
    "R2": ("Ki67", "CD3", "DNA1"),
    "R3": ("PanCK", "DNA1"),
}

#: Stored dtypes per tissue: (multiplex image, cell mask).
MIXED_DTYPES: dict[str, tuple[str, str]] = {"R1": ("uint16", "uint16"), "R2": ("float32", "uint32"), "R3": ("uint8", "uint32")}

#: (H, W) of each tissue at 1.0 µm/px (H&E at 0.5 µm/px is twice that).
MIXED_SHAPES: dict[str, tuple[int, int]] = {"R1": (157, 203), "R2": (131, 97), "R3": (101, 149)}

#: Tile edge of the tile table (``tiling/1_0mpp/default/48_tile_coordinates.parquet``).
MIXED_TILE = 48


def _stains(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) float32 haematoxylin, eosin and DAB densities of an RGB image."""
    from skimage.color import rgb2hed

    value: np.ndarray = np.moveaxis(rgb2hed(rgb), -1, 0).astype(np.float32)
    return value


def _plane(stains: np.ndarray, name: str, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """One marker plane made from the stains (plus noise), scaled to ``dtype``."""
    base = {"DNA1": 0, "CD3": 2, "CD20": 2, "PanCK": 1, "Ki67": 0}[name]
    plane = stains[base] - stains[base].min()
    plane = plane / max(float(plane.max()), 1e-6) + 0.05 * rng.random(plane.shape)
    if dtype.kind == "f":
        value: np.ndarray = plane.astype(dtype)
        return value
    top = 200 if dtype == np.uint8 else 4000
    value = np.rint(plane * top).astype(dtype)
    return value


def _cells(tissue: np.ndarray, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Instance labels of round cells inside the tissue; ids start high for wide dtypes."""
    h, w = tissue.shape
    labels = np.zeros((h, w), dtype)
    yy, xx = np.mgrid[:h, :w]
    first = 70_000 if dtype == np.uint32 else 1  # ids that do not fit in uint16
    for number, (y, x) in enumerate(zip(rng.integers(0, h, 60), rng.integers(0, w, 60))):
        if tissue[y, x]:
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= 16] = first + number
    return labels


def make_mixed_cohort(dest: str | Path, *, seed: int = 0) -> Path:
    """Write the mixed cohort into ``dest`` (created) and return it."""
    from skimage import data

    rng = np.random.default_rng(seed)
    dest = Path(dest)
    source = data.immunohistochemistry()  # 512 x 512 RGB IHC
    tissue_masks: dict[str, np.ndarray] = {}
    cell_masks: dict[str, np.ndarray] = {}
    for number, (tissue_id, (h, w)) in enumerate(MIXED_SHAPES.items()):
        y0, x0 = 37 * number, 53 * number
        rgb_fine = source[y0 : y0 + 2 * h, x0 : x0 + 2 * w]
        write_rgb_tiff(dest / f"he/0_5mpp/images/{tissue_id}.tif", rgb_fine, tiled=(32, 32))
        rgb = downsample_image(rgb_fine, (h, w))
        stains = _stains(rgb)
        image_dtype, cell_dtype = (np.dtype(d) for d in MIXED_DTYPES[tissue_id])
        image = np.stack([_plane(stains, name, image_dtype, rng) for name in MIXED_CHANNELS[tissue_id]])
        path = dest / f"imc/1_0mpp/images/{tissue_id}.tif"
        write_multiplex_tiff(path, image, page_per_channel=tissue_id == "R1", tiled=tissue_id != "R3")
        tissue = (rgb.astype(np.float32).mean(axis=-1) < 200).astype(np.uint8)
        tissue[: h // 5] = 0  # glass along one edge, so edge tiles are partial
        tissue_masks[tissue_id] = tissue
        cell_masks[tissue_id] = _cells(tissue, cell_dtype, rng)
        write_mask_tiff(dest / f"segmentations/1_0mpp/tissue_masks/{tissue_id}.tif", tissue)
        write_mask_tiff(dest / f"segmentations/1_0mpp/cell_masks/{tissue_id}.tif", cell_masks[tissue_id])
    tissues_table(dest / "metadata/tissues.parquet", [{"tissue_id": t, "patient_id": f"P{t}"} for t in MIXED_SHAPES])
    channel_tables(dest, "imc", MIXED_PANEL, MIXED_CHANNELS)
    tile_tables(dest, 1.0, MIXED_TILE, tissue_masks, cell_masks)
    return dest
