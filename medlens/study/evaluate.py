"""`medlens evaluate RUN`: rebuild the comparison of a run from its artifacts, without retraining.

:func:`evaluate` reads, per model, ``model.json`` and ``predictions_{val,SPLIT}.csv`` (the
uncalibrated probabilities training wrote; never rewritten here, so a rerun gives the same
result), computes the statistics of :mod:`medlens.study.comparison` (temperature, thresholds
and abstention chosen on validation; bootstrap CIs, reliability, risk-coverage, ROC/PR,
confusion on SPLIT), the pairwise tests, and — where the source has lesion masks (synthetic
data) — localization: Grad-CAM for deep models (bundle loaded from ``model.safetensors`` +
``model.json`` + the registry; layer ``cam_layer``), occlusion for classical ones, on a seeded
subset of SPLIT cases with a lesion, scored by pointing game and IoU. A Grad-CAM gallery of a
few right and wrong SPLIT cases per deep model goes to ``RUN/figures/``. Segmentation runs are
evaluated by :mod:`medlens.study.evaluate_segmentation` instead (per-case label maps).

Writes: ``comparison.json``; per model ``decisions_SPLIT.csv`` (calibrated probabilities and the
decision each case was counted with); into each model card the fitted ``temperature``, the
validation ``thresholds`` (temperature-scaled space, so every prediction applies them as they
are), ``calibration`` and ``abstention``, as a declared update of the card
(:meth:`medlens.inference.card.ModelCard.with_update`; a card changed since the manifest is
refused, not re-approved); ``figures/*.png``; ``report.html``. The manifest records exactly
these files, as the ``evaluate`` stage. Weights files are only read; the source is opened at
most once (or not at all when the caller passes it).
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medlens.errors import MedlensError
from medlens.evaluation.subgroups import MIN_GROUP
from medlens.inference.bundle import best_by_val_auc
from medlens.inference.card import write_card
from medlens.runs import ModelDir, RunDir, atomic_write_bytes, read_json, write_json
from medlens.study import comparison as C

N_LOCALIZATION = 32
N_LOCALIZATION_CLASSICAL = 16  # occlusion costs OCCLUSION_GRID**dims predictions per image
OCCLUSION_GRID = 8  # occlusion patches tile the image in an 8 x 8 (x 8) grid, without overlap
GALLERY_PER_KIND = 3  # right and wrong cases per deep model
GALLERY_MIN_SIDE = 128  # overlays of smaller inputs are enlarged to at least this many pixels
POINTING_TOLERANCE = 2
IOU_THRESHOLD = 0.5

Log = Callable[[str], None]


def evaluate(
    run_dir: str | Path,
    *,
    split: str = "test",
    n_resamples: int = 1000,
    seed: int = 0,
    target_risk: float = C.DEFAULT_TARGET_RISK,
    n_localization: int = N_LOCALIZATION,
    report: bool = True,
    log: Log | None = None,
    dataset: Any = None,
    by: Sequence[str] = (),
    bands: Mapping[str, Sequence[float]] | None = None,
    min_group: int = MIN_GROUP,
) -> dict[str, Any]:
    """Evaluate every model of ``run_dir`` on ``split``; write comparison.json; return it.

    ``dataset``: the run's source, already opened (``compare`` passes it); else opened here when
    localization, the report or subgroups need it. ``by``: attribute columns for the subgroup
    analysis (:mod:`medlens.study.subgroups`), ``bands`` their numeric band edges, ``min_group``
    the smallest group that is scored.
    """
    say = log or (lambda msg: None)
    run = RunDir(run_dir)
    names = run.trained_models()
    if split not in ("val", "test"):
        raise MedlensError(f"--split must be val or test, not '{split}'")
    if n_resamples < 100:
        raise MedlensError(f"--resamples must be at least 100, not {n_resamples}")

    from medlens.inference.bundle import verify_bundle
    from medlens.inference.card import read_card

    for n in names:
        verify_bundle(run, n)  # nothing changed since its stage wrote it: never re-approve a changed card
    from medlens.study import evaluate_segmentation as seg

    if seg.is_segmentation_run(run, names):  # per-case label maps, not probabilities: their own statistics
        if by:
            say("subgroups need a binary classification task: --by is ignored for a segmentation run")
        return seg.evaluate_segmentation(
            run, names, split=split, n_resamples=n_resamples, seed=seed, report=report, log=say, dataset=dataset
        )
    cards = {n: read_card(run.model(n).info) for n in names}
    infos = {n: c.to_dict() for n, c in cards.items()}
    tasks = {str(i["task"]) for i in infos.values()}
    if len(tasks) != 1:
        raise MedlensError(f"the run mixes tasks ({', '.join(sorted(tasks))}): models cannot be compared", run.root)
    task = tasks.pop()
    names = sorted(names, key=lambda n: (infos[n].get("kind") != "classical", n))
    source = _Source(str(infos[names[0]].get("source")), int(infos[names[0]].get("seed") or 0), dataset)
    if by:  # an unknown column fails before any work
        from medlens.study import subgroups as SG

        SG.check_request(source.open(), by, bands)

    preds = {n: (read_predictions(run.model(n), "val"), read_predictions(run.model(n), split)) for n in names}
    models: dict[str, dict[str, Any]] = {}
    for name in names:
        say(f"statistics: {name}")
        info = infos[name]
        (_, y_val, p_val), (ids, y_eval, p_eval) = preds[name]
        stats = C.model_statistics(
            task=task,
            class_names=info["class_names"],
            y_val=y_val,
            p_val=p_val,
            y_eval=y_eval,
            p_eval=p_eval,
            split=split,
            n_resamples=n_resamples,
            seed=seed,
            target_risk=target_risk,
            card_threshold=cards[name].decision_threshold,
        )
        model_dir = run.model(name)
        metrics = read_json(model_dir.metrics) if model_dir.metrics.is_file() else {}
        entry = {
            "name": name,
            "kind": info.get("kind"),
            "task": task,
            "class_names": list(info["class_names"]),
            "n": {"val": int(len(y_val)), split: int(len(y_eval))},
            **stats,
            "training": _training_curves(run, model_dir, info.get("kind")),
            "timing": metrics.get("timing"),
            "localization": None,
        }
        entry["warnings"] = [*metrics.get("warnings", []), *C.signal_warnings(entry, split, task)]
        for w in entry["warnings"]:
            say(f"warning: {name}: {w}")
        models[name] = entry

    pairwise = _pairwise(names, preds, models, task, split, n_resamples, seed)
    from medlens.study.ensembles import ensembles_section

    ensembles, ensemble_preds = ensembles_section(
        names,
        {n: infos[n].get("kind") for n in names},
        preds,
        models,
        task=task,
        class_names=list(infos[names[0]]["class_names"]),
        split=split,
        n_resamples=n_resamples,
        seed=seed,
        target_risk=target_risk,
        log=say,
    )
    from medlens.study.shortcuts import leak_checks

    leaks = leak_checks(  # splitting (leaked splits) and shortcuts, from the source's attributes
        run,
        source.open,
        task=task,
        class_names=list(infos[names[0]]["class_names"]),
        evaluated={n: preds[n][1] for n in names},
        label_auc={n: ((models[n]["metrics"].get(split) or {}).get("auc") or {}).get("value") for n in names},
        split=split,
        n_resamples=n_resamples,
        seed=seed,
        log=say,
    )
    subgroups, subgroup_figures = None, []
    if by:
        say(f"subgroups: {', '.join(by)}")
        evaluated = {n: (*preds[n][1][:2], models[n]["_calibrated"], models[n]["decision_threshold"]) for n in names}
        subgroups, subgroup_figures = SG.subgroups_section(
            run,
            source.open(),
            by,
            bands,
            task,
            evaluated,
            split=split,
            min_group=min_group,
            n_resamples=n_resamples,
            seed=seed,
        )
    localization, gallery = _localization(run, names, infos, preds, models, split, seed, n_localization, say, source)

    written: list[Path] = [run.comparison, *(run.root / g["file"] for g in gallery), *subgroup_figures]
    for name in names:
        model_dir = run.model(name)
        written += write_decisions(model_dir, task, cards[name].class_names, preds[name], models[name], split)
        write_card(model_dir.info, _calibrated_card(cards[name], models[name]))
        written.append(model_dir.info)
    shutil.rmtree(run.ensembles_dir, ignore_errors=True)  # this stage's folder: no ensemble of an earlier run stays
    for name, entry in (ensembles or {}).get("models", {}).items():
        written += write_decisions(
            run.ensemble(name), task, infos[names[0]]["class_names"], ensemble_preds[name], entry, split
        )
    for entry in [*models.values(), *(ensembles or {}).get("models", {}).values()]:
        entry.pop("_calibrated", None)
        entry.pop("_calibrated_val", None)

    first = infos[names[0]]
    comparison: dict[str, Any] = {
        "schema": C.SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": first.get("source"),
        "task": task,
        "dims": first.get("dims"),
        "class_names": list(first["class_names"]),
        "seed": seed,
        "split": split,
        "n": _split_sizes(run),
        "ci": {"method": "stratified percentile bootstrap", "level": 0.95, "n_resamples": n_resamples, "seed": seed},
        "suite": read_json(run.study) if run.study.is_file() else None,
        "order": names,
        "models": models,
        "best": {
            "model": best_by_val_auc(models),
            "criterion": "highest validation AUC (the model `medlens serve` loads by default)",
            "by_metric": C.best_by_metric(models, split),
        },
        "pairwise": pairwise,
        **({"ensembles": ensembles} if ensembles else {}),
        "localization": localization,
        "figures": {"dir": run.figures.name, "gradcam_gallery": gallery},
    }
    if subgroups is not None:
        comparison["subgroups"] = subgroups
    comparison.update(leaks)
    comparison["summary"] = C.summary_rows(comparison)
    if (external := C.kept_external(run.comparison, models)) is not None:  # `evaluate --on` results, still valid
        comparison["external"] = external
    write_json(run.comparison, comparison)
    say(f"wrote {run.comparison}")
    from medlens.manifest import record_files

    record_files(run.root, written, "evaluate", forget="ensembles/")
    if report:
        from medlens.study.report_writer import write_report

        write_report(run, say, source.opened)
    return read_json(run.comparison)


# -- reading artifacts --------------------------------------------------------------------------
def read_predictions(model_dir: ModelDir, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, labels, probabilities) of predictions_SPLIT.csv."""
    path = model_dir.predictions(split)
    if not path.is_file():
        raise MedlensError(f"no {split} predictions: was this model trained without a {split} split?", path)
    ids, labels, probs = [], [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["id", "label"] or len(header) < 3:
            raise MedlensError("not a predictions file (expected columns id, label, prob_...)", path)
        for row in reader:
            ids.append(row[0])
            labels.append([int(v) for v in row[1].split(";")] if ";" in row[1] else int(row[1]))
            probs.append([float(v) for v in row[2:]])
    if not ids:
        raise MedlensError("the predictions file is empty", path)
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if y.ndim == 1:  # the CSV keeps 9 significant digits: make each row sum to one again
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    return ids, y, p


def _split_sizes(run: RunDir) -> dict[str, int] | None:
    if not run.splits.is_file():
        return None
    obj = read_json(run.splits)
    splits = obj.get("splits", obj) if isinstance(obj, dict) else {}
    return {k: len(v) for k, v in splits.items() if isinstance(v, list)}


def _training_curves(run: RunDir, model_dir: ModelDir, kind: str | None) -> dict[str, Any] | None:
    """training_log.csv as columns (numbers where they parse)."""
    path = model_dir.training_log
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[Any]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(_number(value))
    return {
        "file": path.relative_to(run.root).as_posix(),
        "kind": "epochs" if kind == "deep" else "grid",
        "columns": columns,
    }


def _number(value: str | None) -> Any:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        return value


# -- pairwise ---------------------------------------------------------------------------------
def _pairwise(names, preds, models, task, split, n_resamples, seed) -> dict[str, Any]:
    """Tests on the SPLIT cases every model has predictions for (in one common order)."""
    common = set(preds[names[0]][1][0])
    for n in names[1:]:
        common &= set(preds[n][1][0])
    order = [i for i in preds[names[0]][1][0] if i in common]
    raw, hard, y = {}, {}, None
    for n in names:
        ids, y_n, p_n = preds[n][1]
        pos = {i: k for k, i in enumerate(ids)}
        idx = np.array([pos[i] for i in order], dtype=int)
        raw[n] = p_n[idx]
        hard[n] = C.decisions(models[n]["_calibrated"][idx], task, models[n]["decision_threshold"])
        y = y_n[idx] if y is None else y
    if len(names) < 2 or y is None or len(y) == 0:
        return {"tests": [], "correction": "holm", "alpha": C.ALPHA, "n_tests": 0, "n_common": len(order)}
    return C.pairwise_tests(names, y, raw, hard, task, n_resamples=n_resamples, seed=seed)


# -- the model card and the decisions ----------------------------------------------------------
def _calibrated_card(card: Any, entry: dict[str, Any]) -> Any:
    """The card with what this stage chose on validation: temperature, thresholds, calibration, abstention."""
    a = entry["abstention"]
    fields: dict[str, Any] = {
        "temperature": entry["temperature"],
        "calibration": entry["calibration"],
        "abstention": {
            k: a[k]
            for k in ("method", "threshold", "target_risk", "val_coverage", "test_coverage", "test_risk", "chosen_on")
        },
    }
    if entry["thresholds"]:
        fields["thresholds"] = {k: v for k, v in entry["thresholds"].items() if isinstance(v, (int, float))}
        fields["thresholds_chosen_on"] = "val (temperature-scaled probabilities)"
    return card.with_update("evaluate", **fields)


def write_decisions(
    model_dir: ModelDir, task: str, class_names: Sequence[str], preds: tuple, entry: dict[str, Any], split: str
) -> list[Path]:
    """decisions_{val,SPLIT}.csv: per case the calibrated probabilities and the decision that the
    metrics counted (the threshold rule of the bundle, with this stage's threshold)."""
    threshold = entry["decision_threshold"]
    out = []
    for name, (ids, y, _), calibrated in (
        ("val", preds[0], entry["_calibrated_val"]),
        (split, preds[1], entry["_calibrated"]),
    ):
        decided = C.decisions(calibrated, task, threshold)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["id", "label", *[f"prob_{c}" for c in class_names], "decision"])
        for i, label, p, d in zip(ids, y, calibrated, decided):
            label_text = ";".join(str(int(v)) for v in np.ravel(label))
            decision = ";".join(str(int(v)) for v in np.ravel(d))
            writer.writerow([i, label_text, *[f"{float(v):.9g}" for v in p], decision])
        atomic_write_bytes(model_dir.decisions(name), buf.getvalue().encode())
        out.append(model_dir.decisions(name))
    return out


