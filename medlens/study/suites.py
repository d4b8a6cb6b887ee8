"""Named model suites for `medlens compare`, and fitting a suite into a time budget.

A suite is a list of :class:`SuiteEntry` (a registered model name plus the
:class:`~medlens.training.config.TrainConfig` settings it is trained with; the extra setting
``max_img_size`` caps the input side: ``img_size = min(native side, max_img_size)``), chosen per
spatial dimension of the data:

``quick``     demo-sized (a few minutes on 2 CPU cores): 2D ``svm``, ``elm``, ``cnn-small``,
              ``resnet18``; 3D ``svm``, ``elm`` (on 3D features), ``resnet18-3d``, ``cnn-lstm``.
``standard``  the usual comparison: more classical families and more epochs.
``full``      every registered model that supports the data's dimensions and task, with
              generous epochs.

Segmentation sources (samples with masks) get their own suites, the same for 2D and 3D:

``seg-quick`` demo-sized: ``unet`` (20 epochs at a high learning rate) and the ``pixel-forest``
              baseline.
``seg``       the usual comparison: ``unet`` and ``dynunet`` with more epochs, ``pixel-forest``.

``full`` serves both tasks. A classification suite on a segmentation source, or the reverse, is
a one-line error naming the suites that fit; :func:`default_suite` is the suite a source gets
when none is named (``quick`` or ``seg-quick``).

``--suite`` also accepts a comma-separated list of model names (``elm,cnn-small``): every model
is then trained with its registry defaults (epochs of the ``standard`` suite for deep models).

Budget (:func:`fit_budget`, ``--budget-minutes M``): classical models are costed from a table of
seconds per 1000 training images measured on a 2-core machine (:data:`CLASSICAL_SECONDS_PER_1K`,
feature extraction and grid search included); deep models from a short timed forward/backward
pass on this machine (:func:`medlens.training.plan.measure_throughput`, about 1.5 s per model),
extrapolated to the training split plus validation. When the suite's estimate exceeds
:data:`BUDGET_USE` of the budget (the rest is left for loading, evaluation and the report), every
deep model's epochs are scaled down by one common factor (at least one epoch each); epochs are
never scaled up. The estimate and the scaled epochs are recorded in ``study.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from medlens.errors import MedlensError

SUITE_TASKS = {
    "quick": "classification",
    "standard": "classification",
    "seg-quick": "segmentation",
    "seg": "segmentation",
    "full": None,  # every model that fits the source's task
}
"""Each named suite and the task family it is for (``None``: both)."""
SUITE_NAMES = tuple(SUITE_TASKS)
BUDGET_USE = 0.8  # share of the budget planned for training
VAL_COST = 0.35  # a validation image costs about this fraction of a training image (no backward)
DEFAULT_EPOCHS = {"quick": 6, "standard": 20, "full": 30}

CLASSICAL_SECONDS_PER_1K = {
    "elm": 25.0,
    "svm": 35.0,
    "logistic-regression": 25.0,
    "random-forest": 40.0,
    "gradient-boosting": 90.0,
    "pixel-forest": 450.0,  # 32 px masks: every pixel of each image is a training sample
}
"""Seconds per 1000 training images (2D 64 px, 2 cores, grid search and features included;
``pixel-forest``: 2D 32 px)."""
CLASSICAL_3D_FACTOR = 4.0  # 3D features cost about this much more per sample


@dataclass(frozen=True)
class SuiteEntry:
    """One model of a suite and the training settings (TrainConfig keys) it gets."""

    model: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int | None:
        return self.settings.get("epochs")

    @property
    def name(self) -> str:
        """The model's folder and name in the run: the setting ``name`` (a variant), else the model."""
        return str(self.settings.get("name") or self.model)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "settings": dict(self.settings)}


def _e(model: str, **settings: Any) -> SuiteEntry:
    return SuiteEntry(model, settings)


