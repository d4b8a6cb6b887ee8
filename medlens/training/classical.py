"""Fitting classical models: features once, a grid search scored on the validation split, refit.

:func:`fit_classical` never sees the test split: hyper-parameters are chosen by the validation
score only. Features (and the scaler) are fitted on the training split and extracted once per
split; the grid then loops over the classifier alone, so a grid of 9 points costs one feature
extraction, not nine.

Saving and loading (:mod:`medlens.models.classical.persistence`) and probabilities of a fitted
estimator (:mod:`medlens.models.classical.predict`) live with the models, below the inference core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from sklearn.base import clone
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

from medlens.data.sample import Task
from medlens.errors import MedlensError
from medlens.models.classical.estimators import set_classifier_params, without_calibration
from medlens.models.classical.predict import align_proba, softmax
from medlens.models.registry import get_model


@dataclass
class ClassicalFitResult:
    """What :func:`fit_classical` returns.

    ``estimator`` is the full fitted pipeline (images in, probabilities out), refitted on the
    training split with ``best_params``. ``grid_scores`` has one entry per grid point:
    ``{"params", "score", "fit_seconds"}``, the score being ``metric`` on the validation split.
    ``fit_seconds`` covers the grid search and the final fit, ``feature_seconds`` the feature
    extraction (and scaling) of both splits.
    """

    estimator: Pipeline
    best_params: dict[str, Any]
    best_score: float
    metric: str
    grid_scores: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float = 0.0
    feature_seconds: float = 0.0


def _fit_calibration_folds(model: Any, y_train: np.ndarray, spec_name: str) -> Any:
    """Fewer calibration folds when a class has fewer training samples than folds; a clear error
    when a class has fewer than two (probability calibration by cross-validation is impossible)."""
    y = np.asarray(y_train)
    counts = y.sum(axis=0).astype(int) if y.ndim == 2 else np.bincount(y.astype(int))
    if y.ndim == 2:  # multi-label: each label is a binary problem with positives and negatives
        counts = np.minimum(counts, len(y) - counts)
    smallest = int(counts[counts > 0].min()) if np.any(counts > 0) else 0
    for key, value in model.get_params().items():
        if (key == "cv" or key.endswith("__cv")) and isinstance(value, int) and value > smallest:
            if smallest < 2:
                raise MedlensError(
                    f"'{spec_name}' calibrates its probabilities by cross-validation and needs at least 2 "
                    f"training samples of every class; the smallest class has {smallest}"
                )
            model.set_params(**{key: smallest})
    return model


def fit_classical(
    spec_name: str,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    task: Task | str,
    seed: int,
    features: Sequence[str] | None = None,
    grid: dict[str, list] | None = None,
    show_progress: bool = True,
) -> ClassicalFitResult:
    """Fit the classical model ``spec_name``, choosing hyper-parameters on the validation split.

    ``grid`` (default ``spec.defaults["grid"]``) uses the base classifier's parameter names.
    Ties between grid points go to the first one. The returned pipeline holds the feature steps
    fitted on ``X_train`` and the classifier fitted on ``X_train`` with ``best_params`` (the
    grid's own model for that point, or a refit with calibration for ``search_uncalibrated``
    specs). ``X_val`` / ``y_val`` are used for scoring only.
    """
    spec = get_model(spec_name)
    task = Task(task)
    if spec.kind != "classical":
        raise MedlensError(f"model '{spec_name}' is a {spec.kind} model, not a classical one")
    if task.value not in spec.tasks:
        raise MedlensError(f"model '{spec_name}' does not support task '{task.value}' (supports {spec.tasks})")
    if len(X_train) != len(y_train) or len(X_val) != len(y_val):
        raise ValueError("X and y of a split differ in length")
    if task is not Task.MULTILABEL:  # MedMNIST-style (N, 1) labels -> (N,)
        y_train, y_val = np.asarray(y_train).reshape(len(y_train)), np.asarray(y_val).reshape(len(y_val))
    pipeline = spec.build(task, seed=seed, features=features or spec.defaults.get("features"))
    grid = spec.defaults.get("grid", {}) if grid is None else grid
    uncalibrated = bool(spec.defaults.get("search_uncalibrated", False))

    t0 = time.perf_counter()
    featurizer = Pipeline(pipeline.steps[:-1])
    F_train = featurizer.fit_transform(X_train, y_train)
    F_val = featurizer.transform(X_val)
    feature_seconds = time.perf_counter() - t0

    n_classes = None if task is Task.MULTILABEL else int(max(np.max(y_train), np.max(y_val))) + 1
    template = pipeline.steps[-1][1]
    points = list(ParameterGrid(grid)) if grid else [{}]
    grid_scores: list[dict[str, Any]] = []
    best_i, best_model, metric = -1, None, "accuracy"
    t0 = time.perf_counter()
    for i, params in enumerate(_progress(points, spec_name, show_progress)):
        model = without_calibration(template) if uncalibrated else clone(template)
        set_classifier_params(model, params)
        t_fit = time.perf_counter()
        model.fit(F_train, y_train)
        fit_s = time.perf_counter() - t_fit
        score, metric = validation_score(y_val, _scores(model, F_val, task, n_classes), task)
        grid_scores.append({"params": params, "score": score, "fit_seconds": fit_s})
        if best_i < 0 or score > grid_scores[best_i]["score"]:
            best_i, best_model = i, model
    best_params = points[best_i]
    if uncalibrated:  # refit the chosen point with its calibration
        calibrated = _fit_calibration_folds(set_classifier_params(clone(template), best_params), y_train, spec_name)
        best_model = calibrated.fit(F_train, y_train)
    fit_seconds = time.perf_counter() - t0

    # the feature steps inside ``pipeline`` are the objects ``featurizer`` fitted
    pipeline.steps[-1] = (pipeline.steps[-1][0], best_model)
    return ClassicalFitResult(
        estimator=pipeline,
        best_params=dict(best_params),
        best_score=grid_scores[best_i]["score"],
        metric=metric,
        grid_scores=grid_scores,
        fit_seconds=fit_seconds,
        feature_seconds=feature_seconds,
    )


def _progress(points, name: str, show: bool):
    from medlens.progress import track

    return track(points, desc=f"grid {name}", unit="fit", disable=not show)


def validation_score(y_true: np.ndarray, scores: np.ndarray, task: Task | str) -> tuple[float, str]:
    """Score for model selection: (value, metric name). Higher is better.

    binary: ROC AUC of the positive-class column; multi-class / ordinal: one-vs-rest AUC
    averaged over classes (classes absent from ``y_true`` are skipped); multi-label: AUC averaged
    over labels that have both values. Falls back to accuracy when no AUC is defined
    (e.g. a single class in ``y_true``).
    """
    task = Task(task)
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if task is Task.MULTILABEL:
        aucs = [
            roc_auc_score(y_true[:, j], scores[:, j])
            for j in range(y_true.shape[1])
            if len(np.unique(y_true[:, j])) == 2
        ]
        if aucs:
            return float(np.mean(aucs)), "roc_auc"
        return float(accuracy_score(y_true, (scores > 0.5).astype(int))), "accuracy"
    y_true = y_true.ravel().astype(np.int64)
    aucs = [
        roc_auc_score(y_true == k, scores[:, k])
        for k in range(scores.shape[1])
        if 0 < np.sum(y_true == k) < len(y_true)
    ]
    if task is Task.BINARY and aucs:
        return float(aucs[-1]), "roc_auc"  # AUC of column 1 (column 0 gives the same value)
    if aucs:
        return float(np.mean(aucs)), "roc_auc"
    return float(accuracy_score(y_true, np.argmax(scores, axis=1))), "accuracy"


def _scores(model, F: np.ndarray, task: Task, n_classes: int | None) -> np.ndarray:
    """Per-class scores of a classifier on features: probabilities, or decision values if it has none."""
    if hasattr(model, "predict_proba"):
        return align_proba(model, model.predict_proba(F), task, n_classes)
    dec = np.asarray(model.decision_function(F), dtype=np.float64)
    if task is Task.MULTILABEL:
        return dec
    if dec.ndim == 1:  # binary: positive-class margin
        return align_proba(model, np.column_stack([-dec, dec]), task, n_classes)
    return align_proba(model, softmax(dec), task, n_classes)
