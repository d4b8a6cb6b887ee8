"""Classification metrics: plain functions plus accumulating classes (MONAI's pattern).

Conventions (shared by the whole package):

* ``y_true`` is (N,) int class indices (binary, multi-class, ordinal) or (N, L) multi-hot
  (multi-label).
* ``probs`` is (N, K) class probabilities (binary: K=2, column 1 is the positive class) or
  (N, L) per-label probabilities (multi-label). For binary a 1-D vector of positive-class scores
  is accepted too.

Definitions
-----------
``auc``
    binary: ROC AUC of the positive-class score; multi-class / ordinal: one-vs-rest macro mean of
    the per-class AUCs; multi-label: mean of the per-label AUCs (:func:`per_class_auc` gives the
    individual values). scikit-learn's ``roc_auc_score`` does the work.
``acc``
    MedMNIST's evaluator definition: binary ``probs[:, -1] > 0.5``; multi-class / ordinal argmax;
    multi-label each label ``> 0.5``, accuracy per label, then the mean over labels.
``acc@threshold``
    binary accuracy with the operating threshold chosen on validation
    (:func:`medlens.evaluation.thresholds.choose_threshold`).
Decision rule
    everywhere in this package a case is called positive when ``score > threshold`` (strictly, as
    MedMNIST does at 0.5). ``choose_threshold`` returns thresholds that lie between two observed
    scores, so ``>`` and ``>=`` agree on the data it was chosen on.
``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``f1``, ``balanced_accuracy``
    binary: at the operating threshold (0.5 when none is given); multi-class / ordinal: argmax
    predictions, one-vs-rest per class, then the macro mean; multi-label: per label at the
    threshold, then the macro mean.
    These rates come from one-vs-rest confusion counts (a few lines; scikit-learn has no
    specificity or NPV and warns instead of returning NaN); the tests check them against
    scikit-learn's ``recall_score``, ``precision_score``, ``f1_score`` and ``balanced_accuracy_score``.
``kappa_quadratic``
    ordinal only: Cohen's kappa with quadratic weights of the argmax predictions.
``brier``
    binary: mean squared error of the positive-class probability; multi-class / ordinal: mean over
    samples of the summed squared error against the one-hot label (Brier 1950, scikit-learn's
    multi-class ``brier_score_loss``; range [0, 2]); multi-label: mean over samples and labels.
``ece``
    expected calibration error with equal-width confidence bins (15 by default), top-label:
    confidence = the largest class probability, correct = argmax equals the label;
    ECE = sum over bins of (bin count / N) * |accuracy - mean confidence|. Binary uses the same
    top-label form (confidence ``max(p, 1 - p)``). Multi-label pools every (sample, label) entry as
    a binary top-label prediction. Hand-written (scikit-learn has no ECE).

Undefined values
    A metric that is undefined on the data (AUC when a class is absent, sensitivity without
    positives, PPV without predicted positives, ...) is returned as NaN, never an exception. A
    macro mean is NaN when any of its per-class values is NaN: a mean over a different set of
    classes would not be comparable between models or resamples.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
from sklearn.metrics import brier_score_loss, cohen_kappa_score, roc_auc_score

from medlens.data.sample import Task

__all__ = [
    "METRIC_NAMES",
    "as_numpy",
    "positive_scores",
    "predict",
    "auc",
    "per_class_auc",
    "accuracy",
    "accuracy_at_threshold",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "balanced_accuracy",
    "kappa_quadratic",
    "brier",
    "ece",
    "calibration_bins",
    "classification_metrics",
    "CumulativeMetric",
    "AUC",
    "Accuracy",
    "Brier",
    "ECE",
    "ClassificationMetrics",
]

METRIC_NAMES = (
    "auc",
    "acc",
    "acc@threshold",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "balanced_accuracy",
    "kappa_quadratic",
    "brier",
    "ece",
)
"""Stable names of the metrics :func:`classification_metrics` may return (metrics.json keys)."""


# -- input handling -------------------------------------------------------------------------
def as_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, list, or torch tensor (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _task(task: Task | str) -> Task:
    task = Task(task)
    if task not in (Task.BINARY, Task.MULTICLASS, Task.MULTILABEL, Task.ORDINAL):
        raise ValueError(f"no classification metrics for task {task.value!r}")
    return task


def _check(y_true: Any, probs: Any, task: Task) -> tuple[np.ndarray, np.ndarray]:
    y = as_numpy(y_true)
    p = as_numpy(probs).astype(np.float64)
    if task is Task.BINARY and p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probs must be (N, K) with N={len(y)}, got shape {p.shape}")
    if task is Task.MULTILABEL:
        if y.shape != p.shape:
            raise ValueError(f"multi-label y_true {y.shape} and probs {p.shape} differ in shape")
    elif y.ndim != 1:
        raise ValueError(f"y_true must be (N,) class indices for {task.value}, got shape {y.shape}")
    elif len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"class indices must lie in [0, {p.shape[1]}), got {y.min()}..{y.max()}")
    return y.astype(np.int64), p


def positive_scores(probs: Any) -> np.ndarray:
    """The positive-class score of binary ``probs``: ``probs[:, -1]`` (MedMNIST), or ``probs`` if 1-D."""
    p = as_numpy(probs).astype(np.float64)
    return p if p.ndim == 1 else p[:, -1]


def predict(probs: Any, task: Task | str, threshold: float | np.ndarray | None = None) -> np.ndarray:
    """Hard predictions: binary/multi-label ``score > threshold`` (0.5 default), else argmax."""
    task = _task(task)
    p = as_numpy(probs).astype(np.float64)
    t = 0.5 if threshold is None else threshold
    if task is Task.BINARY:
        return (positive_scores(p) > t).astype(np.int64)
    if task is Task.MULTILABEL:
        return (p > np.asarray(t)).astype(np.int64)
    return p.argmax(axis=1)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (an undefined rate), silently."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _mean_strict(values: np.ndarray) -> float:
    """Mean that is NaN when any value is NaN (see the module notes on macro means)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


