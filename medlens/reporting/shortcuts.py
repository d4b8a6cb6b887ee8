"""The report's "Leaked splits and shortcuts" section (its key findings: :mod:`medlens.reporting.sections`).

Built from ``comparison.json``'s ``splitting`` (:mod:`medlens.data.leakage`) and ``shortcuts``
(:mod:`medlens.study.shortcuts`): how the run's splits were made and how many patients span
them, the metadata-only baseline against every image model, and how well each model's score
separates each attribute next to how well it separates the label.
"""

from __future__ import annotations

from typing import Any

from medlens.reporting.sections import Missing, _comparison, num, p_text, splitting_line, with_ci


def shortcuts_section(arts) -> dict[str, Any]:
    c = _comparison(arts)
    shortcuts = c.get("shortcuts")
    split_text = splitting_line(c.get("splitting"))
    if not shortcuts and not split_text:
        raise Missing("comparison.json holds no splitting or shortcut checks; run `medlens evaluate RUN`")
    body: dict[str, Any] = {
        "splitting": split_text,
        "dropped_file": (c.get("splitting") or {}).get("dropped_file"),
        "shortcut_reason": None,
        "split": (shortcuts or {}).get("split") or c.get("split"),
    }
    shortcuts = shortcuts or {}
    if not shortcuts.get("available"):
        body["shortcut_reason"] = shortcuts.get("reason") or "not computed"
        return body
    base = shortcuts.get("metadata_baseline") or {}
    columns = shortcuts.get("columns") or {}
    body["columns"] = ", ".join(col["name"] for col in columns.get("used") or [])
    body["left_out"] = [f"{col['name']} ({col['reason']})" for col in columns.get("left_out") or []]
    metrics = base.get("metrics") or {}
    body["baseline"] = {
        "auc": with_ci(metrics.get("auc"), 3),
        "sensitivity": with_ci(metrics.get("sensitivity")),
        "specificity": with_ci(metrics.get("specificity")),
        "threshold": num(base.get("threshold"), 3) if base.get("threshold") is not None else "",
        "error": base.get("error"),
    }
    body["comparisons"] = [
        {
            "model": t["model"],
            "image_auc": num(t.get("image_auc"), 3),
            "metadata_auc": num(t.get("metadata_auc"), 3),
            "diff": f"{t['diff']:+.3f} [{t['ci_low']:+.3f}, {t['ci_high']:+.3f}]" if "diff" in t else "n/a",
            "p": p_text(t.get("p_value")) if "p_value" in t else t.get("error", ""),
            "verdict": t.get("verdict", ""),
            "flag": t.get("verdict") not in (None, "better than metadata"),
        }
        for t in base.get("comparisons") or []
    ]
    label_auc = {
        n: (((c.get("models") or {}).get(n) or {}).get("metrics") or {}).get(shortcuts.get("split"))
        for n in c.get("models") or {}
    }
    rows = []
    for model, entries in ((shortcuts.get("attribute_prediction") or {}).get("models") or {}).items():
        label = ((label_auc.get(model) or {}).get("auc") or {}).get("value")
        for e in entries:
            rows.append(
                {
                    "model": model,
                    "attribute": e["attribute"],
                    "contrast": f"{e['higher_for']} vs {e['versus']}" if "auc" in e else e.get("error", ""),
                    "auc": with_ci({"value": e.get("auc"), "low": e.get("low"), "high": e.get("high")}, 3),
                    "label_auc": num(label, 3),
                    "spearman": num((e.get("spearman") or {}).get("rho"), 2) if e.get("spearman") else "",
                    "n": e.get("n"),
                    "flag": "auc" in e and label is not None and e["low"] > 0.5 and e["auc"] >= label,
                }
            )
    body["attribute_rows"] = rows
    body["method"] = (shortcuts.get("attribute_prediction") or {}).get("method", "")
    body["findings"] = shortcuts.get("findings") or []
    return body


SECTION = ("shortcuts", "Leaked splits and shortcuts", shortcuts_section)
