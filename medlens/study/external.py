"""`medlens evaluate RUN --on SOURCE`: external validation of a run's models on another labelled source.

Every model bundle of the run (:meth:`medlens.inference.bundle.Bundle.load`, verified against the
manifest) is applied, with its own preprocessing (:meth:`Bundle.preprocess_dataset`,
:meth:`Bundle.raw_proba`, :meth:`Bundle.calibrate`: the one inference path), to every image of
SOURCE — all of its splits, since none of them was used to train or tune the model. Nothing is
refitted: the temperature, the decision threshold and the abstention rule are the ones the
internal evaluation chose on validation (the model card, checked against ``comparison.json``).

Classes are matched by name (case-insensitive, trimmed). An external class the model does not know
is a one-line error unless ``--class-map FILE`` maps it: a JSON object ``{"external name": "model
class"}`` or a CSV with the header ``external,model``. Several external classes may map to one
model class. A source without a label for every image is refused (never dropped silently).

Writes, per model, ``models/MODEL/external/NAME/predictions.csv`` (:meth:`ModelDir.external_predictions`:
per image the source's split and class, the model's label index, the calibrated probabilities,
the decision, and the model's own probabilities); the internal ``predictions_*.csv`` and
``decisions_*.csv`` are never touched. ``comparison.json`` gets ``external[NAME]`` (NAME from the
source's name; rerunning the same source replaces its entry, other sources accumulate)::

  {"source": uri, "name", "created", "n_images", "splits": {source split: n} (all are used),
   "classes": {external class: model class}, "class_map": file or null,
   "ci": {"method", "level", "n_resamples", "seed", "difference"},
   "models": {MODEL: {"internal_split", "n": {"internal", "external"}, "temperature",
              "decision_threshold", "chosen_on": "val (internal)",
              "metrics": {metric: {"internal": CI, "external": CI, "difference": CI}},
              "reliability": {"internal": CURVE, "external": CURVE},
              "abstention": {"method", "threshold", "internal": {"coverage", "risk"},
                             "external": {"coverage", "risk"}},
              "predictions_file", "warnings": [...]}}}

Metrics are those of the internal ``calibrated_metrics`` (temperature-scaled probabilities at the
internal decision threshold: what serving answers), each a stratified percentile bootstrap CI; the
internal side is recomputed from ``predictions_SPLIT.csv`` with the same function and seed, so it
equals the internal evaluation's figures. ``difference`` is external minus internal, its interval
from independent resamples of the two sets
(:func:`medlens.evaluation.statistics.unpaired_bootstrap_difference`).

A segmentation run is validated per case and class instead, with ``--scale``
(:mod:`medlens.study.external_segmentation`); the entry is recorded here the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medlens.errors import MedlensError
from medlens.runs import RunDir, atomic_write_bytes, read_json, write_json
from medlens.study import comparison as C

BATCH = 256
"""Images loaded and predicted at a time (memory stays bounded on large sources)."""

Log = Callable[[str], None]


def evaluate_external(
    run_dir: str | Path,
    source: str,
    *,
    class_map: str | Path | None = None,
    scale: float | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    report: bool = True,
    log: Log | None = None,
) -> dict[str, Any]:
    """Validate every model of ``run_dir`` on ``source``; add it to comparison.json; return its entry.

    A segmentation run goes to :func:`medlens.study.external_segmentation.segmentation_external`
    (``scale``: resize each external image by this factor first; segmentation only).
    """
    from medlens.data.sources import open_source
    from medlens.inference.bundle import Bundle
    from medlens.manifest import record_files
    from medlens.study.evaluate import evaluate

    say = log or (lambda msg: None)
    run = RunDir(run_dir)
    names = run.trained_models()
    infos = {n: read_json(run.model(n).info) for n in names}
    segmentation = any(i.get("task") == "segmentation" for i in infos.values())
    if scale is not None and not segmentation:
        raise MedlensError("--scale is for segmentation runs (a classification model resizes to its own input size)")
    if n_resamples < 100:
        raise MedlensError(f"--resamples must be at least 100, not {n_resamples}")
    mapping_file = read_class_map(class_map) if class_map is not None else None
    if not run.comparison.is_file():
        say("no comparison.json yet: the internal evaluation runs first (it chooses temperature and thresholds)")
        evaluate(run.root, n_resamples=n_resamples, seed=seed, report=False, log=say)
    comparison = read_json(run.comparison)

    dataset = open_source(source)
    _check_other_source(dataset.uri, str(infos[names[0]].get("source")), run)
    name = _entry_name(dataset, comparison.get("external") or {})
    order = comparison.get("order") or names
    if segmentation:
        from medlens.study.external_segmentation import external_class_names, segmentation_external

        matched = match_classes(external_class_names(dataset), infos[order[0]]["class_names"], mapping_file)
        result = segmentation_external(
            run,
            order,
            comparison,
            dataset,
            name,
            matched,
            scale=scale,
            n_resamples=n_resamples,
            seed=seed,
            log=say,
        )
        result["class_map"] = None if class_map is None else str(class_map)
        return _record(run, name, result, report, say)
    _check_labelled(dataset)
    splits = dict(sorted(Counter(r.split or "unsplit" for r in dataset.records).items()))
    ids = [r.id for r in dataset.records]
    classes = {m: match_classes(dataset.class_names, infos[m]["class_names"], mapping_file) for m in order}
    labels = {m: model_labels(dataset, classes[m], infos[m]["class_names"], infos[m]["task"]) for m in order}
    say(f"external source {name}: all {len(ids)} images ({', '.join(f'{k} {v}' for k, v in splits.items())})")

    models: dict[str, Any] = {}
    for model in order:
        bundle = Bundle.load(run.root, model)
        y_ext = labels[model]
        say(f"external predictions: {model} ({len(ids)} images)")
        raw = np.concatenate(
            [
                bundle.raw_proba(bundle.preprocess_dataset(dataset, ids[i : i + BATCH]))
                for i in range(0, len(ids), BATCH)
            ]
        )
        calibrated = bundle.calibrate(raw)
        entry = _model_entry(run, model, bundle, comparison, y_ext, calibrated, n_resamples, seed)
        path = run.model(model).external_predictions(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_predictions(path, dataset, ids, y_ext, raw, calibrated, bundle)
        record_files(run.root, [path], "evaluate")  # at once: an unlisted file makes the bundle refuse to load
        entry["predictions_file"] = path.relative_to(run.root).as_posix()
        models[model] = entry

    result = {
        "source": dataset.uri,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_images": len(ids),
        "splits": splits,
        "classes": classes[order[0]],
        "class_map": None if class_map is None else str(class_map),
        "ci": {
            "method": "stratified percentile bootstrap",
            "level": 0.95,
            "n_resamples": n_resamples,
            "seed": seed,
            "difference": "external minus internal; independent resamples of the two sets",
        },
        "models": models,
    }
    return _record(run, name, result, report, say)


def _record(run: RunDir, name: str, result: dict[str, Any], report: bool, say: Log) -> dict[str, Any]:
    """Add ``result`` to comparison.json as ``external[name]``, record it, rebuild the report; return it."""
    from medlens.manifest import record_files

    comparison = read_json(run.comparison)
    comparison["external"] = {**(comparison.get("external") or {}), name: result}
    write_json(run.comparison, comparison)
    record_files(run.root, [run.comparison], "evaluate")
    say(f"wrote {run.comparison} (external.{name})")
    if report:
        from medlens.study.report_writer import write_report

        write_report(run, say)
    return read_json(run.comparison)["external"][name]


# -- classes ------------------------------------------------------------------------------------
def _key(name: str) -> str:
    return str(name).strip().casefold()


def read_class_map(path: str | Path) -> dict[str, str]:
    """``{external name: model class}`` from a JSON object or a CSV with the header ``external,model``."""
    path = Path(path)
    if not path.is_file():
        raise MedlensError("no such class-map file", path)
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise MedlensError(f"the class map is not valid JSON ({e})", path) from None
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
            raise MedlensError('the class map must be a JSON object of names: {"external name": "model class"}', path)
        pairs = list(obj.items())
    elif path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
        if not rows or [_key(c) for c in rows[0]] != ["external", "model"]:
            raise MedlensError("the class map CSV needs the header 'external,model'", path)
        bad = next((n for n, r in enumerate(rows[1:], start=2) if len(r) != 2 or not all(c.strip() for c in r)), None)
        if bad is not None:
            raise MedlensError(f"class map line {bad}: expected two names (external,model)", path)
        pairs = [(r[0], r[1]) for r in rows[1:]]
    else:
        raise MedlensError("the class map must be a .json or .csv file", path)
    if not pairs:
        raise MedlensError("the class map is empty", path)
    return {_key(k): v.strip() for k, v in pairs}


def match_classes(external: list[str], model: list[str], class_map: dict[str, str] | None) -> dict[str, str]:
    """``{external class: model class}`` by name (case-insensitive, trimmed), through ``class_map`` first."""
    by_key = {_key(c): c for c in model}
    known = ", ".join(model)
    out = {}
    for name in external:
        if class_map and _key(name) in class_map:
            target = class_map[_key(name)]
            if _key(target) not in by_key:
                raise MedlensError(
                    f"--class-map maps '{name}' to '{target}', which is not a class of the model ({known})"
                )
            out[name] = by_key[_key(target)]
        elif _key(name) in by_key:
            out[name] = by_key[_key(name)]
        else:
            hint = "" if class_map else "; map it with --class-map FILE"
            raise MedlensError(f"the external class '{name}' is not a class of the model ({known}){hint}")
    return out


def model_labels(dataset: Any, classes: dict[str, str], model_classes: list[str], task: str) -> np.ndarray:
    """The source's labels in the model's class indices: (N,), or (N, K) multi-hot for multi-label."""
    index = {c: k for k, c in enumerate(model_classes)}
    column = np.array([index[classes[c]] for c in dataset.class_names])
    multilabel = dataset.task.value == "multilabel"
    if multilabel != (task == "multilabel"):
        raise MedlensError(f"the model is {task}, the external source {dataset.task.value}: labels cannot be matched")
    if not multilabel:
        return column[dataset.labels()]
    missing = [c for k, c in enumerate(model_classes) if k not in set(column.tolist())]
    if missing:
        raise MedlensError(f"the external source has no label for the model's {', '.join(missing)}")
    y = np.zeros((len(dataset), len(model_classes)), dtype=np.int64)
    for j, k in enumerate(column):
        y[:, k] |= dataset.labels()[:, j]
    return y


# -- checks -----------------------------------------------------------------------------------
def _check_labelled(dataset: Any) -> None:
    unlabelled = [r.id for r in dataset.records if r.label is None]
    if dataset.task.value in ("none", "segmentation") or not dataset.class_names or unlabelled:
        what = (
            f"{len(unlabelled)} of its {len(dataset)} images have no label (e.g. {unlabelled[0]})"
            if unlabelled
            else "it has no class labels"
        )
        raise MedlensError(f"external validation needs a labelled source: {what}", dataset.uri)


def _check_other_source(uri: str, run_source: str, run: RunDir) -> None:
    same = uri == run_source
    if not same and Path(uri).exists() and Path(run_source).exists():
        same = Path(uri).resolve() == Path(run_source).resolve()
    if same:
        raise MedlensError(
            "SOURCE is the run's own source: `medlens evaluate RUN` evaluates on its test split", run.root
        )


def _entry_name(dataset: Any, existing: dict[str, Any]) -> str:
    """The source's name, made safe for a folder; a different source of the same name gets a hash suffix."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(dataset.name)).strip("-.") or "external"
    if name in existing and existing[name].get("source") != dataset.uri:
        name += "-" + hashlib.sha256(str(dataset.uri).encode()).hexdigest()[:8]
    return name


