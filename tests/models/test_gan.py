"""Conditional GAN: shapes, determinism, class conditioning, augmentation, grid, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import MedlensError
from medlens.models.deep.gan import (
    ConditionalGAN,
    GANConfig,
    augment_minority,
    gan_layout,
    generate,
    load_gan,
    save_gan,
    save_sample_grid,
    train_gan,
)

torch.set_num_threads(1)

SMALL = dict(z_dim=16, base_channels=16, show_progress=False)


def _squares(n=128, size=16, seed=0):
    """Class 0: dark images (0.2), class 1: bright images (0.8), each with a little noise."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    X = np.where(y[:, None, None, None] == 0, 0.2, 0.8) + rng.normal(0, 0.05, (n, 1, size, size))
    return X.clip(0, 1).astype(np.float32), y


@pytest.fixture(scope="module")
def trained():
    """A GAN trained briefly on dark vs bright squares (a few seconds of CPU)."""
    X, y = _squares()
    return train_gan(X, y, num_classes=2, epochs=10, seed=0, batch_size=32, lr=2e-3, **SMALL)


@pytest.mark.parametrize("size,layout", [(28, (7, 2)), (32, (4, 3)), (64, (4, 4)), (16, (4, 2)), (8, (4, 1))])
def test_layout_and_untrained_shapes(size, layout):
    assert gan_layout(size) == layout
    gan = ConditionalGAN(GANConfig(img_size=size, channels=3, num_classes=4, z_dim=8, base_channels=8))
    out = generate(gan, 2, 5, seed=0)
    assert out.shape == (5, 3, size, size) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    score = gan.discriminator(torch.rand(5, 3, size, size), torch.tensor([0, 1, 2, 3, 0]))
    assert score.shape == (5,)


def test_bad_sizes_and_inputs():
    with pytest.raises(MedlensError):
        gan_layout(7)
    X, y = _squares(n=8)
    with pytest.raises(MedlensError, match=r"\[0, 1\]"):
        train_gan(X * 255, y, num_classes=2, epochs=1, seed=0, **SMALL)
    with pytest.raises(MedlensError, match="labels"):
        train_gan(X, y[:4], num_classes=2, epochs=1, seed=0, **SMALL)
    with pytest.raises(MedlensError, match="class indices"):
        train_gan(X, y + 1, num_classes=2, epochs=1, seed=0, **SMALL)


def test_conditioning_learned(trained):
    """Generated class-0 samples look like class 0 (dark), class-1 samples like class 1 (bright)."""
    for c, own, other in ((0, 0.2, 0.8), (1, 0.8, 0.2)):
        means = generate(trained, c, 64, seed=1).mean(axis=(1, 2, 3))
        closer = np.abs(means - own) < np.abs(means - other)
        assert closer.mean() >= 0.9, (c, means.mean())
    assert len(trained.history) == 10 and {"loss_d", "loss_g"} <= set(trained.history[0])


def test_training_and_sampling_are_deterministic(trained):
    X, y = _squares(n=64)
    a = train_gan(X, y, num_classes=2, epochs=2, seed=5, batch_size=32, **SMALL)
    torch.manual_seed(123)  # the global RNG must not matter
    b = train_gan(X, y, num_classes=2, epochs=2, seed=5, batch_size=32, **SMALL)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    np.testing.assert_array_equal(generate(a, 1, 6, seed=3), generate(b, 1, 6, seed=3))
    assert not np.array_equal(generate(a, 1, 6, seed=3), generate(a, 1, 6, seed=4))
    c = train_gan(X, y, num_classes=2, epochs=2, seed=6, batch_size=32, **SMALL)
    assert not torch.equal(a.generator.project[0].weight, c.generator.project[0].weight)


def test_augment_minority_balances_and_ratio(trained):
    X, y = _squares(n=40)
    keep = np.r_[np.flatnonzero(y == 0)[:5], np.flatnonzero(y == 1)]  # 5 dark vs 20 bright
    X, y = X[keep], y[keep].astype(np.uint8).reshape(-1, 1)  # MedMNIST-style (N, 1) uint8 labels
    X_aug, y_aug, info = augment_minority(X, y, trained, seed=0)
    assert X_aug.shape == (40, 1, 16, 16) and y_aug.shape == (40, 1) and y_aug.dtype == np.uint8
    np.testing.assert_array_equal(X_aug[:25], X)  # originals first, unchanged
    assert info["generated"] == {0: 15}
    assert info["counts_before"] == {0: 5, 1: 20} and info["counts_after"] == {0: 20, 1: 20}
    assert (y_aug[25:] == 0).all()
    assert X_aug[25:].mean() < 0.5  # generated minority samples are dark, like class 0
    _, y_half, info = augment_minority(X, y, trained, seed=0, target=0.5)
    assert info["generated"] == {0: 5} and len(y_half) == 30
    with pytest.raises(MedlensError, match="target"):
        augment_minority(X, y, trained, seed=0, target="more")


def test_save_load_round_trip(trained, tmp_path):
    path = save_gan(trained, tmp_path / "gan.safetensors")
    loaded = load_gan(path)
    assert loaded.config == trained.config and loaded.history == trained.history
    np.testing.assert_array_equal(generate(loaded, 0, 4, seed=2), generate(trained, 0, 4, seed=2))
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(MedlensError, match="not a medlens GAN"):
        load_gan(other)


def test_sample_grid_png(trained, tmp_path):
    path = save_sample_grid(trained, tmp_path / "grid.png", ["dark", "bright"], n_per_class=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 50 and img.shape[1] > 100
    with pytest.raises(MedlensError, match="class names"):
        save_sample_grid(trained, tmp_path / "x.png", ["only one"])
