"""`medlens train` and `medlens plan`."""

from __future__ import annotations

from pathlib import Path

import typer

from medlens.cli.common import SOURCE_ARG_HELP, console, err_console, print_json


def train(
    source: str = typer.Argument(..., help=SOURCE_ARG_HELP),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Model name (see `medlens models`). Default: cnn-small (classification), unet (segmentation), or the plan's.",
    ),
    task: str = typer.Option(
        None,
        "--task",
        help="classification | segmentation. Default: the source's (segmentation when its samples carry masks).",
    ),
    patch_size: str = typer.Option(
        None,
        "--patch-size",
        help="Segmentation: training patch (and sliding window), e.g. 32,48,32 or 64 (default: the first image's sides, rounded to the network's step).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (created; splits.json there is reused)."),
    epochs: int = typer.Option(None, "--epochs", help="Maximum epochs (deep models). Default 20."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size per device (default: the model's)."),
    img_size: int = typer.Option(None, "--img-size", help="Input side in pixels/voxels (default: native, capped)."),
    lr: float = typer.Option(None, "--lr", help="Learning rate (default: the model's)."),
    weight_decay: float = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 1e-4)."),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw | adam | sgd."),
    scheduler: str = typer.Option(None, "--scheduler", help="cosine | onecycle | none."),
    patience: int = typer.Option(None, "--patience", help="Early stopping: epochs without improvement (default 10)."),
    monitor: str = typer.Option(None, "--monitor", help="Best checkpoint and early stopping on validation auc | loss."),
    imbalance: str = typer.Option(None, "--imbalance", help="Class imbalance: weighted-loss | sampler | none."),
    augment: str = typer.Option(None, "--augment", help="none | light | standard | gan (GAN-made minority samples)."),
    gan_epochs: int = typer.Option(None, "--gan-epochs", help="GAN training epochs for --augment gan (default 30)."),
    ema: float = typer.Option(
        None,
        "--ema",
        help="Validate, checkpoint and export an exponential moving average of the weights with this decay per step (e.g. 0.99; default 0: off).",
    ),
    ood_accept: float = typer.Option(
        None,
        "--ood-accept",
        help="Share of in-distribution validation images the out-of-distribution guard accepts (default 0.99).",
    ),
    seed: int = typer.Option(
        None, "--seed", help="The one seed for splits, initialisation and augmentation (default 0)."
    ),
    max_samples: int = typer.Option(None, "--max-samples", help="Use at most N samples per split (quick runs)."),
    accelerator: str = typer.Option(
        None, "--accelerator", help="auto | cpu | gpu (default auto: a GPU when there is one)."
    ),
    devices: str = typer.Option(None, "--devices", help="Devices (processes) per node, e.g. 2 or auto."),
    strategy: str = typer.Option(None, "--strategy", help="auto | ddp | ... (Lightning strategies)."),
    num_nodes: int = typer.Option(None, "--num-nodes", help="Machines taking part in DDP."),
    precision: str = typer.Option(
        None,
        "--precision",
        help="auto (default: bf16-mixed on a CPU with AMX or a GPU with bf16, else 32) | 32 | bf16-mixed | 16-mixed (GPU).",
    ),
    num_workers: int = typer.Option(
        None, "--num-workers", help="DataLoader worker processes (0: in-process, fastest for in-memory data)."
    ),
    threads: int = typer.Option(
        None, "--threads", help="CPU threads for torch (default: one per core; 1 is faster on a busy machine)."
    ),
    checkpoint_every: int = typer.Option(
        None, "--checkpoint-every", help="Also write last.ckpt every N optimizer steps (default 50)."
    ),
    weights: Path = typer.Option(None, "--weights", help="Start from these local .safetensors weights."),
    codes: Path = typer.Option(
        None,
        "--codes",
        help='JSON file {"class": {"scheme": "SCT", "code": "...", "meaning": "..."}}: standard codes of the classes '
        "in SR and FHIR, instead of medlens's table.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from models/MODEL/checkpoints/last.ckpt."),
    plan: Path = typer.Option(None, "--plan", help="Follow a plan.json from `medlens plan` (options given here win)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Train one model on SOURCE and write a complete run directory."""
    from medlens.inference.codes import read_overrides
    from medlens.runs import is_global_zero
    from medlens.training.config import TrainConfig
    from medlens.training.run import train as run_train

    given = {
        "model": model,
        "task": task,
        "patch_size": _sides(patch_size),
        "epochs": epochs,
        "batch_size": batch_size,
        "img_size": img_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "patience": patience,
        "monitor": monitor,
        "imbalance": imbalance,
        "augment": augment,
        "gan_epochs": gan_epochs,
        "ema": ema,
        "ood_accept": ood_accept,
        "seed": seed,
        "max_samples": max_samples,
        "accelerator": accelerator,
        "devices": devices,
        "strategy": strategy,
        "num_nodes": num_nodes,
        "precision": precision,
        "num_workers": num_workers,
        "threads": threads,
        "checkpoint_every_n_steps": checkpoint_every,
        "weights": str(weights) if weights else None,
        "codes": read_overrides(codes) if codes else None,
    }
    explicit = {k for k, v in given.items() if v is not None}
    config = TrainConfig(source=source, out=str(out)).updated(
        **given, resume=resume or None, plan=str(plan) if plan else None, progress=False if no_progress else None
    )
    run = run_train(config, explicit=explicit)
    if not is_global_zero():
        return
    _summary(run)


def _sides(text: str | None) -> list[int] | None:
    """``--patch-size`` "32,48,32" or "64" as a list of ints."""
    if text is None:
        return None
    from medlens.errors import MedlensError

    try:
        return [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise MedlensError(f"--patch-size takes sides like 32,48,32 or 64, not '{text}'") from None


def _summary(run) -> None:
    """Print val/test AUC and ACC (segmentation: Dice per class) of the model just trained, and the run path."""
    from rich.table import Table

    from medlens.runs import read_json, read_yaml

    name = (read_yaml(run.config) or {}).get("model")  # the resolved config of this training
    metrics = read_json(run.model(name).metrics)
    table = Table(title=f"{name}")
    dice = "dice" in (metrics.get("val") or {})
    classes = list(metrics["val"]["dice"]) if dice else []
    columns = ("split", "n", *[f"Dice {c}" for c in classes], "mean Dice") if dice else ("split", "n", "AUC", "ACC")
    for column in columns:
        table.add_column(column, justify="right" if column != "split" else "left")
    for split in ("val", "test"):
        if split in metrics:
            m = metrics[split]
            n = str(metrics.get("n", {}).get(split, ""))
            if dice:
                table.add_row(split, n, *[_f(m["dice"][c]) for c in classes], _f(m.get("mean_dice")))
            else:
                table.add_row(split, n, _f(m.get("auc")), _f(m.get("acc")))
    console.print(table)
    ips = (metrics.get("timing") or {}).get("images_per_second")
    if ips:
        console.print(f"training throughput: {ips:.0f} images/s")
    for warning in metrics.get("warnings") or []:
        err_console.print(f"[bold yellow]warning:[/bold yellow] {warning}", highlight=False, soft_wrap=True)
    console.print(f"run: {run.root}")


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def plan(
    source: str = typer.Argument(..., help=SOURCE_ARG_HELP),
    budget_minutes: float = typer.Option(10.0, "--budget-minutes", help="Training time to fit in, on this machine."),
    out: Path = typer.Option(Path("plan.json"), "--out", "-o", help="Where to write the plan."),
    model: str = typer.Option(None, "--model", "-m", help="Use this model instead of choosing one."),
    seed: int = typer.Option(0, "--seed", help="Seed of the splits the plan assumes."),
    max_samples: int = typer.Option(None, "--max-samples", help="Plan for at most N samples per split (as train)."),
    task: str = typer.Option(
        None, "--task", help="classification | segmentation (default: the source's, as `medlens train --task`)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Choose input size (segmentation: patch size), normalization, augmentation, model, batch size and epochs for a time budget."""
    from medlens.training.plan import make_plan, render_plan, write_plan

    result = make_plan(
        source,
        budget_minutes=budget_minutes,
        model=model,
        seed=seed,
        show_progress=not as_json,
        max_samples=max_samples,
        task=task,
    )
    write_plan(out, result)
    if as_json:
        print_json(result)
        return
    render_plan(result, console)
    err_console.print(f"plan written to {out}; follow it with `medlens train {source} --plan {out} --out RUN`")


def pretrain(
    source: str = typer.Argument(..., help=SOURCE_ARG_HELP + " Labels, if any, are not used."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="The encoder's weights file (.safetensors); its card goes beside it."
    ),
    model: str = typer.Option("cnn-small", "--model", "-m", help="The network whose encoder to pretrain."),
    method: str = typer.Option(
        "simclr",
        "--method",
        help="simclr (contrastive: two random views of each image) | mim (masked patches rebuilt: vit and "
        "the segmentation networks).",
    ),
    epochs: int = typer.Option(20, "--epochs", help="Epochs over the training and validation images."),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        help="Images per batch (default 256; a segmentation network: its training batch of patches).",
    ),
    img_size: int = typer.Option(None, "--img-size", help="Input side (default: as train chooses it)."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (cosine schedule)."),
    temperature: float = typer.Option(0.2, "--temperature", help="Temperature of the contrastive loss (simclr)."),
    mask_ratio: float = typer.Option(0.6, "--mask-ratio", help="Share of each image's patches masked (mim)."),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the splits (train with the same seed so its test images stay unseen) and the views."
    ),
    max_samples: int = typer.Option(None, "--max-samples", help="Use at most N images per split (quick runs)."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto | cpu | gpu."),
    devices: str = typer.Option("1", "--devices", help="Devices (processes) per node."),
    precision: str = typer.Option("auto", "--precision", help="auto | 32 | bf16-mixed | 16-mixed (GPU)."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch (default: one per core)."),
    checkpoint_every: int = typer.Option(
        50, "--checkpoint-every", help="Also write last.ckpt every N optimizer steps."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from WEIGHTS.pretrain/checkpoints/last.ckpt."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Pretrain a network's encoder on SOURCE's training and validation images without their labels (never its test images); `train --weights` starts from it."""
    from medlens.runs import is_global_zero, read_json
    from medlens.training.pretrain import PretrainConfig
    from medlens.training.pretrain import pretrain as run_pretrain

    config = PretrainConfig(
        source=source,
        out=str(out),
        model=model,
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        img_size=img_size,
        lr=lr,
        temperature=temperature,
        mask_ratio=mask_ratio,
        seed=seed,
        max_samples=max_samples,
        accelerator=accelerator,
        devices=int(devices) if devices.isdigit() else devices,
        precision=precision,
        threads=threads,
        checkpoint_every_n_steps=checkpoint_every,
        resume=resume,
        progress=not no_progress,
    )
    weights = run_pretrain(config)
    if not is_global_zero():
        return
    card = read_json(config.paths()[1])
    result = card["result"]
    top1 = result.get("final_top1")
    found = "" if top1 is None else f" (each view's nearest other view is its partner in {top1:.0%})"
    console.print(
        f"{card['model']} encoder, {card['method']}: {card['images']['n']} images, {result['epochs_run']} epochs, "
        f"final loss {_f(result.get('final_loss'))}{found}"
    )
    console.print(f"weights: {weights}")
    console.print(f"card: {config.paths()[1]}")


def register(app: typer.Typer) -> None:
    app.command(name="train")(train)
    app.command(name="plan")(plan)
    app.command(name="pretrain")(pretrain)
