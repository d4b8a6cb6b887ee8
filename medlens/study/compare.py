"""`medlens compare`: train every model of a suite on identical splits, then evaluate them.

:func:`compare` opens the source once, and every later step uses that one dataset: it chooses
the suite's models for its dimensions and task (with no suite named, ``quick`` for classification
and ``seg-quick`` for segmentation), with a budget estimates training time
(:func:`medlens.study.suites.fit_budget`), writes the run's ``config.yaml`` (source, seed, suite),
trains each model with :func:`medlens.training.run.train` into the same run directory — the
first model writes ``splits.json`` and every later one reuses it, so all models see the same
train / val / test ids; models with the same preprocessing share one preprocessed copy of the
splits (:class:`medlens.training.run.InputCache`) — records the suite, per-model wall times
and each model's outcome (trained, failed with its error, interrupted) in ``study.json``; a model
that fails does not stop the others, and runs :func:`medlens.study.evaluate.evaluate` (comparison.json, model card
updates, figures, report). ``resplit="patient"`` and ``drop_duplicates`` reach every model through
its :class:`~medlens.training.config.TrainConfig`: the first model's splits.json (and dropped.csv)
is made by :func:`medlens.data.leakage.plan_splits`, and every later model reuses it.

Segmentation runs use the same steps (the ``pixel-forest`` baseline on the same splits);
evaluation then computes per-case Dice, HD95 and NSD (:mod:`medlens.study.evaluate_segmentation`).
With ``max_samples`` a segmentation run's ``splits.json`` holds the capped splits, because its
evaluation scores every case its splits list (a case without a prediction is a warning).

Models already in the run directory from an earlier call are evaluated with the new ones.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

from medlens.errors import MedlensError
from medlens.evaluation.subgroups import MIN_GROUP
from medlens.runs import RunDir, read_json, write_json
from medlens.study.suites import SuiteEntry, default_suite, fit_budget, suite_entries

Log = Callable[[str], None]


def compare(
    source: str,
    suite: str | Sequence[SuiteEntry | str] | None,
    out: str | Path,
    *,
    seed: int = 0,
    budget_minutes: float | None = None,
    max_samples: int | None = None,
    show_progress: bool = True,
    epochs: int | None = None,
    n_resamples: int = 1000,
    threads: int | None = None,
    log: Log | None = None,
    resplit: str | None = None,
    drop_duplicates: str | None = None,
    by: Sequence[str] = (),
    bands: dict[str, list[float]] | None = None,
    min_group: int = MIN_GROUP,
    pretrain_epochs: int | None = None,
) -> RunDir:
    """Train the models of ``suite`` on ``source`` into ``out`` and evaluate them; returns the run.

    ``suite``: a suite name, comma-separated model names, or a list of :class:`SuiteEntry`;
    None: the source's task's default suite (:func:`medlens.study.suites.default_suite`).
    ``epochs`` caps every deep model's epochs (quick checks); ``budget_minutes`` scales them
    down to fit (see :mod:`medlens.study.suites`); ``max_samples`` caps each split.
    ``resplit`` ("patient") and ``drop_duplicates`` ("exact", "near"): see :mod:`medlens.data.leakage`.
    ``by``, ``bands``, ``min_group``: the evaluation's subgroups (:mod:`medlens.study.subgroups`),
    checked before training. ``pretrain_epochs``: every deep classifier is also trained from an
    encoder pretrained without labels (:func:`with_pretrained`), outside the budget.
    """
    from medlens.data.leakage import check_choices
    from medlens.data.sources import open_source
    from medlens.study.evaluate import evaluate

    say = log or (lambda msg: None)
    started = time.perf_counter()
    check_choices(resplit, drop_duplicates)
    splitting = {"resplit": resplit, "drop_duplicates": drop_duplicates}
    dataset = open_source(source, seed=seed)
    segmentation = dataset.task.value == "segmentation"
    if by:  # an unknown column fails before training
        from medlens.study.subgroups import check_request

        check_request(dataset, by, bands)
    if suite is None:
        suite = default_suite(dataset.task.value)
    entries = suite_entries(suite, dataset.dims, dataset.task.value)
    if epochs is not None:
        entries = [_cap_epochs(e, epochs) for e in entries]
    budget = None
    if budget_minutes is not None:
        entries, budget = _fit_budget(
            dataset, source, entries, budget_minutes, seed=seed, max_samples=max_samples, resplit=resplit
        )
        say(
            f"budget {budget_minutes:g} min: estimated training {budget['estimated_training_seconds']:.0f} s, "
            f"epoch scale {budget['epoch_scale']:.2f}"
            + ("" if budget["fits"] else " (does not fit even at one epoch per deep model: choose a smaller suite)")
        )

    if pretrain_epochs:
        entries = with_pretrained(entries, pretrain_epochs)
    from medlens.runs import write_yaml
    from medlens.training.run import InputCache

    run = RunDir(out).create()
    write_yaml(
        run.config,
        {"source": source, "seed": seed, "suite": _suite_name(suite), "max_samples": max_samples, **splitting},
    )
    if segmentation and max_samples and not run.splits.is_file():
        _write_capped_splits(run, dataset, source, seed=seed, max_samples=max_samples, **splitting)
    inputs = InputCache()
    study: dict[str, Any] = {
        "source": source,
        "suite": _suite_name(suite),
        "seed": seed,
        "max_samples": max_samples,
        **splitting,
        "entries": [e.to_dict() for e in entries],
        "budget": budget,
        "timings": {},
        "status": "training",
    }
    write_json(run.study, study)
    outcomes = study["outcomes"] = {e.name: {"status": "not started"} for e in entries}
    for k, entry in enumerate(entries, 1):
        say(
            f"[{k}/{len(entries)}] training {entry.name}"
            + (f" ({entry.settings['epochs']} epochs)" if entry.settings.get("epochs") else "")
        )
        t0 = time.perf_counter()
        try:
            _train_one(
                source,
                dataset,
                inputs,
                entry,
                run,
                seed=seed,
                max_samples=max_samples,
                show_progress=show_progress,
                threads=threads,
                splitting=splitting,
            )
        except KeyboardInterrupt:
            outcomes[entry.name] = {"status": "interrupted", "seconds": round(time.perf_counter() - t0, 2)}
            study["status"] = "interrupted"
            write_json(run.study, study)
            raise
        except (MedlensError, RuntimeError, ValueError, MemoryError) as e:  # the next model still trains
            error = str(e) if isinstance(e, MedlensError) else f"{type(e).__name__}: {e}"
            outcomes[entry.name] = {"status": "failed", "error": " ".join(error.split())[:500]}
            say(f"[{k}/{len(entries)}] {entry.name} failed: {outcomes[entry.name]['error']}")
            write_json(run.study, study)
            continue
        seconds = time.perf_counter() - t0
        study["timings"][entry.name] = round(seconds, 2)
        outcomes[entry.name] = {"status": "trained", "seconds": round(seconds, 2)}
        test = read_json(run.model(entry.name).metrics).get("test") or {}
        metric, value = ("Dice", test.get("mean_dice")) if segmentation else ("AUC", test.get("auc"))
        say(
            f"[{k}/{len(entries)}] {entry.name} done in {seconds:.1f} s"
            + (f" (test {metric} {value:.3f})" if isinstance(value, (int, float)) else "")
        )
        write_json(run.study, study)
    if not any(o["status"] == "trained" for o in outcomes.values()):
        study["status"] = "failed"
        write_json(run.study, study)
        raise MedlensError(
            "no model of the suite could be trained: "
            + "; ".join(f"{m}: {o.get('error', o['status'])}" for m, o in outcomes.items()),
            run.study,
        )
    study["timings"]["training_total"] = round(time.perf_counter() - started, 2)
    study["status"] = "trained"
    write_json(run.study, study)  # evaluate copies study.json into comparison.json
    say("evaluating")
    t0 = time.perf_counter()
    evaluate(
        run.root, seed=seed, n_resamples=n_resamples, log=say, dataset=dataset, by=by, bands=bands, min_group=min_group
    )
    study["status"] = "evaluated"
    study["timings"]["evaluation"] = round(time.perf_counter() - t0, 2)
    study["timings"]["total"] = round(time.perf_counter() - started, 2)
    write_json(run.study, study)
    from medlens.manifest import record_files

    record_files(run.root, [run.study, run.config], "compare")
    return run


def _suite_name(suite: str | Sequence[SuiteEntry | str]) -> Any:
    return suite if isinstance(suite, str) else [e if isinstance(e, str) else e.name for e in suite]


def _write_capped_splits(
    run: RunDir,
    dataset: Any,
    source: str,
    *,
    seed: int,
    max_samples: int,
    resplit: str | None,
    drop_duplicates: str | None,
) -> None:
    """splits.json with each split capped as training caps it (same ids: :func:`cap_ids`)."""
    from medlens.data.leakage import plan_splits, write_plan
    from medlens.data.splits import cap_ids
    from medlens.manifest import record_files

    plan = plan_splits(dataset, seed=seed, resplit=resplit, drop_duplicates=drop_duplicates)
    plan.splits = {k: cap_ids(v, max_samples, seed=seed) for k, v in plan.splits.items()}
    record_files(run.root, write_plan(run.root, plan, seed=seed, source=source), "compare")


def _cap_epochs(entry: SuiteEntry, epochs: int) -> SuiteEntry:
    if "epochs" not in entry.settings:
        return entry
    settings = {**entry.settings, "epochs": min(int(entry.settings["epochs"]), epochs)}
    if "patience" in settings:
        settings["patience"] = min(int(settings["patience"]), settings["epochs"])
    return SuiteEntry(entry.model, settings)


def _train_one(
    source: str,
    dataset: Any,
    inputs: Any,
    entry: SuiteEntry,
    run: RunDir,
    *,
    seed: int,
    max_samples: int | None,
    show_progress: bool,
    threads: int | None,
    splitting: dict[str, str | None],
) -> None:
    from medlens.training.config import TrainConfig, native_size
    from medlens.training.run import train

    settings = dict(entry.settings)
    cap = settings.pop("max_img_size", None)
    if cap is not None and "img_size" not in settings:
        first = dataset.load(dataset.records[0].id).image
        settings["img_size"] = min(int(cap), native_size(first.shape))
    pretrain_epochs = settings.pop("pretrain_epochs", None)
    if pretrain_epochs:
        settings["weights"] = str(
            _pretrain(
                source,
                entry.model,
                run,
                pretrain_epochs,
                img_size=settings.get("img_size"),
                patch_size=settings.get("patch_size"),
                seed=seed,
                max_samples=max_samples,
                threads=threads,
                show_progress=show_progress,
            )
        )
    config = TrainConfig(source=source, model=entry.model, out=str(run.root), seed=seed, progress=show_progress)
    config = config.updated(**settings, max_samples=max_samples, threads=threads, **splitting)
    train(config, explicit=set(settings), dataset=dataset, inputs=inputs)


PRETRAINED = "pretrained"  # RUN/pretrained/MODEL.safetensors (+ .json card): the stage "pretrain:MODEL"
PRETRAINED_SUFFIX = "+pretrained"


def with_pretrained(entries: list[SuiteEntry], epochs: int) -> list[SuiteEntry]:
    """Each deep model followed by the same entry named ``MODEL+pretrained``, which first
    pretrains the model for ``epochs`` without labels (:mod:`medlens.training.pretrain`: SimCLR
    for a classifier's encoder, masked inpainting for a segmentation network) on the run's
    training and validation images and then trains from it: the comparison's paired tests show
    the effect."""
    from medlens.models.registry import get_model

    if epochs < 1:
        raise MedlensError(f"--pretrain-epochs must be at least 1, not {epochs}")
    out = []
    for entry in entries:
        out.append(entry)
        if get_model(entry.model).kind == "deep" and "weights" not in entry.settings:
            name = entry.name + PRETRAINED_SUFFIX
            out.append(SuiteEntry(entry.model, {**entry.settings, "name": name, "pretrain_epochs": int(epochs)}))
    return out


def _pretrain(
    source: str,
    model: str,
    run: RunDir,
    epochs: int,
    *,
    img_size: int | None,
    patch_size: list[int] | None,
    seed: int,
    max_samples: int | None,
    threads: int | None,
    show_progress: bool,
) -> Path:
    """The encoder of ``model`` pretrained on the run's training and validation images (its
    ``splits.json``, written by the models trained before), recorded in the manifest."""
    from medlens.manifest import record_files
    from medlens.models.registry import get_model
    from medlens.training.pretrain import SEGMENTATION, PretrainConfig, pretrain

    config = PretrainConfig(
        source=source,
        out=str(run.root / PRETRAINED / f"{model}.safetensors"),
        model=model,
        method="mim" if SEGMENTATION in get_model(model).tasks else "simclr",
        epochs=epochs,
        img_size=img_size,
        patch_size=patch_size,
        seed=seed,
        max_samples=max_samples,
        splits=str(run.splits) if run.splits.is_file() else None,
        threads=threads,
        progress=show_progress,
    )
    weights = pretrain(config)
    record_files(run.root, [weights, config.paths()[1]], f"pretrain:{model}")
    return weights


def _fit_budget(
    dataset,
    source: str,
    entries: list[SuiteEntry],
    budget_minutes: float,
    *,
    seed: int,
    max_samples: int | None,
    resplit: str | None = None,
) -> tuple[list[SuiteEntry], dict[str, Any]]:
    """Resolve each deep model's input size and batch size as training will, then fit the budget."""
    from medlens.data.splits import assign_splits
    from medlens.models.registry import get_model
    from medlens.training.config import TrainConfig, native_size, resolve_config

    splits = assign_splits(dataset, seed=seed, resplit=resplit == "patient")
    n_train, n_val = len(splits.get("train", [])), len(splits.get("val", []))
    if max_samples:
        n_train, n_val = min(n_train, max_samples), min(n_val, max_samples)
    segmentation = dataset.task.value == "segmentation"
    if segmentation:  # deep models train on patches: this many per case and epoch
        n_train *= TrainConfig(source=source).patches_per_case
    first = dataset.load(dataset.records[0].id)
    img_sizes: dict[str, int | list[int]] = {}
    batch_sizes: dict[str, int] = {}
    for entry in entries:
        spec = get_model(entry.model)
        if spec.kind != "deep":
            continue
        settings = dict(entry.settings)
        cap = settings.pop("max_img_size", None)
        if cap is not None and "img_size" not in settings:
            settings["img_size"] = min(int(cap), native_size(first.image.shape))
        cfg = TrainConfig(source=source, model=entry.model, task="segmentation" if segmentation else None)
        cfg = cfg.updated(**settings)
        cfg = resolve_config(
            cfg, spec=spec, dims=dataset.dims, modality=dataset.modality, first_shape=first.image.shape
        )
        img_sizes[entry.model] = list(cfg.patch_size) if segmentation else int(cfg.img_size)
        batch_sizes[entry.model] = int(cfg.batch_size)
    return fit_budget(
        entries,
        budget_minutes,
        n_train=n_train,
        n_val=n_val,
        dims=dataset.dims,
        in_channels=int(first.image.shape[0]),
        num_outputs=max(len(dataset.class_names), 2),
        img_sizes=img_sizes,
        batch_sizes=batch_sizes,
        segmentation=segmentation,
    )
