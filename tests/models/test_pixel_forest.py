"""PixelForest: balanced sampling, learning synthetic vessels (2D) and blobs (3D), chunked
prediction, persistence, registry entry and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import line

from medlens.errors import MedlensError
from medlens.models.classical.persistence import load_estimator, save_estimator
from medlens.models.classical.pixel_forest import PixelForest
from medlens.models.registry import get_model


def vessels(n: int, size: int = 64, seed: int = 0):
    """Images (n, 1, size, size) with dark 3-px lines on a shaded, noisy background; masks of the lines."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 0.2, size, dtype=np.float32)
    images = 0.45 + ramp[None, None, :, None] + rng.normal(0, 0.1, (n, 1, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(3):
            r0, c0, r1, c1 = rng.integers(0, size, 4)
            rr, cc = line(r0, c0, r1, c1)
            for dr in (-1, 0, 1):
                masks[i, np.clip(rr + dr, 0, size - 1), cc] = 1
    images[:, 0][masks == 1] -= 0.25
    return np.clip(images, 0, 1), masks


def dice(pred: np.ndarray, truth: np.ndarray, label: int = 1) -> float:
    p, t = pred == label, truth == label
    return 2 * (p & t).sum() / (p.sum() + t.sum())


def test_learns_synthetic_vessels_2d():
    images, masks = vessels(8)
    forest = PixelForest(n_estimators=20, max_samples_per_image=1000, n_jobs=1).fit(images[:6], masks[:6])
    proba = forest.predict_proba(images[6:])
    assert proba.shape == (2, 2, 64, 64) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    labels = forest.predict(images[6:])
    assert labels.dtype == np.uint8 and labels.shape == (2, 64, 64)
    assert dice(labels, masks[6:]) > 0.7


def test_learns_blobs_3d_with_three_classes():
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:20, :20, :20]
    images, masks = [], []
    for _ in range(4):
        c = rng.integers(7, 13, 3)
        r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        mask = np.where(r < 3, 2, np.where(r < 6, 1, 0)).astype(np.uint8)  # core 2 inside shell 1
        image = (0.2 + 0.3 * (mask == 1) + 0.6 * (mask == 2) + rng.normal(0, 0.05, mask.shape)).astype(np.float32)
        images.append(image[None])
        masks.append(mask)
    forest = PixelForest(n_estimators=20, max_samples_per_image=900, n_jobs=1).fit(images[:3], masks[:3])
    labels = forest.predict(images[3:])  # a list in, a list out
    assert isinstance(labels, list) and labels[0].shape == (20, 20, 20)
    assert dice(labels[0], masks[3], 1) > 0.7 and dice(labels[0], masks[3], 2) > 0.7


def test_sampling_is_balanced_inside_the_fov_and_weighted_back():
    mask = np.zeros((40, 40), np.int64)
    mask[:, :4] = 1  # 10 % foreground
    fov = np.zeros((40, 40), bool)
    fov[:, :20] = True
    idx, weights = PixelForest(max_samples_per_image=100)._sample(mask, fov, np.random.default_rng(0))
    assert fov.reshape(-1)[idx].all() and len(np.unique(idx)) == idx.size == 100
    labels = mask.reshape(-1)[idx]
    assert (labels == 1).sum() == (labels == 0).sum() == 50
    # the weights restore the class frequencies inside the FOV (160 of 800 pixels are vessel)
    assert weights[labels == 1].sum() == pytest.approx(160 / 800)
    assert weights.sum() == pytest.approx(1.0)


def test_chunked_prediction_on_a_large_image_matches_one_chunk():
    images, masks = vessels(3, size=48)
    forest = PixelForest(n_estimators=5, max_samples_per_image=500, n_jobs=1).fit(images, masks)
    big = np.tile(images[0], (1, 11, 11))[:, :512, :512]
    forest.chunk_pixels = 40_000  # 7 chunks
    proba = forest.predict_proba_image(big)
    assert proba.shape == (2, 512, 512) and proba.dtype == np.float32
    forest.chunk_pixels = 512 * 512
    np.testing.assert_array_equal(proba, forest.predict_proba_image(big))


def test_persistence_round_trip(tmp_path):
    images, masks = vessels(3, size=32)
    forest = PixelForest(n_estimators=5, max_samples_per_image=300, n_jobs=1).fit(images, masks)
    sha = save_estimator(forest, tmp_path / "model.joblib")
    loaded = load_estimator(tmp_path / "model.joblib", sha)
    np.testing.assert_array_equal(loaded.predict_proba(images), forest.predict_proba(images))


def test_registered_as_a_classical_segmentation_model():
    spec = get_model("pixel-forest")
    assert spec.kind == "classical" and spec.tasks == ("segmentation",) and spec.dims == (2, 3)
    forest = spec.build("segmentation", seed=3, n_estimators=7)
    assert isinstance(forest, PixelForest) and forest.seed == 3 and forest.n_estimators == 7
    with pytest.raises(ValueError, match="segmentation model"):
        spec.build("binary")


def test_bad_input_gives_one_line_errors():
    images, masks = vessels(2, size=32)
    forest = PixelForest(n_estimators=2, n_jobs=1)
    with pytest.raises(MedlensError, match="does not match"):
        forest.fit(images, masks[:, :16])
    with pytest.raises(MedlensError, match="integer labels"):
        forest.fit(images, masks.astype(np.float32))
    with pytest.raises(MedlensError, match="2 images, 1 masks"):
        forest.fit(images, masks[:1])
    with pytest.raises(MedlensError, match="channels or dimensions differ"):
        forest.fit([images[0], np.zeros((3, 32, 32), np.float32)], masks)
    with pytest.raises(MedlensError, match="FOV mask 0 is empty"):
        forest.fit(images, masks, fov=np.zeros_like(masks, bool))
    forest.fit(images, masks)
    with pytest.raises(MedlensError, match="fitted on 1-channel 2D"):
        forest.predict_proba_image(np.zeros((3, 32, 32), np.float32))