# -- AUC ------------------------------------------------------------------------------------
def _binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    if y.min(initial=1) == y.max(initial=0):  # one class only (or empty): undefined
        return float("nan")
    return float(roc_auc_score(y, score))


def per_class_auc(y_true: Any, probs: Any, task: Task | str) -> np.ndarray:
    """One-vs-rest AUC per class (multi-class / ordinal) or per label (multi-label); NaN if undefined.

    Binary returns a length-1 array with the positive-class AUC.
    """
    task = _task(task)
    y, p = _check(y_true, probs, task)
    if task is Task.BINARY:
        return np.array([_binary_auc(y, p[:, -1])])
    if task is Task.MULTILABEL:
        return np.array([_binary_auc(y[:, j], p[:, j]) for j in range(p.shape[1])])
    return np.array([_binary_auc((y == k).astype(int), p[:, k]) for k in range(p.shape[1])])


def auc(y_true: Any, probs: Any, task: Task | str) -> float:
    """ROC AUC: binary, one-vs-rest macro (multi-class/ordinal), or mean over labels (multi-label)."""
    return _mean_strict(per_class_auc(y_true, probs, task))


# -- accuracy and confusion-based metrics -----------------------------------------------------
def accuracy(y_true: Any, probs: Any, task: Task | str) -> float:
    """Accuracy in MedMNIST's definition (see the module notes)."""
    task = _task(task)
    y, p = _check(y_true, probs, task)
    if len(y) == 0:
        return float("nan")
    return float(np.mean(predict(p, task) == y))


def accuracy_at_threshold(y_true: Any, probs: Any, threshold: float, task: Task | str = Task.BINARY) -> float:
    """Accuracy when a case is positive iff its score > ``threshold`` (binary or multi-label)."""
    task = _task(task)
    if task not in (Task.BINARY, Task.MULTILABEL):
        raise ValueError("a decision threshold applies to binary and multi-label tasks only")
    y, p = _check(y_true, probs, task)
    if len(y) == 0:
        return float("nan")
    return float(np.mean(predict(p, task, threshold) == y))


def _one_vs_rest_counts(y_true: Any, probs: Any, task: Task | str, threshold: float | None) -> dict[str, np.ndarray]:
    """TP, FP, TN, FN per class (multi-class), per label (multi-label) or of the positive class."""
    task = _task(task)
    y, p = _check(y_true, probs, task)
    pred = predict(p, task, threshold)
    if task is Task.BINARY:
        yt, yp = y[:, None] == 1, pred[:, None] == 1
    elif task is Task.MULTILABEL:
        yt, yp = y == 1, pred == 1
    else:
        classes = np.arange(p.shape[1])
        yt, yp = y[:, None] == classes, pred[:, None] == classes
    return {
        "tp": np.sum(yt & yp, axis=0),
        "fp": np.sum(~yt & yp, axis=0),
        "tn": np.sum(~yt & ~yp, axis=0),
        "fn": np.sum(yt & ~yp, axis=0),
    }


