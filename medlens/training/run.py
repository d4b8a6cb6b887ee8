"""`medlens train`: one model, from SOURCE to a complete run directory.

:func:`train` does, in order:

1. open the source (unless the caller passes it); the task (classification, or segmentation for a
   source with masks: :mod:`medlens.training.segmentation`) and the task's default model; check
   the model fits its dimensions and task;
2. splits: reuse ``splits.json`` of the run directory when there is one (several models of one
   run share identical splits), else :func:`medlens.data.leakage.plan_splits` (the source's
   splits, or a patient-level re-split, less cross-split duplicates: ``resplit``,
   ``drop_duplicates``) and write it (with ``dropped.csv`` when duplicates were dropped);
3. ``fingerprint.json`` and the run's ``config.yaml`` (once per run), this model's resolved
   ``models/MODEL/config.yaml``;
4. load the three splits into memory with the inference core's loader
   (:func:`medlens.inference.preprocess.load_inputs`: preprocessing that collapses every image is
   an error), shared through an :class:`InputCache` when ``compare`` trains several models;
5. fit: deep networks with Lightning (checkpoints, early stopping, DDP, resume), classical
   models with :func:`fit_classical`; ``--augment gan`` adds GAN-made minority samples to the
   training split only;
6. write ``models/MODEL/``: weights (``model.safetensors`` or ``model.joblib``), the model card
   ``model.json``, and ``predictions_{val,test}.csv`` and ``metrics.json`` computed through the
   bundle the card describes (:class:`medlens.inference.bundle.Bundle`), ``training_log.csv``;
7. record what this stage wrote in ``manifest.json`` (stage ``train:MODEL``).

Under DDP every rank runs this function; only global rank 0 writes files.

Segmentation writes ``segmentations_{val,test}/ID.npz`` instead of ``predictions_SPLIT.csv`` and
Dice per class in ``metrics.json`` (:func:`medlens.training.segmentation.write_segmentation_artifacts`).

``predictions_SPLIT.csv`` columns: ``id``, ``label`` (class index; multi-label: the multi-hot
vector joined by ``;``), then ``prob_<class name>`` per class in ``model.json``'s class order.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from medlens import __version__
from medlens.data.sample import Dataset, Task
from medlens.data.splits import cap_ids
from medlens.errors import MedlensError
from medlens.runs import ModelDir, RunDir, atomic_write_bytes, is_global_zero, read_json, write_json, write_yaml
from medlens.training.config import TrainConfig, plan_overrides, resolve_config

CLASSIFICATION = (Task.BINARY, Task.MULTICLASS, Task.ORDINAL, Task.MULTILABEL)


def apply_plan(config: TrainConfig, explicit: set[str] | None = None) -> TrainConfig:
    """Settings from ``config.plan`` (plan.json), except those the user set explicitly."""
    if not config.plan:
        return config
    path = Path(config.plan)
    if not path.is_file():
        raise MedlensError("no such plan file", path)
    try:
        overrides = plan_overrides(read_json(path))
    except ValueError as e:
        raise MedlensError(f"not a valid plan.json ({e})", path) from None
    keep = explicit or set()
    return config.updated(**{k: v for k, v in overrides.items() if k not in keep and k not in ("source", "out")})


# -- the pipeline ---------------------------------------------------------------------------
def train(
    config: TrainConfig,
    *,
    explicit: set[str] | None = None,
    dataset: Dataset | None = None,
    inputs: InputCache | None = None,
) -> RunDir:
    """Train ``config.model`` on ``config.source`` into the run directory ``config.out``.

    ``explicit`` names the settings given on the command line (they win over a plan's).
    ``dataset``: the source, already opened (``compare`` opens it once for every model);
    ``inputs``: preprocessed splits shared between models with the same preprocessing.
    Returns the :class:`RunDir`; under DDP, ranks other than 0 return it without writing.
    """
    from medlens.models.registry import get_model
    from medlens.training.config import resolve_task

    config = apply_plan(config, explicit).validate()
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    if dataset is None:
        from medlens.data.sources import open_source

        dataset = open_source(config.source, seed=config.seed)
    config = resolve_task(config, dataset.task.value, dataset.uri)
    spec = get_model(config.model)
    if spec.kind == "deep":
        from medlens.training.trainer import resolve_precision

        config = config.updated(precision=resolve_precision(config))  # recorded as resolved
    _check_fit(dataset, spec, config.task)
    zero = is_global_zero()
    run = RunDir(config.out)
    model_dir = run.model(config.name or config.model)
    written: list[Path] = []
    if zero:
        run.create()
        _prepare_model_dir(model_dir, resume=config.resume and spec.kind == "deep")

    splits = _splits(run, dataset, config, write=zero, written=written)
    if config.max_samples:
        splits = {k: cap_ids(v, config.max_samples, seed=config.seed) for k, v in splits.items()}
    from medlens.data.transforms import looks_label_like, looks_like_hounsfield

    first = dataset.load(splits["train"][0])
    config = resolve_config(
        config,
        spec=spec,
        dims=dataset.dims,
        modality=dataset.modality,
        first_shape=first.image.shape,
        hounsfield=looks_like_hounsfield(first.image),
        label_like=looks_label_like(first.image),
    )
    if zero:
        write_yaml(model_dir.config, config.to_dict())
        if not run.config.is_file():  # the run's settings: written once (compare writes its own first)
            write_yaml(run.config, config.to_dict())
            written.append(run.config)
        if not run.fingerprint.is_file():
            from medlens.data.fingerprint import compute_fingerprint

            write_json(run.fingerprint, compute_fingerprint(dataset, show_progress=config.progress))
            written.append(run.fingerprint)

    arrays = (inputs or InputCache()).get(dataset, splits, config, show_progress=config.progress and zero)
    segmentation = config.task == "segmentation"
    names = list(dataset.class_names)
    if segmentation:
        from medlens.training.segmentation import class_names

        names = class_names(dataset, [m for _, masks in arrays.values() for m in masks])
    started = time.perf_counter()
    if spec.kind == "deep":
        fitted = _fit_deep(config, spec, dataset, arrays, model_dir, names, list(splits["test"]))
    elif segmentation:
        from medlens.training.segmentation import fit_pixel_model

        fitted = fit_pixel_model(config, spec, arrays, model_dir)
    else:
        fitted = _fit_classical(config, spec, dataset, arrays, model_dir)
    if fitted is None:  # a DDP rank other than 0
        return run
    fitted.setdefault("timing", {})["total_seconds"] = round(time.perf_counter() - started, 3)
    if spec.kind == "deep":
        from medlens.training.config import optimiser_steps_warning

        n_fit = len(arrays["train"][0]) * (config.patches_per_case if segmentation else 1)
        steps = optimiser_steps_warning(config.epochs, n_fit, config.batch_size)
        fitted["warnings"] = ([steps] if steps else []) + list(fitted.get("warnings") or [])
    if segmentation:
        from medlens.training.segmentation import write_segmentation_artifacts

        provenance = {k: fitted.get(k) for k in _PROVENANCE}
        write_segmentation_artifacts(config, spec, dataset, splits, arrays, names, model_dir, fitted, provenance)
    else:
        _write_model_artifacts(config, spec, dataset, splits, arrays, model_dir, fitted)
    from medlens.manifest import artifact_files, record_files

    folder = f"models/{model_dir.name}/"
    mine = [f for f in artifact_files(run.root) if f.startswith(folder)]
    record_files(run.root, [*written, *mine], f"train:{model_dir.name}", forget=folder)
    return run


class InputCache:
    """Preprocessed splits, kept for the next model with the same ids, size, channels and steps.

    ``compare`` passes one cache to every model it trains, so a suite preprocesses each distinct
    preprocessing once; a single ``train`` uses a fresh one.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

    def get(self, dataset: Dataset, splits: dict, config: TrainConfig, *, show_progress: bool) -> dict:
        import json

        key = json.dumps(
            [splits, config.task, config.img_size, config.channels, config.preprocessing], sort_keys=True, default=str
        )
        if key not in self._arrays:
            self._arrays[key] = _load_splits(dataset, splits, config, show_progress=show_progress)
        return dict(self._arrays[key])


def _check_fit(dataset: Dataset, spec: Any, task: str | None) -> None:
    from medlens.models.registry import check_task

    if task != "segmentation" and dataset.task not in CLASSIFICATION:
        raise MedlensError(f"cannot train a classifier: the source's task is '{dataset.task.value}'", dataset.uri)
    check_task(spec, dataset.task.value)
    if dataset.dims not in spec.dims:
        want = " or ".join(f"{d}D" for d in spec.dims)
        raise MedlensError(f"model '{spec.name}' takes {want} images but the source is {dataset.dims}D", dataset.uri)
    if len(dataset) == 0:
        raise MedlensError("the source holds no samples", dataset.uri)


def _prepare_model_dir(model_dir: ModelDir, *, resume: bool) -> None:
    """A fresh training replaces everything of this model (no stale artifacts can mix with the new
    ones); a resumed one keeps it and needs last.ckpt."""
    if resume:
        if not model_dir.last_checkpoint.is_file():
            raise MedlensError(
                "nothing to resume: no checkpoint (train without --resume first)", model_dir.last_checkpoint
            )
        return
    if model_dir.root.is_dir():
        shutil.rmtree(model_dir.root)
    model_dir.create()


def _splits(
    run: RunDir, dataset: Dataset, config: TrainConfig, *, write: bool, written: list[Path]
) -> dict[str, list[str]]:
    """The run's splits: reused from splits.json when present, else planned (and written)."""
    from medlens.data.leakage import check_reuse, plan_splits, write_plan
    from medlens.data.splits import check_splits, read_splits

    if run.splits.is_file():
        stored = read_splits(run.splits)
        check_reuse(stored["splitting"], config.resplit, config.drop_duplicates, run.splits)
        splits = _only_splits(stored)
        try:
            check_splits(dataset, splits)
        except MedlensError as e:
            raise MedlensError(f"{e.problem}: was this run made from another source?", run.splits) from None
    else:
        plan = plan_splits(
            dataset,
            seed=config.seed,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            resplit=config.resplit,
            drop_duplicates=config.drop_duplicates,
            show_progress=config.progress and write,
        )
        splits = _only_splits(plan.splits)
        if write:
            written += write_plan(run.root, plan, seed=config.seed, source=config.source)
    for name in ("train", "val"):
        if not splits.get(name):
            raise MedlensError(f"the '{name}' split is empty: too few samples to train", dataset.uri)
    splits.setdefault("test", [])
    return splits


def _only_splits(obj: Any) -> dict[str, list[str]]:
    if isinstance(obj, dict) and "splits" in obj and isinstance(obj["splits"], dict):
        obj = obj["splits"]
    return {k: list(obj.get(k, [])) for k in ("train", "val", "test")}


def _load_splits(dataset: Dataset, splits: dict, config: TrainConfig, *, show_progress: bool) -> dict:
    """Model inputs per split, by the inference core's loader (which refuses collapsed inputs);
    for segmentation, each case's input and mask (:func:`medlens.training.segmentation.load_cases`)."""
    from medlens.inference.preprocess import load_inputs

    out = {}
    if config.task == "segmentation":
        from medlens.training.segmentation import load_cases

        n_classes = len(dataset.class_names) or None
        return {
            name: load_cases(dataset, ids, config, n_classes, desc=f"loading {name}", show_progress=show_progress)
            for name, ids in splits.items()
            if ids
        }
    for name, ids in splits.items():
        if ids:
            out[name] = load_inputs(
                dataset,
                ids,
                size=config.img_size,
                channels=config.channels,
                preprocessing=config.preprocessing,
                show_progress=show_progress,
                desc=f"loading {name}",
            )
    return out


# -- deep -----------------------------------------------------------------------------------
def _fit_deep(
    config: TrainConfig,
    spec: Any,
    dataset: Dataset,
    arrays: dict,
    model_dir: ModelDir,
    names: list[str],
    test_ids: list[str],
) -> dict | None:
    """Fit a deep network with Lightning; ``names``: the classes it predicts; ``test_ids``: the
    images that ``--weights`` from pretraining must not have seen."""

    from medlens.training.trainer import EpochTimer, best_checkpoint, build_trainer, write_training_log

    gan_info = None
    if config.task == "segmentation":
        module, datamodule = _segmentation_module(config, dataset, arrays, len(names))
    else:
        if config.augment == "gan":
            arrays, gan_info = _gan_oversample(config, dataset, arrays, model_dir)
        module, datamodule = _classifier_module(config, dataset, arrays)
    pretrained = None
    if config.weights:
        from medlens.training.pretrain import load_start_weights

        pretrained = load_start_weights(
            module.net, config.weights, config=config, source_uri=dataset.uri, test_ids=test_ids
        )
    resumed_from = None
    ckpt_path = None
    if config.resume:
        ckpt_path = str(model_dir.last_checkpoint)
        state = _load_checkpoint(model_dir, model_dir.last_checkpoint)
        resumed_from = {"epoch": int(state.get("epoch", 0)), "global_step": int(state.get("global_step", 0))}
    timer = EpochTimer()
    trainer = build_trainer(config, model_dir, extra_callbacks=[timer])
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if not trainer.is_global_zero:
        return None

    best = best_checkpoint(trainer)
    best_epoch = None
    if best is not None:
        state = _load_checkpoint(model_dir, best)
        module.load_state_dict(state["state_dict"])
        best_epoch = int(state.get("epoch", 0))
    module.cpu()
    from medlens.models.deep.weights import save_weights

    save_weights(module.net, model_dir.weights, metadata={"model": config.model, "medlens_version": __version__})
    write_training_log(model_dir)
    score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return {
        "net": module.net,
        "best_epoch": best_epoch,
        "best_score": None if score is None else float(score),
        "epochs_run": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "stopped_early": bool(trainer.should_stop and trainer.current_epoch < config.epochs),
        "resumed_from": resumed_from,
        "session": {"start_step": timer.start_step, "end_step": int(trainer.global_step)},
        "gan": gan_info,
        "pretrained": pretrained,
        "warnings": (pretrained or {}).get("warnings", []),
        "timing": timer.summary(),
        "n_train_fit": int(len(arrays["train"][0])),
    }


def _classifier_module(config: TrainConfig, dataset: Dataset, arrays: dict) -> tuple[Any, Any]:
    """The classifier's LightningModule and its in-memory data module."""
    import lightning as L

    from medlens.training.datamodule import ArrayDataModule
    from medlens.training.lightning_module import ClassifierModule, class_weights

    task = dataset.task.value
    num_outputs = len(dataset.class_names)
    y_train = arrays["train"][1]
    L.seed_everything(config.seed, workers=True, verbose=False)  # before the network's initialisation
    module = ClassifierModule(
        config.model,
        in_channels=config.channels,
        num_outputs=num_outputs,
        spatial_dims=dataset.dims,
        img_size=config.img_size,
        task=task,
        lr=config.lr,
        weight_decay=config.weight_decay,
        optimizer=config.optimizer,
        scheduler=config.scheduler,
        epochs=config.epochs,
        loss_weights=class_weights(y_train, task, num_outputs) if config.imbalance == "weighted-loss" else None,
        augmentation=config.augmentation,
        seed=config.seed,
    )
    datamodule = ArrayDataModule(
        {k: v for k, v in arrays.items() if k in ("train", "val")},
        batch_size=config.batch_size,
        balance=config.imbalance == "sampler",
        num_workers=config.num_workers,
        seed=config.seed,
    )
    return module, datamodule


def _segmentation_module(config: TrainConfig, dataset: Dataset, arrays: dict, num_outputs: int) -> tuple[Any, Any]:
    """The segmentation network's LightningModule and its patch data module."""
    import lightning as L

    from medlens.training.datamodule import SegmentationDataModule
    from medlens.training.lightning_module import SegmentationModule

    assert config.patch_size is not None  # resolve_config sets it for segmentation
    L.seed_everything(config.seed, workers=True, verbose=False)  # before the network's initialisation
    module = SegmentationModule(
        str(config.model),
        in_channels=int(config.channels or 1),
        num_outputs=num_outputs,
        spatial_dims=dataset.dims,
        patch_size=config.patch_size,
        lr=float(config.lr or 1e-3),
        weight_decay=config.weight_decay,
        optimizer=config.optimizer,
        scheduler=config.scheduler,
        epochs=config.epochs,
        seed=config.seed,
    )
    datamodule = SegmentationDataModule(
        {k: v for k, v in arrays.items() if k in ("train", "val")},
        batch_size=int(config.batch_size or 1),
        patch=config.patch_size,
        patches_per_case=config.patches_per_case,
        pos_fraction=config.pos_fraction,
        augmentation=config.augmentation,
        num_workers=config.num_workers,
        seed=config.seed,
    )
    return module, datamodule


def _load_checkpoint(model_dir: ModelDir, path: Path) -> dict:
    """A checkpoint this training wrote, verified against the manifest and read as plain tensors
    (``weights_only=True``: nothing in the file can run code)."""
    import pickle

    import torch

    from medlens.manifest import verify_replaced

    problem = verify_replaced(model_dir.root.parent.parent, path)
    if problem:
        raise MedlensError(f"{problem}; refusing to load it (train again without --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise MedlensError(f"not a checkpoint of plain tensors ({e})".splitlines()[0], path) from None


def _gan_oversample(config: TrainConfig, dataset: Dataset, arrays: dict, model_dir: ModelDir) -> tuple[dict, dict]:
    """Train a GAN on the training split, save a sample grid, add minority samples to train only."""
    from medlens.models.deep.gan import augment_minority, save_sample_grid, train_gan

    if dataset.task is Task.MULTILABEL or dataset.dims != 2:
        raise MedlensError("--augment gan supports single-label 2D images only")
    x, y = arrays["train"]
    gan = train_gan(
        x,
        y,
        num_classes=len(dataset.class_names),
        epochs=config.gan_epochs,
        seed=config.seed,
        show_progress=config.progress,
    )
    x_new, y_new, info = augment_minority(x, y, gan, seed=config.seed)
    save_sample_grid(gan, model_dir.samples_png, dataset.class_names, seed=config.seed)
    out = dict(arrays)
    out["train"] = (np.asarray(x_new, dtype=np.float32), np.asarray(y_new))
    return out, {"epochs": config.gan_epochs, **_jsonable(info)}


# -- classical ------------------------------------------------------------------------------
def _fit_classical(config: TrainConfig, spec: Any, dataset: Dataset, arrays: dict, model_dir: ModelDir) -> dict:
    from medlens.models.classical.persistence import save_estimator
    from medlens.training.classical import fit_classical

    gan_info = None
    if config.augment == "gan":
        arrays, gan_info = _gan_oversample(config, dataset, arrays, model_dir)
    task = dataset.task.value
    (xt, yt), (xv, yv) = arrays["train"], arrays["val"]
    started = time.perf_counter()
    result = fit_classical(config.model, xt, yt, xv, yv, task=task, seed=config.seed, show_progress=config.progress)
    seconds = time.perf_counter() - started
    save_estimator(result.estimator, model_dir.estimator)
    _write_classical_log(model_dir, result)
    return {
        "estimator": result.estimator,
        "best_params": _jsonable(result.best_params),
        "best_score": float(result.best_score),
        "gan": gan_info,
        "timing": {
            "fit_seconds": round(seconds, 3),
            "feature_seconds": round(result.feature_seconds, 3),
            "images_per_second": round(len(xt) / max(seconds, 1e-9), 1),
        },
        "n_train_fit": int(len(xt)),
    }


def _write_classical_log(model_dir: ModelDir, result: Any) -> None:
    """training_log.csv of a classical fit: one row per hyper-parameter setting tried."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", "params", f"val_{result.metric}", "fit_seconds", "best"])
    for i, row in enumerate(result.grid_scores):
        params = ";".join(f"{k}={v}" for k, v in sorted(row["params"].items()))
        best = row["params"] == result.best_params
        writer.writerow([i, params, f"{row['score']:.6g}", f"{row['fit_seconds']:.3f}", int(best)])
    atomic_write_bytes(model_dir.training_log, buf.getvalue().encode())


# -- artifacts ------------------------------------------------------------------------------
def _write_model_artifacts(
    config: TrainConfig,
    spec: Any,
    dataset: Dataset,
    splits: dict,
    arrays: dict,
    model_dir: ModelDir,
    fitted: dict,
) -> None:
    """The model card, and predictions and metrics computed through the bundle the card describes
    (:class:`medlens.inference.bundle.Bundle`: the path every later prediction takes)."""
    from medlens.evaluation.metrics import classification_metrics
    from medlens.evaluation.thresholds import choose_threshold
    from medlens.inference.bundle import Bundle
    from medlens.inference.card import card_from_dict, write_card
    from medlens.inference.codes import concepts_for

    task = dataset.task.value
    card = card_from_dict(
        {
            "name": model_dir.name,
            "model": spec.name,
            "kind": spec.kind,
            "dims": dataset.dims,
            "task": task,
            "class_names": list(dataset.class_names),
            "num_outputs": len(dataset.class_names),
            "in_channels": config.channels,
            "img_size": config.img_size,
            "modality": dataset.modality,
            "codes": concepts_for(dataset.class_names, config.source, overrides=config.codes),
            "preprocessing": config.preprocessing,
            "cam_layer": (spec.defaults or {}).get("cam_layer"),
            "mc_dropout": (spec.defaults or {}).get("mc_dropout"),
            "weights_file": model_dir.weights.name if spec.kind == "deep" else model_dir.estimator.name,
            "source": config.source,
            "seed": config.seed,
            "medlens_version": __version__,
            "config": config.to_dict(),
            **{k: fitted.get(k) for k in _PROVENANCE},
        }
    )
    bundle = Bundle(card, net=fitted.get("net"), estimator=fitted.get("estimator"))
    outputs = {  # one pass per split: the probabilities, and the features the guard's thresholds need
        split: bundle.raw_proba_and_features(x, features=split == "val")
        for split, (x, _) in arrays.items()
        if split in ("val", "test")
    }
    probs = {split: p for split, (p, _) in outputs.items()}
    guard = _fit_guard(config, bundle, dataset, splits, arrays, f_val=outputs.get("val", (None, None))[1])
    guard.save(model_dir.root)
    card = card.model_copy(update={"ood": guard.spec})
    threshold = None
    if task == "binary":
        try:
            threshold = float(choose_threshold(arrays["val"][1], probs["val"]))
        except (MedlensError, ValueError):  # validation lacks a class
            threshold = 0.5
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        if split not in probs:
            continue
        metrics[split] = classification_metrics(arrays[split][1], probs[split], task, threshold=threshold)
        _write_predictions(
            model_dir.predictions(split), splits[split], arrays[split][1], probs[split], dataset.class_names
        )
    metrics["n"] = {k: len(v) for k, v in splits.items()}
    metrics["n_train_fit"] = fitted.get("n_train_fit")
    metrics["timing"] = fitted.get("timing", {})
    metrics["warnings"] = fitted.get("warnings") or []
    write_json(model_dir.metrics, metrics)
    if threshold is not None:
        card = card.model_copy(update={"thresholds": {"decision": threshold}, "thresholds_chosen_on": "val (T = 1)"})
    write_card(model_dir.info, card)


GUARD_PROFILE_IMAGES = 2000
"""At most this many training images (a seeded sample) give the guard its size and colour profile."""


def _fit_guard(
    config: TrainConfig, bundle: Any, dataset: Dataset, splits: dict, arrays: dict, *, f_val: np.ndarray | None
) -> Any:
    """The out-of-distribution guard (:mod:`medlens.inference.ood`): fitted on the training split,
    thresholds on validation (``f_val``: its features, from the pass that also gave its probabilities;
    on training when there is no validation split, and the card says so)."""
    from medlens.inference.ood import fit_guard

    x_train, y_train = arrays["train"]
    _, f_train = bundle.raw_proba_and_features(x_train)
    x_val = arrays["val"][0] if "val" in arrays else x_train
    f_val = f_val if "val" in arrays else f_train
    ids = cap_ids(list(splits["train"]), GUARD_PROFILE_IMAGES, seed=config.seed)
    guard = fit_guard(
        images=(dataset.load(i).image for i in ids),
        x_train=x_train,
        y_train=y_train,
        f_train=f_train,
        x_val=x_val,
        f_val=f_val,
        feature_source=bundle.feature_source,
        accept=config.ood_accept,
        modality=dataset.modality,
    )
    if "val" not in arrays:
        guard.spec["thresholds_chosen_on"] = "train (no validation split)"
    return guard


_PROVENANCE = (
    "best_params",
    "best_epoch",
    "best_score",
    "epochs_run",
    "global_step",
    "stopped_early",
    "resumed_from",
    "session",
    "gan",
    "pretrained",
)


def _write_predictions(path: Path, ids: list[str], y: np.ndarray, probs: np.ndarray, class_names: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "label", *[f"prob_{c}" for c in class_names]])
    for sample_id, label, p in zip(ids, y, probs):
        label_text = ";".join(str(int(v)) for v in np.ravel(label)) if np.ndim(label) else str(int(label))
        writer.writerow([sample_id, label_text, *[f"{float(v):.9g}" for v in np.ravel(p)]])
    atomic_write_bytes(path, buf.getvalue().encode())


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return repr(obj)
