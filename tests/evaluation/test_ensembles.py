"""Averaging and stacking: shapes, what stacking learns, and when it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medlens.errors import MedlensError
from medlens.evaluation.ensembles import average, stack


def _binary_members(rng, n: int):
    """Labels and two members with independent noise: together they know more than either."""
    y = rng.integers(0, 2, n)
    score, other = 1.2 * y + rng.normal(0, 1, n), 1.2 * y + rng.normal(0, 1, n)
    p = lambda s: np.column_stack([1 / (1 + np.exp(s)), 1 / (1 + np.exp(-s))])  # noqa: E731
    return y, p(score - 0.6), p(other - 0.6)


def test_average_is_the_mean_probability_and_refuses_mismatched_members():
    a, b = np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([[0.4, 0.6], [0.8, 0.2]])
    assert np.allclose(average([a, b]), [[0.3, 0.7], [0.7, 0.3]])
    with pytest.raises(MedlensError, match="same shape"):
        average([a, b[:1]])


def test_stacking_two_complementary_members_beats_each_on_new_cases():
    rng = np.random.default_rng(0)
    y_val, a_val, b_val = _binary_members(rng, 400)
    y_test, a_test, b_test = _binary_members(rng, 2000)
    oof, out = stack([a_val, b_val], y_val, [a_test, b_test], "binary")
    assert oof.shape == (400, 2) and out.shape == (2000, 2) and np.allclose(out.sum(axis=1), 1)
    best_member = max(roc_auc_score(y_test, a_test[:, 1]), roc_auc_score(y_test, b_test[:, 1]))
    assert roc_auc_score(y_test, out[:, 1]) > best_member + 0.03
    # the validation probabilities are out-of-fold: not those of the model fitted on all of validation
    _, in_sample = stack([a_val, b_val], y_val, [a_val, b_val], "binary")
    assert not np.allclose(oof, in_sample)


def test_stacking_multiclass_and_multilabel_shapes():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    members = [rng.dirichlet(np.ones(3), 150) for _ in range(2)]
    oof, out = stack(members, y, [m[:40] for m in members], "multiclass")
    assert oof.shape == (150, 3) and out.shape == (40, 3) and np.allclose(out.sum(axis=1), 1)
    labels = rng.integers(0, 2, (150, 2))
    labels[:, 1] = 0
    labels[0, 1] = 1  # one positive: that label falls back to the members' mean
    probs = [rng.uniform(0.01, 0.99, (150, 2)) for _ in range(2)]
    oof, out = stack(probs, labels, probs, "multilabel")
    assert oof.shape == (150, 2) and np.allclose(out[:, 1], average(probs)[:, 1])


def test_stacking_refuses_a_validation_split_without_two_cases_of_each_class():
    y = np.array([0, 0, 0, 1])
    p = np.array([[0.7, 0.3]] * 4)
    with pytest.raises(MedlensError, match="two validation cases of each"):
        stack([p, p], y, [p, p], "binary")


def test_the_stacker_chooses_a_strong_penalty_for_members_that_know_nothing():
    """Twenty members of pure noise on sixty validation cases: scikit-learn's default strength
    fits the noise (its test probabilities spread widely); the cross-validated one stays near the
    prevalence."""
    from sklearn.linear_model import LogisticRegression

    from medlens.evaluation.ensembles import _features

    rng = np.random.default_rng(0)

    def members(n: int) -> list[np.ndarray]:
        scores = [rng.uniform(0.05, 0.95, n) for _ in range(20)]
        return [np.stack([1 - p, p], axis=1) for p in scores]

    p_val, p_test, y_val = members(60), members(200), rng.integers(0, 2, 60)
    _, stacked = stack(p_val, y_val, p_test, "binary")
    default = LogisticRegression(max_iter=2000).fit(_features(p_val, "binary")[0], y_val)
    spread_default = default.predict_proba(_features(p_test, "binary")[0])[:, 1].std()
    assert stacked[:, 1].std() < 0.05 < 0.15 < spread_default
