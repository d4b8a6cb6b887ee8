"""Segmentation metrics per case and class, their bootstrap intervals, and paired tests between models.

Pure functions on arrays (no file I/O). Label maps are integer arrays of one spatial shape
(0 = background, 1..K-1 = the classes of ``class_names[1:]``); ``spacing`` is mm per spatial axis.

Metrics (MONAI's functions do the work)
---------------------------------------
``dice``
    ``monai.metrics.compute_dice`` (``ignore_empty=False``).
``hd95``
    95th-percentile symmetric Hausdorff distance of the boundaries,
    ``monai.metrics.compute_hausdorff_distance(percentile=95, spacing=...)``: mm when the case has a
    spacing, else pixels (:func:`distance_unit` says which).
``nsd``
    normalised surface Dice (Nikolov et al. 2021): the share of both boundaries within
    ``tolerance_mm`` (default :data:`NSD_TOLERANCE_MM` = 1 mm) of the other,
    ``monai.metrics.compute_surface_dice``.
``f1``, ``sensitivity``, ``specificity``, ``accuracy``, ``auc`` (two-class tasks with a field of view)
    the retinal-vessel convention: pixel-wise, counted inside the field-of-view mask only;
    ``auc`` is scikit-learn's ``roc_auc_score`` of the foreground probability there. The rates
    come from the confusion counts with :mod:`medlens.evaluation.metrics`' own formulas.

Empty masks (declared; MONAI's own choices differ, so they are set here explicitly)
    truth and prediction both empty for a class: Dice 1, NSD 1, HD95 0 (nothing to find, nothing
    found). Exactly one of them empty: Dice 0, NSD 0, HD95 NaN (undefined: no boundary to measure
    to); a NaN is left out of the mean and counted (``n_undefined``). A pixel rate whose
    denominator is zero, and the AUC of a field of view holding one class only, are NaN too.

Statistics
    :func:`mean_ci`: the mean over cases with a percentile bootstrap interval over cases
    (:func:`medlens.evaluation.statistics.bootstrap_ci`, not stratified). :func:`paired_tests`:
    Wilcoxon signed-rank (``scipy.stats.wilcoxon``, two-sided) on the cases both models have a
    finite value for, Holm-adjusted over all tests (``statistics.holm_correction``).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from medlens.evaluation import metrics as M
from medlens.evaluation.statistics import bootstrap_ci, holm_correction

__all__ = [
    "NSD_TOLERANCE_MM",
    "HD_PERCENTILE",
    "OVERLAP_METRICS",
    "FOV_METRICS",
    "LOWER_IS_BETTER",
    "CONVENTIONS",
    "CASE_COLUMNS",
    "distance_unit",
    "overlap_metrics",
    "fov_metrics",
    "case_rows",
    "metrics_present",
    "mean_ci",
    "summarize",
    "case_means",
    "paired_tests",
]

NSD_TOLERANCE_MM = 1.0
HD_PERCENTILE = 95
OVERLAP_METRICS = ("dice", "hd95", "nsd")
FOV_METRICS = ("f1", "sensitivity", "specificity", "accuracy", "auc")
LOWER_IS_BETTER = frozenset({"hd95"})
CONVENTIONS = (
    "truth and prediction both empty: Dice 1, NSD 1, HD95 0; one of them empty: Dice 0, NSD 0, "
    "HD95 undefined (left out of the mean and counted); field-of-view metrics inside the FOV only"
)
"""The empty-mask conventions of the module notes, in one line (comparison.json and the report show it)."""
CASE_COLUMNS = ("id", "class", *OVERLAP_METRICS, *FOV_METRICS, "truth_voxels", "predicted_voxels")
"""Columns of the per-case table (one row per case and foreground class)."""


def distance_unit(spacing: Sequence[float] | None) -> str:
    """'mm' when distances use a spacing, else 'px'."""
    return "px" if spacing is None else "mm"


def _one_hot(labels: np.ndarray, k: int) -> Any:
    import torch

    return torch.from_numpy(np.stack([labels == c for c in range(k)])[None].view(np.uint8))


def _check(truth: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the truth's {truth.shape}")
    for name, m in (("truth", truth), ("prediction", pred)):
        if m.size and (m.min() < 0 or m.max() >= k):
            raise ValueError(f"{name} has label {int(m.max() if m.max() >= k else m.min())} outside 0..{k - 1}")
    return truth, pred


def overlap_metrics(
    truth: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = NSD_TOLERANCE_MM,
    surface: bool = True,
) -> dict[str, np.ndarray]:
    """Dice, HD95 and NSD of each foreground class (arrays of length ``n_classes - 1``).

    ``surface=False`` computes Dice only (HD95 and NSD are the costly part).
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    truth, pred = _check(truth, pred, n_classes)
    p, t = _one_hot(pred, n_classes), _one_hot(truth, n_classes)
    fg_t = t[0, 1:].flatten(1).any(1).numpy().astype(bool)
    fg_p = p[0, 1:].flatten(1).any(1).numpy().astype(bool)
    both_empty, one_empty = ~fg_t & ~fg_p, fg_t != fg_p
    out = {"dice": compute_dice(p, t, include_background=False, ignore_empty=False)[0].numpy().astype(float)}
    if surface:
        sp = None if spacing is None else [float(s) for s in spacing]
        with warnings.catch_warnings():  # MONAI warns about empty masks; they are handled below
            warnings.simplefilter("ignore")
            hd = compute_hausdorff_distance(p, t, percentile=HD_PERCENTILE, spacing=sp)[0].numpy().astype(float)
            nsd = compute_surface_dice(p.float(), t.float(), [float(tolerance_mm)] * (n_classes - 1), spacing=sp)
        nsd = nsd[0].numpy().astype(float)
        hd[both_empty], hd[one_empty] = 0.0, np.nan
        nsd[both_empty], nsd[one_empty] = 1.0, 0.0
        out.update(hd95=hd, nsd=nsd)
    out["dice"][both_empty] = 1.0
    return out


