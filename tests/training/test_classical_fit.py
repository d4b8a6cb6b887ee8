"""fit_classical: validation-based selection, probabilities, and hash-checked save/load."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score

from medlens.errors import ChecksumError, MedlensError
from medlens.models.classical.estimators import base_classifier
from medlens.models.classical.persistence import load_estimator, save_estimator
from medlens.models.classical.predict import predict_proba_classical
from medlens.training.classical import ClassicalFitResult, fit_classical, validation_score

LR_GRID = {"C": [1e-4, 1e-2, 1.0, 100.0]}


def noisy_binary(n: int, seed: int, signal: float = 0.12):
    """16x16 images; class 1 has a faint bright square in one corner, buried in noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(0.4, 0.15, size=(n, 1, 16, 16)).astype(np.float32)
    X[y == 1, :, :8, :8] += signal
    return np.clip(X, 0, 1), y


@pytest.fixture(scope="module")
def splits():
    return noisy_binary(80, seed=0), noisy_binary(60, seed=1)


@pytest.fixture(scope="module")
def lr_result(splits):
    (Xt, yt), (Xv, yv) = splits
    return fit_classical(
        "logistic-regression", Xt, yt, Xv, yv, task="binary", seed=0, grid=LR_GRID, show_progress=False
    )


def test_result_is_consistent(lr_result, splits):
    r = lr_result
    assert isinstance(r, ClassicalFitResult) and r.metric == "roc_auc"
    assert len(r.grid_scores) == 4 and r.fit_seconds > 0 and r.feature_seconds > 0
    best = max(range(4), key=lambda i: (r.grid_scores[i]["score"], -i))
    assert r.best_params == r.grid_scores[best]["params"] and r.best_score == r.grid_scores[best]["score"]
    assert base_classifier(r.estimator).C == r.best_params["C"]
    (_, _), (Xv, yv) = splits
    proba = predict_proba_classical(r.estimator, Xv, "binary")
    assert proba.shape == (60, 2)
    # the recorded score is the validation AUC of the returned (train-fitted) pipeline
    assert roc_auc_score(yv, proba[:, 1]) == pytest.approx(r.best_score, abs=1e-12)


def test_selection_follows_the_validation_labels(lr_result, splits):
    """Flipping the validation labels turns every AUC into 1 - AUC, so the worst point must win."""
    (Xt, yt), (Xv, yv) = splits
    scores = [g["score"] for g in lr_result.grid_scores]
    assert len(set(np.round(scores, 9))) == len(scores), "grid points must score differently for this test"
    flipped = fit_classical(
        "logistic-regression", Xt, yt, Xv, 1 - yv, task="binary", seed=0, grid=LR_GRID, show_progress=False
    )
    np.testing.assert_allclose([g["score"] for g in flipped.grid_scores], 1 - np.array(scores), atol=1e-12)
    assert flipped.best_params == lr_result.grid_scores[int(np.argmin(scores))]["params"]
    assert flipped.best_params != lr_result.best_params


def test_svm_searches_uncalibrated_and_refits_calibrated(splits):
    (Xt, yt), (Xv, yv) = splits
    r = fit_classical("svm", Xt, yt, Xv, yv, task="binary", seed=0, grid={"C": [0.3, 3.0]}, show_progress=False)
    clf = r.estimator.steps[-1][1]
    assert isinstance(clf, CalibratedClassifierCV) and clf.estimator.C == r.best_params["C"]
    proba = predict_proba_classical(r.estimator, Xv, "binary")
    # sigmoid calibration is monotone: the calibrated AUC equals the AUC used for selection
    assert roc_auc_score(yv, proba[:, 1]) == pytest.approx(r.best_score, abs=1e-9)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_elm_multiclass_and_multilabel(task):
    rng = np.random.default_rng(0)
    X = rng.normal(0.3, 0.05, size=(90, 1, 16, 16)).astype(np.float32)
    if task == "multiclass":
        y = np.arange(90) % 3
        for k in range(3):
            X[y == k, :, 5 * k : 5 * k + 5, :] += 0.5
    else:
        y = rng.integers(0, 2, size=(90, 2))
        X[y[:, 0] == 1, :, :8, :] += 0.5
        X[y[:, 1] == 1, :, :, :8] += 0.5
    r = fit_classical(
        "elm",
        X[:60],
        y[:60],
        X[60:],
        y[60:],
        task=task,
        seed=0,
        grid={"n_hidden": [50], "alpha": [1.0, 10.0]},
        show_progress=False,
    )
    assert r.metric == "roc_auc" and r.best_score > 0.9
    assert predict_proba_classical(r.estimator, X[60:], task).shape == (30, 3 if task == "multiclass" else 2)


