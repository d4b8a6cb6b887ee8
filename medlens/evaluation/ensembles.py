"""Ensembles of trained models' probabilities: averaging, and stacking fitted on validation only.

* :func:`average` — the mean of the members' probabilities (soft voting): seeds of one recipe, or
  several families.
* :func:`stack` — a logistic regression on the members' log-odds (binary, multi-label: per label)
  or log-probabilities (multi-class), fitted on the **validation** predictions and labels. It takes
  no labels of the evaluated split, so it cannot see them. Its own validation probabilities are
  out-of-fold (stratified k-fold on validation), so that what is chosen on them afterwards (the
  temperature, the decision threshold) is not chosen on cases the stacker was fitted to. Its L2
  strength is chosen by cross-validated log-loss inside whatever it is fitted on (scikit-learn's
  ``LogisticRegressionCV``): many members' scores on a small validation set (RetinaMNIST: 30
  features, 120 cases) overfit the default strength.

Probabilities are (N, K) rows that sum to one (binary: K = 2) or, multi-label, (N, K) per-label
probabilities — the layout of ``predictions_*.csv``. scikit-learn does the fitting.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from medlens.errors import MedlensError

EPS = 1e-6
STACK_FOLDS = 5
STACK_CS = (0.001, 0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried, chosen by inner cross-validation


def average(probs: Sequence[np.ndarray]) -> np.ndarray:
    """The members' mean probability per case and class."""
    arrays = [np.asarray(p, dtype=np.float64) for p in probs]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        raise MedlensError("an ensemble needs members with probabilities of the same shape")
    return np.mean(arrays, axis=0)


def stack(
    p_val: Sequence[np.ndarray],
    y_val: np.ndarray,
    p_eval: Sequence[np.ndarray],
    task: str,
    *,
    folds: int = STACK_FOLDS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold validation probabilities, evaluated-split probabilities) of a logistic
    regression on the members' scores, fitted on validation (each fold's model for its held-out
    part; the model fitted on all of validation for the evaluated split)."""
    y_val = np.asarray(y_val)
    x_val, x_eval = _features(p_val, task), _features(p_eval, task)
    if task == "multilabel":
        columns = [
            _stack_one(x_val[j], y_val[:, j], x_eval[j], folds, seed, fallback=(p_val, p_eval, j))
            for j in range(y_val.shape[1])
        ]
        return np.stack([c[0] for c in columns], axis=1), np.stack([c[1] for c in columns], axis=1)
    k = np.asarray(p_val[0]).shape[1]
    oof, out = _stack_one(x_val[0], y_val, x_eval[0], folds, seed, n_classes=k)
    return oof, out


def _features(probs: Sequence[np.ndarray], task: str) -> list[np.ndarray]:
    """Per output column (multi-label: per label), the stacker's inputs (N, features)."""
    arrays = [np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS) for p in probs]
    if not arrays or any(a.shape != arrays[0].shape for a in arrays):
        raise MedlensError("an ensemble needs members with probabilities of the same shape")
    if task == "multilabel":
        return [np.stack([np.log(a[:, j] / (1 - a[:, j])) for a in arrays], axis=1) for j in range(arrays[0].shape[1])]
    if task == "binary":
        return [np.stack([np.log(a[:, 1] / a[:, 0]) for a in arrays], axis=1)]
    return [np.concatenate([np.log(a) for a in arrays], axis=1)]


def _fold_count(y: np.ndarray, folds: int) -> int:
    """Stratified folds ``y`` allows: ``folds``, or fewer when a class has fewer cases."""
    counts = np.bincount(y)
    return int(min(folds, counts[counts > 0].min()))


def _stack_one(
    x_val: np.ndarray,
    y: np.ndarray,
    x_eval: np.ndarray,
    folds: int,
    seed: int,
    *,
    n_classes: int = 2,
    fallback: tuple | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One logistic regression: (out-of-fold val probabilities, eval probabilities); binary and
    multi-class give (N, n_classes), a multi-label column (N,)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).astype(int)
    counts = np.bincount(y, minlength=2)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < 2:
        if fallback is not None:  # a multi-label column with (almost) one class on validation: the mean
            p_val, p_eval, j = fallback
            return average([p[:, j] for p in p_val]), average([p[:, j] for p in p_eval])
        raise MedlensError("stacking needs at least two validation cases of each of two classes")
    n_folds = _fold_count(y, folds)

    def fit(x: np.ndarray, target: np.ndarray):
        inner = _fold_count(target, folds)
        if inner < 2:  # too few cases of a class to choose the strength: scikit-learn's default
            return LogisticRegression(max_iter=2000).fit(x, target)
        cv = StratifiedKFold(inner, shuffle=True, random_state=seed)
        model = LogisticRegressionCV(Cs=list(STACK_CS), cv=cv, scoring="neg_log_loss", max_iter=2000)
        with warnings.catch_warnings():  # scikit-learn 1.9 announces new defaults of l1_ratios (still L2) and of
            warnings.simplefilter("ignore", FutureWarning)  # its fitted attributes; neither changes this fit
            return model.fit(x, target)

    def proba(model, x: np.ndarray) -> np.ndarray:
        p = np.full((len(x), max(n_classes, 2)), EPS)
        p[:, model.classes_] = model.predict_proba(x)
        p /= p.sum(axis=1, keepdims=True)
        return p[:, 1] if fallback is not None else p

    oof = np.zeros((len(y), max(n_classes, 2))) if fallback is None else np.zeros(len(y))
    for train, held in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x_val, y):
        oof[held] = proba(fit(x_val[train], y[train]), x_val[held])
    return oof, proba(fit(x_val, y), x_eval)
