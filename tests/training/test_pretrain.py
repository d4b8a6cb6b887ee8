"""`medlens pretrain`: an encoder from unlabeled images, never the test split; `train --weights` uses it."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from medlens.data.leakage import plan_splits
from medlens.data.sources import open_source
from medlens.errors import MedlensError
from medlens.models.deep.encoder import head_keys, head_name
from medlens.models.registry import get_model
from medlens.runs import ModelDir, RunDir, read_json
from medlens.training.config import TrainConfig
from medlens.training.pretrain import ENCODER_KIND, PretrainConfig, load_start_weights, nt_xent, pretrain
from medlens.training.run import train
from tests.conftest import run_medlens

SOURCE = "synthetic:chest2d@32"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _pretrain(tmp_path, **kw):
    settings = dict(epochs=1, batch_size=16, max_samples=48, threads=1, progress=False, accelerator="cpu")
    settings.update(kw)
    config = PretrainConfig(source=SOURCE, out=str(tmp_path / "enc.safetensors")).updated(**settings)
    return config, pretrain(config)


def _as_trained(weights, **changes):
    """The settings of a training that uses the encoder as it was pretrained (model, size, steps)."""
    card = read_json(weights.with_suffix(".json"))
    settings = {k: card[k] for k in ("model", "img_size", "preprocessing")}
    settings |= {"channels": card["in_channels"], "patch_size": card.get("patch_size")}
    return SimpleNamespace(**settings | changes)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A cnn-small encoder pretrained for one epoch on the synthetic chest images (seed 0)."""
    return _pretrain(tmp_path_factory.mktemp("pretrain"))


def test_nt_xent_rewards_finding_the_partner():
    z = torch.randn(8, 16)
    matched, top1 = nt_xent(torch.cat([z, z]), 0.2)  # each view's partner is identical to it
    shuffled, _ = nt_xent(torch.cat([z, torch.randn(8, 16)]), 0.2)
    assert top1 == 1.0 and matched < shuffled


def test_pretrain_writes_an_encoder_and_a_card_without_test_images(encoder):
    config, weights = encoder
    card = read_json(weights.with_suffix(".json"))
    with safe_open(str(weights), framework="pt") as f:
        assert f.metadata()["kind"] == ENCODER_KIND
    net = get_model("cnn-small").build(in_channels=1, num_outputs=3, spatial_dims=2, img_size=32)
    tensors = load_file(str(weights))
    assert set(tensors) == set(net.state_dict()) - set(head_keys(net))  # everything but the head
    assert card["head"].startswith(head_name(net))
    plan = plan_splits(open_source(SOURCE), seed=0, show_progress=False)
    test = set(plan.splits["test"])
    assert test and not test & set(card["images"]["ids"])  # the test split is never read
    assert card["images"]["n"] == len(card["images"]["ids"]) == sum(card["images"]["per_split"].values())
    assert set(card["images"]["ids"]) <= set(plan.splits["train"]) | set(plan.splits["val"])
    assert card["result"]["final_loss"] > 0 and card["result"]["global_step"] > 0
    assert card["weights_sha256"] and card["preprocessing"]["steps"]


def test_the_encoder_loads_into_the_network_with_a_fresh_head(encoder):
    _, weights = encoder
    net = get_model("cnn-small").build(in_channels=1, num_outputs=3, spatial_dims=2, img_size=32)
    head_before = {k: v.clone() for k, v in net.state_dict().items() if k in head_keys(net)}
    uri = open_source(SOURCE).uri
    info = load_start_weights(net, weights, config=_as_trained(weights), source_uri=uri, test_ids=[])
    stored = load_file(str(weights))
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items())
    assert all(torch.equal(state[k], v) for k, v in head_before.items())
    assert info["kind"] == "encoder" and info["tensors_loaded"] == len(stored) and info["warnings"] == []
    other = load_start_weights(net, weights, config=_as_trained(weights, img_size=64), source_uri=uri, test_ids=[])
    assert other["warnings"] == ["the encoder was pretrained with another img_size (32) than this training uses (64)"]


def test_an_encoder_that_saw_a_test_image_is_refused(encoder):
    _, weights = encoder
    card = read_json(weights.with_suffix(".json"))
    net = get_model("cnn-small").build(in_channels=1, num_outputs=3, spatial_dims=2, img_size=32)
    uri = open_source(SOURCE).uri
    seen = card["images"]["ids"][0]
    with pytest.raises(MedlensError, match="pretrained on 1 of this run's test images"):
        load_start_weights(net, weights, config=_as_trained(weights), source_uri=uri, test_ids=[seen, "not-seen"])
    with pytest.raises(MedlensError, match="pretrained for 'cnn-small', not 'cnn-medium'"):
        load_start_weights(net, weights, config=_as_trained(weights, model="cnn-medium"), source_uri=uri, test_ids=[])
    load_start_weights(
        net, weights, config=_as_trained(weights), source_uri="another-source", test_ids=[seen]
    )  # no overlap


