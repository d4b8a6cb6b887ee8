"""Self-supervised pretraining of a registered network's encoder (``medlens pretrain``).

Method ``simclr`` (Chen et al., ICML 2020): every image is seen as two random views
(:func:`medlens.data.transforms.contrastive_augmentation`: crops, turns, flips, contrast, noise);
the encoder (the network without its head, :mod:`medlens.models.deep.encoder`) and a two-layer
projection learn to find each view's partner among the 2N views of a batch (NT-Xent loss at
``temperature``). The projection is discarded; the encoder's tensors are written under the
classifier's own names, so ``medlens train --weights`` loads them into the same network and
trains a fresh head. Under DDP each process contrasts its own batch (no gathering of negatives).

Method ``mim`` (masked image modelling, for ``vit``; SimMIM, Xie et al., CVPR 2022, with the
mask applied to the pixels): each image gets one lightly augmented view, a random ``mask_ratio``
of its patches is set to zero, and a linear decoder must give back the masked patches' pixels
from the ViT's patch tokens (L1 loss on the masked patches only). The decoder is discarded.
For a segmentation network (``unet``, ``dynunet``, ``segresnet``) ``mim`` is masked inpainting:
random training patches (as segmentation training draws them, without masks) have a
``mask_ratio`` of their blocks (an eighth of each side) set to zero, and the network itself, with
one output per input channel, must rebuild them (L1 on the masked voxels). Its output layer is
then the only part ``train --weights`` does not load.

Which images: the training and validation splits of SOURCE as ``medlens train`` plans them with
the same seed and fractions (the source's own splits when it has them); the test split is never
read. A source without labels (a DICOM or NIfTI archive) is split the same way, so an archive
later labelled and trained on keeps its test images unseen. ``compare --pretrain-epochs`` passes
its run's ``splits.json`` instead (``PretrainConfig.splits``). The card lists the ids it used, and
``train --weights`` refuses an encoder that saw any test image of the run (:func:`load_start_weights`).

Files, for ``--out WEIGHTS.safetensors``: the encoder weights; ``WEIGHTS.json``, the card (what it
was trained on, how, the loss it reached); ``WEIGHTS.pretrain/`` with ``checkpoints/last.ckpt``
(written every N optimizer steps and at each epoch end, renamed into place: ``--resume``
continues after a kill), the CSV log and ``training_log.csv`` (loss per epoch).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medlens import __version__
from medlens.errors import MedlensError
from medlens.runs import ModelDir, is_global_zero, read_json, sha256_file, write_json

METHODS = ("simclr", "mim")
ENCODER_KIND = "medlens-encoder"  # safetensors metadata "kind" and the card's "kind"
CARD_SCHEMA = 1
SPLITS_USED = ("train", "val")
SEGMENTATION = "segmentation"  # the task of segmentation networks in the registry
BATCH = 256  # images per batch of a classifier's pretraining (each gives two views with simclr)
METHOD_SETTINGS = {"simclr": ("temperature", "projection_dim"), "mim": ("mask_ratio",)}


@dataclass
class PretrainConfig:
    """Every setting of one pretraining; ``None`` means "as ``medlens train`` would choose"."""

    source: str
    out: str  # the encoder's .safetensors file
    model: str = "cnn-small"
    method: str = "simclr"
    epochs: int = 20
    batch_size: int | None = None  # None: 256 images; a segmentation network's training batch of patches
    img_size: int | None = None  # native size, capped, as train
    patch_size: list[int] | None = None  # a segmentation network's training patch (None: as train chooses it)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2  # simclr
    projection_dim: int = 128  # simclr
    mask_ratio: float = 0.6  # mim: share of patches masked
    seed: int = 0  # the split's seed too: train with the same seed keeps its test images unseen
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_samples: int | None = None  # cap per split (as train --max-samples)
    splits: str | None = None  # a splits.json to take train and val from (compare: the run's) instead of planning
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    threads: int | None = None
    deterministic: bool = True
    checkpoint_every_n_steps: int = 50
    resume: bool = False
    progress: bool = True

    def validate(self) -> "PretrainConfig":
        if Path(self.out).suffix != ".safetensors":
            raise MedlensError("--out must name a .safetensors file", self.out)
        if self.method not in METHODS:
            raise MedlensError(f"--method must be one of {', '.join(METHODS)}, not '{self.method}'")
        for key in ("epochs", "img_size", "max_samples", "threads", "projection_dim", "checkpoint_every_n_steps"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise MedlensError(f"--{key.replace('_', '-')} must be at least 1, not {value}")
        if self.batch_size is not None and self.batch_size < 2:
            raise MedlensError(
                f"--batch-size must be at least 2 (each image's partner view is in its batch), not {self.batch_size}"
            )
        if not (self.lr > 0 and self.temperature > 0):
            raise MedlensError("--lr and --temperature must be positive")
        if not 0 < self.mask_ratio < 1:
            raise MedlensError(f"--mask-ratio must lie in (0, 1), not {self.mask_ratio}")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise MedlensError("val/test fractions must lie in (0, 1)")
        return self

    def updated(self, **changes: Any) -> "PretrainConfig":
        """A copy with the given settings changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def paths(self) -> tuple[Path, Path, Path]:
        """The weights file, its card and the working folder."""
        weights = Path(self.out)
        return weights, weights.with_suffix(".json"), weights.with_suffix(".pretrain")