# Settings tuned so that `medlens demo` (quick suite on synthetic:chest2d, 510 images at 64 px)
# finishes well inside 5 minutes on an idle 2-core machine; see medlens/study/demo.py.
SUITES: dict[str, dict[int, list[SuiteEntry]]] = {
    "quick": {
        2: [
            _e("svm"),
            _e("elm"),
            _e("cnn-small", epochs=8, batch_size=32, patience=8),
            # ResNet-18's stride-1 stem costs ~2 GFLOP per 64 px image: 32 px keeps it affordable
            _e("resnet18", epochs=6, batch_size=16, max_img_size=32, patience=6),
        ],
        3: [_e("svm"), _e("elm"), _e("resnet18-3d", epochs=4, patience=4), _e("cnn-lstm", epochs=4, patience=4)],
    },
    "standard": {
        2: [
            _e("svm"),
            _e("random-forest"),
            _e("elm"),
            _e("cnn-small", epochs=20),
            _e("resnet18", epochs=15),
            _e("vit", epochs=15),
        ],
        3: [
            _e("svm"),
            _e("random-forest"),
            _e("elm"),
            _e("resnet18-3d", epochs=15),
            _e("cnn-lstm", epochs=15),
            _e("cnn-2.5d", epochs=15),
        ],
    },
}
# Segmentation suites: the same models for 2D and 3D (every segmentation model takes both).
# `medlens demo` trains seg-quick on synthetic:chest2d-seg@32, 48 cases per split (medlens/study/demo.py):
# at the U-Net's default lr (2e-3) 240 optimiser steps still predict background only; 1e-2 learns the lesions.
_SEG_QUICK = [_e("unet", epochs=20, lr=1e-2, patience=20), _e("pixel-forest")]
_SEG = [_e("unet", epochs=40), _e("dynunet", epochs=40), _e("pixel-forest")]
SUITES.update({"seg-quick": {2: _SEG_QUICK, 3: _SEG_QUICK}, "seg": {2: _SEG, 3: _SEG}})


def task_family(task: str | None) -> str | None:
    """The task family: segmentation for the segmentation task, classification for any other."""
    if not task:
        return None
    return "segmentation" if task == "segmentation" else "classification"


def default_suite(task: str | None) -> str:
    """The suite a source of ``task`` gets when none is named: ``seg-quick`` or ``quick``."""
    return "seg-quick" if task_family(task) == "segmentation" else "quick"


def _check_suite_task(name: str, task: str | None) -> None:
    """A named suite for the other task family is a one-line error naming the suites that fit."""
    family, suite_family = task_family(task), SUITE_TASKS[name]
    if family is None or suite_family is None or family == suite_family:
        return
    fitting = ", ".join(n for n, f in SUITE_TASKS.items() if f in (family, None))
    raise MedlensError(
        f"suite '{name}' is for {suite_family}, but the source's task is {task} (suites for {family}: {fitting})"
    )


def suite_entries(suite: str | Sequence[SuiteEntry | str], dims: int, task: str | None = None) -> list[SuiteEntry]:
    """The entries of ``suite`` for data of ``dims`` spatial dimensions and ``task``.

    ``suite`` is a suite name, a comma-separated list of model names, or a list of entries /
    model names. Models that do not support ``dims`` or ``task`` are left out of named suites;
    an explicitly listed model that does not fit is an error.
    """
    from medlens.models.registry import all_models, get_model

    if not isinstance(suite, str):
        entries = [SuiteEntry(e) if isinstance(e, str) else e for e in suite]
        return _checked(entries, dims, task, explicit=True)
    name = suite.strip()
    if name in SUITE_TASKS:
        _check_suite_task(name, task)
    if name == "full":
        out = []
        for spec in all_models():
            if dims in spec.dims and (not task or not spec.tasks or task in spec.tasks):
                out.append(_e(spec.name, epochs=DEFAULT_EPOCHS["full"]) if spec.kind == "deep" else _e(spec.name))
        return out
    if name in SUITES:
        if dims not in SUITES[name]:
            raise MedlensError(f"suite '{name}' has no models for {dims}D data")
        return _checked(list(SUITES[name][dims]), dims, task, explicit=False)
    if "," in name or _is_model(name):
        entries = []
        for model in [m.strip() for m in name.split(",") if m.strip()]:
            spec = get_model(model)
            entries.append(_e(model, epochs=DEFAULT_EPOCHS["standard"]) if spec.kind == "deep" else _e(model))
        return _checked(entries, dims, task, explicit=True)
    raise MedlensError(f"unknown suite '{name}' (known: {', '.join(SUITE_NAMES)}, or model names joined by commas)")


def _is_model(name: str) -> bool:
    from medlens.models.registry import all_models

    return any(s.name == name for s in all_models())


def _checked(entries: list[SuiteEntry], dims: int, task: str | None, *, explicit: bool) -> list[SuiteEntry]:
    from medlens.models.registry import get_model

    out, seen = [], set()
    for entry in entries:
        spec = get_model(entry.model)
        fits = dims in spec.dims and (not task or not spec.tasks or task in spec.tasks)
        if not fits:
            if explicit:
                raise MedlensError(
                    f"model '{entry.model}' does not support {dims}D {task or ''} data".replace("  ", " ")
                )
            continue
        if entry.model in seen:
            raise MedlensError(f"model '{entry.model}' is listed twice in the suite")
        seen.add(entry.model)
        out.append(entry)
    if not out:
        raise MedlensError(f"no model of the suite supports {dims}D data")
    return out


