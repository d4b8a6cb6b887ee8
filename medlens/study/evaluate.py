"""`medlens evaluate RUN`: rebuild the comparison of a run from its artifacts, without retraining.

:func:`evaluate` reads, per model, ``model.json`` and ``predictions_{val,SPLIT}.csv`` (the
uncalibrated probabilities training wrote; never rewritten here, so a rerun gives the same
result), computes the statistics of :mod:`medlens.study.comparison` (temperature, thresholds
and abstention chosen on validation; bootstrap CIs, reliability, risk-coverage, ROC/PR,
confusion on SPLIT), the pairwise tests, and — where the source has lesion masks (synthetic
data) — localization: Grad-CAM for deep models (bundle loaded from ``model.safetensors`` +
``model.json`` + the registry; layer ``cam_layer``), occlusion for classical ones, on a seeded
subset of SPLIT cases with a lesion, scored by pointing game and IoU. A Grad-CAM gallery of a
few right and wrong SPLIT cases per deep model goes to ``RUN/figures/``.

Writes: ``comparison.json``; into each ``model.json`` the fitted ``temperature``, the
validation ``thresholds`` (temperature-scaled space, so ``medlens serve`` applies them as they
are), ``calibration`` and ``abstention``; ``figures/*.png``; ``report.html`` when
:mod:`medlens.reporting` offers ``build_report``; finally ``manifest.json`` is rewritten so
every bundle stays verifiable. Weights files are only read.
"""

from __future__ import annotations

import csv
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medlens.errors import MedlensError
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
) -> dict[str, Any]:
    """Evaluate every model of ``run_dir`` on ``split``; write comparison.json; return it."""
    say = log or (lambda msg: None)
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise MedlensError("no such run directory", run.root)
    names = run.model_names()
    if not names:
        raise MedlensError("no trained model in the run (models/*/model.json)", run.root)
    if split not in ("val", "test"):
        raise MedlensError(f"--split must be val or test, not '{split}'")
    if n_resamples < 100:
        raise MedlensError(f"--resamples must be at least 100, not {n_resamples}")

    infos = {n: read_json(run.model(n).info) for n in names}
    tasks = {str(i["task"]) for i in infos.values()}
    if len(tasks) != 1:
        raise MedlensError(f"the run mixes tasks ({', '.join(sorted(tasks))}): models cannot be compared", run.root)
    task = tasks.pop()
    names = sorted(names, key=lambda n: (infos[n].get("kind") != "classical", n))

    preds = {n: (_read_predictions(run.model(n), "val"), _read_predictions(run.model(n), split)) for n in names}
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
        )
        model_dir = run.model(name)
        entry = {
            "name": name,
            "kind": info.get("kind"),
            "task": task,
            "class_names": list(info["class_names"]),
            "n": {"val": int(len(y_val)), split: int(len(y_eval))},
            **stats,
            "training": _training_curves(run, model_dir, info.get("kind")),
            "timing": (read_json(model_dir.metrics).get("timing") if model_dir.metrics.is_file() else None),
            "localization": None,
        }
        models[name] = entry

    pairwise = _pairwise(names, preds, models, task, split, n_resamples, seed)
    localization, gallery = _localization(run, names, infos, preds, models, split, seed, n_localization, say)

    for entry in models.values():
        entry.pop("_calibrated", None)
    for name in names:
        _update_model_json(run.model(name), infos[name], models[name])

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
            "model": C.best_by_val_auc(models),
            "criterion": "highest validation AUC (the model `medlens serve` loads by default)",
            "by_metric": C.best_by_metric(models, split),
        },
        "pairwise": pairwise,
        "localization": localization,
        "figures": {"dir": run.figures.name, "gradcam_gallery": gallery},
    }
    comparison["summary"] = C.summary_rows(comparison)
    write_json(run.comparison, comparison)
    say(f"wrote {run.comparison}")
    if report:
        _build_report(run, say)
    from medlens.manifest import write_manifest

    write_manifest(run.root)
    return read_json(run.comparison)


