"""Batch prediction (`medlens predict ... --out DIR`): batched answers equal one-at-a-time answers,
each input is answered exactly once across DDP ranks, and a SIGKILL costs only the batch in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medlens.serving.predictor import Predictor, find_inputs


@pytest.fixture(scope="module")
def many_pngs(tmp_path_factory) -> Path:
    """96 synthetic chest images (32 px PNG) in one folder, some of them blank (they must fail)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("many") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(96):
        pixels = np.zeros((32, 32), np.uint8) if i % 24 == 5 else rng.integers(0, 255, (32, 32), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def deep(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run)


def _journals(out: Path) -> dict[str, list[dict]]:
    """Each rank's journal lines, by file name."""
    return {p.name: [json.loads(x) for x in p.read_text().splitlines()] for p in (out / ".predict").glob("rank*.jsonl")}


def _journal(out: Path) -> list[dict]:
    return [entry for lines in _journals(out).values() for entry in lines]


def test_mc_dropout_draws_do_not_depend_on_the_batch(deep):
    import torch

    x = torch.rand(5, 1, 32, 32)
    mc = deep.bundle._mc
    together = mc.logits(x, seed=3)
    alone = torch.cat([mc.logits(x[i : i + 1], seed=3) for i in range(5)], dim=1)
    assert together.shape == (mc.passes, 5, 3) and torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1])  # the draws differ from each other


def test_one_pass_gives_the_plain_output_features_and_draws(deep):
    """Bundle.probe: probabilities, guard features and MC draws from one pass equal the separate calls."""
    bundle = deep.bundle
    x = np.random.default_rng(1).random((6, 1, 32, 32), dtype=np.float32)
    raw, features, samples = bundle.probe(x, features=True)
    raw_alone, features_alone = bundle.raw_proba_and_features(x)
    assert np.abs(raw - raw_alone).max() < 1e-6 and np.abs(features - features_alone).max() < 1e-5
    import torch

    draws = bundle._mc.logits(torch.from_numpy(x), seed=bundle.card.seed)
    assert np.abs(samples - bundle._calibrated(draws)).max() < 1e-6 and samples.shape == (bundle._mc.passes, 6, 3)
    assert not np.allclose(samples[0], samples[1])


def test_batched_answers_equal_one_at_a_time(deep, many_pngs):
    items, problems = find_inputs([many_pngs])
    assert not problems and len(items) == 96
    batched = {item.name: answer for item, answer in deep.predict_items(items[:20], batch_size=7)}
    for item in items[:20]:
        answer = batched[item.name]
        if item.path.name in ("img005.png",):
            assert "blank" in str(answer)
            continue
        single = deep.predict_path(item.path).prediction
        got = answer.prediction
        assert got.finding == single.finding and got.abstain == single.abstain
        for c in single.probabilities:
            assert got.probabilities[c] == pytest.approx(single.probabilities[c], abs=2e-6)
        assert got.uncertainty == pytest.approx(single.uncertainty, abs=1e-5)
        assert got.out_of_scope == single.out_of_scope


def test_a_csv_lists_the_inputs(cli, tiny_classical_run, many_pngs, tmp_path):
    listing = tmp_path / "inputs.csv"
    listing.write_text(f"path,note\n{many_pngs / 'img000.png'},a\n../missing.png,b\n")
    items, problems = find_inputs([listing])
    assert [i.name for i in items] == ["img000"] and problems == [f"{tmp_path / '../missing.png'}: file not found"]
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    code, _, err = cli("predict", tiny_classical_run, tmp_path / "bad.csv")
    assert code == 2 and "needs a 'path' column" in err


def test_a_rerun_skips_what_an_earlier_run_answered(cli, tiny_classical_run, many_pngs, tmp_path):
    out = tmp_path / "out"
    code, _, err = cli("predict", tiny_classical_run, many_pngs, "--out", out, "--no-progress", "--workers", "1")
    assert code == 2 and "4 input(s) failed, 92 predicted" in err  # the four blank images
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert len(first) == 92
    (out / "img000.json").unlink()  # lost: answered again
    (out / "img002.json").write_bytes(b"")  # cut short (e.g. by a power loss): answered again
    code, _, err = cli("predict", tiny_classical_run, many_pngs, "--out", out, "--no-progress")
    assert code == 2 and "skipped 90 input(s) already predicted" in err and "4 input(s) failed, 2 predicted" in err
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    redone = ("img000.json", "img002.json")
    assert {k: v for k, v in after.items() if k not in redone} == {k: v for k, v in first.items() if k not in redone}
    assert json.loads((out / "img002.json").read_text())["model"] == "elm"
    # another format is another answer: nothing is skipped
    code, _, err = cli("predict", tiny_classical_run, many_pngs, "--out", out, "--format", "fhir", "--no-progress")
    assert "skipped" not in err and len(list(out.glob("*.fhir.json"))) == 92


@pytest.mark.slow
def test_two_ddp_ranks_answer_each_input_exactly_once_and_a_kill_loses_only_the_batch_in_flight(
    tiny_run, deep, many_pngs, tmp_path
):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "medlens.cli.main", "predict", str(tiny_run), str(many_pngs), "--out", str(out)]
    command += ["--devices", "2", "--batch-size", "1", "--workers", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDLENS_PSEUDONYM_KEY": "k"}
    killed = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed.poll() is None:
        if (out / ".predict").is_dir() and len([e for e in _journal(out) if e["ok"]]) >= 4:
            break
        time.sleep(0.01)
    assert killed.poll() is None, "the run ended before it could be killed: " + killed.stderr.read().decode()[-2000:]
    os.killpg(killed.pid, signal.SIGKILL)  # the whole job: rank 0 and the rank it started
    killed.wait(timeout=30)
    before = _journals(out)
    finished = {e["name"] for lines in before.values() for e in lines if e["ok"]}
    assert 4 <= len(finished) < 92
    mtimes = {n: (out / f"{n}.json").stat().st_mtime_ns for n in finished}

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 2, rerun.stderr[-3000:]  # the four blank images fail
    assert f"skipped {len(finished)} input(s) already predicted" in rerun.stderr
    assert "Traceback" not in rerun.stderr and "Initializing distributed" not in rerun.stderr
    entries = [e for name, lines in _journals(out).items() for e in lines[len(before.get(name, [])) :]]
    assert not finished & {e["name"] for e in entries}  # nothing finished before the kill was answered again
    answered = [e["name"] for e in _journal(out) if e["ok"]]
    assert len(answered) == len(set(answered)) == 92  # every readable input exactly once
    assert sorted(set(answered) | {e["name"] for e in entries if not e["ok"]}) == sorted(
        p.stem for p in many_pngs.glob("*.png")
    )
    assert all((out / f"{n}.json").stat().st_mtime_ns == t for n, t in mtimes.items())
    # in the rerun both ranks answered, disjoint shares (a failed input is retried, maybe by the other rank)
    after = _journals(out)
    shares = [{e["name"] for e in after[f"rank{r}.jsonl"][len(before.get(f"rank{r}.jsonl", [])) :]} for r in (0, 1)]
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    # the same answers as one process (batch-invariant draws, the same pseudonym key)
    one = json.loads((out / "img001.json").read_text())
    single = deep.predict_path(many_pngs / "img001.png").prediction
    assert one["probabilities"] == pytest.approx(single.probabilities, abs=2e-6)
    assert one["uncertainty"] == pytest.approx(single.uncertainty, abs=1e-5)
