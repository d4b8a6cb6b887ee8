"""Shared fixtures: real data location (skips when absent) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("MEDLENS_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data or $MEDLENS_DATA); skips the test when absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set MEDLENS_DATA)")
    return root


def need(path: Path) -> Path:
    """Skip unless ``path`` exists (one data set of the shared folder)."""
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture
def cli(capsys):
    """Run `medlens ARGS...` in-process; returns (exit_code, stdout, stderr)."""
    from medlens.cli.main import main

    def invoke(*args: str):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def run_medlens(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `medlens ARGS...` as a real process (for exit codes and 'no traceback' checks)."""
    return subprocess.run(
        [sys.executable, "-m", "medlens.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
