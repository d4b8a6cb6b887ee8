"""Calibration: temperature scaling, reliability curves and diagrams.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T > 0 fitted by
minimizing the negative log-likelihood on the VALIDATION split (never on test); the argmax, and
so the accuracy, does not change. Multi-label models use ONE shared temperature for all labels
(sigmoid of logit / T, binary cross-entropy summed over labels), not per-label Platt scaling:
one parameter cannot over-fit rare labels and keeps the bundle's model.json simple.
Binary models may give (N, 2) logits (softmax) or one logit per case (N,) (sigmoid).

T is found by scipy's bounded scalar minimization of the NLL over log T in [log 0.05, log 20]
(the NLL is convex in 1/T, so the minimum is unique).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax

from medlens.data.sample import Task
from medlens.evaluation import metrics as M

__all__ = ["fit_temperature", "apply_temperature", "negative_log_likelihood", "reliability_curve", "plot_reliability"]

T_BOUNDS = (0.05, 20.0)


def _is_multilabel(task: Task | str | None, y: np.ndarray | None = None) -> bool:
    if task is not None:
        return Task(task) is Task.MULTILABEL
    return y is not None and y.ndim == 2


def _nll(logits: np.ndarray, y: np.ndarray, multilabel: bool, t: float) -> float:
    z = logits / t
    if multilabel or z.ndim == 1:  # sigmoid outputs, binary cross-entropy
        yy = y.astype(np.float64)
        ll = yy * log_expit(z) + (1 - yy) * log_expit(-z)
        return float(-ll.sum(axis=-1).mean() if ll.ndim == 2 else -ll.mean())
    return float(-log_softmax(z, axis=1)[np.arange(len(y)), y].mean())


def fit_temperature(logits_val: Any, y_val: Any, task: Task | str | None = None) -> float:
    """Temperature T > 0 minimizing the validation NLL of ``softmax(logits / T)``.

    ``task`` may be omitted: (N, L) multi-hot ``y_val`` means multi-label (one shared T over
    sigmoids), 1-D logits mean one binary logit per case.
    """
    z = M.as_numpy(logits_val).astype(np.float64)
    y = M.as_numpy(y_val).astype(np.int64)
    if len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need matching non-empty logits and labels, got {len(z)} and {len(y)}")
    multilabel = _is_multilabel(task, y)
    if multilabel and z.shape != y.shape:
        raise ValueError(f"multi-label logits {z.shape} and labels {y.shape} differ in shape")
    res = minimize_scalar(
        lambda log_t: _nll(z, y, multilabel, float(np.exp(log_t))),
        bounds=tuple(np.log(T_BOUNDS)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


def apply_temperature(logits: Any, temperature: float, task: Task | str | None = None) -> np.ndarray:
    """Probabilities from logits divided by ``temperature``.

    Softmax over (N, K) logits; sigmoid for multi-label (``task="multilabel"``); a 1-D binary
    logit vector gives (N, 2) probabilities ``[1 - p, p]`` (the package's binary convention).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = M.as_numpy(logits).astype(np.float64) / temperature
    if _is_multilabel(task):
        return expit(z)
    if z.ndim == 1:
        p = expit(z)
        return np.stack([1 - p, p], axis=1)
    return softmax(z, axis=1)


def probs_to_logits(probs: Any, task: Task | str | None = None) -> np.ndarray:
    """Logits recovered from probabilities: log p (softmax is shift-invariant), logit p (multi-label)."""
    p = np.clip(M.as_numpy(probs).astype(np.float64), 1e-12, 1.0 - 1e-12)
    if _is_multilabel(task):
        return np.log(p) - np.log1p(-p)
    return np.log(p)


def calibrate(probs: Any, temperature: float, task: Task | str | None = None) -> np.ndarray:
    """Temperature-scaled probabilities from uncalibrated ones: the one calibration rule.

    The evaluation stage (on predictions_*.csv) and every bundle prediction (on the model's own
    probabilities) go through this function, so they give the same numbers. ``temperature`` 1
    returns the probabilities unchanged.
    """
    p = M.as_numpy(probs).astype(np.float64)
    if temperature == 1.0:
        return p
    return apply_temperature(probs_to_logits(p, task), temperature, task)


def negative_log_likelihood(y_true: Any, probs: Any, task: Task | str | None = None) -> float:
    """Mean NLL of probabilities (cross-entropy; multi-label: binary cross-entropy summed over labels)."""
    y = M.as_numpy(y_true).astype(np.int64)
    p = np.clip(M.as_numpy(probs).astype(np.float64), 1e-12, 1 - 1e-12)
    if _is_multilabel(task, y):
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(axis=1).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def reliability_curve(y_true: Any, probs: Any, n_bins: int = 15, task: Task | str | None = None) -> dict[str, Any]:
    """Reliability-diagram data of top-label predictions in equal-width confidence bins.

    Returns ``bin_centers``, ``accuracy`` and ``confidence`` (per-bin means; NaN for empty bins),
    ``counts``, ``bin_edges`` and the ``ece`` these bins give (same definition as
    :func:`medlens.evaluation.metrics.ece`). ``task`` defaults to multi-label for (N, L) labels,
    else multi-class (top-label binning is the same for binary).
    """
    y = M.as_numpy(y_true)
    if task is None:
        task = Task.MULTILABEL if y.ndim == 2 else Task.MULTICLASS
    curve: dict[str, Any] = dict(M.calibration_bins(y, probs, task, n_bins))
    curve["ece"] = M.ece(y, probs, task, n_bins)
    return curve


def plot_reliability(
    curves: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "Reliability diagram"
) -> Path:
    """Overlay reliability curves (e.g. ``{"before": c0, "after T": c1}``) and save a PNG.

    Top panel: accuracy against mean confidence per non-empty bin, with the diagonal of perfect
    calibration; bottom panel: the share of cases per bin. Uses matplotlib's Agg canvas directly,
    so it touches no global backend state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    n_curves = max(len(curves), 1)
    for i, (name, c) in enumerate(curves.items()):
        counts = np.asarray(c["counts"])
        filled = counts > 0
        label = f"{name} (ECE {c['ece']:.3f})" if "ece" in c else name
        (line,) = top.plot(
            np.asarray(c["confidence"])[filled], np.asarray(c["accuracy"])[filled], marker="o", ms=4, label=label
        )
        edges = np.asarray(c.get("bin_edges", np.linspace(0, 1, len(counts) + 1)))
        width = np.diff(edges) / n_curves
        bottom.bar(
            edges[:-1] + i * width,
            counts / max(counts.sum(), 1),
            width=width,
            align="edge",
            color=line.get_color(),
            alpha=0.7,
        )
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set(xlabel="confidence", ylabel="share of cases")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