# -- statistics --------------------------------------------------------------------------------
def _model_entry(
    run: RunDir, model: str, bundle: Any, comparison: dict, y_ext: np.ndarray, c_ext: np.ndarray, n_resamples, seed
) -> dict[str, Any]:
    """Internal and external metrics side by side, their difference, calibration and abstention."""
    from medlens.evaluation.calibration import reliability_curve
    from medlens.evaluation.selective import selective_risk, uncertainty_scores
    from medlens.evaluation.statistics import bootstrap_metrics, unpaired_bootstrap_difference
    from medlens.study.evaluate import read_predictions

    internal = (comparison.get("models") or {}).get(model)
    if not internal:
        raise MedlensError(f"comparison.json has no entry for '{model}': rerun `medlens evaluate RUN`", run.comparison)
    if internal.get("temperature") != bundle.card.temperature or internal.get("decision_threshold") != (
        bundle.card.decision_threshold
    ):
        raise MedlensError(
            f"the card of '{model}' and comparison.json disagree on temperature or threshold: "
            "rerun `medlens evaluate RUN`",
            run.comparison,
        )
    split, task, threshold = comparison.get("split", "test"), bundle.task, bundle.card.decision_threshold
    _, y_int, raw_int = read_predictions(run.model(model), split)
    c_int = bundle.calibrate(raw_int)

    def cis(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
        return bootstrap_metrics(y, p, task, threshold=threshold, n_resamples=n_resamples, seed=seed)

    inside, outside = cis(y_int, c_int), cis(y_ext, c_ext)
    diff = unpaired_bootstrap_difference(
        y_ext, c_ext, y_int, c_int, task, list(inside), threshold=threshold, n_resamples=n_resamples, seed=seed
    )
    metrics = {
        m: {
            "internal": inside[m],
            "external": outside[m],
            "difference": {"value": d.point, "low": d.low, "high": d.high, "n_undefined": d.n_undefined},
        }
        for m, d in diff.items()
    }
    rule = internal.get("abstention") or {}
    multilabel = task == "multilabel"

    def answered(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
        if not rule.get("method"):
            return {"coverage": None, "risk": None}
        if rule.get("threshold") is None:  # the rule refers every case
            return {"coverage": 0.0, "risk": None}
        u = uncertainty_scores(p, rule["method"], multilabel=multilabel)
        r = selective_risk(y, p, u, rule["threshold"], threshold)
        return {"coverage": r["coverage"], "risk": r["risk"]}

    warnings = []
    if not multilabel:
        absent = [c for k, c in enumerate(bundle.class_names) if not np.any(y_ext == k)]
        if absent:
            warnings.append(f"no external case of class {', '.join(absent)}: metrics that need it are undefined")
    return {
        "internal_split": split,
        "n": {"internal": int(len(y_int)), "external": int(len(y_ext))},
        "temperature": bundle.card.temperature,
        "decision_threshold": threshold,
        "chosen_on": "val (internal), applied unchanged",
        "metrics": metrics,
        "reliability": {
            "internal": C.reliability_entry(reliability_curve(y_int, c_int, C.N_BINS, task)),
            "external": C.reliability_entry(reliability_curve(y_ext, c_ext, C.N_BINS, task)),
        },
        "abstention": {
            "method": rule.get("method"),
            "threshold": rule.get("threshold"),
            "internal": answered(y_int, c_int),
            "external": answered(y_ext, c_ext),
        },
        "warnings": warnings,
    }


def _write_predictions(
    path: Path, dataset: Any, ids: list[str], y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, bundle: Any
) -> None:
    """Per image: id, source split and class, model label index, calibrated probabilities, decision, raw probabilities."""
    decided = bundle.decide(calibrated)
    classes = bundle.class_names
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["id", "source_split", "source_label", "label", *[f"prob_{c}" for c in classes], "decision"]
        + [f"raw_prob_{c}" for c in classes]
    )
    for k, sample_id in enumerate(ids):
        record = dataset.records[dataset.index_of(sample_id)]
        if isinstance(record.label, tuple):
            source_label = ";".join(c for c, v in zip(dataset.class_names, record.label) if v)
        else:
            source_label = dataset.class_names[int(record.label)]
        writer.writerow(
            [
                sample_id,
                record.split or "",
                source_label,
                ";".join(str(int(v)) for v in np.ravel(y[k])),
                *[f"{float(v):.9g}" for v in calibrated[k]],
                ";".join(str(int(v)) for v in np.ravel(decided[k])),
                *[f"{float(v):.9g}" for v in raw[k]],
            ]
        )
    atomic_write_bytes(path, buf.getvalue().encode())
