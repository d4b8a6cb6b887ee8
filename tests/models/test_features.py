"""ImageFeatures: shapes for 2D gray / RGB / 3D, size independence, and that features carry signal."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from medlens.models.classical.features import ImageFeatures

ALL = ("raw", "hog", "lbp", "glcm", "hist")


def _images(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _width(kind, **kw) -> int:
    return ImageFeatures((kind,), **kw).fit_transform(_images((1, 1, 24, 24))).shape[1]


def test_2d_gray_shape_and_lengths():
    X = _images((5, 1, 28, 28))
    F = ImageFeatures(ALL).fit_transform(X)
    assert F.shape == (5, sum(_width(k) for k in ALL))
    assert F.dtype == np.float64 and np.isfinite(F).all()
    # documented lengths: raw 16x16, LBP (8+2)+(16+2) bins, GLCM 6 props x 2 distances x 4 angles,
    # hist 32 bins + 11 statistics, HOG 4x4 cells -> 3x3 blocks of 2x2 cells x 9 orientations
    assert (_width("raw"), _width("lbp"), _width("glcm"), _width("hist"), _width("hog")) == (256, 28, 48, 43, 324)


def test_2d_rgb_gray_vs_channels():
    X = _images((4, 3, 28, 28))
    gray = ImageFeatures(ALL).fit_transform(X)
    per_channel = ImageFeatures(ALL, color="channels").fit_transform(X)
    assert per_channel.shape == (4, 3 * gray.shape[1])
    # gray mode is the luminance image: same as featurising rgb2gray by hand
    lum = (0.2125 * X[:, 0] + 0.7154 * X[:, 1] + 0.0721 * X[:, 2])[:, None]
    np.testing.assert_allclose(gray, ImageFeatures(ALL).fit_transform(lum), rtol=1e-5, atol=1e-6)


def test_3d_shape_is_three_axes_of_2d():
    X = _images((3, 1, 12, 20, 16))
    F = ImageFeatures(ALL).fit_transform(X)
    assert F.shape == (3, 3 * _width_all())
    Fmax = ImageFeatures(ALL, slice_aggregate="max", n_slices=2).fit_transform(X)
    assert Fmax.shape == F.shape and not np.allclose(Fmax, F)


def _width_all() -> int:
    return ImageFeatures(ALL).fit_transform(_images((1, 1, 24, 24))).shape[1]


def test_length_does_not_depend_on_image_size():
    f = ImageFeatures(ALL).fit(_images((2, 1, 28, 28)))
    assert f.transform(_images((2, 1, 64, 50))).shape == f.transform(_images((2, 1, 28, 28))).shape


def test_features_separate_textures():
    rng = np.random.default_rng(1)
    smooth = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (6, 1, 32, 1))
    noisy = rng.random((6, 1, 32, 32), dtype=np.float32)
    F = ImageFeatures(("lbp", "glcm")).fit_transform(np.concatenate([smooth, noisy]))
    within = np.linalg.norm(F[:6] - F[:6].mean(0), axis=1).max()
    between = np.linalg.norm(F[:6].mean(0) - F[6:].mean(0))
    assert between > 5 * within


def test_parallel_equals_serial_and_clone():
    X = _images((300, 1, 16, 16))  # more than one chunk of 256 planes
    f = ImageFeatures(ALL)
    np.testing.assert_array_equal(f.fit_transform(X), clone(f).set_params(n_jobs=2).fit_transform(X))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ImageFeatures().fit(np.zeros((4, 28, 28), np.float32))
    with pytest.raises(ValueError, match="kinds"):
        ImageFeatures(("sift",)).fit(_images((2, 1, 8, 8)))
    f = ImageFeatures().fit(_images((2, 1, 16, 16)))
    with pytest.raises(ValueError, match="channel"):
        f.transform(_images((2, 3, 16, 16)))
    with pytest.raises(ValueError, match="NaN"):
        f.transform(np.full((1, 1, 16, 16), np.nan, np.float32))
