"""`evaluate`: rebuilt from artifacts only, reproducible, and tuned on validation only."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from medlens.errors import MedlensError
from medlens.manifest import artifact_files, record_files, verify_manifest
from medlens.runs import RunDir, read_json, write_json
from medlens.study.evaluate import evaluate


def _without_time(c: dict) -> dict:
    c = dict(c)
    c.pop("created")
    c["suite"] = None  # study.json gains timings written after the first evaluation
    return c


def test_evaluate_reruns_from_artifacts_identically(tiny_run):
    run = RunDir(tiny_run)
    weights = [
        run.model("cnn-small").weights,
        run.model("elm").estimator,
        run.model("cnn-small").predictions("test"),
        run.model("elm").predictions("val"),
    ]
    before = {p: p.stat().st_mtime_ns for p in weights}
    first = evaluate(run.root, n_resamples=1000, seed=0, report=False)
    second = evaluate(run.root, n_resamples=1000, seed=0, report=False)
    assert {p: p.stat().st_mtime_ns for p in weights} == before  # nothing retrained or rewritten
    assert _without_time(first) == _without_time(second)
    other = evaluate(run.root, n_resamples=1000, seed=1, report=False)
    cis = lambda c: [
        (m["value"], m["low"], m["high"])
        for e in c["models"].values()  # noqa: E731
        for m in e["metrics"]["test"].values()
        if isinstance(m, dict)
    ]
    assert [v for v, _, _ in cis(other)] == [v for v, _, _ in cis(first)]  # same points,
    assert cis(other) != cis(first)  # another bootstrap seed moves the intervals
    assert verify_manifest(run.root) == []  # model.json changed, the manifest followed


def write_model(run: RunDir, name: str, val: tuple, test: tuple, kind: str = "classical") -> None:
    """A binary model's card and predictions_{val,test}.csv, without training (ids, labels, p(pos))."""
    d = run.model(name).create()
    write_json(
        d.info,
        {
            "name": name,
            "model": name,
            "kind": kind,
            "task": "binary",
            "dims": 2,
            "class_names": ["neg", "pos"],
            "num_outputs": 2,
            "in_channels": 1,
            "weights_file": "model.joblib",
            "source": str(run.root / "absent.npz"),
            "seed": 0,
            "temperature": 1.0,
            "thresholds": {"decision": 0.5},
        },
    )
    for split, (ids, y, p) in (("val", val), ("test", test)):
        with open(d.predictions(split), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "label", "prob_neg", "prob_pos"])
            for i, yy, pp in zip(ids, y, p):
                w.writerow([i, int(yy), f"{1 - pp:.6g}", f"{pp:.6g}"])


def _cases(rng, n: int, confidence: float, accuracy: float, prefix: str):
    """n binary cases predicted with probability ``confidence`` for a class that is right with ``accuracy``."""
    y = rng.integers(0, 2, n)
    right = rng.random(n) < accuracy
    predicted = np.where(right, y, 1 - y)
    conf = np.clip(confidence + rng.normal(0, 0.02, n), 0.51, 0.999)
    p_pos = np.where(predicted == 1, conf, 1 - conf)
    return [f"{prefix}{i}" for i in range(n)], y, p_pos


def test_temperature_and_thresholds_come_from_validation(tmp_path):
    """Validation is over-confident (T > 1), test under-confident (T < 1): the written T is val's."""
    from medlens.evaluation.calibration import fit_temperature
    from medlens.evaluation.calibration import probs_to_logits as as_logits
    from medlens.evaluation.thresholds import choose_threshold

    rng = np.random.default_rng(0)
    run = RunDir(tmp_path / "run").create()
    val = _cases(rng, 300, confidence=0.97, accuracy=0.75, prefix="v")
    test = _cases(rng, 300, confidence=0.6, accuracy=0.9, prefix="t")
    write_model(run, "a", val, test)
    write_model(run, "b", val, _cases(rng, 300, confidence=0.7, accuracy=0.8, prefix="t"))
    record_files(run.root, artifact_files(run.root), "test")

    c = evaluate(run.root, n_resamples=200, seed=0, report=False)
    probs = lambda p: np.column_stack([1 - p, p])  # noqa: E731
    t_val = fit_temperature(as_logits(probs(val[2]), "binary"), val[1], "binary")
    t_test = fit_temperature(as_logits(probs(test[2]), "binary"), test[1], "binary")
    assert t_val > 1.5 and t_test < 1.0
    t = c["models"]["a"]["temperature"]
    assert math.isclose(t, t_val, rel_tol=1e-4) and not math.isclose(t, t_test, rel_tol=0.2)
    info = read_json(run.model("a").info)
    assert math.isclose(info["temperature"], t_val, rel_tol=1e-4)
    # the decision threshold is Youden's on the temperature-scaled VALIDATION scores
    from medlens.evaluation.calibration import apply_temperature

    scaled_val = apply_temperature(as_logits(probs(val[2]), "binary"), t, "binary")
    assert math.isclose(info["thresholds"]["decision"], choose_threshold(val[1], scaled_val), rel_tol=1e-6)
    assert info["abstention"]["target_risk"] == 0.05
    assert c["models"]["a"]["abstention"]["val_coverage"] == info["abstention"]["val_coverage"]
    assert c["localization"]["available"] is False and "cannot be opened" in c["localization"]["reason"]


def test_evaluate_refuses_an_empty_run(tmp_path):
    with pytest.raises(MedlensError, match="no trained model"):
        evaluate(tmp_path, report=False)


def test_a_model_that_calls_every_case_one_class_is_warned(tmp_path):
    rng = np.random.default_rng(1)
    run = RunDir(tmp_path / "run").create()
    val = _cases(rng, 200, confidence=0.9, accuracy=0.85, prefix="v")
    n = 120
    test = ([f"t{i}" for i in range(n)], rng.integers(0, 2, n), 0.95 + rng.uniform(0, 0.04, n))  # all "pos"
    write_model(run, "a", val, test)
    record_files(run.root, artifact_files(run.root), "test")
    c = evaluate(run.root, n_resamples=200, seed=0, report=False)
    warnings = c["models"]["a"]["warnings"]
    assert any("calls every test case 'pos'" in w for w in warnings), warnings
