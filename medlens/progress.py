"""Progress bars and library chatter: the one implementation (tqdm, always on stderr).

stdout carries ``--json`` output, so every bar, Lightning's included, draws on stderr. Bars stay
on when stderr is not a terminal (tests read it); ``disable=True`` turns one off.

- :func:`track` wraps an iterable, :func:`bar` gives a bar to update by hand,
- :func:`lightning_callback` is Lightning's progress bar drawing the same way,
- :func:`quiet_libraries` silences third-party chatter (Lightning's "GPU available" lines, library
  warnings) unless the command line asked for ``--verbose``.

The lowest layer of medlens: only third-party imports here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")

# Loggers quietened to WARNING. Lightning sets its package loggers to INFO when it is imported,
# so the rank-zero loggers that print "GPU available ..." are named too (their level sticks).
LIBRARY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.distributed",  # "Initializing distributed: GLOBAL_RANK ..." from every rank
    "lightning_utilities",
    "pytorch_lightning",
    "lightning_fabric",
)
_LIGHTNING_DEFAULT_INFO = ("lightning.pytorch", "lightning.fabric")  # what Lightning itself sets
_MEDLENS_DIR = str(Path(__file__).resolve().parent)


def track(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", disable: bool = False, unit: str = "it"
) -> Iterator[T]:
    """Yield the items of ``iterable`` with a bar on stderr (``total`` defaults to ``len(iterable)``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with bar(total, desc=desc, disable=disable, unit=unit) as b:
        for item in iterable:
            yield item
            b.update()


def bar(total: int | None, *, desc: str = "", disable: bool = False, unit: str = "it") -> tqdm:
    """A bar on stderr to advance by hand: a context manager with ``.update(n=1)`` and
    ``.set_description(text)``. ``unit="B"`` counts bytes in KiB/MiB/GiB (shown as k/M/G)."""
    return tqdm(
        total=total,
        desc=desc,
        disable=disable,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def lightning_callback() -> Any:
    """Lightning's tqdm progress bar, drawn on stderr like the other bars (imports Lightning)."""
    return _stderr_bar_class()()


def __getattr__(name: str) -> Any:
    # the callback class needs Lightning, imported only when asked for (pickle finds it here too)
    if name == "StderrProgressBar":
        return _stderr_bar_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _stderr_bar_class() -> type:
    from lightning.pytorch.callbacks import TQDMProgressBar

    def on_stderr(make):
        # Lightning builds its bars with file=sys.stdout; point that name at stderr meanwhile
        with contextlib.redirect_stdout(sys.stderr):
            return make()

    class StderrProgressBar(TQDMProgressBar):
        """:class:`TQDMProgressBar` with every bar on stderr."""

        def init_sanity_tqdm(self):
            return on_stderr(super().init_sanity_tqdm)

        def init_train_tqdm(self):
            return on_stderr(super().init_train_tqdm)

        def init_validation_tqdm(self):
            return on_stderr(super().init_validation_tqdm)

        def init_test_tqdm(self):
            return on_stderr(super().init_test_tqdm)

        def init_predict_tqdm(self):
            return on_stderr(super().init_predict_tqdm)

    StderrProgressBar.__module__ = __name__
    StderrProgressBar.__qualname__ = "StderrProgressBar"
    return StderrProgressBar


class _ThirdPartyWarnings(logging.Filter):
    """Drops captured warnings raised from outside medlens (the message starts with the file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().startswith(_MEDLENS_DIR)


_THIRD_PARTY = _ThirdPartyWarnings()


def quiet_libraries(verbose: bool) -> None:
    """Silence library chatter unless ``verbose``: Lightning's info lines ("GPU available ...",
    "`Trainer.fit` stopped ...") and warnings raised by third-party code. ``verbose`` restores
    the libraries' own behaviour. Safe to call again (the command line calls it once per run)."""
    for name in LIBRARY_LOGGERS:
        default = logging.INFO if name in _LIGHTNING_DEFAULT_INFO else logging.NOTSET
        logging.getLogger(name).setLevel(default if verbose else logging.WARNING)
    # Warnings go through logging ("py.warnings"), where a filter keeps medlens's own: Lightning
    # re-inserts its warnings filters when imported, which would override a warnings filter set here.
    logging.captureWarnings(not verbose)
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.removeFilter(_THIRD_PARTY)
    if not verbose:
        py_warnings.addFilter(_THIRD_PARTY)
