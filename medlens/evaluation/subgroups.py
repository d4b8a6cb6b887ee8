"""Performance per subgroup of a binary classifier, the gaps between subgroups and their tests.

:func:`assign_groups` turns one attribute's values into group labels: numeric values are banded
(given edges, else the quartiles of the values themselves), other values form one group each;
a missing value is the group ``"missing"``. :func:`subgroup_statistics` gives, per group, n,
positives, prevalence, and AUC, sensitivity and specificity at the decision threshold with
stratified bootstrap CIs (:func:`medlens.evaluation.statistics.bootstrap_metrics`); per metric the
largest gap between groups with the bootstrap CI of that difference
(:func:`~medlens.evaluation.statistics.unpaired_bootstrap_difference`) and a test of
homogeneity over all eligible groups; and the equalized-odds gap.

Tests (all groups at once; the largest gap's interval is for the pair picked because it differs
most, which with many groups can exclude zero by chance, the test does not pick):

* AUC — DeLong variances per group (:func:`~medlens.evaluation.statistics.delong_ci`) and
  Cochran's Q = sum (AUC_g - weighted mean)^2 / var_g on (groups - 1) degrees of freedom; with two
  groups this is the two-sided z test of two independent AUCs. Hand-written (a few lines; no
  dependency has it).
* sensitivity / specificity — the groups' detected / missed positives (negatives) as a
  contingency table: Fisher's exact test for two groups, else the chi-square test of independence
  (scipy.stats).

Groups smaller than ``min_group`` or with fewer than :data:`MIN_CLASS` positives or negatives are
"too small": listed with n and positives, without metrics, and left out of gaps and tests.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats

from medlens.data.attributes import MISSING, numeric_values

MIN_GROUP = 30
MIN_CLASS = 5
FEW_DISTINCT = 4  # a numeric attribute with at most this many distinct values is not banded
GAP_METRICS = ("auc", "sensitivity", "specificity")


# -- groups ----------------------------------------------------------------------------------
def assign_groups(values: Sequence[str | None], edges: Sequence[float] | None = None) -> tuple[list[str], dict]:
    """A group label per value, and how the groups were made.

    ``edges`` (increasing) band numeric values into ``<e0``, ``e0–<e1``, ..., ``≥ek``; without
    them numeric values with more than :data:`FEW_DISTINCT` distinct values are banded at the
    quartiles of ``values``. Returns ``(labels, {"kind": "numeric"|"categorical", "banding":
    "given"|"quartiles"|None, "edges": [...] | None, "order": [group labels in display order]})``.
    """
    present = [v for v in values if v not in (None, "")]
    numbers = numeric_values(present)
    if edges is not None and numbers is None:
        example = next((v for v in present if numeric_values([v]) is None), "")
        raise ValueError(f"holds values that are not numbers (e.g. '{example}'): it cannot be banded")
    if numbers is not None and (edges is not None or len(np.unique(numbers)) > FEW_DISTINCT):
        banding = "given" if edges is not None else "quartiles"
        cuts = sorted({float(e) for e in edges}) if edges is not None else _quartiles(numbers)
        names = _band_names(cuts)
        labels = [
            MISSING if v in (None, "") else names[int(np.searchsorted(cuts, float(v), side="right"))] for v in values
        ]
        order = [n for n in names if n in labels]
        info = {"kind": "numeric", "banding": banding, "edges": cuts}
    else:
        labels = [MISSING if v in (None, "") else str(v) for v in values]
        key = (lambda v: float(v)) if numbers is not None else str
        order = sorted({v for v in labels if v != MISSING}, key=key)
        info = {"kind": "numeric" if numbers is not None else "categorical", "banding": None, "edges": None}
    if MISSING in labels:
        order.append(MISSING)
    return labels, {**info, "order": order}


def _quartiles(numbers: np.ndarray) -> list[float]:
    return sorted({float(q) for q in np.quantile(numbers, [0.25, 0.5, 0.75])})


def _band_names(cuts: list[float]) -> list[str]:
    """``<40``, ``40–<60``, ``≥60`` for cuts 40, 60."""
    if not cuts:
        return ["all"]
    names = [f"<{cuts[0]:g}"]
    names += [f"{a:g}–<{b:g}" for a, b in zip(cuts, cuts[1:])]
    return names + [f"≥{cuts[-1]:g}"]


# -- statistics ------------------------------------------------------------------------------
def subgroup_statistics(
    y: np.ndarray,
    probs: np.ndarray,
    threshold: float | None,
    groups: Sequence[str],
    order: Sequence[str],
    *,
    min_group: int = MIN_GROUP,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per group and between groups, for one binary model (``probs`` (N, 2), labels ``y`` in {0, 1}).

    Returns ``{"groups": {label: GROUP}, "gaps": {metric: GAP}, "equalized_odds": {...}}``.
    GROUP: ``n``, ``positives``, ``prevalence``, ``status`` ("ok" | "too small"), and when ok
    ``auc``, ``sensitivity``, ``specificity`` as ``{"value", "low", "high"}``. GAP: ``high``,
    ``low`` (groups), ``diff`` (high - low), ``ci_low``, ``ci_high``, ``method``, ``statistic``,
    ``p_value``; None with fewer than two eligible groups.
    """
    from medlens.evaluation.statistics import bootstrap_metrics

    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    members = {g: np.flatnonzero(np.asarray(groups) == g) for g in order}
    out: dict[str, Any] = {}
    for k, (g, idx) in enumerate(members.items()):
        pos = int(y[idx].sum())
        entry: dict[str, Any] = {
            "n": int(len(idx)),
            "positives": pos,
            "prevalence": float(pos / len(idx)) if len(idx) else None,
        }
        if len(idx) < min_group or min(pos, len(idx) - pos) < MIN_CLASS:
            entry["status"] = "too small"
            entry["reason"] = f"fewer than {min_group} cases or {MIN_CLASS} positives and negatives"
        else:
            cis = bootstrap_metrics(y[idx], probs[idx], "binary", threshold, n_resamples=n_resamples, seed=seed + k)
            entry["status"] = "ok"
            entry.update({m: {key: cis[m][key] for key in ("value", "low", "high")} for m in GAP_METRICS})
        out[g] = entry
    ok = [g for g in order if out[g]["status"] == "ok"]
    gaps = {m: _gap(m, ok, out, members, y, probs, threshold, n_resamples, seed) for m in GAP_METRICS}
    return {"groups": out, "gaps": gaps, "equalized_odds": _equalized_odds(ok, out)}


