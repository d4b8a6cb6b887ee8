"""Greedy batching of concurrent calls: what arrives while one batch runs goes into the next.

The service's request threads hand their prepared inputs (or audit rows) to one
:class:`GreedyBatcher`; its thread takes whatever is queued (up to ``max_batch``) and runs the
batch function once for all of them: one pass of the network for concurrent predictions, one
durable commit for concurrent audit rows. A lone request never waits for company (no timer): at
one client the batch is that request alone, under load batches grow by themselves.

Results and exceptions go back to each caller; when a batch fails as a whole, its items are run
one by one so that only the one at fault fails.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GreedyBatcher(Generic[T, R]):
    """Runs ``run(items) -> results`` (same length, same order) on batches of concurrent calls."""

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 32, name: str = "batcher"):
        self._run, self.max_batch = run, max(1, int(max_batch))
        self._queue: queue.Queue[tuple[T, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self.batches = 0  # how many batches ran (for tests and the curious)

    def __call__(self, item: T) -> R:
        """Queue ``item`` and wait for its result (raises what its run raised)."""
        if not self._thread.is_alive():
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[tuple[T, Future]]) -> None:
        self.batches += 1
        try:
            results = list(self._run([item for item, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(batch)} items")
        except BaseException:  # noqa: BLE001 - find the item at fault: each alone
            if len(batch) == 1:
                import sys

                batch[0][1].set_exception(sys.exc_info()[1] or RuntimeError("batch failed"))
                return
            for pair in batch:
                self._answer([pair])
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)
