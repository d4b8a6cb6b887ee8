"""Batch prediction into a folder: every core, each input answered exactly once, resumable.

``medlens predict RUN INPUTS... --out DIR`` reads inputs in data-loader workers, answers them
through the network a batch at a time (:meth:`Predictor.answer_prepared`: an input's answer does
not depend on its batch) and writes each input's files whole (:mod:`medlens.serving.outputs`).

**Exactly once, resumable.** After a batch's files are written (each whole: temporary file and
rename), one line per input goes to the rank's journal ``DIR/.predict/rank<R>.jsonl`` with each
file's size, and the journal is flushed and fsynced once per batch (group commit; the output files
themselves are not fsynced one by one). An input is done when a journal holds it as answered for
the same model (weights sha256), format and ``--explain`` and its files are there with the sizes
recorded (a file a power loss cut short is not). A rerun of the command skips done inputs, so a
SIGKILL costs at most the batch in flight; a failed input is tried again.

**Past one process**: :mod:`medlens.serving.batch_ddp` runs the same batches under DDP.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from medlens.errors import MedlensError, printable
from medlens.serving.outputs import write_outputs
from medlens.serving.predictor import InputItem, PredictionResult, Predictor

JOURNAL_DIR = ".predict"
DEFAULT_BATCH = 64


@dataclass
class Failure:
    """Why one input was not answered (picklable: it crosses from loader workers)."""

    text: str  # one line naming the input
    internal: bool  # a fault of medlens rather than of the input


def failure(item: InputItem, error: BaseException) -> Failure:
    """The one-line message for an input that failed (MedlensError: its own; else 'unexpected')."""
    if isinstance(error, MedlensError):
        return Failure(printable(str(error) if error.path else f"{item.label}: {error}"), False)
    first = str(error).splitlines()[0][:200] if str(error) else ""
    return Failure(printable(f"{item.label}: unexpected {type(error).__name__} ({first})"), True)


@dataclass
class BatchOutcome:
    """What a batch run did (in this process's rank; rank 0 sums all ranks)."""

    answered: int = 0
    skipped: int = 0  # done by an earlier run
    failures: list[Failure] = field(default_factory=list)
    referred: list[str] = field(default_factory=list)

    @property
    def internal(self) -> bool:
        return any(f.internal for f in self.failures)


class Journal:
    """One rank's record of answered and failed inputs, committed once per batch."""

    def __init__(self, out: Path, rank: int, key: dict[str, Any]):
        self.path = out / JOURNAL_DIR / f"rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = key
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def add(self, item: InputItem, *, files: Sequence[Path] = (), error: str | None = None) -> None:
        entry = {"name": item.name, "input": item.label, "ok": error is None, **self.key}
        entry.update({"files": {p.name: p.stat().st_size for p in files}} if error is None else {"error": error})
        self._file.write(json.dumps(entry) + "\n")

    def commit(self) -> None:
        """Make the lines added so far durable (one fsync for the batch)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.commit()
        self._file.close()


def done_names(out: Path, key: dict[str, Any]) -> set[str]:
    """Inputs answered by earlier runs into ``out`` with the same model, format and explain,
    whose files are all still there."""
    done: set[str] = set()
    for path in sorted((out / JOURNAL_DIR).glob("rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill before its commit: not done
                continue
            if (
                entry.get("ok")
                and all(entry.get(k) == v for k, v in key.items())
                and all(_size(out / name) == size for name, size in (entry.get("files") or {}).items())
            ):
                done.add(entry["name"])
    return done


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def pending_items(
    predictor: Predictor, items: Sequence[InputItem], out: Path, *, fmt: str, explain: bool
) -> list[InputItem]:
    """``items`` less those an earlier run into ``out`` answered (:func:`done_names`)."""
    out.mkdir(parents=True, exist_ok=True)
    done = done_names(out, journal_key(predictor, fmt, explain))
    return [item for item in items if item.name not in done]


def journal_key(predictor: Predictor, fmt: str, explain: bool) -> dict[str, Any]:
    return {"model_sha256": predictor.model_sha256, "format": fmt, "explain": bool(explain)}


class _Inputs:
    """The pending inputs as a map-style dataset: item i read, checked and preprocessed (or its
    failure), in the data loader's workers."""

    def __init__(self, predictor: Predictor, items: Sequence[InputItem]):
        self.predictor, self.items = predictor, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        try:
            return index, self.predictor.prepare_item(self.items[index])
        except Exception as e:  # noqa: BLE001 - one input's failure is its own answer
            return index, failure(self.items[index], e)


class BatchWriter:
    """Answers one loader batch, writes its files and commits the journal (any process, any rank)."""

    def __init__(
        self,
        predictor: Predictor,
        items: Sequence[InputItem],
        out: Path,
        *,
        fmt: str,
        explain: bool,
        rank: int = 0,
        on_result: Callable[[InputItem, PredictionResult, list[Path]], None] | None = None,
        on_failure: Callable[[Failure], None] | None = None,
    ):
        self.predictor, self.items, self.out = predictor, list(items), out
        self.fmt, self.explain = fmt, explain
        self.journal = Journal(out, rank, journal_key(predictor, fmt, explain))
        self.outcome = BatchOutcome()
        self.on_result, self.on_failure = on_result, on_failure

    def __call__(self, batch: Sequence[tuple[int, Any]]) -> None:
        ready = []
        for index, prepared in batch:
            if isinstance(prepared, Failure):
                self._failed(self.items[index], prepared)
            else:
                ready.append((self.items[index], prepared))
        for item, answer in self.predictor.answer_prepared(ready, explain=self.explain):
            if isinstance(answer, Exception):
                self._failed(item, failure(item, answer))
                continue
            try:
                _, written = write_outputs(
                    answer, item.name, fmt=self.fmt, out=self.out, explain=self.explain, durable=False
                )
            except Exception as e:  # noqa: BLE001 - e.g. --format sr for a PNG: this input fails
                self._failed(item, failure(item, e))
                continue
            self.journal.add(item, files=written)
            self.outcome.answered += 1
            if answer.prediction.out_of_scope:
                self.outcome.referred.append(item.label)
            if self.on_result is not None:
                self.on_result(item, answer, written)
        self.journal.commit()

    def _failed(self, item: InputItem, why: Failure) -> None:
        self.journal.add(item, error=why.text)
        self.outcome.failures.append(why)
        if self.on_failure is not None:
            self.on_failure(why)

    def close(self) -> None:
        self.journal.close()


def loader(predictor: Predictor, items: Sequence[InputItem], *, batch_size: int, workers: int) -> Any:
    """A torch DataLoader over the pending inputs: batches of (index, prepared input or failure)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        _Inputs(predictor, items),  # type: ignore[arg-type]
        batch_size=max(1, int(batch_size)),
        shuffle=False,
        num_workers=max(0, int(workers)),
        collate_fn=list,  # (index, prepared input or failure) pairs as they are
        persistent_workers=False,
    )


def predict_folder(
    predictor: Predictor,
    items: Sequence[InputItem],
    out: Path,
    *,
    fmt: str,
    explain: bool,
    batch_size: int = DEFAULT_BATCH,
    workers: int = 0,
    progress: bool = True,
    on_result: Callable[[InputItem, PredictionResult, list[Path]], None] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
) -> BatchOutcome:
    """Answer ``items`` into ``out`` in this process (see the module's docstring)."""
    pending = pending_items(predictor, items, out, fmt=fmt, explain=explain)
    writer = BatchWriter(predictor, pending, out, fmt=fmt, explain=explain, on_result=on_result, on_failure=on_failure)
    from medlens.progress import bar

    try:
        with bar(len(pending), desc="predict", disable=not progress or not pending, unit="img") as b:
            for batch in loader(predictor, pending, batch_size=batch_size, workers=workers):
                writer(batch)
                b.update(len(batch))
    finally:
        writer.close()
    writer.outcome.skipped = len(items) - len(pending)
    return writer.outcome
