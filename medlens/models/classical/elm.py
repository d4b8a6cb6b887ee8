"""Extreme learning machine (ELM) classifier with the scikit-learn estimator API.

Written by hand because no maintained library provides one (``hpelm`` and
``sklearn-extensions`` have had no release for years). It follows Huang et al., "Extreme
learning machine for regression and multiclass classification" (IEEE SMC-B, 2012): a random,
fixed hidden layer and ridge-regularised least-squares output weights.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50))),
    "tanh": np.tanh,
}


class ELMClassifier(ClassifierMixin, BaseEstimator):
    """Extreme learning machine: random hidden layer + ridge least-squares readout.

    Hidden layer: ``H = activation(X @ W + b)`` with ``W ~ N(0, 1/n_features)`` and
    ``b ~ N(0, 1)``, drawn in :meth:`fit` from ``random_state`` and then fixed (inputs are
    expected to be standardised, e.g. by a ``StandardScaler`` before it).

    Output layer: targets are one-hot class indicators (one column per class, also for binary
    problems) or the 0/1 label matrix for multi-label ``y``. The weights minimise
    ``||Hc @ beta - Tc||^2 + alpha * ||beta||^2`` on centred ``H`` and ``T`` (the bias is not
    penalised), solved in the primal form ``(Hc'Hc + alpha I) beta = Hc'Tc`` when
    ``n_hidden <= n_samples`` and otherwise in the dual form
    ``beta = Hc' (Hc Hc' + alpha I)^-1 Tc``, whichever system is smaller (both are exact).

    Probabilities: for single-label problems ``predict_proba`` is the softmax of the raw
    outputs; it keeps their ranking (so AUC is that of the outputs) and agrees with
    :meth:`predict` (argmax), but is not calibrated: the least-squares outputs live on a 0..1
    scale, so probabilities are moderate; calibrate afterwards (temperature scaling) if needed.
    For multi-label ``y`` each label's probability is ``sigmoid(2 * o - 1)``, the same
    softmax applied to the label's two outputs ``(1 - o, o)``; ``predict`` thresholds ``o`` at 0.5.

    Parameters
    ----------
    n_hidden : int
        Number of random hidden units.
    activation : {"relu", "sigmoid", "tanh"}
        Hidden-unit non-linearity.
    alpha : float
        Ridge penalty on the output weights (absolute, as in ``sklearn.linear_model.Ridge``).
    random_state : int, RandomState or None
        Seed of the hidden layer.

    Attributes
    ----------
    classes_ : ndarray
        Class labels (single-label) or ``arange(n_labels)`` (multi-label).
    hidden_weights_, hidden_bias_, coef_, intercept_ : ndarray
        The random hidden layer and the fitted output layer.
    """

    def __init__(self, n_hidden: int = 1000, activation: str = "relu", alpha: float = 1e-3, random_state=None):
        self.n_hidden = n_hidden
        self.activation = activation
        self.alpha = alpha
        self.random_state = random_state

    def fit(self, X, y):
        """Draw the hidden layer and solve for the output weights."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if int(self.n_hidden) < 1 or self.alpha < 0:
            raise ValueError(f"n_hidden must be >= 1 and alpha >= 0, got {self.n_hidden}, {self.alpha}")
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=False, dtype=np.float64)
        targets = self._encode_targets(y)

        rng = check_random_state(self.random_state)
        n_features = X.shape[1]
        self.hidden_weights_ = rng.standard_normal((n_features, int(self.n_hidden))) / np.sqrt(n_features)
        self.hidden_bias_ = rng.standard_normal(int(self.n_hidden))
        hidden = self._hidden(X)

        h_mean, t_mean = hidden.mean(axis=0), targets.mean(axis=0)
        self.coef_ = ridge_solve(hidden - h_mean, targets - t_mean, self.alpha)
        self.intercept_ = t_mean - h_mean @ self.coef_
        return self

    def _encode_targets(self, y) -> np.ndarray:
        kind = type_of_target(y)
        if kind == "multilabel-indicator":
            self.multilabel_ = True
            self.classes_ = np.arange(y.shape[1])
            return np.asarray(y, dtype=np.float64)
        if y.ndim == 2:
            if y.shape[1] != 1:
                raise ValueError(f"2D y must be a 0/1 multi-label indicator matrix, got type '{kind}'")
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected; it is raveled.",
                DataConversionWarning,
                stacklevel=3,
            )
            y = y.ravel()
        check_classification_targets(y)
        self.multilabel_ = False
        self.classes_, codes = np.unique(y, return_inverse=True)
        return np.eye(len(self.classes_))[codes]

    def _hidden(self, X: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.activation](X @ self.hidden_weights_ + self.hidden_bias_)

    def _outputs(self, X) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._hidden(X) @ self.coef_ + self.intercept_

    def predict(self, X) -> np.ndarray:
        """Class labels (N,), or a 0/1 matrix (N, L) for a multi-label fit."""
        out = self._outputs(X)
        if self.multilabel_:
            return (out > 0.5).astype(np.int64)
        return self.classes_[np.argmax(out, axis=1)]

    def predict_proba(self, X) -> np.ndarray:
        """(N, n_classes) softmax of the outputs, or (N, L) per-label probabilities (multi-label)."""
        out = self._outputs(X)
        if self.multilabel_:
            return 1.0 / (1.0 + np.exp(-np.clip(2.0 * out - 1.0, -50, 50)))
        z = out - out.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True  # multi-label 0/1 indicator y only (not multi-class per output)
        return tags


def ridge_solve(H: np.ndarray, T: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge solution ``beta`` (h, k) of ``min ||H beta - T||^2 + alpha ||beta||^2``.

    Uses the primal system (h x h) when ``h <= n`` and the dual system (n x n) otherwise; both
    give the same ``beta``. Falls back to a least-squares solver when the system is singular
    (``alpha = 0`` with collinear units).
    """
    n, h = H.shape
    if h <= n:
        A, B = H.T @ H, H.T @ T
    else:
        A, B = H @ H.T, T
    A[np.diag_indices_from(A)] += alpha
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
            sol = scipy.linalg.solve(A, B, assume_a="pos")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, scipy.linalg.LinAlgWarning, ValueError):
        sol = scipy.linalg.lstsq(A, B)[0]
    return sol if h <= n else H.T @ sol