def describe_suites() -> list[dict[str, Any]]:
    """Rows for ``--list-suites``: suite, task family, dims, model, kind and epochs."""
    from medlens.models.registry import get_model

    rows = []
    for name, family in SUITE_TASKS.items():
        for task in [family] if family else ["classification", "segmentation"]:
            for dims in (2, 3):
                task_value = "segmentation" if task == "segmentation" else None
                for entry in suite_entries(name, dims, task_value):
                    spec = get_model(entry.model)
                    if task == "classification" and "segmentation" in spec.tasks:
                        continue  # full, classification half: no segmentation models
                    rows.append(
                        {
                            "suite": name,
                            "task": task,
                            "dims": dims,
                            "model": entry.model,
                            "kind": spec.kind,
                            "epochs": entry.epochs if spec.kind == "deep" else None,
                        }
                    )
    return rows


# -- budget ------------------------------------------------------------------------------------
def classical_seconds(model: str, n_train: int, dims: int) -> float:
    """Estimated fit time of a classical model (see :data:`CLASSICAL_SECONDS_PER_1K`)."""
    per_1k = CLASSICAL_SECONDS_PER_1K.get(model, 60.0)
    return per_1k * n_train / 1000.0 * (CLASSICAL_3D_FACTOR if dims == 3 else 1.0)


def fit_budget(
    entries: list[SuiteEntry],
    budget_minutes: float,
    *,
    n_train: int,
    n_val: int,
    dims: int,
    in_channels: int,
    num_outputs: int,
    img_sizes: dict[str, int | list[int]],
    batch_sizes: dict[str, int],
    throughput: dict[str, float] | None = None,
    segmentation: bool = False,
) -> tuple[list[SuiteEntry], dict[str, Any]]:
    """Scale the deep models' epochs down so the suite's estimated training time fits the budget.

    ``img_sizes`` / ``batch_sizes`` are the resolved settings per deep model (segmentation: the
    patch, and ``n_train`` counts patches); ``throughput`` (training images per second
    per model) is measured when not given. Returns the new entries and a record of the estimate
    (written to ``study.json``).
    """
    if not budget_minutes > 0:
        raise MedlensError(f"--budget-minutes must be positive, not {budget_minutes}")
    from medlens.models.registry import get_model

    available = budget_minutes * 60.0 * BUDGET_USE
    rows: dict[str, dict[str, Any]] = {}
    classical_total, deep_total = 0.0, 0.0
    for entry in entries:
        spec = get_model(entry.model)
        if spec.kind != "deep":
            seconds = classical_seconds(entry.model, n_train, dims)
            classical_total += seconds
            rows[entry.model] = {"kind": "classical", "estimated_seconds": round(seconds, 1)}
            continue
        ips = (throughput or {}).get(entry.model)
        if ips is None:
            from medlens.training.plan import measure_throughput

            ips = measure_throughput(
                entry.model,
                in_channels=in_channels,
                num_outputs=num_outputs,
                dims=dims,
                img_size=img_sizes[entry.model],
                batch_size=batch_sizes[entry.model],
                segmentation=segmentation,
            )
        per_epoch = (n_train + VAL_COST * n_val) / max(float(ips), 1e-6)
        epochs = int(entry.settings.get("epochs") or 20)
        deep_total += per_epoch * epochs
        rows[entry.model] = {
            "kind": "deep",
            "images_per_second": round(float(ips), 1),
            "seconds_per_epoch": round(per_epoch, 2),
            "epochs_planned": epochs,
        }
    left = available - classical_total
    scale = 1.0 if deep_total <= 0 else min(1.0, max(left, 0.0) / deep_total)
    out = []
    for entry in entries:
        row = rows[entry.model]
        if row["kind"] == "deep":
            epochs = max(1, int(math.floor(row["epochs_planned"] * scale)))
            patience = entry.settings.get("patience")
            settings = {**entry.settings, "epochs": epochs}
            if patience is not None:
                settings["patience"] = min(int(patience), epochs)
            row["epochs"] = epochs
            row["estimated_seconds"] = round(row["seconds_per_epoch"] * epochs, 1)
            entry = replace(entry, settings=settings)
        out.append(entry)
    estimate = sum(r["estimated_seconds"] for r in rows.values())
    record = {
        "budget_minutes": budget_minutes,
        "planned_share": BUDGET_USE,
        "epoch_scale": round(scale, 4),
        "estimated_training_seconds": round(estimate, 1),
        "fits": bool(estimate <= available + 1e-9),
        "models": rows,
        "method": "classical: seconds-per-1000-images table; deep: timed forward/backward pass on this machine",
    }
    return out, record
