"""The model card: validated reading, one writer, declared updates, older cards."""

from __future__ import annotations

import json
import shutil

import pytest

from medlens.errors import MedlensError
from medlens.inference.card import SCHEMA_VERSION, card_from_dict, read_card, write_card
from medlens.runs import RunDir, read_json, write_json

CARD = {
    "name": "elm",
    "model": "elm",
    "kind": "classical",
    "dims": 2,
    "task": "binary",
    "class_names": ["normal", "pneumonia"],
    "num_outputs": 2,
    "in_channels": 1,
    "img_size": 28,
    "modality": "DX",
    "weights_file": "model.joblib",
    "preprocessing": {"steps": [{"name": "minmax"}]},
}


def test_round_trip_and_schema_version(tmp_path):
    path = tmp_path / "model.json"
    write_card(path, card_from_dict(CARD))
    card = read_card(path)
    assert card.schema_version == SCHEMA_VERSION and card.decision_threshold is None and card.n_classes == 2
    assert read_json(path)["class_names"] == ["normal", "pneumonia"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"task": "detection"}, "task"),
        ({"class_names": "normal"}, "class_names"),
        ({"temperature": -1.0}, "temperature"),
        ({"surprise": 1}, "surprise"),
        ({"schema_version": SCHEMA_VERSION + 1}, "schema_version"),
    ],
)
def test_a_foreign_card_is_one_line_naming_the_field(tmp_path, change, field):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**CARD, **change}))
    with pytest.raises(MedlensError) as e:
        read_card(path)
    message = str(e.value)
    assert "\n" not in message and f"'{field}'" in message and str(path) in message


def test_a_missing_field_says_how_to_re_export(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({k: v for k, v in CARD.items() if k != "in_channels"}))
    with pytest.raises(MedlensError, match=r"'in_channels': Field required.*re-export") as e:
        read_card(path)
    assert "KeyError" not in str(e.value)
    path.write_text("{not json")
    with pytest.raises(MedlensError, match="not readable JSON"):
        read_card(path)


def test_updates_are_declared_and_limited(tmp_path):
    card = card_from_dict(CARD)
    updated = card.with_update("evaluate", temperature=1.7, thresholds={"decision": 0.31})
    assert updated.temperature == 1.7 and updated.decision_threshold == 0.31
    assert updated.updates[-1]["stage"] == "evaluate"
    assert updated.updates[-1]["fields"] == ["temperature", "thresholds"]
    with pytest.raises(ValueError, match="may not change class_names"):
        card.with_update("evaluate", class_names=["a", "b"])
    with pytest.raises(MedlensError, match="temperature"):
        card.with_update("evaluate", temperature=0.0)


def test_a_run_from_before_the_card_schema_still_loads_and_predicts(tmp_path, image_sets):
    """Runs written before schema 1: model.json without schema_version/updates (thresholds with a
    "chosen_on" note inside) and a manifest without stages load and give the same answer."""
    from medlens.api import load_model
    from medlens.manifest import artifact_files, record_files
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    out = tmp_path / "run"
    train(TrainConfig(source=str(image_sets["binary2d"]), model="elm", out=str(out), progress=False, seed=0))
    image = image_sets["binary2d"].parent / "test_000.png"
    now = load_model(out).predict(image).prediction

    old = tmp_path / "old"
    shutil.copytree(out, old)
    run = RunDir(old)
    info = read_json(run.model("elm").info)
    for key in ("schema_version", "updates", "thresholds_chosen_on"):
        info.pop(key, None)
    info["thresholds"] = {**info.get("thresholds", {}), "chosen_on": "val"}
    write_json(run.model("elm").info, info)
    record_files(old, artifact_files(old), "test")
    manifest = read_json(run.manifest)
    manifest.pop("stages")
    for entry in manifest["files"].values():
        entry.pop("stage")
    write_json(run.manifest, manifest)

    then = load_model(old).predict(image).prediction
    assert then.probabilities == now.probabilities and then.finding == now.finding
