"""The report's sections as plain template data, each built from :class:`~medlens.reporting.build.Artifacts`.

:func:`report_context` returns ``{"title", "findings", "sections", ...}``. A section is a dict with
``id``, ``title``, ``available`` and either its content or ``reason`` (why it is missing): a
section builder raises :class:`Missing` for an absent artifact, and :func:`_section` turns that
into "not available: <reason>". Numbers are formatted here, so the template only lays them out.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Iterable

from medlens.reporting import figures as F

METRIC_LABELS = {
    "auc": "AUC",
    "acc": "Accuracy",
    "acc@threshold": "Accuracy at threshold",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "balanced_accuracy": "Balanced accuracy",
    "kappa_quadratic": "Quadratic κ",
    "brier": "Brier score",
    "ece": "ECE",
}
LOWER_IS_BETTER = {"brier", "ece"}
CLASSIFICATION_ONLY = {"summary", "significance", "roc", "confusion", "calibration", "referral", "gradcam"}
"""Sections a task with its own section (``task_sections``) has no data for."""
SMALL_TEST_SET = 100


class Missing(Exception):
    """A section cannot be drawn; the message says why, in plain words."""


# -- formatting --------------------------------------------------------------------------------
def num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def pct(value: Any, digits: int = 0) -> str:
    return "n/a" if value is None else f"{100 * float(value):.{digits}f}%"


def ci_range(ci: Any, digits: int = 2) -> str:
    """``0.50–0.77`` from a CI dict, or '' when it has no interval."""
    if not isinstance(ci, dict) or ci.get("low") is None or ci.get("high") is None:
        return ""
    return f"{num(ci['low'], digits)}–{num(ci['high'], digits)}"


def with_ci(ci: Any, digits: int = 2) -> str:
    """``0.63 [0.50–0.77]``; a bare value when there is no interval."""
    value = ci.get("value") if isinstance(ci, dict) else ci
    rng = ci_range(ci, digits)
    return f"{num(value, digits)} [{rng}]" if rng else num(value, digits)


def p_text(p: Any) -> str:
    if p is None or (isinstance(p, float) and not math.isfinite(p)):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _value(ci: Any) -> float | None:
    v = ci.get("value") if isinstance(ci, dict) else ci
    return None if v is None or not math.isfinite(float(v)) else float(v)


# -- context -----------------------------------------------------------------------------------
def report_context(
    arts,
    task_sections: dict[str, tuple[str, str, Callable]] | None = None,
    optional_sections: Iterable[tuple[str, str, Callable]] = (),
) -> dict[str, Any]:
    """Everything the template needs: title, key findings, sections in reading order.

    ``task_sections``: {task: (id, title, builder)}, the section of a task without the
    classification statistics, shown in their place (e.g. segmentation's).
    ``optional_sections``: (id, title, builder) shown after "referral" only when comparison.json
    has a key of that id (e.g. ``subgroups``, written by ``evaluate --by``).
    """
    builders: list[tuple[str, str, Callable[[Any], dict[str, Any]]]] = [
        ("data", "Data", data_section),
        ("audit", "Data audit", audit_section),
        ("summary", "Model comparison", summary_section),
        ("significance", "Are the differences real?", significance_section),
        ("roc", "ROC and precision–recall", roc_section),
        ("confusion", "Confusion matrices", confusion_section),
        ("calibration", "Calibration", calibration_section),
        ("referral", "Referring uncertain cases", referral_section),
        ("gradcam", "Where the models look (Grad-CAM)", gradcam_section),
        ("training", "Training", training_section),
        ("cards", "Model cards", model_cards_section),
        ("provenance", "Provenance", provenance_section),
    ]
    present = [b for b in optional_sections if (arts.comparison or {}).get(b[0])]
    at = next(i for i, b in enumerate(builders) if b[0] == "referral") + 1
    builders[at:at] = present
    task_section = (task_sections or {}).get(str((arts.comparison or {}).get("task")))
    if task_section:
        builders = [b for b in builders if b[0] not in CLASSIFICATION_ONLY]
        builders.insert(2, task_section)
    sections = [_section(sid, title, fn, arts) for sid, title, fn in builders]
    comparison = arts.comparison or {}
    return {
        "title": f"medlens study report — {arts.run.root.name}",
        "run_name": arts.run.root.name,
        "source": arts.source or "unknown source",
        "task": comparison.get("task") or (arts.fingerprint or {}).get("task") or "",
        "findings": key_findings(arts),
        "sections": sections,
    }


def _section(sid: str, title: str, fn: Callable[[Any], dict[str, Any]], arts) -> dict[str, Any]:
    try:
        body = fn(arts)
    except Missing as e:
        return {"id": sid, "title": title, "available": False, "reason": str(e)}
    return {"id": sid, "title": title, "available": True, **body}


def _comparison(arts) -> dict[str, Any]:
    if not arts.comparison:
        raise Missing(f"{arts.notes.get('comparison', 'comparison.json is missing')}; run `medlens evaluate RUN`")
    return arts.comparison


def _models(arts) -> dict[str, dict[str, Any]]:
    c = _comparison(arts)
    return {n: c["models"][n] for n in arts.order}


def _split(arts) -> str:
    return (arts.comparison or {}).get("split", "test")


def _eval_metrics(arts, name: str) -> dict[str, Any]:
    """SPLIT metrics of a model: CIs from comparison.json, else point values of metrics.json."""
    split = _split(arts)
    if arts.comparison and name in arts.comparison.get("models", {}):
        return (arts.comparison["models"][name].get("metrics") or {}).get(split) or {}
    return (arts.metrics.get(name) or {}).get(split) or {}


def _kind(arts, name: str) -> str:
    entry = (arts.comparison or {}).get("models", {}).get(name) or arts.infos.get(name) or {}
    return str(entry.get("kind") or "model")


def _served(arts) -> str | None:
    return ((arts.comparison or {}).get("best") or {}).get("model")


# -- key findings ------------------------------------------------------------------------------
def key_findings(arts) -> list[str]:
    """A few sentences in plain words: what was compared, what won, how sure, what to watch."""
    out: list[str] = []
    names = arts.order
    split = _split(arts)
    n_eval = eval_size(arts)
    fp = arts.fingerprint or {}
    if fp:
        classes = ", ".join(fp.get("class_names") or [])
        used = images_used(arts)
        total = fp.get("n_samples")
        if used and total and sum(used.values()) < total:
            count = (
                f"{used.get('train', 0)} training and {used.get('val', 0)} validation images "
                f"(a capped subset of the {total} {fp.get('modality') or ''} images"
            )
            text = f"{len(names)} model(s) were trained on {count}"
            text += f" in {arts.source}; {fp.get('task', '')}: {classes})." if classes else f" in {arts.source})."
        else:
            text = f"{len(names)} model(s) were trained on {total or '?'} {fp.get('modality') or ''} images"
            text += f" from {arts.source} ({fp.get('task', '')}: {classes})." if classes else f" from {arts.source}."
        if n_eval:
            text = text[:-1] + f"; all results below are on {n_eval} held-out {split} cases."
        out.append(" ".join(text.split()))
    aucs = {n: _eval_metrics(arts, n).get("auc") for n in names}
    aucs = {n: ci for n, ci in aucs.items() if _value(ci) is not None}
    if aucs:
        best = {}
        for kind in ("deep", "classical"):
            pool = [n for n in aucs if _kind(arts, n) == kind]
            if pool:
                best[kind] = max(pool, key=lambda n: _value(aucs[n]))
        if len(best) == 2:
            d, c = best["deep"], best["classical"]
            text = (
                f"The best deep model ({d}) reached AUC {with_ci(aucs[d])} vs {with_ci(aucs[c])} "
                f"for the best classical model ({c}); "
            )
            test = _find_test(arts, d, c, "auc")
            if test is None or test.get("p_holm") is None:
                text += "no significance test between them is available."
            else:
                method = {"delong": "DeLong", "paired_bootstrap": "paired bootstrap"}.get(
                    test["method"], test["method"]
                )
                verdict = "significant" if test.get("significant") else "not significant"
                text += f"the difference is {verdict} ({method} {p_text(test['p_holm'])}, Holm-adjusted)."
            out.append(text)
        else:
            top = max(aucs, key=lambda n: _value(aucs[n]))
            out.append(
                f"The best model ({top}) reached AUC {with_ci(aucs[top])} (95% confidence interval in brackets)."
            )
    served = _served(arts)
    entry = ((arts.comparison or {}).get("models") or {}).get(served) if served else None
    if served and entry:
        text = f"The service (medlens serve) answers with {served}, the model with the highest validation AUC."
        op = (entry.get("operating_points") or {}).get("youden")
        if op and op.get("sensitivity") and op.get("specificity"):
            text += (
                f" At its validation-chosen threshold it finds {pct(_value(op['sensitivity']))} of positive cases "
                f"(sensitivity {with_ci(op['sensitivity'])}) with specificity {with_ci(op['specificity'])}."
            )
        out.append(text)
        rel = entry.get("reliability") or {}
        if rel.get("before") and rel.get("after"):
            out.append(
                f"Temperature scaling changed {served}'s calibration error (ECE) from "
                f"{num(rel['before'].get('ece'), 3)} to {num(rel['after'].get('ece'), 3)}."
            )
        a = entry.get("abstention") or {}
        if a.get("test_coverage") is not None:
            out.append(
                f"Referring the cases it is least sure about, {served} would answer {pct(a['test_coverage'])} of "
                f"{split} cases with an error rate of {pct(a.get('test_risk'), 1)} on those "
                f"(target {pct(a.get('target_risk'))}, rule chosen on validation)."
            )
    if arts.audit:
        warnings = arts.audit.get("warnings") or []
        if arts.audit.get("leakage_found"):
            out.append("Caution — the data audit found leakage between splits: " + "; ".join(warnings) + ".")
        elif warnings:
            out.append("The data audit flagged: " + "; ".join(warnings) + ".")
        else:
            out.append("The data audit found no duplicates, leakage or unreadable files.")
        spanning = _run_split_leakage(arts.audit, arts.splits)
        if spanning and not spanning.startswith("No "):
            out.append(
                "Caution — " + spanning[0].lower() + spanning[1:] + " Near-identical images on both sides "
                "of a split can make results look better than they are."
            )
    out += leak_and_shortcut_findings(arts.comparison or {})
    for name in names:
        for warning in (((arts.comparison or {}).get("models") or {}).get(name) or {}).get("warnings") or []:
            out.append(f"Caution — {name}: {warning}.")
    outcomes = (((arts.comparison or {}).get("suite") or {}).get("outcomes")) or {}
    for name, outcome in outcomes.items():
        status = outcome.get("status")
        if status == "failed":
            out.append(
                f"Caution — {name} is missing from this comparison: its training failed ({outcome.get('error')})."
            )
        elif status in ("interrupted", "not started"):
            out.append(f"Caution — {name} is missing from this comparison: its training was {status}.")
    if n_eval and n_eval < SMALL_TEST_SET:
        out.append(
            f"The {split} set is small ({n_eval} cases): confidence intervals are wide and small differences "
            "between models should not be over-read."
        )
    if str(arts.source or "").startswith("synthetic:"):
        out.append(
            "These results are on generated (synthetic) images: they check the pipeline, not clinical performance."
        )
    return out


def splitting_line(splitting: dict[str, Any] | None) -> str | None:
    """``split: ...`` of comparison.json's ``splitting``, with the patients found in more than one
    of this run's splits (and of the source's given splits, after a re-split)."""
    if not splitting:
        return None
    text = str(splitting.get("description") or "split: given")
    across, given = splitting.get("patients_across_splits"), splitting.get("patients_across_given_splits")
    if across is not None:
        text += f"; {across} patient(s) in more than one of this run's splits"
        if given is not None and splitting.get("method") == "patient":
            text += f" (the source's given split had {given})"
    return text + "."


def leak_and_shortcut_findings(comparison: dict[str, Any]) -> list[str]:
    """This run's split (a caution when patients span its splits) and the shortcut checks' findings."""
    out = []
    line = splitting_line(comparison.get("splitting"))
    if line:
        leaked = bool((comparison.get("splitting") or {}).get("patients_across_splits"))
        out.append(("Caution — this" if leaked else "This") + f" run's {line}")
    out += [f"Caution — {f}" for f in (comparison.get("shortcuts") or {}).get("findings") or []]
    return out


def images_used(arts) -> dict[str, int]:
    """Images each split actually used (the largest count over the models: ``--max-samples`` caps them)."""
    used: dict[str, int] = {}
    for metrics in arts.metrics.values():
        for split, n in ((metrics or {}).get("n") or {}).items():
            if isinstance(n, int):
                used[split] = max(used.get(split, 0), n)
    return used


def eval_size(arts) -> int | None:
    """Cases every model was evaluated on (the smallest per-model count; runs may cap samples)."""
    split = _split(arts)
    counts = []
    for name in arts.order:
        entry = ((arts.comparison or {}).get("models") or {}).get(name) or {}
        n = (entry.get("n") or {}).get(split) or ((arts.metrics.get(name) or {}).get("n") or {}).get(split)
        if n:
            counts.append(int(n))
    return min(counts) if counts else ((arts.comparison or {}).get("n") or {}).get(split)


def _find_test(arts, a: str, b: str, metric: str) -> dict[str, Any] | None:
    for t in ((arts.comparison or {}).get("pairwise") or {}).get("tests", []):
        if t.get("metric") == metric and {t.get("a"), t.get("b")} == {a, b}:
            return t
    return None


# -- data --------------------------------------------------------------------------------------
def data_section(arts) -> dict[str, Any]:
    fp = arts.fingerprint
    if not fp:
        raise Missing(arts.notes.get("fingerprint", "fingerprint.json is missing"))
    facts = [
        ("Source", arts.source),
        ("Modality", fp.get("modality") or "not recorded"),
        ("Task", f"{fp.get('task')} ({fp.get('dims')}D)"),
        ("Classes", ", ".join(fp.get("class_names") or []) or "—"),
        ("Images", fp.get("n_samples")),
        ("Patients", fp.get("n_patients")),
    ]
    shapes = fp.get("shapes") or {}
    if shapes.get("distinct"):
        common = shapes["distinct"][0]
        facts.append(
            (
                "Image size",
                f"{' × '.join(str(s) for s in common['shape'][1:])} px, {common['shape'][0]} channel(s)"
                + (f" ({shapes.get('n_distinct')} distinct sizes)" if shapes.get("n_distinct", 1) > 1 else ""),
            )
        )
    spacing = fp.get("spacings")
    if spacing and spacing.get("median"):
        facts.append(("Pixel spacing (median)", " × ".join(num(s, 2) for s in spacing["median"]) + " mm"))
    inten = fp.get("intensity")
    if inten:
        p = inten.get("percentiles") or {}
        facts.append(
            (
                "Intensity",
                f"{num(inten.get('min'))} to {num(inten.get('max'))}; "
                f"1st–99th percentile {num(p.get('1'))} to {num(p.get('99'))}",
            )
        )
    if fp.get("imbalance_ratio") is not None:
        facts.append(("Imbalance (largest / smallest class)", num(fp["imbalance_ratio"])))
    split_rows = []
    if arts.splits:
        split_rows = [(k, len(v)) for k, v in arts.splits.items()]
    body: dict[str, Any] = {
        "facts": facts,
        "splits": split_rows,
        "balance": None,
        "montage": None,
        "montage_reason": arts.notes.get("montage"),
    }
    try:
        body["balance"] = F.data_uri(F.class_balance(fp))
    except ValueError:
        pass
    if arts.montage:
        body["montage"] = F.data_uri(arts.montage)
    return body


def audit_section(arts) -> dict[str, Any]:
    a = arts.audit
    if not a:
        raise Missing(arts.notes.get("audit", "audit.json is missing"))
    rows = []

    def row(label: str, count: int, detail: str = "", severe: bool = True) -> None:
        rows.append(
            {"check": label, "count": count, "ok": count == 0, "severe": severe and count > 0, "detail": detail}
        )

    row("Unreadable files", len(a.get("unreadable") or []))
    row("Images without a label (or labels without an image)", len(a.get("unpaired") or []))
    for kind, label in (("exact_duplicates", "Exact duplicate groups"), ("near_duplicates", "Near-duplicate groups")):
        s = a.get(kind) or {}
        row(
            label,
            int(s.get("n_groups") or 0),
            f"{s.get('n_cross_split_groups') or 0} shared between splits",
            severe=bool(s.get("n_cross_split_groups")),
        )
    row("Patients in more than one split", int((a.get("patient_leakage") or {}).get("n_patients") or 0))
    row("Duplicates with conflicting labels", len(a.get("conflicting_labels") or []))
    row("Blank (constant) images", len(a.get("blank_images") or []), severe=False)
    imb = a.get("class_imbalance") or {}
    if imb:
        rows.append(
            {
                "check": "Class imbalance (largest / smallest)",
                "count": num(imb.get("ratio")),
                "ok": not imb.get("warning"),
                "severe": False,
                "detail": imb.get("warning") or "",
            }
        )
    run_leak = _run_split_leakage(a, arts.splits)
    return {
        "rows": rows,
        "warnings": a.get("warnings") or [],
        "leakage": bool(a.get("leakage_found")),
        "run_leak": run_leak,
        "n_samples": a.get("n_samples"),
    }


def _run_split_leakage(audit: dict[str, Any], splits: dict[str, list[str]] | None) -> str | None:
    """Duplicate groups whose members fall into different splits of THIS run (splits.json)."""
    if not splits:
        return None
    where = {i: s for s, ids in splits.items() for i in ids}
    n = 0
    for kind in ("exact_duplicates", "near_duplicates"):
        for group in (audit.get(kind) or {}).get("groups") or []:
            used = {where[m["id"]] for m in group.get("members", []) if m.get("id") in where}
            n += len(used) > 1
    return (
        f"{n} duplicate group(s) span this run's train/validation/test splits."
        if n
        else "No duplicate group spans this run's train/validation/test splits."
    )


# -- comparison --------------------------------------------------------------------------------
def summary_section(arts) -> dict[str, Any]:
    names = arts.order
    if not names:
        raise Missing("no trained model in the run")
    per_model = {n: _eval_metrics(arts, n) for n in names}
    keys = [k for k in METRIC_LABELS if any(k in m for m in per_model.values()) and k != "acc@threshold"]
    if not keys:
        raise Missing(f"no {_split(arts)} metrics were recorded")
    by_metric = ((arts.comparison or {}).get("best") or {}).get("by_metric") or _best_by_metric(per_model, keys)
    served = _served(arts)
    rows = []
    for n in names:
        cells = []
        for k in keys:
            ci = per_model[n].get(k)
            best = by_metric.get(k) or {}
            cells.append(
                {
                    "value": num(_value(ci)),
                    "ci": ci_range(ci),
                    "best": _value(ci) is not None and n in best.get("tied", [best.get("model")]),
                }
            )
        rows.append({"model": n, "kind": _kind(arts, n), "served": n == served, "cells": cells})
    split = _split(arts)
    has_ci = any(c["ci"] for r in rows for c in r["cells"])
    ci = (arts.comparison or {}).get("ci") or {}
    return {
        "columns": [{"key": k, "label": METRIC_LABELS[k], "lower_better": k in LOWER_IS_BETTER} for k in keys],
        "rows": rows,
        "split": split,
        "n": eval_size(arts),
        "has_ci": has_ci,
        "ci_note": (
            f"{int(100 * ci.get('level', 0.95))}% confidence intervals: {ci.get('method')}, "
            f"{ci.get('n_resamples')} resamples"
            if ci
            else "point estimates from metrics.json (no confidence intervals: run `medlens evaluate RUN`)"
        ),
        "served": served,
    }


def _best_by_metric(per_model: dict[str, dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    out = {}
    for k in keys:
        values = {n: _value(m.get(k)) for n, m in per_model.items() if _value(m.get(k)) is not None}
        if values:
            target = (min if k in LOWER_IS_BETTER else max)(values.values())
            out[k] = {"tied": [n for n, v in values.items() if abs(v - target) <= 1e-12]}
    return out


def significance_section(arts) -> dict[str, Any]:
    c = _comparison(arts)
    names = arts.order
    if len(names) < 2:
        raise Missing("only one model in the run: there is nothing to compare it with")
    pw = c.get("pairwise") or {}
    tests = pw.get("tests") or []
    if not tests:
        raise Missing("comparison.json holds no pairwise tests")
    matrices = []
    for metric, title in (("auc", "AUC"), ("accuracy", "Accuracy")):
        mt = [t for t in tests if t.get("metric") == metric]
        if not mt:
            continue
        method = {"delong": "DeLong test", "paired_bootstrap": "paired bootstrap", "mcnemar": "McNemar test"}.get(
            mt[0].get("method"), mt[0].get("method")
        )
        rows = []
        for a in names:
            cells = []
            for b in names:
                if a == b:
                    cells.append({"diag": True})
                    continue
                t = next((t for t in mt if (t["a"], t["b"]) in ((a, b), (b, a))), None)
                if t is None or t.get("p_holm") is None:
                    cells.append({"diag": False, "diff": "n/a", "p": (t or {}).get("error", "no test"), "cls": "na"})
                    continue
                diff = t.get("diff")
                diff = None if diff is None else (diff if t["a"] == a else -diff)
                sig = bool(t.get("significant"))
                cls = "ns" if not sig or diff is None else ("better" if diff > 0 else "worse")
                cells.append(
                    {
                        "diag": False,
                        "diff": "n/a" if diff is None else f"{diff:+.3f}",
                        "p": p_text(t["p_holm"]),
                        "cls": cls,
                        "sig": sig,
                    }
                )
            rows.append({"name": a, "cells": cells})
        matrices.append({"title": title, "method": method, "names": names, "rows": rows})
    return {
        "matrices": matrices,
        "alpha": pw.get("alpha", 0.05),
        "n_tests": pw.get("n_tests"),
        "n_common": pw.get("n_common"),
        "correction": pw.get("correction", "holm"),
    }


def roc_section(arts) -> dict[str, Any]:
    models = _models(arts)
    if not any((e.get("curves") or {}).get("roc") for e in models.values()):
        raise Missing("comparison.json holds no ROC curves")
    return {"img": F.data_uri(F.roc_pr_overlay(models, F.model_colors(list(models))))}


def confusion_section(arts) -> dict[str, Any]:
    models = _models(arts)
    try:
        img = F.confusion_grid(models)
    except ValueError as e:
        raise Missing(str(e)) from None
    rule = next((e.get("confusion", {}).get("rule") for e in models.values() if e.get("confusion")), "")
    return {"img": F.data_uri(img), "rule": rule}


def calibration_section(arts) -> dict[str, Any]:
    models = _models(arts)
    panels, rows = [], []
    for name, e in models.items():
        rel = e.get("reliability") or {}
        if not rel.get("before"):
            continue
        panels.append({"model": name, "img": F.data_uri(F.reliability_pair(e, name))})
        cal = e.get("calibration") or {}
        rows.append(
            {
                "model": name,
                "t": num(e.get("temperature")),
                "ece_before": num(rel["before"].get("ece"), 3),
                "ece_after": num((rel.get("after") or {}).get("ece"), 3),
                "nll_before": num(cal.get("val_nll_before"), 3),
                "nll_after": num(cal.get("val_nll_after"), 3),
            }
        )
    if not panels:
        raise Missing("comparison.json holds no reliability curves")
    return {"panels": panels, "rows": rows}


def referral_section(arts) -> dict[str, Any]:
    models = _models(arts)
    try:
        img = F.risk_coverage_overlay(models)
    except ValueError as e:
        raise Missing(str(e)) from None
    rows = []
    for name, e in models.items():
        a = e.get("abstention") or {}
        if not a:
            continue
        rows.append(
            {
                "model": name,
                "method": str(a.get("method", "")).replace("_", " "),
                "threshold": "refer all" if a.get("threshold") is None else num(a.get("threshold"), 3),
                "target": pct(a.get("target_risk")),
                "val_coverage": pct(a.get("val_coverage")),
                "test_coverage": pct(a.get("test_coverage")),
                "test_risk": pct(a.get("test_risk"), 1),
            }
        )
    return {"img": F.data_uri(img), "rows": rows, "split": _split(arts)}


def gradcam_section(arts) -> dict[str, Any]:
    c = _comparison(arts)
    loc = c.get("localization") or {}
    gallery = (c.get("figures") or {}).get("gradcam_gallery") or []
    loc_rows = []
    if loc.get("available"):
        for name in arts.order:
            s = c["models"][name].get("localization") or {}
            if "pointing_game" in s:
                loc_rows.append(
                    {
                        "model": name,
                        "method": s.get("method"),
                        "n": s.get("n_scored"),
                        "pointing": pct(s.get("pointing_game")),
                        "iou": num(s.get("iou")),
                    }
                )
    groups, missing = [], 0
    for name in arts.order:
        items = [g for g in gallery if g.get("model") == name]
        if not items:
            continue
        cases = []
        for g in items:
            path = arts.run.root / g["file"]
            if not path.is_file():
                missing += 1
                continue
            cases.append(
                {
                    "img": F.data_uri(path.read_bytes()),
                    "correct": bool(g.get("correct")),
                    "id": g.get("id"),
                    "label": g.get("label"),
                    "predicted": g.get("predicted"),
                    "probability": pct(g.get("probability")),
                }
            )
        if cases:
            groups.append(
                {
                    "model": name,
                    "right": [x for x in cases if x["correct"]],
                    "wrong": [x for x in cases if not x["correct"]],
                }
            )
    if not groups and not loc_rows:
        reason = loc.get("reason") or "no Grad-CAM images were made (no deep model with a CAM layer)"
        if missing:
            reason = f"{missing} gallery image(s) listed in comparison.json are missing from figures/"
        raise Missing(reason)
    return {
        "groups": groups,
        "loc_rows": loc_rows,
        "loc_reason": None if loc.get("available") else loc.get("reason"),
        "tolerance": loc.get("pointing_tolerance_px"),
        "missing": missing,
    }


def training_section(arts) -> dict[str, Any]:
    models = _training_entries(arts)
    if not models:
        raise Missing("no model recorded a training_log.csv")
    try:
        img = F.training_curves(models, F.model_colors(arts.order))
    except ValueError as e:
        raise Missing(str(e)) from None
    rows = []
    for name in arts.order:
        info, timing = arts.infos.get(name) or {}, (arts.metrics.get(name) or {}).get("timing") or {}
        deep = _kind(arts, name) == "deep"
        rows.append(
            {
                "model": name,
                "kind": _kind(arts, name),
                "epochs": (
                    f"{info.get('epochs_run', 'n/a')} (best {int(info['best_epoch']) + 1})"
                    if deep and info.get("best_epoch") is not None
                    else "—"
                ),
                "stopped": ("yes" if info.get("stopped_early") else "no") if deep else "—",
                "fit": f"{num(timing.get('fit_seconds'), 1)} s" if timing.get("fit_seconds") is not None else "n/a",
                "speed": f"{num(timing.get('images_per_second'), 0)} img/s"
                if timing.get("images_per_second") is not None
                else "n/a",
            }
        )
    return {"img": F.data_uri(img), "rows": rows}


def _training_entries(arts) -> dict[str, dict[str, Any]]:
    out = {}
    for name in arts.order:
        entry = ((arts.comparison or {}).get("models") or {}).get(name) or {}
        if entry.get("training"):
            out[name] = entry
            continue
        log = arts.run.model(name).training_log
        if log.is_file():
            cols = {k: [_maybe_float(v) for v in vals] for k, vals in read_csv_columns(log).items()}
            out[name] = {"training": {"kind": "epochs" if _kind(arts, name) == "deep" else "grid", "columns": cols}}
    return out


def read_csv_columns(path: Path) -> dict[str, list[str]]:
    """A small CSV as {column: [values]} (training logs when comparison.json is absent)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[str]] = {}
    for row in rows:
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    return out


