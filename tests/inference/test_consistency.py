"""One inference core: `medlens predict`, the REST API and the Python API give, for every test
image, the probability in predictions_test.csv and the decision comparison.json's metrics counted.

One test per family: classical and deep, 2D and 3D, binary, multi-class and multi-label. Each
trains a tiny model on files (so every test case can be given to the three front ends), runs
the evaluation stage (temperature, thresholds, decisions_test.csv, comparison.json), then asks
the three front ends about every test file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medlens.runs import RunDir, read_json

FAMILIES = [
    ("binary2d", "elm"),
    ("binary2d", "cnn-small"),
    ("multiclass2d", "svm"),
    ("multiclass2d", "cnn-small"),
    ("multilabel2d", "logistic-regression"),
    ("multilabel2d", "cnn-small"),
    ("binary3d", "elm"),
    ("binary3d", "cnn-2.5d"),
]


def _train_and_evaluate(manifest: Path, model: str, out: Path) -> RunDir:
    from medlens.study.evaluate import evaluate
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    config = TrainConfig(
        source=str(manifest), model=model, out=str(out), epochs=2, progress=False, accelerator="cpu", seed=0
    )
    train(config)
    evaluate(out, n_resamples=100, n_localization=0, report=False)
    return RunDir(out)


def _read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def _probs(row: dict[str, str], classes: list[str]) -> np.ndarray:
    return np.array([float(row[f"prob_{c}"]) for c in classes])


def _decision_text(finding: str, task: str, classes: list[str]) -> str:
    """A Prediction's finding as decisions_*.csv writes the decision (class index, or the 0/1 vector)."""
    if task == "multilabel":
        positive = set() if finding == "none" else set(finding.split("|"))
        return ";".join("1" if c in positive else "0" for c in classes)
    return str(classes.index(finding))


@pytest.mark.parametrize(("data", "model"), FAMILIES, ids=[f"{d}-{m}" for d, m in FAMILIES])
def test_predict_rest_and_python_api_agree_with_the_study(data, model, image_sets, tmp_path, cli):
    from fastapi.testclient import TestClient

    from medlens.api import load_model
    from medlens.serving.app import create_app
    from medlens.serving.settings import ServeSettings

    run = _train_and_evaluate(image_sets[data], model, tmp_path / "run")
    folder = image_sets[data].parent
    card = read_json(run.model(model).info)
    classes, task = card["class_names"], card["task"]
    raw_rows = _read_rows(run.model(model).predictions("test"))
    decided_rows = _read_rows(run.model(model).decisions("test"))
    assert card["temperature"] != 1.0 or task == "multilabel"  # calibration is really exercised
    files = [folder / sample_id for sample_id in raw_rows]

    api = load_model(run.root)
    cli_out = tmp_path / "cli"
    code, _, err = cli("predict", run.root, *files, "--out", cli_out)
    assert code == 0, err
    settings = ServeSettings(
        run_dir=run.root, audit_url=str(tmp_path / "audit.sqlite"), store_dir=tmp_path / "store", pseudonym_key="k"
    )
    with TestClient(create_app(settings)) as client:
        for path in files:
            sample_id = path.name
            answers = {
                "python": api.predict(path).prediction.to_json(),
                "cli": json.loads((cli_out / f"{path.name.split('.')[0]}.json").read_text()),
                "rest": client.post("/v1/predictions", files={"file": (path.name, path.read_bytes())}).json(),
            }
            expected_raw = _probs(raw_rows[sample_id], classes)
            expected_calibrated = _probs(decided_rows[sample_id], classes)
            for front, answer in answers.items():
                got_raw = np.array([answer["raw_probabilities"][c] for c in classes])
                got = np.array([answer["probabilities"][c] for c in classes])
                assert np.abs(got_raw - expected_raw).max() <= 1e-5, (front, sample_id, got_raw, expected_raw)
                assert np.abs(got - expected_calibrated).max() <= 1e-5, (front, sample_id, got, expected_calibrated)
                decision = _decision_text(answer["finding"], task, classes)
                assert decision == decided_rows[sample_id]["decision"], (front, sample_id)


def test_decisions_are_the_ones_comparison_counted(image_sets, tmp_path):
    """decisions_test.csv reproduces comparison.json's confusion matrix and sensitivity exactly."""
    run = _train_and_evaluate(image_sets["multiclass2d"], "elm", tmp_path / "run")
    comparison = read_json(run.comparison)
    entry = comparison["models"]["elm"]
    rows = list(_read_rows(run.model("elm").decisions("test")).values())
    k = len(entry["class_names"])
    matrix = np.zeros((k, k), dtype=int)
    for row in rows:
        matrix[int(row["label"]), int(row["decision"])] += 1
    assert matrix.tolist() == entry["confusion"]["matrix"]


def test_a_score_at_the_threshold_gets_the_same_decision_everywhere(image_sets, tmp_path):
    """The drift this core removes: serving called p >= t positive, the metrics p > t. A score
    exactly at the card's threshold gets the study's decision from the loaded model too."""
    from medlens.api import load_model
    from medlens.inference.card import read_card, write_card
    from medlens.manifest import record_files
    from medlens.study.comparison import decisions

    run = _train_and_evaluate(image_sets["binary2d"], "elm", tmp_path / "run")
    model_dir = run.model("elm")
    card = read_card(model_dir.info)
    t = 0.37
    write_card(model_dir.info, card.with_update("test", thresholds={"decision": t}))
    record_files(run.root, [model_dir.info], "test")
    bundle = load_model(run.root).bundle
    at, above = np.array([1 - t, t]), np.array([1 - t - 1e-9, t + 1e-9])
    assert bundle.finding(at)[0] == card.class_names[int(decisions(at[None], "binary", t)[0])] == card.class_names[0]
    assert bundle.finding(above)[0] == card.class_names[int(decisions(above[None], "binary", t)[0])]
    assert bundle.finding(above)[0] == card.class_names[1]
