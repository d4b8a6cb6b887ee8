"""comparison.json: what it holds, and the statistics that fill it (from predictions alone).

:func:`medlens.study.evaluate.evaluate` reads every model's ``predictions_{val,test}.csv`` and
``model.json``, calls :func:`model_statistics` per model and :func:`pairwise_tests` once, adds
localization and figures, and writes ``comparison.json`` — strict JSON (NaN and infinities are
``null``). Nothing is tuned on the evaluated split: temperatures, thresholds and abstention
thresholds are fitted on VALIDATION predictions and applied unchanged.

Schema ``medlens.comparison/1``
-------------------------------
Top level::

  schema        "medlens.comparison/1"
  created       UTC time of the evaluation (the only field that changes between identical reruns)
  source, task, dims, class_names, seed
  split         the split every CI and test is computed on ("test" by default)
  n             {"train", "val", "test"}: split sizes (from splits.json)
  ci            {"method": "stratified percentile bootstrap", "level": 0.95, "n_resamples", "seed"}
  suite         study.json of `medlens compare` (suite, entries, budget estimate, timings) or null
  order         model names in display order (classical first, then deep, by name)
  models        {name: MODEL}                                                   (below)
  best          {"model": best by VALIDATION AUC (the one `medlens serve` picks),
                 "criterion": "...",
                 "by_metric": {metric: {"model", "value", "tied": [names], "higher_is_better"}}}
                 (by_metric is on the evaluated split: marks, not a model choice)
  pairwise      {"tests": [TEST, ...], "correction": "holm", "alpha": 0.05, "n_tests",
                 "n_common", "auc_method", "accuracy_method", "accuracy_rule"}
  localization  {"available": bool, "reason": str|null, "n_images", "ids" (the seeded subset of
                 SPLIT cases with a non-empty lesion mask; classical models use its first 16,
                 occlusion being costly), "pointing_tolerance_px",
                 "iou_threshold", "explained_class", "methods": {"deep": "grad-cam",
                 "classical": "occlusion"}}; per-model scores are in MODEL["localization"]
  splitting     how the run's splits.json was made (:mod:`medlens.data.leakage`): {"method":
                "given"|"patient", "moved_patients", "drop_duplicates", "n_dropped", "dropped_file",
                "description", "patients_across_splits" (this run's), "patients_across_given_splits"}
  shortcuts     metadata-only baseline and how well each score predicts each attribute
                (:mod:`medlens.study.shortcuts`), or {"available": false, "reason"}
  figures       {"dir": "figures", "gradcam_gallery": [{"model", "file" (relative to the run),
                 "id", "label", "predicted", "probability", "correct"}]}
  summary       [{"model", "kind", "auc", "auc_low", "auc_high", "acc", "acc_low", "acc_high",
                 "best": [metrics this model is best in]}]: what the summary table prints
  external      {name: ...} (only after `medlens evaluate RUN --on SOURCE`): internal and external
                metrics side by side per model; schema in :mod:`medlens.study.external`
  subgroups     (only with `evaluate --by` / `compare --by`) per attribute column, model and group:
                n, prevalence, AUC, sensitivity, specificity with CIs; gaps with CIs and Holm-adjusted
                tests; equalized-odds gap; schema in :mod:`medlens.study.subgroups`

MODEL::

  name, kind ("classical"|"deep"), task, class_names
  n             {"val", SPLIT}: cases with predictions
  temperature   T fitted on validation (logits: log-probabilities; multi-label: logit of p)
  calibration   {"method": "temperature scaling", "fitted_on": "val", "val_nll_before",
                 "val_nll_after", "logits": "log-probabilities from predictions_*.csv"}
  decision_threshold  the threshold every decision of this model is counted with (binary: the
                Youden threshold below; multi-label: the model card's, null meaning 0.5)
  thresholds    binary only, in temperature-scaled probability space (what serving compares):
                {"decision" (= youden), "youden", "sensitivity_0.95", "chosen_on": "val"}
  metrics       {"val": {metric: value}, SPLIT: {metric: CI}}: the model AS TRAINED (T = 1);
                binary threshold metrics at the Youden threshold chosen on uncalibrated val
  calibrated_metrics  same, on temperature-scaled probabilities (what serving answers)
  operating_points    binary only: {"youden": {metric: CI}, "sensitivity_0.95": {metric: CI}}
                (calibrated probabilities, thresholds from validation)
  reliability   {"before": CURVE, "after": CURVE} on SPLIT (15 equal-width bins, top label);
                CURVE = {"bin_centers", "accuracy", "confidence", "counts", "ece"}
  risk_coverage {method: {"coverage", "risk", "aurc"}} on SPLIT for "max_prob" and "entropy"
                of the calibrated probabilities (at most 200 points)
  abstention    {"method", "threshold", "target_risk", "val_coverage", "val_risk",
                 "test_coverage", "test_risk", "chosen_on": "val"}: refer a case when its
                uncertainty > threshold (threshold null = refer every case); method: the one of
                max_prob / entropy with the lower validation AURC. Also written to model.json.
  curves        {"roc": {class: {"fpr", "tpr", "auc"}}, "pr": {class: {"recall", "precision",
                 "ap", "prevalence"}}} on SPLIT, at most 200 points each; binary: the positive
                class only; multi-class: one-vs-rest per class; multi-label: per label
  confusion     {"labels", "matrix" (rows = true, columns = predicted), "rule"}; multi-label:
                {"labels", "per_label": [[[tn, fp], [fn, tp]], ...], "rule"}
  training      {"file", "kind": "epochs"|"grid", "columns": {column: [values]}} from
                training_log.csv (deep: epoch, train_loss, val_loss, val_auc, ...; classical:
                one row per hyper-parameter setting tried)
  timing        metrics.json's timing (fit seconds, images per second)
  warnings      plain-language warnings (:func:`signal_warnings`): constant scores, or an AUC whose
                CI includes 0.5; the report shows them beside the model
  localization  {"method": "grad-cam"|"occlusion", "n_scored", "pointing_game", "iou",
                 "tolerance_px", "threshold", "seconds"}, {"error"} when the bundle cannot be
                loaded, or null (no masks)

CI (every metric on SPLIT)::

  {"value": point estimate, "low", "high": 2.5 / 97.5 percentiles, "n_undefined": resamples where
   the metric was undefined}

TEST (one per model pair and per compared quantity)::

  {"a", "b", "metric": "auc"|"accuracy", "method": "delong"|"paired_bootstrap"|"mcnemar",
   "a_value", "b_value", "diff" (a - b), "ci_low", "ci_high" (AUC tests), "statistic",
   "p_value" (raw), "p_holm" (Holm-adjusted over ALL tests of the run), "significant"
   (p_holm < alpha), plus "b_count", "c_count" (McNemar discordant pairs)}

Metric names are :data:`medlens.evaluation.metrics.METRIC_NAMES`.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np

from medlens.data.sample import Task

SCHEMA = "medlens.comparison/1"
LOWER_IS_BETTER = frozenset({"brier", "ece"})
SENSITIVITY_TARGET = 0.95
DEFAULT_TARGET_RISK = 0.05
MAX_CURVE_POINTS = 200
ALPHA = 0.05
N_BINS = 15
ABSTENTION_METHODS = ("max_prob", "entropy")


# -- small helpers ------------------------------------------------------------------------------
def thin(curve: dict[str, Any], keys: Sequence[str], max_points: int = MAX_CURVE_POINTS) -> dict[str, Any]:
    """Keep at most ``max_points`` evenly spaced points (first and last included) of array ``keys``."""
    n = len(curve[keys[0]])
    if n <= max_points:
        idx = np.arange(n)
    else:
        idx = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))
    return {**curve, **{k: np.asarray(curve[k])[idx].tolist() for k in keys}}


def decisions(probs: np.ndarray, task: str, threshold: float | None) -> np.ndarray:
    """Hard predictions by the one decision rule (:func:`medlens.evaluation.metrics.predict`, which
    every bundle uses too): binary ``p1 > threshold``, multi-label each label ``> threshold``
    (0.5 when None), else argmax."""
    from medlens.evaluation.metrics import predict

    return predict(probs, task, threshold)


# -- per model ----------------------------------------------------------------------------------
def model_statistics(
    *,
    task: str,
    class_names: Sequence[str],
    y_val: np.ndarray,
    p_val: np.ndarray,
    y_eval: np.ndarray,
    p_eval: np.ndarray,
    split: str = "test",
    n_resamples: int = 1000,
    seed: int = 0,
    target_risk: float = DEFAULT_TARGET_RISK,
    card_threshold: float | None = None,
) -> dict[str, Any]:
    """Everything comparison.json holds for one model that follows from its predictions.

    Binary thresholds are chosen here on validation; other tasks decide with the model card's
    threshold (``card_threshold``; None: 0.5 for multi-label), exactly as the bundle does.

    ``p_val`` / ``p_eval`` are the uncalibrated probabilities of predictions_{val,SPLIT}.csv.
    Returns the MODEL fields ``temperature``, ``calibration``, ``thresholds``, ``metrics``,
    ``calibrated_metrics``, ``operating_points``, ``reliability``, ``risk_coverage``,
    ``abstention``, ``curves``, ``confusion`` and, under ``"_calibrated"``, the calibrated
    SPLIT probabilities (for the pairwise tests; not written).
    """
    from medlens.evaluation.calibration import (
        calibrate,
        fit_temperature,
        negative_log_likelihood,
        probs_to_logits,
        reliability_curve,
    )
    from medlens.evaluation.metrics import classification_metrics
    from medlens.evaluation.statistics import bootstrap_metrics

    binary = task == "binary"
    temperature = fit_temperature(probs_to_logits(p_val, task), y_val, task)
    c_val = calibrate(p_val, temperature, task)
    c_eval = calibrate(p_eval, temperature, task)

    raw_t = _threshold(y_val, p_val) if binary else None
    thresholds: dict[str, Any] = {}
    if binary:
        youden = _threshold(y_val, c_val)
        sens = _threshold(y_val, c_val, method="sensitivity", target=SENSITIVITY_TARGET)
        thresholds = {
            "decision": youden,
            "youden": youden,
            f"sensitivity_{SENSITIVITY_TARGET}": sens,
            "chosen_on": "val",
        }
    decision = thresholds.get("decision", card_threshold)

    def cis(y: np.ndarray, p: np.ndarray, t: float | None) -> dict[str, Any]:
        return bootstrap_metrics(y, p, task, threshold=t, n_resamples=n_resamples, seed=seed)

    metrics = {split: cis(y_eval, p_eval, raw_t)}
    calibrated = {split: cis(y_eval, c_eval, decision)}
    if split != "val":
        metrics = {"val": classification_metrics(y_val, p_val, task, raw_t), **metrics}
        calibrated = {"val": classification_metrics(y_val, c_val, task, decision), **calibrated}
    operating = {}
    if binary:
        operating = {
            "youden": calibrated[split],
            f"sensitivity_{SENSITIVITY_TARGET}": cis(y_eval, c_eval, thresholds[f"sensitivity_{SENSITIVITY_TARGET}"]),
        }
    return {
        "temperature": temperature,
        "calibration": {
            "method": "temperature scaling",
            "fitted_on": "val",
            "logits": "log-probabilities from predictions_*.csv"
            + (" (logit for multi-label)" if task == "multilabel" else ""),
            "val_nll_before": negative_log_likelihood(y_val, p_val, task),
            "val_nll_after": negative_log_likelihood(y_val, c_val, task),
        },
        "thresholds": thresholds,
        "decision_threshold": decision,
        "metrics": metrics,
        "calibrated_metrics": calibrated,
        "operating_points": operating,
        "reliability": {
            "before": reliability_entry(reliability_curve(y_eval, p_eval, N_BINS, task)),
            "after": reliability_entry(reliability_curve(y_eval, c_eval, N_BINS, task)),
        },
        **_selective(task, y_val, c_val, y_eval, c_eval, decision, target_risk),
        "curves": roc_pr_curves(y_eval, p_eval, task, class_names),
        "confusion": confusion(y_eval, c_eval, task, class_names, decision),
        "_calibrated": c_eval,
        "_calibrated_val": c_val,
    }


def signal_warnings(entry: dict[str, Any], split: str, task: str) -> list[str]:
    """Plain-language warnings for a model that learned nothing: constant scores on the split, one
    decision for every case (single-label tasks), or an AUC whose confidence interval includes 0.5."""
    out = []
    scores = np.asarray(entry["_calibrated"], dtype=np.float64)
    if len(scores) > 1 and np.all(np.ptp(scores, axis=0) < 1e-9):
        out.append(f"its scores are the same for every {split} case: it learned nothing from the images")
    elif task != "multilabel" and len(scores) > 1:
        decided = decisions(scores, task, entry.get("decision_threshold"))
        if len(np.unique(decided)) == 1:
            name = entry["class_names"][int(decided[0])] if entry.get("class_names") else str(int(decided[0]))
            out.append(f"it calls every {split} case '{name}' at its decision threshold")
    auc = ((entry.get("metrics") or {}).get(split) or {}).get("auc") or {}
    low, high = auc.get("low"), auc.get("high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low <= 0.5 <= high:
        out.append(
            f"its {split} AUC {auc.get('value', float('nan')):.3f} [{low:.3f}, {high:.3f}] "
            "is indistinguishable from chance (the 95% CI includes 0.5)"
        )
    return out


def _threshold(y: np.ndarray, p: np.ndarray, method: str = "youden", target: float = 0.95) -> float | None:
    from medlens.errors import MedlensError
    from medlens.evaluation.thresholds import choose_threshold

    try:
        return float(choose_threshold(y, p, method=method, target=target))
    except MedlensError:  # validation lacks a class: no threshold can be chosen
        return 0.5


def reliability_entry(curve: dict[str, Any]) -> dict[str, Any]:
    return {
        k: np.asarray(curve[k]).tolist() if k != "ece" else float(curve[k])
        for k in ("bin_centers", "accuracy", "confidence", "counts", "ece")
    }


def _selective(task: str, y_val, c_val, y_eval, c_eval, decision, target_risk: float) -> dict[str, Any]:
    """Risk-coverage curves on SPLIT and the abstention rule chosen on validation."""
    from medlens.evaluation.selective import (
        choose_abstention_threshold,
        risk_coverage_curve,
        selective_risk,
        uncertainty_scores,
    )

    ml = task == "multilabel"
    curves, val_aurc = {}, {}
    for method in ABSTENTION_METHODS:
        u_val = uncertainty_scores(c_val, method, multilabel=ml)
        u_eval = uncertainty_scores(c_eval, method, multilabel=ml)
        val_aurc[method] = risk_coverage_curve(y_val, c_val, u_val, decision)["aurc"]
        curve = risk_coverage_curve(y_eval, c_eval, u_eval, decision)
        curves[method] = thin(
            {"coverage": curve["coverage"], "risk": curve["risk"], "aurc": curve["aurc"]}, ("coverage", "risk")
        )
    method = min(ABSTENTION_METHODS, key=lambda m: (val_aurc[m], ABSTENTION_METHODS.index(m)))
    u_val = uncertainty_scores(c_val, method, multilabel=ml)
    u_eval = uncertainty_scores(c_eval, method, multilabel=ml)
    threshold = choose_abstention_threshold(y_val, c_val, u_val, target_risk, threshold=decision)
    on_val = selective_risk(y_val, c_val, u_val, threshold, decision)
    on_eval = selective_risk(y_eval, c_eval, u_eval, threshold, decision)
    abstention = {
        "method": method,
        "threshold": threshold,
        "target_risk": target_risk,
        "val_coverage": on_val["coverage"],
        "val_risk": on_val["risk"],
        "val_aurc": val_aurc[method],
        "test_coverage": on_eval["coverage"],
        "test_risk": on_eval["risk"],
        "chosen_on": "val",
        "probabilities": "temperature-scaled",
    }
    return {"risk_coverage": curves, "abstention": abstention}


def roc_pr_curves(y: np.ndarray, probs: np.ndarray, task: str, class_names: Sequence[str]) -> dict[str, Any]:
    """ROC and precision-recall points per class (binary: the positive class only)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    p = np.asarray(probs, dtype=np.float64)
    if task == "binary":
        pairs = [(class_names[-1], (np.asarray(y) == 1).astype(int), p[:, -1])]
    elif task == "multilabel":
        pairs = [(c, np.asarray(y)[:, j].astype(int), p[:, j]) for j, c in enumerate(class_names)]
    else:
        pairs = [(c, (np.asarray(y) == k).astype(int), p[:, k]) for k, c in enumerate(class_names)]
    roc, pr = {}, {}
    for name, yk, sk in pairs:
        if yk.min(initial=1) == yk.max(initial=0):  # the class is absent (or alone): undefined
            roc[name] = {"fpr": [], "tpr": [], "auc": None}
            pr[name] = {"recall": [], "precision": [], "ap": None, "prevalence": float(yk.mean()) if len(yk) else None}
            continue
        fpr, tpr, _ = roc_curve(yk, sk)
        prec, rec, _ = precision_recall_curve(yk, sk)
        roc[name] = thin({"fpr": fpr, "tpr": tpr, "auc": float(roc_auc_score(yk, sk))}, ("fpr", "tpr"))
        pr[name] = thin(
            {
                "recall": rec[::-1],
                "precision": prec[::-1],
                "ap": float(average_precision_score(yk, sk)),
                "prevalence": float(yk.mean()),
            },
            ("recall", "precision"),
        )
    return {"roc": roc, "pr": pr}


