"""Shortcut checks: did the image models learn the finding, or what the metadata already says?

Computed by :func:`medlens.study.evaluate.evaluate` (never retraining an image model) when the
run's source carries attributes (:attr:`medlens.data.sample.Record.attributes`: sex, age,
view_position, ...), as ``comparison.json``'s ``shortcuts``:

``columns``
    ``{"used": [{"name", "kind": "numeric"|"categorical", "levels"}], "left_out": [{"name",
    "reason"}]}``. A column is numeric when every value parses as a number; a categorical column
    with more than :data:`MAX_LEVELS` values in training (free text, identifiers: NIH's
    ``findings``) or a single value is left out, and the report says so.
``metadata_baseline``
    A logistic regression (scikit-learn) on the used columns alone: one-hot categorical columns
    (a missing value is its own level), standardised numeric ones with a missing indicator
    (median imputed). Fitted on the run's train split (splits.json), its binary operating point
    (Youden) chosen on val, as for the image models; on the evaluated split: every metric with
    its bootstrap CI, and per image model a paired test of the AUC (image minus metadata:
    DeLong for binary tasks, paired bootstrap of the macro AUC otherwise) on the same cases.
``attribute_prediction``
    Per image model and used column: how well the model's score on the evaluated split
    separates the attribute's values — the AUC, oriented so that it is at least 0.5, with
    DeLong's CI (``higher_for``: the value with the higher scores). Two values: one against the
    other; more: each value against the rest, the best one reported; numeric: above the median
    against the rest (comparable with the label AUC), with Spearman's rho alongside. The score
    is the positive-class probability (binary), else the class probability that separates the
    attribute best (``score``). Cases without a value are left out of that column (``n``).
``findings``
    Plain sentences with numbers: a metadata baseline at AUC >= :data:`NEAR_PERFECT_AUC`, an
    image model whose AUC is not significantly above the metadata baseline's (the difference's
    95% CI reaches 0), and a score that separates an attribute at least as well as the label.

Binary, multi-class and ordinal tasks; multi-label runs get ``available: false`` with the reason.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from medlens.data.attributes import numeric_values
from medlens.errors import MedlensError
from medlens.study.attributes_join import attribute_columns, available_attributes

MAX_LEVELS = 20
NEAR_PERFECT_AUC = 0.95
MIN_PER_GROUP = 2  # DeLong needs two cases on each side
MISSING_LEVEL = "(missing)"
METHOD_NAMES = {"delong": "DeLong", "paired_bootstrap": "paired bootstrap"}

Evaluated = dict[str, tuple[list[str], np.ndarray, np.ndarray]]
"""Per image model: (ids, labels, uncalibrated probabilities) on the evaluated split."""


def shortcuts_section(
    dataset: Any,
    splits: dict[str, list[str]],
    *,
    task: str,
    class_names: Sequence[str],
    evaluated: Evaluated,
    label_auc: dict[str, float | None],
    split: str = "test",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``comparison.json``'s ``shortcuts`` (see the module doc); ``label_auc``: each model's AUC on ``split``."""
    out: dict[str, Any] = {"available": False, "reason": None, "split": split}
    names = available_attributes(dataset)
    if not names:
        out["reason"] = "the source carries no attributes (CSV manifest columns or DICOM headers)"
        return out
    if task == "multilabel":
        out["reason"] = "shortcut checks cover binary, multi-class and ordinal tasks"
        return out
    train = list(splits.get("train") or [])
    if not train or not splits.get("val"):
        out["reason"] = "the run's splits.json has no train or val split"
        return out
    used, left_out = choose_columns(attribute_columns(dataset, train, names))
    out["columns"] = {"used": used, "left_out": left_out}
    if not used:
        out["reason"] = "no attribute column is usable: " + "; ".join(f"{c['name']}: {c['reason']}" for c in left_out)
        return out
    out["available"] = True
    first = next(iter(evaluated.values()))
    out["metadata_baseline"] = metadata_baseline(
        dataset,
        train,
        list(splits["val"]),
        first[0],
        first[1],
        used,
        task=task,
        n_classes=len(class_names),
        evaluated=evaluated,
        n_resamples=n_resamples,
        seed=seed,
    )
    out["attribute_prediction"] = {
        "method": "AUC of the model's score for the attribute's values, oriented >= 0.5, DeLong 95% CI; "
        "numeric columns: above the median vs the rest (Spearman's rho alongside)",
        "models": {
            name: attribute_prediction(dataset, ids, probs, used, task=task, class_names=class_names)
            for name, (ids, _, probs) in evaluated.items()
        },
    }
    out["findings"] = findings(out, label_auc, split)
    return out