# -- localization and gallery ------------------------------------------------------------------
class _Source:
    """The run's source, opened on first use only (and not at all when the caller passed it)."""

    def __init__(self, uri: str, seed: int, dataset: Any = None):
        self.uri, self.seed, self._dataset = uri, seed, dataset

    @property
    def opened(self) -> Any:
        """The dataset if it is open already, else None."""
        return self._dataset

    def open(self) -> Any:
        if self._dataset is None:
            from medlens.data.sources import open_source

            self._dataset = open_source(self.uri, seed=self.seed)
        return self._dataset


def _localization(
    run, names, infos, preds, models, split, seed, n_images, say, source: _Source
) -> tuple[dict[str, Any], list]:
    """Pointing game and IoU per model on SPLIT cases with a lesion mask; the Grad-CAM gallery."""
    from medlens.inference.bundle import Bundle

    summary: dict[str, Any] = {
        "available": False,
        "reason": None,
        "n_images": 0,
        "pointing_tolerance_px": POINTING_TOLERANCE,
        "iou_threshold": IOU_THRESHOLD,
        "explained_class": "the true class (lesion cases only)",
        "methods": {"deep": "grad-cam at the card's cam_layer", "classical": "occlusion sensitivity"},
    }
    gallery: list[dict[str, Any]] = []
    try:
        dataset = source.open()
    except MedlensError as e:
        summary["reason"] = f"the source cannot be opened: {e}"
        return summary, gallery
    ids = [i for i in preds[names[0]][1][0] if all(i in set(preds[n][1][0]) for n in names[1:])]
    lesion_ids = _lesion_cases(dataset, ids, n_images, seed) if n_images > 0 else []
    if not lesion_ids:
        summary["reason"] = "no lesion masks in the source" if n_images > 0 else "disabled"
    else:
        summary.update(available=True, n_images=len(lesion_ids), ids=lesion_ids)
    for name in names:
        info = infos[name]
        if not lesion_ids and not (info.get("kind") == "deep" and info.get("cam_layer")):
            continue  # nothing to explain for this model
        try:
            bundle = Bundle.load(run.root, name)
        except (MedlensError, OSError, RuntimeError) as e:
            models[name]["localization"] = {"error": f"could not load the model bundle: {e}"}
            continue
        if lesion_ids:
            method = bundle.explanation_method
            subset = lesion_ids if method == "grad-cam" else lesion_ids[:N_LOCALIZATION_CLASSICAL]
            say(f"localization: {name} ({method}, {len(subset)} images)")
            models[name]["localization"] = _score_model(bundle, dataset, subset)
        if bundle.explanation_method == "grad-cam":
            gallery += _gallery(run, bundle, dataset, preds[name][1], models[name], seed)
    return summary, gallery


