"""Two-process DDP on CPU (gloo) through the command line: ranks agree, rank 0 writes the run."""

from __future__ import annotations

import json

import pytest

from medlens.manifest import verify_manifest
from medlens.runs import RunDir, read_json
from medlens.training.trainer import RANK_DIGEST_ENV
from tests.conftest import run_medlens


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(tmp_path):
    out = tmp_path / "run"
    digests = tmp_path / "digests"
    res = run_medlens(
        "train",
        "synthetic:chest2d@32",
        "--model",
        "cnn-small",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-samples",
        "64",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--num-nodes",
        "1",
        "--no-progress",
        "--out",
        out,
        timeout=180,
        env={RANK_DIGEST_ENV: str(digests), "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 for r in ranks)
    # DDP keeps replicas identical: same step count and bit-identical final weights
    assert ranks[0]["global_step"] == ranks[1]["global_step"] > 0
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    # each rank saw half of every epoch: 64 samples / (2 ranks * 8) = 4 steps per epoch
    assert ranks[0]["global_step"] == 2 * 4

    rd = RunDir(out)
    model = rd.model("cnn-small")
    assert verify_manifest(rd.root) == []
    info = read_json(model.info)
    assert info["config"]["devices"] == 2 and info["config"]["strategy"] == "ddp"
    assert sorted(p.name for p in (model.root / "logs").iterdir()) == ["version_0"]  # rank 0 logged alone
    assert res.stdout.count("run: ") == 1  # only rank 0 printed the summary
