"""Per-channel value histograms: accumulated block by block, merged, and the statistics derived from them.

Integer data up to 16 bits get one bin per value (``np.bincount``), so every
quantile, mean and standard deviation derived here is exact. Wider integers are
counted value by value too (``np.unique``, slower). Float data are binned by
their leading 16 bits (sign, exponent and 7 mantissa bits, as bfloat16): a bin
holds the values within a factor ``1 + 2**-7`` of each other and is represented
by its midpoint, so a quantile is off by at most ``|x| * 2**-8`` (0.4 %) and a
mean or standard deviation by about as much. NaN, +inf and -inf are left out
(they have no place in a quantile or a mean); how many, per channel, is kept
(``ChannelHistogram.left_out``) so that the caller can say it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .kernels import count_into

__all__ = ["ChannelHistogram", "HistogramAccumulator", "clipped_moments", "merge", "quantile"]

_FLOAT_BITS = 16  # leading bits of a float32 that make its bin


@dataclass(frozen=True)
class ChannelHistogram:
    """Sorted distinct values (bin representatives) and their counts, for one channel.

    Attributes
    ----------
    values : numpy.ndarray
        float64, increasing.
    counts : numpy.ndarray
        int64, > 0, same length.
    exact : bool
        Whether every value is its own bin (integer data).
    left_out : int
        NaN and infinite values not counted (float data).
    """

    values: np.ndarray
    counts: np.ndarray
    exact: bool = True
    left_out: int = 0

    @property
    def total(self) -> int:
        """Number of pixels counted."""
        return int(self.counts.sum())


def merge(histograms: list[ChannelHistogram]) -> ChannelHistogram:
    """One histogram of the pixels of all ``histograms`` (a cohort-wide channel)."""
    if not histograms:
        return ChannelHistogram(np.zeros(0), np.zeros(0, np.int64))
    values = np.concatenate([h.values for h in histograms])
    counts = np.concatenate([h.counts for h in histograms])
    unique, inverse = np.unique(values, return_inverse=True)
    summed = np.zeros(unique.size, np.int64)
    np.add.at(summed, inverse, counts)
    return ChannelHistogram(unique, summed, all(h.exact for h in histograms), sum(h.left_out for h in histograms))


def quantile(histogram: ChannelHistogram, q: float) -> float:
    """The ``q`` quantile of the counted pixels, as ``np.quantile(..., method="inverted_cdf")``; NaN if empty."""
    if histogram.counts.size == 0:
        return float("nan")
    cumulative = np.cumsum(histogram.counts)
    target = q * float(cumulative[-1])
    index = int(np.searchsorted(cumulative, target, side="left"))
    return float(histogram.values[min(index, histogram.values.size - 1)])


def clipped_moments(histograms: list[tuple[ChannelHistogram, float]], log1p: bool) -> tuple[float, float, int]:
    """Mean, standard deviation (ddof 0) and count of ``f(clip(x, 0, upper))`` over several histograms.

    Parameters
    ----------
    histograms
        ``(histogram, upper)`` pairs: each histogram's pixels are clipped at its own upper bound.
    log1p
        ``f`` is ``log1p`` (else the identity).
    """
    parts = []
    for histogram, upper in histograms:
        if histogram.counts.size:
            transformed = np.clip(histogram.values, 0.0, upper)
            parts.append((np.log1p(transformed) if log1p else transformed, histogram.counts.astype(np.float64)))
    n = sum(float(c.sum()) for _, c in parts)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(float(np.dot(v, c)) for v, c in parts) / n
    variance = sum(float(np.dot((v - mean) ** 2, c)) for v, c in parts) / n
    return mean, float(np.sqrt(variance)), int(n)


def _float_keys(values: np.ndarray) -> np.ndarray:
    """Monotone 16-bit bin keys of float values (order of keys = order of values)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    negative = (bits >> 31).astype(bool)
    ordered = np.where(negative, ~bits, bits | np.uint32(0x80000000))
    return (ordered >> np.uint32(32 - _FLOAT_BITS)).astype(np.uint16)


def _float_bin_values(keys: np.ndarray) -> np.ndarray:
    """The midpoint value of each float bin key."""
    ordered = (keys.astype(np.uint32) << np.uint32(32 - _FLOAT_BITS)) | np.uint32(1 << (31 - _FLOAT_BITS))
    negative = (ordered >> 31) == 0
    bits = np.where(negative, ~ordered, ordered & np.uint32(0x7FFFFFFF))
    values = bits.view(np.float32).astype(np.float64)
    zero = (keys == 1 << (_FLOAT_BITS - 1)) | (keys == (1 << (_FLOAT_BITS - 1)) - 1)  # the bins of +0 and -0
    values[zero] = 0.0
    return values