def _lesion_cases(dataset, ids: list[str], n: int, seed: int) -> list[str]:
    """Up to ``n`` SPLIT ids with a non-empty mask, in a seeded random order (masks loaded in chunks)."""
    from medlens.data.arrays import load_masks

    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    found: list[str] = []
    for start in range(0, len(order), 64):
        chunk = order[start : start + 64]
        masks = load_masks(dataset, chunk)
        if masks is None:
            if start == 0:
                return []
            continue
        found += [i for i, m in zip(chunk, masks) if np.any(m)]
        if len(found) >= n:
            break
    return sorted(found[:n], key=ids.index)


def _score_model(bundle: Any, dataset: Any, ids: list[str]) -> dict[str, Any]:
    from medlens.data.arrays import load_masks
    from medlens.explain.localization import localization_scores

    started = time.perf_counter()
    x = bundle.preprocess_dataset(dataset, ids)
    masks = load_masks(dataset, ids, size=bundle.card.img_size)
    labels = np.array([dataset.records[dataset.index_of(i)].label for i in ids], dtype=object)
    if bundle.task == "multilabel":
        classes = bundle.raw_proba(x).argmax(axis=1)
    else:
        classes = labels.astype(np.int64)
    maps = bundle.explain(x, classes)
    scores = localization_scores(maps, masks, tolerance=POINTING_TOLERANCE, threshold=IOU_THRESHOLD)
    return {"method": bundle.explanation_method, **scores, "seconds": round(time.perf_counter() - started, 2)}


