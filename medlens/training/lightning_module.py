"""The LightningModules that train any registered deep network: classification and segmentation.

:class:`SegmentationModule` trains on random patches with MONAI's ``DiceCELoss`` (Dice +
cross-entropy, softmax over the classes including background) and validates each whole case by
sliding-window inference (:func:`medlens.inference.segment.sliding_window_logits`), logging
``val_loss`` and ``val_dice`` (the mean over cases of the mean foreground Dice,
:func:`medlens.training.segmentation.dice_per_class`). Both modules share the optimisers
(:func:`optimisers`).

:class:`ClassifierModule`:

Loss per task: cross-entropy for binary / multi-class / ordinal (optionally class-weighted),
``BCEWithLogits`` for multi-label (optionally with ``pos_weight``). AdamW (or Adam/SGD) with a
cosine or one-cycle schedule. The training batch is augmented on the fly with
:func:`medlens.data.transforms.augment_batch`. Each epoch logs ``train_loss``, ``val_loss``,
``val_auc`` and ``val_acc``; ``predict_step`` returns class probabilities.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medlens.inference.bundle import probabilities


def class_weights(y: np.ndarray, task: str, num_outputs: int) -> list[float]:
    """Inverse-frequency weights (mean 1 over classes); ``pos_weight`` = neg/pos for multi-label."""
    y = np.asarray(y)
    if task == "multilabel":
        pos = y.sum(axis=0).astype(float)
        neg = len(y) - pos
        return (neg / pos.clip(1, None)).clip(0.1, 100).tolist()
    counts = np.bincount(y, minlength=num_outputs).astype(float)
    weights = len(y) / (num_outputs * counts.clip(1, None))
    return weights.tolist()


class ClassifierModule(L.LightningModule):
    """Wraps the network ``model_name`` from the registry (``spec.build(...)`` returns logits).

    Args:
        model_name: registry name of a deep network.
        in_channels, num_outputs, spatial_dims, img_size: passed to ``spec.build``.
        task: "binary", "multiclass", "ordinal" or "multilabel".
        lr, weight_decay, optimizer, scheduler, epochs: optimisation settings.
        loss_weights: class weights (CE) or ``pos_weight`` (multi-label); ``None`` for none.
        augmentation: config for ``augment_batch``; empty for none.
        seed: seeds the augmentation generator (offset by the rank under DDP).
    """

    def __init__(
        self,
        model_name: str,
        *,
        in_channels: int,
        num_outputs: int,
        spatial_dims: int,
        img_size: int,
        task: str,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        scheduler: str = "cosine",
        epochs: int = 10,
        loss_weights: Sequence[float] | None = None,
        augmentation: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        from medlens.models.registry import get_model

        spec = get_model(model_name)
        self.net: nn.Module = spec.build(
            in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, img_size=img_size
        )
        self.task = task
        weights = torch.as_tensor(loss_weights, dtype=torch.float32) if loss_weights is not None else None
        self.register_buffer("loss_weights", weights, persistent=False)
        self.augmentation = dict(augmentation or {})
        self._generator: torch.Generator | None = None
        self._val_probs: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    # -- forward and loss -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=self.loss_weights)
        return F.cross_entropy(logits, y.long().view(-1), weight=self.loss_weights)

    # -- steps ------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._generator = torch.Generator()  # CPU: augment_batch draws on the CPU, then moves
        self._generator.manual_seed(int(self.hparams.seed) * 1000 + self.global_rank)
        if self._channels_last:
            self.net.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        self.net.to(memory_format=torch.contiguous_format)  # exported weights are plain tensors

    @property
    def _channels_last(self) -> bool:
        """2D networks train channels-last (NHWC): oneDNN's convolutions are faster in it, most of
        all under bf16 mixed precision."""
        return int(self.hparams.spatial_dims) == 2

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last and x.dim() == 4 else x

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.augmentation:
            from medlens.data.transforms import augment_batch

            x = augment_batch(x, self.augmentation, self._generator)
        x = self._layout(x)
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(self._layout(x))
        self.log(
            "val_loss",
            self.loss(logits, y),
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(x),
            sync_dist=True,
        )
        self._val_probs.append(probabilities(logits, self.task).detach())
        self._val_labels.append(y.detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val_probs:
            return
        probs = torch.cat(self._val_probs)
        labels = torch.cat(self._val_labels)
        self._val_probs.clear()
        self._val_labels.clear()
        if self.trainer.world_size > 1:  # every rank scores the full validation set
            probs = self.all_gather(probs).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        auc, acc = _auc_acc(labels.cpu().numpy(), probs.cpu().numpy(), self.task)
        self.log("val_auc", auc, prog_bar=True, sync_dist=True)  # equal on every rank: the mean is the value
        self.log("val_acc", acc, prog_bar=True, sync_dist=True)

    def predict_step(self, batch, batch_idx: int = 0, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return probabilities(self(x), self.task)

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        return optimisers(self)


def optimisers(module: L.LightningModule):
    """AdamW (or Adam / SGD; fused where the parameters allow) with a cosine, one-cycle or no schedule, from ``module.hparams``."""
    hp = module.hparams
    params = list(module.parameters())
    # one fused kernel for all parameters (CPU and CUDA): resnet18's AdamW step at batch 16 took
    # 13 ms instead of 24 ms on the 2-core CPU (2026-12-04)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if hp.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay, fused=fused)
    elif hp.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
    else:
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
    if hp.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(hp.epochs)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    if hp.scheduler == "onecycle":
        total = int(module.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=max(1, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    return opt


def _auc_acc(y: np.ndarray, probs: np.ndarray, task: str) -> tuple[float, float]:
    """Validation AUC and accuracy via the shared metrics; NaN when AUC is undefined."""
    from medlens.evaluation.metrics import classification_metrics

    m = classification_metrics(y, probs, task)
    auc = m.get("auc", m.get("AUC", math.nan))
    acc = m.get("acc", m.get("ACC", math.nan))
    return float(auc if auc is not None else math.nan), float(acc if acc is not None else math.nan)


class SegmentationModule(L.LightningModule):
    """Wraps the segmentation network ``model_name`` from the registry (per-voxel logits).

    Args:
        model_name: registry name of a segmentation network.
        in_channels, num_outputs (classes with background), spatial_dims: passed to ``spec.build``.
        patch_size: the training patch (``spec.build``'s ``img_size``; the sliding window's size).
        lr, weight_decay, optimizer, scheduler, epochs: optimisation settings (:func:`optimisers`).
        seed: recorded with the hyper-parameters (patches are drawn by the data module).
    """

    def __init__(
        self,
        model_name: str,
        *,
        in_channels: int,
        num_outputs: int,
        spatial_dims: int,
        patch_size: Sequence[int],
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        scheduler: str = "cosine",
        epochs: int = 10,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        from monai.losses import DiceCELoss

        from medlens.models.registry import get_model

        self.patch_size = [int(p) for p in patch_size]
        self.net: nn.Module = get_model(model_name).build(
            in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, img_size=self.patch_size
        )
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        from medlens.inference.segment import sliding_window_logits
        from medlens.training.segmentation import dice_per_class

        x, y = batch  # one whole case
        logits = torch.as_tensor(sliding_window_logits(self.net, x, self.patch_size))
        labels = logits.argmax(dim=1)[0].cpu().numpy()
        dice = float(dice_per_class(labels, y[0, 0].cpu().numpy(), int(self.hparams.num_outputs)).mean())
        common = dict(on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
        self.log("val_loss", self.loss(logits, y), prog_bar=True, **common)
        self.log("val_dice", dice, prog_bar=True, **common)

    def configure_optimizers(self):
        return optimisers(self)
