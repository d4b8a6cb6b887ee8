"""`medlens plan`: settings chosen from the fingerprint so the estimated time fits the budget."""

from __future__ import annotations

import math

import pytest
import torch

from medlens.runs import RunDir, read_json, read_yaml
from medlens.training import plan as planning

FP = {"dims": 2, "imbalance_ratio": 1.2, "intensity": {"min": 0.0, "max": 1.0}}  # skips the real fingerprint


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fixed_rate(rate_at_32: float):
    """A throughput stand-in: images/s falling with the pixel count, as convolutions do."""

    def measure(model, *, img_size, **kw):
        return rate_at_32 * (32 / img_size) ** 2

    return measure


def test_epochs_follow_from_the_measured_throughput_and_budget(monkeypatch):
    monkeypatch.setattr(planning, "measure_throughput", fixed_rate(100.0))
    plan = planning.make_plan("synthetic:chest2d@32", budget_minutes=1.0, fingerprint=FP, show_progress=False)
    n_train, n_val = plan["data"]["n_train"], plan["data"]["n_val"]
    epoch_s = n_train / 100.0 + n_val * planning.VAL_COST / 100.0
    assert plan["config"]["epochs"] == math.floor(60 * planning.BUDGET_USE / epoch_s)
    assert plan["estimate_minutes"] <= 1.0
    assert plan["config"]["model"] == "cnn-small" and plan["config"]["img_size"] == 32
    assert plan["config"]["augment"] == "standard"  # a small training set
    assert plan["config"]["preprocessing"]["steps"] and plan["reasoning"]
    more = planning.make_plan("synthetic:chest2d@32", budget_minutes=3.0, fingerprint=FP, show_progress=False)
    assert more["config"]["epochs"] > plan["config"]["epochs"]


def test_a_tight_budget_shrinks_the_input_size(monkeypatch):
    monkeypatch.setattr(planning, "measure_throughput", fixed_rate(20.0))
    roomy = planning.make_plan("synthetic:chest2d@128", budget_minutes=60.0, fingerprint=FP, show_progress=False)
    tight = planning.make_plan("synthetic:chest2d@128", budget_minutes=0.5, fingerprint=FP, show_progress=False)
    assert roomy["config"]["img_size"] == 128
    assert tight["config"]["img_size"] < 128
    assert tight["estimate_minutes"] <= 0.5
    assert any("halving" in r for r in tight["reasoning"])


def test_epochs_are_capped(monkeypatch):
    monkeypatch.setattr(planning, "measure_throughput", fixed_rate(1e6))
    plan = planning.make_plan("synthetic:chest2d@32", budget_minutes=60.0, fingerprint=FP, show_progress=False)
    assert plan["config"]["epochs"] == planning.MAX_EPOCHS


def test_throughput_is_measured_on_this_machine():
    ips = planning.measure_throughput(
        "cnn-small", in_channels=1, num_outputs=2, dims=2, img_size=28, batch_size=16, seconds=0.2, max_steps=2
    )
    assert ips > 1


def test_plan_cli_then_train_follows_the_plan(cli, tmp_path):
    plan_path = tmp_path / "plan.json"
    code, out, err = cli("plan", "synthetic:chest2d@32", "--budget-minutes", "2", "--out", plan_path)
    assert code == 0, err
    plan = read_json(plan_path)
    assert plan["schema"] == planning.SCHEMA and plan["measurements"][0]["images_per_second"] > 0
    assert plan["estimate_minutes"] <= 2
    run = tmp_path / "run"
    code, out, err = cli(
        "train",
        "synthetic:chest2d@32",
        "--plan",
        plan_path,
        "--epochs",
        "1",
        "--max-samples",
        "40",
        "--no-progress",
        "--out",
        run,
    )
    assert code == 0, err
    cfg = read_yaml(RunDir(run).config)
    for key in ("model", "img_size", "batch_size", "augment", "imbalance", "preprocessing", "patience"):
        assert cfg[key] == plan["config"][key], key
    assert cfg["epochs"] == 1  # an option given on the command line wins over the plan
    assert cfg["plan"] == str(plan_path)


def test_the_plan_follows_max_samples_and_warns_about_too_few_steps(monkeypatch):
    """`plan --max-samples` plans for the capped splits; a plan whose epochs give fewer than 100
    optimiser steps says so (before: it ignored the cap and produced a one-class model silently)."""
    from medlens.training.config import MIN_OPTIMISER_STEPS, optimiser_steps_warning

    monkeypatch.setattr(planning, "measure_throughput", fixed_rate(1.0))  # a slow machine: few epochs fit
    plan = planning.make_plan(
        "synthetic:chest2d@32", budget_minutes=0.5, fingerprint=FP, show_progress=False, max_samples=40
    )
    assert plan["data"]["n_train"] == 40 and plan["max_samples"] == 40
    assert any(f"fewer than {MIN_OPTIMISER_STEPS}" in w for w in plan["warnings"]), plan["warnings"]
    assert optimiser_steps_warning(10, 640, 32) is None  # 200 steps
    assert "only 20 optimiser steps" in optimiser_steps_warning(1, 640, 32)


def test_training_with_too_few_steps_warns(cli, tmp_path):
    code, _, err = cli(
        "train", "synthetic:chest2d@32", "--model", "cnn-small", "--epochs", "1", "--max-samples", "40",
        "--out", tmp_path / "run", "--no-progress",
    )  # fmt: skip
    assert code == 0 and "optimiser steps" in err
    assert "optimiser steps" in read_json(RunDir(tmp_path / "run").model("cnn-small").metrics)["warnings"][0]