def test_validation_score_fallbacks():
    p = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert validation_score(np.array([0, 0, 0]), p, "binary") == (pytest.approx(2 / 3), "accuracy")
    # a class absent from validation is skipped in the one-vs-rest mean
    p3 = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    assert validation_score(np.array([0, 1, 0, 1]), p3, "multiclass") == (1.0, "roc_auc")
    ml = np.array([[1, 1], [0, 1]])
    assert validation_score(ml, np.array([[0.9, 0.2], [0.1, 0.3]]), "multilabel") == (1.0, "roc_auc")


def test_predict_proba_alignment():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(30, 4))
    # class 1 missing from training: columns follow class indices, with n_classes
    rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(F, np.array([0, 2] * 15))
    P = predict_proba_classical(rf, F, "multiclass", n_classes=3)
    assert P.shape == (30, 3) and (P[:, 1] == 0).all()
    # native multi-label forest returns a list; a constant label becomes a constant column
    Y = np.column_stack([np.arange(30) % 2, np.ones(30, int)])
    rf_ml = RandomForestClassifier(n_estimators=5, random_state=0).fit(F, Y)
    P = predict_proba_classical(rf_ml, F, "multilabel")
    assert P.shape == (30, 2) and (P[:, 1] == 1).all()


def test_unsupported_task_is_a_user_error(splits):
    (Xt, yt), (Xv, yv) = splits
    with pytest.raises(MedlensError, match="segmentation"):
        fit_classical("svm", Xt, yt, Xv, yv, task="segmentation", seed=0)


def test_save_load_checks_sha256(tmp_path, lr_result, splits):
    (_, _), (Xv, _) = splits
    path = tmp_path / "model.joblib"
    digest = save_estimator(lr_result.estimator, path)
    loaded = load_estimator(path, digest)
    np.testing.assert_array_equal(loaded.predict_proba(Xv), lr_result.estimator.predict_proba(Xv))
    with pytest.raises(ChecksumError, match="sha256"):
        load_estimator(path, "0" * 64)
    with pytest.raises(ChecksumError):
        load_estimator(path, "")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # tamper with one byte
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="refusing"):
        load_estimator(path, digest)
    with pytest.raises(MedlensError, match="not found"):
        load_estimator(tmp_path / "absent.joblib", digest)


def test_svm_calibration_folds_shrink_for_small_classes_and_fail_clearly_below_two():
    """Probability calibration by 5-fold CV on a class with 3 samples uses 3 folds; with 1 it is a clear error."""
    from medlens.errors import MedlensError
    from medlens.training.classical import fit_classical

    rng = np.random.default_rng(0)

    def data(n_per_class):
        y = np.repeat([0, 1], n_per_class)
        X = rng.random((len(y), 1, 16, 16)).astype(np.float32)
        X[y == 1, :, 4:12, 4:12] += 1.0
        return X, y

    X, y = data(3)
    result = fit_classical("svm", X, y, X, y, task="binary", seed=0, grid={"C": [1.0]}, show_progress=False)
    assert result.estimator.steps[-1][1].cv == 3
    X1, y1 = data(1)
    with pytest.raises(MedlensError, match="at least 2"):
        fit_classical("svm", X1, y1, X1, y1, task="binary", seed=0, grid={"C": [1.0]}, show_progress=False)
