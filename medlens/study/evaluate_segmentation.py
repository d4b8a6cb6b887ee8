"""The evaluation stage for segmentation runs: per-case metrics, intervals, paired tests, overlays.

:func:`evaluate_segmentation` reads, per model, the per-case predictions training wrote
(``models/MODEL/segmentations_{SPLIT}/ID.npz``: ``labels``, a uint8 label map in the stored
image's geometry, and for two-class tasks ``foreground``, the foreground probability) and the
ground truth from the run's source (``Sample.mask``, ``Sample.spacing``, ``Sample.meta["fov"]``),
and computes the metrics of :mod:`medlens.evaluation.segmentation`.

Writes: per model ``segmentation_cases_{SPLIT}.csv`` (one row per case and foreground class);
``comparison.json`` with a ``segmentation`` section (per model and class the mean of each metric
with a bootstrap interval over cases, Wilcoxon + Holm tests between models, the overlay files;
the ``external`` entries of ``evaluate --on`` are kept);
``figures/segmentation_MODEL_{best,median,worst}.png`` (image with truth and prediction contours,
ranked by the case's mean Dice; 3D: the slice with the most truth foreground); ``report.html``.
The manifest records these files as the ``evaluate`` stage. The served model (``best``) is the
one with the highest mean Dice on validation, when every model has validation predictions.

Bad input is a one-line :class:`MedlensError` naming the file: an unreadable npz, one without
``labels``, a case the source does not hold or has no mask for, a map of another shape, a label
outside the model's classes. Cases of the split without a prediction are listed as a warning.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluation import segmentation as S
from medlens.runs import ModelDir, RunDir, atomic_write_bytes, read_json, write_json
from medlens.study.comparison import ALPHA, SCHEMA, kept_external

OVERLAY_RANKS = ("best", "median", "worst")

Log = Callable[[str], None]


def is_segmentation_run(run: RunDir, names: list[str]) -> bool:
    """Whether the run's models are segmentation models (their model.json says so)."""
    return any(read_json(run.model(n).info).get("task") == "segmentation" for n in names)


