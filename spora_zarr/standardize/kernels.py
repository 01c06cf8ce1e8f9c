"""The compiled kernels of standardization (``_kernels.c``, through ctypes) and their numpy fallbacks.

- :func:`count_into`: per-value histograms of 8/16-bit samples (all-zero
  8-byte words skipped; the statistics pass).
- :func:`lut_apply`: the standardization of 8/16-bit samples as one gather
  through per-plane float32 lookup tables (the standardizers' fast path with log1p);
- :func:`affine_apply`: ``min(x, upper) * scale + bias`` per plane in one vectorised
  pass (without log1p).

ctypes releases the GIL for each call, so threads run them on several cores.
Without a C compiler at install time, counting falls back to ``np.bincount``
and the standardizers to their element-wise path (:func:`available` is False).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LUT_DTYPES", "affine_apply", "available", "count_into", "lut_apply"]

LUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
"""Sample types :func:`lut_apply` maps (the tables have one entry per value up to the clipping bound)."""


@functools.cache
def _native() -> Any:
    """The compiled kernels, or ``None`` where ``_kernels.c`` was not built."""
    here = Path(__file__).parent
    built = [p for suffix in importlib.machinery.EXTENSION_SUFFIXES for p in sorted(here.glob(f"_kernels{suffix}"))]
    if not built:
        return None
    library = ctypes.CDLL(str(built[0]))
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    for name, item in (("spora_count_u16", ctypes.c_uint16), ("spora_count_u8", ctypes.c_uint8)):
        function = getattr(library, name)
        function.argtypes = [pointer, i64, i64, item, pointer, i64]
        function.restype = ctypes.c_int
    for name in ("spora_lut_u16", "spora_lut_u8", "spora_affine_u16", "spora_affine_u8"):
        function = getattr(library, name)
        function.argtypes = [pointer, i64, i64, pointer, pointer, pointer, pointer]
        function.restype = ctypes.c_int
    return library


def available() -> bool:
    """Whether the compiled kernels are built (else numpy counts and the standardizers compute element-wise)."""
    return _native() is not None


def count_into(data: np.ndarray, counts: np.ndarray, *, signed: bool) -> None:
    """Add the values of 8- or 16-bit ``data`` to ``counts`` (one int64 bin per value; signed values offset by half).

    ``data`` of shape ``(C, ...)`` with ``counts`` of shape ``(C, bins)`` counts each plane into its row
    in one call; 1-D ``counts`` takes every sample. The compiled counter reads each sample once (an
    all-zero 8-byte word at a time) and releases the GIL; without it, ``np.bincount``.
    """
    bits = data.dtype.itemsize * 8
    planes = counts.shape[0] if counts.ndim == 2 else 1
    data = np.require(data, requirements=("C", "A")).reshape(planes, -1)  # contiguous and aligned samples
    native = _native()
    if native is not None and counts.dtype == np.int64 and counts.flags.c_contiguous and counts.shape[-1] == 1 << bits:
        function = native.spora_count_u16 if bits == 16 else native.spora_count_u8
        function(data.ctypes.data, planes, data.shape[1], (1 << (bits - 1)) if signed else 0, counts.ctypes.data, counts.shape[-1])
        return
    rows = counts.reshape(planes, -1)
    for plane, row in zip(data, rows):
        row += np.bincount(plane.astype(np.int32) + (1 << (bits - 1)) if signed else plane, minlength=row.size)


def lut_apply(
    data_address: int,
    dtype: np.dtype,
    planes: int,
    plane_n: int,
    table: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    out_address: int,
) -> None:
    """Map ``planes`` contiguous planes of ``plane_n`` samples through their tables into float32 ``out``.

    Parameters
    ----------
    data_address, out_address
        Addresses of the C-contiguous samples (``dtype``, one of :data:`LUT_DTYPES`) and of the float32 output.
    table
        float32, every plane's table one after the other.
    offsets, lengths
        int64 per plane: where its table starts in ``table`` and its length (>= 1); a sample at
        or above ``length - 1`` takes the last entry.
    """
    native = _native()
    if native is None:
        raise RuntimeError("the compiled standardization kernels are not built; use the element-wise path")
    function = native.spora_lut_u16 if np.dtype(dtype).itemsize == 2 else native.spora_lut_u8
    if function(data_address, planes, plane_n, table.ctypes.data, offsets.ctypes.data, lengths.ctypes.data, out_address) != 0:
        raise ValueError("a lookup table is empty")


def affine_apply(
    data_address: int, dtype: np.dtype, planes: int, plane_n: int, upper: np.ndarray, scale: np.ndarray, bias: np.ndarray, out_address: int
) -> None:
    """``min(x, upper) * scale + bias`` of ``planes`` contiguous planes of ``plane_n`` samples into float32 ``out``.

    ``upper``, ``scale``, ``bias``: float32 per plane; the samples as for :func:`lut_apply`.
    """
    native = _native()
    if native is None:
        raise RuntimeError("the compiled standardization kernels are not built; use the element-wise path")
    function = native.spora_affine_u16 if np.dtype(dtype).itemsize == 2 else native.spora_affine_u8
    function(data_address, planes, plane_n, upper.ctypes.data, scale.ctypes.data, bias.ctypes.data, out_address)
