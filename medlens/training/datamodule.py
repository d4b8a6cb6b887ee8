"""In-memory data for Lightning: whole splits as tensors, batches cut by indexing.

Data sets up to MedMNIST size fit in memory, so the loader does no per-sample Python work:
:class:`TensorBatches` implements ``__getitems__``, so the ``DataLoader`` fetches a whole batch
with one fancy-indexing call, and the collate function passes it through unchanged. This keeps
the loader as fast as a hand-written PyTorch loop. Augmentation happens on the batch inside the
LightningModule (``augment_batch``), not per sample here.
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


def _pass_through(batch):
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
            collate_fn=_pass_through,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