class HistogramAccumulator:
    """Accumulates per-channel histograms of ``(C, ...)`` blocks of one dtype.

    Parameters
    ----------
    channels : int
        Number of channels of every block.
    dtype : numpy.dtype
        The blocks' dtype.

    Attributes
    ----------
    bin_counts : numpy.ndarray
        ``(C, bins)`` counts of the dtypes counted by bin (8/16-bit integers, floats by their top bits).
    value_counts : list of dict
        Per channel, value -> count of the wider integers (counted by distinct value).
    left_out : numpy.ndarray
        ``(C,)`` NaN and infinite values not counted (float data).
    """

    def __init__(self, channels: int, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.channels = int(channels)
        self.exact = self.dtype.kind in "uib"
        if self.dtype.kind in "ub" and self.dtype.itemsize <= 2:
            self._mode, self._offset, size = "bincount", 0, 1 << (8 * self.dtype.itemsize)
        elif self.dtype.kind == "i" and self.dtype.itemsize <= 2:
            size = 1 << (8 * self.dtype.itemsize)
            self._mode, self._offset = "bincount", size // 2
        elif self.exact:
            self._mode, self._offset, size = "unique", 0, 0
        elif self.dtype.kind == "f":
            self._mode, self._offset, size = "float", 0, 1 << _FLOAT_BITS
        else:
            raise TypeError(f"cannot histogram dtype {self.dtype}")
        self._size = size
        self.bin_counts = np.zeros((self.channels, size), np.int64)  # one row per channel (no columns when counting by value)
        self.value_counts: list[dict[int, int]] = [{} for _ in range(self.channels)] if not size else []
        self.left_out = np.zeros(self.channels, np.int64)

    def add(self, block: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Count the pixels of a ``(C, h, w)`` block (only where ``mask`` is true, if given)."""
        if self._mode == "bincount" and mask is None and block.size:
            count_into(block, self.bin_counts, signed=bool(self._offset))  # every channel in one call
            return
        for c in range(self.channels):
            self._add_channel(c, block[c], mask)

    def merge(self, others: Iterable[HistogramAccumulator]) -> HistogramAccumulator:
        """Add the counts of ``others`` (accumulators of the same channels and dtype, filled by other threads) to this one."""
        for other in others:
            if other is self:
                continue
            if (other.channels, other.dtype) != (self.channels, self.dtype):
                raise ValueError(f"cannot merge histograms of {other.channels} x {other.dtype} into {self.channels} x {self.dtype}")
            self.bin_counts += other.bin_counts
            self.left_out += other.left_out
            for pending, extra in zip(self.value_counts, other.value_counts):
                for value, n in extra.items():
                    pending[value] = pending.get(value, 0) + n
        return self

    def _add_channel(self, c: int, plane: np.ndarray, mask: np.ndarray | None) -> None:
        data = plane[mask] if mask is not None else plane.ravel()
        if data.size == 0:
            return
        if self._mode == "bincount":
            count_into(data, self.bin_counts[c], signed=bool(self._offset))
        elif self._mode == "float":
            finite = np.isfinite(data)
            kept = data[finite]
            self.left_out[c] += data.size - kept.size  # NaN, +inf, -inf
            self.bin_counts[c] += np.bincount(_float_keys(kept), minlength=self._size)
        else:
            values, counts = np.unique(data, return_counts=True)
            pending = self.value_counts[c]
            for v, n in zip(values.tolist(), counts.tolist()):
                pending[v] = pending.get(v, 0) + n

    def result(self) -> list[ChannelHistogram]:
        """The histogram of each channel (only bins with a count)."""
        out = []
        for c in range(self.channels):
            if self._mode == "unique":
                pending = self.value_counts[c]
                ordered = sorted(pending)
                out.append(ChannelHistogram(np.array(ordered, np.float64), np.array([pending[k] for k in ordered], np.int64), True))
                continue
            counts = self.bin_counts[c]
            keys = np.flatnonzero(counts)
            if self._mode == "float":  # finite values only were counted: every bin's midpoint is finite
                out.append(ChannelHistogram(_float_bin_values(keys), counts[keys], False, int(self.left_out[c])))
            else:
                out.append(ChannelHistogram((keys - self._offset).astype(np.float64), counts[keys], True))
        return out
