"""The ensembles of a run's evaluation: comparison entries beside the trained models, never served.

From the models' predictions (``predictions_{val,SPLIT}.csv``), on the cases every member has:

* ``mean-deep``: the mean probability of the deep models (when there are at least two);
* ``mean-all``: the mean of every model, deep and classical (when there is a classical one);
* ``stack-all``: a logistic regression on every model's scores, fitted on validation only
  (:func:`medlens.evaluation.ensembles.stack`; it is never given the evaluated split's labels).

Each gets the statistics of a model (:func:`medlens.study.comparison.model_statistics`: temperature
and threshold chosen on validation, bootstrap CIs on SPLIT) and paired tests against each of its
members (DeLong / paired bootstrap for AUC, McNemar for accuracy, Holm over these tests). Ensembles
have no weights and no model card: they are never the best model to serve, and they get no
decisions of a card, no localization and no Grad-CAM.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluation import ensembles as E
from medlens.study import comparison as C

Preds = tuple[list[str], np.ndarray, np.ndarray]  # ids, labels, probabilities of one split
NOTE = (
    "comparison entries only: never the served model; no weights, card, localization or Grad-CAM; "
    "stacking is fitted on validation predictions and labels (out-of-fold on validation)"
)


def plan(names: Sequence[str], kinds: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(name, method, members) of the ensembles a run of ``names`` gets."""
    deep = [n for n in names if kinds.get(n) != "classical"]
    out = []
    if len(deep) >= 2:
        out.append(("mean-deep", "average", deep))
    if len(names) >= 2 and len(deep) < len(names):
        out.append(("mean-all", "average", list(names)))
    if len(names) >= 2:
        out.append(("stack-all", "stacking", list(names)))
    return out


def ensembles_section(
    names: Sequence[str],
    kinds: Mapping[str, Any],
    preds: Mapping[str, tuple[Preds, Preds]],
    models: Mapping[str, dict[str, Any]],
    *,
    task: str,
    class_names: Sequence[str],
    split: str,
    n_resamples: int,
    seed: int,
    target_risk: float,
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[dict[str, Any] | None, dict[str, tuple[Preds, Preds]]]:
    """comparison.json's ``ensembles`` (None when the run has one model) and, per ensemble, its
    aligned (val, SPLIT) predictions for the decisions files. ``models``: the members' entries
    (with their ``_calibrated`` SPLIT probabilities)."""
    planned = plan(names, kinds)
    if not planned:
        return None, {}
    entries: dict[str, dict[str, Any]] = {}
    aligned: dict[str, tuple[Preds, Preds]] = {}
    skipped = []
    for name, method, members in planned:
        try:
            (val_ids, y_val, p_val), (ids, y_eval, p_eval) = _aligned(members, preds, 0), _aligned(members, preds, 1)
            if method == "average":
                q_val, q_eval = E.average(list(p_val.values())), E.average(list(p_eval.values()))
            else:
                q_val, q_eval = E.stack(list(p_val.values()), y_val, list(p_eval.values()), task, seed=seed)
                if split == "val":  # evaluated on validation itself: the out-of-fold probabilities, never in-sample
                    q_eval = q_val
        except MedlensError as e:
            skipped.append({"name": name, "method": method, "reason": e.problem})
            log(f"ensemble {name} skipped: {e.problem}")
            continue
        log(f"statistics: ensemble {name}")
        stats = C.model_statistics(
            task=task,
            class_names=class_names,
            y_val=y_val,
            p_val=q_val,
            y_eval=y_eval,
            p_eval=q_eval,
            split=split,
            n_resamples=n_resamples,
            seed=seed,
            target_risk=target_risk,
        )
        entries[name] = {
            "name": name,
            "kind": "ensemble",
            "method": method,
            "members": list(members),
            "fitted_on": "val (out-of-fold on val for its own val probabilities)" if method == "stacking" else None,
            "n": {"val": int(len(y_val)), split: int(len(y_eval))},
            **stats,
        }
        aligned[name] = ((val_ids, y_val, q_val), (ids, y_eval, q_eval))
    pairwise = _versus_members(entries, aligned, preds, models, task, n_resamples, seed)
    return {"note": NOTE, "order": list(entries), "models": entries, "pairwise": pairwise, "skipped": skipped}, aligned


def _aligned(members: Sequence[str], preds: Mapping[str, tuple[Preds, Preds]], which: int):
    """(ids, labels, {member: probabilities}) on the cases of one split every member has, in one order."""
    common = set(preds[members[0]][which][0])
    for m in members[1:]:
        common &= set(preds[m][which][0])
    order = [i for i in preds[members[0]][which][0] if i in common]
    if not order:
        raise MedlensError(f"the ensemble's members share no {'validation' if which == 0 else 'evaluated'} case")
    probs, y = {}, None
    for m in members:
        ids, y_m, p_m = preds[m][which]
        pos = {i: k for k, i in enumerate(ids)}
        idx = np.array([pos[i] for i in order], dtype=int)
        if y is not None and not np.array_equal(y, y_m[idx]):
            raise MedlensError(f"the members' labels disagree on the same cases ({members[0]} vs {m})")
        y = y_m[idx] if y is None else y
        probs[m] = p_m[idx]
    return order, y, probs


def _versus_members(entries, aligned, preds, models, task, n_resamples, seed) -> dict[str, Any]:
    """Each ensemble against each of its members on the SPLIT cases all of them have, Holm over all."""
    if not entries:
        return {"tests": [], "correction": "holm", "alpha": C.ALPHA, "n_tests": 0}
    members = sorted({m for e in entries.values() for m in e["members"]})
    everyone = [*entries, *members]
    common = set.intersection(*(set(aligned[e][1][0]) for e in entries), *(set(preds[m][1][0]) for m in members))
    order = [i for i in aligned[next(iter(entries))][1][0] if i in common]
    raw, hard, y = {}, {}, None
    for n in everyone:
        ids, y_n, p_n = aligned[n][1] if n in entries else preds[n][1]
        calibrated = entries[n]["_calibrated"] if n in entries else models[n]["_calibrated"]
        threshold = (entries[n] if n in entries else models[n])["decision_threshold"]
        pos = {i: k for k, i in enumerate(ids)}
        idx = np.array([pos[i] for i in order], dtype=int)
        raw[n], hard[n] = p_n[idx], C.decisions(np.asarray(calibrated)[idx], task, threshold)
        y = y_n[idx] if y is None else y
    pairs = [(e, m) for e in entries for m in entries[e]["members"]]
    return C.pairwise_tests(everyone, y, raw, hard, task, n_resamples=n_resamples, seed=seed, pairs=pairs)
