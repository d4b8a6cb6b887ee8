"""Registered classical specs: names, metadata, and fit/predict on tiny synthetic images for every task."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from medlens.models.classical.estimators import base_classifier, set_classifier_params
from medlens.models.classical.predict import predict_proba_classical
from medlens.models.registry import all_models, get_model

NAMES = ("svm", "random-forest", "logistic-regression", "gradient-boosting", "elm")
CORNERS = ((0, 0), (0, 8), (8, 0), (8, 8))
FAST = {"random-forest": {"n_estimators": 25}, "gradient-boosting": {"max_iter": 15}}  # keep tests quick


def synthetic(task: str, n: int = 48, seed: int = 0, shape=(16, 16)):
    """Noisy images; class k (or label j) puts a bright 8x8 square in corner k (j)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0.3, 0.08, size=(n, 1, *shape)).astype(np.float32)
    if task == "multilabel":
        y = rng.integers(0, 2, size=(n, 3))
        y[:4] = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]  # every label both present and absent
        on = [[j for j in range(3) if y[i, j]] for i in range(n)]
    else:
        k = 2 if task == "binary" else 3
        y = np.arange(n) % k
        on = [[c] for c in y]
    for i, corners in enumerate(on):
        for c in corners:
            r, col = CORNERS[c]
            X[i, :, ..., r : r + 8, col : col + 8] += 0.5
    return np.clip(X, 0, 1), y


def test_all_names_registered_as_classical():
    specs = {s.name: s for s in all_models() if s.kind == "classical"}
    assert set(NAMES) <= set(specs)
    for name in NAMES:
        spec = get_model(name)
        assert spec.dims == (2, 3)
        assert set(spec.tasks) == {"binary", "multiclass", "ordinal", "multilabel"}
        assert spec.defaults["grid"] and spec.defaults["features"] == ("hog", "lbp", "hist")
        pipe = spec.build("binary", seed=0)
        assert isinstance(pipe, Pipeline) and [n for n, _ in pipe.steps] == ["features", "scale", "clf"]
        # every grid key is a parameter of the base classifier
        assert set(spec.defaults["grid"]) <= set(base_classifier(pipe).get_params())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_fit_predict_tiny(name, task):
    X, y = synthetic(task, seed=1)
    X_new, y_new = synthetic(task, n=24, seed=2)
    est = set_classifier_params(get_model(name).build(task, seed=0), FAST.get(name, {}))
    with threadpool_limits(1):  # OpenMP threads of gradient boosting crawl on a shared 2-core machine
        est.fit(X, y)
    proba = predict_proba_classical(est, X_new, task)
    k = {"binary": 2, "multiclass": 3, "multilabel": 3}[task]
    assert proba.shape == (24, k) and np.isfinite(proba).all()
    assert ((proba >= 0) & (proba <= 1)).all()
    if task == "multilabel":
        acc = ((proba > 0.5) == y_new).mean()
    else:
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
        acc = (proba.argmax(1) == y_new).mean()
    assert acc >= 0.8, f"{name} {task}: accuracy {acc:.2f} on an easy problem"


def test_3d_volumes():
    X, y = synthetic("binary", n=24, seed=3)
    vol = np.repeat(X[:, :, None], 8, axis=2)  # (N, 1, 8, 16, 16)
    est = get_model("logistic-regression").build("binary", seed=0).fit(vol, y)
    assert predict_proba_classical(est, vol, "binary").shape == (24, 2)


def test_set_classifier_params_reaches_wrapped_classifiers():
    svm_ml = get_model("svm").build("multilabel", seed=0)  # OneVsRest(Calibrated(SVC))
    set_classifier_params(svm_ml, {"C": 7.0})
    assert base_classifier(svm_ml).C == 7.0
    lr = set_classifier_params(clone(get_model("logistic-regression").build("binary", seed=0)), {"C": 0.5})
    assert base_classifier(lr).C == 0.5


def test_seed_reaches_the_classifier():
    a = base_classifier(get_model("random-forest").build("binary", seed=5))
    b = base_classifier(get_model("elm").build("multiclass", seed=6))
    assert a.random_state == 5 and b.random_state == 6
