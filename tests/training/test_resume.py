"""Kill a training with SIGKILL mid-epoch, rerun with --resume: it continues and completes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from medlens.manifest import verify_manifest
from medlens.runs import RunDir, read_json
from tests.conftest import run_medlens

EPOCHS = 3
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # faster than two threads on a busy 2-core machine
ARGS = (
    "train",
    "synthetic:chest2d@32",
    "--model",
    "cnn-small",
    "--epochs",
    str(EPOCHS),
    "--batch-size",
    "16",
    "--max-samples",
    "160",
    "--checkpoint-every",
    "2",
    "--accelerator",
    "cpu",
    "--no-progress",
)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path):
    out = tmp_path / "run"
    model = RunDir(out).model("cnn-small")
    env = {**os.environ, **ONE_THREAD}
    log = tmp_path / "first.log"  # a file, not a pipe: a full pipe would stall the child
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medlens.cli.main", *ARGS, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        deadline = time.monotonic() + 120
        while not model.last_checkpoint.is_file():
            assert proc.poll() is None, f"training ended before a checkpoint appeared: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the first step checkpoint: mid-way through epoch 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not model.metrics.is_file() and not model.info.is_file()  # it really died before the end

    resumed = run_medlens(*ARGS, "--out", out, "--resume", timeout=240, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr

    info = read_json(model.info)
    steps_per_epoch = 160 // 16
    start = info["resumed_from"]["global_step"]
    assert 0 < start < steps_per_epoch  # it was killed within the first epoch
    assert info["session"]["start_step"] == start  # Lightning restored the step counter, not 0
    assert info["session"]["end_step"] == EPOCHS * steps_per_epoch  # and did not redo finished steps
    with open(model.training_log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert all(r["session"] == "1" for r in rows)  # every epoch's record comes from the resumed session
    assert verify_manifest(out) == [] and model.weights.is_file()