def nt_xent(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's loss for projections ``z`` (2N, D) whose rows i and i+N are views of one image:
    cross-entropy of finding the partner among the other 2N-1 views by cosine similarity. Also
    returns the share of views whose nearest other view is their partner."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    sim = (z @ z.T) / temperature
    sim.fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, partner), (sim.argmax(dim=1) == partner).float().mean()


def patchify(x: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Images (N, C, H, W) as rows of patch pixels (N, patches, C * ph * pw), patches in
    row-major order of the grid (the order of the ViT's patch tokens)."""
    n, c, h, w = x.shape
    ph, pw = patch
    return x.reshape(n, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * ph * pw)


def patch_mask_pixels(masked: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """A per-patch mask (N, patches; row-major) as a pixel mask (N, 1, H, W)."""
    n = masked.shape[0]
    (gh, gw), (ph, pw) = grid, patch
    return masked.reshape(n, 1, gh, 1, gw, 1).expand(n, 1, gh, ph, gw, pw).reshape(n, 1, gh * ph, gw * pw)


class _EncoderModule(L.LightningModule):
    """The encoder of ``model_name`` (its head removed) and what a method trains beside it."""

    def __init__(
        self,
        model_name: str,
        *,
        in_channels: int,
        spatial_dims: int,
        img_size: Any,
        lr: float,
        weight_decay: float,
        epochs: int,
        augmentation: dict,
        seed: int,
        optimizer: str = "adamw",
        scheduler: str = "cosine",
        **method_settings: Any,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = self.build_net()
        self._generator: torch.Generator | None = None

    def build_net(self) -> nn.Module:
        """The classifier of ``model_name`` without its head (``self.head`` names it, ``self.width``
        is the features' size)."""
        from medlens.models.deep.encoder import head_name, remove_head
        from medlens.models.registry import get_model

        h = self.hparams
        net = get_model(h.model_name).build(
            in_channels=h.in_channels, num_outputs=2, spatial_dims=h.spatial_dims, img_size=h.img_size
        )
        self.head = head_name(net)
        self.width = remove_head(net)
        return net

    def on_fit_start(self) -> None:
        self._generator = torch.Generator()
        self._generator.manual_seed(int(self.hparams.seed) * 1000 + self.global_rank)
        if self.hparams.spatial_dims == 2:
            self.net.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        self.net.to(memory_format=torch.contiguous_format)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One random view of the batch."""
        from medlens.data.transforms import augment_batch

        v = augment_batch(x, self.hparams.augmentation, self._generator)
        return v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v

    def log_step(self, n: int, **values: torch.Tensor) -> None:
        common = dict(on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        for i, (name, value) in enumerate(values.items()):
            self.log(name, value, prog_bar=i == 0, **common)

    def configure_optimizers(self):
        from medlens.training.lightning_module import optimisers

        return optimisers(self)


class ContrastiveModule(_EncoderModule):
    """SimCLR: the encoder and a projection head, trained with :func:`nt_xent` on two views."""

    def __init__(self, model_name: str, *, temperature: float, projection_dim: int, **kw: Any):
        super().__init__(model_name, temperature=temperature, projection_dim=projection_dim, **kw)
        width = self.width
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0]
        views = torch.cat([self.view(x) for _ in range(2)])
        loss, top1 = nt_xent(self.projector(self.net(views)), float(self.hparams.temperature))
        self.log_step(len(x), train_loss=loss, train_top1=top1)
        return loss


class MaskedImageModule(_EncoderModule):
    """Masked image modelling for the ViT: zero a random share of each view's patches and
    reconstruct their pixels from the patch tokens with a linear decoder (L1 on masked patches)."""

    def __init__(self, model_name: str, *, mask_ratio: float, **kw: Any):
        super().__init__(model_name, mask_ratio=mask_ratio, **kw)
        from medlens.models.deep.networks import ViTClassifier

        if not isinstance(self.net, ViTClassifier):
            raise MedlensError(f"--method mim needs a ViT (model 'vit'), not '{model_name}': use --method simclr")
        ph, pw = self.net.patch
        self.decoder = nn.Linear(self.width, int(self.hparams.in_channels) * ph * pw)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = self.view(batch[0])
        n = len(x)
        (gh, gw), (ph, pw) = self.net.grid, self.net.patch
        masked = torch.rand(n, gh * gw, generator=self._generator) < float(self.hparams.mask_ratio)
        masked[torch.arange(n), torch.randint(0, gh * gw, (n,), generator=self._generator)] = True  # never none
        masked = masked.to(x.device)
        tokens = self.net.tokens(x.masked_fill(patch_mask_pixels(masked, (gh, gw), (ph, pw)), 0.0))[:, 1:]
        error = (self.decoder(tokens).float() - patchify(x, (ph, pw)).float()).abs().mean(dim=2)
        loss = error[masked].mean()
        self.log_step(n, train_loss=loss, train_masked=masked.float().mean())
        return loss


class InpaintingModule(_EncoderModule):
    """Masked inpainting for a segmentation network: a ``mask_ratio`` of each patch's blocks set
    to zero, rebuilt by the network's first outputs, one per input channel (L1 on the masked voxels)."""

    def __init__(self, model_name: str, *, mask_ratio: float, **kw: Any):
        super().__init__(model_name, mask_ratio=mask_ratio, **kw)

    def build_net(self) -> nn.Module:
        from medlens.models.registry import get_model

        h = self.hparams
        self.head = "the output layer (its shape follows the number of classes)"
        outputs = max(2, int(h.in_channels))  # the registry's segmentation networks have at least two
        return get_model(h.model_name).build(
            in_channels=h.in_channels, num_outputs=outputs, spatial_dims=h.spatial_dims, img_size=h.img_size
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0]  # patches drawn and augmented by the data loader
        masked = block_mask(x.shape, float(self.hparams.mask_ratio), self._generator).to(x.device)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        rebuilt = self.net(x.masked_fill(masked, 0.0))[:, : x.shape[1]]  # one output per input channel
        error = (rebuilt.float() - x.float()).abs()
        loss = error[masked.expand_as(error)].mean()
        self.log_step(len(x), train_loss=loss, train_masked=masked.float().mean())
        return loss


def block_mask(shape: Sequence[int], ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random mask (N, 1, *spatial) of blocks, each an eighth of a side (at least 1 voxel), a
    ``ratio`` of them masked (at least one per image)."""
    n, spatial = int(shape[0]), [int(v) for v in shape[2:]]
    block = [max(1, side // 8) for side in spatial]
    grid = [-(-side // b) for side, b in zip(spatial, block)]
    masked = torch.rand(n, int(np.prod(grid)), generator=generator) < ratio
    masked[torch.arange(n), torch.randint(0, masked.shape[1], (n,), generator=generator)] = True
    out = masked.reshape(n, 1, *grid)
    for axis, b in enumerate(block):
        out = out.repeat_interleave(b, dim=2 + axis)
    return out[(slice(None), slice(None), *[slice(0, side) for side in spatial])]


def pretrain(config: PretrainConfig) -> Path:
    """Pretrain ``config.model``'s encoder on SOURCE's training and validation images; returns the
    weights file (see the module doc for the files written)."""
    from medlens.data.sources import open_source
    from medlens.data.transforms import (
        contrastive_augmentation,
        default_augmentation,
        looks_label_like,
        looks_like_hounsfield,
    )
    from medlens.inference.preprocess import load_inputs
    from medlens.models.registry import get_model
    from medlens.training.config import TrainConfig, resolve_config

    config = config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    weights, card_path, work = config.paths()
    spec = get_model(config.model)
    dataset = open_source(config.source, seed=config.seed)
    if spec.kind != "deep" or dataset.dims not in spec.dims:
        raise MedlensError(f"'{config.model}' is not a deep network for {dataset.dims}D images (see `medlens models`)")
    segmentation = SEGMENTATION in spec.tasks
    if segmentation and config.method != "mim":
        raise MedlensError(
            f"'{config.model}' is a segmentation network: it has no head to contrast features at; use --method mim"
        )
    used, held_out = _images(dataset, config)
    ids = [i for k in SPLITS_USED for i in used[k]]
    first = dataset.load(ids[0]).image
    resolved = resolve_config(
        TrainConfig(
            source=config.source,
            model=config.model,
            task=SEGMENTATION if segmentation else None,
            img_size=config.img_size,
            patch_size=config.patch_size,
            seed=config.seed,
        ),
        spec=spec,
        dims=dataset.dims,
        modality=dataset.modality,
        first_shape=first.shape,
        hounsfield=looks_like_hounsfield(first),
        label_like=looks_label_like(first),
    )
    zero = is_global_zero()
    checkpoints = ModelDir(work)
    if zero:
        _prepare_work(checkpoints, resume=config.resume)
    common = dict(
        in_channels=int(resolved.channels or 1),
        spatial_dims=dataset.dims,
        lr=config.lr,
        weight_decay=config.weight_decay,
        epochs=config.epochs,
        seed=config.seed,
    )
    module: _EncoderModule
    if segmentation:
        assert resolved.patch_size is not None  # resolve_config sets it for segmentation
        loader = _patch_loader(dataset, ids, resolved, config.batch_size, progress=config.progress and zero)
        augmentation = resolved.augmentation or {}
        module = InpaintingModule(
            config.model,
            mask_ratio=config.mask_ratio,
            img_size=resolved.patch_size,
            augmentation=augmentation,
            **common,
        )
    else:
        x, _ = load_inputs(
            dataset,
            ids,
            size=resolved.img_size,
            channels=resolved.channels,
            preprocessing=resolved.preprocessing,
            show_progress=config.progress and zero,
            desc="loading images",
        )
        augmentation = (
            contrastive_augmentation(dataset.dims) if config.method == "simclr" else default_augmentation(dataset.dims)
        )
        loader = _loader(torch.as_tensor(x), min(config.batch_size or BATCH, len(x)), config.seed)
        module = (
            ContrastiveModule(
                config.model,
                temperature=config.temperature,
                projection_dim=config.projection_dim,
                img_size=resolved.img_size,
                augmentation=augmentation,
                **common,
            )
            if config.method == "simclr"
            else MaskedImageModule(
                config.model,
                mask_ratio=config.mask_ratio,
                img_size=resolved.img_size,
                augmentation=augmentation,
                **common,
            )
        )
    L.seed_everything(config.seed, workers=True, verbose=False)
    timer, trainer = _trainer(config, checkpoints)
    started = time.perf_counter()
    trainer.fit(
        module,
        train_dataloaders=loader,
        ckpt_path=str(checkpoints.last_checkpoint) if config.resume else None,
        weights_only=True,
    )
    if not trainer.is_global_zero:
        return weights
    from medlens.models.deep.weights import save_weights
    from medlens.training.trainer import write_training_log

    module.cpu()
    partial = weights.with_name(f".{weights.name}.partial")
    meta = {"kind": ENCODER_KIND, "model": config.model, "method": config.method, "medlens_version": __version__}
    save_weights(module.net, partial, metadata=meta)
    os.replace(partial, weights)
    log = write_training_log(checkpoints)
    last = log[-1] if log else {}
    card = {
        "kind": ENCODER_KIND,
        "schema_version": CARD_SCHEMA,
        "model": config.model,
        "method": config.method,
        "weights_file": weights.name,
        "weights_sha256": sha256_file(weights),
        "head": f"{module.head} removed: train --weights builds a fresh one",
        "dims": dataset.dims,
        "in_channels": int(resolved.channels),
        "img_size": resolved.img_size,
        **({"patch_size": resolved.patch_size} if segmentation else {}),
        "preprocessing": resolved.preprocessing,
        "source": config.source,
        "source_key": source_key(dataset.uri),
        "images": {"n": len(ids), "per_split": {k: len(v) for k, v in used.items()}, "ids": ids},
        "held_out": held_out,
        "settings": {
            **{k: getattr(config, k) for k in ("epochs", "lr", "weight_decay")},
            "batch_size": loader.batch_size,
            **{k: getattr(config, k) for k in METHOD_SETTINGS[config.method]},
            "optimizer": "adamw, cosine schedule",
            "precision": str(trainer.precision),
            "augmentation": augmentation,
        },
        "result": {
            "epochs_run": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "final_loss": _number(last.get("train_loss")),
            **({"final_top1": _number(last.get("train_top1"))} if config.method == "simclr" else {}),
            "seconds": round(time.perf_counter() - started, 1),
            **timer.summary(),
        },
        "medlens_version": __version__,
    }
    write_json(card_path, card)
    return weights


def _images(dataset: Any, config: PretrainConfig) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The training and validation ids pretraining uses, and what was held out: the splits
    ``train`` would plan (or those of ``config.splits``); capped per split as ``train`` caps them."""
    if config.splits:
        from medlens.data.splits import check_splits, read_splits

        splits = read_splits(config.splits)["splits"]
        check_splits(dataset, splits)
        rule = f"the test split of {config.splits}; never read"
    else:
        from medlens.data.leakage import plan_splits

        plan = plan_splits(
            dataset,
            seed=config.seed,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            show_progress=False,
        )
        splits = plan.splits
        rule = (
            f"the test split `medlens train` plans with --seed {config.seed}, val {config.val_fraction}, "
            f"test {config.test_fraction} ({plan.method} splits); never read"
        )
    used = {k: list(splits.get(k, [])) for k in SPLITS_USED}
    if config.max_samples:
        from medlens.data.splits import cap_ids

        used = {k: cap_ids(v, config.max_samples, seed=config.seed) for k, v in used.items()}
    if sum(len(v) for v in used.values()) < 2:
        raise MedlensError("fewer than 2 training and validation images: nothing to contrast", config.source)
    return used, {"test": len(splits.get("test", [])), "rule": rule}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _prepare_work(work: ModelDir, *, resume: bool) -> None:
    """A fresh pretraining starts from an empty working folder; a resumed one needs last.ckpt."""
    if resume:
        if not work.last_checkpoint.is_file():
            raise MedlensError(
                "nothing to resume: no checkpoint (pretrain without --resume first)", work.last_checkpoint
            )
        return
    if work.root.is_dir():
        shutil.rmtree(work.root)
    work.root.mkdir(parents=True)


def _patch_loader(
    dataset: Any, ids: list[str], resolved: Any, batch_size: int | None, *, progress: bool
) -> torch.utils.data.DataLoader:
    """Random training patches of the images as ``train`` draws them for a segmentation network
    (no masks: anywhere in the image), ``patches_per_case`` per image and epoch."""
    from medlens.training.datamodule import PatchDataset
    from medlens.training.segmentation import load_cases

    images, _ = load_cases(dataset, ids, resolved, None, desc="loading images", show_progress=progress, masks=False)
    patches = PatchDataset(
        images,
        [np.zeros(image.shape[1:], dtype=np.uint8) for image in images],
        patch=resolved.patch_size,
        patches_per_case=resolved.patches_per_case,
        pos_fraction=0.0,
        augmentation=resolved.augmentation,
        seed=resolved.seed,
    )
    size = int(batch_size or resolved.batch_size)
    return torch.utils.data.DataLoader(
        patches,
        batch_size=size,
        shuffle=True,
        drop_last=len(patches) > size,
        generator=torch.Generator().manual_seed(resolved.seed),
    )


def _loader(x: torch.Tensor, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    from medlens.training.datamodule import TensorBatches, pass_through

    return torch.utils.data.DataLoader(
        TensorBatches(x),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,  # a last batch of one image has no partner view
        collate_fn=pass_through,
        generator=torch.Generator().manual_seed(seed),
    )


def _trainer(config: PretrainConfig, work: ModelDir) -> tuple[Any, L.Trainer]:
    from medlens.progress import lightning_callback
    from medlens.training.trainer import EpochTimer, RecordedCheckpoint, lightning_trainer

    common = dict(run_root=None, dirpath=work.checkpoints, monitor=None, save_top_k=0, save_last=True)
    timer = EpochTimer()
    callbacks = [
        RecordedCheckpoint(**common, every_n_train_steps=int(config.checkpoint_every_n_steps)),
        RecordedCheckpoint(**common, every_n_epochs=1),
        timer,
    ]
    if config.progress:
        callbacks.append(lightning_callback())
    return timer, lightning_trainer(config, work.root, callbacks)


# -- using an encoder -------------------------------------------------------------------------------
def source_key(uri: str) -> str:
    """One name per source: a path resolved (absolute, links followed), any other URI as it is."""
    path = Path(uri)
    return str(path.resolve()) if path.exists() else uri


def read_encoder_card(weights: str | Path) -> dict | None:
    """The card beside an encoder's weights, or None when ``weights`` is not a medlens encoder."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("kind") != ENCODER_KIND:
        return None
    card_path = Path(weights).with_suffix(".json")
    if not card_path.is_file():
        raise MedlensError(
            f"{card_path.name}, the card saying which images this encoder saw, is missing: cannot check that "
            "it never saw this run's test images",
            weights,
        )
    return read_json(card_path)


def load_start_weights(net: nn.Module, path: str | Path, *, config: Any, source_uri: str, test_ids: list[str]) -> dict:
    """Load ``train --weights`` into ``net`` (built for ``config``, a resolved :class:`TrainConfig`);
    what the model card records about them.

    A whole network's weights load strictly. An encoder from ``medlens pretrain`` loads every
    tensor but the head's, after two checks: it was pretrained for the same network, and, when
    pretrained on this source, on none of this run's test images. Another input size or
    preprocessing than the pretraining's is allowed and listed in ``warnings``.
    """
    from medlens.models.deep.encoder import output_keys
    from medlens.models.deep.weights import load_weights

    path = Path(path)
    card = read_encoder_card(path)
    if card is None:
        load_weights(net, path)
        return {"file": str(path), "sha256": sha256_file(path), "kind": "network"}
    if card.get("model") != config.model:
        raise MedlensError(f"this encoder was pretrained for '{card.get('model')}', not '{config.model}'", path)
    if card.get("source_key") == source_key(source_uri):
        seen = set(card.get("images", {}).get("ids", [])) & set(test_ids)
        if seen:
            raise MedlensError(
                f"this encoder was pretrained on {len(seen)} of this run's test images (e.g. {sorted(seen)[0]}): "
                f"train with the seed and split fractions it was pretrained with ({card['held_out']['rule']})",
                path,
            )
    report = load_weights(net, path, strict=False)
    spatial_dims = len(config.patch_size) if config.patch_size else int(card.get("dims") or 2)
    size = config.patch_size or config.img_size
    head = set(
        output_keys(config.model, in_channels=int(config.channels or 1), spatial_dims=spatial_dims, img_size=size)
    )
    if report.unexpected or (set(report.mismatched) | set(report.missing)) - head:
        raise MedlensError(f"the encoder does not fit the network: {report.summary()}", path)
    differs = [k for k in ("img_size", "preprocessing") if card.get(k) != json.loads(json.dumps(getattr(config, k)))]
    return {
        "file": str(path),
        "sha256": sha256_file(path),
        "kind": "encoder",
        "method": card.get("method"),
        "source": card.get("source"),
        "images": card.get("images", {}).get("n"),
        "epochs": card.get("settings", {}).get("epochs"),
        "tensors_loaded": len(report.loaded),
        "head": "trained from scratch",
        "warnings": [
            f"the encoder was pretrained with another {k} ({card.get(k)}) than this training uses ({getattr(config, k)})"
            for k in differs
        ],
    }
