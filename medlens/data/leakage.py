"""Leak-free study splits: a patient-level re-split, and cross-split duplicates removed.

:func:`plan_splits` makes the splits a run trains and evaluates on (``compare --resplit`` and
``--drop-duplicates``, through :class:`~medlens.training.config.TrainConfig`):

``resplit``
    ``"given"`` (default): the source's own splits (:func:`~medlens.data.splits.assign_splits`).
    ``"patient"``: the source's splits are ignored and every record is split again, seeded,
    stratified and patient-level (no patient in two splits), in the given split's proportions
    when the source has train, val and test (else ``val_fraction`` / ``test_fraction``), so the
    two runs differ in the leak, not in the split sizes; ``moved_patients`` counts the patients
    with at least one image in another split than the source gave it.
``drop_duplicates``
    ``"exact"`` (same decoded pixels) or ``"near"`` (exact plus pHash within 4 bits), the groups
    :func:`~medlens.data.audit.audit_dataset` finds. After splitting, every group whose members
    fall in more than one split keeps its members in the earliest split of train, val, test and
    loses the others: the model still trains on the image, and no split it is evaluated on holds
    a copy of an image it trained (or chose thresholds) on. Groups within one split are kept.
    Every removed image is listed in ``dropped.csv`` (:data:`DROPPED_COLUMNS`), never silently.

The run's ``splits.json`` records ``"splitting"`` (:meth:`SplitPlan.splitting`):
``{"method": "given"|"patient", "moved_patients", "drop_duplicates", "n_dropped", "dropped_file",
"description"}``; ``description`` is the line the comparison and the report show, e.g.
``split: patient-level re-split, 30 patients moved; ...``. The evaluation adds the patients found
in more than one split of the run and of the source (:func:`splitting_summary`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.data.sample import SPLITS, Dataset
from medlens.data.splits import assign_splits, write_splits
from medlens.errors import MedlensError
from medlens.runs import atomic_write_bytes

RESPLIT = ("given", "patient")
DROP_DUPLICATES = ("exact", "near")
DROPPED_NAME = "dropped.csv"
DROPPED_COLUMNS = ("id", "split", "label", "kind", "kept_in", "copy_of", "origin")
"""``dropped.csv``: the removed image, the split it would have been in, its label, the duplicate
kind, the split whose copy was kept and the kept copy's id."""


@dataclass
class SplitPlan:
    """The splits of a run and how they were made."""

    splits: dict[str, list[str]]
    method: str = "given"
    moved_patients: int = 0
    drop_duplicates: str | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)

    def splitting(self) -> dict[str, Any]:
        """The ``splitting`` entry of splits.json."""
        return {
            "method": self.method,
            "moved_patients": self.moved_patients if self.method == "patient" else None,
            "drop_duplicates": self.drop_duplicates,
            "n_dropped": len(self.dropped),
            "dropped_file": DROPPED_NAME if self.drop_duplicates else None,
            "description": describe_splitting(
                self.method, self.moved_patients, self.drop_duplicates, len(self.dropped)
            ),
        }


def check_choices(resplit: str | None, drop_duplicates: str | None) -> None:
    """A one-line error for a value outside :data:`RESPLIT` / :data:`DROP_DUPLICATES`."""
    if resplit is not None and resplit not in RESPLIT:
        raise MedlensError(f"--resplit must be one of {', '.join(RESPLIT)}, not '{resplit}'")
    if drop_duplicates is not None and drop_duplicates not in DROP_DUPLICATES:
        raise MedlensError(f"--drop-duplicates must be one of {', '.join(DROP_DUPLICATES)}, not '{drop_duplicates}'")


def plan_splits(
    dataset: Dataset,
    *,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    resplit: str | None = None,
    drop_duplicates: str | None = None,
    show_progress: bool = True,
) -> SplitPlan:
    """The run's splits (see the module doc); ``resplit`` None means ``"given"``."""
    check_choices(resplit, drop_duplicates)
    method = resplit or "given"
    if method == "patient":
        val_fraction, test_fraction = given_fractions(dataset) or (val_fraction, test_fraction)
    splits = assign_splits(
        dataset, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, resplit=method == "patient"
    )
    plan = SplitPlan(splits, method=method, drop_duplicates=drop_duplicates)
    if method == "patient":
        plan.moved_patients = len(moved_patients(dataset, splits))
    if drop_duplicates:
        plan.dropped = cross_split_duplicates(dataset, splits, drop_duplicates, show_progress=show_progress)
        gone = {row["id"] for row in plan.dropped}
        plan.splits = {k: [i for i in ids if i not in gone] for k, ids in splits.items()}
    return plan


def given_fractions(dataset: Dataset) -> tuple[float, float] | None:
    """(val, test) shares of the source's given split when it has all three splits, else None."""
    counts = {name: sum(r.split == name for r in dataset.records) for name in SPLITS}
    if not all(counts.values()):
        return None
    total = len(dataset.records)
    return counts["val"] / total, counts["test"] / total


