"""The evaluation stage on hand-built segmentation runs (npz predictions in the contract's format)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medlens.data.sample import Record, Task
from medlens.errors import MedlensError
from medlens.evaluation import segmentation as S
from medlens.manifest import artifact_files, record_files
from medlens.runs import RunDir, read_json, write_json
from tests.data._fakes import FakeDataset

HIPPO = ["background", "anterior", "posterior"]
VESSEL = ["background", "vessel"]
SPACING = (2.0, 1.0, 1.0)


def _dataset(ids, masks, images, class_names, dims, spacing=None, meta=None) -> FakeDataset:
    records = [Record(id=i, label=None, patient_id=i, origin=f"{i}.nii.gz") for i in ids]
    return FakeDataset(
        images,
        records,
        task=Task.SEGMENTATION,
        class_names=class_names,
        dims=dims,
        spacing=spacing,
        masks=masks,
        meta=meta,
        name="seg",
    )


def _hippo_case(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((6, 16, 16), np.uint8)
    y, x = rng.integers(3, 7, size=2)
    mask[1:5, y : y + 5, x : x + 4] = 1
    mask[1:5, y : y + 5, x + 4 : x + 8] = 2
    return mask


def _worse(mask: np.ndarray, k: int) -> np.ndarray:
    """The mask moved ``k`` voxels along the last axis (a worse prediction)."""
    return np.roll(mask, k, axis=-1)


def _model(run: RunDir, name: str, kind: str, class_names, preds: dict[str, dict[str, np.ndarray]]) -> None:
    md = run.model(name).create()
    write_json(
        md.info,
        {
            "name": name,
            "model": name,
            "kind": kind,
            "task": "segmentation",
            "dims": 3,
            "class_names": class_names,
            "source": "fake:seg",
            "seed": 0,
        },
    )
    for split, per_case in preds.items():
        md.segmentations(split).mkdir(parents=True, exist_ok=True)
        for case_id, arrays in per_case.items():
            np.savez_compressed(md.segmentations(split) / f"{case_id}.npz", **arrays)


def _record_training(run: RunDir) -> None:
    record_files(run.root, artifact_files(run.root), "train")


@pytest.fixture
def hippo_run(tmp_path) -> tuple[RunDir, FakeDataset, dict]:
    rng = np.random.default_rng(0)
    test_ids, val_ids = [f"t{i}" for i in range(8)], [f"v{i}" for i in range(4)]
    masks = {i: _hippo_case(rng) for i in test_ids + val_ids}
    images = {i: (m[None] * 50 + rng.normal(0, 5, (1, *m.shape))).astype(np.float32) for i, m in masks.items()}
    dataset = _dataset(
        test_ids + val_ids + ["t-missing"],
        {**masks, "t-missing": masks["t0"]},
        {**images, "t-missing": images["t0"]},
        HIPPO,
        3,
        spacing=SPACING,
    )
    run = RunDir(tmp_path / "run").create()
    write_json(run.splits, {"splits": {"train": [], "val": val_ids, "test": [*test_ids, "t-missing"]}})
    unet = {s: {i: {"labels": masks[i]} for i in ids} for s, ids in (("test", test_ids), ("val", val_ids))}
    rf = {s: {i: {"labels": _worse(masks[i], 2)} for i in ids} for s, ids in (("test", test_ids), ("val", val_ids))}
    unet["test"]["t7"] = {"labels": _worse(masks["t7"], 1)}  # one imperfect case: best != worst
    _model(run, "unet", "deep", HIPPO, unet)
    _model(run, "rf", "classical", HIPPO, rf)
    _record_training(run)
    return run, dataset, masks


def test_evaluate_writes_per_case_tables_statistics_overlays_and_report(hippo_run):
    from medlens.study.evaluate import evaluate

    run, dataset, masks = hippo_run
    out = evaluate(run.root, split="test", n_resamples=100, seed=0, dataset=dataset)
    seg = out["segmentation"]
    assert out["task"] == "segmentation" and out["order"] == ["rf", "unet"]
    assert seg["distance_unit"] == "mm" and seg["metrics"] == ["dice", "hd95", "nsd"]

    # the per-case table: one row per case and foreground class, values as the metric functions give
    with open(run.model("rf").segmentation_cases("test"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 * 2 and set(rows[0]) == set(S.CASE_COLUMNS)
    expected = S.case_rows("t3", masks["t3"], _worse(masks["t3"], 2), HIPPO, spacing=SPACING)
    got = [r for r in rows if r["id"] == "t3"]
    assert float(got[0]["dice"]) == pytest.approx(expected[0]["dice"], rel=1e-5)
    assert float(got[1]["hd95"]) == pytest.approx(expected[1]["hd95"], rel=1e-5)

    rf = seg["models"]["rf"]["by_class"]["anterior"]["dice"]
    rf_dice = np.mean([float(r["dice"]) for r in rows if r["class"] == "anterior"])
    assert rf["value"] == pytest.approx(rf_dice, rel=1e-5) and rf["low"] <= rf["value"] <= rf["high"]
    assert seg["models"]["unet"]["mean_over_classes"]["dice"]["value"] > 0.9

    tests = seg["pairwise"]["tests"]
    assert len(tests) == 3 * 2  # one pair x (dice, hd95, nsd) x two classes
    dice_tests = [t for t in tests if t["metric"] == "dice"]
    assert all(t["n"] == 8 and t["better"] == "unet" and t["p_holm"] >= t["p_value"] for t in dice_tests)

    assert out["best"]["model"] == "unet"  # chosen on validation
    assert any("t-missing" in w for w in out["models"]["unet"]["warnings"])  # listed, not dropped silently
    overlays = {(o["model"], o["rank"]): o for o in seg["overlays"]}
    assert len(overlays) == 6 and overlays[("unet", "worst")]["id"] == "t7"
    assert all((run.root / o["file"]).read_bytes()[:4] == b"\x89PNG" for o in overlays.values())

    manifest = read_json(run.manifest)["files"]
    assert manifest["models/rf/segmentation_cases_test.csv"]["stage"] == "evaluate"
    assert manifest["figures/segmentation_unet_best.png"]["stage"] == "evaluate"

    html = run.report.read_text()
    assert "Segmentation results" in html and 'class="summary segmentation-summary"' in html
    assert html.count('class="segmentation-overlay"') == 6
    assert "data:image/png;base64" in html and 'alt="segmentation box plots"' in html
    assert "Per-case results of unet" in html and "<code>t7</code>" in html
    assert "ROC and precision" not in html  # classification-only sections are left out


def test_vessel_metrics_inside_the_field_of_view(tmp_path):
    from medlens.study.evaluate_segmentation import evaluate_segmentation

    rng = np.random.default_rng(1)
    ids = [f"r{i}" for i in range(4)]
    masks = {i: (rng.random((24, 24)) < 0.2).astype(np.uint8) for i in ids}
    fov = np.zeros((24, 24), bool)
    fov[2:22, 2:22] = True
    images = {i: np.repeat(m[None].astype(np.float32), 3, axis=0) for i, m in masks.items()}
    dataset = _dataset(ids, masks, images, VESSEL, 2, meta={i: {"fov": fov} for i in ids})
    run = RunDir(tmp_path / "run").create()
    preds = {}
    for i, m in masks.items():
        noisy = np.clip(m + rng.normal(0, 0.3, m.shape), 0, 1)
        preds[i] = {"labels": (noisy > 0.5).astype(np.uint8), "foreground": noisy.astype(np.float16)}
    _model(run, "unet", "deep", VESSEL, {"test": preds})
    out = evaluate_segmentation(run, ["unet"], split="test", n_resamples=100, report=False, dataset=dataset)
    seg = out["segmentation"]
    assert seg["field_of_view"] and seg["distance_unit"] == "px"
    assert seg["metrics"] == ["dice", "hd95", "nsd", *S.FOV_METRICS]
    direct = S.fov_metrics(masks["r0"], preds["r0"]["labels"], fov, preds["r0"]["foreground"].astype(np.float32))
    with open(run.model("unet").segmentation_cases("test"), newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["id"] == "r0")
    assert float(row["auc"]) == pytest.approx(direct["auc"], rel=1e-5)
    assert float(row["f1"]) == pytest.approx(direct["f1"], rel=1e-5)
    assert seg["pairwise"] is None and out["best"]["model"] is None  # one model, no validation predictions


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"labels": np.zeros((6, 16, 15), np.uint8)}, "shape"),
        ({"labels": np.full((6, 16, 16), 3, np.uint8)}, "outside 0..2"),
        ({"foreground": np.zeros((6, 16, 16), np.float16)}, "no 'labels'"),
    ],
)
def test_bad_predictions_are_one_line_errors_naming_the_file(hippo_run, arrays, message):
    from medlens.study.evaluate_segmentation import evaluate_segmentation

    run, dataset, _ = hippo_run
    np.savez(run.model("unet").segmentations("test") / "t2.npz", **arrays)
    with pytest.raises(MedlensError, match=message) as e:
        evaluate_segmentation(run, ["unet"], split="test", n_resamples=100, report=False, dataset=dataset)
    assert "t2.npz" in str(e.value) and "\n" not in str(e.value)


def test_unknown_case_and_unreadable_file_are_refused(hippo_run):
    from medlens.study.evaluate_segmentation import evaluate_segmentation

    run, dataset, masks = hippo_run
    folder: Path = run.model("unet").segmentations("test")
    np.savez(folder / "stranger.npz", labels=masks["t0"])
    with pytest.raises(MedlensError, match="'stranger' is not in the source"):
        evaluate_segmentation(run, ["unet"], split="test", n_resamples=100, report=False, dataset=dataset)
    (folder / "stranger.npz").write_bytes(b"not a zip")
    with pytest.raises(MedlensError, match="not a readable npz"):
        evaluate_segmentation(run, ["unet"], split="test", n_resamples=100, report=False, dataset=dataset)
