"""`medlens plan`: nnU-Net's idea for classification — settings from a fingerprint and a budget.

:func:`make_plan` reads the dataset fingerprint and chooses, with its reasons:

- the input size (native, capped: 2D 128 px, 3D 64 voxels; halved while the budget demands it),
- the normalization (``default_preprocessing`` for the modality: CT windowing, else scaling),
- augmentation strength (standard for small training sets, light for large ones),
- class-imbalance handling (weighted loss; a balancing sampler for severe imbalance),
- the model family (a larger network when the data and the budget allow it, else the small one),
- batch size and the number of epochs, so that the estimated training time fits the budget on
  *this* machine: the throughput of each candidate is measured with a short timed
  forward/backward pass and extrapolated to the training set.

Segmentation sources (or ``task="segmentation"``) get :func:`segmentation_plan`: the patch from
the median image size (rounded to the network's step, capped), images kept in their stored
spacing (no resampling; the reasons say when the spacing is anisotropic), the batch size, the
augmentation (``standard``, nnU-Net's spatial and intensity set, below 2000 training cases), and
the epochs that fit the budget for patch training plus sliding-window validation: the network's
step and the cost of drawing an augmented patch are both measured here (when the epoch cap binds,
more patches per case per epoch, so that the budget is spent).

The plan is JSON (``plan.json``); ``medlens train SOURCE --plan plan.json`` follows its
``config`` section (options given on the command line win).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.runs import write_json

SCHEMA = "medlens.plan/1"
SIZE_CAP = {2: 128, 3: 64}
MIN_SIZE = {2: 28, 3: 16}
MAX_EPOCHS = 100
GOOD_EPOCHS = 15  # a candidate model must afford this many epochs to be chosen over a smaller one
MIN_EPOCHS = 5  # below this the input size is halved (while it stays above MIN_SIZE)
BUDGET_USE = 0.85  # fraction of the budget planned for (the rest: loading, evaluation, writing)
VAL_COST = 0.35  # a validation image costs about this fraction of a training image (no backward)


def candidate_models(dims: int, n_train: int, budget_minutes: float) -> list[str]:
    """Model names to try, most capable first."""
    if dims == 3:
        return ["resnet18-3d", "cnn-lstm"] if n_train >= 500 else ["cnn-lstm", "resnet18-3d"]
    if n_train >= 3000 and budget_minutes >= 15:
        return ["resnet18", "cnn-small"]
    return ["cnn-small"]


def measure_throughput(
    model: str,
    *,
    in_channels: int,
    num_outputs: int,
    dims: int,
    img_size: int | list[int],
    batch_size: int,
    seconds: float = 1.5,
    max_steps: int = 8,
    segmentation: bool = False,
) -> float:
    """Training images (segmentation: patches of ``img_size``) per second of ``model`` on this
    machine (timed forward/backward/step)."""
    import torch

    from medlens.models.registry import get_model

    spec = get_model(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = spec.build(in_channels=in_channels, num_outputs=num_outputs, spatial_dims=dims, img_size=img_size)
        spatial = [int(img_size)] * dims if isinstance(img_size, int) else [int(v) for v in img_size]
        x = torch.rand(batch_size, in_channels, *spatial)
        y = torch.randint(0, num_outputs, (batch_size, *spatial) if segmentation else (batch_size,))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, x, y = net.to(device), x.to(device), y.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocation, kernel selection
    steps, started = 0, time.perf_counter()
    while steps < max_steps and (steps < 2 or time.perf_counter() - started < seconds):
        step()
        steps += 1
    return steps * batch_size / (time.perf_counter() - started)


SMALL_TRAINING_SET = 2000  # below this many training cases (or images) the plan augments more


def augment_for(n_train: int) -> str:
    """The plan's augmentation strength: ``standard`` for a small training set, else ``light``."""
    return "standard" if n_train < SMALL_TRAINING_SET else "light"


