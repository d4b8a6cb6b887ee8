"""The report's "Ensembles" section: each ensemble of ``comparison.json`` (:mod:`medlens.study.ensembles`)
with its AUC and accuracy on the evaluated split, and how it compares with each of its members."""

from __future__ import annotations

from typing import Any

from medlens.reporting.sections import Missing, _comparison, p_text, with_ci

METHODS = {"average": "mean probability", "stacking": "logistic regression fitted on validation"}


def ensembles_section(arts) -> dict[str, Any]:
    c = _comparison(arts)
    ens = c.get("ensembles") or {}
    if not ens.get("models"):
        raise Missing("comparison.json holds no ensembles (a run needs at least two models)")
    split = c.get("split", "test")
    tests = (ens.get("pairwise") or {}).get("tests") or []
    rows = []
    for name in ens.get("order") or list(ens["models"]):
        e = ens["models"][name]
        metrics = (e.get("metrics") or {}).get(split) or {}
        versus = []
        for member in e.get("members") or []:
            auc = next((t for t in tests if t["a"] == name and t["b"] == member and t["metric"] == "auc"), None)
            if auc is None or auc.get("p_holm") is None:
                versus.append({"member": member, "text": "no test", "cls": "na"})
                continue
            cls = "ns" if not auc.get("significant") else ("better" if auc["diff"] > 0 else "worse")
            versus.append({"member": member, "text": f"{auc['diff']:+.3f} ({p_text(auc['p_holm'])})", "cls": cls})
        rows.append(
            {
                "name": name,
                "method": METHODS.get(e.get("method"), e.get("method")),
                "members": ", ".join(e.get("members") or []),
                "auc": with_ci(metrics.get("auc"), 3),
                "acc": with_ci(metrics.get("acc"), 3),
                "versus": versus,
            }
        )
    return {
        "rows": rows,
        "split": split,
        "skipped": [f"{s['name']}: {s['reason']}" for s in ens.get("skipped") or []],
        "n_tests": (ens.get("pairwise") or {}).get("n_tests"),
    }


SECTION = ("ensembles", "Ensembles", ensembles_section)