def moved_patients(dataset: Dataset, splits: dict[str, list[str]]) -> list[str]:
    """Patients with an image whose split in ``splits`` differs from the source's given split."""
    split_of = {i: name for name, ids in splits.items() for i in ids}
    moved = {r.patient_id for r in dataset.records if r.split in SPLITS and split_of.get(r.id, r.split) != r.split}
    return sorted(moved)


def cross_split_duplicates(
    dataset: Dataset, splits: dict[str, list[str]], kind: str, *, show_progress: bool = True
) -> list[dict[str, Any]]:
    """The ``dropped.csv`` rows: members of duplicate groups (``kind`` exact, or exact and near)
    outside the earliest split their group spans in ``splits``."""
    from medlens.data.audit import audit_dataset

    report = audit_dataset(dataset, show_progress=show_progress)
    groups = report["exact_duplicates"]["groups"]
    if kind == "near":
        groups = groups + report["near_duplicates"]["groups"]
    split_of = {i: name for name, ids in splits.items() for i in ids}
    rank = {name: k for k, name in enumerate(SPLITS)}
    rows = []
    for group in groups:
        members = [m for m in group["members"] if m["id"] in split_of]
        if len({split_of[m["id"]] for m in members}) < 2:
            continue
        kept_in = min((split_of[m["id"]] for m in members), key=rank.__getitem__)
        kept = next(m["id"] for m in members if split_of[m["id"]] == kept_in)
        for m in members:
            if split_of[m["id"]] != kept_in:
                label = m["label"]
                rows.append(
                    {
                        "id": m["id"],
                        "split": split_of[m["id"]],
                        "label": "|".join(label) if isinstance(label, list) else label,
                        "kind": group["kind"],
                        "kept_in": kept_in,
                        "copy_of": kept,
                        "origin": m["origin"],
                    }
                )
    return rows


def write_plan(run_root: str | Path, plan: SplitPlan, *, seed: int, source: str) -> list[Path]:
    """Write ``splits.json`` (with ``splitting``) and, when duplicates were dropped, ``dropped.csv``;
    returns the paths written."""
    root = Path(run_root)
    write_splits(root / "splits.json", plan.splits, seed=seed, source=source, splitting=plan.splitting())
    written = [root / "splits.json"]
    if plan.drop_duplicates:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=DROPPED_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(plan.dropped)
        atomic_write_bytes(root / DROPPED_NAME, buf.getvalue().encode())
        written.append(root / DROPPED_NAME)
    return written


def describe_splitting(method: str, moved: int | None, drop_duplicates: str | None, n_dropped: int) -> str:
    """``split: given`` or ``split: patient-level re-split, N patients moved``, plus what was dropped."""
    text = "split: given" if method == "given" else f"split: patient-level re-split, {moved or 0} patients moved"
    if drop_duplicates:
        what = "exact" if drop_duplicates == "exact" else "exact and near"
        text += f"; {n_dropped} {what} duplicate image(s) in a later split than their copy dropped ({DROPPED_NAME})"
    return text


def splitting_summary(stored: dict[str, Any] | None, dataset: Dataset | None) -> dict[str, Any]:
    """How a run's splits were made (``stored``: :func:`~medlens.data.splits.read_splits` of its
    splits.json, None without one), with ``patients_across_splits`` of the run's splits and of
    the source's given splits (None without ``dataset``)."""
    made = dict((stored or {}).get("splitting") or {})
    if not made:  # a run made before splits.json said, or by `medlens train` without the options
        made = {"method": "given", "moved_patients": None, "drop_duplicates": None, "n_dropped": 0}
        made["description"] = describe_splitting("given", None, None, 0)
    made["patients_across_splits"] = None
    made["patients_across_given_splits"] = None
    if dataset is not None:
        from medlens.data.audit import patient_leakage

        made["patients_across_given_splits"] = patient_leakage(dataset)["n_patients"]
        if stored is not None:
            split_of = {i: name for name, ids in stored["splits"].items() for i in ids}
            seen: dict[str, set[str]] = {}
            for r in dataset.records:
                if r.id in split_of:
                    seen.setdefault(r.patient_id, set()).add(split_of[r.id])
            made["patients_across_splits"] = sum(len(s) > 1 for s in seen.values())
    return made


def check_reuse(splitting: dict[str, Any] | None, resplit: str | None, drop_duplicates: str | None, path: Path) -> None:
    """Refuse to reuse a run's splits.json made otherwise than ``resplit`` / ``drop_duplicates`` ask
    (None: whatever the run has)."""
    made = splitting or {"method": "given", "drop_duplicates": None}
    if resplit is not None and made.get("method", "given") != resplit:
        raise MedlensError(
            f"this run's splits were made with --resplit {made.get('method', 'given')}, not {resplit}: use a new --out",
            path,
        )
    if drop_duplicates is not None and made.get("drop_duplicates") != drop_duplicates:
        raise MedlensError(
            f"this run's splits were made with --drop-duplicates {made.get('drop_duplicates') or 'none'}, "
            f"not {drop_duplicates}: use a new --out",
            path,
        )