def leak_checks(
    run: Any,
    open_dataset: Callable[[], Any],
    *,
    task: str,
    class_names: Sequence[str],
    evaluated: Evaluated,
    label_auc: dict[str, float | None],
    split: str,
    n_resamples: int,
    seed: int,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """``comparison.json``'s ``splitting`` (how the run's splits were made, patients across them:
    :func:`medlens.data.leakage.splitting_summary`) and ``shortcuts`` for a run directory."""
    from medlens.data.leakage import splitting_summary
    from medlens.data.splits import read_splits

    stored = read_splits(run.splits) if run.splits.is_file() else None
    try:
        dataset = open_dataset()
    except MedlensError as e:
        reason = f"the source cannot be opened: {e}"
        return {
            "splitting": splitting_summary(stored, None),
            "shortcuts": {"available": False, "reason": reason, "split": split},
        }
    splitting = splitting_summary(stored, dataset)
    if stored is None:
        return {"splitting": splitting, "shortcuts": {"available": False, "reason": "the run has no splits.json"}}
    log("shortcut checks: metadata-only baseline, attributes from the scores")
    shortcuts = shortcuts_section(
        dataset,
        stored["splits"],
        task=task,
        class_names=class_names,
        evaluated=evaluated,
        label_auc=label_auc,
        split=split,
        n_resamples=n_resamples,
        seed=seed,
    )
    return {"splitting": splitting, "shortcuts": shortcuts}


# -- columns -----------------------------------------------------------------------------------
def choose_columns(train_values: dict[str, list[str | None]]) -> tuple[list[dict], list[dict]]:
    """(used, left out) columns from their training values (see the module doc)."""
    used, left_out = [], []
    for name, values in train_values.items():
        present = [v for v in values if v not in (None, "")]
        levels = sorted(set(present))
        if len(levels) < 2:
            left_out.append({"name": name, "reason": "fewer than two values in the train split"})
        elif numeric_values(present) is not None:
            used.append({"name": name, "kind": "numeric", "levels": None})
        elif len(levels) > MAX_LEVELS:
            left_out.append(
                {
                    "name": name,
                    "reason": f"{len(levels)} distinct values (free text or identifiers; at most {MAX_LEVELS})",
                }
            )
        else:
            used.append({"name": name, "kind": "categorical", "levels": levels})
    return used, left_out


def _design(dataset: Any, ids: Sequence[str], columns: Sequence[dict]) -> np.ndarray:
    """An object array (cases x columns): floats (NaN missing) for numeric, text for categorical."""
    values = attribute_columns(dataset, ids, [c["name"] for c in columns])
    out = np.empty((len(ids), len(columns)), dtype=object)
    for k, c in enumerate(columns):
        col = values[c["name"]]
        if c["kind"] == "numeric":
            out[:, k] = [_float(v) for v in col]
        else:
            out[:, k] = [MISSING_LEVEL if v in (None, "") else v for v in col]
    return out


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else float("nan")
    except ValueError:  # a value that is not a number where training had only numbers
        return float("nan")


def _as_float(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _pipeline(columns: Sequence[dict], seed: int) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    numeric = [k for k, c in enumerate(columns) if c["kind"] == "numeric"]
    categorical = [k for k, c in enumerate(columns) if c["kind"] == "categorical"]
    parts = []
    if numeric:
        parts.append(
            (
                "numeric",
                make_pipeline(
                    FunctionTransformer(_as_float),
                    SimpleImputer(strategy="median", add_indicator=True),
                    StandardScaler(),
                ),
                numeric,
            )
        )
    if categorical:
        parts.append(("categorical", OneHotEncoder(handle_unknown="ignore"), categorical))
    return Pipeline(
        [("columns", ColumnTransformer(parts)), ("model", LogisticRegression(max_iter=2000, random_state=seed))]
    )


# -- the metadata-only baseline ----------------------------------------------------------------
def metadata_baseline(
    dataset: Any,
    train: list[str],
    val: list[str],
    eval_ids: list[str],
    y_eval: np.ndarray,
    columns: Sequence[dict],
    *,
    task: str,
    n_classes: int,
    evaluated: Evaluated,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Fit on train, operating point on val, statistics on the evaluated cases (module doc)."""
    from medlens.evaluation.statistics import bootstrap_metrics

    y_train, y_val = _labels(dataset, train), _labels(dataset, val)
    if len(np.unique(y_train)) < 2:
        return {"error": "the train split holds one class only"}
    model = _pipeline(columns, seed).fit(_design(dataset, train, columns), y_train)

    def proba(ids: Sequence[str]) -> np.ndarray:
        p = model.predict_proba(_design(dataset, ids, columns))
        full = np.zeros((len(ids), max(n_classes, 2)))
        full[:, model.classes_.astype(int)] = p
        return full

    p_val, p_eval = proba(val), proba(eval_ids)
    threshold = _youden(y_val, p_val) if task == "binary" else None
    metrics = bootstrap_metrics(y_eval, p_eval, task, threshold=threshold, n_resamples=n_resamples, seed=seed)
    return {
        "model": "logistic regression on the attribute columns",
        "columns": [c["name"] for c in columns],
        "fitted_on": "train",
        "n": {"train": len(train), "val": len(val), "eval": len(eval_ids)},
        "threshold": threshold,
        "threshold_chosen_on": "val" if threshold is not None else None,
        "metrics": metrics,
        "comparisons": [
            _paired(name, ids, y, probs, eval_ids, p_eval, task, n_resamples, seed)
            for name, (ids, y, probs) in evaluated.items()
        ],
    }


def _labels(dataset: Any, ids: Sequence[str]) -> np.ndarray:
    labels = [dataset.records[dataset.index_of(i)].label for i in ids]
    if any(not isinstance(v, (int, np.integer)) for v in labels):
        raise MedlensError("shortcut checks need one class label per case")
    return np.asarray(labels, dtype=np.int64)


def _youden(y: np.ndarray, p: np.ndarray) -> float:
    from medlens.evaluation.thresholds import choose_threshold

    try:
        return float(choose_threshold(y, p[:, 1]))
    except (MedlensError, ValueError):  # validation lacks a class: the default rule
        return 0.5


def _paired(name, ids, y, probs, eval_ids, p_meta, task, n_resamples, seed) -> dict[str, Any]:
    """Image model minus metadata baseline, AUC on the cases both have."""
    from medlens.evaluation.statistics import delong_test, paired_bootstrap_test

    where = {i: k for k, i in enumerate(eval_ids)}
    keep = [k for k, i in enumerate(ids) if i in where]
    y_, p_img = y[keep], probs[keep]
    p_md = p_meta[[where[ids[k]] for k in keep]]
    entry: dict[str, Any] = {"model": name, "n": len(keep)}
    try:
        if task == "binary":
            t = delong_test(y_, p_img, p_md)
            entry.update(method="delong", image_auc=t["auc_a"], metadata_auc=t["auc_b"])
        else:
            t = paired_bootstrap_test(y_, p_img, p_md, "auc", n_resamples, seed, task=task)
            entry.update(method="paired_bootstrap", image_auc=t["metric_a"], metadata_auc=t["metric_b"])
    except ValueError as e:
        return {**entry, "error": str(e)}
    entry.update(diff=t["diff"], ci_low=t["ci_low"], ci_high=t["ci_high"], p_value=t["p_value"])
    entry["verdict"] = (
        "worse than metadata"
        if t["ci_high"] < 0
        else "not better than metadata"
        if t["ci_low"] <= 0
        else "better than metadata"
    )
    return entry


# -- how well a score predicts an attribute ----------------------------------------------------
def attribute_prediction(
    dataset: Any, ids: list[str], probs: np.ndarray, columns: Sequence[dict], *, task: str, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One entry per column (module doc)."""
    from scipy.stats import spearmanr

    values = attribute_columns(dataset, ids, [c["name"] for c in columns])
    scores = {class_names[1]: probs[:, 1]} if task == "binary" else dict(zip(class_names, probs.T))
    out = []
    for c in columns:
        col = values[c["name"]]
        has = np.array([v not in (None, "") for v in col])
        entry: dict[str, Any] = {"attribute": c["name"], "kind": c["kind"], "n": int(has.sum())}
        if c["kind"] == "numeric":
            x = np.array([_float(v) for v in col])
            ok = has & np.isfinite(x)
            median = float(np.median(x[ok])) if ok.any() else float("nan")
            splits_ = {f"above the median ({median:g})": ok & (x > median)}
            entry["median"] = median
        else:
            ok = has
            levels = sorted({v for v, h in zip(col, has) if h})
            splits_ = {lv: np.array([v == lv for v in col]) for lv in (levels[1:] if len(levels) == 2 else levels)}
        best = None
        for score_name, s in scores.items():
            for value, positive in splits_.items():
                result = _oriented_auc(positive[ok], s[ok], value, _other(value, c, splits_, col, ok))
                if result and (best is None or result["auc"] > best["auc"]):
                    best = {**result, "score": score_name}
        if best is None:
            entry["error"] = f"fewer than {MIN_PER_GROUP} cases on one side"
        else:
            entry.update(best)
        if c["kind"] == "numeric" and ok.sum() > 2:
            s = next(iter(scores.values())) if task == "binary" else scores[entry.get("score", class_names[0])]
            rho = spearmanr(x[ok], s[ok])
            entry["spearman"] = {"rho": float(rho.statistic), "p_value": float(rho.pvalue)}
        out.append(entry)
    return out


def _other(value: str, column: dict, splits_: dict, col: list, ok: np.ndarray) -> str:
    """The name of what ``value`` is compared against."""
    if column["kind"] == "numeric":
        return "at or below the median"
    levels = sorted({v for v, h in zip(col, ok) if h})
    return levels[0] if len(levels) == 2 else "the rest"


def _oriented_auc(positive: np.ndarray, score: np.ndarray, value: str, other: str) -> dict[str, Any] | None:
    from medlens.evaluation.statistics import delong_ci

    y = positive.astype(np.int64)
    if min(y.sum(), len(y) - y.sum()) < MIN_PER_GROUP:
        return None
    ci = delong_ci(y, score)
    if ci["auc"] >= 0.5:
        return {"auc": ci["auc"], "low": ci["low"], "high": ci["high"], "higher_for": value, "versus": other}
    flipped = delong_ci(1 - y, score)
    return {"auc": flipped["auc"], "low": flipped["low"], "high": flipped["high"], "higher_for": other, "versus": value}


# -- plain statements --------------------------------------------------------------------------
def findings(section: dict[str, Any], label_auc: dict[str, float | None], split: str) -> list[str]:
    """Sentences with numbers for the report (see the module doc)."""
    out = []
    base = section.get("metadata_baseline") or {}
    auc = (base.get("metrics") or {}).get("auc") or {}
    columns = ", ".join(base.get("columns") or [])
    if isinstance(auc.get("value"), float) and auc["value"] >= NEAR_PERFECT_AUC:
        out.append(
            f"The metadata alone ({columns}) predict the label almost perfectly: a logistic regression on them "
            f"reaches {split} AUC {auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]. "
            "The label may be a function of how the images were taken, not of what they show."
        )
    for t in base.get("comparisons") or []:
        if "verdict" not in t or t["verdict"] == "better than metadata":
            continue
        out.append(
            f"{t['model']} is {t['verdict']} alone: {split} AUC {t['image_auc']:.3f} vs {t['metadata_auc']:.3f} "
            f"for a logistic regression on {columns} (difference {t['diff']:+.3f}, 95% CI "
            f"[{t['ci_low']:+.3f}, {t['ci_high']:+.3f}], {METHOD_NAMES[t['method']]} p = {t['p_value']:.2g})."
        )
    for model, entries in ((section.get("attribute_prediction") or {}).get("models") or {}).items():
        label = label_auc.get(model)
        for e in entries:
            if "auc" not in e or label is None or e["low"] <= 0.5 or e["auc"] < label:
                continue
            out.append(
                f"{model}'s score separates {e['attribute']} ({e['higher_for']} vs {e['versus']}) with AUC "
                f"{e['auc']:.3f} [{e['low']:.3f}, {e['high']:.3f}], as well as or better than it separates the label "
                f"(AUC {label:.3f}): it may have learned {e['attribute']} rather than the finding."
            )
    return out
