"""The report's subgroup section: per column a forest plot, a table per group and model, and the gaps.

Built from ``comparison.json``'s ``subgroups`` section (written by ``medlens evaluate RUN --by``);
the forest plot is drawn from it with :func:`medlens.reporting.figures.forest_plot`, as the
evaluation saved it to ``figures/``.
"""

from __future__ import annotations

from typing import Any

from medlens.reporting import figures as F
from medlens.reporting.sections import Missing, _comparison, num, p_text, pct, with_ci

METRICS = (("auc", "AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"))


def subgroups_section(arts) -> dict[str, Any]:
    section = _comparison(arts).get("subgroups")
    if not section:
        raise Missing("no subgroup analysis was requested; run `medlens evaluate RUN --by COLUMN`")
    if not section.get("available"):
        raise Missing(str(section.get("reason")))
    columns = []
    for column, entry in section["columns"].items():
        names = [n for n in arts.order if n in entry["models"]]
        rows, gaps = [], []
        for name in names:
            stats = entry["models"][name]
            for group in entry["order"]:
                g = stats["groups"].get(group) or {}
                ok = g.get("status") == "ok"
                rows.append(
                    {
                        "model": name,
                        "group": group,
                        "n": g.get("n"),
                        "positives": g.get("positives"),
                        "prevalence": pct(g.get("prevalence")),
                        "cells": [with_ci(g.get(m)) if ok else "too small" for m, _ in METRICS],
                        "small": not ok,
                    }
                )
            for metric, label in METRICS:
                gap = stats["gaps"].get(metric)
                if gap:
                    gaps.append(
                        {
                            "model": name,
                            "metric": label,
                            "groups": f"{gap['high']} − {gap['low']}",
                            "diff": f"{num(gap['diff'])} [{num(gap['ci_low'])}–{num(gap['ci_high'])}]",
                            "p": p_text(gap.get("p_holm")),
                            "significant": bool(gap.get("significant")),
                        }
                    )
            eo = stats.get("equalized_odds")
            if eo:
                gaps.append(
                    {
                        "model": name,
                        "metric": "Equalized odds",
                        "groups": f"TPR gap {num(eo['tpr_gap'])}, FPR gap {num(eo['fpr_gap'])}",
                        "diff": num(eo["gap"]),
                        "p": "",
                        "significant": False,
                    }
                )
        colors = F.model_colors(names)
        columns.append(
            {
                "column": column,
                "banding": entry.get("banding_note") or "one group per value",
                "img": F.data_uri(F.forest_plot(entry, colors, title=f"{section['split']} split by {column}")),
                "rows": rows,
                "gaps": gaps,
            }
        )
    return {
        "columns": columns,
        "split": section["split"],
        "min_group": section["min_group"],
        "min_class": section["min_class"],
        "alpha": section["alpha"],
    }


SECTION = ("subgroups", "Subgroups", subgroups_section)
