"""Tests of medlens.evaluation.metrics against scikit-learn and hand-computed values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medlens.evaluation import metrics as M


def binary_problem(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.3, n))))
    return y, np.stack([1 - s, s], axis=1)


def multiclass_problem(n=400, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def multilabel_problem(n=300, labels=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, labels))
    return y, 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, (n, labels)))))


# -- binary ---------------------------------------------------------------------------------
def test_binary_metrics_match_sklearn():
    y, p = binary_problem()
    m = M.classification_metrics(y, p, "binary")
    pred = (p[:, 1] > 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert m["acc"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["brier"] == pytest.approx(np.mean((p[:, 1] - y) ** 2))
    assert "acc@threshold" not in m and "kappa_quadratic" not in m
    assert m["threshold"] == 0.5
    assert set(m) - {"threshold"} <= set(M.METRIC_NAMES)


def test_binary_accuracy_is_medmnist_definition_strictly_above_half():
    y = np.array([1, 0, 1, 0])
    pos = np.array([0.5, 0.5, 0.51, 0.2])  # MedMNIST: y_score[:, -1] > 0.5, so 0.5 is negative
    assert M.accuracy(y, np.stack([1 - pos, pos], 1), "binary") == pytest.approx(3 / 4)
    assert M.accuracy(y, pos, "binary") == pytest.approx(3 / 4)  # 1-D scores accepted


def test_operating_threshold_moves_threshold_metrics_but_not_acc():
    y, p = binary_problem()
    at_half = M.classification_metrics(y, p, "binary")
    low = M.classification_metrics(y, p, "binary", threshold=0.2)
    pred = (p[:, 1] > 0.2).astype(int)
    assert low["acc"] == at_half["acc"]
    assert low["acc@threshold"] == pytest.approx(accuracy_score(y, pred))
    assert low["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert low["sensitivity"] > at_half["sensitivity"]
    assert low["specificity"] < at_half["specificity"]
    assert low["threshold"] == 0.2


# -- multi-class, ordinal, multi-label ------------------------------------------------------
def test_multiclass_metrics_match_sklearn():
    y, p = multiclass_problem()
    m = M.classification_metrics(y, p, "multiclass")
    pred = p.argmax(1)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["acc"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["ppv"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    onehot = np.eye(4)[y]
    assert m["brier"] == pytest.approx(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    assert "kappa_quadratic" not in m and "acc@threshold" not in m
    with pytest.raises(ValueError, match="threshold"):
        M.classification_metrics(y, p, "multiclass", threshold=0.3)


def test_ordinal_reports_quadratic_kappa():
    y, p = multiclass_problem(k=5, seed=3)
    m = M.classification_metrics(y, p, "ordinal")
    assert m["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, p.argmax(1), weights="quadratic"))
    assert m["auc"] == pytest.approx(M.auc(y, p, "multiclass"))


def test_multilabel_metrics():
    y, p = multilabel_problem()
    m = M.classification_metrics(y, p, "multilabel")
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert M.per_class_auc(y, p, "multilabel") == pytest.approx(
        [roc_auc_score(y[:, j], p[:, j]) for j in range(y.shape[1])]
    )
    # MedMNIST: per-label accuracy at 0.5, then the mean over labels
    medmnist_acc = np.mean([accuracy_score(y[:, j], p[:, j] > 0.5) for j in range(y.shape[1])])
    assert m["acc"] == pytest.approx(medmnist_acc)
    assert m["sensitivity"] == pytest.approx(recall_score(y, p > 0.5, average="macro"))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))


# -- calibration error ----------------------------------------------------------------------
def test_ece_hand_computed():
    # 4 bins; confidences 0.9, 0.9 (bin 3, one right) and 0.6, 0.7 (bin 2, both right)
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    expected = 2 / 4 * abs(0.5 - 0.9) + 2 / 4 * abs(1.0 - 0.65)
    assert M.ece(y, p, "binary", n_bins=4) == pytest.approx(expected)
    bins = M.calibration_bins(y, p, "binary", n_bins=4)
    assert bins["counts"].tolist() == [0, 0, 2, 2]
    assert np.isnan(bins["accuracy"][0])


def test_ece_small_for_calibrated_large_for_overconfident():
    rng = np.random.default_rng(1)
    s = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < s).astype(int)
    assert M.ece(y, s, "binary") < 0.02
    sharp = np.clip(np.round(s), 0.001, 0.999)  # claims near certainty
    assert M.ece(y, sharp, "binary") > 0.15


# -- undefined values -----------------------------------------------------------------------
def test_absent_class_gives_nan_without_crash_or_warning():
    y = np.zeros(20, dtype=int)
    p = np.linspace(0.1, 0.9, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = M.classification_metrics(y, p, "binary")
    assert np.isnan(m["auc"]) and np.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx(np.mean(p <= 0.5))
    y3, p3 = multiclass_problem(n=60, k=3)
    y3[y3 == 2] = 0  # class 2 absent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m3 = M.classification_metrics(y3, p3, "ordinal")
    assert np.isnan(m3["auc"]) and np.isnan(m3["sensitivity"])
    assert np.isfinite(m3["acc"]) and np.isfinite(m3["kappa_quadratic"])
    assert np.isnan(M.per_class_auc(y3, p3, "multiclass")[2])
    assert np.isfinite(M.per_class_auc(y3, p3, "multiclass")[:2]).all()


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="probs"):
        M.auc(np.array([0, 1]), np.zeros((3, 2)), "binary")
    with pytest.raises(ValueError, match="class indices"):
        M.accuracy(np.array([0, 3]), np.full((2, 3), 1 / 3), "multiclass")
    with pytest.raises(ValueError):
        M.classification_metrics([0, 1], [[0.5, 0.5]] * 2, "segmentation")


# -- accumulating classes -------------------------------------------------------------------
def test_cumulative_metrics_over_torch_batches_match_plain_functions():
    y, p = multiclass_problem(n=90)
    acc, auc_m, everything = M.Accuracy("multiclass"), M.AUC("multiclass"), M.ClassificationMetrics("multiclass")
    assert np.isnan(auc_m.compute())
    for i in range(0, 90, 32):
        for metric in (acc, auc_m, everything):
            metric.update(torch.from_numpy(y[i : i + 32]), torch.from_numpy(p[i : i + 32]))
    assert len(acc) == 90
    assert acc.compute() == pytest.approx(M.accuracy(y, p, "multiclass"))
    assert auc_m.compute() == pytest.approx(M.auc(y, p, "multiclass"))
    assert everything.compute() == pytest.approx(M.classification_metrics(y, p, "multiclass"))
    acc.reset()
    assert len(acc) == 0 and np.isnan(acc.compute())
    yb, pb = binary_problem(n=50)
    e, b = M.ECE("binary", n_bins=10), M.Brier("binary")
    e.update(yb, pb)
    b.update(yb, pb)
    assert e.compute() == pytest.approx(M.ece(yb, pb, "binary", n_bins=10))
    assert b.compute() == pytest.approx(M.brier(yb, pb, "binary"))
