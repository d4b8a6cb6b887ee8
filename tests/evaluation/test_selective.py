"""Tests of medlens.evaluation.selective: uncertainty scores, risk-coverage, abstention."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import spearmanr

from medlens.evaluation import selective as SEL


def informative_problem(n=2000, k=3, seed=0):
    """Labels drawn from the predicted distribution: low confidence really means more errors."""
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(0, 2, (n, k)), axis=1)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return y, p


def test_hand_made_curve_and_coverage_at_risk():
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.45, 0.55]])  # 3rd, 5th wrong
    u = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    c = SEL.risk_coverage_curve(y, p, u)
    assert c["coverage"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert c["risk"] == pytest.approx([0, 0, 1 / 3, 1 / 4, 2 / 5])
    assert c["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 4 + 2 / 5) / 5)
    assert SEL.coverage_at_risk(c, 0.25) == (pytest.approx(0.8), 0.4)
    assert SEL.coverage_at_risk(c, 0.2) == (pytest.approx(0.4), 0.2)
    assert SEL.coverage_at_risk(c, 0.5) == (pytest.approx(1.0), 0.5)
    wrong_first = SEL.risk_coverage_curve(y, p, 1 - u)
    assert SEL.coverage_at_risk(wrong_first, 0.0) == (0.0, float("-inf"))


def test_tied_uncertainties_enter_together():
    y = np.array([0, 1, 0, 0])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    c = SEL.risk_coverage_curve(y, p, np.array([0.1, 0.1, 0.4, 0.4]))
    assert c["coverage"] == pytest.approx([0.5, 1.0])
    assert c["risk"] == pytest.approx([0.5, 0.25])
    assert c["thresholds"] == pytest.approx([0.1, 0.4])


@pytest.mark.parametrize("method", ["max_prob", "entropy", "margin"])
def test_risk_falls_as_coverage_drops_when_uncertainty_is_informative(method):
    y, p = informative_problem()
    c = SEL.risk_coverage_curve(y, p, SEL.uncertainty_scores(p, method))
    keep = c["coverage"] >= 0.05  # the first few points are noisy by nature
    assert spearmanr(c["coverage"][keep], c["risk"][keep]).statistic > 0.9
    at = lambda cov: c["risk"][np.searchsorted(c["coverage"], cov)]  # noqa: E731
    assert at(0.2) < at(0.5) < at(1.0)
    random_u = np.random.default_rng(1).uniform(size=len(y))
    assert c["aurc"] < SEL.risk_coverage_curve(y, p, random_u)["aurc"] - 0.05


def test_uncertainty_scores_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    assert SEL.uncertainty_scores(p, "max_prob") == pytest.approx([0.3, 2 / 3])
    assert SEL.uncertainty_scores(p, "margin") == pytest.approx([0.5, 1.0])
    h = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    assert SEL.uncertainty_scores(p, "entropy") == pytest.approx([h, np.log(3)])
    ml = np.array([[0.9, 0.5], [0.99, 0.2]])  # multi-label: the least sure label decides
    assert SEL.uncertainty_scores(ml, "max_prob", multilabel=True) == pytest.approx([0.5, 0.2])
    with pytest.raises(ValueError, match="samples"):
        SEL.uncertainty_scores(p, "mutual_information")


def test_sample_based_scores_separate_disagreement_from_ambiguity():
    # case 0: every draw says 50/50 (ambiguous, no disagreement);
    # case 1: draws disagree confidently (same mean) -> mutual information and variance high
    samples = np.array([[[0.5, 0.5], [0.99, 0.01]], [[0.5, 0.5], [0.01, 0.99]]])
    mean = samples.mean(0)
    scores = SEL.all_uncertainty_scores(samples=samples)
    assert set(scores) == set(SEL.UNCERTAINTY_METHODS)
    assert scores["predictive_entropy"] == pytest.approx([np.log(2), np.log(2)])
    assert scores["entropy"] == pytest.approx(SEL.uncertainty_scores(mean, "entropy"))
    assert scores["mutual_information"][0] == pytest.approx(0.0, abs=1e-9)
    assert scores["mutual_information"][1] > 0.5
    assert scores["variance"] == pytest.approx([0.0, 0.98**2 / 4])


def test_abstention_threshold_chosen_on_validation_meets_target_there():
    y, p = informative_problem(seed=3)
    u = SEL.uncertainty_scores(p, "max_prob")
    t = SEL.choose_abstention_threshold(y, p, u, target_risk=0.15)
    res = SEL.selective_risk(y, p, u, t)
    assert res["risk"] <= 0.15 and 0.1 < res["coverage"] < 1.0
    assert res["n_accepted"] + res["n_referred"] == len(y)
    careful = SEL.choose_abstention_threshold(y, p, u, target_risk=0.15, delta=0.05)
    assert careful <= t
    yt, pt = informative_problem(seed=4)  # applied unchanged to test: near the target
    test = SEL.selective_risk(yt, pt, SEL.uncertainty_scores(pt, "max_prob"), t)
    assert test["risk"] < 0.22


def test_plot_risk_coverage_writes_png(tmp_path):
    y, p = informative_problem(n=500)
    curves = {m: SEL.risk_coverage_curve(y, p, SEL.uncertainty_scores(p, m)) for m in ("max_prob", "entropy")}
    path = SEL.plot_risk_coverage(curves, tmp_path / "rc.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
