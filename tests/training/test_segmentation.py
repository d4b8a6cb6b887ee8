"""Segmentation through `medlens train` / `medlens plan`: 2D and 3D, the bundle, resume, wrong models."""

from __future__ import annotations

import json
import math
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medlens.data.sources import open_source
from medlens.data.synth_writer import nifti_image
from medlens.errors import MedlensError
from medlens.inference.bundle import Bundle
from medlens.manifest import verify_manifest
from medlens.models.registry import models_for
from medlens.runs import RunDir, read_json
from medlens.training import plan as planning
from medlens.training.config import TrainConfig, plan_overrides, segmentation_augmentation
from medlens.training.datamodule import PatchDataset
from medlens.training.run import train
from tests.conftest import run_medlens

FAST = ("--no-progress", "--threads", "1", "--accelerator", "cpu")


def blob(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with one bright ball (the mask) at a random place."""
    grid = np.indices(shape).astype(np.float32)
    r = rng.uniform(0.18, 0.25) * min(shape)
    centre = [rng.uniform(r + 1, s - r - 1) for s in shape]
    mask = (sum((g - c) ** 2 for g, c in zip(grid, centre)) <= r * r).astype(np.uint8)
    return rng.normal(0.0, 0.3, shape).astype(np.float32) + 2.0 * mask, mask


def write_volumes(root, n=10, side=16, seed=0, last_label=1):
    """images/ + labels/ NIfTI cases; ``last_label`` is the label value of the last case's ball."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image, mask = blob(rng, (side,) * 3)
        if i == n - 1:
            mask = mask * last_label
        nib.save(nifti_image(image * 100 + 500), root / "images" / f"case_{i:03d}.nii.gz")
        nib.save(nifti_image(mask, dtype=np.uint8), root / "labels" / f"case_{i:03d}.nii.gz")
    return root


def write_images(root, n=10, side=32, seed=1):
    """PNG images and masks listed in a CSV manifest (task segmentation: a mask column, no label)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = ["path,mask"]
    for i in range(n):
        image, mask = blob(rng, (side, side))
        Image.fromarray(np.clip(image * 60 + 60, 0, 255).astype(np.uint8)).save(root / f"img_{i}.png")
        Image.fromarray(mask * 255).save(root / f"mask_{i}.png")
        rows.append(f"img_{i}.png,mask_{i}.png")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return root / "cases.csv"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    return write_volumes(tmp_path_factory.mktemp("seg3d") / "vol")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("seg2d") / "img")


@pytest.fixture(scope="module")
def run3d(volumes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run3d") / "run"
    res = run_medlens(
        "train", volumes, "--task", "segmentation", "--model", "unet", "--epochs", "12", "--out", out, *FAST
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_3d_unet_trains_through_the_cli_and_writes_a_complete_bundle(run3d, volumes):
    out, res = run3d
    run = RunDir(out)
    model = run.model("unet")
    assert verify_manifest(run.root) == []
    card = read_json(model.info)
    assert card["task"] == "segmentation" and card["class_names"] == ["background", "1"] and card["num_outputs"] == 2
    assert card["patch_size"] == [16, 16, 16] and card["img_size"] is None and card["ood"] is None
    assert card["preprocessing"]["geometry"].startswith("as stored")
    metrics = read_json(model.metrics)
    assert metrics["val"]["mean_dice"] > 0.5 and metrics["test"]["mean_dice"] > 0.5, metrics
    assert "Dice 1" in res.stdout
    splits = read_json(run.splits)["splits"]
    for split in ("val", "test"):
        files = sorted(p.stem for p in model.segmentations(split).glob("*.npz"))
        assert files == sorted(splits[split])
    saved = np.load(model.segmentations("test") / f"{splits['test'][0]}.npz")
    assert saved["labels"].dtype == np.uint8 and saved["labels"].shape == (16, 16, 16)
    assert saved["foreground"].dtype == np.float16  # two classes: the foreground probability too
    # test-time mirroring: both validation figures recorded, the card follows the rule
    mirroring = metrics["mirroring"]
    single, mirrored = mirroring["val_mean_dice"]["single"], mirroring["val_mean_dice"]["mirrored"]
    assert card["mirror_axes"] == ([0, 1, 2] if mirrored > single else None) == mirroring["mirror_axes"]


def test_mirroring_averages_every_flip_of_the_chosen_axes():
    import torch

    from medlens.inference.segment import mirror_sets, sliding_window_proba

    assert mirror_sets(None) == [()] and mirror_sets([1, 0]) == [(), (0,), (1,), (0, 1)]
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1).eval()  # not flip-equivariant: flips change its output
    x = np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32)
    single = sliding_window_proba(net, x, [8, 8])
    expected = np.mean(
        [
            np.flip(sliding_window_proba(net, np.flip(x, [1 + a for a in f]).copy(), [8, 8]), [1 + a for a in f])
            for f in mirror_sets([0, 1])
        ],
        axis=0,
    )
    mirrored = sliding_window_proba(net, x, [8, 8], [0, 1])
    np.testing.assert_allclose(mirrored, expected, atol=1e-6)
    assert not np.allclose(mirrored, single, atol=1e-3)


def test_bundle_segments_an_image_as_training_did(run3d, volumes):
    out, _ = run3d
    bundle = Bundle.load(out)
    dataset = open_source(str(volumes))
    test_id = read_json(RunDir(out).splits)["splits"]["test"][0]
    sample = dataset.load(test_id)
    x = bundle.preprocess(sample.image)
    assert x.shape == sample.image.shape and x.dtype == np.float32  # stored geometry, no resize
    probs = bundle.segment(x)
    assert probs.shape == (2, 16, 16, 16) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    saved = np.load(RunDir(out).model("unet").segmentations("test") / f"{test_id}.npz")["labels"]
    np.testing.assert_array_equal(probs.argmax(axis=0), saved)  # the one inference path
    labels = probs.argmax(axis=0)
    dice = 2 * np.sum((labels == 1) & (sample.mask == 1)) / (np.sum(labels == 1) + np.sum(sample.mask == 1))
    assert dice > 0.5
    with pytest.raises(MedlensError, match="takes"):
        bundle.segment(x[0])


def test_2d_dynunet_learns_the_blob(images, tmp_path):
    out = tmp_path / "run"
    res = run_medlens("train", images, "--model", "dynunet", "--epochs", "4", "--batch-size", "4", "--out", out, *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = read_json(RunDir(out).model("dynunet").metrics)
    assert metrics["val"]["mean_dice"] > 0.5 and metrics["test"]["mean_dice"] > 0.5, metrics
    card = read_json(RunDir(out).model("dynunet").info)
    assert card["dims"] == 2 and card["patch_size"] == [32, 32] and card["config"]["task"] == "segmentation"


def test_resume_continues_the_segmentation_run(images, tmp_path):
    out = tmp_path / "run"
    args = ("train", images, "--model", "unet", "--batch-size", "8", "--out", out, *FAST)
    assert run_medlens(*args, "--epochs", "2").returncode == 0
    res = run_medlens(*args, "--epochs", "3", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    card = read_json(RunDir(out).model("unet").info)
    assert card["resumed_from"]["epoch"] == 2 and card["epochs_run"] == 3


def test_pixel_forest_trains_on_the_same_splits(images, tmp_path):
    out = tmp_path / "run"
    res = run_medlens("train", images, "--model", "pixel-forest", "--out", out, *FAST)
    assert res.returncode == 0, res.stderr[-3000:]
    model = RunDir(out).model("pixel-forest")
    card = read_json(model.info)
    assert card["kind"] == "classical" and card["task"] == "segmentation" and card["weights_file"] == "model.joblib"
    assert read_json(model.metrics)["test"]["mean_dice"] > 0.5
    bundle = Bundle.load(out)
    assert bundle.segment(np.zeros((1, 32, 32), np.float32) + np.eye(32, dtype=np.float32)).shape == (2, 32, 32)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"task": "segmentation", "model": "resnet18"}, "'resnet18' is a classification model"),
        ({"task": "classification"}, "--task classification, but the source's task is 'segmentation'"),
        ({"model": "unet", "patch_size": [12]}, "divisible by 8"),
        ({"model": "unet", "monitor": "auc"}, "--monitor auc does not apply to segmentation"),
    ],
)
def test_wrong_model_or_task_is_refused(images, tmp_path, settings, message):
    config = TrainConfig(source=str(images), out=str(tmp_path / "run"), progress=False, **settings)
    with pytest.raises(MedlensError, match=re.escape(message)):
        train(config)


def test_a_segmentation_model_on_a_classification_source_is_one_line(tmp_path):
    res = run_medlens("train", "synthetic:chest2d@32", "--model", "unet", "--out", tmp_path / "run", *FAST)
    assert res.returncode == 2 and "'unet' is a segmentation model" in res.stderr and "Traceback" not in res.stderr


def test_a_label_outside_the_classes_names_the_file(tmp_path):
    source = write_volumes(tmp_path / "vol", n=8, last_label=2)  # class names come from the first labels
    res = run_medlens("train", source, "--epochs", "1", "--out", tmp_path / "run", *FAST)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "2 outside" in res.stderr and "case_007" in res.stderr


def test_models_are_offered_for_their_own_task_only():
    segmenters = {s.name for s in models_for("segmentation")}
    assert {"unet", "dynunet", "segresnet"} <= segmenters
    assert not segmenters & {s.name for s in models_for("binary")}


def test_plan_chooses_patch_batch_and_epochs_from_the_data_and_budget(volumes, monkeypatch):
    def measure(model, *, img_size, segmentation=False, **kw):
        assert segmentation and img_size == [16, 16, 16]
        return 10.0  # network patches per second

    def sampling(dataset, patch, augmentation, **kw):
        assert patch == [16, 16, 16] and augmentation["rotate_prob"] > 0  # the plan's own augmentation
        return 0.05  # seconds to draw one augmented patch

    monkeypatch.setattr(planning, "measure_throughput", measure)
    monkeypatch.setattr(planning, "measure_patch_sampling", sampling)
    plan = planning.make_plan(str(volumes), budget_minutes=1.0, show_progress=False)
    config = plan["config"]
    assert config["task"] == "segmentation" and config["model"] == "unet" and config["patch_size"] == [16, 16, 16]
    assert config["batch_size"] == planning.SEG_BATCH[3]
    assert config["augment"] == "standard"  # 10 cases: a small training set
    n_train, n_val = plan["data"]["n_train"], plan["data"]["n_val"]
    ips = 1 / (1 / 10.0 + 0.05)  # the network's step and the drawing of a patch, one after the other
    epoch_s = (n_train * 4 + n_val * planning.VAL_COST) / ips
    assert config["epochs"] == min(planning.MAX_EPOCHS, math.floor(60 * planning.BUDGET_USE / epoch_s))
    assert plan["measurements"][0]["sampling_ms"] == 50.0
    assert any("no resampling" in line for line in plan["reasoning"])
    json.dumps(plan)  # plan.json is plain JSON


def test_the_plan_measures_drawing_real_augmented_patches(volumes):
    dataset = open_source(str(volumes))
    light = planning.measure_patch_sampling(dataset, [16, 16, 16], {}, n=8)
    standard = planning.measure_patch_sampling(
        dataset, [16, 16, 16], segmentation_augmentation(3, "standard", [16, 16, 16]), n=8
    )
    assert 0 < light < 0.5 and 0 < standard < 0.5


@pytest.mark.parametrize("dims", [2, 3])
def test_standard_augmentation_moves_image_and_mask_together(dims):
    """Rotation and scaling on every patch: the image (a copy of the mask) still matches the mask
    and the mask keeps its label values."""
    rng = np.random.default_rng(0)
    shape = (40,) * dims
    grid = np.indices(shape)
    mask = (sum((g - 20.0) ** 2 for g in grid) <= 100).astype(np.uint8) * 2
    config = segmentation_augmentation(dims, "standard", [24] * dims)
    config.update(rotate_prob=1.0, scale_prob=1.0, brightness_prob=0.0, gamma_prob=0.0, noise_prob=0.0)
    patches = PatchDataset(
        [mask[None].astype(np.float32)],
        [mask],
        patch=[24] * dims,
        patches_per_case=12,
        pos_fraction=1.0,
        augmentation=config,
        seed=int(rng.integers(100)),
    )
    changed = 0
    for index in range(len(patches)):
        x, y = patches[index]
        assert set(np.unique(y.numpy())) <= {0, 2}
        inside, outside = x[y == 2], x[y == 0]
        assert inside.numel() and float(inside.mean()) > 1.5 and float(outside.mean()) < 0.5
        changed += int(not np.isin(x.numpy(), [0.0, 2.0]).all())  # interpolated: the patch was resampled
    assert changed == len(patches)


def test_light_augmentation_only_flips():
    assert set(segmentation_augmentation(3, "light", [16, 16, 16])) == {"prob", "flip_axes", "rotate90_axes"}
    assert segmentation_augmentation(3, "none", [16, 16, 16]) == {}


def test_when_the_epoch_cap_binds_the_plan_spends_the_budget_on_more_patches(volumes, monkeypatch):
    monkeypatch.setattr(planning, "measure_throughput", lambda *a, **kw: 1000.0)
    monkeypatch.setattr(planning, "measure_patch_sampling", lambda *a, **kw: 0.0)
    plan = planning.make_plan(str(volumes), budget_minutes=1.0, show_progress=False)
    config = plan["config"]
    assert config["epochs"] == planning.MAX_EPOCHS and config["patches_per_case"] > TrainConfig.patches_per_case
    budget_s = 60 * planning.BUDGET_USE
    assert budget_s * 0.9 <= plan["estimate_minutes"] * 60 <= budget_s  # the budget is used, not exceeded
    assert any("patches per case instead" in line for line in plan["reasoning"])
    assert plan_overrides(plan)["patches_per_case"] == config["patches_per_case"]
