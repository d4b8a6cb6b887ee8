"""The Lightning Trainer factory and what goes with it.

:func:`build_trainer` assembles a ``lightning.Trainer`` from a :class:`TrainConfig`:

- ``ModelCheckpoint`` "best.ckpt" (best on ``val_auc``, ``val_dice`` for segmentation, or ``val_loss``),
- a second ``ModelCheckpoint`` writing ``last.ckpt`` every N optimizer steps as well as at each
  epoch end, so that a SIGKILL mid-epoch loses little (``medlens train --resume``),
- ``EarlyStopping``, ``LearningRateMonitor``, medlens's progress bar (on stderr), the loggers
  (:func:`loggers`: CSV, TensorBoard, and MLflow when it is installed),
- with ``ema`` > 0, Lightning's ``WeightAveraging`` (an exponential moving average of the weights,
  used for validation and stored in the checkpoints),
- deterministic algorithms, accelerator "auto", and the devices / strategy / num_nodes /
  precision of the config (DDP on CPU uses the gloo backend); precision "auto" is resolved by
  :func:`resolve_precision` (bf16 mixed precision where the device computes bfloat16 natively).

:func:`write_training_log` turns the CSV logger's files (one per session, so a resumed run has
two) into the run's ``training_log.csv``, one row per epoch.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    WeightAveraging,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from medlens.errors import MedlensError
from medlens.manifest import record_replacement
from medlens.progress import lightning_callback
from medlens.runs import ModelDir, atomic_write_bytes
from medlens.training.config import TrainConfig

# Lightning advertises a cloud logger at every fit; medlens users do not need that line.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)

LOG_DIR = "logs"  # under the model directory, one version_N per training session
TENSORBOARD_DIR = "tensorboard"  # beside it: `tensorboard --logdir RUN/models` shows every model
RANK_DIGEST_ENV = "MEDLENS_RANK_DIGEST_DIR"  # test hook: each rank writes a digest of its weights


def monitor_key(config: TrainConfig) -> tuple[str, str]:
    """The metric that picks the best checkpoint and drives early stopping, with its mode."""
    return {"auc": ("val_auc", "max"), "dice": ("val_dice", "max")}.get(str(config.monitor), ("val_loss", "min"))


class RankDigest(Callback):
    """Writes ``rank{N}.json`` (sha256 of the final weights, step, world size) into a folder.

    Used by the DDP test to check that every rank ends with the same weights; enabled by setting
    ``MEDLENS_RANK_DIGEST_DIR``.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        h = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        info = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "sha256": h.hexdigest(),
        }
        atomic_write_bytes(self.folder / f"rank{trainer.global_rank}.json", json.dumps(info).encode())


class EpochTimer(Callback):
    """Wall time spent in training batches (validation excluded) and the samples seen: images/s."""

    def __init__(self):
        self.seconds = 0.0
        self.samples = 0
        self.start_step = 0
        self._start: float | None = None

    def _pause(self) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step  # > 0 when resumed from a checkpoint

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.samples += len(batch[0]) * trainer.world_size

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def summary(self) -> dict:
        ips = self.samples / self.seconds if self.seconds > 0 else None
        return {
            "train_seconds": round(self.seconds, 3),
            "train_samples": self.samples,
            "images_per_second": None if ips is None else round(ips, 1),
            "start_step": self.start_step,
        }