# -- reading artifacts --------------------------------------------------------------------------
def _read_predictions(model_dir: ModelDir, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
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
    if y.ndim == 1:  # the CSV keeps 6 significant digits: make each row sum to one again
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
        hard[n] = C.decisions(models[n]["_calibrated"][idx], task, models[n]["thresholds"].get("decision"))
        y = y_n[idx] if y is None else y
    if len(names) < 2 or y is None or len(y) == 0:
        return {"tests": [], "correction": "holm", "alpha": C.ALPHA, "n_tests": 0, "n_common": len(order)}
    return C.pairwise_tests(names, y, raw, hard, task, n_resamples=n_resamples, seed=seed)


# -- model.json --------------------------------------------------------------------------------
def _update_model_json(model_dir: ModelDir, info: dict[str, Any], entry: dict[str, Any]) -> None:
    """Write what serving needs: temperature, validation thresholds, calibration and abstention."""
    info = dict(info)
    info["temperature"] = entry["temperature"]
    if entry["thresholds"]:
        info["thresholds"] = {k: v for k, v in entry["thresholds"].items() if isinstance(v, (int, float))}
        info["thresholds_chosen_on"] = "val (temperature-scaled probabilities)"
    info["calibration"] = entry["calibration"]
    a = entry["abstention"]
    info["abstention"] = {
        k: a[k]
        for k in ("method", "threshold", "target_risk", "val_coverage", "test_coverage", "test_risk", "chosen_on")
    }
    write_json(model_dir.info, info)


# -- localization and gallery ------------------------------------------------------------------
def _localization(run, names, infos, preds, models, split, seed, n_images, say) -> tuple[dict[str, Any], list]:
    """Pointing game and IoU per model on SPLIT cases with a lesion mask; the Grad-CAM gallery."""
    summary: dict[str, Any] = {
        "available": False,
        "reason": None,
        "n_images": 0,
        "pointing_tolerance_px": POINTING_TOLERANCE,
        "iou_threshold": IOU_THRESHOLD,
        "explained_class": "the true class (lesion cases only)",
        "methods": {"deep": "grad-cam at model.json cam_layer", "classical": "occlusion sensitivity"},
    }
    gallery: list[dict[str, Any]] = []
    first = infos[names[0]]
    try:
        from medlens.data.sources import open_source

        dataset = open_source(str(first.get("source")), seed=int(first.get("seed") or 0))
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
            model = _LoadedModel(run, name, info)
        except (MedlensError, OSError, RuntimeError, KeyError) as e:
            models[name]["localization"] = {"error": f"could not load the model bundle: {e}"}
            continue
        if lesion_ids:
            subset = lesion_ids if model.method == "grad-cam" else lesion_ids[:N_LOCALIZATION_CLASSICAL]
            say(f"localization: {name} ({model.method}, {len(subset)} images)")
            models[name]["localization"] = _score_model(model, dataset, subset, info)
        if model.net is not None and model.cam_layer:
            gallery += _gallery(run, model, dataset, preds[name][1], models[name], seed)
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


class _LoadedModel:
    """A model bundle of the run, loaded for explanations (deep: network; classical: estimator)."""

    def __init__(self, run: RunDir, name: str, info: dict[str, Any]):
        self.name, self.info = name, info
        self.kind = info.get("kind")
        self.task = str(info["task"])
        self.cam_layer = info.get("cam_layer")
        self.net = self.estimator = None
        model_dir = run.model(name)
        if self.kind == "deep":
            from medlens.models.deep.weights import load_weights
            from medlens.models.registry import get_model

            spec = get_model(str(info.get("model") or info["name"]))
            self.net = spec.build(
                in_channels=int(info["in_channels"]),
                num_outputs=int(info["num_outputs"]),
                spatial_dims=int(info["dims"]),
                img_size=info["img_size"],
            )
            load_weights(self.net, model_dir.weights, strict=True)
            self.net.eval()
        else:
            from medlens.training.classical import load_estimator

            rel = model_dir.estimator.relative_to(run.root).as_posix()
            expected = read_json(run.manifest)["files"][rel]["sha256"] if run.manifest.is_file() else ""
            self.estimator = load_estimator(model_dir.estimator, expected)

    def inputs(self, dataset, ids: list[str]) -> np.ndarray:
        """The model's input arrays for ``ids``: the training pipeline recorded in model.json."""
        from medlens.data.arrays import load_arrays

        x, _ = load_arrays(
            dataset,
            ids,
            size=self.info["img_size"],
            channels=int(self.info["in_channels"]),
            preprocessing=self.info.get("preprocessing"),
            show_progress=False,
        )
        return np.asarray(x, dtype=np.float32)

    def proba(self, x: np.ndarray) -> np.ndarray:
        if self.net is not None:
            import torch

            from medlens.training.lightning_module import probabilities

            with torch.no_grad():
                return probabilities(self.net(torch.from_numpy(np.ascontiguousarray(x))), self.task).numpy()
        from medlens.training.classical import predict_proba_classical

        n_classes = None if self.task == "multilabel" else len(self.info["class_names"])
        return np.asarray(predict_proba_classical(self.estimator, x, self.task, n_classes=n_classes))

    def heatmaps(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Grad-CAM (deep, with a cam_layer) or occlusion maps for the given classes, in [0, 1]."""
        if self.net is not None and self.cam_layer:
            import torch

            from medlens.explain.cam import grad_cam

            return grad_cam(
                self.net, torch.from_numpy(np.ascontiguousarray(x)), target_layer=self.cam_layer, class_index=classes
            )
        from medlens.explain.cam import occlusion_sensitivity

        patch = max(2, min(x.shape[2:]) // OCCLUSION_GRID)
        return occlusion_sensitivity(self.proba, x, class_index=classes, patch=patch, stride=patch)

    @property
    def method(self) -> str:
        return "grad-cam" if self.net is not None and self.cam_layer else "occlusion"


def _score_model(model: _LoadedModel, dataset, ids: list[str], info: dict[str, Any]) -> dict[str, Any]:
    from medlens.data.arrays import load_masks
    from medlens.explain.localization import localization_scores

    started = time.perf_counter()
    x = model.inputs(dataset, ids)
    masks = load_masks(dataset, ids, size=info["img_size"])
    labels = np.array([dataset.records[dataset.index_of(i)].label for i in ids], dtype=object)
    if model.task == "multilabel":
        classes = model.proba(x).argmax(axis=1)
    else:
        classes = labels.astype(np.int64)
    maps = model.heatmaps(x, classes)
    scores = localization_scores(maps, masks, tolerance=POINTING_TOLERANCE, threshold=IOU_THRESHOLD)
    return {"method": model.method, **scores, "seconds": round(time.perf_counter() - started, 2)}


def _gallery(run: RunDir, model: _LoadedModel, dataset, eval_preds, entry, seed: int) -> list[dict[str, Any]]:
    """PNG overlays of Grad-CAM on a few right and wrong SPLIT cases (predicted class explained)."""
    from medlens.serving.overlay import overlay_png

    ids, y, _ = eval_preds
    if model.task == "multilabel":
        return []
    probs = entry["_calibrated"]
    pred = C.decisions(probs, model.task, entry["thresholds"].get("decision"))
    rng = np.random.default_rng(seed)
    chosen = []
    for correct in (True, False):
        pool = np.flatnonzero((pred == y) == correct)
        take = rng.permutation(pool)[:GALLERY_PER_KIND]
        chosen += [(int(k), correct) for k in sorted(take)]
    if not chosen:
        return []
    x = model.inputs(dataset, [ids[k] for k, _ in chosen])
    maps = model.heatmaps(x, np.array([pred[k] for k, _ in chosen]))
    run.figures.mkdir(parents=True, exist_ok=True)
    out = []
    names = model.info["class_names"]
    for n, (k, correct) in enumerate(chosen):
        image, heat = _display(x[n], maps[n])
        rel = f"{run.figures.name}/gradcam_{model.name}_{'right' if correct else 'wrong'}_{n}.png"
        atomic_write_bytes(run.root / rel, overlay_png(image, heat))
        out.append(
            {
                "model": model.name,
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
    """A 2D grey image in [0, 1] and its heatmap (3D: the slice where the heatmap peaks)."""
    img = x.mean(axis=0)
    if img.ndim == 3:
        k = int(np.argmax(heat.reshape(heat.shape[0], -1).max(axis=1)))
        img, heat = img[k], heat[k]
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / max(hi - lo, 1e-8)
    factor = max(1, -(-GALLERY_MIN_SIDE // max(img.shape)))  # small inputs: enlarge (pixel-exact)
    return np.kron(img, np.ones((factor, factor), dtype=img.dtype)), heat


# -- report ----------------------------------------------------------------------------------
def _build_report(run: RunDir, say: Log) -> None:
    """report.html via medlens.reporting.build_report, when that stage is installed."""
    try:
        from medlens.reporting import build_report
    except ImportError:
        say("no report: medlens.reporting.build_report is not available")
        return
    try:
        path = build_report(run.root)
    except Exception as e:  # another stage's failure must not lose comparison.json or the manifest
        say(f"report not written: {type(e).__name__}: {e}")
        return
    say(f"wrote {path or run.report}")
