"""percentiles: numpy.percentile's values from one sort, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data.quantiles import percentiles

QS = [[1, 5, 25, 50, 75, 95, 99], [0.5, 99.5], 37.3, [0, 100], np.array([[1, 2], [50, 99.9]])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_equals_numpy_bit_for_bit(dtype):
    rng = np.random.default_rng(7)
    cases = 0
    for trial in range(60):
        shape = tuple(int(s) for s in rng.integers(1, 30, rng.integers(1, 4)))
        a = (rng.random(shape) * 300).astype(dtype)
        if np.issubdtype(dtype, np.floating) and trial % 3 == 0:
            a.flat[rng.integers(a.size)] = np.nan  # a row holding NaN gives NaN
        q = QS[trial % len(QS)]
        for axis in [None, *range(a.ndim)]:
            with np.errstate(invalid="ignore"):
                expected = np.percentile(a, q, axis=axis)
            got = percentiles(a, q, axis=axis)
            assert type(got) is type(expected)
            assert np.asarray(got).dtype == np.asarray(expected).dtype
            assert np.shape(got) == np.shape(expected)
            assert np.array_equal(got, expected, equal_nan=True), (shape, q, axis)
            cases += 1
    assert cases >= 60


def test_an_image_like_the_guard_sees():
    rng = np.random.default_rng(0)
    grey = np.round(rng.random((2, 224 * 224)) * 255).astype(np.float32) / 255  # many ties, as from a PNG
    q = [1, 5, 25, 50, 75, 95, 99]
    assert np.array_equal(percentiles(grey, q, axis=1), np.percentile(grey, q, axis=1))


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="empty"):
        percentiles(np.zeros(0), [50])
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentiles(np.zeros(3), [101])