def _gap(metric, ok, out, members, y, probs, threshold, n_resamples, seed) -> dict[str, Any] | None:
    if len(ok) < 2:
        return None
    from medlens.evaluation.statistics import unpaired_bootstrap_difference

    high = max(ok, key=lambda g: out[g][metric]["value"])
    low = min(ok, key=lambda g: out[g][metric]["value"])
    a, b = members[high], members[low]
    ci = unpaired_bootstrap_difference(
        y[a], probs[a], y[b], probs[b], "binary", [metric], threshold=threshold, n_resamples=n_resamples, seed=seed
    )[metric]
    method, statistic, p = _homogeneity(metric, [members[g] for g in ok], y, probs, threshold)
    return {
        "high": high,
        "low": low,
        "diff": ci.point,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "method": method,
        "statistic": statistic,
        "p_value": p,
    }


def _homogeneity(metric, parts, y, probs, threshold) -> tuple[str, float, float]:
    """(method, statistic, p) of the test that ``metric`` is the same in every group."""
    if metric == "auc":
        from medlens.evaluation.statistics import delong_ci

        fits = [delong_ci(y[i], probs[i, 1]) for i in parts]
        auc = np.array([f["auc"] for f in fits])
        var = np.maximum(np.array([f["se"] for f in fits]) ** 2, 1e-12)  # a perfect AUC has variance 0
        mean = np.sum(auc / var) / np.sum(1 / var)
        q = float(np.sum((auc - mean) ** 2 / var))
        return "delong_q", q, float(stats.chi2.sf(q, len(parts) - 1))
    cls = 1 if metric == "sensitivity" else 0
    pred = (probs[:, 1] > (0.5 if threshold is None else threshold)).astype(np.int64)
    table = np.array(
        [[np.sum((y[i] == cls) & (pred[i] == cls)), np.sum((y[i] == cls) & (pred[i] != cls))] for i in parts]
    )
    if (table.sum(axis=0) == 0).any():  # every group all right (or all wrong): nothing differs
        return ("fisher_exact" if len(parts) == 2 else "chi2"), 0.0, 1.0
    if len(parts) == 2:
        res = stats.fisher_exact(table)
        return "fisher_exact", float(res.statistic), float(res.pvalue)
    res = stats.chi2_contingency(table, correction=False)
    return "chi2", float(res.statistic), float(res.pvalue)


def _equalized_odds(ok: list[str], out: dict[str, Any]) -> dict[str, Any] | None:
    """max |TPR difference| and max |FPR difference| over the eligible groups, and the larger of the two."""
    if len(ok) < 2:
        return None
    tpr = {g: out[g]["sensitivity"]["value"] for g in ok}
    fpr = {g: 1 - out[g]["specificity"]["value"] for g in ok}
    tpr_gap = max(tpr.values()) - min(tpr.values())
    fpr_gap = max(fpr.values()) - min(fpr.values())
    return {"tpr_gap": float(tpr_gap), "fpr_gap": float(fpr_gap), "gap": float(max(tpr_gap, fpr_gap))}
