"""Training configuration: one dataclass holding every setting, with its defaults.

A :class:`TrainConfig` is built from the command line (or a plan, or code), then *resolved*
against the dataset and the model's registry defaults (:func:`resolve_config`): every ``None``
("choose for me") becomes a concrete value, so the ``config.yaml`` written to the run directory
spells out every setting that was used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "onecycle", "none")
IMBALANCE = ("weighted-loss", "sampler", "none")
AUGMENT = ("none", "light", "standard", "gan")
MONITOR = ("auc", "dice", "loss")
TASKS = ("classification", "segmentation")  # --task: what the source's labels are trained for
DEFAULT_MODEL = {"classification": "cnn-small", "segmentation": "unet"}
DEFAULT_MONITOR = {"classification": "auc", "segmentation": "dice"}
SEGMENTATION_GEOMETRY = "as stored: no resize, no resampling (spacing and affine of each image kept)"
NATIVE_CAP = {2: 128, 3: 64}  # largest input side used by default, per spatial dims
PRECISIONS = ("auto", "32", "32-true", "64", "bf16-mixed", "bf16-true", "16-mixed")


@dataclass
class TrainConfig:
    """Every setting of one training run. ``None`` means "resolve from the data and the model"."""

    source: str
    model: str | None = None  # None: DEFAULT_MODEL of the task
    name: str | None = None  # the model's folder and name in the run (None: the model's; compare's variants differ)
    task: str | None = None  # None: the source's ("segmentation" when its samples carry masks)
    out: str = "runs/default"
    # optimisation
    epochs: int = 20
    batch_size: int | None = None  # model default
    img_size: int | None = None  # native size, capped at the model's default input size
    lr: float | None = None  # model default
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    patience: int = 10  # early stopping, in epochs without improvement of `monitor`
    monitor: str | None = None  # validation AUC / mean Dice (max) or loss (min); None: DEFAULT_MONITOR
    imbalance: str = "weighted-loss"
    augment: str = "light"
    gan_epochs: int = 30
    ema: float = 0.0  # decay of an exponential moving average of the weights per step (0: off)
    # data
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_samples: int | None = None  # cap per split (a seeded random subset), for quick runs
    resplit: str | None = None  # "patient": ignore the source's splits (medlens.data.leakage); None: given
    drop_duplicates: str | None = None  # "exact" | "near": drop cross-split duplicates (medlens.data.leakage)
    channels: int | None = None  # input channels (None: as stored)
    preprocessing: dict[str, Any] | None = None  # None: default_preprocessing(modality, dims, size)
    augmentation: dict[str, Any] | None = None  # None: default_augmentation(dims, augment)
    # segmentation
    patch_size: list[int] | None = None  # training patch (None: the first image's sides, see resolve_config)
    patches_per_case: int = 4  # random patches drawn from each training case per epoch
    pos_fraction: float = 0.5  # share of patches centred on a foreground voxel
    ood_accept: float = 0.99  # share of in-distribution validation images the guard accepts
    codes: dict[str, Any] | None = None  # class name -> {scheme, code, meaning}: replaces the table's code
    # hardware
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"  # bf16-mixed where the device computes bfloat16 natively, else 32
    num_workers: int = 0
    threads: int | None = None  # CPU threads for torch (None: torch's default, one per core)
    deterministic: bool = True
    checkpoint_every_n_steps: int = 50  # last.ckpt is also written every N optimizer steps
    # provenance / control
    weights: str | None = None  # local .safetensors to start from
    resume: bool = False
    plan: str | None = None  # plan.json this config follows
    progress: bool = True

    # -- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MedlensError(f"unknown configuration key(s): {', '.join(unknown)}")
        return cls(**d)

    def updated(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied; keys whose value is ``None`` are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validate(self) -> "TrainConfig":
        """Raise a one-line :class:`MedlensError` for a setting outside its allowed values."""
        choices = {
            "optimizer": OPTIMIZERS,
            "scheduler": SCHEDULERS,
            "imbalance": IMBALANCE,
            "augment": AUGMENT,
            "monitor": MONITOR,
            "precision": PRECISIONS,
            "task": TASKS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) is None:  # resolved later from the data
                continue
            value = str(getattr(self, key))
            if value not in allowed:
                raise MedlensError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, not '{value}'")
        if self.epochs < 1:
            raise MedlensError(f"--epochs must be at least 1, not {self.epochs}")
        from medlens.data.leakage import check_choices

        check_choices(self.resplit, self.drop_duplicates)
        for key in ("batch_size", "img_size", "max_samples", "channels", "threads", "patches_per_case"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise MedlensError(f"--{key.replace('_', '-')} must be at least 1, not {value}")
        if self.lr is not None and not self.lr > 0:
            raise MedlensError(f"--lr must be positive, not {self.lr}")
        if not 0 < self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise MedlensError("val/test fractions must lie in (0, 1)")
        if not 0 <= self.ema < 1:
            raise MedlensError(f"--ema must lie in [0, 1) (a decay per optimizer step, e.g. 0.99), not {self.ema}")
        if not 0.5 <= self.ood_accept < 1:
            raise MedlensError(f"--ood-accept must lie in [0.5, 1) (e.g. 0.99), not {self.ood_accept}")
        if not 0 <= self.pos_fraction <= 1:
            raise MedlensError(f"pos_fraction must lie in [0, 1], not {self.pos_fraction}")
        if self.patch_size is not None and (not self.patch_size or min(int(v) for v in self.patch_size) < 1):
            raise MedlensError(f"--patch-size must be positive sides, not {self.patch_size}")
        if self.num_nodes < 1:
            raise MedlensError(f"--num-nodes must be at least 1, not {self.num_nodes}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=@-]*", self.name):
            raise MedlensError(f"a model's name in the run must be a plain folder name, not '{self.name}'")
        if self.weights is not None and not Path(self.weights).is_file():
            raise MedlensError("no such weights file", self.weights)
        return self


def plan_overrides(plan: dict[str, Any]) -> dict[str, Any]:
    """The settings a plan.json chooses (its ``config`` section), as TrainConfig keys."""
    settings = dict(plan.get("config", {}))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in settings.items() if k in known}


def native_size(shape: tuple[int, ...]) -> int:
    """The largest spatial side of a channels-first image shape."""
    return int(max(shape[1:]))


def resolve_config(
    config: TrainConfig,
    *,
    spec: Any,
    dims: int,
    modality: str | None,
    first_shape: tuple[int, ...],
    hounsfield: bool = True,
    label_like: bool = False,
) -> TrainConfig:
    """Fill every ``None`` from the model's registry defaults and the data.

    ``first_shape`` is the channels-first shape of one stored image; ``hounsfield`` says whether
    a CT source holds Hounsfield units (:func:`~medlens.data.transforms.looks_like_hounsfield`),
    ``label_like`` whether its images hold two values only (:func:`~medlens.data.transforms.looks_label_like`).
    The input size defaults to
    the native size (small MedMNIST images are not upsampled: it costs time and gains little),
    capped at :data:`NATIVE_CAP` (or the model's larger ``default_img_size``).

    Segmentation (``config.task``, set by :func:`resolve_task`) keeps every image in its stored
    geometry (no resize, no resampling: ``img_size`` stays None and preprocessing only normalises
    intensities); the network trains on patches of ``patch_size`` (:func:`default_patch`).
    """
    defaults = dict(getattr(spec, "defaults", {}) or {})  # (batch size and lr stay None for classical models)
    c = dataclasses.replace(config)
    segmentation = c.task == "segmentation"
    c.monitor = c.monitor or DEFAULT_MONITOR[c.task or "classification"]
    if c.monitor == ("auc" if segmentation else "dice"):
        raise MedlensError(
            f"--monitor {c.monitor} does not apply to {c.task or 'classification'} (use auc or loss for classification, dice or loss for segmentation)"
        )
    if spec.kind == "deep":
        c.batch_size = c.batch_size or int(defaults.get("batch_size", 64))
        c.lr = c.lr or float(defaults.get("lr", 1e-3))
    if segmentation:
        c.img_size = None
    if segmentation and spec.kind == "deep":
        c.patch_size = (
            default_patch(first_shape, dims, defaults) if c.patch_size is None else _sides(c.patch_size, dims)
        )
    elif c.img_size is None:
        native = native_size(first_shape)
        cap = max(int(defaults.get("default_img_size", 0)), NATIVE_CAP[dims])
        c.img_size = min(native, cap)
    c.channels = c.channels or int(first_shape[0])
    if c.preprocessing is None:
        from medlens.data.transforms import default_preprocessing

        c.preprocessing = dict(
            default_preprocessing(modality, dims, c.img_size, hounsfield=hounsfield, label_like=label_like)
        )
    if segmentation:
        c.preprocessing = {**c.preprocessing, "geometry": SEGMENTATION_GEOMETRY}
    if segmentation and c.augmentation is None:
        c.augmentation = segmentation_augmentation(dims, c.augment, c.patch_size) if c.patch_size else {}
    elif c.augmentation is None and spec.kind == "deep":
        strength = "light" if c.augment == "gan" else c.augment
        if strength == "none":
            c.augmentation = {}
        else:
            from medlens.data.transforms import default_augmentation

            c.augmentation = dict(default_augmentation(dims, strength))
    elif c.augmentation is None:
        c.augmentation = {}
    c.devices = _int_if_digits(c.devices)
    c.precision = str(c.precision)
    return c.validate()


def resolve_task(config: TrainConfig, source_task: str, uri: str | None = None) -> TrainConfig:
    """``task`` from the source's task (``--task`` may only confirm it) and the task's default model.

    A segmentation source (samples with masks) trains segmentation; every labelled
    classification task trains classification. A mismatch is one line.
    """
    implied = "segmentation" if source_task == "segmentation" else "classification"
    if config.task is not None and config.task != implied:
        raise MedlensError(f"--task {config.task}, but the source's task is '{source_task}' ({implied})", uri)
    return dataclasses.replace(config, task=implied, model=config.model or DEFAULT_MODEL[implied])


def _sides(size: int | list[int], dims: int) -> list[int]:
    sides = [int(size)] * dims if isinstance(size, int) else [int(v) for v in size]
    if len(sides) == 1:
        sides = sides * dims
    if len(sides) != dims:
        raise MedlensError(f"--patch-size {size} does not have {dims} sides (or one for all)")
    return sides


def default_patch(first_shape: tuple[int, ...], dims: int, defaults: dict[str, Any]) -> list[int]:
    """The patch: each stored side of the first image rounded down to the network's ``divisor``
    (at least one divisor; a smaller image is padded), capped at its ``default_patch``."""
    divisor = max(1, int(defaults.get("divisor", 1)))
    cap = int((defaults.get("default_patch") or {}).get(dims, NATIVE_CAP[dims]))
    return [max(divisor, min(int(s), cap) // divisor * divisor) for s in first_shape[1:]]


def segmentation_augmentation(dims: int, augment: str, patch: list[int]) -> dict[str, Any]:
    """Training-patch augmentation (image and mask move together; ``none``: nothing).

    ``light``: flips along every spatial axis and, when the last two patch sides are equal,
    in-plane quarter turns, each with probability 0.5. ``standard`` adds nnU-Net's default
    spatial and intensity augmentation at its probabilities: a random rotation (up to 15 degrees
    about each axis) and scaling (0.85-1.25) with probability 0.2 each, multiplicative brightness
    (0.75-1.25, p 0.15), gamma (0.7-1.5, p 0.3) and Gaussian noise (std up to 0.1 of the
    normalised intensities, p 0.1).
    """
    if augment == "none":
        return {}
    if augment == "gan":
        raise MedlensError("--augment gan is for classification; segmentation takes none, light or standard")
    square = patch[-1] == patch[-2]
    config: dict[str, Any] = {
        "prob": 0.5,
        "flip_axes": list(range(dims)),
        "rotate90_axes": [dims - 2, dims - 1] if square else None,
    }
    if augment == "standard":
        config.update(
            rotate_degrees=15.0,
            rotate_prob=0.2,
            scale_range=[0.85, 1.25],
            scale_prob=0.2,
            brightness=[0.75, 1.25],
            brightness_prob=0.15,
            gamma=[0.7, 1.5],
            gamma_prob=0.3,
            noise_std=0.1,
            noise_prob=0.1,
        )
    return config


def _int_if_digits(value: int | str) -> int | str:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


MIN_OPTIMISER_STEPS = 50
"""Fewer optimiser steps than this rarely train a network from scratch: the plan and the training warn."""


def optimiser_steps_warning(epochs: int, n_train: int, batch_size: int) -> str | None:
    """A plain-language warning when ``epochs`` over ``n_train`` images in batches of ``batch_size``
    give fewer than :data:`MIN_OPTIMISER_STEPS` optimiser steps, else None."""
    steps = int(epochs) * math.ceil(max(int(n_train), 0) / max(int(batch_size), 1))
    if steps >= MIN_OPTIMISER_STEPS:
        return None
    return (
        f"only {steps} optimiser steps ({epochs} epoch(s) x {math.ceil(n_train / max(batch_size, 1))} batches of "
        f"{batch_size} from {n_train} training images): fewer than {MIN_OPTIMISER_STEPS}, the network may not learn; "
        "use more epochs, more images or a smaller batch"
    )
