"""The evaluation's ensembles: comparison entries with CIs and tests against their members, never
served, and stacking that never sees the evaluated split's labels."""

from __future__ import annotations

import csv

import numpy as np

from medlens.manifest import artifact_files, record_files, verify_manifest
from medlens.runs import RunDir
from medlens.study.evaluate import evaluate
from tests.study.test_evaluate import write_model


def _member(rng, y: np.ndarray, strength: float) -> np.ndarray:
    """p(pos) of a member that separates y with ``strength`` under independent noise."""
    return 1 / (1 + np.exp(-(strength * (y - 0.5) * 2 + rng.normal(0, 1, len(y)))))


def _run(tmp_path, val_labels=None, test_labels=None):
    """Two deep members and a classical one on the same 200 val and 300 test cases."""
    rng = np.random.default_rng(0)
    y_val, y_test = rng.integers(0, 2, 200), rng.integers(0, 2, 300)
    run = RunDir(tmp_path).create()
    for name, kind, strength in (("cnn", "deep", 1.0), ("resnet", "deep", 0.8), ("svm", "classical", 0.9)):
        p_val, p_test = _member(rng, y_val, strength), _member(rng, y_test, strength)
        val = ([f"v{i}" for i in range(200)], y_val if val_labels is None else val_labels, p_val)
        test = ([f"t{i}" for i in range(300)], y_test if test_labels is None else test_labels, p_test)
        write_model(run, name, val, test, kind=kind)
    record_files(run.root, artifact_files(run.root), "test")
    return run, y_val, y_test


def _probabilities(path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["id"]: row["prob_pos"] for row in csv.DictReader(f)}


def test_ensembles_are_compared_with_their_members_and_never_served(tmp_path):
    run, _, _ = _run(tmp_path / "run")
    c = evaluate(run.root, n_resamples=200, seed=0, report=False)
    ens = c["ensembles"]
    assert ens["order"] == ["mean-deep", "mean-all", "stack-all"]
    assert ens["models"]["mean-deep"]["members"] == ["cnn", "resnet"]
    assert sorted(ens["models"]["stack-all"]["members"]) == ["cnn", "resnet", "svm"]
    for entry in ens["models"].values():
        auc = entry["metrics"]["test"]["auc"]
        assert auc["low"] < auc["value"] < auc["high"] and entry["thresholds"]["chosen_on"] == "val"
    pairs = {(t["a"], t["b"]) for t in ens["pairwise"]["tests"]}
    assert pairs == {(e, m) for e, x in ens["models"].items() for m in x["members"]}  # against members only
    assert {t["method"] for t in ens["pairwise"]["tests"]} == {"delong", "mcnemar"}
    assert all(0 <= t["p_holm"] <= 1 for t in ens["pairwise"]["tests"])
    # averaging independent errors helps here: the mean of all beats its members on test AUC
    members = max(c["models"][m]["metrics"]["test"]["auc"]["value"] for m in ("cnn", "resnet", "svm"))
    assert ens["models"]["mean-all"]["metrics"]["test"]["auc"]["value"] > members
    # never the model to serve, nor among the models, cards or localization
    assert c["best"]["model"] in {"cnn", "resnet", "svm"} and set(c["models"]) == {"cnn", "resnet", "svm"}
    assert not any(run.root.joinpath("ensembles", n, "model.json").exists() for n in ens["order"])
    assert set(_probabilities(run.ensemble("stack-all").decisions("test"))) == {f"t{i}" for i in range(300)}
    assert verify_manifest(run.root) == []
    manifest_files = set(artifact_files(run.root))
    assert run.ensemble("mean-all").decisions("val") in manifest_files or any(
        str(p).endswith("ensembles/mean-all/decisions_val.csv") for p in manifest_files
    )


def test_stacking_never_sees_the_test_labels(tmp_path):
    """The same models with the test labels shuffled: every ensemble's test probabilities stay the
    same to the digit (only the metrics move); with other validation labels the stacker changes."""
    run, y_val, y_test = _run(tmp_path / "a")
    first = evaluate(run.root, n_resamples=200, seed=0, report=False)
    shuffled = np.random.default_rng(5).permutation(y_test)
    other, _, _ = _run(tmp_path / "b", test_labels=shuffled)
    second = evaluate(other.root, n_resamples=200, seed=0, report=False)
    for name in first["ensembles"]["order"]:
        assert _probabilities(run.ensemble(name).decisions("test")) == _probabilities(
            other.ensemble(name).decisions("test")
        )
    auc = lambda c: c["ensembles"]["models"]["stack-all"]["metrics"]["test"]["auc"]["value"]  # noqa: E731
    assert abs(auc(second) - 0.5) < abs(auc(first) - 0.5)  # the labels did reach the metrics

    relabelled, _, _ = _run(tmp_path / "c", val_labels=np.random.default_rng(6).permutation(y_val))
    evaluate(relabelled.root, n_resamples=200, seed=0, report=False)
    assert _probabilities(run.ensemble("stack-all").decisions("test")) != _probabilities(
        relabelled.ensemble("stack-all").decisions("test")
    )


def test_the_report_shows_each_ensemble_against_its_members(tmp_path):
    import re

    from medlens.reporting import build_report

    run, _, _ = _run(tmp_path / "run")
    evaluate(run.root, n_resamples=200, seed=0, report=False)
    page = build_report(run.root).read_text()
    section = re.search(r'<section id="ensembles">(.*?)</section>', page, re.S)
    assert section, "no ensembles section"
    rows = re.findall(r"<tr><td>(mean-deep|mean-all|stack-all)</td>", section.group(1))
    assert rows == ["mean-deep", "mean-all", "stack-all"]
    assert "logistic regression fitted on validation" in section.group(1)
    assert section.group(1).count("(p ") == 2 + 3 + 3  # one AUC test per member of each ensemble
