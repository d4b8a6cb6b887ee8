"""Classical models in the registry: image features + scaling + a scikit-learn classifier.

Every spec builds an unfitted ``Pipeline([("features", ImageFeatures), ("scale",
StandardScaler), ("clf", classifier)])`` that takes images (N, C, H, W) or (N, C, D, H, W).

``spec.defaults``:

``features``
    the default feature kinds (see :mod:`medlens.models.classical.features`).
``grid``
    a small hyper-parameter grid over the *base classifier's* own parameter names
    (``{"C": [...]}``, not ``clf__C``); :func:`set_classifier_params` applies a point to a
    pipeline whatever wrapper is used for multi-label.
``search_uncalibrated``
    True when the classifier is wrapped in ``CalibratedClassifierCV`` (the SVM): the grid
    search fits the bare classifier (:func:`without_calibration`) and scores its decision
    function, whose ranking is what AUC measures (sigmoid calibration is monotone); only the
    chosen point is refitted with its costly cross-validated calibration.

Ordinal tasks are treated as multi-class (the order is not used by these models). Multi-label
tasks wrap the classifier in ``OneVsRestClassifier`` (one model per label), except the random
forest and the ELM, which fit all labels at once natively.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from medlens.data.sample import Task
from medlens.models.classical.elm import ELMClassifier
from medlens.models.classical.features import ImageFeatures
from medlens.models.registry import ModelSpec, register

DEFAULT_FEATURES = ("hog", "lbp", "hist")
TASKS = (Task.BINARY.value, Task.MULTICLASS.value, Task.ORDINAL.value, Task.MULTILABEL.value)


def _task(task) -> Task:
    task = Task(task)
    if task.value not in TASKS:
        raise ValueError(f"classical models support tasks {TASKS}, not '{task.value}'")
    return task


def make_pipeline(
    classifier, task, features: Sequence[str] | ImageFeatures | None = None, *, native_multilabel: bool = False
) -> Pipeline:
    """Features + StandardScaler + ``classifier`` (wrapped one-vs-rest for multi-label unless native)."""
    task = _task(task)
    if isinstance(features, ImageFeatures):
        feat = features
    else:
        feat = ImageFeatures(kinds=tuple(features or DEFAULT_FEATURES))
    if task is Task.MULTILABEL and not native_multilabel:
        classifier = OneVsRestClassifier(classifier)
    return Pipeline([("features", feat), ("scale", StandardScaler()), ("clf", classifier)])


_WRAPPERS = (OneVsRestClassifier, CalibratedClassifierCV)


def base_classifier(estimator):
    """The classifier inside a pipeline's last step, unwrapping one-vs-rest and calibration."""
    clf = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    while isinstance(clf, _WRAPPERS):
        clf = clf.estimator
    return clf


def set_classifier_params(estimator, params: dict[str, Any]):
    """Set base-classifier ``params`` on a pipeline or a (wrapped) classifier; returns ``estimator``."""
    clf = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    prefix, inner = "", clf
    while isinstance(inner, _WRAPPERS):
        prefix, inner = prefix + "estimator__", inner.estimator
    if params:
        clf.set_params(**{prefix + k: v for k, v in params.items()})
    return estimator


def without_calibration(clf):
    """``clf`` with any ``CalibratedClassifierCV`` layer removed (one-vs-rest kept); unfitted clone."""
    from sklearn.base import clone

    if isinstance(clf, OneVsRestClassifier):
        return OneVsRestClassifier(without_calibration(clf.estimator))
    if isinstance(clf, CalibratedClassifierCV):
        return without_calibration(clf.estimator)
    return clone(clf)


def _spec(
    name: str,
    description: str,
    make_clf: Callable[[int], Any],
    grid: dict[str, list],
    *,
    search_uncalibrated: bool = False,
    native_multilabel: bool = False,
) -> ModelSpec:
    def build(task, *, seed: int = 0, features: Sequence[str] | ImageFeatures | None = None) -> Pipeline:
        return make_pipeline(make_clf(seed), task, features, native_multilabel=native_multilabel)

    build.__doc__ = f"Unfitted pipeline for '{name}': ImageFeatures -> StandardScaler -> {description}."
    return register(
        ModelSpec(
            name=name,
            kind="classical",
            dims=(2, 3),
            tasks=TASKS,
            description=description,
            build=build,
            defaults={"features": DEFAULT_FEATURES, "grid": grid, "search_uncalibrated": search_uncalibrated},
        )
    )


SVM = _spec(
    "svm",
    "RBF support-vector machine; probabilities by Platt (sigmoid) scaling fitted with 5-fold "
    "cross-validation on the training split (CalibratedClassifierCV, ensemble=False: the "
    "replacement scikit-learn 1.9 recommends for the deprecated SVC(probability=True))",
    lambda seed: CalibratedClassifierCV(
        SVC(C=1.0, kernel="rbf", gamma="scale", cache_size=500, random_state=seed),
        method="sigmoid",
        cv=5,
        ensemble=False,
    ),
    {"C": [0.3, 1.0, 3.0, 10.0], "gamma": ["scale"]},
    search_uncalibrated=True,
)

RANDOM_FOREST = _spec(
    "random-forest",
    "random forest of 300 trees (class probabilities = mean of the trees' leaf frequencies)",
    lambda seed: RandomForestClassifier(n_estimators=300, random_state=seed),
    {"max_features": ["sqrt", "log2"], "min_samples_leaf": [1, 3]},
    native_multilabel=True,
)

LOGISTIC_REGRESSION = _spec(
    "logistic-regression",
    "L2-regularised (multinomial) logistic regression",
    lambda seed: LogisticRegression(C=1.0, max_iter=3000, random_state=seed),
    {"C": [0.01, 0.1, 1.0]},
)

GRADIENT_BOOSTING = _spec(
    "gradient-boosting",
    "histogram gradient-boosted trees (HistGradientBoostingClassifier, 200 rounds, no early stopping)",
    lambda seed: HistGradientBoostingClassifier(max_iter=200, early_stopping=False, random_state=seed),
    {"learning_rate": [0.05, 0.1], "max_leaf_nodes": [15, 31]},
)

ELM = _spec(
    "elm",
    "extreme learning machine (random ReLU hidden layer, ridge least-squares readout; hand-written)",
    lambda seed: ELMClassifier(n_hidden=2000, activation="relu", alpha=100.0, random_state=seed),
    {"n_hidden": [1000, 2000], "alpha": [10.0, 100.0, 1000.0]},
    native_multilabel=True,
)
