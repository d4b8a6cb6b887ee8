"""Tests of medlens.evaluation.thresholds.choose_threshold."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import MedlensError
from medlens.evaluation.thresholds import choose_threshold


def scores(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.2, n)))), 2)  # with ties


def rates(y, s, t):
    pred = s > t
    return np.mean(pred[y == 1]), np.mean(~pred[y == 0])


def candidates(s):
    """Every distinct decision on the data: below all, between neighbours, at the top."""
    u = np.unique(s)
    return np.r_[u[0] - 1, (u[1:] + u[:-1]) / 2, u[-1]]


def test_separable_data_gets_a_threshold_between_the_classes():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.9])
    t = choose_threshold(y, s)
    assert 0.3 < t < 0.6 and t == pytest.approx(0.45)
    assert rates(y, s, t) == (1.0, 1.0)


def test_youden_maximizes_j_over_all_decisions():
    y, s = scores()
    t = choose_threshold(y, s, "youden")
    best = max(sum(rates(y, s, c)) - 1 for c in candidates(s))
    assert sum(rates(y, s, t)) - 1 == pytest.approx(best)
    assert not np.any(s == t)  # between observed scores: '>' and '>=' agree
    assert t == choose_threshold(y, np.stack([1 - s, s], 1))  # (N, 2) probabilities accepted


@pytest.mark.parametrize("target", [0.8, 0.95, 1.0])
def test_sensitivity_target_is_met_with_the_highest_threshold(target):
    y, s = scores(seed=1)
    t = choose_threshold(y, s, "sensitivity", target)
    assert rates(y, s, t)[0] >= target
    higher = [c for c in candidates(s) if c > t]
    assert all(rates(y, s, c)[0] < target for c in higher)


def test_specificity_target_is_met_with_the_lowest_threshold():
    y, s = scores(seed=2)
    t = choose_threshold(y, s, "specificity", 0.9)
    assert rates(y, s, t)[1] >= 0.9
    assert all(rates(y, s, c)[1] < 0.9 for c in candidates(s) if c < t)


def test_validation_without_both_classes_is_a_clear_error():
    with pytest.raises(MedlensError, match="positive and negative"):
        choose_threshold(np.zeros(10, int), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="method"):
        choose_threshold([0, 1], [0.2, 0.8], method="f1")
