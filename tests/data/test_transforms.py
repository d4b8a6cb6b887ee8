"""Preprocessing / augmentation configs, MONAI per-sample pipelines and the batched torch augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.data.transforms import (
    augment_batch,
    build_transform,
    default_augmentation,
    default_preprocessing,
    looks_like_hounsfield,
)
from medlens.errors import MedlensError


def test_ct_window_resize_and_range():
    cfg = default_preprocessing("CT", 3, 16)
    vol = np.linspace(-2000, 2000, 24 * 24 * 24, dtype=np.float32).reshape(1, 24, 24, 24)
    out = build_transform(cfg, 3)(vol)
    assert out.shape == (1, 16, 16, 16) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0


def test_ct_display_values_get_minmax_not_the_hu_window():
    """MedMNIST's CT-derived arrays are 0..255 renderings: an HU window would squeeze them into
    [0.71, 0.90] (what AdrenalMNIST3D got before); they are min-max scaled instead."""
    rendering = np.zeros((1, 8, 8, 8), np.float32)
    rendering[0, 2:6, 2:6, 2:6] = 255
    in_hu = np.full((1, 8, 8, 8), -1024, np.float32)
    assert not looks_like_hounsfield(rendering) and looks_like_hounsfield(in_hu)
    cfg = default_preprocessing("CT", 3, None, hounsfield=False)
    assert [s["name"] for s in cfg["steps"]] == ["minmax"]
    out = build_transform(cfg, 3)(rendering)
    assert out.min() == 0.0 and out.max() == 1.0
    assert [s["name"] for s in default_preprocessing("CT", 3, None)["steps"]] == ["window"]


def test_mr_zscore_on_nonzero_voxels():
    img = np.zeros((1, 20, 20), np.float32)
    img[0, 5:15, 5:15] = np.random.default_rng(0).normal(100, 10, (10, 10))
    out = build_transform(default_preprocessing("MR", 2, None), 2)(img)
    inside = out[0, 5:15, 5:15]
    assert abs(inside.mean()) < 1e-4 and abs(inside.std() - 1) < 1e-2 and np.all(out[0, :5] == 0)


@pytest.mark.parametrize("modality,expected_max", [("DX", 1.0), ("XC", 100 / 255)])
def test_xray_minmax_and_photo_divide(modality, expected_max):
    img = np.full((3, 8, 8), 50, np.float32)
    img[:, 0, 0] = 100
    out = build_transform(default_preprocessing(modality, 2, None), 2)(img)
    assert out.max() == pytest.approx(expected_max)


def test_augmentation_is_seeded_and_keeps_shape():
    img = np.random.default_rng(0).random((1, 28, 28)).astype(np.float32)
    cfg = default_augmentation(2, "standard")
    a = [build_transform(cfg, 2, seed=7)(img) for _ in range(2)]
    assert a[0].shape == img.shape
    np.testing.assert_array_equal(a[0], a[1])
    vol = np.random.default_rng(0).random((1, 12, 12, 12)).astype(np.float32)
    assert build_transform(default_augmentation(3, "standard"), 3, seed=1)(vol).shape == vol.shape


def test_strength_none_is_identity_and_bad_strength_errors():
    assert default_augmentation(2, "none")["steps"] == []
    with pytest.raises(MedlensError):
        default_augmentation(2, "wild")
    with pytest.raises(MedlensError):
        build_transform({"steps": [{"name": "sharpen"}]}, 2)


@pytest.mark.parametrize("dims", [2, 3])
def test_augment_batch_shapes_determinism_and_variety(dims):
    x = torch.rand(8, 1, *([12] * dims))
    cfg = default_augmentation(dims, "standard")
    a = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(x, default_augmentation(dims, "none"), torch.Generator()) is x


def test_augment_batch_flip_only_flips_the_last_axis():
    x = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    out = augment_batch(x, {"steps": [{"name": "flip", "axes": [1], "prob": 1.0}]}, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x.flip(-1))


def test_augment_batch_preserves_constant_images():
    x = torch.full((4, 1, 16, 16), 0.5)
    cfg = {"steps": [s for s in default_augmentation(2, "standard")["steps"] if s["name"] != "noise"]}
    torch.testing.assert_close(augment_batch(x, cfg, torch.Generator().manual_seed(0)), x)
