"""In-memory data for Lightning: whole splits as tensors, batches cut by indexing.

Data sets up to MedMNIST size fit in memory, so the loader does no per-sample Python work:
:class:`TensorBatches` implements ``__getitems__``, so the ``DataLoader`` fetches a whole batch
with one fancy-indexing call, and the collate function passes it through unchanged. This keeps
the loader as fast as a hand-written PyTorch loop. Augmentation happens on the batch inside the
LightningModule (``augment_batch``), not per sample here.

Segmentation (:class:`SegmentationDataModule`) keeps whole cases of varying shapes and serves
random training patches (:class:`PatchDataset`) and whole validation cases (:class:`CaseDataset`).
"""

from __future__ import annotations

from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler


class TensorBatches(Dataset):
    """A dataset over aligned tensors that returns whole batches when asked for several indices."""

    def __init__(self, *tensors: torch.Tensor):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorBatches needs tensors of equal length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int):
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def pass_through(batch):
    """Collate for :class:`TensorBatches`: the batch is already stacked."""
    return batch


def sample_weights(y: np.ndarray) -> np.ndarray:
    """Per-sample weights that make every class equally likely under a weighted sampler."""
    y = np.asarray(y)
    if y.ndim > 1:  # multi-label: weight by the rarest positive label of each sample
        freq = y.mean(axis=0).clip(1e-6, None)
        w = np.where(y > 0, 1.0 / freq, 0.0).max(axis=1)
        return np.where(w > 0, w, 1.0 / max((1 - y.max(axis=1)).mean(), 1e-6))
    counts = np.bincount(y, minlength=int(y.max()) + 1).astype(float)
    return 1.0 / counts.clip(1, None)[y]


