"""`medlens train`: complete run directories for a deep and a classical model, sharing splits.

One deep (cnn-small, 2 epochs) and one classical (elm) training on the synthetic chest phantoms
are made once per module and inspected by several tests; a real-data test trains cnn-lstm on
AdrenalMNIST3D for one epoch on a subset (skipped when the data is absent).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medlens.manifest import verify_manifest
from medlens.runs import RunDir, read_json, read_yaml, sha256_file
from medlens.training.config import TrainConfig
from tests.conftest import need

RUN_FILES = ("config.yaml", "fingerprint.json", "splits.json", "manifest.json")
MODEL_FILES = ("model.json", "metrics.json", "predictions_val.csv", "predictions_test.csv", "training_log.csv")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine it is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _main(*args) -> int:
    from medlens.cli.main import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """cnn-small then elm trained into one run directory (the done-list commands)."""
    out = tmp_path_factory.mktemp("run") / "chest"
    assert (
        _main("train", "synthetic:chest2d", "--model", "cnn-small", "--epochs", "2", "--out", out, "--no-progress") == 0
    )
    splits_after_deep = sha256_file(RunDir(out).splits)
    assert _main("train", "synthetic:chest2d", "--model", "elm", "--out", out, "--no-progress") == 0
    return {"run": RunDir(out), "splits_sha_after_deep": splits_after_deep}


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model, weights", [("cnn-small", "model.safetensors"), ("elm", "model.joblib")])
def test_run_directory_is_complete_and_manifest_verifies(run, model, weights):
    rd: RunDir = run["run"]
    for name in RUN_FILES:
        assert (rd.root / name).is_file(), name
    md = rd.model(model)
    for name in (*MODEL_FILES, weights):
        assert (md.root / name).is_file(), f"{model}/{name}"
    manifest = read_json(rd.manifest)
    listed = manifest["files"]
    assert f"models/{model}/{weights}" in listed and "splits.json" in listed
    checkpoints = {k: v["stage"] for k, v in listed.items() if k.startswith(f"models/{model}/checkpoints/")}
    expected = {"best.ckpt", "last.ckpt"} if weights.endswith(".safetensors") else set()
    assert checkpoints == {f"models/{model}/checkpoints/{n}": f"train:{model}" for n in expected}
    assert verify_manifest(rd.root) == []
    assert manifest["seed"] == 0 and "torch" in manifest["libraries"]


def test_manifest_detects_a_changed_artifact(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run["run"].root, copy)
    target = copy / "models" / "elm" / "metrics.json"
    target.write_text(target.read_text().replace("{", "{ ", 1))
    problems = verify_manifest(copy)
    assert len(problems) == 1 and "models/elm/metrics.json" in problems[0] and "changed" in problems[0]
    assert verify_manifest(copy, ["models/cnn-small/model.safetensors"]) == []


def test_models_share_the_run_splits(run):
    rd: RunDir = run["run"]
    assert sha256_file(rd.splits) == run["splits_sha_after_deep"]  # the second model reused them
    splits = read_json(rd.splits)
    splits = splits.get("splits", splits)
    for model in ("cnn-small", "elm"):
        for split in ("val", "test"):
            ids = [r["id"] for r in _rows(rd.model(model).predictions(split))]
            assert ids == list(splits[split])


def test_model_json_and_config_are_fully_resolved(run):
    rd: RunDir = run["run"]
    info = read_json(rd.model("cnn-small").info)
    assert info["kind"] == "deep" and info["task"] == "multiclass" and info["dims"] == 2
    assert info["class_names"] == ["normal", "nodule", "opacity"]
    assert info["temperature"] == 1.0 and info["in_channels"] == 1 and info["img_size"] == 64
    assert isinstance(info["preprocessing"], dict) and info["preprocessing"]
    assert info["best_epoch"] in (0, 1) and info["epochs_run"] >= 1
    cfg = read_yaml(rd.model("elm").config)  # each model keeps its own settings; every field written out
    assert set(cfg) == set(TrainConfig("x").to_dict())
    assert cfg["model"] == "elm" and cfg["img_size"] == 64 and cfg["preprocessing"]
    assert read_yaml(rd.config)["model"] == "cnn-small"  # the run's config.yaml: written once, by the first
    deep_cfg = info["config"]
    assert deep_cfg["batch_size"] > 0 and deep_cfg["lr"] > 0 and deep_cfg["epochs"] == 2
    # precision "auto" is recorded as what ran on this machine
    from medlens.training.trainer import native_bf16

    assert deep_cfg["precision"] == ("bf16-mixed" if native_bf16("cpu") else "32")


@pytest.mark.parametrize(
    ("precision", "accelerator", "native", "expected"),
    [
        ("auto", "cpu", True, "bf16-mixed"),
        ("auto", "cpu", False, "32"),
        ("auto", "gpu", False, "32"),
        ("32", "cpu", True, "32"),
        ("bf16-mixed", "cpu", False, "bf16-mixed"),
    ],
)
def test_auto_precision_is_bf16_only_where_the_device_computes_it(
    monkeypatch, precision, accelerator, native, expected
):
    from medlens.training import trainer

    monkeypatch.setattr(trainer, "native_bf16", lambda accelerator: native)
    assert trainer.resolve_precision(TrainConfig("x", precision=precision), accelerator) == expected


def test_training_log_has_one_row_per_epoch(run):
    rows = _rows(run["run"].model("cnn-small").training_log)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for r in rows:
        assert float(r["train_loss"]) > 0 and float(r["val_loss"]) > 0 and r["val_auc"] and float(r["lr"]) > 0
    assert int(rows[1]["step"]) > int(rows[0]["step"])
    elm_rows = _rows(run["run"].model("elm").training_log)
    assert elm_rows and sum(int(r["best"]) for r in elm_rows) >= 1


def test_metrics_match_predictions(run):
    from medlens.evaluation.metrics import classification_metrics

    md = run["run"].model("elm")
    metrics = read_json(md.metrics)
    rows = _rows(md.predictions("test"))
    y = np.array([int(r["label"]) for r in rows])
    probs = np.array([[float(r[k]) for k in r if k.startswith("prob_")] for r in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert metrics["test"]["auc"] == pytest.approx(classification_metrics(y, probs, "multiclass")["auc"], abs=1e-4)
    assert metrics["n"]["test"] == len(rows)


def test_saved_weights_reproduce_the_test_predictions(run):
    """model.safetensors + model.json are enough to predict: same probabilities as the CSV."""
    from medlens.data.arrays import load_arrays
    from medlens.data.sources import open_source
    from medlens.models.deep.weights import load_weights
    from medlens.models.registry import get_model

    rd: RunDir = run["run"]
    md = rd.model("cnn-small")
    info = read_json(md.info)
    net = get_model("cnn-small").build(
        in_channels=info["in_channels"],
        num_outputs=info["num_outputs"],
        spatial_dims=info["dims"],
        img_size=info["img_size"],
    )
    load_weights(net, md.weights)
    rows = _rows(md.predictions("test"))[:16]
    x, _ = load_arrays(
        open_source("synthetic:chest2d"),
        [r["id"] for r in rows],
        size=info["img_size"],
        channels=info["in_channels"],
        preprocessing=info["preprocessing"],
        show_progress=False,
    )
    with torch.no_grad():
        probs = torch.softmax(net.eval()(torch.as_tensor(x)).double(), dim=1).numpy()
    expected = np.array([[float(r[k]) for k in r if k.startswith("prob_")] for r in rows])
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_same_command_twice_gives_same_metrics(tmp_path):
    args = (
        "train",
        "synthetic:chest2d",
        "--model",
        "cnn-small",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "--max-samples",
        "48",
        "--no-progress",
    )
    assert _main(*args, "--out", tmp_path / "a") == 0
    assert _main(*args, "--out", tmp_path / "b") == 0
    a = read_json(RunDir(tmp_path / "a").model("cnn-small").metrics)
    b = read_json(RunDir(tmp_path / "b").model("cnn-small").metrics)
    assert json.dumps(a["test"], sort_keys=True) == json.dumps(b["test"], sort_keys=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model", "no-such-model"), "unknown model"),
        (("--model", "resnet18-3d"), "3D"),
        (("--model", "cnn-small", "--augment", "sideways"), "--augment"),
        (("--model", "cnn-small", "--resume"), "nothing to resume"),
        (("--model", "cnn-small", "--accelerator", "cpu", "--precision", "16-mixed"), "needs a GPU"),
    ],
)
def test_user_mistakes_are_one_line_errors(cli, tmp_path, args, message):
    code, out, err = cli("train", "synthetic:chest2d", "--out", tmp_path / "r", *args)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_gan_augmentation_adds_minority_samples_to_train_only(tmp_path):
    from medlens.training.run import train

    config = TrainConfig(
        "synthetic:chest2d",
        model="cnn-small",
        out=str(tmp_path / "g"),
        epochs=1,
        img_size=32,
        max_samples=60,
        augment="gan",
        gan_epochs=1,
        progress=False,
    )
    rd = train(config)
    md = rd.model("cnn-small")
    info = read_json(md.info)
    assert md.samples_png.is_file() and md.samples_png.stat().st_size > 1000
    assert info["gan"]["epochs"] == 1
    metrics = read_json(md.metrics)
    assert metrics["n"]["train"] == 60 and metrics["n_train_fit"] >= 60  # val/test untouched
    assert metrics["n"]["val"] <= 60 and verify_manifest(rd.root) == []


@pytest.mark.realdata
def test_cnn_lstm_trains_on_adrenalmnist3d(shared_data, tmp_path):
    source = need(shared_data / "medmnist" / "adrenalmnist3d.npz")
    out = tmp_path / "adrenal"
    code = _main(
        "train",
        source,
        "--model",
        "cnn-lstm",
        "--epochs",
        "1",
        "--max-samples",
        "48",
        "--batch-size",
        "16",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0
    rd = RunDir(out)
    info = read_json(rd.model("cnn-lstm").info)
    assert info["dims"] == 3 and info["task"] == "binary" and info["img_size"] == 28
    # CT-derived, but stored as 0..255 renderings: min-max, not the HU window
    steps = [s["name"] for s in info["preprocessing"]["steps"]]
    assert steps[-1] == "minmax" and "window" not in steps
    metrics = read_json(rd.model("cnn-lstm").metrics)
    assert metrics["n"] == {"train": 48, "val": 48, "test": 48}
    assert 0.0 <= metrics["test"]["auc"] <= 1.0
    assert verify_manifest(rd.root) == []


def test_weights_option_starts_from_local_weights(run, tmp_path):
    """--weights loads a .safetensors file: with a vanishing learning rate the weights stay put."""
    from safetensors.torch import load_file

    given = run["run"].model("cnn-small").weights
    out = tmp_path / "w"
    code = _main(
        "train",
        "synthetic:chest2d",
        "--model",
        "cnn-small",
        "--epochs",
        "1",
        "--img-size",
        "32",
        "--max-samples",
        "40",
        "--lr",
        "1e-12",
        "--augment",
        "none",
        "--weights",
        given,
        "--no-progress",
        "--out",
        out,
    )
    assert code == 0
    before, after = load_file(str(given)), load_file(str(RunDir(out).model("cnn-small").weights))
    convs = [k for k in before if k.endswith("conv.weight")]
    assert convs
    for k in convs:
        torch.testing.assert_close(after[k], before[k], atol=1e-6, rtol=0)


def test_ema_decay_warms_up_then_holds():
    from medlens.training.trainer import ema_with_warmup

    update = ema_with_warmup(0.99)
    avg, cur = [torch.zeros(3), torch.tensor(5)], [torch.ones(3), torch.tensor(7)]
    update(avg, cur, torch.tensor(0))  # decay min(0.99, 1/10): mostly the current weights
    torch.testing.assert_close(avg[0], torch.full((3,), 0.9))
    assert int(avg[1]) == 7  # integer buffers are copied
    avg = [torch.zeros(3)]
    update(avg, [torch.ones(3)], torch.tensor(10_000))  # warmed up: the full decay
    torch.testing.assert_close(avg[0], torch.full((3,), 0.01))


def test_ema_exports_the_averaged_weights(run, tmp_path):
    """--ema: best.ckpt holds the moving average (and the live weights beside it); the exported
    weights are the average, not the live weights."""
    from safetensors.torch import load_file

    out = tmp_path / "ema"
    assert (
        _main(
            "train",
            "synthetic:chest2d",
            "--model",
            "cnn-small",
            "--epochs",
            "1",
            "--img-size",
            "32",
            "--max-samples",
            "40",
            "--batch-size",
            "8",
            "--ema",
            "0.9",
            "--no-progress",
            "--out",
            out,
        )
        == 0
    )
    md = RunDir(out).model("cnn-small")
    ckpt = torch.load(md.checkpoints / "best.ckpt", map_location="cpu", weights_only=False)
    exported = load_file(str(md.weights))
    key = next(k for k in exported if k.endswith("conv.weight"))
    torch.testing.assert_close(exported[key], ckpt["state_dict"][f"net.{key}"])
    assert not torch.allclose(exported[key], ckpt["current_model_state"][f"net.{key}"])
    assert read_yaml(RunDir(out).config)["ema"] == 0.9


def test_ema_outside_its_range_is_a_one_line_error(cli, tmp_path):
    code, _, err = cli("train", "synthetic:chest2d", "--model", "cnn-small", "--ema", "1.5", "--out", tmp_path / "r")
    assert code == 2 and "--ema" in err and "Traceback" not in err