def evaluate_segmentation(
    run: RunDir,
    names: list[str],
    *,
    split: str = "test",
    n_resamples: int = 1000,
    seed: int = 0,
    tolerance_mm: float = S.NSD_TOLERANCE_MM,
    report: bool = True,
    log: Log | None = None,
    dataset: Any = None,
) -> dict[str, Any]:
    """Evaluate the segmentation models ``names`` of ``run`` on ``split``; write comparison.json; return it."""
    say = log or (lambda msg: None)
    infos = {n: read_json(run.model(n).info) for n in names}
    tasks = {str(i.get("task")) for i in infos.values()}
    if tasks != {"segmentation"}:
        raise MedlensError(f"the run mixes tasks ({', '.join(sorted(tasks))}): models cannot be compared", run.root)
    class_names = list(infos[names[0]]["class_names"])
    for n in names:
        if list(infos[n]["class_names"]) != class_names:
            raise MedlensError(f"{n} segments other classes than {names[0]}: models cannot be compared", run.root)
    names = sorted(names, key=lambda n: (infos[n].get("kind") != "classical", n))
    first = infos[names[0]]
    if dataset is None:
        from medlens.data.sources import open_source

        dataset = open_source(str(first.get("source")), seed=int(first.get("seed") or 0))
    truths = _Truths(dataset)
    splits = _run_splits(run)

    tables, models, written = {}, {}, [run.comparison]
    for name in names:
        say(f"segmentation metrics: {name}")
        model_dir = run.model(name)
        rows = model_case_rows(model_dir, split, truths, class_names, tolerance_mm)
        tables[name] = rows
        atomic_write_bytes(model_dir.segmentation_cases(split), _csv(rows))
        written.append(model_dir.segmentation_cases(split))
        metrics = read_json(model_dir.metrics) if model_dir.metrics.is_file() else {}
        n_cases = len({r["id"] for r in rows})
        models[name] = {
            "name": name,
            "kind": infos[name].get("kind"),
            "task": "segmentation",
            "class_names": class_names,
            "n": {split: n_cases},
            "timing": metrics.get("timing"),
            "warnings": [
                *metrics.get("warnings", []),
                *_missing_cases(splits.get(split, []), split, {r["id"] for r in rows}),
            ],
        }
        for w in models[name]["warnings"]:
            say(f"warning: {name}: {w}")

    metric_names = S.metrics_present(r for rows in tables.values() for r in rows)
    section: dict[str, Any] = {
        "split": split,
        "classes": class_names[1:],
        "metrics": metric_names,
        "lower_is_better": sorted(S.LOWER_IS_BETTER),
        "distance_unit": "mm" if truths.spacing_known else "px",
        "hd_percentile": S.HD_PERCENTILE,
        "nsd_tolerance": tolerance_mm,
        "field_of_view": truths.fov_seen,
        "conventions": S.CONVENTIONS,
        "models": {},
        "pairwise": None,
        "overlays": [],
    }
    for name in names:
        section["models"][name] = {
            "cases_file": run.model(name).segmentation_cases(split).relative_to(run.root).as_posix(),
            "n_cases": models[name]["n"][split],
            **S.summarize(tables[name], class_names, metric_names, n_resamples=n_resamples, seed=seed),
        }
    section["pairwise"] = S.paired_tests(tables, class_names, metric_names, ALPHA) if len(names) > 1 else None
    section["overlays"] = _overlays(run, names, tables, truths, class_names, split)
    written += [run.root / o["file"] for o in section["overlays"]]

    best = _best_on_validation(run, names, truths, class_names)
    comparison: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": first.get("source"),
        "task": "segmentation",
        "dims": first.get("dims"),
        "class_names": class_names,
        "seed": seed,
        "split": split,
        "n": {k: len(v) for k, v in splits.items()} or None,
        "ci": {"method": "percentile bootstrap over cases", "level": 0.95, "n_resamples": n_resamples, "seed": seed},
        "suite": read_json(run.study) if run.study.is_file() else None,
        "order": names,
        "models": models,
        "best": {"model": best, "criterion": "highest mean Dice on validation (the model `medlens serve` loads)"},
        "segmentation": section,
    }
    if (external := kept_external(run.comparison, models)) is not None:  # `evaluate --on` results
        comparison["external"] = external
    write_json(run.comparison, comparison)
    say(f"wrote {run.comparison}")
    from medlens.manifest import record_files

    record_files(run.root, written, "evaluate")
    if report:
        from medlens.study.report_writer import write_report

        write_report(run, say, dataset)
    return read_json(run.comparison)


# -- reading ----------------------------------------------------------------------------------
def model_case_rows(
    model_dir: ModelDir, split: str, truths: "_Truths", class_names: list[str], tolerance_mm: float
) -> list[dict[str, Any]]:
    """The per-case table of one model on ``split``: its stored predictions against the truth."""
    rows = []
    for case_id, pred, foreground, path in _predictions(model_dir, split):
        truth, spacing, fov = truths.get(case_id, path)
        rows += _rows(case_id, truth, pred, class_names, spacing, fov, foreground, tolerance_mm, path)
    return rows


def _predictions(model_dir: ModelDir, split: str):
    """(id, labels, foreground or None, path) of each ``segmentations_SPLIT/ID.npz``, by id."""
    folder = model_dir.segmentations(split)
    paths = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if not paths:
        raise MedlensError(
            f"no {split} segmentations (ID.npz): was this model trained without a {split} split?", folder
        )
    for path in paths:
        yield (path.stem, *_read_npz(path), path)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(labels, foreground or None) of one prediction file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "labels" not in npz.files:
                raise MedlensError("the prediction holds no 'labels' array", path)
            labels = np.asarray(npz["labels"])
            foreground = np.asarray(npz["foreground"], dtype=np.float32) if "foreground" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise MedlensError(f"not a readable npz ({type(e).__name__})", path) from None
    return labels, foreground


