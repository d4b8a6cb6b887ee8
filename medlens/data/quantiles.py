"""Percentiles from one sort: :func:`numpy.percentile` (its default ``linear`` method), faster.

NumPy's percentile partitions around two ranks per requested percentile; with a handful of
percentiles of an image that costs several times more than NumPy's own vectorised sort of the
whole row (x86-simd-sort), which the service pays on every request (the out-of-distribution
guard's intensity statistics, the display window) and the classical features on every image.
:func:`percentiles` sorts once and interpolates with NumPy's formulas (Hyndman & Fan method 7,
the same index arithmetic and the same two-sided interpolation), so the values are identical
to NumPy's, bit for bit (tests compare them); a row holding NaN gives NaN, as NumPy does.
Written by hand: NumPy has no sort-based percentile and SciPy's ``mquantiles`` is slower.
:func:`sorted_percentiles` is the interpolation alone, for rows a caller has sorted already.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def percentiles(a: np.ndarray, q: float | Sequence[float], axis: int | None = None) -> np.ndarray:
    """``np.percentile(a, q, axis=axis)`` for ``axis`` None (all values) or one axis."""
    a = np.asanyarray(a)
    if axis is None:
        a, axis = a.reshape(-1), 0
    return sorted_percentiles(np.moveaxis(np.sort(a, axis=axis), axis, -1), q)


def sorted_percentiles(ordered: np.ndarray, q: float | Sequence[float]) -> np.ndarray:
    """:func:`percentiles` along the last axis of ``ordered`` (..., n), already sorted along it:
    for a caller that needs the sorted values for more than the percentiles."""
    ordered = np.asanyarray(ordered)
    n = ordered.shape[-1]
    if n == 0:
        raise ValueError("percentiles of an empty array")
    qs = np.asanyarray(np.true_divide(q, 100))
    if np.any((qs < 0) | (qs > 1)):
        raise ValueError("percentiles must be in the range [0, 100]")
    virtual = (n - 1) * qs  # numpy's virtual index of the linear method
    previous = np.atleast_1d(np.floor(virtual).astype(np.intp))
    following = previous + 1
    top = np.atleast_1d(virtual >= n - 1)
    previous[top], following[top] = n - 1, n - 1
    low = np.atleast_1d(virtual < 0)
    previous[low], following[low] = 0, 0
    previous, following = previous.reshape(qs.shape), following.reshape(qs.shape)
    gamma = np.asanyarray(virtual - previous, dtype=virtual.dtype)
    lo = np.moveaxis(ordered[..., previous.ravel()], -1, 0).reshape(qs.shape + ordered.shape[:-1])
    hi = np.moveaxis(ordered[..., following.ravel()], -1, 0).reshape(qs.shape + ordered.shape[:-1])
    # a scalar percentile interpolates in the input's precision (a weak Python float), as NumPy does
    t = float(gamma.ravel()[0]) if qs.ndim == 0 else gamma.reshape(qs.shape + (1,) * (ordered.ndim - 1))
    diff = hi - lo
    out = np.atleast_1d(np.add(lo, diff * t))
    np.subtract(hi, diff * (1 - t), out=out, where=np.broadcast_to(np.asarray(t) >= 0.5, out.shape), casting="unsafe")
    out = out.reshape(qs.shape + ordered.shape[:-1])
    if np.issubdtype(ordered.dtype, np.inexact):
        out[..., np.isnan(ordered[..., -1])] = np.nan  # NaN sorts last: a row holding one gives NaN
    return out[()]
