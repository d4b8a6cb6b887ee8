"""Train / val / test splits: the source's own when it has them, else stratified and patient-level.

:func:`assign_splits` rules:

* A source with train, val and test keeps them exactly.
* A source with some of them (e.g. train + test, as in many Kaggle sets) keeps what it has and
  carves the missing ones out of its train split: ``val_fraction`` (and/or ``test_fraction``)
  of the train records, patient-level and stratified.
* A source without splits is split into ``1 - val - test`` / ``val`` / ``test``.
* Records without a split in a source that has some are distributed over all three splits.
* ``resplit=True`` ignores the source's splits: every record is split as if it had none (a
  patient-level re-split of a source whose given split shares patients, see
  :mod:`medlens.data.leakage`).

Splitting is patient-level (all samples of one patient land in one split, so nothing leaks)
and stratified by a seeded greedy assignment: patients, shuffled by the seed and then taken
largest first, go one by one to the split whose class counts are furthest below their targets
(a squared deviation per class, weighted by the class size, plus the split size). It hits the
requested fractions closely even with groups, where scikit-learn's ``StratifiedGroupKFold``
only offers fractions of the form 1/k. Multi-label data stratifies on the positive count of
every label plus a "no label" count; unlabelled data (segmentation) only on sizes.
The same seed gives the same splits.

``splits.json`` is ``{"seed": int, "source": str, "splits": {"train": [ids], "val": [...], "test": [...]}}``
plus, when written by a study, ``"splitting"``: how the splits were made (:mod:`medlens.data.leakage`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medlens.data.sample import SPLITS, Dataset, Record, Task
from medlens.errors import BadInputError, MedlensError
from medlens.runs import write_json


def assign_splits(
    dataset: Dataset, *, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15, resplit: bool = False
) -> dict[str, list[str]]:
    """Sample ids per split ("train", "val", "test"), in the dataset's record order (see module doc)."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise MedlensError(
            f"split fractions must be in [0, 1) and sum below 1 (val {val_fraction}, test {test_fraction})"
        )
    fractions = {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
    rng = np.random.default_rng(seed)
    assigned: dict[str, str] = {}
    source = set() if resplit else {r.split for r in dataset.records if r.split in SPLITS}
    unsplit = list(dataset.records) if resplit else [r for r in dataset.records if r.split not in SPLITS]
    if source:
        for r in dataset.records:
            if r.split in SPLITS:
                assigned[r.id] = r.split
        missing = [s for s in ("val", "test") if s not in source]
        if missing and "train" in source:
            carve = {s: fractions[s] for s in missing}
            carve["train"] = 1 - sum(carve.values())
            train = [r for r in dataset.records if r.split == "train"]
            assigned.update(_greedy(train, carve, dataset, rng))
    if unsplit:
        assigned.update(_greedy(unsplit, fractions, dataset, rng))
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for r in dataset.records:
        out[assigned[r.id]].append(r.id)
    return out


def _strata(record: Record, dataset: Dataset) -> np.ndarray:
    """The counts a record adds: one per class (or label), one for "no label", one for size."""
    n = len(dataset.class_names)
    v = np.zeros(n + 2)
    label = record.label
    if dataset.task is Task.MULTILABEL and isinstance(label, tuple):
        v[:n] = label[:n]
        v[n] = 0 if any(label) else 1
    elif isinstance(label, (int, np.integer)) and 0 <= label < n:
        v[int(label)] = 1
    else:
        v[n] = 1
    v[n + 1] = 1
    return v


def _greedy(
    records: Sequence[Record], targets: dict[str, float], dataset: Dataset, rng: np.random.Generator
) -> dict[str, str]:
    """Assign whole patients of ``records`` to the splits of ``targets`` (fractions), stratified."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.patient_id].append(r)
    names = list(groups)
    vectors = np.array([sum(_strata(r, dataset) for r in groups[g]) for g in names])
    totals = vectors.sum(axis=0)
    weights = 1.0 / np.maximum(totals, 1)
    splits = [s for s in targets if targets[s] > 0]
    goal = np.array([targets[s] * totals for s in splits])
    counts = np.zeros_like(goal)
    order = rng.permutation(len(names))
    order = sorted(order, key=lambda i: -vectors[i, -1])  # stable: largest patients first, ties by seed
    result: dict[str, str] = {}
    for i in order:
        v = vectors[i]
        delta = (((counts + v - goal) ** 2 - (counts - goal) ** 2) * weights).sum(axis=1)
        delta += rng.random(len(splits)) * 1e-9  # seeded tie-break
        k = int(np.argmin(delta))
        counts[k] += v
        for r in groups[names[i]]:
            result[r.id] = splits[k]
    return result


# -- splits.json --------------------------------------------------------------------------------
def write_splits(
    path: str | Path,
    splits: dict[str, Sequence[str]],
    *,
    seed: int,
    source: str,
    splitting: dict[str, Any] | None = None,
) -> None:
    """Write ``splits.json`` atomically (``splitting``: how they were made, when a study says)."""
    obj: dict[str, Any] = {"seed": int(seed), "source": str(source), "splits": {k: list(v) for k, v in splits.items()}}
    if splitting is not None:
        obj["splitting"] = splitting
    write_json(path, obj)


def read_splits(path: str | Path) -> dict[str, Any]:
    """Read and check ``splits.json``; returns ``{"seed", "source", "splits": {name: [ids]}, "splitting"}``
    (``splitting`` None when the file does not say)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedlensError("splits file not found", path) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInputError(f"not valid JSON ({e})", path) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("splits"), dict) or "seed" not in obj:
        raise BadInputError('not a splits file (expected {"seed", "source", "splits": {...}})', path)
    owner: dict[str, str] = {}
    for name, ids in obj["splits"].items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BadInputError(f"split '{name}' must be a list of sample ids", path)
        for i in ids:
            if i in owner:
                raise BadInputError(f"sample {i} is in both '{owner[i]}' and '{name}'", path)
            owner[i] = name
    splitting = obj.get("splitting") if isinstance(obj.get("splitting"), dict) else None
    return {"seed": obj["seed"], "source": obj.get("source"), "splits": obj["splits"], "splitting": splitting}


def check_splits(dataset: Dataset, splits: dict[str, Sequence[str]]) -> None:
    """Raise when ``splits`` names ids the dataset does not have (e.g. a splits.json of other data)."""
    known = set(dataset._index)
    unknown = [i for ids in splits.values() for i in ids if i not in known]
    if unknown:
        raise MedlensError(f"{len(unknown)} sample id(s) in the splits are not in {dataset.uri} (e.g. {unknown[0]})")


def cap_ids(ids: list[str], n: int, *, seed: int) -> list[str]:
    """At most ``n`` of ``ids``: a seeded random choice, kept in the original order."""
    if len(ids) <= n:
        return list(ids)
    keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
    return [ids[i] for i in keep]
