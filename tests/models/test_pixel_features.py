"""Per-pixel filter bank: shapes, dtype and names in 2D/3D, and that vesselness finds a line."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.models.classical.pixel_features import feature_names, pixel_features


@pytest.mark.parametrize(
    ("shape", "color", "n_features"),
    [
        ((1, 32, 40), "gray", 1 + 3 * 7),  # intensity + 3 sigmas x (gauss, gradmag, log, 2 eigvals, 2 frangi)
        ((3, 32, 40), "gray", 3 + 1 + 3 * 7),  # 3 channels + grey, filters on grey
        ((3, 32, 40), "channels", 3 + 1 + 3 * 3 * 7),  # filters on each channel
        ((1, 12, 16, 20), "gray", 1 + 3 * 8),  # 3 Hessian eigenvalues in 3D
    ],
)
def test_shape_dtype_and_names(shape, color, n_features):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    feats = pixel_features(image, color=color)
    assert feats.shape == (n_features, *shape[1:])
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    names = feature_names(shape[0], len(shape) - 1, color=color)
    assert len(names) == n_features and len(set(names)) == n_features
    np.testing.assert_array_equal(feats[: shape[0]], image)  # intensities come first, unchanged


def test_sigmas_change_the_number_of_features():
    feats = pixel_features(np.zeros((1, 16, 16), np.float32), sigmas=(1.5,))
    assert feats.shape == (1 + 7, 16, 16)
    assert feature_names(1, 2, sigmas=(1.5,))[1] == "gauss_s1.5"


def test_vesselness_responds_to_a_line_not_to_flat_background():
    # flat background with faint noise (a noiseless line has no curvature along it, which Frangi's
    # polarity test cannot tell apart) and a dark vertical vessel, 3 px wide
    image = 0.6 + np.random.default_rng(0).normal(0, 0.01, (1, 64, 64)).astype(np.float32)
    image[0, :, 30:33] -= 0.4
    names = feature_names(1, 2)
    feats = pixel_features(image)
    dark, bright = feats[names.index("frangi_dark_s2")], feats[names.index("frangi_bright_s2")]
    on_line, flat = dark[10:54, 31].mean(), dark[10:54, 5:15].mean()
    assert on_line > 10 * max(flat, 1e-6) and on_line > 0.1
    assert bright[10:54, 31].mean() < 0.1 * on_line  # the bright-ridge filter ignores a dark line


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="expected one image"):
        pixel_features(np.zeros((16, 16), np.float32))
    with pytest.raises(ValueError, match="color"):
        pixel_features(np.zeros((1, 16, 16), np.float32), color="rgb")