def ema_with_warmup(decay: float):
    """An ``AveragedModel`` ``multi_avg_fn``: exponential moving average whose decay warms up as
    ``min(decay, (1 + n) / (10 + n))`` after n updates (as timm's ModelEmaV3 does).

    Without the warm-up, the average keeps the first steps' weights and, worse, their BatchNorm
    running variances (which start at 1 and fall a hundredfold within an epoch) for hundreds of
    steps: on PneumoniaMNIST a plain 0.99 average predicted one class for 8 epochs. Integer
    buffers (``num_batches_tracked``) are copied.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def _accelerator(config: TrainConfig) -> str:
    if config.accelerator != "auto":
        return config.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def native_bf16(accelerator: str) -> bool:
    """Whether the accelerator computes bfloat16 natively: a CUDA device with bf16, or a CPU with
    AMX tiles (where oneDNN runs bf16 convolutions and matrix products on them)."""
    if accelerator == "gpu":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch; absent: no AMX assumed
    return accelerator == "cpu" and amx is not None and bool(amx())


def resolve_precision(config: TrainConfig, accelerator: str | None = None) -> str:
    """The Lightning precision for ``config``: "auto" becomes "bf16-mixed" where the device computes
    bfloat16 natively (:func:`native_bf16`; weights, optimizer and loss stay float32) and "32"
    elsewhere. A precision the accelerator cannot run is refused before any data is loaded."""
    accelerator = accelerator or _accelerator(config)
    precision = str(config.precision)
    if precision == "auto":
        return "bf16-mixed" if native_bf16(accelerator) else "32"
    if accelerator == "cpu" and precision == "16-mixed":
        raise MedlensError("--precision 16-mixed needs a GPU; use bf16-mixed or 32 on CPU")
    return precision


class RecordedCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that writes each file beside its final name and then renames it into place,
    so a kill at any moment leaves a whole checkpoint that ``--resume`` accepts.

    With a ``run_root``, :func:`medlens.manifest.record_replacement` first records the new file's
    hash in that run's manifest (keeping the hash it replaces), so any other change is refused.
    """

    def __init__(self, *args: Any, run_root: Path | None, stage: str = "", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.run_root, self.stage = (Path(run_root) if run_root else None), stage

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        final = Path(filepath)
        partial = final.with_name(f".{final.name}.partial")
        super()._save_checkpoint(trainer, str(partial))
        if trainer.is_global_zero:
            if self.run_root is not None:
                record_replacement(self.run_root, partial, final, self.stage)
            else:
                os.replace(partial, final)
        self._last_checkpoint_saved = str(final)


def build_trainer(
    config: TrainConfig, model_dir: ModelDir, *, extra_callbacks: list[Callback] | None = None
) -> L.Trainer:
    """A Trainer writing checkpoints to ``model_dir/checkpoints`` and CSV logs to ``model_dir/logs``."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    monitor, mode = monitor_key(config)
    recorded = {"run_root": model_dir.root.parent.parent, "stage": f"train:{model_dir.name}"}
    best = RecordedCheckpoint(
        **recorded,
        dirpath=model_dir.checkpoints,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    steps = RecordedCheckpoint(
        **recorded,
        dirpath=model_dir.checkpoints,
        monitor=None,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=max(1, int(config.checkpoint_every_n_steps)),
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [
        best,
        steps,
        EarlyStopping(monitor=monitor, mode=mode, patience=config.patience, check_finite=False),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if config.ema > 0:
        # validation, best.ckpt and the exported weights all see the averaged model (BN buffers too)
        callbacks.append(WeightAveraging(multi_avg_fn=ema_with_warmup(config.ema)))
    if config.progress:
        callbacks.append(lightning_callback())
    if os.environ.get(RANK_DIGEST_ENV):
        callbacks.append(RankDigest(os.environ[RANK_DIGEST_ENV]))
    callbacks += extra_callbacks or []
    return lightning_trainer(config, model_dir.root, callbacks)


def lightning_trainer(config: Any, root: Path, callbacks: list[Callback]) -> L.Trainer:
    """A Trainer with the hardware, precision, epochs and progress of ``config`` (a :class:`TrainConfig`
    or anything with those fields) and the :func:`loggers` of ``root``."""
    accelerator = _accelerator(config)
    return L.Trainer(
        accelerator=accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=resolve_precision(config, accelerator),
        max_epochs=config.epochs,
        callbacks=callbacks,
        logger=loggers(root),
        deterministic=True
        if (config.deterministic and accelerator == "cpu")
        else ("warn" if config.deterministic else False),
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )


def loggers(root: Path) -> list[Logger]:
    """Where training curves go: a CSV log in ``root/logs`` (read into ``training_log.csv``),
    TensorBoard event files in ``root/tensorboard`` and, when ``mlflow`` is installed and
    ``MLFLOW_TRACKING_URI`` says where its runs go, an MLflow run in experiment "medlens"."""
    out: list[Logger] = [
        CSVLogger(save_dir=str(root), name=LOG_DIR),
        TensorBoardLogger(save_dir=str(root), name=TENSORBOARD_DIR, default_hp_metric=False),
    ]
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and importlib.util.find_spec("mlflow") is not None:
        from lightning.pytorch.loggers import MLFlowLogger

        out.append(MLFlowLogger(experiment_name="medlens", run_name=Path(root).name, tracking_uri=uri))
    return out


def best_checkpoint(trainer: L.Trainer) -> Path | None:
    """Path of the best checkpoint (by the monitored metric), if one was written."""
    cb = trainer.checkpoint_callback
    path = getattr(cb, "best_model_path", "") if cb is not None else ""
    return Path(path) if path and Path(path).is_file() else None


def write_training_log(model_dir: ModelDir) -> list[dict]:
    """Merge the CSV logger's sessions into ``training_log.csv``: one row per epoch.

    Lightning logs step and epoch metrics on separate rows; rows of one epoch are merged, and a
    later session (a resumed run) overrides an earlier one for the epochs it repeats. Columns:
    ``epoch, step, train_loss, val_loss, val_auc, val_acc, lr, session``.
    """
    root = model_dir.root / LOG_DIR
    sessions = sorted(root.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    epochs: dict[int, dict] = {}
    for path in sessions:
        session = int(path.parent.name.split("_")[1])
        this: dict[int, dict] = {}
        pending: dict = {}  # rows without an epoch (LearningRateMonitor) belong to the next epoch row
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                values = {_column(k): v for k, v in row.items() if v not in ("", None)}
                if "epoch" not in values:
                    pending.update(values)
                    continue
                merged = this.setdefault(int(float(values["epoch"])), {"session": session})
                merged.update({**pending, **values} if "lr" not in merged else values)
                pending = {}
        epochs.update(this)  # a resumed session replaces the epochs it repeats
    rows = [_ordered(epoch, epochs[epoch]) for epoch in sorted(epochs)]
    columns = ["epoch", "step", "train_loss", "val_loss", "val_auc", "val_acc", "lr", "session"]
    extra = sorted({k for r in rows for k in r} - set(columns))
    lines = [",".join(columns + extra)]
    for r in rows:
        lines.append(",".join(_fmt(r.get(c, "")) for c in columns + extra))
    atomic_write_bytes(model_dir.training_log, ("\n".join(lines) + "\n").encode())
    return rows


def _column(key: str) -> str:
    return "lr" if key.startswith("lr-") else key


def _ordered(epoch: int, row: dict) -> dict:
    out = dict(row)
    out["epoch"] = epoch
    return out


def _fmt(value) -> str:
    if value in ("", None):
        return ""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return "nan"
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.6g}"
