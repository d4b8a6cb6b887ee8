"""The command line's own mistakes: an unknown verb, a mistyped flag, a missing option."""

from __future__ import annotations

import pytest

from tests.conftest import run_medlens


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchverb"], "No such command 'nosuchverb'"),
        (["train", "X.npz", "--modle", "resnet18"], "No such option: --modle"),
        (["train", "X.npz"], "Missing option '--out'"),
    ],
)
def test_usage_mistakes_exit_2_without_a_traceback(args, message):
    res = run_medlens(*args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr + res.stdout
