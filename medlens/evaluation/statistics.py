"""Uncertainty of metrics and tests between models: bootstrap, DeLong, McNemar, Holm.

Hand-written here because no dependency of the project has them in this form:

* :func:`bootstrap_ci` / :func:`bootstrap_metrics` — seeded, class-stratified percentile
  bootstrap. ``bootstrap_metrics`` draws one (B, N) index matrix and evaluates every metric of
  :func:`~medlens.evaluation.metrics.classification_metrics` on all B resamples at once, by
  turning each resample into a vector of per-sample multiplicities (weights) and computing the
  metrics as weighted sums (matrix products). The tests check that this gives exactly the values
  of the plain metric functions on the resampled data.
* :func:`delong_test` / :func:`delong_ci` — DeLong, DeLong & Clarke-Pearson (1988) with the fast
  midrank algorithm of Sun & Xu (2014), IEEE Signal Processing Letters 21(11).
* :func:`mcnemar_test` — paired test of two classifiers' correctness.
* :func:`holm_correction` — Holm's step-down adjustment of p-values.
* :func:`paired_bootstrap_test` — paired bootstrap test of a metric difference (e.g. the macro
  one-vs-rest AUC of two multi-class models, where DeLong per class is not standard).
* :func:`unpaired_bootstrap_difference` — interval of a metric difference between two
  independent samples (subgroups of a test set; an external set against the internal one), each
  resampled on its own.

Undefined resamples: a resample on which a metric is undefined (NaN, or a ``ValueError`` from a
metric function, e.g. a class missing from a non-stratified resample) is skipped when computing
the interval and counted in ``n_undefined``.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn.exceptions import UndefinedMetricWarning

from medlens.data.sample import Task
from medlens.evaluation import metrics as M

__all__ = [
    "BootstrapCI",
    "resample_indices",
    "bootstrap_ci",
    "bootstrap_metrics",
    "paired_bootstrap_test",
    "unpaired_bootstrap_difference",
    "delong_test",
    "delong_ci",
    "mcnemar_test",
    "holm_correction",
]

MetricFn = Callable[[np.ndarray, np.ndarray], float]


class BootstrapCI(tuple):
    """``(point, low, high)`` that also carries ``n_resamples`` and ``n_undefined``."""

    def __new__(cls, point: float, low: float, high: float, n_resamples: int, n_undefined: int):
        self = super().__new__(cls, (float(point), float(low), float(high)))
        self.n_resamples = int(n_resamples)
        self.n_undefined = int(n_undefined)
        return self

    point = property(lambda self: self[0])
    low = property(lambda self: self[1])
    high = property(lambda self: self[2])

    def __repr__(self) -> str:
        return (
            f"BootstrapCI(point={self[0]:.4g}, low={self[1]:.4g}, high={self[2]:.4g}, "
            f"n_resamples={self.n_resamples}, n_undefined={self.n_undefined})"
        )


# -- resampling -----------------------------------------------------------------------------
def resample_indices(
    y_true: Any, n_resamples: int, seed: int | np.random.Generator = 0, stratified: bool = True
) -> np.ndarray:
    """A (n_resamples, N) matrix of bootstrap indices.

    Stratified (class-wise) for (N,) class labels: every resample keeps each class's count, so no
    resample lacks a class. Multi-label (N, L) targets are resampled without stratification (the
    label combinations are too many to stratify on).
    """
    y = M.as_numpy(y_true)
    rng = np.random.default_rng(seed)
    n = len(y)
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if not stratified or y.ndim != 1:
        return rng.integers(0, n, size=(n_resamples, n), dtype=np.int64)
    columns = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        columns.append(members[rng.integers(0, len(members), size=(n_resamples, len(members)))])
    return np.concatenate(columns, axis=1)


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    """Per-sample multiplicities (B, N) of the resamples in an index matrix (B, N)."""
    b = len(idx)
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _percentile_ci(point: float, values: np.ndarray, alpha: float) -> BootstrapCI:
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    if not ok.any():
        return BootstrapCI(point, np.nan, np.nan, len(values), len(values))
    low, high = np.percentile(values[ok], [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return BootstrapCI(point, low, high, len(values), int((~ok).sum()))


def _safe(metric_fn: MetricFn, y: np.ndarray, p: np.ndarray) -> float:
    """The metric, or NaN where it is undefined (counted by the caller, so not warned about)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(metric_fn(y, p))
    except ValueError:  # e.g. a class missing from a non-stratified resample
        return float("nan")


