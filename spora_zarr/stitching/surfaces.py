"""The surface where cells become visible in a stack: per ``(y, x)`` the first z whose intensity exceeds a threshold."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

__all__ = ["get_bottom_surface", "get_contact_surface", "get_top_surface"]


def get_contact_surface(
    img: np.ndarray, direction: int = 1, thresh: np.ndarray | float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk a ``(Z, Y, X)`` stack from the bottom (``direction=1``) or the top (``-1``) to the first z above ``thresh``.

    ``thresh`` defaults to the stack's mean plus one standard deviation.
    Returns the surface image (the intensity at that z), the z indices (-1
    where no z exceeds the threshold) and the threshold used.
    """
    img = np.asarray(img)
    if img.ndim != 3:
        raise InvalidInputError(f"a contact surface needs a (Z, Y, X) stack, got shape {img.shape}")
    if direction not in (1, -1):
        raise InvalidInputError(f"direction must be 1 (from the bottom) or -1 (from the top), got {direction}")
    threshold = np.asarray(img.mean() + img.std() if thresh is None else thresh, dtype=float)
    stack = img if direction == 1 else img[::-1]
    above = stack > threshold
    found = above.any(axis=0)
    first = np.argmax(above, axis=0)
    indices = np.where(found, first if direction == 1 else img.shape[0] - 1 - first, -1)
    surface = np.where(found, np.take_along_axis(img, np.maximum(indices, 0)[None], axis=0)[0], 0).astype(img.dtype)
    return surface, indices, threshold


def get_bottom_surface(img: np.ndarray, thresh: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`get_contact_surface` from the bottom of the stack (z = 0 upwards)."""
    return get_contact_surface(img, 1, thresh)


def get_top_surface(img: np.ndarray, thresh: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`get_contact_surface` from the top of the stack (the last z downwards)."""
    return get_contact_surface(img, -1, thresh)
