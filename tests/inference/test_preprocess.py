"""Preprocessing never silently destroys the signal: binary 0/255 volumes labelled MR.

Before the inference core, such volumes were z-scored over their nonzero voxels (all 255, so
the standard deviation is 0): every volume became the same constant and every model scored
AUC 0.500 without a word.
"""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data.sample import Dataset, Record, Sample, Task
from medlens.data.transforms import LABEL_LIKE_RULE, default_preprocessing, looks_label_like
from medlens.errors import BadInputError
from medlens.inference.preprocess import CollapsedInputError, check_image, load_inputs

SIDE = 16


class BinaryShapes(Dataset):
    """Volumes of 0 and 255 labelled MR: a large cube (positive) or a small one, anywhere."""

    def __init__(self, n_per_split: dict[str, int], seed: int = 0):
        rng = np.random.default_rng(seed)
        records, self._images = [], {}
        for split, n in n_per_split.items():
            for i in range(n):
                label = i % 2
                side = 7 if label else 4
                vol = np.zeros((1, SIDE, SIDE, SIDE), np.float32)
                z, y, x = rng.integers(0, SIDE - side, 3)
                vol[0, z : z + side, y : y + side, x : x + side] = 255
                rid = f"{split}/{i:03d}"
                self._images[rid] = vol
                records.append(Record(id=rid, label=label, patient_id=rid, origin=rid, split=split))
        super().__init__(
            "binary-shapes", records, task=Task.BINARY, class_names=["small", "large"], dims=3, modality="MR"
        )

    def _load(self, record: Record) -> Sample:
        return Sample(
            id=record.id,
            image=self._images[record.id],
            label=record.label,
            patient_id=record.patient_id,
            origin=record.origin,
        )


def test_z_score_of_binary_volumes_is_refused_naming_the_step():
    data = BinaryShapes({"train": 6})
    zscore = default_preprocessing("MR", 3, None)
    assert [s["name"] for s in zscore["steps"]] == ["zscore"]
    with pytest.raises(CollapsedInputError, match="every image is constant after preprocessing step 'zscore'"):
        load_inputs(data, [r.id for r in data.records], size=None, channels=1, preprocessing=zscore)


def test_label_like_images_get_min_max_and_the_card_says_why():
    data = BinaryShapes({"train": 4})
    assert looks_label_like(data.load(data.records[0].id).image)
    config = default_preprocessing("MR", 3, None, label_like=True)
    assert [s["name"] for s in config["steps"]] == ["minmax"] and config["rule"] == LABEL_LIKE_RULE
    x, _ = load_inputs(data, [r.id for r in data.records], size=None, channels=1, preprocessing=config)
    assert set(np.unique(x)) == {0.0, 1.0}


def test_one_blank_or_collapsed_input_is_a_clear_error():
    blank = np.full((1, 8, 8), 7.0, np.float32)
    with pytest.raises(BadInputError, match="blank"):
        check_image(blank, blank, None, 2, "blank.png")
    raw = np.zeros((1, 8, 8), np.float32)
    raw[0, :4] = 255
    collapsed = np.zeros_like(raw)
    with pytest.raises(CollapsedInputError, match="step 'zscore'"):
        check_image(collapsed, raw, {"steps": [{"name": "zscore", "nonzero": True}]}, 2, "mask.png")


@pytest.mark.parametrize("model", ["svm", "cnn-2.5d"])
def test_binary_mr_volumes_are_learnable(model, tmp_path):
    """svm and a deep 3D model reach an AUC well above 0.5 (both scored 0.500 before the fix)."""
    from medlens.inference.card import read_card
    from medlens.runs import read_json
    from medlens.study.evaluate import evaluate
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    data = BinaryShapes({"train": 48, "val": 24, "test": 24})
    out = tmp_path / "run"
    config = TrainConfig(source="binary-shapes", model=model, out=str(out), epochs=8, progress=False, seed=0)
    train(config, dataset=data)
    card = read_card(out / "models" / model / "model.json")
    assert card.modality == "MR" and card.preprocessing["rule"] == LABEL_LIKE_RULE
    comparison = evaluate(out, n_resamples=200, n_localization=0, report=False, dataset=data)
    auc = comparison["models"][model]["metrics"]["test"]["auc"]
    assert auc["low"] > 0.5 and auc["value"] >= 0.8, auc
    learned_nothing = ("chance", "same for every", "calls every")
    assert not [w for w in comparison["models"][model]["warnings"] if any(k in w for k in learned_nothing)]
    assert read_json(out / "models" / model / "metrics.json")["test"]["auc"] >= 0.8