def fov_metrics(
    truth: np.ndarray, pred: np.ndarray, fov: np.ndarray, foreground: np.ndarray | None
) -> dict[str, float]:
    """Two-class pixel metrics inside the field of view (the retinal-vessel convention).

    ``foreground``: the foreground probability (for ``auc``; NaN without it).
    """
    fov = np.asarray(fov, dtype=bool)
    if fov.shape != np.shape(truth):
        raise ValueError(f"field-of-view shape {fov.shape} differs from the mask's {np.shape(truth)}")
    t, p = np.asarray(truth)[fov] == 1, np.asarray(pred)[fov] == 1
    counts = {"tp": np.sum(t & p), "fp": np.sum(~t & p), "fn": np.sum(t & ~p), "tn": np.sum(~t & ~p)}
    rates = M._rates(counts)
    auc = float("nan")
    if foreground is not None and t.any() and not t.all():
        auc = float(roc_auc_score(t, np.asarray(foreground, dtype=np.float32)[fov]))
    return {
        "f1": float(rates["f1"]),
        "sensitivity": float(rates["sensitivity"]),
        "specificity": float(rates["specificity"]),
        "accuracy": float(np.mean(t == p)) if t.size else float("nan"),
        "auc": auc,
    }


def case_rows(
    case_id: str,
    truth: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    *,
    spacing: Sequence[float] | None = None,
    fov: np.ndarray | None = None,
    foreground: np.ndarray | None = None,
    tolerance_mm: float = NSD_TOLERANCE_MM,
    surface: bool = True,
) -> list[dict[str, Any]]:
    """The per-case table's rows of one case: one per foreground class (``class_names[1:]``).

    Field-of-view metrics are filled for two-class tasks when ``fov`` is given (NaN otherwise).
    """
    k = len(class_names)
    m = overlap_metrics(truth, pred, k, spacing, tolerance_mm, surface)
    pixel = fov_metrics(truth, pred, fov, foreground) if fov is not None and k == 2 else {}
    rows = []
    for c in range(1, k):
        row: dict[str, Any] = {"id": case_id, "class": class_names[c]}
        for name in OVERLAP_METRICS:
            row[name] = float(m[name][c - 1]) if name in m else float("nan")
        for name in FOV_METRICS:
            row[name] = pixel.get(name, float("nan"))
        row["truth_voxels"] = int(np.sum(np.asarray(truth) == c))
        row["predicted_voxels"] = int(np.sum(np.asarray(pred) == c))
        rows.append(row)
    return rows