def _gallery(run: RunDir, bundle: Any, dataset, eval_preds, entry, seed: int) -> list[dict[str, Any]]:
    """PNG overlays of Grad-CAM on a few right and wrong SPLIT cases (predicted class explained)."""
    from medlens.serving.overlay import overlay_png

    ids, y, _ = eval_preds
    if bundle.task == "multilabel":
        return []
    probs = entry["_calibrated"]
    pred = C.decisions(probs, bundle.task, entry["decision_threshold"])
    rng = np.random.default_rng(seed)
    chosen = []
    for correct in (True, False):
        pool = np.flatnonzero((pred == y) == correct)
        take = rng.permutation(pool)[:GALLERY_PER_KIND]
        chosen += [(int(k), correct) for k in sorted(take)]
    if not chosen:
        return []
    x = bundle.preprocess_dataset(dataset, [ids[k] for k, _ in chosen])
    maps = bundle.explain(x, np.array([pred[k] for k, _ in chosen]))
    run.figures.mkdir(parents=True, exist_ok=True)
    out = []
    names = bundle.class_names
    for n, (k, correct) in enumerate(chosen):
        image, heat = _display(x[n], maps[n])
        rel = f"{run.figures.name}/gradcam_{bundle.name}_{'right' if correct else 'wrong'}_{n}.png"
        atomic_write_bytes(run.root / rel, overlay_png(image, heat))
        out.append(
            {
                "model": bundle.name,
                "file": rel,
                "id": ids[k],
                "label": names[int(y[k])],
                "predicted": names[int(pred[k])],
                "probability": float(probs[k, int(pred[k])]),
                "correct": bool(correct),
            }
        )
    return out


def _display(x: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's display image and heatmap (3D: the slice where it peaks), small inputs enlarged."""
    from medlens.inference.bundle import heatmap_slice

    img, heat = heatmap_slice(x, heat)
    factor = max(1, -(-GALLERY_MIN_SIDE // max(img.shape)))  # small inputs: enlarge (pixel-exact)
    return np.kron(img, np.ones((factor, factor), dtype=img.dtype)), heat


# -- report ----------------------------------------------------------------------------------
