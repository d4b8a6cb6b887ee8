"""Subgroups of a classification run (`evaluate --by`, `compare --by`): comparison.json's ``subgroups``.

The evaluation stage calls :func:`check_request` before any work (an unknown column or a bad
``--bands`` is a one-line error) and :func:`subgroups_section` with each model's evaluated ids,
labels, temperature-scaled probabilities and decision threshold — the decisions counted in
``decisions_SPLIT.csv`` and the main results. Attributes are joined by sample id from the run's
source (:mod:`medlens.study.attributes_join`); statistics come from
:mod:`medlens.evaluation.subgroups`; Holm's correction runs over the tests of one column (every
model and metric). A forest plot per column goes to ``figures/subgroups_COLUMN.png``.

Section::

  subgroups  {"available": true, "split", "min_group", "min_class", "alpha", "correction",
              "decision": "...", "tests": {metric: method}, "columns": {column: COLUMN}}
             or {"available": false, "reason"} (not a binary task)
  COLUMN     {"kind", "banding" ("given" | "quartiles" | null), "edges", "banding_note", "order",
              "figure" (relative to the run), "models": {model: {"groups": {group: GROUP},
              "gaps": {metric: GAP | null}, "equalized_odds": {"tpr_gap", "fpr_gap", "gap"} | null}},
              "significant": ["model metric", ...]}

GROUP and GAP are :func:`medlens.evaluation.subgroups.subgroup_statistics`'s, GAP with ``p_holm``
and ``significant`` added.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluation import subgroups as S
from medlens.study.attributes_join import attribute_columns, resolve_columns

ALPHA = 0.05


def parse_bands(specs: Sequence[str] | None) -> dict[str, list[float]]:
    """``["age=40,60,80"]`` -> ``{"age": [40.0, 60.0, 80.0]}``; a malformed one is a MedlensError."""
    out: dict[str, list[float]] = {}
    for spec in specs or ():
        name, sep, edges = spec.partition("=")
        try:
            values = [float(e) for e in edges.split(",") if e.strip()]
        except ValueError:
            values = []
        if not sep or not name.strip() or not values:
            raise MedlensError(f"--bands '{spec}': expected COLUMN=EDGE,EDGE,... (e.g. age=40,60,80)")
        out[name.strip()] = values
    return out


def check_request(dataset: Any, by: Sequence[str], bands: Mapping[str, Sequence[float]] | None) -> list[str]:
    """The columns of ``by`` as the source names them; MedlensError for an unknown column or a band
    given for a column not in ``by``."""
    columns = resolve_columns(dataset, by)
    for name in bands or {}:
        key = resolve_columns(dataset, [name])[0]
        if key not in columns:
            raise MedlensError(f"--bands {name}: the column is not among --by ({', '.join(columns)})")
    return columns


def subgroups_section(
    run: Any,
    dataset: Any,
    by: Sequence[str],
    bands: Mapping[str, Sequence[float]] | None,
    task: str,
    evaluated: Mapping[str, tuple[list[str], np.ndarray, np.ndarray, float | None]],
    *,
    split: str,
    min_group: int = S.MIN_GROUP,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Any], list[Path]]:
    """The ``subgroups`` section and the forest-plot files written.

    ``evaluated``: per model (display order) its SPLIT ids, labels, calibrated probabilities and
    decision threshold.
    """
    if task != "binary":
        return {"available": False, "reason": f"subgroups need a binary task (this run is {task})"}, []
    from medlens.evaluation.statistics import holm_correction
    from medlens.reporting.figures import forest_plot, model_colors
    from medlens.runs import atomic_write_bytes

    columns = check_request(dataset, by, bands)
    band_edges = {resolve_columns(dataset, [k])[0]: v for k, v in (bands or {}).items()}
    all_ids = list(dict.fromkeys(i for ids, *_ in evaluated.values() for i in ids))
    values = attribute_columns(dataset, all_ids, columns)
    section: dict[str, Any] = {
        "available": True,
        "split": split,
        "min_group": min_group,
        "min_class": S.MIN_CLASS,
        "alpha": ALPHA,
        "correction": "holm over the tests of one column (every model and metric)",
        "decision": "each model's decision threshold, chosen on validation (as decisions_SPLIT.csv)",
        "tests": {
            "auc": "DeLong variances, Cochran's Q over the groups (z test of two independent AUCs for two)",
            "sensitivity": "Fisher's exact test (two groups) or chi-square test of independence",
            "specificity": "Fisher's exact test (two groups) or chi-square test of independence",
        },
        "columns": {},
    }
    written: list[Path] = []
    colors = model_colors(list(evaluated))
    for column in columns:
        try:
            labels, info = S.assign_groups(values[column], band_edges.get(column))
        except ValueError as e:
            raise MedlensError(f"--bands {column}: the column {e}") from None
        group_of = dict(zip(all_ids, labels))
        entry: dict[str, Any] = {**info, "banding_note": _banding_note(info, split), "models": {}}
        for model, (ids, y, probs, threshold) in evaluated.items():
            entry["models"][model] = S.subgroup_statistics(
                y,
                probs,
                threshold,
                [group_of[i] for i in ids],
                info["order"],
                min_group=min_group,
                n_resamples=n_resamples,
                seed=seed,
            )
        entry["significant"] = _holm(entry, holm_correction)
        rel = f"{run.figures.name}/subgroups_{_file_name(column)}.png"
        run.figures.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run.root / rel, forest_plot(entry, colors, title=f"{split} split by {column}"))
        written.append(run.root / rel)
        entry["figure"] = rel
        section["columns"][column] = entry
    return section, written


def _holm(entry: dict[str, Any], holm_correction) -> list[str]:
    """Holm-adjust every gap test of one column in place; the significant ones as "model metric"."""
    tests = [(m, metric, g) for m, e in entry["models"].items() for metric, g in e["gaps"].items() if g]
    adjusted = holm_correction([g["p_value"] for _, _, g in tests]) if tests else []
    out = []
    for (model, metric, gap), p in zip(tests, adjusted):
        gap["p_holm"] = p
        gap["significant"] = bool(np.isfinite(p) and p < ALPHA)
        if gap["significant"]:
            out.append(f"{model} {metric}")
    return out


def _banding_note(info: dict[str, Any], split: str) -> str | None:
    if info["banding"] == "given":
        return "bands at the given edges"
    if info["banding"] == "quartiles":
        return f"bands at the quartiles of the {split} split's values"
    return None


def _file_name(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", column).strip("._") or "column"


def gap_lines(comparison: Mapping[str, Any]) -> list[str]:
    """One line per significant subgroup gap (for the CLI), or a line saying why there are none."""
    section = comparison.get("subgroups")
    if not section:
        return []
    if not section.get("available"):
        return [f"subgroups: {section.get('reason')}"]
    lines = []
    for column, entry in section["columns"].items():
        for model, stats in entry["models"].items():
            for metric, gap in stats["gaps"].items():
                if gap and gap.get("significant"):
                    lines.append(
                        f"subgroups: {model} {metric} differs by {column}: {gap['high']} {gap['diff']:+.3f} "
                        f"[{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}] vs {gap['low']} "
                        f"(Holm p = {gap['p_holm']:.2g})"
                    )
    if not lines:
        lines.append(f"subgroups: no significant gap by {', '.join(section['columns'])} (Holm, alpha {ALPHA})")
    return lines
