"""The report's segmentation section: means with intervals, paired tests, box plots, overlays, per-case table.

Built from ``comparison.json``'s ``segmentation`` section (written by the evaluation stage), the
per-case tables ``models/MODEL/segmentation_cases_SPLIT.csv`` and the overlay PNGs in
``figures/``; a missing file degrades to a note, as in every other section.
"""

from __future__ import annotations

from typing import Any

from medlens.reporting import figures as F
from medlens.reporting.sections import Missing, _comparison, num, p_text, read_csv_columns, with_ci

BOXPLOT_METRICS = ("dice", "hd95")


def metric_labels(seg: dict[str, Any]) -> dict[str, str]:
    """Display names of the segmentation metrics, with their units."""
    unit = seg.get("distance_unit", "mm")
    return {
        "dice": "Dice",
        "hd95": f"HD{seg.get('hd_percentile', 95)} ({unit})",
        "nsd": f"NSD (≤ {num(seg.get('nsd_tolerance'), 1)} {unit})",
        "f1": "F1 (in FOV)",
        "sensitivity": "Sensitivity (in FOV)",
        "specificity": "Specificity (in FOV)",
        "accuracy": "Accuracy (in FOV)",
        "auc": "AUC (in FOV)",
    }


def segmentation_section(arts) -> dict[str, Any]:
    c = _comparison(arts)
    seg = c.get("segmentation")
    if not seg:
        raise Missing("comparison.json holds no segmentation results; run `medlens evaluate RUN`")
    labels = metric_labels(seg)
    metrics = list(seg.get("metrics") or [])
    names = [n for n in arts.order if n in (seg.get("models") or {})]
    lower = set(seg.get("lower_is_better") or [])
    summary = []
    for name in names:
        entry = seg["models"][name]
        groups = list((entry.get("by_class") or {}).items())
        if entry.get("mean_over_classes"):
            groups.append(("mean of the classes", entry["mean_over_classes"]))
        for cls, stats in groups:
            summary.append(
                {
                    "model": name,
                    "class": cls,
                    "cells": [_cell(stats.get(m)) for m in metrics],
                }
            )
    tests = [
        {
            "metric": labels.get(t["metric"], t["metric"]),
            "class": t["class"],
            "pair": f"{t['a']} − {t['b']}",
            "n": t.get("n"),
            "diff": num(t.get("diff"), 3),
            "p": p_text(t.get("p_holm")),
            "better": t.get("better") or "—",
            "significant": bool(t.get("significant")),
        }
        for t in ((seg.get("pairwise") or {}).get("tests") or [])
    ]
    cases, notes = _case_tables(arts, seg, names, metrics)
    return {
        "columns": [{"key": m, "label": labels.get(m, m), "lower_better": m in lower} for m in metrics],
        "summary": summary,
        "tests": tests,
        "alpha": (seg.get("pairwise") or {}).get("alpha"),
        "boxplot": _boxplot(cases, names, labels),
        "overlays": _overlays(arts, seg, notes),
        "cases": [
            {
                "model": n,
                "rows": [{"id": r["id"], "class": r["class"], "cells": [num(r[m], 3) for m in metrics]} for r in rows],
            }
            for n, rows in cases.items()
        ],
        "conventions": seg.get("conventions"),
        "split": seg.get("split") or c.get("split"),
        "notes": notes,
        "ci": c.get("ci") or {},
    }


SECTION = ("segmentation", "Segmentation results", segmentation_section)
"""(id, title, builder) as :func:`medlens.reporting.sections.report_context` registers it."""


def _cell(ci: Any) -> dict[str, str]:
    if not isinstance(ci, dict):
        return {"value": "n/a", "note": ""}
    undefined = ci.get("n_undefined") or 0
    return {"value": with_ci(ci, 3), "note": f"{undefined} undefined" if undefined else ""}


def _case_tables(arts, seg, names, metrics) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Per model, the rows of its per-case CSV (formatted), and notes on missing files."""
    tables, notes = {}, []
    for name in names:
        rel = (seg["models"][name] or {}).get("cases_file")
        path = arts.run.root / rel if rel else None
        if path is None or not path.is_file():
            notes.append(f"the per-case table of {name} ({rel}) is missing")
            continue
        cols = read_csv_columns(path)
        n = len(cols.get("id", []))
        tables[name] = [
            {"id": cols["id"][i], "class": cols["class"][i], **{m: _float(cols.get(m, [""] * n)[i]) for m in metrics}}
            for i in range(n)
        ]
    return tables, notes


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _boxplot(cases, names, labels) -> str | None:
    values = {
        m: {
            cls: {n: [r[m] for r in rows if r["class"] == cls] for n, rows in cases.items()}
            for cls in dict.fromkeys(r["class"] for rows in cases.values() for r in rows)
        }
        for m in BOXPLOT_METRICS
        if any(m in r for rows in cases.values() for r in rows)
    }
    try:
        return F.data_uri(F.segmentation_boxplots(values, F.model_colors(names), labels))
    except ValueError:
        return None


def _overlays(arts, seg, notes: list[str]) -> list[dict[str, Any]]:
    out = []
    for o in seg.get("overlays") or []:
        path = arts.run.root / o["file"]
        if not path.is_file():
            notes.append(f"the overlay {o['file']} is missing")
            continue
        out.append(
            {
                "img": F.data_uri(path.read_bytes()),
                "model": o.get("model"),
                "rank": o.get("rank"),
                "id": o.get("id"),
                "dice": num(o.get("dice"), 3),
            }
        )
    return out