def _maybe_float(v: str) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v or None


# -- model cards -------------------------------------------------------------------------------
def model_cards_section(arts) -> dict[str, Any]:
    if not arts.order:
        raise Missing("no trained model in the run")
    return {"cards": [model_card(arts, n) for n in arts.order]}


def model_card(arts, name: str) -> dict[str, Any]:
    """Intended use, details, data, performance and limitations of one model, in plain words."""
    info = arts.infos.get(name) or {}
    entry = ((arts.comparison or {}).get("models") or {}).get(name) or {}
    fp = arts.fingerprint or {}
    split = _split(arts)
    classes = info.get("class_names") or fp.get("class_names") or []
    modality = info.get("modality") or fp.get("modality") or "medical"
    task = str(info.get("task") or fp.get("task") or "")
    kind = _kind(arts, name)
    intended = (
        f"Second reader for {modality} images: suggests one of {', '.join(classes)} "
        f"({task}) with a calibrated probability and, for uncertain cases, a referral to a clinician. "
        "For research and decision support only; not a medical device, not for unsupervised diagnosis."
    )
    config = info.get("config") or {}
    steps = ", ".join(s.get("name", "?") for s in (info.get("preprocessing") or {}).get("steps", []))
    details = [
        ("Architecture", f"{info.get('model') or name} ({kind})"),
        (
            "Input",
            f"{info.get('img_size', '?')} px, {info.get('in_channels', '?')} channel(s), {info.get('dims', '?')}D",
        ),
        ("Preprocessing", steps or "not recorded"),
    ]
    if kind == "deep":
        details.append(
            (
                "Training",
                f"{info.get('epochs_run', '?')} epoch(s), optimizer {config.get('optimizer', '?')}, "
                f"learning rate {config.get('lr', '?')}, seed {info.get('seed', '?')}",
            )
        )
    elif info.get("best_params"):
        details.append(("Chosen settings", ", ".join(f"{k} = {v}" for k, v in info["best_params"].items())))
    n = {
        **((arts.comparison or {}).get("n") or {}),
        **((arts.metrics.get(name) or {}).get("n") or {}),
        **(entry.get("n") or {}),
    }
    data = [
        ("Source", info.get("source") or arts.source),
        ("Cases", " · ".join(f"{k} {v}" for k, v in n.items()) or "not recorded"),
    ]
    if fp.get("class_counts"):
        data.append(("Class counts (all data)", ", ".join(f"{k} {v}" for k, v in fp["class_counts"].items())))
    metrics = _eval_metrics(arts, name)
    perf = [
        (METRIC_LABELS[k], with_ci(metrics[k]))
        for k in ("auc", "acc", "sensitivity", "specificity", "f1", "ece")
        if k in metrics and _value(metrics[k]) is not None
    ]
    if entry.get("temperature") is not None:
        perf.append(("Temperature (fitted on validation)", num(entry["temperature"])))
    th = entry.get("thresholds") or {}
    if th.get("decision") is not None:
        perf.append(("Decision threshold (validation Youden)", num(th["decision"], 3)))
    a = entry.get("abstention") or {}
    if a.get("test_coverage") is not None:
        perf.append(
            (
                "Answers without referral",
                f"{pct(a['test_coverage'])} of {split} cases, error {pct(a.get('test_risk'), 1)}",
            )
        )
    return {
        "name": name,
        "kind": kind,
        "served": name == _served(arts),
        "intended": intended,
        "details": details,
        "data": data,
        "performance": perf,
        "split": split,
        "limitations": limitations(arts, name, metrics, entry),
    }


