"""Choosing a binary operating threshold — on the VALIDATION split only.

The threshold is a model parameter like any weight: choosing it on the test split would make
every test metric taken at it optimistic. Call :func:`choose_threshold` with validation labels and
scores, store the result with the model (model.json), and apply it unchanged to test.

Decision rule (the package's): a case is positive when ``score > threshold``. The returned
threshold lies halfway between two neighbouring distinct validation scores, so the rule does not
depend on ``>`` versus ``>=`` for the validation cases and generalizes symmetrically.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from medlens.errors import MedlensError
from medlens.evaluation.metrics import as_numpy, positive_scores

__all__ = ["choose_threshold", "THRESHOLD_METHODS"]

THRESHOLD_METHODS = ("youden", "sensitivity", "specificity")


def _between(scores: np.ndarray, roc_threshold: float) -> float:
    """A threshold t with ``score > t`` exactly when ``score >= roc_threshold`` on ``scores``."""
    if not np.isfinite(roc_threshold):  # roc_curve's "nothing positive" point
        return float(scores.max())
    lower = scores[scores < roc_threshold]
    if lower.size == 0:  # everything positive
        return float(np.nextafter(roc_threshold, -np.inf))
    return float((roc_threshold + lower.max()) / 2)


def choose_threshold(y_true_val: Any, pos_scores_val: Any, method: str = "youden", target: float = 0.95) -> float:
    """The operating threshold chosen on VALIDATION data (never pass test data here).

    ``pos_scores_val`` is the positive-class score (N,), or binary probabilities (N, 2).

    * ``"youden"``: maximizes Youden's J = sensitivity + specificity - 1 (first maximum, i.e.
      the highest such threshold).
    * ``"sensitivity"``: the highest threshold whose validation sensitivity is >= ``target``
      (the most specific operating point that still reaches the target sensitivity; a screening
      setting).
    * ``"specificity"``: the lowest threshold whose validation specificity is >= ``target``.

    Raises :class:`~medlens.errors.MedlensError` when validation lacks either class.
    """
    y = as_numpy(y_true_val).astype(np.int64).ravel()
    s = positive_scores(pos_scores_val)
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose from {THRESHOLD_METHODS}")
    if not (0.0 <= target <= 1.0):
        raise ValueError(f"target must lie in [0, 1], got {target}")
    n_pos = int(np.sum(y == 1))
    if n_pos == 0 or n_pos == len(y):
        raise MedlensError(
            "the validation split must contain positive and negative cases "
            f"to choose a threshold (it has {n_pos} positive of {len(y)})"
        )
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    if method == "youden":
        i = int(np.argmax(tpr - fpr))
    elif method == "sensitivity":
        i = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        i = int(np.flatnonzero(1 - fpr >= target - 1e-12)[-1])
    return _between(s, float(thr[i]))