class ArrayDataModule(L.LightningDataModule):
    """Train/val/test arrays held as tensors.

    Args:
        arrays: ``{"train": (X, y), "val": (X, y), "test": (X, y)}`` with X float32 channels first.
        batch_size: samples per batch (per device under DDP).
        balance: draw training batches with a class-balancing ``WeightedRandomSampler``.
        num_workers: loader processes (0 is fastest for in-memory tensors).
        seed: seeds the sampler's generator.
    """

    def __init__(self, arrays: dict, *, batch_size: int, balance: bool = False, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.arrays = {
            k: (torch.as_tensor(np.ascontiguousarray(x)), torch.as_tensor(np.asarray(y)))
            for k, (x, y) in arrays.items()
        }
        self.batch_size = int(batch_size)
        self.balance = balance
        self.num_workers = num_workers
        self.seed = seed

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        x, y = self.arrays[split]
        dataset = TensorBatches(x, y)
        sampler = None
        if train and self.balance:
            generator = torch.Generator().manual_seed(self.seed)
            weights = torch.as_tensor(sample_weights(y.numpy()), dtype=torch.double)
            sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            collate_fn=pass_through,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


# -- segmentation ---------------------------------------------------------------------------------
class PatchDataset(Dataset):
    """Random training patches (image, mask) from whole cases held in memory.

    Item ``i`` comes from case ``i % n_cases``; ``len`` is ``n_cases * patches_per_case`` (one
    epoch). With probability ``pos_fraction`` the patch is centred on a random foreground voxel,
    else on a random voxel (as MONAI's ``RandCropByPosNegLabel`` with pos/neg ratio, hand-written
    here so that only the foreground indices, not every background voxel, are kept per case).
    Cases smaller than the patch are zero-padded. ``augmentation`` (see
    :func:`medlens.training.config.segmentation_augmentation`) applies MONAI dictionary transforms
    (flips, quarter turns; for ``standard`` also rotation, scaling and intensity changes) to image
    and mask together.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        patch: Sequence[int],
        patches_per_case: int,
        pos_fraction: float,
        augmentation: dict | None,
        seed: int,
    ):
        self.patch = np.asarray(patch, dtype=int)
        self.images, self.masks = [], []
        for image, mask in zip(images, masks):
            pad = [(0, max(0, int(p) - s)) for p, s in zip(self.patch, mask.shape)]
            self.images.append(np.pad(image, [(0, 0), *pad]))
            self.masks.append(np.pad(mask, pad))
        self.foreground = [np.flatnonzero(m).astype(np.int64) for m in self.masks]
        self.patches_per_case = int(patches_per_case)
        self.pos_fraction = float(pos_fraction)
        self.rng = np.random.default_rng(seed)
        self.augment = _patch_augmentation(augmentation, seed)

    def __len__(self) -> int:
        return len(self.images) * self.patches_per_case

    def __getitem__(self, index: int):
        case = int(index) % len(self.images)
        mask, fg = self.masks[case], self.foreground[case]
        shape = np.asarray(mask.shape)
        if len(fg) and self.rng.random() < self.pos_fraction:
            centre = np.asarray(np.unravel_index(fg[self.rng.integers(len(fg))], mask.shape))
        else:
            centre = self.rng.integers(0, shape)
        start = np.clip(centre - self.patch // 2, 0, shape - self.patch)
        window = tuple(slice(int(a), int(a + p)) for a, p in zip(start, self.patch))
        x = self.images[case][(slice(None), *window)]
        y = mask[window][None]
        if self.augment is not None:
            out = self.augment({"image": x, "label": y})
            x, y = out["image"], out["label"]
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32), torch.as_tensor(
            np.ascontiguousarray(y), dtype=torch.long
        )


def _patch_augmentation(config: dict | None, seed: int):
    """MONAI dictionary transforms moving image and label together (None: no augmentation); see
    :func:`medlens.training.config.segmentation_augmentation` for the keys."""
    if not config:
        return None
    import math

    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
    )

    keys, prob = ["image", "label"], float(config.get("prob", 0.5))
    steps: list = []
    if config.get("rotate_prob") or config.get("scale_prob"):
        dims = len(config.get("flip_axes") or [0, 0])
        angle = math.radians(float(config.get("rotate_degrees", 0.0)))
        low, high = config.get("scale_range", [1.0, 1.0])
        # one RandAffined per kind so that each fires with its own probability, as in nnU-Net
        if config.get("rotate_prob"):
            rotate = (angle,) if dims == 2 else (angle, angle, angle)
            steps.append(_affine(keys, float(config["rotate_prob"]), rotate_range=rotate))
        if config.get("scale_prob"):
            # MONAI's scale_range is added to 1: (low - 1, high - 1) gives factors in [low, high]
            steps.append(_affine(keys, float(config["scale_prob"]), scale_range=[(low - 1, high - 1)] * dims))
    if config.get("brightness_prob"):
        low, high = config["brightness"]
        steps.append(RandScaleIntensityd("image", factors=(low - 1, high - 1), prob=float(config["brightness_prob"])))
    if config.get("gamma_prob"):
        steps.append(RandAdjustContrastd("image", gamma=tuple(config["gamma"]), prob=float(config["gamma_prob"])))
    if config.get("noise_prob"):
        steps.append(RandGaussianNoised("image", std=float(config["noise_std"]), prob=float(config["noise_prob"])))
    steps += [RandFlipd(keys, prob=prob, spatial_axis=int(a)) for a in config.get("flip_axes") or []]
    if config.get("rotate90_axes"):
        steps.append(RandRotate90d(keys, prob=prob, max_k=3, spatial_axes=tuple(config["rotate90_axes"])))
    compose = Compose(steps, map_items=False).set_random_state(seed=seed)

    def apply(item: dict) -> dict:
        out = compose(item)
        return {k: np.asarray(v) for k, v in out.items()}

    return apply


def _affine(keys: list[str], prob: float, **ranges):
    """A MONAI ``RandAffined``: bilinear for the image, nearest for the label, zeros outside."""
    from monai.transforms import RandAffined

    return RandAffined(keys, prob=prob, mode=("bilinear", "nearest"), padding_mode="zeros", **ranges)


class CaseDataset(Dataset):
    """Whole cases (image (C, *spatial), mask (1, *spatial)) for validation, one per item."""

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]):
        self.images, self.masks = list(images), list(masks)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return torch.as_tensor(self.images[index]), torch.as_tensor(self.masks[index][None], dtype=torch.long)


class SegmentationDataModule(L.LightningDataModule):
    """Patches of the training cases (:class:`PatchDataset`) and whole validation cases.

    Args:
        cases: ``{"train": (images, masks), "val": (images, masks)}`` from
            :func:`medlens.training.segmentation.load_cases`.
        batch_size: patches per batch (per device under DDP); validation takes one case at a time.
        patch, patches_per_case, pos_fraction, augmentation, seed: see :class:`PatchDataset`.
    """

    def __init__(
        self,
        cases: dict,
        *,
        batch_size: int,
        patch: Sequence[int],
        patches_per_case: int,
        pos_fraction: float,
        augmentation: dict | None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.cases = cases
        self.batch_size = int(batch_size)
        self.patch_args = dict(
            patch=patch, patches_per_case=patches_per_case, pos_fraction=pos_fraction, augmentation=augmentation
        )
        self.num_workers = num_workers
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        dataset = PatchDataset(*self.cases["train"], seed=self.seed, **self.patch_args)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(CaseDataset(*self.cases["val"]), batch_size=1, shuffle=False, num_workers=0)
