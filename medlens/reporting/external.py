"""The report's external validation section: internal and external figures side by side, their
difference, and a reliability diagram of each model on both (segmentation: a table per class).

Built from ``comparison.json``'s ``external`` section (written by ``medlens evaluate RUN --on SOURCE``,
:mod:`medlens.study.external`); shown only when that section exists.
"""

from __future__ import annotations

from typing import Any

from medlens.reporting import figures as F
from medlens.reporting.sections import METRIC_LABELS, Missing, _comparison, num, pct, with_ci

METRICS = (
    "auc",
    "acc@threshold",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "balanced_accuracy",
    "brier",
    "ece",
)
"""Rows of the side-by-side table, in this order (those a task has)."""


def external_section(arts) -> dict[str, Any]:
    external = _comparison(arts).get("external")
    if not external:
        raise Missing("no external source was evaluated; run `medlens evaluate RUN --on SOURCE`")
    return {"sources": [_source(arts, entry) for entry in external.values()]}


def _source(arts, entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("task") == "segmentation":
        return {**_header(entry), "segmentation": True, "models": _segmentation_models(arts, entry)}
    models = []
    for name in [n for n in arts.order if n in entry["models"]] or list(entry["models"]):
        m = entry["models"][name]
        rows = []
        for metric in [k for k in METRICS if k in m["metrics"]] or list(m["metrics"]):
            cell = m["metrics"][metric]
            d = cell["difference"]
            excludes_zero = d.get("low") is not None and d.get("high") is not None and (d["low"] > 0 or d["high"] < 0)
            rows.append(
                {
                    "metric": METRIC_LABELS.get(metric, metric),
                    "internal": with_ci(cell["internal"], 3),
                    "external": with_ci(cell["external"], 3),
                    "difference": _signed(d),
                    "flag": excludes_zero,
                }
            )
        a = m.get("abstention") or {}
        models.append(
            {
                "model": name,
                "split": m["internal_split"],
                "n_internal": m["n"]["internal"],
                "n_external": m["n"]["external"],
                "threshold": num(m.get("decision_threshold"), 3),
                "temperature": num(m.get("temperature"), 2),
                "rows": rows,
                "referral": _referral(a),
                "img": F.data_uri(_reliability(m, name, entry["name"])),
                "warnings": m.get("warnings") or [],
            }
        )
    return {**_header(entry), "segmentation": False, "models": models}


def _header(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": entry["name"],
        "uri": entry["source"],
        "n_images": entry["n_images"],
        "splits": " · ".join(f"{k} {v}" for k, v in entry["splits"].items()),
        "classes": ", ".join(f"{k.strip()} → {v}" for k, v in entry["classes"].items()),
        "class_map": entry.get("class_map"),
        "scale": entry.get("scale"),
        "n_resamples": entry["ci"]["n_resamples"],
    }


def _segmentation_models(arts, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model, a table per class (and the mean of the classes): each metric inside and outside."""
    from medlens.reporting.segmentation import metric_labels

    labels = metric_labels(entry)
    models = []
    for name in [n for n in arts.order if n in entry["models"]] or list(entry["models"]):
        m = entry["models"][name]
        groups = list(m["by_class"].items()) + (
            [("mean of the classes", m["mean_over_classes"])] if m.get("mean_over_classes") else []
        )
        tables = [
            {
                "class": cls,
                "rows": [
                    {
                        "metric": labels.get(metric, metric),
                        "internal": with_ci(cell["internal"], 3),
                        "external": with_ci(cell["external"], 3),
                        "difference": _signed(cell["difference"]),
                        "flag": _excludes_zero(cell["difference"]),
                    }
                    for metric, cell in cells.items()
                ],
            }
            for cls, cells in groups
        ]
        models.append(
            {
                "model": name,
                "split": m["internal_split"],
                "n_internal": m["n"]["internal"],
                "n_external": m["n"]["external"],
                "tables": tables,
                "cases_file": m.get("cases_file"),
                "warnings": m.get("warnings") or [],
            }
        )
    return models


def _excludes_zero(d: dict[str, Any]) -> bool:
    return d.get("low") is not None and d.get("high") is not None and (d["low"] > 0 or d["high"] < 0)


def _signed(ci: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{float(v):+.3f}"

    if ci.get("value") is None:
        return "n/a"
    return f"{f(ci['value'])} [{f(ci.get('low'))} to {f(ci.get('high'))}]"


def _referral(a: dict[str, Any]) -> str | None:
    if not a.get("method"):
        return None
    inside, outside = a.get("internal") or {}, a.get("external") or {}
    return (
        f"answered internally {pct(inside.get('coverage'))} (error {pct(inside.get('risk'), 1)}), "
        f"externally {pct(outside.get('coverage'))} (error {pct(outside.get('risk'), 1)})"
    )


def _reliability(m: dict[str, Any], name: str, source: str) -> bytes:
    """Reliability diagram of the model on its internal test split and on the external source."""
    from medlens.evaluation.calibration import plot_reliability

    rel = m["reliability"]
    curves = {f"internal {m['internal_split']}": rel["internal"], f"external {source}": rel["external"]}
    return F.via_file(plot_reliability, curves, title=f"{name}: calibration inside and outside")


SECTION = ("external", "External validation", external_section)
"""(id, title, builder) for :func:`medlens.reporting.sections.report_context`'s optional sections."""
