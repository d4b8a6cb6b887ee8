"""`medlens demo`: the whole study on embedded synthetic data, on a fresh machine, in minutes.

Generates ``synthetic:chest2d`` phantom chest radiographs in memory (3 classes: normal, nodule,
opacity; 510 images of 64 px with lesion masks; no data files or downloads needed), trains the
``quick`` suite (SVM and ELM on handcrafted features, a small CNN and a ResNet-18) on identical
splits, evaluates them (bootstrap CIs, pairwise tests with Holm correction, calibration,
abstention, Grad-CAM / occlusion localization against the lesion masks), and writes the report.

Sized to finish within 5 minutes on an idle 2-core CPU machine (the quick suite's epochs are
set in :mod:`medlens.study.suites`); ``max_samples`` / ``epochs`` / ``source`` shrink it
further for tests.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from medlens.errors import MedlensError
from medlens.runs import RunDir, read_json

DEMO_SOURCE = "synthetic:chest2d"
DEMO_SUITE = "quick"

Log = Callable[[str], None]


def demo(
    out: str | Path = "runs/demo",
    *,
    seed: int = 0,
    source: str = DEMO_SOURCE,
    max_samples: int | None = None,
    epochs: int | None = None,
    n_resamples: int = 1000,
    show_progress: bool = True,
    log: Log | None = None,
) -> tuple[RunDir, float]:
    """Run the demo study into ``out``; returns the run and its wall time in seconds.

    An earlier demo in ``out`` is replaced; any other non-empty folder is refused (never
    deleted).
    """
    from medlens.study.compare import compare

    if not source.startswith("synthetic:"):
        raise MedlensError(f"the demo runs on synthetic data (synthetic:...), not '{source}'")
    started = time.perf_counter()
    out = Path(out)
    _clear_previous(out)
    run = compare(
        source,
        DEMO_SUITE,
        out,
        seed=seed,
        max_samples=max_samples,
        epochs=epochs,
        n_resamples=n_resamples,
        show_progress=show_progress,
        log=log,
    )
    return run, time.perf_counter() - started


def _clear_previous(out: Path) -> None:
    """Remove an earlier demo run in ``out``; refuse to touch a folder that is not one."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MedlensError("not a folder", out)
    if not any(out.iterdir()):
        return
    run = RunDir(out)
    try:
        study = read_json(run.study) if run.study.is_file() else None
    except (OSError, ValueError):
        study = None
    if not (
        isinstance(study, dict)
        and str(study.get("source", "")).startswith("synthetic:")
        and study.get("suite") == DEMO_SUITE
    ):
        raise MedlensError("the folder exists and is not an earlier demo run: choose another --out", out)
    shutil.rmtree(out)
