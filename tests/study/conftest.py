"""Fixtures of the study tests: a tiny binary dataset and one tiny compared run, shared."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def binary_npz(tmp_path_factory) -> Path:
    """A small binary (normal / opacity) phantom dataset at 32 px in the MedMNIST npz layout."""
    from medlens.data.sources.synthetic import CHEST2D, open_synthetic
    from medlens.data.synth_writer import write_dataset

    cfg = replace(CHEST2D, class_names=("normal", "opacity"), size=32, n_per_class=80)
    dataset = open_synthetic("chest2d", seed=0, config=cfg)
    path = tmp_path_factory.mktemp("data") / "phantom_binary.npz"
    write_dataset(dataset, path, "npz", seed=0, show_progress=False)
    return path


@pytest.fixture(scope="session")
def tiny_run(binary_npz, tmp_path_factory) -> Path:
    """`compare` with a two-model suite (ELM + cnn-small, 1 epoch) on the binary dataset."""
    from medlens.study.compare import compare
    from medlens.study.suites import SuiteEntry

    out = tmp_path_factory.mktemp("runs") / "tiny"
    suite = [SuiteEntry("elm"), SuiteEntry("cnn-small", {"epochs": 1, "batch_size": 32})]
    compare(str(binary_npz), suite, out, seed=0, max_samples=60, show_progress=False, threads=1)
    return out
