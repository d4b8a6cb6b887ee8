"""Greedy batching of concurrent calls (the service's network pass and audit commits)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from medlens.serving.batching import GreedyBatcher


@pytest.mark.parametrize("own_thread", [False, True])
def test_concurrent_calls_share_batches_and_each_gets_its_own_result(own_thread):
    sizes = []
    gate = threading.Event()

    def run(items):
        sizes.append(len(items))
        gate.wait(5)  # the first batch runs while the others queue up
        return [i * 10 for i in items]

    batcher = GreedyBatcher(run, max_batch=8, own_thread=own_thread)
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(batcher, i) for i in range(12)]
        time.sleep(0.3)
        gate.set()
        assert [f.result(timeout=10) for f in futures] == [i * 10 for i in range(12)]
    assert sum(sizes) == 12 and max(sizes) > 1 and max(sizes) <= 8
    batcher.close()


def test_a_lone_call_runs_at_once_alone_in_the_callers_thread():
    sizes, threads = [], []

    def run(items):
        sizes.append(len(items))
        threads.append(threading.get_ident())
        return list(items)

    batcher = GreedyBatcher(run, max_batch=16)
    assert batcher("x") == "x" and sizes == [1] and threads == [threading.get_ident()]
    batcher.close()


@pytest.mark.parametrize("own_thread", [False, True])
def test_under_sustained_load_every_caller_is_answered_and_batches_grow(own_thread):
    """Leadership passes on: no caller waits behind others forever, one batch runs at a time."""
    running, overlaps, sizes = [0], [], []
    lock = threading.Lock()

    def run(items):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        time.sleep(0.002)
        sizes.append(len(items))
        with lock:
            running[0] -= 1
        return [(i, threading.get_ident()) for i in items]

    batcher = GreedyBatcher(run, max_batch=8, own_thread=own_thread)

    def client(c):
        return [batcher(c * 1000 + k)[0] for k in range(25)]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(client, range(16)))
        ran_on = set(pool.map(lambda _: (batcher(-1)[1], threading.get_ident()), range(16)))
    assert answers == [[c * 1000 + k for k in range(25)] for c in range(16)]
    runners, callers = {r for r, _ in ran_on}, {c for _, c in ran_on}
    if own_thread:  # one thread of the batcher ran every batch
        assert len(runners) == 1 and not runners & callers
    else:  # the callers themselves (leaders)
        assert runners <= callers
    assert max(overlaps) == 1 and sum(sizes) == 416 and max(sizes) > 1 and len(sizes) < 416
    batcher.close()


@pytest.mark.parametrize("own_thread", [False, True])
def test_a_failing_item_fails_alone(own_thread):
    gate, sizes = threading.Event(), []

    def run(items):
        sizes.append(len(items))
        gate.wait(5)  # the first call holds the thread while the next three queue into one batch
        if "bad" in items:
            raise ValueError("bad item")
        return [i.upper() for i in items]

    batcher = GreedyBatcher(run, max_batch=8, own_thread=own_thread)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher, "first")
        time.sleep(0.2)
        futures = {x: pool.submit(batcher, x) for x in ("a", "bad", "c")}
        time.sleep(0.2)
        gate.set()
        assert first.result(timeout=10) == "FIRST"
        assert futures["a"].result(timeout=10) == "A" and futures["c"].result(timeout=10) == "C"
        with pytest.raises(ValueError, match="bad item"):
            futures["bad"].result(timeout=10)
    assert sizes == [1, 3, 1, 1, 1]  # the batch of three failed, then each ran alone
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher("a")


def test_run_executes_a_function_alone_on_the_own_thread_between_batches():
    gate, seen = threading.Event(), []

    def run(items):
        gate.wait(5)
        seen.append(("batch", list(items), threading.get_ident()))
        return items

    batcher = GreedyBatcher(run, max_batch=8, own_thread=True)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher, 1)
        time.sleep(0.2)  # the first batch holds the thread; 2, the task and 3 queue behind it, in that order
        second = pool.submit(batcher, 2)
        time.sleep(0.1)
        task = pool.submit(batcher.run, lambda a, b=0: ("task", a + b, threading.get_ident()), 40, b=2)
        time.sleep(0.1)
        third = pool.submit(batcher, 3)
        time.sleep(0.1)
        gate.set()
        assert [f.result(timeout=10) for f in (first, second, third)] == [1, 2, 3]
        name, value, task_thread = task.result(timeout=10)
    assert (name, value) == ("task", 42)
    assert [items for _, items, _ in seen] == [[1], [2], [3]]  # the task split the queue: 2 and 3 never shared
    assert {t for *_, t in seen} == {task_thread}  # one thread ran the batches and the task

    with pytest.raises(ZeroDivisionError):
        batcher.run(lambda: 1 / 0)
    assert batcher(4) == 4  # a failing task leaves the thread working
    batcher.close()
    with pytest.raises(RuntimeError, match="own thread"):
        GreedyBatcher(run).run(print)