def measure_patch_sampling(dataset: Any, patch: list[int], augmentation: dict, *, cases: int = 4, n: int = 24) -> float:
    """Seconds to draw one augmented training patch from the first ``cases`` cases with masks
    (the training loader's cost per patch, which the network's step does not include)."""
    import numpy as np

    from medlens.training.datamodule import PatchDataset

    images, masks = [], []
    for index in range(min(len(dataset), cases * 4)):
        sample = dataset.load(index)
        if sample.mask is not None and np.asarray(sample.mask).shape == sample.image.shape[1:]:
            images.append(np.asarray(sample.image, dtype=np.float32))
            masks.append(np.asarray(sample.mask).astype(np.uint8))
        if len(images) == cases:
            break
    if not images:
        return 0.0
    patches = PatchDataset(
        images, masks, patch=patch, patches_per_case=n, pos_fraction=0.5, augmentation=augmentation, seed=0
    )
    patches[0]  # warm-up: imports, first allocation
    started = time.perf_counter()
    for index in range(n):
        patches[index]
    return (time.perf_counter() - started) / n


def _n_splits(dataset: Any, seed: int) -> dict[str, int]:
    from medlens.data.splits import assign_splits

    splits = assign_splits(dataset, seed=seed)
    return {k: len(v) for k, v in splits.items()}


