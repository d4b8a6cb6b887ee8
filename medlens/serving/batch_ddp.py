"""Batch prediction under DDP: Lightning's predict loop runs :mod:`medlens.serving.batch`'s batches.

Lightning's unrepeated distributed sampler gives each rank a disjoint share of the pending inputs
(no input twice, none dropped); rank 0's list is broadcast first so that every rank splits the same
list. Each rank writes its own journal (``DIR/.predict/rank<R>.jsonl``); rank 0 sums the outcomes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L

from medlens.errors import MedlensError
from medlens.serving.batch import BatchOutcome, BatchWriter, loader, pending_items
from medlens.serving.predictor import PSEUDONYM_KEY_ENV, InputItem, Predictor


def predict_ddp(
    predictor: Predictor,
    items: list[InputItem],
    out: Path,
    *,
    devices: int,
    num_nodes: int,
    progress: bool,
    **options: Any,
) -> BatchOutcome | None:
    """:func:`medlens.serving.batch.predict_folder` under Lightning's predict loop with DDP (gloo
    on CPU, NCCL on GPUs), ``devices`` processes on each of ``num_nodes`` machines. Returns the
    outcome of all ranks on rank 0, None on the others (which must not report)."""
    import torch

    from medlens.progress import lightning_callback

    if num_nodes > 1 and not os.environ.get(PSEUDONYM_KEY_ENV):
        raise MedlensError(f"--num-nodes {num_nodes}: set ${PSEUDONYM_KEY_ENV} on every node (pseudonyms must agree)")
    os.environ.setdefault(PSEUDONYM_KEY_ENV, predictor.pseudonym_key)  # inherited by the ranks started here
    pending = pending_items(predictor, items, out, fmt=options["fmt"], explain=options["explain"])
    if not pending:  # nothing to start processes for
        return BatchOutcome(skipped=len(items))
    module = PredictModule(predictor, pending, out, **options)
    trainer = L.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[lightning_callback()] if progress else [],
        inference_mode=False,  # --explain's Grad-CAM needs gradients (the bundle turns them off elsewhere)
    )
    trainer.predict(module, return_predictions=False)
    if trainer.global_rank != 0:
        return None
    module.total.skipped = len(items) - len(pending)
    return module.total


class PredictModule(L.LightningModule):
    """Lightning's view of a batch prediction: the loader of the pending inputs and a predict step
    that answers and writes (:class:`BatchWriter`); no parameters, nothing to synchronise but the
    list of inputs (broadcast from rank 0) and the counts at the end."""

    def __init__(self, predictor: Predictor, pending: list[InputItem], out: Path, **options: Any):
        super().__init__()
        self.predictor, self.pending, self.out = predictor, pending, out
        self.batch_size = options.pop("batch_size")
        self.workers = options.pop("workers")
        self.options = options  # fmt, explain, on_result, on_failure
        self.writer: BatchWriter | None = None
        self.total = BatchOutcome()

    def setup(self, stage: str) -> None:
        bar = self.trainer.progress_bar_callback
        if bar is not None and self.trainer.global_rank != 0:
            bar.disable()  # one bar, rank 0's
        self.pending = self.trainer.strategy.broadcast(self.pending, src=0)  # every rank splits rank 0's list

    def predict_dataloader(self) -> Any:
        return loader(self.predictor, self.pending, batch_size=self.batch_size, workers=self.workers)

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch  # prepared inputs stay as they are; the bundle moves what it runs

    def on_predict_start(self) -> None:
        rank = self.trainer.global_rank
        self.writer = BatchWriter(self.predictor, self.pending, self.out, rank=rank, **self.options)

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        assert self.writer is not None
        self.writer(batch)

    def on_predict_end(self) -> None:
        import torch.distributed as dist

        assert self.writer is not None
        self.writer.close()
        mine = self.writer.outcome
        parts: list[Any] = [None] * self.trainer.world_size
        dist.all_gather_object(parts, (mine.answered, mine.failures, mine.referred))
        self.total.answered = sum(p[0] for p in parts)
        self.total.failures = [f for p in parts for f in p[1]]
        self.total.referred = [r for p in parts for r in p[2]]
