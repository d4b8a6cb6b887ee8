"""The out-of-distribution guard: fitted on training, thresholds on validation, readable reasons."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.errors import MedlensError
from medlens.inference.ood import Guard, colourfulness, fit_guard, intensity_statistics, mahalanobis


def _grey_images(rng, n, side=32):
    return [rng.normal(100, 15, (1, side, side)).astype(np.float32) for _ in range(n)]


def _fitted(rng, *, accept=0.99, n=400, dim=8):
    """A guard on grey 32 x 32 images whose features are two Gaussian classes."""
    images = _grey_images(rng, n)
    x = np.stack([(im - im.mean()) / im.std() for im in images]).astype(np.float32)
    y = np.arange(n) % 2
    f = rng.normal(0, 1, (n, dim)) + 3.0 * y[:, None]
    val_images = _grey_images(rng, n)
    x_val = np.stack([(im - im.mean()) / im.std() for im in val_images]).astype(np.float32)
    f_val = rng.normal(0, 1, (n, dim)) + 3.0 * (np.arange(n) % 2)[:, None]
    guard = fit_guard(
        images=images,
        x_train=x,
        y_train=y,
        f_train=f,
        x_val=x_val,
        f_val=f_val,
        feature_source="test",
        accept=accept,
        modality="DX",
    )
    return guard, x_val, f_val


def test_thresholds_accept_the_stated_share_of_validation_and_fresh_images():
    rng = np.random.default_rng(0)
    guard, x_val, f_val = _fitted(rng)
    assert guard.spec["accepted"]["val"] >= 0.99
    fresh = _grey_images(rng, 300)
    x = np.stack([(im - im.mean()) / im.std() for im in fresh]).astype(np.float32)
    f = rng.normal(0, 1, (300, 8)) + 3.0 * (np.arange(300) % 2)[:, None]
    inside = [guard.check(im, xi, fi).inside for im, xi, fi in zip(fresh, x, f)]
    assert np.mean(inside) >= 0.96
    f[:5] += 25.0  # a few far ones: the batch check (one scoring pass) says what the single checks say
    batch = guard.check_batch(fresh, x, f)
    single = [guard.check(im, xi, fi) for im, xi, fi in zip(fresh, x, f)]
    assert [b.reasons for b in batch] == [s.reasons for s in single] and not any(b.inside for b in batch[:5])
    for b, one in zip(batch, single):
        assert b.scores == pytest.approx(one.scores, rel=1e-9)


def test_far_features_are_refused_with_a_readable_reason():
    rng = np.random.default_rng(1)
    guard, x_val, f_val = _fitted(rng)
    image = _grey_images(rng, 1)[0]
    x = (image - image.mean()) / image.std()
    scope = guard.check(image, x, f_val[0] + 25.0)
    assert not scope.inside
    assert scope.reasons == (
        {
            "check": "features",
            "reason": f"content unlike the training images (feature distance {scope.scores['features']:.3g}, "
            f"accepted up to {guard.spec['thresholds']['features']:.3g})",
        },
    )
    assert scope.describe().startswith("outside what the model was made for: content unlike")


def test_a_colour_photograph_given_to_a_grayscale_xray_model_is_named_as_such():
    rng = np.random.default_rng(2)
    guard, x_val, f_val = _fitted(rng)
    photo = np.stack([np.full((32, 32), 200.0), rng.normal(90, 15, (32, 32)), np.full((32, 32), 20.0)])
    photo = photo.astype(np.float32)
    scope = guard.check(photo, x_val[0], f_val[0])
    assert {"check": "colour", "reason": "colour image; model trained on grayscale DX (X-ray) images"} in scope.reasons


def test_sizes_beyond_the_factor_are_refused_and_within_it_accepted():
    rng = np.random.default_rng(3)
    guard, x_val, f_val = _fitted(rng)
    big = rng.normal(100, 15, (1, 65, 64)).astype(np.float32)  # 65 > 32 * 2
    scope = guard.check(big, x_val[0], f_val[0])
    size = {"check": "size", "reason": "image 65 x 64 px; model trained on 32 x 32 px DX (X-ray) images"}
    assert size in scope.reasons
    near = rng.normal(100, 15, (1, 64, 20)).astype(np.float32)  # 16 <= sides <= 64
    assert not any(r["check"] == "size" for r in guard.check(near, x_val[0], f_val[0]).reasons)


def test_an_intensity_profile_unlike_training_is_named():
    rng = np.random.default_rng(4)
    guard, x_val, f_val = _fitted(rng)
    binary = (rng.random((1, 32, 32)) > 0.9).astype(np.float32)  # nearly all background
    scope = guard.check(binary * 255, binary, f_val[0])
    assert any(r["reason"].startswith("intensities unlike the training images") for r in scope.reasons)


def test_the_guard_round_trips_through_safetensors(tmp_path):
    rng = np.random.default_rng(5)
    guard, x_val, f_val = _fitted(rng)
    guard.save(tmp_path)
    again = Guard.load(tmp_path, guard.spec, modality="DX")
    a = guard.scores(x_val[:5], f_val[:5])
    b = again.scores(x_val[:5], f_val[:5])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4)


def test_a_damaged_guard_file_is_one_line(tmp_path):
    rng = np.random.default_rng(6)
    guard, _, _ = _fitted(rng)
    (tmp_path / "ood.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(MedlensError, match="out-of-distribution guard cannot be read"):
        Guard.load(tmp_path, guard.spec)


def test_bad_settings_are_refused():
    rng = np.random.default_rng(7)
    with pytest.raises(MedlensError, match="share of in-distribution"):
        _fitted(rng, accept=1.0)


def test_measures():
    grey_as_rgb = np.repeat(np.random.default_rng(8).normal(100, 20, (1, 16, 16)), 3, axis=0)
    assert colourfulness(grey_as_rgb) == 0.0
    assert intensity_statistics(np.zeros((2, 3, 8, 8))).shape == (2, 14)
    means, precision = np.zeros((2, 2)), np.eye(2)
    means[1] = [10, 0]
    np.testing.assert_allclose(mahalanobis(np.array([[9.0, 0.0], [0.0, 3.0]]), means, precision), [1.0, 3.0])


def _statistics_by_definition(x: np.ndarray) -> np.ndarray:
    """intensity_statistics spelled out with NumPy's own percentile, min, max and comparisons."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), x.shape[1], -1)
    grey = flat.mean(axis=1)
    lo, hi = grey.min(axis=1, keepdims=True), grey.max(axis=1, keepdims=True)
    tol = 0.01 * np.maximum(hi - lo, 1e-6)
    parts = [
        np.percentile(grey, [1, 5, 25, 50, 75, 95, 99], axis=1).T,
        grey.mean(axis=1, keepdims=True),
        grey.std(axis=1, keepdims=True),
        (grey <= lo + tol).mean(axis=1, keepdims=True),
        (grey >= hi - tol).mean(axis=1, keepdims=True),
    ]
    if x.shape[1] > 1:
        parts.append(flat.mean(axis=2))
    return np.concatenate(parts, axis=1).astype(np.float64)


@pytest.mark.parametrize("shape", [(1, 1, 224, 224), (3, 3, 20, 24), (2, 1, 6, 7, 8), (4, 2, 1, 9)])
def test_intensity_statistics_from_one_sort_equal_their_definition(shape):
    rng = np.random.default_rng(sum(shape))
    x = np.round(rng.random(shape) * 40).astype(np.float32) / 40  # ties, as from 8-bit pictures
    x[0, ..., : shape[-1] // 2] = 0.0  # a dark left part: a large share at the minimum
    x[-1] = 1.0  # a constant image: every pixel at both extremes
    got = intensity_statistics(x)
    assert np.array_equal(got, _statistics_by_definition(x))
    assert got[0, 9] >= 0.4 and got[-1, 9] == got[-1, 10] == 1.0  # the shares at the extremes
