"""Selective prediction: answer when sure, abstain and refer the case to a clinician otherwise.

Hand-written (no dependency has it). A case is ACCEPTED when its uncertainty is <= a threshold,
referred otherwise. The risk-coverage curve (Geifman & El-Yaniv, 2017) shows the error rate among
accepted cases (selective risk) against the share accepted (coverage) as the threshold moves;
AURC is the area under it (lower is better). The abstention threshold is chosen on VALIDATION
(:func:`choose_abstention_threshold`) and applied unchanged to test (:func:`selective_risk`).

Errors: a case is wrong when its argmax (binary: ``p > threshold``, 0.5 by default) differs from
the label; for multi-label the per-case error is the share of wrong labels (Hamming loss).

Uncertainty scores (higher = less sure), natural logarithms:

* from probabilities: ``max_prob`` = 1 - max_k p_k, ``entropy`` = -sum p log p, ``margin`` =
  1 - (p_(1) - p_(2)) (top two classes);
* from S stochastic draws (MC dropout, test-time augmentation, an ensemble), ``samples`` (S, N, K):
  ``predictive_entropy`` = H[mean_s p_s], ``mutual_information`` (BALD) = H[mean_s p_s] -
  mean_s H[p_s], ``variance`` = variance over draws of the probability of the predicted class.

Multi-label probabilities (N, L) are treated as L binary problems and a case's uncertainty is the
largest over its labels (the least sure finding decides a referral); pass ``multilabel=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import stats

from medlens.evaluation.metrics import as_numpy

__all__ = [
    "UNCERTAINTY_METHODS",
    "uncertainty_scores",
    "all_uncertainty_scores",
    "case_errors",
    "risk_coverage_curve",
    "coverage_at_risk",
    "choose_abstention_threshold",
    "selective_risk",
    "plot_risk_coverage",
]

PROB_METHODS = ("max_prob", "entropy", "margin")
SAMPLE_METHODS = ("predictive_entropy", "mutual_information", "variance")
UNCERTAINTY_METHODS = PROB_METHODS + SAMPLE_METHODS


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    return -np.sum(p * np.log(p), axis=-1)


def _as_classes(p: np.ndarray, multilabel: bool) -> np.ndarray:
    """Multi-label (..., L) probabilities as (..., L, 2) binary class probabilities."""
    return np.stack([1 - p, p], axis=-1) if multilabel else p


def _per_case(u: np.ndarray, multilabel: bool) -> np.ndarray:
    return u.max(axis=-1) if multilabel else u


def uncertainty_scores(
    probs: Any = None, method: str = "max_prob", samples: Any = None, multilabel: bool = False
) -> np.ndarray:
    """Per-case uncertainty (N,), higher = less sure (definitions in the module notes).

    ``max_prob``/``entropy``/``margin`` use ``probs`` (or the mean of ``samples`` when ``probs`` is
    None); ``predictive_entropy``/``mutual_information``/``variance`` need ``samples`` (S, N, K).
    """
    if method not in UNCERTAINTY_METHODS:
        raise ValueError(f"unknown uncertainty method {method!r}; choose from {UNCERTAINTY_METHODS}")
    s = None if samples is None else as_numpy(samples).astype(np.float64)
    if s is not None and s.ndim != 3:
        raise ValueError(f"samples must be (S, N, K), got shape {s.shape}")
    if probs is None:
        if s is None:
            raise ValueError("give probs or samples")
        probs = s.mean(axis=0)
    p = _as_classes(as_numpy(probs).astype(np.float64), multilabel)
    if method == "max_prob":
        u = 1.0 - p.max(axis=-1)
    elif method == "entropy":
        u = _entropy(p)
    elif method == "margin":
        top2 = np.sort(p, axis=-1)[..., -2:]
        u = 1.0 - (top2[..., 1] - top2[..., 0])
    else:
        if s is None:
            raise ValueError(f"{method!r} needs samples (S, N, K) of stochastic predictions")
        sc = _as_classes(s, multilabel)
        mean = sc.mean(axis=0)
        if method == "predictive_entropy":
            u = _entropy(mean)
        elif method == "mutual_information":
            u = np.maximum(_entropy(mean) - _entropy(sc).mean(axis=0), 0.0)
        else:
            pred = mean.argmax(axis=-1)
            chosen = np.take_along_axis(sc, np.broadcast_to(pred[None, ..., None], sc.shape[:-1] + (1,)), -1)
            u = chosen[..., 0].var(axis=0)
    return _per_case(u, multilabel)


def all_uncertainty_scores(probs: Any = None, samples: Any = None, multilabel: bool = False) -> dict[str, np.ndarray]:
    """Every applicable uncertainty score: the probability ones, plus the sample ones if ``samples``."""
    methods = UNCERTAINTY_METHODS if samples is not None else PROB_METHODS
    return {m: uncertainty_scores(probs, m, samples, multilabel) for m in methods}


def case_errors(y_true: Any, probs: Any, threshold: float | None = None) -> np.ndarray:
    """Per-case error (N,): 0/1 for class labels, Hamming loss for multi-hot labels."""
    y, p = as_numpy(y_true), as_numpy(probs).astype(np.float64)
    t = 0.5 if threshold is None else threshold
    if y.ndim == 2:
        return np.mean((p > t) != (y == 1), axis=1)
    if threshold is not None and p.shape[1] == 2:
        return ((p[:, 1] > t).astype(np.int64) != y).astype(np.float64)
    return (p.argmax(axis=1) != y).astype(np.float64)


def risk_coverage_curve(y_true: Any, probs: Any, uncertainty: Any, threshold: float | None = None) -> dict[str, Any]:
    """Selective risk at every coverage reachable by thresholding ``uncertainty``.

    Returns arrays ordered by increasing coverage: ``coverage`` (accepted share), ``risk`` (mean
    error among accepted), ``thresholds`` (accept iff uncertainty <= threshold gives that point;
    tied uncertainties enter together), ``n_accepted`` and ``n_errors``; and ``aurc``, the area
    under the step curve (equals the mean selective risk over k = 1..N without ties).
    """
    err = case_errors(y_true, probs, threshold)
    u = as_numpy(uncertainty).astype(np.float64).ravel()
    if len(u) != len(err) or len(u) == 0:
        raise ValueError(f"need one uncertainty per case: {len(u)} for {len(err)} cases")
    order = np.argsort(u, kind="mergesort")
    us, cum = u[order], np.cumsum(err[order])
    ends = np.flatnonzero(np.r_[us[1:] != us[:-1], True])  # last case of each tied group
    n_acc = ends + 1
    coverage = n_acc / len(u)
    risk = cum[ends] / n_acc
    aurc = float(np.sum(risk * np.diff(np.r_[0.0, coverage])))
    return {
        "coverage": coverage,
        "risk": risk,
        "thresholds": us[ends],
        "n_accepted": n_acc,
        "n_errors": cum[ends],
        "aurc": aurc,
    }


def coverage_at_risk(curve: Mapping[str, Any], target_risk: float) -> tuple[float, float]:
    """The largest coverage whose selective risk is <= ``target_risk``, and its threshold.

    When no point reaches the target, every case is referred: ``(0.0, -inf)``.
    """
    risk = np.asarray(curve["risk"])
    ok = np.flatnonzero(risk <= target_risk + 1e-12)
    if ok.size == 0:
        return 0.0, float("-inf")
    i = ok[np.argmax(np.asarray(curve["coverage"])[ok])]
    return float(curve["coverage"][i]), float(curve["thresholds"][i])


def choose_abstention_threshold(
    y_val: Any,
    probs_val: Any,
    uncertainty_val: Any,
    target_risk: float,
    delta: float | None = None,
    threshold: float | None = None,
) -> float:
    """The uncertainty threshold reaching ``target_risk`` with the most coverage, on VALIDATION.

    Apply it unchanged to test; the test risk will scatter around the target. With ``delta``
    (e.g. 0.05) a point qualifies only when the one-sided (1 - delta) Clopper-Pearson upper bound
    of its risk is <= the target: a more conservative choice (not corrected for trying many
    thresholds). Returns -inf (refer everything) when no threshold qualifies.
    """
    curve = risk_coverage_curve(y_val, probs_val, uncertainty_val, threshold)
    if delta is not None:
        errors = np.round(curve["n_errors"]).astype(np.int64)  # Hamming losses round to cases
        upper = stats.beta.ppf(1 - delta, errors + 1, np.maximum(curve["n_accepted"] - errors, 1))
        upper = np.where(errors >= curve["n_accepted"], 1.0, upper)
        curve = {**curve, "risk": upper}
    return coverage_at_risk(curve, target_risk)[1]


def selective_risk(
    y_true: Any, probs: Any, uncertainty: Any, abstention_threshold: float, threshold: float | None = None
) -> dict[str, float]:
    """Coverage and risk when cases with uncertainty > ``abstention_threshold`` are referred."""
    err = case_errors(y_true, probs, threshold)
    accepted = as_numpy(uncertainty).astype(np.float64).ravel() <= abstention_threshold
    n_acc = int(accepted.sum())
    return {
        "coverage": n_acc / len(err),
        "risk": float(err[accepted].mean()) if n_acc else float("nan"),
        "n_accepted": n_acc,
        "n_referred": int(len(err) - n_acc),
    }


def plot_risk_coverage(curves: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "Risk-coverage") -> Path:
    """Overlay risk-coverage curves (``{name: curve}``) with their AURC and save a PNG (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, c in curves.items():
        ax.step(c["coverage"], c["risk"], where="post", label=f"{name} (AURC {c['aurc']:.3f})")
    ax.set(
        xlim=(0, 1),
        ylim=(0, None),
        xlabel="coverage (share of cases answered)",
        ylabel="risk (error rate among answered)",
        title=title,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