def confusion(
    y: np.ndarray, probs: np.ndarray, task: str, class_names: Sequence[str], decision: float | None
) -> dict[str, Any]:
    """Confusion matrix (rows true, columns predicted) at the model's operating decision rule."""
    pred = decisions(probs, task, decision)
    y = np.asarray(y)
    if task == "multilabel":
        per_label = []
        for j in range(y.shape[1]):
            t, q = y[:, j] == 1, pred[:, j] == 1
            per_label.append([[int(np.sum(~t & ~q)), int(np.sum(~t & q))], [int(np.sum(t & ~q)), int(np.sum(t & q))]])
        return {"labels": list(class_names), "per_label": per_label, "rule": "each label p > 0.5"}
    k = len(class_names)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (y.astype(int), pred.astype(int)), 1)
    rule = "p(positive) > validation Youden threshold (calibrated)" if task == "binary" else "argmax"
    return {"labels": list(class_names), "matrix": matrix.tolist(), "rule": rule}


# -- between models ---------------------------------------------------------------------------
def pairwise_tests(
    names: Sequence[str],
    y: np.ndarray,
    probs: dict[str, np.ndarray],
    preds: dict[str, np.ndarray],
    task: str,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = ALPHA,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """AUC and accuracy tests between every pair of models (or the given ``pairs``) on the same
    cases, Holm-adjusted.

    AUC: DeLong for binary tasks, else a paired bootstrap of the macro AUC. Accuracy: McNemar on
    the models' hard decisions (multi-label: a case is right when every label is). Holm's
    correction runs over all tests of the run together.
    """
    from medlens.evaluation.statistics import delong_test, holm_correction, mcnemar_test, paired_bootstrap_test

    y = np.asarray(y)
    tests: list[dict[str, Any]] = []
    for a, b in itertools.combinations(names, 2) if pairs is None else pairs:
        if task == "binary":
            try:
                r = delong_test(y, probs[a], probs[b], alpha=alpha)
                tests.append(
                    {
                        "a": a,
                        "b": b,
                        "metric": "auc",
                        "method": "delong",
                        "a_value": r["auc_a"],
                        "b_value": r["auc_b"],
                        "diff": r["diff"],
                        "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"],
                        "statistic": r["z"],
                        "p_value": r["p_value"],
                    }
                )
            except ValueError as e:  # too few positives or negatives
                tests.append({"a": a, "b": b, "metric": "auc", "method": "delong", "p_value": None, "error": str(e)})
        else:
            r = paired_bootstrap_test(
                y, probs[a], probs[b], "auc", n_resamples=n_resamples, seed=seed, task=task, alpha=alpha
            )
            tests.append(
                {
                    "a": a,
                    "b": b,
                    "metric": "auc",
                    "method": "paired_bootstrap",
                    "a_value": r["metric_a"],
                    "b_value": r["metric_b"],
                    "diff": r["diff"],
                    "ci_low": r["ci_low"],
                    "ci_high": r["ci_high"],
                    "statistic": r["z"],
                    "p_value": r["p_value"],
                }
            )
        ya, pa, pb = y, preds[a], preds[b]
        if task == "multilabel":  # exact match per case
            ya, pa, pb = (
                np.ones(len(y), int),
                (preds[a] == y).all(axis=1).astype(int),
                (preds[b] == y).all(axis=1).astype(int),
            )
        m = mcnemar_test(ya, pa, pb)
        tests.append(
            {
                "a": a,
                "b": b,
                "metric": "accuracy",
                "method": "mcnemar",
                "a_value": float(np.mean(pa == ya)),
                "b_value": float(np.mean(pb == ya)),
                "diff": float(np.mean(pa == ya) - np.mean(pb == ya)),
                "statistic": m["statistic"],
                "p_value": m["p_value"],
                "b_count": m["b"],
                "c_count": m["c"],
                "exact": m["method"] == "exact",
            }
        )
    raw = [float("nan") if t.get("p_value") is None else t["p_value"] for t in tests]
    adjusted = holm_correction(raw) if raw else []
    for t, p in zip(tests, adjusted):
        t["p_holm"] = p
        t["significant"] = bool(np.isfinite(p) and p < alpha)
    return {
        "tests": tests,
        "correction": "holm",
        "alpha": alpha,
        "n_tests": int(sum(np.isfinite(raw))),
        "n_common": int(len(y)),
        "auc_method": "delong" if task == "binary" else "paired_bootstrap (macro one-vs-rest AUC)",
        "accuracy_method": "mcnemar (exact binomial when b + c < 25)",
        "accuracy_rule": (
            "p(positive) > each model's validation Youden threshold"
            if task == "binary"
            else "all labels right (p > 0.5)"
            if task == "multilabel"
            else "argmax"
        ),
    }


