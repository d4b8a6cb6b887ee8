"""Probabilities of a fitted classical estimator, columns in class-index order."""

from __future__ import annotations

import numpy as np

from medlens.data.sample import Task


def predict_proba_classical(estimator, X: np.ndarray, task: Task | str, *, n_classes: int | None = None) -> np.ndarray:
    """Class probabilities (N, K) of a fitted classical estimator on images ``X``.

    Binary gives (N, 2), multi-class / ordinal (N, K) with column k the probability of class
    index k (K = ``n_classes`` when given, so classes missing from training get zero columns),
    multi-label (N, L) of per-label positive probabilities (list outputs are stacked).
    """
    task = Task(task)
    if hasattr(estimator, "predict_proba"):
        proba = estimator.predict_proba(X)
        return align_proba(estimator, proba, task, n_classes)
    # estimators without probabilities (e.g. an SVC fitted with probability=False)
    dec = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if task is Task.MULTILABEL:
        return 1.0 / (1.0 + np.exp(-dec))
    if dec.ndim == 1:
        dec = np.column_stack([-dec, dec]) / 2.0
    return align_proba(estimator, softmax(dec), task, n_classes)


def align_proba(estimator, proba, task: Task, n_classes: int | None = None) -> np.ndarray:
    """Put probability columns in class-index order (0..K-1); stack multi-label list outputs."""
    if task is Task.MULTILABEL:
        if isinstance(proba, list):  # one (N, n_classes_j) array per label (e.g. a native random forest)
            label_classes = getattr(estimator, "classes_", None)
            cols = []
            for j, p in enumerate(proba):
                cls = np.asarray(label_classes[j]) if isinstance(label_classes, list) else np.arange(p.shape[1])
                cols.append(p[:, cls == 1].sum(axis=1) if p.shape[1] != 2 else p[:, 1])
            proba = np.column_stack(cols)
        return np.asarray(proba, dtype=np.float64)
    proba = np.asarray(proba, dtype=np.float64)
    classes = np.asarray(getattr(estimator, "classes_", np.arange(proba.shape[1]))).astype(np.int64)
    k = max(int(classes.max()) + 1, n_classes or 0, 2 if task is Task.BINARY else 0)
    if proba.shape[1] == k and np.array_equal(classes, np.arange(k)):
        return proba
    out = np.zeros((proba.shape[0], k))
    out[:, classes] = proba
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