def make_plan(
    source: str,
    *,
    budget_minutes: float = 10.0,
    model: str | None = None,
    seed: int = 0,
    show_progress: bool = True,
    fingerprint: dict | None = None,
    max_samples: int | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Plan a training of ``source`` that fits ``budget_minutes`` on this machine.

    ``task``: "classification" or "segmentation" (None: the source's, as ``train --task``).

    ``max_samples`` caps each split as ``train --max-samples`` does; the plan warns when its
    epochs give too few optimiser steps (:func:`medlens.training.config.optimiser_steps_warning`).
    """
    from medlens.data.fingerprint import compute_fingerprint
    from medlens.data.sources import open_source
    from medlens.data.transforms import default_preprocessing, looks_label_like, looks_like_hounsfield
    from medlens.models.registry import check_task, get_model

    if not budget_minutes > 0:
        raise MedlensError(f"--budget-minutes must be positive, not {budget_minutes}")
    from medlens.training.config import TrainConfig, resolve_task

    dataset = open_source(source, seed=seed)
    task = resolve_task(TrainConfig(source, task=task), dataset.task.value, dataset.uri).task
    fp = fingerprint or compute_fingerprint(dataset, show_progress=show_progress, seed=seed)
    dims = int(fp.get("dims") or dataset.dims)
    if dims not in SIZE_CAP:
        raise MedlensError(f"cannot plan a classifier for {dims}D data", source)
    counts = _n_splits(dataset, seed)
    if max_samples:
        counts = {k: min(v, int(max_samples)) for k, v in counts.items()}
    n_train, n_val = counts["train"], counts["val"]
    if task == "segmentation":
        return segmentation_plan(
            dataset, fp, source, budget_minutes=budget_minutes, model=model, seed=seed, counts=counts
        ) | {"max_samples": max_samples}
    first = dataset.load(0).image
    shape = first.shape
    channels = int(shape[0])
    native = int(max(shape[1:]))
    num_outputs = len(dataset.class_names)
    reasons: list[str] = []
    budget_s = budget_minutes * 60 * BUDGET_USE
    reasons.append(
        f"{n_train} training / {n_val} validation samples after splitting; {dims}D, {channels} channel(s), "
        f"native size {native}; planning {BUDGET_USE:.0%} of {budget_minutes:g} min for training"
    )

    size = min(native, SIZE_CAP[dims])
    reasons.append(
        f"input size {size}: the native size"
        + (f", capped at {SIZE_CAP[dims]}" if native > size else " (no upsampling)")
    )
    candidates = [model] if model else candidate_models(dims, n_train, budget_minutes)
    for name in candidates:
        spec = get_model(name)
        check_task(spec, dataset.task.value)
        if dims not in spec.dims:
            raise MedlensError(f"model '{name}' does not take {dims}D images", source)

    measurements: list[dict] = []
    chosen: dict | None = None
    while chosen is None:
        for name in candidates:
            spec = get_model(name)
            batch = _batch_size(spec, n_train)
            ips = measure_throughput(
                name, in_channels=channels, num_outputs=max(num_outputs, 2), dims=dims, img_size=size, batch_size=batch
            )
            epoch_s = n_train / ips + n_val * VAL_COST / ips
            epochs = int(min(MAX_EPOCHS, math.floor(budget_s / epoch_s)))
            m = {
                "model": name,
                "img_size": size,
                "batch_size": batch,
                "images_per_second": round(ips, 1),
                "epoch_seconds": round(epoch_s, 2),
                "affordable_epochs": epochs,
            }
            measurements.append(m)
            last = name == candidates[-1]
            if epochs >= GOOD_EPOCHS or (last and epochs >= MIN_EPOCHS):
                chosen = m
                break
            reasons.append(
                f"{name} at {size}: {ips:.0f} images/s, {epoch_s:.1f} s per epoch -> only {epochs} epoch(s) fit"
            )
        if chosen is None:
            if size // 2 < MIN_SIZE[dims]:
                chosen = max(measurements, key=lambda m: (m["affordable_epochs"], m["img_size"]))
                if chosen["affordable_epochs"] < 1:
                    reasons.append(
                        "even the smallest setting does not fit the budget: planning 1 epoch (it will overrun)"
                    )
                break
            size //= 2
            reasons.append(f"halving the input size to {size} to afford at least {MIN_EPOCHS} epochs")

    epochs = max(1, chosen["affordable_epochs"])
    reasons.append(
        f"model {chosen['model']}: {chosen['images_per_second']:.0f} images/s measured here at batch "
        f"{chosen['batch_size']}, {chosen['epoch_seconds']:.1f} s per epoch -> {epochs} epochs "
        f"(cap {MAX_EPOCHS}) in about {epochs * chosen['epoch_seconds'] / 60:.1f} min"
    )
    augment = augment_for(n_train)
    reasons.append(
        f"augmentation '{augment}': "
        + ("a small training set needs more variety" if augment == "standard" else "enough data; light augmentation")
    )
    ratio = fp.get("imbalance_ratio")
    imbalance = "sampler" if ratio is not None and ratio > 10 else "weighted-loss"
    reasons.append(f"class imbalance ratio {ratio if ratio is not None else 'n/a'}: {imbalance}")
    preprocessing = dict(
        default_preprocessing(
            dataset.modality,
            dims,
            chosen["img_size"],
            hounsfield=looks_like_hounsfield(first),
            label_like=looks_label_like(first),
        )
    )
    intensity = fp.get("intensity") or {}
    reasons.append(
        f"normalization for modality '{dataset.modality or 'unknown'}': {preprocessing} "
        f"(intensities {intensity.get('min', '?')}..{intensity.get('max', '?')})"
    )
    patience = max(3, epochs // 4)
    from medlens.training.config import optimiser_steps_warning

    warnings = [w for w in [optimiser_steps_warning(epochs, n_train, chosen["batch_size"])] if w]
    config = {
        "model": chosen["model"],
        "img_size": chosen["img_size"],
        "batch_size": chosen["batch_size"],
        "epochs": epochs,
        "patience": patience,
        "augment": augment,
        "imbalance": imbalance,
        "preprocessing": preprocessing,
        "scheduler": "cosine",
        "seed": seed,
    }
    return {
        "schema": SCHEMA,
        "source": source,
        "budget_minutes": budget_minutes,
        "machine": _machine(),
        "data": {
            "dims": dims,
            "modality": dataset.modality,
            "task": dataset.task.value,
            "n_train": n_train,
            "n_val": n_val,
            "native_size": native,
            "channels": channels,
            "imbalance_ratio": ratio,
        },
        "measurements": measurements,
        "estimate_minutes": round(epochs * chosen["epoch_seconds"] / 60, 2),
        "config": config,
        "reasoning": reasons,
        "warnings": warnings,
        "max_samples": max_samples,
    }


SEG_BATCH = {2: 16, 3: 2}
"""Segmentation patches per batch (nnU-Net trains 3D with 2, 2D with larger batches)."""


def segmentation_plan(
    dataset: Any, fp: dict, source: str, *, budget_minutes: float, model: str | None, seed: int, counts: dict
) -> dict[str, Any]:
    """The segmentation plan (see the module doc); same schema as a classification plan."""
    from medlens.data.transforms import default_preprocessing, looks_label_like, looks_like_hounsfield
    from medlens.inference.segment import OVERLAP
    from medlens.models.registry import check_task, get_model
    from medlens.training.config import SEGMENTATION_GEOMETRY, TrainConfig, default_patch, segmentation_augmentation

    dims = int(fp.get("dims") or dataset.dims)
    name = model or "unet"
    spec = get_model(name)
    check_task(spec, "segmentation")
    first = dataset.load(0).image
    channels, n_train, n_val = int(first.shape[0]), counts["train"], counts["val"]
    shapes = fp.get("shapes") or {}
    median = [int(round(v)) for v in (shapes.get("median") or first.shape[1:])]
    budget_s = budget_minutes * 60 * BUDGET_USE
    reasons = [
        f"{n_train} training / {n_val} validation cases after splitting; {dims}D, {channels} channel(s), "
        f"median size {median}; planning {BUDGET_USE:.0%} of {budget_minutes:g} min for training"
    ]
    spacing = ((fp.get("spacings") or {}).get("median")) or None
    if spacing:
        ratio = max(spacing) / max(min(spacing), 1e-6)
        reasons.append(
            f"median spacing {spacing} mm: images kept as stored (no resampling)"
            + (f"; anisotropic ({ratio:.1f}x), consider resampling before training" if ratio > 3 else "")
        )
    if spec.kind != "deep":
        config = {"model": name, "task": "segmentation", "seed": seed}
        reasons.append(f"{name} is a classical per-pixel model: no patches, batches or epochs")
        return _plan_result(
            source, budget_minutes, dataset, fp, dims, n_train, n_val, median, channels, [], 0, config, reasons, []
        )
    patch = default_patch((channels, *median), dims, spec.defaults)
    reasons.append(f"patch {patch}: the median size rounded down to {name}'s step {spec.defaults.get('divisor', 1)}")
    batch = SEG_BATCH[dims]
    per_case = TrainConfig.patches_per_case
    augment = augment_for(n_train)
    net_ips = measure_throughput(
        name,
        in_channels=channels,
        num_outputs=max(len(dataset.class_names), 2),
        dims=dims,
        img_size=patch,
        batch_size=batch,
        segmentation=True,
    )
    sampling_s = measure_patch_sampling(dataset, patch, segmentation_augmentation(dims, augment, patch))
    ips = 1.0 / (1.0 / net_ips + sampling_s)
    reasons.append(
        f"augmentation '{augment}' ("
        + ("a small training set needs more variety" if augment == "standard" else "enough data")
        + f"): drawing an augmented patch takes {sampling_s * 1000:.1f} ms beside the network's step"
    )
    windows = math.prod(max(1, math.ceil((m - p) / (p * (1 - OVERLAP))) + 1) for m, p in zip(median, patch))
    epoch_s = (n_train * per_case + n_val * windows * VAL_COST) / ips
    epochs = int(max(1, min(MAX_EPOCHS, math.floor(budget_s / epoch_s))))
    val_s = n_val * windows * VAL_COST / ips
    if epochs == MAX_EPOCHS and n_train:  # the cap binds: spend the budget on more patches per epoch
        fill = math.floor((budget_s / MAX_EPOCHS - val_s) * ips / n_train)
        if fill > per_case:
            reasons.append(
                f"{MAX_EPOCHS} epochs of {per_case} patches per case would use "
                f"{MAX_EPOCHS * epoch_s / 60:.1f} of {budget_s / 60:.1f} min: {fill} patches per case instead"
            )
            per_case = fill
            epoch_s = (n_train * per_case) / ips + val_s
    measurement = {
        "model": name,
        "patch_size": patch,
        "batch_size": batch,
        "images_per_second": round(ips, 1),
        "network_images_per_second": round(net_ips, 1),
        "sampling_ms": round(sampling_s * 1000, 2),
        "epoch_seconds": round(epoch_s, 2),
        "affordable_epochs": epochs,
    }
    reasons.append(
        f"{name}: {ips:.0f} patches/s measured here at batch {batch}; an epoch is {per_case} patches per training "
        f"case plus {windows} window(s) per validation case, {epoch_s:.1f} s -> {epochs} epochs (cap {MAX_EPOCHS})"
    )
    preprocessing = dict(
        default_preprocessing(
            dataset.modality, dims, None, hounsfield=looks_like_hounsfield(first), label_like=looks_label_like(first)
        )
    )
    preprocessing["geometry"] = SEGMENTATION_GEOMETRY
    reasons.append(f"normalization for modality '{dataset.modality or 'unknown'}': {preprocessing['steps']}")
    from medlens.training.config import optimiser_steps_warning

    warnings = [w for w in [optimiser_steps_warning(epochs, n_train * per_case, batch)] if w]
    config = {
        "model": name,
        "task": "segmentation",
        "patch_size": patch,
        "batch_size": batch,
        "epochs": epochs,
        "patches_per_case": per_case,
        "patience": max(5, epochs // 3),
        "augment": augment,
        "preprocessing": preprocessing,
        "scheduler": "cosine",
        "seed": seed,
    }
    return _plan_result(
        source,
        budget_minutes,
        dataset,
        fp,
        dims,
        n_train,
        n_val,
        median,
        channels,
        [measurement],
        epochs * epoch_s,
        config,
        reasons,
        warnings,
    )


def _plan_result(
    source,
    budget_minutes,
    dataset,
    fp,
    dims,
    n_train,
    n_val,
    size,
    channels,
    measurements,
    seconds,
    config,
    reasons,
    warnings,
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "source": source,
        "budget_minutes": budget_minutes,
        "machine": _machine(),
        "data": {
            "dims": dims,
            "modality": dataset.modality,
            "task": dataset.task.value,
            "n_train": n_train,
            "n_val": n_val,
            "median_size": size,
            "channels": channels,
            "spacing": (fp.get("spacings") or {}).get("median"),
        },
        "measurements": measurements,
        "estimate_minutes": round(seconds / 60, 2),
        "config": config,
        "reasoning": reasons,
        "warnings": warnings,
    }


def _batch_size(spec: Any, n_train: int) -> int:
    batch = int((spec.defaults or {}).get("batch_size", 64))
    return int(max(8, min(batch, 2 ** int(math.log2(max(8, n_train // 8))))))


def _machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "accelerator": "gpu" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_plan(path: str | Path, plan: dict) -> None:
    write_json(path, plan)


def render_plan(plan: dict, console: Any) -> None:
    """The chosen settings and the reasons, for people."""
    from rich.table import Table

    table = Table(title=f"plan for {plan['source']} ({plan['budget_minutes']:g} min)")
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    for key, value in plan["config"].items():
        table.add_row(key, str(value))
    table.add_row("estimate", f"{plan['estimate_minutes']:.1f} min")
    console.print(table)
    for line in plan["reasoning"]:
        console.print(f"- {line}", highlight=False, markup=False)
    for line in plan.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/bold yellow] {line}", highlight=False, soft_wrap=True)