def _rates(c: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-class rates from one-vs-rest counts (arrays broadcast over any leading axes)."""
    sens = _div(c["tp"], c["tp"] + c["fn"])
    spec = _div(c["tn"], c["tn"] + c["fp"])
    return {
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _div(c["tp"], c["tp"] + c["fp"]),
        "npv": _div(c["tn"], c["tn"] + c["fn"]),
        "f1": _div(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
        "balanced_accuracy": (sens + spec) / 2,
    }


def _rate(name: str, y_true: Any, probs: Any, task: Task | str, threshold: float | None) -> float:
    task = _task(task)
    counts = _one_vs_rest_counts(y_true, probs, task, threshold)
    if name == "balanced_accuracy" and task in (Task.MULTICLASS, Task.ORDINAL):
        # scikit-learn's definition for multi-class: the macro mean of per-class recall
        return _mean_strict(_rates(counts)["sensitivity"])
    return _mean_strict(_rates(counts)[name])


def sensitivity(y_true: Any, probs: Any, task: Task | str = Task.BINARY, threshold: float | None = None) -> float:
    """Sensitivity (recall, TPR); macro over classes/labels beyond binary."""
    return _rate("sensitivity", y_true, probs, task, threshold)


def specificity(y_true: Any, probs: Any, task: Task | str = Task.BINARY, threshold: float | None = None) -> float:
    """Specificity (TNR); one-vs-rest macro beyond binary."""
    return _rate("specificity", y_true, probs, task, threshold)


def ppv(y_true: Any, probs: Any, task: Task | str = Task.BINARY, threshold: float | None = None) -> float:
    """Positive predictive value (precision); macro beyond binary."""
    return _rate("ppv", y_true, probs, task, threshold)


def npv(y_true: Any, probs: Any, task: Task | str = Task.BINARY, threshold: float | None = None) -> float:
    """Negative predictive value; one-vs-rest macro beyond binary."""
    return _rate("npv", y_true, probs, task, threshold)


def f1(y_true: Any, probs: Any, task: Task | str = Task.BINARY, threshold: float | None = None) -> float:
    """F1 score of the positive class (binary) or the macro F1 (NaN where a class's F1 is undefined)."""
    return _rate("f1", y_true, probs, task, threshold)


def balanced_accuracy(y_true: Any, probs: Any, task: Task | str = Task.BINARY, threshold: float | None = None) -> float:
    """Balanced accuracy: (sensitivity + specificity) / 2 (binary, per label), macro recall (multi-class)."""
    return _rate("balanced_accuracy", y_true, probs, task, threshold)


def kappa_quadratic(y_true: Any, probs: Any, task: Task | str = Task.ORDINAL) -> float:
    """Quadratic-weighted Cohen's kappa of argmax predictions (ordinal grades); NaN if undefined."""
    task = _task(task)
    y, p = _check(y_true, probs, task)
    labels = np.arange(p.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(cohen_kappa_score(y, p.argmax(axis=1), labels=labels, weights="quadratic"))


# -- probabilistic metrics --------------------------------------------------------------------
def brier(y_true: Any, probs: Any, task: Task | str) -> float:
    """Brier score (see the module notes for the multi-class and multi-label forms)."""
    task = _task(task)
    y, p = _check(y_true, probs, task)
    if len(y) == 0:
        return float("nan")
    if task is Task.BINARY:
        return float(brier_score_loss(y, p[:, -1], pos_label=1))
    if task is Task.MULTILABEL:
        return float(np.mean((p - y) ** 2))
    return float(brier_score_loss(y, p, labels=np.arange(p.shape[1])))


def _top_label(y: np.ndarray, p: np.ndarray, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct) of the top-label prediction; multi-label pools (sample, label) pairs."""
    if task is Task.MULTILABEL:
        p, y = p.ravel(), y.ravel()
        return np.maximum(p, 1 - p), ((p > 0.5) == (y == 1)).astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: bins are (i/n, (i+1)/n], the first one includes 0."""
    return np.clip(np.ceil(np.asarray(confidence) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def calibration_bins(y_true: Any, probs: Any, task: Task | str, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin counts, mean accuracy and mean confidence of top-label predictions (NaN for empty bins)."""
    task = _task(task)
    y, p = _check(y_true, probs, task)
    conf, correct = _top_label(y, p, task)
    b = bin_index(conf, n_bins)
    counts = np.bincount(b, minlength=n_bins)
    acc = _div(np.bincount(b, weights=correct, minlength=n_bins), counts)
    mean_conf = _div(np.bincount(b, weights=conf, minlength=n_bins), counts)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_edges": edges,
        "bin_centers": (edges[:-1] + edges[1:]) / 2,
        "accuracy": acc,
        "confidence": mean_conf,
        "counts": counts,
    }


def ece(y_true: Any, probs: Any, task: Task | str, n_bins: int = 15) -> float:
    """Expected calibration error: equal-width bins, top-label (hand-written; see the module notes)."""
    bins = calibration_bins(y_true, probs, task, n_bins)
    n = bins["counts"].sum()
    if n == 0:
        return float("nan")
    filled = bins["counts"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["counts"][filled] / n * gap))


# -- everything at once ---------------------------------------------------------------------
def classification_metrics(
    y_true: Any, probs: Any, task: Task | str, threshold: float | None = None, n_bins: int = 15
) -> dict[str, float]:
    """Every metric that applies to ``task``, under the stable names of :data:`METRIC_NAMES`.

    ``threshold`` is the binary operating threshold chosen on validation. With it the result also
    holds ``"acc@threshold"`` and the threshold-dependent metrics (sensitivity, specificity, PPV,
    NPV, F1, balanced accuracy) are taken at it; without it they are taken at 0.5. ``"acc"`` is
    always MedMNIST's 0.5 / argmax accuracy. For binary (and multi-label) the result also holds
    ``"threshold"``: the threshold the threshold-dependent metrics used. Multi-label accepts a
    scalar or per-label threshold (a per-label one is not stored in the result).
    ``kappa_quadratic`` is reported for ordinal tasks only. Undefined values are NaN.
    """
    task = _task(task)
    y, p = _check(y_true, probs, task)
    if threshold is not None and task in (Task.MULTICLASS, Task.ORDINAL):
        raise ValueError(f"a decision threshold does not apply to {task.value} (argmax) predictions")
    t = 0.5 if threshold is None else threshold
    out: dict[str, float] = {"auc": auc(y, p, task), "acc": accuracy(y, p, task)}
    if threshold is not None:
        out["acc@threshold"] = accuracy_at_threshold(y, p, threshold, task)
    counts = _one_vs_rest_counts(y, p, task, t)
    for name, values in _rates(counts).items():
        out[name] = _mean_strict(values)
    if task in (Task.MULTICLASS, Task.ORDINAL):
        out["balanced_accuracy"] = _mean_strict(_rates(counts)["sensitivity"])
    if task is Task.ORDINAL:
        out["kappa_quadratic"] = kappa_quadratic(y, p, task)
    out["brier"] = brier(y, p, task)
    out["ece"] = ece(y, p, task, n_bins)
    if task is Task.BINARY or (task is Task.MULTILABEL and np.ndim(t) == 0):
        out["threshold"] = float(t)
    return out


# -- accumulating classes (MONAI's Cumulative pattern) ----------------------------------------
class CumulativeMetric:
    """Collects ``(y_true, probs)`` batches with :meth:`update`; :meth:`compute` applies ``fn`` to all.

    ``fn(y_true, probs, **kwargs)`` is any metric of this module. Batches may be numpy arrays or
    torch tensors. ``compute`` on an empty accumulator returns NaN.
    """

    def __init__(self, fn: Callable[..., Any], **kwargs: Any):
        self.fn = fn
        self.kwargs = kwargs
        self.reset()

    def reset(self) -> None:
        self._y: list[np.ndarray] = []
        self._p: list[np.ndarray] = []

    def update(self, y_true: Any, probs: Any) -> None:
        y, p = as_numpy(y_true), as_numpy(probs)
        if len(y) != len(p):
            raise ValueError(f"batch has {len(y)} labels but {len(p)} probability rows")
        self._y.append(y)
        self._p.append(p)

    def __len__(self) -> int:
        return sum(len(y) for y in self._y)

    def compute(self) -> Any:
        if not self._y:
            return float("nan")
        return self.fn(np.concatenate(self._y), np.concatenate(self._p), **self.kwargs)


class AUC(CumulativeMetric):
    """Accumulating :func:`auc`."""

    def __init__(self, task: Task | str):
        super().__init__(auc, task=_task(task))


class Accuracy(CumulativeMetric):
    """Accumulating :func:`accuracy` (MedMNIST's definition)."""

    def __init__(self, task: Task | str):
        super().__init__(accuracy, task=_task(task))


class Brier(CumulativeMetric):
    """Accumulating :func:`brier`."""

    def __init__(self, task: Task | str):
        super().__init__(brier, task=_task(task))


class ECE(CumulativeMetric):
    """Accumulating :func:`ece`."""

    def __init__(self, task: Task | str, n_bins: int = 15):
        super().__init__(ece, task=_task(task), n_bins=n_bins)


class ClassificationMetrics(CumulativeMetric):
    """Accumulating :func:`classification_metrics`: ``compute()`` returns the whole dict."""

    def __init__(self, task: Task | str, threshold: float | None = None):
        super().__init__(classification_metrics, task=_task(task), threshold=threshold)
