"""Subgroup statistics: banding, per-group metrics, gap intervals and tests, equalized odds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medlens.evaluation import metrics as M
from medlens.evaluation.statistics import delong_ci, unpaired_bootstrap_difference
from medlens.evaluation.subgroups import assign_groups, subgroup_statistics


def test_given_bands_are_left_closed_and_missing_is_its_own_group():
    labels, info = assign_groups(["39", "40", "59.5", "60", "80", "", None, "95"], [60, 40, 80])
    assert labels == ["<40", "40–<60", "40–<60", "60–<80", "≥80", "missing", "missing", "≥80"]
    assert info == {
        "kind": "numeric",
        "banding": "given",
        "edges": [40.0, 60.0, 80.0],
        "order": ["<40", "40–<60", "60–<80", "≥80", "missing"],
    }


def test_quartile_bands_and_categorical_values():
    values = [str(v) for v in range(1, 101)]
    labels, info = assign_groups(values)
    assert info["banding"] == "quartiles" and info["edges"] == list(np.quantile(np.arange(1, 101), [0.25, 0.5, 0.75]))
    assert [labels.count(g) for g in info["order"]] == [25, 25, 25, 25]
    labels, info = assign_groups(["M", "F", "", "F"])
    assert labels == ["M", "F", "missing", "F"] and info["kind"] == "categorical"
    assert info["order"] == ["F", "M", "missing"]
    _, info = assign_groups(["1", "2", "2", "10"])  # few distinct numbers: one group each, in numeric order
    assert info["banding"] is None and info["order"] == ["1", "2", "10"]
    with pytest.raises(ValueError, match="not numbers"):
        assign_groups(["M", "F"], [1.0])


def test_unpaired_difference_point_is_the_difference_of_the_metrics():
    rng = np.random.default_rng(0)
    ya, yb = rng.integers(0, 2, 80), rng.integers(0, 2, 60)
    pa = np.clip(0.5 + 0.3 * (ya - 0.5) + 0.2 * rng.standard_normal(80), 0, 1)
    pb = rng.random(60)
    out = unpaired_bootstrap_difference(
        ya, pa, yb, pb, "binary", ["auc", "sensitivity"], threshold=0.5, n_resamples=300
    )
    assert out["auc"].point == pytest.approx(M.auc(ya, pa, "binary") - M.auc(yb, pb, "binary"))
    assert out["auc"].low < out["auc"].point < out["auc"].high and out["auc"].low > 0
    assert (
        out["auc"]
        == unpaired_bootstrap_difference(ya, pa, yb, pb, "binary", ["auc"], threshold=0.5, n_resamples=300)["auc"]
    )  # seeded


def _two_groups(n=200, flip=0.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(3 * (2 * y - 1) + rng.standard_normal(n))))
    groups = np.where(np.arange(n) % 2 == 0, "a", "b")
    y = np.where((groups == "b") & (rng.random(n) < flip), 1 - y, y)
    return y, np.stack([1 - score, score], axis=1), list(groups)


def test_a_harder_group_gives_a_significant_gap_and_the_tests_are_the_textbook_ones():
    y, p, groups = _two_groups(flip=0.3)
    out = subgroup_statistics(y, p, 0.5, groups, ["a", "b"], n_resamples=300)
    gap = out["gaps"]["auc"]
    assert (gap["high"], gap["low"]) == ("a", "b") and gap["ci_low"] > 0 and gap["p_value"] < 1e-4
    a, b = (np.array(groups) == g for g in "ab")
    fa, fb = delong_ci(y[a], p[a, 1]), delong_ci(y[b], p[b, 1])
    z = (fa["auc"] - fb["auc"]) / np.hypot(fa["se"], fb["se"])
    assert gap["statistic"] == pytest.approx(z**2) and gap["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)))
    sens = out["gaps"]["sensitivity"]
    hit = [[np.sum((y[m] == 1) & (p[m, 1] > 0.5)), np.sum((y[m] == 1) & (p[m, 1] <= 0.5))] for m in (a, b)]
    assert sens["method"] == "fisher_exact" and sens["p_value"] == pytest.approx(stats.fisher_exact(hit).pvalue)
    eo = out["equalized_odds"]
    tpr = [out["groups"][g]["sensitivity"]["value"] for g in "ab"]
    fpr = [1 - out["groups"][g]["specificity"]["value"] for g in "ab"]
    assert eo == pytest.approx(
        {
            "tpr_gap": abs(tpr[0] - tpr[1]),
            "fpr_gap": abs(fpr[0] - fpr[1]),
            "gap": max(abs(tpr[0] - tpr[1]), abs(fpr[0] - fpr[1])),
        }
    )


def test_equal_groups_show_no_significant_gap_and_small_groups_are_listed():
    y, p, groups = _two_groups(flip=0.0, seed=1)
    groups[:12] = ["tiny"] * 12
    out = subgroup_statistics(y, p, 0.5, groups, ["a", "b", "tiny"], n_resamples=300)
    assert all(g["p_value"] > 0.05 for g in out["gaps"].values())
    tiny = out["groups"]["tiny"]
    assert tiny["status"] == "too small" and tiny["n"] == 12 and "auc" not in tiny
    assert out["groups"]["a"]["n"] + out["groups"]["b"]["n"] + 12 == len(y)