# -- vectorized metrics on weighted resamples -------------------------------------------------
def _weighted_auc(pos: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC for each row of multiplicities ``w`` (B, N); ties count one half."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tied group
    out = np.empty(len(w))
    chunk = max(1, 2_000_000 // max(len(s), 1))
    for i in range(0, len(w), chunk):
        ws = w[i : i + chunk][:, order]
        wp = np.add.reduceat(ws * pos[order], starts, axis=1)
        wn = np.add.reduceat(ws * ~pos[order], starts, axis=1)
        below = np.cumsum(wn, axis=1) - wn
        num = np.sum(wp * (below + 0.5 * wn), axis=1)
        out[i : i + chunk] = M._div(num, wp.sum(axis=1) * wn.sum(axis=1))
    return out


def _strict_mean(values: np.ndarray) -> np.ndarray:
    """Row means that are NaN when a row has any NaN (matches metrics._mean_strict)."""
    return values.mean(axis=1)


def _resampled_metrics(
    y: np.ndarray, p: np.ndarray, task: Task, threshold: float | None, w: np.ndarray, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Every metric of classification_metrics for each row of multiplicities ``w`` (B, N)."""
    n = w.sum(axis=1)  # = N for every bootstrap resample; general for any weights
    t = 0.5 if threshold is None else threshold
    out: dict[str, np.ndarray] = {}
    if task is Task.BINARY:
        score = p[:, -1]
        yt = (y == 1)[:, None]
        out["auc"] = _weighted_auc(y == 1, score, w)
        out["acc"] = w @ ((score > 0.5) == (y == 1)) / n
        yp = (score > t)[:, None]
        if threshold is not None:
            out["acc@threshold"] = w @ (yp[:, 0] == yt[:, 0]) / n
    elif task is Task.MULTILABEL:
        yt = y == 1
        out["auc"] = _strict_mean(np.stack([_weighted_auc(yt[:, j], p[:, j], w) for j in range(y.shape[1])], 1))
        out["acc"] = w @ np.mean((p > 0.5) == yt, axis=1) / n
        yp = p > np.asarray(t)
        if threshold is not None:
            out["acc@threshold"] = w @ np.mean(yp == yt, axis=1) / n
    else:
        k = p.shape[1]
        pred = p.argmax(axis=1)
        yt = y[:, None] == np.arange(k)
        yp = pred[:, None] == np.arange(k)
        out["auc"] = _strict_mean(np.stack([_weighted_auc(yt[:, c], p[:, c], w) for c in range(k)], 1))
        out["acc"] = w @ (pred == y) / n
    counts = {"tp": w @ (yt & yp), "fp": w @ (~yt & yp), "tn": w @ (~yt & ~yp), "fn": w @ (yt & ~yp)}
    rates = M._rates(counts)
    for name, values in rates.items():
        out[name] = _strict_mean(values)
    if task in (Task.MULTICLASS, Task.ORDINAL):
        out["balanced_accuracy"] = _strict_mean(rates["sensitivity"])
    if task is Task.ORDINAL:
        out["kappa_quadratic"] = _weighted_kappa(y, p.argmax(axis=1), p.shape[1], w)
    # Brier
    if task is Task.BINARY:
        sq = (p[:, -1] - y) ** 2
    elif task is Task.MULTILABEL:
        sq = np.mean((p - y) ** 2, axis=1)
    else:
        sq = np.sum((p - np.eye(p.shape[1])[y]) ** 2, axis=1)
    out["brier"] = w @ sq / n
    # ECE: per-sample bin contributions, so multi-label's pooled entries weigh with their sample
    conf, correct = M._top_label(y, p, task)
    per_sample = 1 if task is not Task.MULTILABEL else y.shape[1]
    b = M.bin_index(conf, n_bins).reshape(len(y), per_sample)
    onehot = np.zeros((len(y), per_sample, n_bins))
    np.put_along_axis(onehot, b[..., None], 1.0, axis=2)
    acc_sum = np.einsum("nlb,nl->nb", onehot, correct.reshape(len(y), per_sample))
    conf_sum = np.einsum("nlb,nl->nb", onehot, conf.reshape(len(y), per_sample))
    out["ece"] = np.abs(w @ acc_sum - w @ conf_sum).sum(axis=1) / (n * per_sample)
    return out


def _resampled_in_chunks(
    y: np.ndarray, p: np.ndarray, task: Task, threshold: float | None, idx: np.ndarray, max_cells: int = 5_000_000
) -> dict[str, np.ndarray]:
    """:func:`_resampled_metrics` for the resamples of ``idx``, a block of rows at a time (memory)."""
    rows = max(1, max_cells // max(len(y), 1))
    parts = [
        _resampled_metrics(y, p, task, threshold, _weights(idx[i : i + rows], len(y))) for i in range(0, len(idx), rows)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _weighted_kappa(y: np.ndarray, pred: np.ndarray, k: int, w: np.ndarray) -> np.ndarray:
    """Quadratic-weighted Cohen's kappa per row of ``w`` (scikit-learn's formula)."""
    cells = np.zeros((len(y), k * k))
    cells[np.arange(len(y)), y * k + pred] = 1.0
    conf = (w @ cells).reshape(len(w), k, k)
    total = conf.sum(axis=(1, 2))
    expected = conf.sum(axis=2)[:, :, None] * conf.sum(axis=1)[:, None, :] / total[:, None, None]
    weights = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    return 1 - M._div(np.sum(weights * conf, axis=(1, 2)), np.sum(weights * expected, axis=(1, 2)))


def _replicates(
    y: np.ndarray,
    probs: np.ndarray,
    metric: MetricFn | str,
    idx: np.ndarray,
    task: Task | None,
    threshold: float | None,
) -> np.ndarray:
    """The metric on every resample of ``idx``: vectorized for a metric name, else a loop."""
    if isinstance(metric, str):
        if task is None:
            raise ValueError("a metric given by name needs the task")
        y_, p_ = M._check(y, probs, task)
        return _resampled_in_chunks(y_, p_, task, threshold, idx)[metric]
    return np.array([_safe(metric, y[i], probs[i]) for i in idx])


def _point(
    y: np.ndarray, probs: np.ndarray, metric: MetricFn | str, task: Task | None, threshold: float | None
) -> float:
    if isinstance(metric, str):  # the vectorized code with unit weights: the plain metric
        y_, p_ = M._check(y, probs, task)
        return float(_resampled_metrics(y_, p_, task, threshold, np.ones((1, len(y_))))[metric][0])
    return _safe(metric, y, probs)


# -- bootstrap ------------------------------------------------------------------------------
def bootstrap_ci(
    y_true: Any,
    probs: Any,
    metric_fn: MetricFn | str,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    stratified: bool = True,
    alpha: float = 0.05,
    task: Task | str | None = None,
    threshold: float | None = None,
) -> BootstrapCI:
    """Percentile bootstrap interval of ``metric_fn(y_true, probs)``.

    ``metric_fn`` is a function of ``(y_true, probs)`` (called once per resample), or the name of
    a metric of :data:`~medlens.evaluation.metrics.METRIC_NAMES` together with ``task`` (and
    ``threshold``), which takes the fast vectorized path. Returns ``(point, low, high)`` where
    ``point`` is the metric on the full data; ``.n_undefined`` counts skipped resamples.
    """
    y, p = M.as_numpy(y_true), M.as_numpy(probs)
    task = None if task is None else Task(task)
    idx = resample_indices(y, n_resamples, seed, stratified)
    values = _replicates(y, p, metric_fn, idx, task, threshold)
    return _percentile_ci(_point(y, p, metric_fn, task, threshold), values, alpha)


def bootstrap_metrics(
    y_true: Any,
    probs: Any,
    task: Task | str,
    threshold: float | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    stratified: bool = True,
) -> dict[str, dict[str, float]]:
    """Every metric of ``classification_metrics`` with a percentile bootstrap interval.

    Returns ``{metric: {"value", "low", "high", "n_undefined"}}``; one index matrix serves all
    metrics, and all resamples are evaluated at once (see the module notes).
    """
    task = M._task(task)
    y, p = M._check(y_true, probs, task)
    point = M.classification_metrics(y, p, task, threshold)
    idx = resample_indices(y, n_resamples, seed, stratified)
    reps = _resampled_in_chunks(y, p, task, threshold, idx)
    out = {}
    for name, values in reps.items():
        ci = _percentile_ci(point[name], values, alpha)
        out[name] = {"value": ci.point, "low": ci.low, "high": ci.high, "n_undefined": ci.n_undefined}
    return out


def paired_bootstrap_test(
    y_true: Any,
    probs_a: Any,
    probs_b: Any,
    metric_fn: MetricFn | str,
    n_resamples: int = 1000,
    seed: int = 0,
    *,
    stratified: bool = True,
    alpha: float = 0.05,
    task: Task | str | None = None,
    threshold: float | None = None,
) -> dict[str, float]:
    """Paired bootstrap test of ``metric(a) - metric(b)`` on the same cases.

    Both models are evaluated on the same resamples. The p-value is two-sided from the normal
    approximation ``z = diff / sd(bootstrap diffs)`` (as pROC's ``roc.test(method="bootstrap")``);
    the interval is the percentile interval of the bootstrap differences. When every resample
    gives the same difference, p is 1 for a zero difference and 0 otherwise. Use it for the macro
    one-vs-rest AUC of multi-class models (``metric_fn="auc", task="multiclass"``).
    """
    y = M.as_numpy(y_true)
    pa, pb = M.as_numpy(probs_a), M.as_numpy(probs_b)
    task = None if task is None else Task(task)
    idx = resample_indices(y, n_resamples, seed, stratified)
    ma = _point(y, pa, metric_fn, task, threshold)
    mb = _point(y, pb, metric_fn, task, threshold)
    diffs = _replicates(y, pa, metric_fn, idx, task, threshold) - _replicates(y, pb, metric_fn, idx, task, threshold)
    ci = _percentile_ci(ma - mb, diffs, alpha)
    ok = np.isfinite(diffs)
    se = float(np.std(diffs[ok], ddof=1)) if ok.sum() > 1 else float("nan")
    if se > 0:
        z = (ma - mb) / se
        p_value = float(2 * stats.norm.sf(abs(z)))
    else:  # every resample gives the same difference: none (p = 1) or a certain one (p = 0)
        z, p_value = float("nan"), (1.0 if ma == mb else 0.0) if np.isfinite(se) else float("nan")
    return {
        "metric_a": ma,
        "metric_b": mb,
        "diff": ma - mb,
        "se": se,
        "z": z,
        "p_value": p_value,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "n_resamples": n_resamples,
        "n_undefined": ci.n_undefined,
    }


def unpaired_bootstrap_difference(
    y_a: Any,
    probs_a: Any,
    y_b: Any,
    probs_b: Any,
    task: Task | str,
    metrics: Sequence[str],
    *,
    threshold: float | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, BootstrapCI]:
    """Percentile intervals of ``metric(a) - metric(b)`` for two independent samples, per metric name.

    Each sample is resampled on its own (class-stratified, independent seeds) and the metrics of
    the two resample sets are subtracted pairwise; ``point`` is the difference on the full samples.
    """
    task = M._task(task)
    ya, pa = M._check(y_a, probs_a, task)
    yb, pb = M._check(y_b, probs_b, task)
    rng_a, rng_b = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    reps_a = _resampled_in_chunks(ya, pa, task, threshold, resample_indices(ya, n_resamples, rng_a))
    reps_b = _resampled_in_chunks(yb, pb, task, threshold, resample_indices(yb, n_resamples, rng_b))
    point_a = M.classification_metrics(ya, pa, task, threshold)
    point_b = M.classification_metrics(yb, pb, task, threshold)
    return {m: _percentile_ci(point_a[m] - point_b[m], reps_a[m] - reps_b[m], alpha) for m in metrics}


# -- DeLong ---------------------------------------------------------------------------------
def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each row of ``x`` with ties given their mean rank (Sun & Xu's midranks)."""
    return stats.rankdata(np.atleast_2d(x), axis=1)


def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance (k, k) for score rows ``scores`` (k, N).

    Sun & Xu (2014): with m positives and n negatives, X = positive scores, Y = negative scores,
    T_Z the midranks in the pooled sample, T_X / T_Y the midranks within each group:
    AUC = (sum T_Z[X] / m - (m + 1) / 2) / n, V10 = (T_Z[X] - T_X) / n,
    V01 = 1 - (T_Z[Y] - T_Y) / m, S = cov(V10) / m + cov(V01) / n.
    """
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least two positives and two negatives (got {m} and {n})")
    x, yy = scores[:, pos], scores[:, ~pos]
    tz = _midranks(np.hstack([x, yy]))
    tx, ty = _midranks(x), _midranks(yy)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _binary_labels(y_true: Any) -> np.ndarray:
    y = M.as_numpy(y_true)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("DeLong needs binary (N,) labels in {0, 1}")
    return y.astype(np.int64)


def delong_test(y_true: Any, scores_a: Any, scores_b: Any, alpha: float = 0.05) -> dict[str, float]:
    """DeLong's paired test of two correlated ROC AUCs on the same cases (fast algorithm).

    ``scores_*`` are positive-class scores (N,) or binary probabilities (N, 2). Returns the AUCs,
    ``diff = auc_a - auc_b``, its standard error, ``z = diff / se``, the two-sided p-value and the
    (1 - alpha) normal interval of the difference. Identical scores give se 0, z NaN, p 1.
    """
    y = _binary_labels(y_true)
    s = np.vstack([M.positive_scores(scores_a), M.positive_scores(scores_b)])
    aucs, cov = _delong(y, s)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se > 0:
        z = diff / se
        p_value = float(2 * stats.norm.sf(abs(z)))
    else:
        z, p_value = float("nan"), 1.0
    q = stats.norm.ppf(1 - alpha / 2)
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "diff": diff,
        "se": se,
        "z": z,
        "p_value": p_value,
        "ci_low": float(diff - q * se),
        "ci_high": float(diff + q * se),
    }


def delong_ci(y_true: Any, scores: Any, alpha: float = 0.05) -> dict[str, float]:
    """AUC with DeLong's standard error and normal (1 - alpha) interval, clipped to [0, 1] (as pROC)."""
    y = _binary_labels(y_true)
    aucs, cov = _delong(y, M.positive_scores(scores)[None, :])
    se = float(np.sqrt(max(cov[0, 0], 0.0)))
    q = stats.norm.ppf(1 - alpha / 2)
    a = float(aucs[0])
    return {"auc": a, "se": se, "low": float(max(0.0, a - q * se)), "high": float(min(1.0, a + q * se))}


# -- McNemar and Holm -----------------------------------------------------------------------
def mcnemar_test(y_true: Any, pred_a: Any, pred_b: Any) -> dict[str, Any]:
    """McNemar's test of two classifiers' paired correctness.

    ``b`` = cases A gets right and B wrong, ``c`` = cases A gets wrong and B right. With
    ``b + c < 25`` the exact two-sided binomial test (b of b + c under p = 1/2; statistic
    min(b, c)); otherwise the chi-square test with continuity correction,
    ``(|b - c| - 1)^2 / (b + c)`` on one degree of freedom. ``b + c == 0`` gives p = 1.
    """
    y, a, b_ = (M.as_numpy(v) for v in (y_true, pred_a, pred_b))
    if not (y.shape == a.shape == b_.shape) or y.ndim != 1:
        raise ValueError(f"y_true, pred_a, pred_b must be (N,) of one length, got {y.shape}, {a.shape}, {b_.shape}")
    ok_a, ok_b = a == y, b_ == y
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    if b + c == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p_value": 1.0, "method": "exact"}
    if b + c < 25:
        p = stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": float(p), "method": "exact"}
    stat = (abs(b - c) - 1) ** 2 / (b + c)
    return {
        "b": b,
        "c": c,
        "statistic": float(stat),
        "p_value": float(stats.chi2.sf(stat, 1)),
        "method": "chi2_continuity",
    }


def holm_correction(p_values: Mapping[Any, float] | Sequence[float]) -> dict[Any, float] | list[float]:
    """Holm's step-down adjusted p-values, in the input's form (dict -> dict, sequence -> list).

    Sorted ascending, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` (1-based j), so the
    adjusted values are monotone in the raw ones. NaN p-values stay NaN and do not count in m.
    """
    keys = list(p_values.keys()) if isinstance(p_values, Mapping) else None
    p = np.asarray(list(p_values.values()) if keys is not None else list(p_values), dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="mergesort")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    if keys is not None:
        return {k: float(v) for k, v in zip(keys, adjusted)}
    return [float(v) for v in adjusted]
