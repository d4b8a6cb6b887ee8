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


class _Payload:
    """Unpickling this runs code (it touches a marker file): what a planted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_never_runs_code(tmp_path):
    """last.ckpt is in the manifest and loads as plain tensors: a changed file is refused by its hash,
    and a payload whose hash was written into the manifest too is refused by weights_only."""
    import pickle

    import torch

    from medlens.manifest import record_files

    out = tmp_path / "run"
    args = ("train", "synthetic:chest2d@32", "--model", "cnn-small", "--epochs", "1", "--max-samples", "32")
    first = run_medlens(*args, "--out", out, "--no-progress", timeout=240, env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-2000:]
    model = RunDir(out).model("cnn-small")
    stages = {k: v["stage"] for k, v in read_json(RunDir(out).manifest)["files"].items() if k.endswith(".ckpt")}
    assert stages == {f"models/cnn-small/checkpoints/{n}.ckpt": "train:cnn-small" for n in ("best", "last")}

    marker = tmp_path / "pwned"
    state = torch.load(model.last_checkpoint, weights_only=True)
    state["payload"] = _Payload(marker)
    with open(model.last_checkpoint, "wb") as f:
        pickle.dump(state, f)
    resumed = run_medlens(*args[:5], "2", *args[6:], "--out", out, "--resume", timeout=240, env=ONE_THREAD)
    assert resumed.returncode == 2 and "changed since it was written" in resumed.stderr
    assert not marker.exists()

    record_files(out, [model.last_checkpoint], "train:cnn-small")  # the manifest "agrees" now
    resumed = run_medlens(*args[:5], "2", *args[6:], "--out", out, "--resume", timeout=240, env=ONE_THREAD)
    assert resumed.returncode == 2 and "not a checkpoint of plain tensors" in resumed.stderr
    assert "Traceback" not in resumed.stderr and not marker.exists()
