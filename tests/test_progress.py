"""medlens.progress: bars on stderr (never stdout), Lightning's bar the same way, and library chatter
silenced unless --verbose."""

from __future__ import annotations

import logging
import pickle
import warnings

import pytest

from medlens import progress
from tests.conftest import run_medlens


def test_track_yields_items_and_draws_on_stderr(capsys):
    assert list(progress.track(range(5), desc="counting")) == [0, 1, 2, 3, 4]
    out, err = capsys.readouterr()
    assert out == ""
    assert "counting" in err and "5/5" in err


def test_track_takes_total_for_an_iterator(capsys):
    assert list(progress.track(iter("abc"), total=3, desc="letters", unit="letter")) == ["a", "b", "c"]
    err = capsys.readouterr().err
    assert "3/3" in err and "letter" in err


def test_disabled_bars_draw_nothing(capsys):
    assert list(progress.track([1, 2], disable=True)) == [1, 2]
    with progress.bar(2, disable=True) as b:
        b.update(2)
    assert capsys.readouterr() == ("", "")


def test_bar_updates_by_hand_and_relabels(capsys):
    with progress.bar(10, desc="start") as b:
        b.update()
        b.update(9)
        b.set_description("finished")
    out, err = capsys.readouterr()
    assert out == ""
    assert "finished" in err and "10/10" in err


def test_byte_bar_scales_units(capsys):
    with progress.bar(3 << 20, desc="downloading x", unit="B") as b:
        b.update(3 << 20)
    assert "3.00M/3.00M" in capsys.readouterr().err


def test_lightning_callback_draws_on_stderr_and_pickles(capsys):
    from lightning.pytorch.callbacks import TQDMProgressBar

    cb = progress.lightning_callback()
    assert isinstance(cb, TQDMProgressBar)
    b = cb.init_train_tqdm()
    b.reset(total=4)
    b.update(4)
    b.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert "4/4" in err
    assert type(pickle.loads(pickle.dumps(cb))) is type(cb)


@pytest.fixture
def restore_libraries():
    yield
    progress.quiet_libraries(True)


def _warning_record(filename: str) -> logging.LogRecord:
    """A warning as logging.captureWarnings hands it to the "py.warnings" logger."""
    text = warnings.formatwarning("noise", UserWarning, filename, 1)
    return logging.LogRecord("py.warnings", logging.WARNING, filename, 1, "%s", (text,), None)


def test_quiet_libraries_silences_lightning_info_and_third_party_warnings(restore_libraries):
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    py_warnings = logging.getLogger("py.warnings")
    progress.quiet_libraries(False)
    assert not rank_zero.isEnabledFor(logging.INFO)
    assert rank_zero.isEnabledFor(logging.WARNING)
    assert not py_warnings.filter(_warning_record("/site-packages/lib.py"))
    assert py_warnings.filter(_warning_record(progress.__file__))  # medlens's own warnings stay

    progress.quiet_libraries(True)
    assert rank_zero.isEnabledFor(logging.INFO)
    assert py_warnings.filter(_warning_record("/site-packages/lib.py"))


def _train(tmp_path, *flags: str):
    out = tmp_path / ("run" + "".join(flags))
    args = ("train", "synthetic:chest2d", "--model", "cnn-small", "--epochs", "1", "--max-samples", "8", "--out", out)
    return run_medlens(*flags, *args, timeout=300)


def test_train_is_quiet_unless_verbose(tmp_path):
    quiet = _train(tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "GPU available" not in quiet.stderr + quiet.stdout
    assert "deprecated" not in quiet.stderr  # third-party warnings
    assert "Epoch 0" in quiet.stderr and "Epoch 0" not in quiet.stdout  # Lightning's bar: stderr
    assert "loading" in quiet.stderr and "loading" not in quiet.stdout

    verbose = _train(tmp_path, "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert "GPU available" in verbose.stderr
