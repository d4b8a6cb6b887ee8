"""`medlens evaluate RUN --on SOURCE`: run the external validation and print it beside the internal figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from medlens.cli.common import console

SHOWN = ("auc", "acc@threshold", "acc", "sensitivity", "specificity", "ece")
"""Metrics of the printed table (the report and comparison.json hold them all)."""
LABELS = {
    "auc": "AUC",
    "acc@threshold": "ACC",
    "acc": "ACC",
    "sensitivity": "sens",
    "specificity": "spec",
    "ece": "ECE",
}


def evaluate_on(
    run: Path,
    source: str | None,
    class_map: Path | None,
    others: list[str],
    *,
    scale: float | None = None,
    resamples: int,
    seed: int,
    report: bool,
    log: Callable[[str], None],
) -> None:
    from medlens.errors import MedlensError
    from medlens.study.external import evaluate_external

    if source is None:
        raise MedlensError(f"{'--scale' if class_map is None else '--class-map'} needs --on SOURCE")
    if others:
        raise MedlensError(f"{' and '.join(others)} apply to the internal evaluation: run it without --on")
    entry = evaluate_external(
        run, source, class_map=class_map, scale=scale, n_resamples=resamples, seed=seed, report=report, log=log
    )
    if entry.get("task") == "segmentation":
        print_external_segmentation(entry)
    else:
        print_external(entry)


def print_external(entry: dict[str, Any]) -> None:
    """Per model: internal and external values with 95% CIs, and external minus internal (* CI excludes 0)."""
    from rich.table import Table

    table = Table(
        title=f"external validation on {entry['name']} ({entry['n_images']} images, all splits) — "
        f"threshold and temperature from internal validation; 95% bootstrap CIs; * = CI of the difference excludes 0"
    )
    for col in ("model", "metric", "internal", "external", "external − internal"):
        table.add_column(col, justify="left" if col in ("model", "metric") else "right")
    for model, m in entry["models"].items():
        shown = [k for k in SHOWN if k in m["metrics"]]
        if "acc@threshold" in shown:
            shown.remove("acc")
        for k, metric in enumerate(shown):
            cell = m["metrics"][metric]
            d = cell["difference"]
            excludes_zero = d.get("low") is not None and d.get("high") is not None and (d["low"] > 0 or d["high"] < 0)
            table.add_row(
                f"{model} ({m['internal_split']} n={m['n']['internal']} / n={m['n']['external']})" if k == 0 else "",
                LABELS[metric],
                _ci(cell["internal"]),
                _ci(cell["external"]),
                _ci(d, signed=True) + ("*" if excludes_zero else " "),
            )
    console.print(table)
    for model, m in entry["models"].items():
        for w in m.get("warnings") or []:
            console.print(f"warning: {model}: {w}", highlight=False)
    for m in entry["models"].values():
        console.print(f"predictions: {m['predictions_file']}", soft_wrap=True, highlight=False)


SEGMENTATION_SHOWN = ("dice", "hd95", "nsd", "f1", "auc")
"""Segmentation metrics of the printed table (those the source has)."""


def print_external_segmentation(entry: dict[str, Any]) -> None:
    """Per model and class: internal and external means with 95% CIs, and external minus internal."""
    from rich.table import Table

    scale = "" if entry.get("scale") is None else f", images scaled by {entry['scale']:g}"
    table = Table(
        title=f"external validation on {entry['name']} ({entry['n_images']} cases, all splits{scale}) — "
        f"means over cases, 95% bootstrap CIs; * = CI of the difference excludes 0"
    )
    for col in ("model", "class", "metric", "internal", "external", "external − internal"):
        table.add_column(col, justify="left" if col in ("model", "class", "metric") else "right")
    unit = entry.get("distance_unit", "mm")
    for model, m in entry["models"].items():
        first = True
        for cls, cells in m["by_class"].items():
            for metric in [k for k in SEGMENTATION_SHOWN if k in cells]:
                cell = cells[metric]
                d = cell["difference"]
                excludes_zero = (
                    d.get("low") is not None and d.get("high") is not None and (d["low"] > 0 or d["high"] < 0)
                )
                table.add_row(
                    f"{model} ({m['internal_split']} n={m['n']['internal']} / n={m['n']['external']})" if first else "",
                    cls,
                    {"dice": "Dice", "hd95": f"HD95 ({unit})", "nsd": "NSD", "f1": "F1 (FOV)", "auc": "AUC (FOV)"}[
                        metric
                    ],
                    _ci(cell["internal"]),
                    _ci(cell["external"]),
                    _ci(d, signed=True) + ("*" if excludes_zero else " "),
                )
                first = False
    console.print(table)
    for model, m in entry["models"].items():
        for w in m.get("warnings") or []:
            console.print(f"warning: {model}: {w}", highlight=False)
        console.print(f"per-case metrics: {m['cases_file']}", soft_wrap=True, highlight=False)


def _ci(stat: dict[str, Any], signed: bool = False) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")

    if stat.get("value") is None:
        return "-"
    return f"{f(stat['value'])} [{f(stat.get('low'))}, {f(stat.get('high'))}]"