def test_a_missing_card_is_refused(encoder, tmp_path):
    _, weights = encoder
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(weights.read_bytes())
    net = get_model("cnn-small").build(in_channels=1, num_outputs=3, spatial_dims=2, img_size=32)
    with pytest.raises(MedlensError, match="card saying which images this encoder saw, is missing"):
        load_start_weights(net, lone, config=_as_trained(weights), source_uri="x", test_ids=[])


def test_train_starts_from_the_encoder_and_says_so(encoder, tmp_path):
    _, weights = encoder
    config = TrainConfig(
        source=SOURCE,
        model="cnn-small",
        out=str(tmp_path / "run"),
        epochs=1,
        max_samples=32,
        threads=1,
        progress=False,
        accelerator="cpu",
        weights=str(weights),
    )
    run = train(config)
    card = read_json(run.model("cnn-small").info)
    assert card["pretrained"]["kind"] == "encoder" and card["pretrained"]["method"] == "simclr"
    assert card["pretrained"]["sha256"] == read_json(weights.with_suffix(".json"))["weights_sha256"]


def test_pretrain_3d(tmp_path):
    config, weights = _pretrain(
        tmp_path, source="synthetic:nodule3d@16", model="cnn-lstm", max_samples=24, batch_size=8
    )
    card = read_json(weights.with_suffix(".json"))
    assert card["dims"] == 3 and card["model"] == "cnn-lstm" and card["head"].startswith("fc ")
    net = get_model("cnn-lstm").build(in_channels=1, num_outputs=2, spatial_dims=3, img_size=16)
    info = load_start_weights(net, weights, config=_as_trained(weights), source_uri="elsewhere", test_ids=[])
    assert info["tensors_loaded"] == len(net.state_dict()) - len(head_keys(net))


