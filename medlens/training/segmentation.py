"""The segmentation parts of `medlens train`: cases in memory, Dice, and the per-case outputs.

:func:`train <medlens.training.run.train>` calls these when the task is segmentation; everything
else (splits, config, Lightning engine, checkpoints, resume, DDP, manifest) is shared with
classification.

- :func:`load_cases`: each case's model input (:func:`medlens.inference.segment.segmentation_input`,
  the function :meth:`Bundle.preprocess` runs) and its mask, in the stored geometry (variable
  shapes: lists, not one array). A mask of another shape or with a label outside the classes is a
  one-line error naming the file.
- :func:`dice_per_class`: Dice of the argmax label map per foreground class for one case; both
  empty counts 1, one empty 0 (the convention of the contract in issue #12).
- :func:`choose_mirroring`: whether test-time mirroring (every flip of the spatial axes,
  averaged) raises the validation mean Dice of a network; the card's ``mirror_axes`` keeps the
  choice (a tie keeps the single pass, which costs 2^dims times less).
- :func:`write_segmentation_artifacts`: the card (``task: segmentation``, ``patch_size``,
  ``mirror_axes``, ``ood: null``: the out-of-distribution guard reads classification features, a segmentation
  bundle has none), ``segmentations_{val,test}/ID.npz`` (``labels`` uint8 in the stored geometry;
  ``foreground`` float16 for two-class tasks) and ``metrics.json`` (per split: mean Dice per
  class and their mean, computed through :meth:`Bundle.segment`).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from medlens import __version__, progress
from medlens.data.sample import Dataset
from medlens.errors import MedlensError
from medlens.runs import ModelDir, atomic_write_bytes, write_json
from medlens.training.config import TrainConfig

Cases = tuple[list[np.ndarray], list[np.ndarray]]
"""(model inputs (C, *spatial) float32, masks (*spatial) uint8), one entry per case."""


def class_names(dataset: Dataset, masks: list[np.ndarray]) -> list[str]:
    """The source's class names (background first), or "background", "1", ... up to the largest
    label of ``masks`` when the source names none (a CSV manifest's masks)."""
    if dataset.class_names:
        return list(dataset.class_names)
    top = max((int(m.max(initial=0)) for m in masks), default=1)
    return ["background", *[str(k) for k in range(1, max(top, 1) + 1)]]


def load_cases(
    dataset: Dataset,
    ids: list[str],
    config: TrainConfig,
    n_classes: int | None,
    *,
    desc: str,
    show_progress: bool,
    masks: bool = True,
) -> Cases:
    """Model inputs and masks of ``ids`` (see the module doc); a case without a mask is an error,
    and so is a label of ``n_classes`` or more (None: the source names no classes). ``masks=False``:
    the inputs only, masks neither read nor required (pretraining without labels); the mask list
    is then empty."""
    from medlens.inference.segment import segmentation_input

    images, labels = [], []
    for sample_id in progress.track(ids, desc=desc, disable=not show_progress):
        sample = dataset.load(sample_id)
        if masks:
            labels.append(_checked_mask(sample, n_classes))
        images.append(
            segmentation_input(
                sample.image,
                channels=config.channels,
                preprocessing=config.preprocessing,
                dims=dataset.dims,
                origin=sample.origin,
            )
        )
    return images, labels


def _checked_mask(sample, n_classes: int | None) -> np.ndarray:
    """A case's mask as uint8, or a one-line error: missing, another shape than the image, or a
    label outside the classes."""
    if sample.mask is None:
        raise MedlensError("a segmentation case without a mask", sample.origin)
    mask = np.asarray(sample.mask)
    if mask.shape != sample.image.shape[1:]:
        raise MedlensError(f"mask shape {mask.shape} differs from image shape {sample.image.shape[1:]}", sample.origin)
    top = int(mask.max(initial=0))
    if mask.min(initial=0) < 0 or (n_classes is not None and top >= n_classes):
        raise MedlensError(f"mask label {top} is outside the classes 0..{(n_classes or 1) - 1}", sample.origin)
    return mask.astype(np.uint8)


def fit_pixel_model(config: TrainConfig, spec: Any, cases: dict[str, Cases], model_dir: ModelDir) -> dict:
    """Fit a classical per-pixel segmenter (``pixel-forest``) on the training cases and save it."""
    import time

    from medlens.models.classical.persistence import save_estimator
    from medlens.models.registry import get_model

    images, masks = cases["train"]
    started = time.perf_counter()
    estimator = get_model(spec.name).build("segmentation", seed=config.seed).fit(images, masks)
    seconds = time.perf_counter() - started
    save_estimator(estimator, model_dir.estimator)
    return {
        "estimator": estimator,
        "timing": {"fit_seconds": round(seconds, 3), "images_per_second": round(len(images) / max(seconds, 1e-9), 1)},
        "n_train_fit": len(images),
    }


def dice_per_class(labels: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice per foreground class 1..K-1 of a label map against the truth (both empty: 1)."""
    out = np.empty(n_classes - 1)
    for k in range(1, n_classes):
        p, t = labels == k, truth == k
        total = int(p.sum()) + int(t.sum())
        out[k - 1] = 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total
    return out


def choose_mirroring(net: Any, patch: list[int], val: Cases, n_classes: int, dims: int) -> dict[str, Any]:
    """Validation mean Dice without and with test-time mirroring, and the chosen ``mirror_axes``."""
    from medlens.inference.segment import sliding_window_proba

    net.eval()
    axes = list(range(dims))
    scores: dict[str, list[np.ndarray]] = {"single": [], "mirrored": []}
    for x, truth in zip(*val):
        for mode, mirror in (("single", None), ("mirrored", axes)):
            labels = sliding_window_proba(net, x, patch, mirror).argmax(axis=0).astype(np.uint8)
            scores[mode].append(dice_per_class(labels, truth, n_classes))
    means = {mode: float(np.mean(v)) for mode, v in scores.items()}
    return {
        "val_mean_dice": means,
        "mirror_axes": axes if means["mirrored"] > means["single"] else None,
        "rule": "mirroring at inference is kept when it raises the validation mean Dice",
    }


def write_segmentation_artifacts(
    config: TrainConfig,
    spec: Any,
    dataset: Dataset,
    splits: dict,
    cases: dict[str, Cases],
    names: list[str],
    model_dir: ModelDir,
    fitted: dict,
    provenance: dict[str, Any],
) -> None:
    """model.json, ``segmentations_{split}/``, metrics.json (see the module doc)."""
    from medlens.inference.bundle import Bundle
    from medlens.inference.card import card_from_dict, write_card
    from medlens.inference.codes import concepts_for

    mirroring = None
    if fitted.get("net") is not None and cases.get("val") and cases["val"][0]:
        assert config.patch_size is not None  # resolved before a network is built
        mirroring = choose_mirroring(fitted["net"], list(config.patch_size), cases["val"], len(names), dataset.dims)
    card = card_from_dict(
        {
            "name": model_dir.name,
            "model": spec.name,
            "kind": spec.kind,
            "dims": dataset.dims,
            "task": "segmentation",
            "class_names": names,
            "num_outputs": len(names),
            "in_channels": config.channels,
            "img_size": None,
            "patch_size": config.patch_size,
            "mirror_axes": mirroring and mirroring["mirror_axes"],
            "modality": dataset.modality,
            "codes": concepts_for(names, config.source, overrides=config.codes),
            "preprocessing": config.preprocessing,
            "mc_dropout": False,
            "weights_file": (model_dir.weights if spec.kind == "deep" else model_dir.estimator).name,
            "ood": None,
            "source": config.source,
            "seed": config.seed,
            "medlens_version": __version__,
            "config": config.to_dict(),
            **provenance,
        }
    )
    bundle = Bundle(card, net=fitted.get("net"), estimator=fitted.get("estimator"))
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        if split not in cases:
            continue
        scores = []
        folder = model_dir.segmentations(split)
        folder.mkdir(parents=True, exist_ok=True)
        track = progress.track(
            list(zip(splits[split], *cases[split])), desc=f"segmenting {split}", disable=not config.progress
        )
        for sample_id, x, truth in track:
            probs = bundle.segment(x)
            labels = probs.argmax(axis=0).astype(np.uint8)
            scores.append(dice_per_class(labels, truth, len(names)))
            arrays = {"labels": labels}
            if len(names) == 2:
                arrays["foreground"] = probs[1].astype(np.float16)
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)
            atomic_write_bytes(folder / f"{sample_id}.npz", buf.getvalue())
        per_class = np.mean(scores, axis=0)
        metrics[split] = {
            "dice": {name: float(v) for name, v in zip(names[1:], per_class)},
            "mean_dice": float(per_class.mean()),
            "n_cases": len(scores),
        }
    metrics["dice_rule"] = "argmax label map, per class and case (both empty: 1), then the mean over cases"
    metrics["mirroring"] = mirroring
    metrics["n"] = {k: len(v) for k, v in splits.items()}
    metrics["n_train_fit"] = fitted.get("n_train_fit")
    metrics["timing"] = fitted.get("timing", {})
    metrics["warnings"] = fitted.get("warnings") or []
    write_json(model_dir.metrics, metrics)
    write_card(model_dir.info, card)
