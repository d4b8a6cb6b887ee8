"""Tests of medlens.evaluation.statistics: bootstrap, DeLong, McNemar, Holm.

No published worked example of DeLong is used: pROC's aSAH example (Z = -2.209, p = 0.02718)
needs the exact aSAH data, which is not available here. DeLong is checked instead against its
O(m n) definition, a hand-computed tiny example, scikit-learn's AUC and a bootstrap estimate.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from medlens.data.sample import Task
from medlens.evaluation import metrics as M
from medlens.evaluation import statistics as S


def binary_problem(n=300, seed=0, noise=1.3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, noise, n))))
    return y, np.stack([1 - s, s], axis=1)


def problem(task, n=240, seed=0):
    rng = np.random.default_rng(seed)
    if task == "binary":
        return binary_problem(n, seed)
    if task == "multilabel":
        y = rng.integers(0, 2, (n, 4))
        return y, 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, (n, 4)))))
    y = rng.integers(0, 4, n)
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


# -- bootstrap ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task,threshold",
    [
        ("binary", None),
        ("binary", 0.3),
        ("multiclass", None),
        ("ordinal", None),
        ("multilabel", None),
        ("multilabel", 0.4),
    ],
)
def test_vectorized_resample_metrics_equal_plain_metrics_on_resampled_data(task, threshold):
    y, p = problem(task)
    idx = S.resample_indices(y, 4, seed=7)
    yy, pp = M._check(y, p, Task(task))
    fast = S._resampled_metrics(yy, pp, Task(task), threshold, S._weights(idx, len(y)))
    for b in range(len(idx)):
        plain = M.classification_metrics(y[idx[b]], p[idx[b]], task, threshold)
        assert set(fast) == set(plain) - {"threshold"}
        for name in fast:
            assert fast[name][b] == pytest.approx(plain[name], abs=1e-10), name


def test_stratified_resamples_keep_class_counts_and_are_seeded():
    y = np.array([0] * 30 + [1] * 5 + [2] * 12)
    idx = S.resample_indices(y, 50, seed=3)
    assert idx.shape == (50, len(y))
    for row in idx:
        assert np.bincount(y[row], minlength=3).tolist() == [30, 5, 12]
    assert np.array_equal(idx, S.resample_indices(y, 50, seed=3))
    assert not np.array_equal(idx, S.resample_indices(y, 50, seed=4))


def test_bootstrap_metrics_fast_and_consistent():
    y, p = binary_problem(n=600)
    start = time.perf_counter()
    out = S.bootstrap_metrics(y, p, "binary", threshold=0.4, n_resamples=1000, seed=0)
    assert time.perf_counter() - start < 5.0
    point = M.classification_metrics(y, p, "binary", threshold=0.4)
    assert set(out) == set(point) - {"threshold"}
    for name, r in out.items():
        assert r["value"] == pytest.approx(point[name])
        assert r["low"] <= r["value"] <= r["high"], name
        assert r["n_undefined"] == 0
    assert out == S.bootstrap_metrics(y, p, "binary", threshold=0.4, n_resamples=1000, seed=0)
    assert 0.01 < out["auc"]["high"] - out["auc"]["low"] < 0.15


def test_bootstrap_ci_named_metric_equals_function_metric():
    y, p = problem("multiclass", n=120)
    by_fn = S.bootstrap_ci(y, p, partial(M.auc, task="multiclass"), n_resamples=60, seed=1)
    by_name = S.bootstrap_ci(y, p, "auc", n_resamples=60, seed=1, task="multiclass")
    assert tuple(by_fn) == pytest.approx(tuple(by_name))
    point, low, high = by_fn
    assert low < point < high and by_fn.n_resamples == 60


def test_bootstrap_ci_skips_and_counts_undefined_resamples():
    y, p = binary_problem(n=40, seed=2)
    y[:] = 0
    y[:2] = 1  # two positives: many plain resamples have none, AUC undefined there

    def fn(yy, pp):
        if yy.min() == yy.max():
            raise ValueError("only one class")  # as metric functions may do
        return roc_auc_score(yy, pp[:, 1])

    ci = S.bootstrap_ci(y, p, fn, n_resamples=100, seed=0, stratified=False)
    assert 0 < ci.n_undefined < 100
    assert np.isfinite(ci.low) and np.isfinite(ci.high)
    nan_fn = partial(M.auc, task="binary")  # returns NaN instead
    assert S.bootstrap_ci(y, p, nan_fn, n_resamples=100, seed=0, stratified=False).n_undefined == ci.n_undefined
    assert S.bootstrap_ci(y, p, fn, n_resamples=100, seed=0).n_undefined == 0  # stratified


def test_bootstrap_ci_covers_true_auc_at_about_nominal_rate():
    # binormal model: scores N(0,1) vs N(d,1) have AUC = Phi(d / sqrt 2)
    d, n, reps = 1.0, 150, 40
    true_auc = stats.norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(11)
    covered = 0
    for r in range(reps):
        y = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
        s = rng.normal(0, 1, n) + d * y
        low, high = S.bootstrap_ci(y, s, "auc", n_resamples=300, seed=r, task="binary")[1:]
        covered += low <= true_auc <= high
    assert 0.8 <= covered / reps <= 1.0


def test_paired_bootstrap_test_multiclass_macro_auc():
    y, good = problem("multiclass", n=300, seed=5)
    rng = np.random.default_rng(0)
    bad = 0.5 * good + 0.5 * rng.dirichlet(np.ones(4), len(y))
    res = S.paired_bootstrap_test(y, good, bad, "auc", n_resamples=300, seed=0, task="multiclass")
    assert res["metric_a"] == pytest.approx(M.auc(y, good, "multiclass"))
    assert res["diff"] > 0 and res["ci_low"] > 0 and res["p_value"] < 0.01
    same = S.paired_bootstrap_test(y, good, good, partial(M.auc, task="multiclass"), n_resamples=20)
    assert same["diff"] == 0 and same["p_value"] == 1.0


# -- DeLong ---------------------------------------------------------------------------------
def delong_by_definition(y, a, b):
    """DeLong (1988) structural components by the O(m n) definition."""

    def components(s):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(1), psi.mean(0)

    (va10, va01), (vb10, vb01) = components(a), components(b)
    m, n = (y == 1).sum(), (y == 0).sum()
    s10, s01 = np.cov(np.vstack([va10, vb10])), np.cov(np.vstack([va01, vb01]))
    cov = s10 / m + s01 / n
    return np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_hand_computed_tiny_example():
    # positives 0.9, 0.8, 0.4; negatives 0.7, 0.3, 0.2: AUC 8/9, V10 = V01 = (1, 1, 2/3),
    # each with sample variance 1/27, so var = (1/27)/3 + (1/27)/3 = 2/81
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    ci = S.delong_ci(y, s)
    assert ci["auc"] == pytest.approx(8 / 9)
    assert ci["se"] == pytest.approx(np.sqrt(2 / 81))
    assert ci["high"] == 1.0  # clipped as pROC does
    assert ci["low"] == pytest.approx(8 / 9 - stats.norm.ppf(0.975) * np.sqrt(2 / 81))


def test_delong_matches_sklearn_and_definition_with_ties():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    a = np.round(y + rng.normal(0, 1, 120), 1)  # rounding makes ties
    b = np.round(0.5 * y + rng.normal(0, 1, 120), 1)
    res = S.delong_test(y, a, b)
    assert res["auc_a"] == pytest.approx(roc_auc_score(y, a))
    assert res["auc_b"] == pytest.approx(roc_auc_score(y, b))
    assert res["se"] == pytest.approx(delong_by_definition(y, a, b))
    assert res["z"] == pytest.approx(res["diff"] / res["se"])
    assert res["p_value"] == pytest.approx(2 * stats.norm.sf(abs(res["z"])))
    assert res["ci_low"] < res["diff"] < res["ci_high"]


def test_delong_se_agrees_with_bootstrap_se():
    rng = np.random.default_rng(8)
    n = 400
    y = rng.integers(0, 2, n)
    shared = rng.normal(0, 1, n)  # correlated scores, as two models on the same cases
    a = 1.0 * y + shared + rng.normal(0, 0.7, n)
    b = 0.7 * y + shared + rng.normal(0, 0.7, n)
    res = S.delong_test(y, a, b)
    boot = S.paired_bootstrap_test(y, a, b, "auc", n_resamples=2000, seed=0, task="binary")
    assert boot["diff"] == pytest.approx(res["diff"])
    assert abs(boot["se"] / res["se"] - 1) < 0.12
    single = S.delong_ci(y, a)
    boot_a = S.bootstrap_ci(y, a, "auc", n_resamples=2000, seed=0, task="binary")
    assert abs((boot_a.high - boot_a.low) / (single["high"] - single["low"]) - 1) < 0.15


def test_delong_identical_scores_and_bad_labels():
    y, p = binary_problem(n=50)
    res = S.delong_test(y, p, p)
    assert res["diff"] == 0 and res["p_value"] == 1.0
    with pytest.raises(ValueError, match="binary"):
        S.delong_test(np.arange(50) % 3, p[:, 1], p[:, 1])


# -- McNemar and Holm -----------------------------------------------------------------------
def test_mcnemar_exact_matches_binomtest():
    y = np.zeros(40, int)
    a = np.zeros(40, int)
    b = np.zeros(40, int)
    b[:9] = 1  # A right, B wrong: 9
    a[9:12] = 1  # A wrong, B right: 3
    a[12:15] = b[12:15] = 1  # both wrong: not counted
    res = S.mcnemar_test(y, a, b)
    assert (res["b"], res["c"], res["method"]) == (9, 3, "exact")
    assert res["p_value"] == pytest.approx(stats.binomtest(9, 12, 0.5).pvalue)
    assert res["statistic"] == 3


def test_mcnemar_chi2_with_continuity_for_many_discordant_pairs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    a = np.where(rng.uniform(size=300) < 0.85, y, 1 - y)
    b = np.where(rng.uniform(size=300) < 0.70, y, 1 - y)
    res = S.mcnemar_test(y, a, b)
    bb, cc = res["b"], res["c"]
    assert bb + cc >= 25 and res["method"] == "chi2_continuity"
    assert res["statistic"] == pytest.approx((abs(bb - cc) - 1) ** 2 / (bb + cc))
    assert res["p_value"] == pytest.approx(stats.chi2.sf(res["statistic"], 1))
    assert S.mcnemar_test(y, y, y)["p_value"] == 1.0


def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04)
    assert S.holm_correction([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adj = S.holm_correction({"a": 0.2, "b": 0.6, "c": float("nan")})
    assert adj["a"] == pytest.approx(0.4) and adj["b"] == pytest.approx(0.6)
    assert np.isnan(adj["c"])
    assert S.holm_correction([0.5, 0.9]) == pytest.approx([1.0, 1.0])