def limitations(arts, name: str, metrics: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """What a reader should know before trusting this model, derived from the artifacts."""
    out = []
    split = _split(arts)
    n = (entry.get("n") or {}).get(split) or ((arts.metrics.get(name) or {}).get("n") or {}).get(split)
    if n and n < SMALL_TEST_SET:
        out.append(f"Evaluated on only {n} {split} cases: performance estimates are uncertain.")
    auc = metrics.get("auc")
    if (
        isinstance(auc, dict)
        and auc.get("low") is not None
        and auc.get("high") is not None
        and auc["high"] - auc["low"] > 0.15
    ):
        out.append(f"The AUC confidence interval is wide ({ci_range(auc)}).")
    if str(arts.source or "").startswith("synthetic:"):
        out.append("Trained and tested on synthetic images; says nothing about real patients.")
    out.append("Single-source data; not validated on other sites, scanners or populations.")
    ece = (((entry.get("reliability") or {}).get("after")) or {}).get("ece")
    if ece is not None and ece > 0.1:
        out.append(f"Probabilities remain poorly calibrated after temperature scaling (ECE {num(ece, 3)}).")
    loc = entry.get("localization") or {}
    if loc.get("pointing_game") is not None and loc["pointing_game"] < 0.5:
        out.append(
            f"Its heatmaps point at the lesion in only {pct(loc['pointing_game'])} of cases: do not use them "
            "to locate findings."
        )
    a = entry.get("abstention") or {}
    if a.get("test_risk") is not None and a.get("target_risk") is not None and a["test_risk"] > a["target_risk"]:
        out.append(
            f"The referral rule misses its error target on {split} data ({pct(a['test_risk'], 1)} vs "
            f"{pct(a['target_risk'])})."
        )
    if arts.audit and arts.audit.get("leakage_found"):
        out.append("The data audit found leakage between source splits; results may be optimistic.")
    return out


# -- provenance --------------------------------------------------------------------------------
def provenance_section(arts) -> dict[str, Any]:
    """The manifest's record (seed, code, libraries) and the sha256 of every artifact as it is now.

    Hashes are computed while the report is written, so they are what a manifest written next holds;
    each is checked against manifest.json: ``verified``, ``updated since the manifest``, ``not in
    the manifest`` or ``missing`` (listed in the manifest, gone from disk).
    """
    from medlens.manifest import artifact_files
    from medlens.runs import sha256_file

    m = arts.manifest
    if not m:
        raise Missing(
            arts.notes.get("manifest", "manifest.json is missing") + "; it is written by `medlens train` "
            "and `medlens evaluate`"
        )
    meta = [
        ("Manifest written", m.get("created")),
        ("Seed", m.get("seed")),
        ("Code (git commit)", m.get("git_commit")),
        ("Platform", m.get("platform")),
        ("Command", m.get("command")),
    ]
    listed = m.get("files") or {}
    report = arts.run.report.relative_to(arts.run.root).as_posix()
    files = []
    for rel in sorted(set(artifact_files(arts.run.root)) | set(listed)):
        if rel == report:
            continue
        rec, path = listed.get(rel), arts.run.root / rel
        if not path.is_file():
            files.append(
                {"path": rel, "bytes": _size(rec.get("bytes")), "sha256": rec.get("sha256", ""), "status": "missing"}
            )
            continue
        digest = sha256_file(path)
        status = (
            "not in the manifest"
            if rec is None
            else "verified"
            if rec.get("sha256") == digest
            else "updated since the manifest"
        )
        files.append({"path": rel, "bytes": _size(path.stat().st_size), "sha256": digest, "status": status})
    config_text = arts.run.config.read_text() if arts.run.config.is_file() else None
    return {
        "meta": [(k, v if v is not None else "not recorded") for k, v in meta],
        "libraries": list((m.get("libraries") or {}).items()),
        "files": files,
        "config": config_text,
        "n_verified": sum(f["status"] == "verified" for f in files),
        "n_other": sum(f["status"] != "verified" for f in files),
    }


def _size(n: Any) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
