"""ELMClassifier: scikit-learn's estimator checks, learning, multi-label, determinism, ridge solver."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_moons
from sklearn.utils.estimator_checks import parametrize_with_checks

from medlens.models.classical.elm import ELMClassifier, ridge_solve


@parametrize_with_checks([ELMClassifier(n_hidden=200), ELMClassifier(n_hidden=50, activation="tanh")])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_learns_separable_nonlinear_problem():
    X, y = make_moons(300, noise=0.05, random_state=0)
    clf = ELMClassifier(n_hidden=300, alpha=1e-3, random_state=0).fit(X[:200], y[:200])
    assert (clf.predict(X[200:]) == y[200:]).mean() >= 0.97
    proba = clf.predict_proba(X[200:])
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(X[200:]))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_multiclass_string_labels(activation):
    X, y = make_blobs(200, centers=4, random_state=1)
    names = np.array(["a", "b", "c", "d"])[y]
    clf = ELMClassifier(n_hidden=100, activation=activation, alpha=1e-2, random_state=0).fit(X, names)
    assert list(clf.classes_) == ["a", "b", "c", "d"]
    assert (clf.predict(X) == names).mean() > 0.95


def test_multilabel():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, X[:, 3] > 0.5]).astype(int)
    clf = ELMClassifier(n_hidden=100, alpha=1.0, random_state=0).fit(X[:200], Y[:200])
    P = clf.predict_proba(X[200:])
    assert P.shape == (100, 3) and ((P > 0) & (P < 1)).all()
    np.testing.assert_array_equal(clf.predict(X[200:]), (P > 0.5).astype(int))
    assert (clf.predict(X[200:]) == Y[200:]).mean() > 0.9


def test_random_state_fixes_the_hidden_layer():
    X, y = make_blobs(100, centers=3, random_state=2)
    a = ELMClassifier(n_hidden=64, random_state=3).fit(X, y).predict_proba(X)
    b = ELMClassifier(n_hidden=64, random_state=3).fit(X, y).predict_proba(X)
    c = ELMClassifier(n_hidden=64, random_state=4).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_primal_and_dual_ridge_agree():
    rng = np.random.default_rng(0)
    H, T = rng.normal(size=(40, 30)), rng.normal(size=(40, 3))
    primal = ridge_solve(H, T, 0.5)  # 30 hidden <= 40 samples: primal
    expected = np.linalg.solve(H.T @ H + 0.5 * np.eye(30), H.T @ T)
    np.testing.assert_allclose(primal, expected, atol=1e-10)
    wide = rng.normal(size=(20, 60))  # 60 hidden > 20 samples: dual
    dual = ridge_solve(wide, T[:20], 0.5)
    np.testing.assert_allclose(dual, np.linalg.solve(wide.T @ wide + 0.5 * np.eye(60), wide.T @ T[:20]), atol=1e-8)


def test_bad_parameters():
    with pytest.raises(ValueError, match="activation"):
        ELMClassifier(activation="gelu").fit([[0.0], [1.0]], [0, 1])
    with pytest.raises(ValueError, match="Unknown label type"):
        ELMClassifier().fit([[0.0], [1.0]], [0.5, 1.5])