def metrics_present(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The metrics of :data:`CASE_COLUMNS` that have at least one finite value in ``rows``."""
    rows = list(rows)
    return [m for m in (*OVERLAP_METRICS, *FOV_METRICS) if any(np.isfinite(float(r.get(m, np.nan))) for r in rows)]


def mean_ci(values: Iterable[float], *, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Mean over cases with a percentile bootstrap interval; NaN cases left out and counted.

    Returns ``{"value", "low", "high", "n", "n_undefined"}`` (``n_undefined``: cases left out).
    """
    v = np.asarray(list(values), dtype=np.float64)
    finite = v[np.isfinite(v)]
    out: dict[str, Any] = {"value": float("nan"), "low": float("nan"), "high": float("nan")}
    out.update(n=int(finite.size), n_undefined=int(v.size - finite.size))
    if finite.size:
        ci = bootstrap_ci(
            finite,
            finite,
            lambda y, _: float(np.mean(y)),
            n_resamples=n_resamples,
            seed=seed,
            stratified=False,
            alpha=alpha,
        )
        out.update(value=ci.point, low=ci.low, high=ci.high)
    return out


def case_means(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[str, float]:
    """Per case, the mean of ``metric`` over its classes (NaN when any class is NaN)."""
    by_case: dict[str, list[float]] = {}
    for r in rows:
        by_case.setdefault(str(r["id"]), []).append(float(r[metric]))
    return {i: float(np.mean(v)) for i, v in by_case.items()}


def summarize(
    rows: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    metrics: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """``{"by_class": {class: {metric: mean_ci}}, "mean_over_classes": {metric: mean_ci}}``.

    ``mean_over_classes`` (several foreground classes only) is the mean over cases of each case's
    mean over classes (e.g. the mean Dice of anterior and posterior hippocampus).
    """
    fg = list(class_names[1:])
    by_class = {
        c: {
            m: mean_ci([r[m] for r in rows if r["class"] == c], n_resamples=n_resamples, seed=seed, alpha=alpha)
            for m in metrics
        }
        for c in fg
    }
    over = (
        {
            m: mean_ci(case_means(rows, m).values(), n_resamples=n_resamples, seed=seed, alpha=alpha)
            for m in metrics
            if m in OVERLAP_METRICS
        }
        if len(fg) > 1
        else None
    )
    return {"by_class": by_class, "mean_over_classes": over}


def paired_tests(
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    class_names: Sequence[str],
    metrics: Sequence[str],
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Wilcoxon signed-rank tests of every model pair, metric and class on shared cases, Holm-adjusted.

    ``tables``: {model: per-case rows}. Each test is ``{"a", "b", "metric", "class", "method",
    "n", "a_value", "b_value" (means on the shared cases), "diff" (mean of a - b), "statistic",
    "p_value", "p_holm", "significant", "better"}``; ``better`` names the model that is
    significantly better (lower is better for HD95), else None. A pair with all differences zero
    has p = 1; one without shared finite cases has p NaN (not counted by Holm).
    """
    values = {name: {(str(r["id"]), str(r["class"])): r for r in rows} for name, rows in tables.items()}
    tests: list[dict[str, Any]] = []
    for a, b in itertools.combinations(list(tables), 2):
        for metric in metrics:
            for cls in class_names[1:]:
                keys = [k for k in values[a] if k[1] == cls and k in values[b]]
                va = np.array([float(values[a][k][metric]) for k in keys])
                vb = np.array([float(values[b][k][metric]) for k in keys])
                ok = np.isfinite(va) & np.isfinite(vb)
                va, vb = va[ok], vb[ok]
                test: dict[str, Any] = {"a": a, "b": b, "metric": metric, "class": cls, "method": "wilcoxon"}
                test.update(n=int(ok.sum()), statistic=float("nan"), p_value=float("nan"))
                test.update(
                    a_value=float(va.mean()) if va.size else float("nan"),
                    b_value=float(vb.mean()) if vb.size else float("nan"),
                    diff=float(np.mean(va - vb)) if va.size else float("nan"),
                )
                if va.size and np.all(va == vb):
                    test.update(statistic=0.0, p_value=1.0)
                elif va.size:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        result = stats.wilcoxon(va, vb)
                    test.update(statistic=float(result.statistic), p_value=float(result.pvalue))
                tests.append(test)
    adjusted = holm_correction([t["p_value"] for t in tests])
    for t, p in zip(tests, adjusted):
        t["p_holm"] = p
        t["significant"] = bool(np.isfinite(p) and p < alpha)
        a_wins = (t["diff"] < 0) if t["metric"] in LOWER_IS_BETTER else (t["diff"] > 0)
        t["better"] = (t["a"] if a_wins else t["b"]) if t["significant"] else None
    return {
        "tests": tests,
        "method": "wilcoxon signed-rank (two-sided) on shared cases",
        "correction": "holm",
        "alpha": alpha,
        "n_tests": sum(np.isfinite(t["p_value"]) for t in tests),
    }