class _Truths:
    """Ground truth of each case (mask, spacing, field of view), loaded once from the source."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.cache: dict[str, tuple[np.ndarray, tuple[float, ...] | None, np.ndarray | None]] = {}
        self.spacing_known = True
        self.fov_seen = False

    def get(self, case_id: str, path: Path) -> tuple[np.ndarray, tuple[float, ...] | None, np.ndarray | None]:
        if case_id not in self.cache:
            try:
                index = self.dataset.index_of(case_id)
            except KeyError:
                raise MedlensError(f"case '{case_id}' is not in the source {self.dataset.uri}", path) from None
            sample = self.dataset.load(index)
            if sample.mask is None:
                raise MedlensError(f"the source has no mask for case '{case_id}'", path)
            fov = sample.meta.get("fov")
            self.spacing_known &= sample.spacing is not None
            self.fov_seen |= fov is not None
            self.cache[case_id] = (np.asarray(sample.mask), sample.spacing, None if fov is None else np.asarray(fov))
        return self.cache[case_id]

    def image(self, case_id: str) -> np.ndarray:
        return self.dataset.load(self.dataset.index_of(case_id)).image


def _rows(case_id, truth, pred, class_names, spacing, fov, foreground, tolerance_mm, path, surface=True):
    try:
        return S.case_rows(
            case_id,
            truth,
            pred,
            class_names,
            spacing=spacing,
            fov=fov,
            foreground=foreground,
            tolerance_mm=tolerance_mm,
            surface=surface,
        )
    except ValueError as e:  # shape or label range: name the file
        raise MedlensError(f"{e} (case '{case_id}')", path) from None


def _run_splits(run: RunDir) -> dict[str, list[str]]:
    """The run's splits (splits.json), {} when absent."""
    obj = read_json(run.splits) if run.splits.is_file() else {}
    splits = obj.get("splits", obj) if isinstance(obj, dict) else {}
    return {k: v for k, v in splits.items() if isinstance(v, list)}


def _missing_cases(listed: list[str], split: str, predicted: set[str]) -> list[str]:
    """A warning when the run's split lists cases without a prediction (never dropped silently)."""
    missing = [i for i in listed if i not in predicted]
    if not missing:
        return []
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    return [f"{len(missing)} {split} case(s) have no segmentation and are not evaluated: {shown}"]


def _csv(rows: list[dict[str, Any]]) -> bytes:
    """The per-case table; an undefined value is an empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(S.CASE_COLUMNS)
    for r in rows:
        writer.writerow([_cell(r[c]) for c in S.CASE_COLUMNS])
    return buf.getvalue().encode()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


# -- choosing the served model and the overlays -------------------------------------------------
def _best_on_validation(run: RunDir, names: list[str], truths: _Truths, class_names: list[str]) -> str | None:
    """The model with the highest mean Dice on validation (ties: first by name); None without val predictions."""
    if not all(run.model(n).segmentations("val").is_dir() for n in names):
        return None
    scores = {}
    for name in names:
        rows = []
        for case_id, pred, _, path in _predictions(run.model(name), "val"):
            truth, spacing, _ = truths.get(case_id, path)
            rows += _rows(case_id, truth, pred, class_names, spacing, None, None, S.NSD_TOLERANCE_MM, path, False)
        scores[name] = float(np.nanmean(list(S.case_means(rows, "dice").values())))
    return sorted(scores, key=lambda n: (-scores[n], n))[0]


def _overlays(run: RunDir, names, tables, truths: _Truths, class_names, split: str) -> list[dict[str, Any]]:
    """figures/segmentation_MODEL_RANK.png for the best, median and worst case of each model by mean Dice."""
    from medlens.reporting.figures import segmentation_overlay

    out = []
    for name in names:
        means = S.case_means(tables[name], "dice")
        ranked = sorted((i for i in means if np.isfinite(means[i])), key=lambda i: (-means[i], i))
        if not ranked:
            continue
        picks = {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]}
        for rank in OVERLAY_RANKS:
            case_id = picks[rank]
            truth = truths.cache[case_id][0]
            png = segmentation_overlay(
                truths.image(case_id),
                truth,
                _read_npz(run.model(name).segmentations(split) / f"{case_id}.npz")[0],
                class_names,
                title=f"{name}: {rank} case {case_id} (Dice {means[case_id]:.3f})",
            )
            rel = f"{run.figures.name}/segmentation_{name}_{rank}.png"
            atomic_write_bytes(run.root / rel, png)
            out.append({"model": name, "rank": rank, "id": case_id, "dice": means[case_id], "file": rel})
    return out
