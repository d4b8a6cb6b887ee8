"""Tests of medlens.evaluation.calibration: temperature scaling and reliability curves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax

from medlens.evaluation import calibration as C
from medlens.evaluation import metrics as M


def calibrated_logits(n=4000, k=4, seed=0):
    """Logits whose softmax is the true class distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, k))
    p = softmax(logits, axis=1)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, y


def test_temperature_scaling_repairs_overconfident_logits():
    logits, y = calibrated_logits()
    overconfident = 3.0 * logits
    t = C.fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.15)
    before = softmax(overconfident, axis=1)
    after = C.apply_temperature(overconfident, t)
    assert C.negative_log_likelihood(y, after) < C.negative_log_likelihood(y, before) - 0.1
    assert M.ece(y, after, "multiclass") < 0.5 * M.ece(y, before, "multiclass")
    assert np.array_equal(after.argmax(1), before.argmax(1))
    assert after.sum(axis=1) == pytest.approx(np.ones(len(y)))


def test_temperature_near_one_for_calibrated_logits():
    logits, y = calibrated_logits(seed=1)
    assert C.fit_temperature(logits, y) == pytest.approx(1.0, abs=0.1)


def test_underconfident_logits_get_temperature_below_one():
    logits, y = calibrated_logits(seed=2)
    assert C.fit_temperature(logits / 2, y) == pytest.approx(0.5, rel=0.15)


def test_binary_single_logit_and_multilabel_shared_temperature():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 3000)
    y = (rng.uniform(size=3000) < expit(z)).astype(int)
    t = C.fit_temperature(2.5 * z, y)
    assert t == pytest.approx(2.5, rel=0.15)
    p = C.apply_temperature(2.5 * z, t)
    assert p.shape == (3000, 2) and p[:, 1] == pytest.approx(expit(2.5 * z / t))
    zl = rng.normal(0, 2, (2000, 3))
    yl = (rng.uniform(size=zl.shape) < expit(zl)).astype(int)
    tl = C.fit_temperature(4 * zl, yl)  # (N, L) labels: multi-label, one shared T
    assert tl == pytest.approx(4.0, rel=0.15)
    pl = C.apply_temperature(4 * zl, tl, task="multilabel")
    assert pl.shape == zl.shape
    nll = lambda q: C.negative_log_likelihood(yl, q, "multilabel")  # noqa: E731
    assert nll(pl) < nll(expit(4 * zl))


def test_bad_temperature_inputs():
    with pytest.raises(ValueError):
        C.apply_temperature(np.zeros((2, 2)), 0.0)
    with pytest.raises(ValueError):
        C.fit_temperature(np.zeros((3, 2)), np.array([0, 1]))


def test_reliability_curve_matches_ece_and_hand_bins():
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    c = C.reliability_curve(y, p, n_bins=4)
    assert c["bin_centers"] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert c["counts"].tolist() == [0, 0, 2, 2]
    assert c["accuracy"][2:] == pytest.approx([1.0, 0.5])
    assert c["confidence"][2:] == pytest.approx([0.65, 0.9])
    assert c["ece"] == pytest.approx(M.ece(y, p, "binary", n_bins=4))


def test_plot_reliability_writes_png(tmp_path):
    logits, y = calibrated_logits(n=1000)
    before = C.reliability_curve(y, softmax(3 * logits, axis=1))
    after = C.reliability_curve(y, C.apply_temperature(3 * logits, C.fit_temperature(3 * logits, y)))
    path = C.plot_reliability({"before": before, "after temperature": after}, tmp_path / "sub" / "rel.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
