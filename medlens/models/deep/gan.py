"""GAN-based augmentation: a class-conditional DCGAN for small 2D images (28-64 px).

- Generator: noise z and a learned class embedding are concatenated, projected to a small
  s0 x s0 map, then upsampled k times by 4x4 stride-2 transposed convolutions (BatchNorm +
  ReLU) to the image size; tanh output, mapped to [0, 1].
- Discriminator: strided 4x4 convolutions with spectral norm and LeakyReLU, global sum
  pooling, and a projection head (Miyato & Koyama 2018): score = linear(h) + <embed(y), h>.
- Loss: hinge loss; Adam (betas 0.0/0.9) with two time-scales: generator 1e-4, discriminator
  4e-4 by default. On CPU a run is deterministic by seed.

Image sizes: square, H = s0 * 2**k with s0 >= 4 and k >= 1 (28 = 7*4, 32 = 4*8, 64 = 4*16).
The training loop is plain PyTorch (hand-written: MONAI has no conditional GAN for classification
data). :func:`augment_minority` adds generated samples of the minority class(es).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medlens.errors import MedlensError
from medlens.progress import bar

GAN_FORMAT = "medlens-cgan-1"


@dataclass(frozen=True)
class GANConfig:
    """Architecture of a :class:`ConditionalGAN` (stored in the weights file's metadata)."""

    img_size: int
    channels: int
    num_classes: int
    z_dim: int = 64
    base_channels: int = 32

    @property
    def layout(self) -> tuple[int, int]:
        """(s0, k): the start size and the number of 2x upsamplings giving ``img_size``."""
        return gan_layout(self.img_size)


def gan_layout(img_size: int) -> tuple[int, int]:
    """(s0, k) with img_size == s0 * 2**k, k as large as possible while s0 >= 4; k >= 1."""
    k = 0
    while img_size % (2 ** (k + 1)) == 0 and img_size // (2 ** (k + 1)) >= 4:
        k += 1
    if k < 1:
        raise MedlensError(f"GAN image size must be even and at least 8 px, got {img_size}")
    return img_size // 2**k, k


def _widths(cfg: GANConfig) -> list[int]:
    """Feature-map widths at sizes s0, 2*s0, ..., img_size/2 (base * 2**(k-1) down to base, capped at 8x)."""
    _, k = cfg.layout
    return [cfg.base_channels * min(2 ** (k - 1 - i), 8) for i in range(k)]


class Generator(nn.Module):
    """(z, class) -> image in [-1, 1] of shape (C, img_size, img_size).

    DCGAN layout: linear projection to s0 x s0, then k transposed 4x4 stride-2 convolutions
    (BatchNorm + ReLU in between), the last one producing the image channels directly.
    """

    def __init__(self, cfg: GANConfig):
        super().__init__()
        s0, k = cfg.layout
        widths = _widths(cfg)
        self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim)
        self.project = nn.Sequential(
            nn.Linear(2 * cfg.z_dim, widths[0] * s0 * s0, bias=False),
            nn.Unflatten(1, (widths[0], s0, s0)),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        ups: list[nn.Module] = []
        for i in range(k - 1):
            ups += [
                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.ReLU(inplace=True),
            ]
        ups += [nn.ConvTranspose2d(widths[-1], cfg.channels, 4, stride=2, padding=1), nn.Tanh()]
        self.upsample = nn.Sequential(*ups)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.project(torch.cat([z, self.embed(y)], dim=1)))