# -- best and summary -------------------------------------------------------------------------
def best_by_metric(models: dict[str, dict[str, Any]], split: str) -> dict[str, Any]:
    """Per metric of SPLIT (as-trained metrics): the best model, with ties listed."""
    out: dict[str, Any] = {}
    metric_names = sorted({m for e in models.values() for m in (e.get("metrics", {}).get(split) or {})})
    for metric in metric_names:
        if metric == "threshold":
            continue
        values = {}
        for name, e in models.items():
            ci = (e.get("metrics", {}).get(split) or {}).get(metric)
            v = ci.get("value") if isinstance(ci, dict) else ci
            if v is not None and np.isfinite(v):
                values[name] = float(v)
        if not values:
            continue
        higher = metric not in LOWER_IS_BETTER
        target = max(values.values()) if higher else min(values.values())
        tied = sorted(n for n, v in values.items() if abs(v - target) <= 1e-12)
        out[metric] = {"model": tied[0], "value": target, "tied": tied, "higher_is_better": higher}
    return out


def summary_rows(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: AUC and ACC with CIs on the evaluated split, and where it is best."""
    split = comparison.get("split", "test")
    by_metric = (comparison.get("best") or {}).get("by_metric") or {}
    rows = []
    for name in comparison.get("order") or list(comparison.get("models", {})):
        e = comparison["models"][name]
        m = (e.get("metrics") or {}).get(split) or {}
        row: dict[str, Any] = {"model": name, "kind": e.get("kind")}
        for metric in ("auc", "acc"):
            ci = m.get(metric) or {}
            row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = ci.get("value"), ci.get("low"), ci.get("high")
        row["best"] = sorted(k for k, b in by_metric.items() if name in b.get("tied", [b.get("model")]))
        rows.append(row)
    return rows


def kept_external(path: Any, models: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The ``external`` entries of the comparison.json at ``path`` that a rerun of the internal
    evaluation keeps: those whose models still decide with the same temperature and threshold
    (``models``: the new MODEL entries); None when none is left."""
    from medlens.runs import read_json

    try:
        old = read_json(path).get("external")
    except (OSError, ValueError, AttributeError):  # absent or unreadable: nothing to keep
        return None

    def unchanged(entry: dict[str, Any]) -> bool:
        return all(
            name in models
            and models[name].get("temperature") == m.get("temperature")
            and models[name].get("decision_threshold") == m.get("decision_threshold")
            for name, m in (entry.get("models") or {}).items()
        )

    kept = {k: v for k, v in (old or {}).items() if isinstance(v, dict) and unchanged(v)}
    return kept or None


def task_of(value: Any) -> str:
    """The task name as a plain string."""
    return Task(value).value