def test_bad_settings_are_one_line_errors(tmp_path):
    result = run_medlens("pretrain", SOURCE, "--out", tmp_path / "enc.pt")
    assert result.returncode == 2 and "must name a .safetensors file" in result.stderr
    result = run_medlens("pretrain", SOURCE, "--out", tmp_path / "enc.safetensors", "--model", "svm")
    assert result.returncode == 2 and "not a deep network" in result.stderr
    result = run_medlens("pretrain", SOURCE, "--out", tmp_path / "enc.safetensors", "--resume")
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigkill_then_resume_finishes_without_repeating_steps(tmp_path):
    weights = tmp_path / "enc.safetensors"
    epochs, batch, n = 3, 8, 32
    args = [
        *("pretrain", SOURCE, "--out", str(weights), "--epochs", str(epochs), "--batch-size", str(batch)),
        *("--max-samples", str(n // 2), "--checkpoint-every", "2", "--accelerator", "cpu", "--no-progress"),
    ]
    work = ModelDir(weights.with_suffix(".pretrain"))
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medlens.cli.main", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **ONE_THREAD},
        )
    try:
        deadline = time.monotonic() + 120
        while not work.last_checkpoint.is_file():
            assert proc.poll() is None, f"pretraining ended before a checkpoint appeared: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not weights.exists()
    killed_at = torch.load(work.last_checkpoint, weights_only=True)["global_step"]

    resumed = run_medlens(*args, "--resume", timeout=240, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    card = read_json(weights.with_suffix(".json"))
    steps_per_epoch = n // batch  # max-samples caps train and val: 16 + 16 images, 4 batches of 8
    assert 0 < killed_at < epochs * steps_per_epoch
    assert card["result"]["start_step"] == killed_at  # Lightning restored the step counter, not 0
    assert card["result"]["global_step"] == epochs * steps_per_epoch  # and did not redo finished steps
    with open(work.training_log, newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(epochs))


def test_cli_pretrain_then_train(tmp_path):
    weights = tmp_path / "enc.safetensors"
    common = ("--max-samples", "32", "--accelerator", "cpu", "--no-progress")
    result = run_medlens(
        "pretrain", SOURCE, "--out", weights, "--epochs", "1", "--batch-size", "16", *common, env=ONE_THREAD
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final loss" in result.stdout and weights.is_file()
    run = tmp_path / "run"
    result = run_medlens("train", SOURCE, "--out", run, "--epochs", "1", "--weights", weights, *common, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_json(RunDir(run).model("cnn-small").info)["pretrained"]["kind"] == "encoder"


def test_one_source_by_any_path(tmp_path, monkeypatch):
    from medlens.training.pretrain import source_key

    (tmp_path / "set.npz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert source_key("set.npz") == source_key(str(tmp_path / "set.npz")) == source_key("./set.npz")
    assert source_key("synthetic:chest2d@32") == "synthetic:chest2d@32"


def test_masked_patches_line_up_with_the_patch_rows():
    from medlens.training.pretrain import patch_mask_pixels, patchify

    x = torch.randn(2, 3, 8, 12) + 5.0  # no pixel is zero by chance
    masked = torch.zeros(2, 2 * 3, dtype=torch.bool)
    masked[0, 1], masked[1, 4] = True, True  # image 0: row 0, column 1; image 1: row 1, column 1
    pixels = patch_mask_pixels(masked, (2, 3), (4, 4))
    assert pixels[0, 0, 0:4, 4:8].all() and pixels[1, 0, 4:8, 4:8].all() and int(pixels.sum()) == 2 * 16
    rows, rows_masked = patchify(x, (4, 4)), patchify(x.masked_fill(pixels, 0.0), (4, 4))
    assert rows.shape == (2, 6, 3 * 16)
    assert (rows_masked[masked] == 0).all() and torch.equal(rows_masked[~masked], rows[~masked])
    assert torch.equal(rows[0, 5], x[0, :, 4:8, 8:12].reshape(-1))  # channel-major within a patch


def test_masked_image_pretraining_of_the_vit_learns_and_loads_into_train(tmp_path):
    config, weights = _pretrain(tmp_path, model="vit", method="mim", epochs=4, batch_size=32, lr=2e-3)
    card = read_json(weights.with_suffix(".json"))
    assert card["method"] == "mim" and card["settings"]["mask_ratio"] == 0.6 and "temperature" not in card["settings"]
    with open(weights.with_suffix(".pretrain") / "training_log.csv", newline="") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]  # it learns to fill in the masked patches
    net = get_model("vit").build(
        in_channels=card["in_channels"], num_outputs=2, spatial_dims=2, img_size=card["img_size"]
    )
    loaded = load_start_weights(net, weights, config=_as_trained(weights), source_uri="elsewhere", test_ids=[])
    assert loaded["method"] == "mim" and loaded["tensors_loaded"] == len(net.state_dict()) - len(head_keys(net))


def test_masked_image_pretraining_needs_a_vit(tmp_path):
    with pytest.raises(MedlensError, match="needs a ViT"):
        _pretrain(tmp_path, model="cnn-small", method="mim")
    with pytest.raises(MedlensError, match="mask-ratio"):
        _pretrain(tmp_path, model="vit", method="mim", mask_ratio=1.0)


def test_a_segmentation_network_pretrains_by_inpainting_and_train_loads_all_but_its_output_layer(tmp_path):
    from medlens.models.deep.encoder import output_keys
    from medlens.training.pretrain import block_mask

    mask = block_mask((3, 1, 16, 20), 0.5, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 1, 16, 20) and all(m.any() for m in mask)  # blocks of 2 x 2, at least one per image
    source = "synthetic:chest2d-seg@32"
    _, weights = _pretrain(
        tmp_path, source=source, model="unet", method="mim", epochs=3, batch_size=8, lr=3e-3, max_samples=16
    )
    card = read_json(weights.with_suffix(".json"))
    assert card["method"] == "mim" and card["patch_size"] and card["head"].startswith("the output layer")
    with open(weights.with_suffix(".pretrain") / "training_log.csv", newline="") as f:
        losses = [float(r["train_loss"]) for r in csv.DictReader(f)]
    assert losses[-1] < 0.8 * losses[0]  # it learns to fill in the masked blocks
    config = TrainConfig(
        source=source,
        model="unet",
        out=str(tmp_path / "run"),
        epochs=1,
        max_samples=16,
        threads=1,
        progress=False,
        accelerator="cpu",
        weights=str(weights),
    )
    card = read_json(train(config).model("unet").info)
    keys = output_keys("unet", in_channels=1, spatial_dims=2, img_size=card["patch_size"])
    net = get_model("unet").build(in_channels=1, num_outputs=2, spatial_dims=2, img_size=card["patch_size"])
    assert card["pretrained"]["kind"] == "encoder" and card["pretrained"]["method"] == "mim"
    assert 0 < len(keys) < 10 and card["pretrained"]["tensors_loaded"] == len(net.state_dict()) - len(keys)


def test_simclr_needs_a_classifier(tmp_path):
    with pytest.raises(MedlensError, match="segmentation network"):
        _pretrain(tmp_path, source="synthetic:chest2d-seg@32", model="unet", method="simclr")