class Discriminator(nn.Module):
    """(image in [-1, 1], class) -> realness score, with spectral norm and a projection head.

    k strided 4x4 convolutions down to s0 x s0, a minibatch-standard-deviation channel
    (Karras et al. 2018: lets the discriminator see a batch without variety, which counters
    mode collapse), one 3x3 convolution, global sum pooling, then score = linear(h) + <embed(y), h>.
    """

    def __init__(self, cfg: GANConfig):
        super().__init__()
        _, k = cfg.layout
        widths = _widths(cfg)  # index 0 is the s0 resolution
        layers: list[nn.Module] = []
        in_ch = cfg.channels
        for i in reversed(range(k)):
            layers += [spectral_norm(nn.Conv2d(in_ch, widths[i], 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            in_ch = widths[i]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(spectral_norm(nn.Conv2d(in_ch + 1, in_ch, 3, padding=1)), nn.LeakyReLU(0.2))
        self.linear = spectral_norm(nn.Linear(in_ch, 1))
        self.embed = spectral_norm(nn.Embedding(cfg.num_classes, in_ch))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        spread = f.std(dim=0, unbiased=False).mean().expand(f.shape[0], 1, *f.shape[2:])
        h = self.head(torch.cat([f, spread], dim=1)).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


class ConditionalGAN(nn.Module):
    """Generator + discriminator + config; ``history`` holds per-epoch mean losses."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.config = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        self.history: list[dict[str, float]] = []

    @property
    def num_classes(self) -> int:
        return self.config.num_classes


# --------------------------------------------------------------------------------------------
# training


def _check_data(X: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y).reshape(-1)
    if X.ndim != 4 or X.shape[2] != X.shape[3]:
        raise MedlensError(f"GAN training needs square 2D images (N, C, H, W), got shape {X.shape}")
    if len(X) != len(y):
        raise MedlensError(f"GAN training: {len(X)} images but {len(y)} labels")
    if len(X) == 0:
        raise MedlensError("GAN training: no images")
    if X.min() < -1e-3 or X.max() > 1 + 1e-3:
        raise MedlensError(f"GAN training needs images scaled to [0, 1], got [{X.min():.3g}, {X.max():.3g}]")
    if y.min() < 0 or y.max() >= num_classes:
        raise MedlensError(
            f"GAN training: labels must be class indices in [0, {num_classes}), got [{y.min()}, {y.max()}]"
        )
    return X.astype(np.float32, copy=False), y.astype(np.int64)


def train_gan(
    X: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    show_progress: bool = True,
    z_dim: int = 64,
    base_channels: int = 32,
    lr: float = 1e-4,
    lr_d: float | None = None,
    betas: tuple[float, float] = (0.0, 0.9),
) -> ConditionalGAN:
    """Train a class-conditional GAN on images ``X`` (N, C, H, W) in [0, 1] with labels ``y``.

    Every random choice (initialization, shuffling, noise) comes from ``seed``; the global torch
    RNG is left untouched. One discriminator step per generator step, hinge loss, Adam with
    the two-timescale rule (discriminator learning rate ``lr_d``, by default 4 x ``lr``).
    """
    X, y = _check_data(X, y, num_classes)
    cfg = GANConfig(
        img_size=X.shape[2], channels=X.shape[1], num_classes=num_classes, z_dim=z_dim, base_channels=base_channels
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gan = ConditionalGAN(cfg)
    rng = torch.Generator().manual_seed(seed)
    G, D = gan.generator, gan.discriminator
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=4 * lr if lr_d is None else lr_d, betas=betas)
    images = torch.from_numpy(X) * 2 - 1
    labels = torch.from_numpy(y)
    gan.train()
    progress = bar(epochs, desc="GAN", unit="epoch", disable=not show_progress)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=rng)
        sums = {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0}
        steps = 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            real, cls = images[idx], labels[idx]
            z = torch.randn(len(idx), z_dim, generator=rng)
            fake = G(z, cls)
            # discriminator: hinge loss on real and (detached) fake
            d_real = D(real, cls)
            d_fake = D(fake.detach(), cls)
            loss_d = torch.relu(1 - d_real).mean() + torch.relu(1 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # generator: raise the discriminator's score of the fakes
            loss_g = -D(fake, cls).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            sums["loss_d"] += loss_d.item()
            sums["loss_g"] += loss_g.item()
            sums["d_real"] += d_real.mean().item()
            sums["d_fake"] += d_fake.mean().item()
            steps += 1
        gan.history.append({"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}})
        progress.update(1)
        progress.set_description(f"GAN loss_d={sums['loss_d'] / steps:.3f} loss_g={sums['loss_g'] / steps:.3f}")
    progress.close()
    _recalibrate_batchnorm(gan, labels, rng)
    gan.eval()
    return gan


@torch.no_grad()
def _recalibrate_batchnorm(gan: ConditionalGAN, labels: torch.Tensor, rng: torch.Generator, batches: int = 16) -> None:
    """Recompute the generator's BatchNorm running statistics for the final weights.

    The running averages collected during training lag behind a generator that is still
    changing; sampling uses eval mode, so the statistics are re-estimated (cumulative average)
    from generated batches with the training label mix.
    """
    G = gan.generator
    norms = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    G.train()
    for _ in range(batches):
        idx = torch.randint(len(labels), (128,), generator=rng)
        G(torch.randn(128, gan.config.z_dim, generator=rng), labels[idx])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


# --------------------------------------------------------------------------------------------
# sampling and augmentation


@torch.no_grad()
def generate(gan: ConditionalGAN, class_index: int, n: int, seed: int, *, chunk: int = 256) -> np.ndarray:
    """``n`` generated images of class ``class_index``: float32 (n, C, H, W) in [0, 1]."""
    if not 0 <= class_index < gan.num_classes:
        raise MedlensError(f"class index {class_index} is not in [0, {gan.num_classes})")
    G = gan.generator
    was_training = G.training
    G.eval()
    rng = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        z = torch.randn(m, gan.config.z_dim, generator=rng)
        y = torch.full((m,), class_index, dtype=torch.long)
        out.append(((G(z, y) + 1) / 2).clamp(0, 1))
    G.train(was_training)
    c, s = gan.config.channels, gan.config.img_size
    return torch.cat(out).numpy() if out else np.zeros((0, c, s, s), np.float32)


def augment_minority(
    X: np.ndarray,
    y: np.ndarray,
    gan: ConditionalGAN,
    *,
    seed: int,
    target: str | float = "balance",
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Append generated samples of under-represented classes.

    ``target="balance"`` fills every class present in ``y`` up to the largest class count;
    a float r in (0, 1] fills each class up to ``ceil(r * largest count)`` (classes already
    above stay as they are). Classes absent from ``y`` are not generated. ``y`` may be (N,)
    or (N, 1); the output keeps its shape convention and both dtypes. ``info`` records counts
    before and after and the number generated per class.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    flat = y.reshape(-1).astype(np.int64)
    if len(flat) != len(X):
        raise MedlensError(f"augment_minority: {len(X)} images but {len(flat)} labels")
    if tuple(X.shape[1:]) != (gan.config.channels, gan.config.img_size, gan.config.img_size):
        raise MedlensError(
            f"augment_minority: images of shape {X.shape[1:]} do not match the GAN's "
            f"({gan.config.channels}, {gan.config.img_size}, {gan.config.img_size})"
        )
    counts = np.bincount(flat, minlength=gan.num_classes)
    if target == "balance":
        goal = int(counts.max())
    elif isinstance(target, (int, float)) and 0 < float(target) <= 1:
        goal = math.ceil(float(target) * counts.max())
    else:
        raise MedlensError(f"augment_minority: target must be 'balance' or a ratio in (0, 1], got {target!r}")
    new_x, new_y, generated = [X], [flat], {}
    for c in range(gan.num_classes):
        need = goal - int(counts[c])
        if counts[c] == 0 or need <= 0:
            continue
        new_x.append(generate(gan, c, need, seed=seed + 7919 * c).astype(X.dtype, copy=False))
        new_y.append(np.full(need, c, dtype=np.int64))
        generated[c] = need
    X_aug = np.concatenate(new_x)
    y_aug = np.concatenate(new_y).astype(y.dtype, copy=False).reshape((-1,) + y.shape[1:])
    after = np.bincount(y_aug.reshape(-1).astype(np.int64), minlength=gan.num_classes)
    info = {
        "target": target,
        "goal_per_class": goal,
        "counts_before": {int(c): int(n) for c, n in enumerate(counts)},
        "counts_after": {int(c): int(n) for c, n in enumerate(after)},
        "generated": generated,
    }
    return X_aug, y_aug, info


def save_sample_grid(
    gan: ConditionalGAN,
    path: str | Path,
    class_names: Sequence[str],
    n_per_class: int = 8,
    seed: int = 0,
) -> Path:
    """A PNG with one row of ``n_per_class`` generated images per class, labelled by name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(class_names) != gan.num_classes:
        raise MedlensError(f"{len(class_names)} class names for a GAN of {gan.num_classes} classes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = gan.num_classes
    fig = Figure(figsize=(1.1 * n_per_class + 1.2, 1.1 * rows + 0.3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, n_per_class, squeeze=False)
    for c in range(rows):
        imgs = generate(gan, c, n_per_class, seed=seed + c)
        for j in range(n_per_class):
            ax = axes[c][j]
            img = imgs[j]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.transpose(img[:3], (1, 2, 0)))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c][0].set_ylabel(str(class_names[c]), rotation=0, ha="right", va="center")
    fig.suptitle("GAN samples (one row per class)", fontsize=9)
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------------------------
# persistence


def save_gan(gan: ConditionalGAN, path: str | Path) -> Path:
    """Save generator and discriminator weights plus the config as one ``.safetensors`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in gan.state_dict().items()}
    meta = {"format": GAN_FORMAT, "config": json.dumps(asdict(gan.config)), "history": json.dumps(gan.history)}
    save_file(state, str(path), metadata=meta)
    return path


def load_gan(path: str | Path) -> ConditionalGAN:
    """Load a GAN written by :func:`save_gan` (safetensors only, never pickle)."""
    path = Path(path)
    if not path.is_file():
        raise MedlensError("GAN file not found", path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise MedlensError(f"not a readable safetensors file ({e})", path) from None
    if meta.get("format") != GAN_FORMAT:
        raise MedlensError(f"not a medlens GAN file (format {meta.get('format')!r})", path)
    gan = ConditionalGAN(GANConfig(**json.loads(meta["config"])))
    gan.load_state_dict(state)
    gan.history = json.loads(meta.get("history", "[]"))
    gan.eval()
    return gan
