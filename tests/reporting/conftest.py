"""A small fake run directory in the documented artifact formats (no training, no source needed).

Two binary models (a classical "svm" and a deep "cnn-small") with seeded predictions; their
comparison.json is computed by :mod:`medlens.study.comparison` from those predictions, exactly
as `medlens evaluate` does, so the report is tested on realistic statistics.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens.runs import RunDir, atomic_write_bytes, write_json, write_yaml

CLASSES = ["normal", "pneumonia"]
SOURCE = "/nonexistent/medlens-report-test/data.npz"  # cannot be opened: audit/montage come from files


def _predictions(path: Path, ids: list[str], y: np.ndarray, p1: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label", *[f"prob_{c}" for c in CLASSES]])
    for i, yy, pp in zip(ids, y, p1):
        w.writerow([i, int(yy), f"{1 - pp:.6f}", f"{pp:.6f}"])
    atomic_write_bytes(path, buf.getvalue().encode())


def _scores(rng: np.random.Generator, y: np.ndarray, separation: float) -> np.ndarray:
    z = rng.normal(0, 1, len(y)) + separation * (2 * y - 1)
    return 1 / (1 + np.exp(-z))


def make_run(
    root: Path,
    *,
    models: tuple[str, ...] = ("svm", "cnn-small"),
    comparison: bool = True,
    gallery: bool = True,
    localization: bool = True,
    audit: bool = True,
) -> Path:
    """Write a complete fake run at ``root`` and return it."""
    from medlens.inference.bundle import best_by_val_auc
    from medlens.manifest import artifact_files, record_files
    from medlens.study import comparison as C

    run = RunDir(root).create()
    rng = np.random.default_rng(0)
    n_val, n_test = 80, 120
    y_val = np.array([0, 1] * (n_val // 2))
    y_test = np.array([0, 1] * (n_test // 2))
    val_ids = [f"v{i:03d}" for i in range(n_val)]
    test_ids = [f"t{i:03d}" for i in range(n_test)]
    write_yaml(run.config, {"source": SOURCE, "seed": 0, "epochs": 5})
    write_json(
        run.splits,
        {
            "seed": 0,
            "source": SOURCE,
            "splits": {"train": [f"r{i:03d}" for i in range(200)], "val": val_ids, "test": test_ids},
        },
    )
    write_json(
        run.fingerprint,
        {
            "schema": "medlens.fingerprint/1",
            "source": SOURCE,
            "name": "pneumonia-test",
            "task": "binary",
            "dims": 2,
            "modality": "DX",
            "class_names": CLASSES,
            "n_samples": 400,
            "n_patients": 380,
            "splits": {"unsplit": {"n": 400, "classes": {"normal": 200, "pneumonia": 200}}},
            "class_counts": {"normal": 200, "pneumonia": 200},
            "class_balance": {"normal": 0.5, "pneumonia": 0.5},
            "imbalance_ratio": 1.0,
            "shapes": {
                "from": "all",
                "n": 400,
                "n_distinct": 1,
                "distinct": [{"shape": [1, 28, 28], "count": 400}],
                "min": [28, 28],
                "median": [28.0, 28.0],
                "max": [28, 28],
            },
            "channels": {"1": 400},
            "spacings": None,
            "intensity": {
                "sampled": False,
                "n_samples": 400,
                "of": 400,
                "seed": 0,
                "min": 0.0,
                "max": 255.0,
                "mean": 120.0,
                "std": 50.0,
                "percentiles": {"1": 3.0, "50": 121.0, "99": 250.0},
            },
            "masks": None,
            "problems": [],
            "samples": None,
        },
    )
    separation = {"svm": 0.9, "cnn-small": 1.8, "elm": 1.0}
    stats, calibrated, hard = {}, {}, {}
    for k, name in enumerate(models):
        kind = "deep" if name.startswith("cnn") else "classical"
        md = run.model(name).create()
        p_val, p_test = _scores(rng, y_val, separation[name]), _scores(rng, y_test, separation[name])
        _predictions(md.predictions("val"), val_ids, y_val, p_val)
        _predictions(md.predictions("test"), test_ids, y_test, p_test)
        write_json(
            md.info,
            {
                "name": name,
                "model": name,
                "kind": kind,
                "dims": 2,
                "task": "binary",
                "class_names": CLASSES,
                "num_outputs": 2,
                "in_channels": 1,
                "img_size": 28,
                "modality": "DX",
                "source": SOURCE,
                "seed": 0,
                "preprocessing": {"steps": [{"name": "resize"}, {"name": "minmax"}]},
                "epochs_run": 5 if kind == "deep" else None,
                "best_epoch": 3 if kind == "deep" else None,
                "stopped_early": False,
                "config": {"optimizer": "adamw", "lr": 0.001},
                "best_params": {"C": 1.0} if kind == "classical" else None,
            },
        )
        write_json(
            md.metrics,
            {
                "test": {"auc": 0.8, "acc": 0.7},
                "n": {"train": 200, "val": n_val, "test": n_test},
                "timing": {"fit_seconds": 1.5 + k, "images_per_second": 500.0},
            },
        )
        if kind == "deep":
            log = "epoch,step,train_loss,val_loss,val_auc,val_acc,lr,session\n" + "".join(
                f"{e},{10 * e},{0.7 - 0.1 * e:.3f},{0.72 - 0.08 * e:.3f},{0.7 + 0.05 * e:.3f},0.7,0.001,0\n"
                for e in range(5)
            )
        else:
            log = "trial,params,val_roc_auc,fit_seconds,best\n0,C=0.1,0.80,0.1,0\n1,C=1.0,0.84,0.1,1\n"
        atomic_write_bytes(md.training_log, log.encode())
        atomic_write_bytes(md.weights if kind == "deep" else md.estimator, b"fake weights " + name.encode())
        s = C.model_statistics(
            task="binary",
            class_names=CLASSES,
            y_val=y_val,
            p_val=np.c_[1 - p_val, p_val],
            y_eval=y_test,
            p_eval=np.c_[1 - p_test, p_test],
            n_resamples=100,
            seed=0,
        )
        calibrated[name] = s.pop("_calibrated")
        hard[name] = C.decisions(calibrated[name], "binary", s["thresholds"]["decision"])
        raw_test = np.c_[1 - p_test, p_test]
        stats[name] = {
            "name": name,
            "kind": kind,
            "task": "binary",
            "class_names": CLASSES,
            "n": {"val": n_val, "test": n_test},
            **s,
            "raw": raw_test,
            "training": None,
            "timing": {"fit_seconds": 1.5 + k},
            "localization": (
                {
                    "method": "grad-cam" if kind == "deep" else "occlusion",
                    "n_scored": 10,
                    "pointing_game": 0.8,
                    "iou": 0.4,
                }
                if localization
                else None
            ),
        }
    if audit:  # what `medlens data audit` / the report write when the source is at hand
        from medlens.serving.overlay import overlay_png

        write_json(
            run.audit,
            {
                "n_samples": 400,
                "unreadable": [],
                "unpaired": [],
                "exact_duplicates": {"n_groups": 0, "n_images": 0, "n_cross_split_groups": 0, "groups": []},
                "near_duplicates": {"n_groups": 0, "n_images": 0, "n_cross_split_groups": 0, "groups": []},
                "patient_leakage": {"n_patients": 0, "patients": []},
                "class_imbalance": {"counts": {"normal": 200, "pneumonia": 200}, "ratio": 1.0, "warning": None},
                "conflicting_labels": [],
                "blank_images": [],
                "leakage_found": False,
                "warnings": [],
            },
        )
        atomic_write_bytes(run.montage, overlay_png(np.tile(np.linspace(0, 1, 64), (32, 1)), None))
    gallery_items = []
    if gallery and "cnn-small" in models:
        from medlens.serving.overlay import overlay_png

        run.figures.mkdir(parents=True, exist_ok=True)
        for n, correct in enumerate((True, True, False)):
            img = np.linspace(0, 1, 28 * 28).reshape(28, 28)
            heat = np.zeros((28, 28))
            heat[10:18, 10:18] = 1.0
            rel = f"figures/gradcam_cnn-small_{'right' if correct else 'wrong'}_{n}.png"
            atomic_write_bytes(run.root / rel, overlay_png(img, heat))
            gallery_items.append(
                {
                    "model": "cnn-small",
                    "file": rel,
                    "id": test_ids[n],
                    "label": "pneumonia",
                    "predicted": "pneumonia" if correct else "normal",
                    "probability": 0.9,
                    "correct": correct,
                }
            )
    if comparison:
        names = list(models)
        order = sorted(names, key=lambda n: (stats[n]["kind"] != "classical", n))
        raw = {n: stats[n].pop("raw") for n in names}
        pairwise = (
            C.pairwise_tests(order, y_test, raw, hard, "binary", n_resamples=100, seed=0)
            if len(names) > 1
            else {"tests": [], "correction": "holm", "alpha": 0.05, "n_tests": 0, "n_common": n_test}
        )
        models_obj = {n: stats[n] for n in order}
        comp = {
            "schema": C.SCHEMA,
            "created": "2025-01-01T00:00:00+00:00",
            "source": SOURCE,
            "task": "binary",
            "dims": 2,
            "class_names": CLASSES,
            "seed": 0,
            "split": "test",
            "n": {"train": 200, "val": n_val, "test": n_test},
            "ci": {"method": "stratified percentile bootstrap", "level": 0.95, "n_resamples": 100, "seed": 0},
            "suite": None,
            "order": order,
            "models": models_obj,
            "best": {
                "model": best_by_val_auc(models_obj),
                "criterion": "highest validation AUC",
                "by_metric": C.best_by_metric(models_obj, "test"),
            },
            "pairwise": pairwise,
            "localization": (
                {"available": True, "reason": None, "n_images": 10, "pointing_tolerance_px": 2}
                if localization
                else {"available": False, "reason": "no lesion masks in the source"}
            ),
            "figures": {"dir": "figures", "gradcam_gallery": gallery_items},
        }
        comp["summary"] = C.summary_rows(comp)
        write_json(run.comparison, comp)
    record_files(run.root, artifact_files(run.root), "test")
    return run.root


@pytest.fixture(scope="session")
def _template_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture
def fake_run(_template_run, tmp_path) -> Path:
    """A fresh copy of the two-model fake run (tests may write into it)."""
    dst = tmp_path / "run"
    shutil.copytree(_template_run, dst)
    return dst


@pytest.fixture
def make_fake_run(tmp_path):
    """Factory for variants: ``make_fake_run(models=("svm",), comparison=False, ...)``."""

    def factory(**kw) -> Path:
        return make_run(tmp_path / "variant", **kw)

    return factory
