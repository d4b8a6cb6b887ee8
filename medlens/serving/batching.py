"""Greedy batching of concurrent calls: what arrives while one batch runs goes into the next.

The service's request threads hand their prepared inputs (or audit rows) to one
:class:`GreedyBatcher`, which runs the batch function once for whatever is queued (up to
``max_batch``): one pass of the network for concurrent predictions, one durable commit for
concurrent audit rows. A lone request never waits for company (no timer): at one client the batch
is that request alone, under load batches grow by themselves.

Leader and followers, as databases do group commit: the caller that finds no batch running
leads: it runs batches in its own thread (a lone request pays no hand-over to another thread)
until its own item is answered, then makes the oldest waiting caller the next leader. The others
wait for their answer or their turn to lead. One batch runs at a time. With ``own_thread`` the
batches run on one thread of the batcher instead, and :meth:`GreedyBatcher.run` runs any other
function there, alone, between batches. The service keeps all its torch work on that thread:
each thread that enters a torch parallel region gets its own OpenMP team, and once two teams
exist every forward pass is slower, in every thread (cnn-small at 224 px on a 2-core host: 2.2-3.9
ms per pass with one team, 5.1-6.1 ms with two); torch's caches and the allocator's arenas also
then exist for one thread only.

Results and exceptions go back to each caller; when a batch fails as a whole, its items are run
one by one so that only the one at fault fails.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Call:
    """One caller's item, its outcome, and the event that wakes it (answered, or its turn to lead)."""

    __slots__ = ("item", "done", "result", "error", "wake")

    def __init__(self, item: Any):
        self.item, self.done, self.result, self.error = item, False, None, None
        self.wake = threading.Event()


class _Task:
    """A function for the own thread to run alone (see :meth:`GreedyBatcher.run`)."""

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict):
        self.fn, self.args, self.kwargs = fn, args, kwargs


class GreedyBatcher(Generic[T, R]):
    """Runs ``run(items) -> results`` (same length, same order) on batches of concurrent calls."""

    def __init__(
        self,
        run: Callable[[Sequence[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        own_thread: bool = False,
        name: str = "medlens-batcher",
    ):
        self._run, self.max_batch = run, max(1, int(max_batch))
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # no batch running
        self._queued = threading.Condition(self._lock)  # work for the own thread
        self._queue: deque[_Call] = deque()
        self._leading = False  # a batch is running, or a caller leads
        self._closed = False
        self.batches = 0  # how many batches ran (for tests and the curious)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True) if own_thread else None
        if self._thread is not None:
            self._thread.start()

    def __call__(self, item: T) -> R:
        """Queue ``item`` and return its result (raises what its run raised)."""
        return self._submit(item)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` run on the batcher's own thread, alone, in turn with the batches."""
        if self._thread is None:
            raise RuntimeError("run() needs a batcher with its own thread")
        return self._submit(_Task(fn, args, kwargs))

    def _submit(self, item: Any) -> Any:
        call = _Call(item)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(call)
            lead = not self._leading and self._thread is None
            self._leading = self._leading or lead
            self._queued.notify()
        if not lead:
            call.wake.wait()  # answered, or made the leader
        if not call.done:
            self._lead(call)
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def close(self, timeout: float = 30) -> None:
        """Refuse new calls and wait (up to ``timeout`` s) until the queued ones are answered."""
        with self._lock:
            self._closed = True
            self._queued.notify_all()
            self._idle.wait_for(lambda: not self._leading and not self._queue, timeout=timeout)

    def _work(self) -> None:
        """The own thread: batches of whatever is queued until closed."""
        while True:
            with self._lock:
                self._queued.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                batch = [self._queue.popleft()]
                while self._queue and len(batch) < self.max_batch and not _is_task(batch[0], self._queue[0]):
                    batch.append(self._queue.popleft())
                self._leading = True
            if isinstance(batch[0].item, _Task):
                self._run_task(batch[0])
            else:
                self._answer(batch)
            with self._lock:
                self._leading = False
                self._idle.notify_all()

    def _lead(self, own: _Call) -> None:
        while not own.done:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self._answer(batch)
        with self._lock:
            if self._queue:
                self._queue[0].wake.set()  # the oldest waiting caller leads next
            else:
                self._leading = False
                self._idle.notify_all()

    def _answer(self, batch: list[_Call]) -> None:
        self.batches += 1
        try:
            results = list(self._run([c.item for c in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(batch)} items")
        except BaseException:  # noqa: BLE001 - find the item at fault: each alone
            if len(batch) == 1:
                self._settle(batch[0], None, sys.exc_info()[1] or RuntimeError("batch failed"))
                return
            for call in batch:
                self._answer([call])
            return
        for call, result in zip(batch, results):
            self._settle(call, result, None)

    def _run_task(self, call: _Call) -> None:
        task = call.item
        try:
            result = task.fn(*task.args, **task.kwargs)
        except BaseException as e:  # noqa: BLE001 - the caller gets it
            self._settle(call, None, e)
            return
        self._settle(call, result, None)

    @staticmethod
    def _settle(call: _Call, result: Any, error: BaseException | None) -> None:
        call.result, call.error, call.done = result, error, True
        call.wake.set()


def _is_task(first: _Call, following: _Call) -> bool:
    """Whether ``following`` cannot join ``first``'s batch: a task runs alone."""
    return isinstance(first.item, _Task) or isinstance(following.item, _Task)
