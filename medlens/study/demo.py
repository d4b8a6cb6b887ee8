"""`medlens demo`: the whole study on embedded synthetic data, on a fresh machine, in minutes.

Two runs, each with its report, on phantoms generated in memory (no data files or downloads):

1. classification, in ``OUT``: ``synthetic:chest2d`` chest radiographs (3 classes: normal,
   nodule, opacity; 510 images of 64 px with lesion masks), the ``quick`` suite (SVM and ELM on
   handcrafted features, a small CNN and a ResNet-18) on identical splits, evaluated with
   bootstrap CIs, pairwise tests with Holm correction, calibration, abstention and Grad-CAM /
   occlusion localization against the lesion masks;
2. segmentation, in ``OUT-seg`` next to it: the lesion masks of the same phantoms at 32 px
   (``synthetic:chest2d-seg@32``, :data:`DEMO_SEG_CASES` cases per split), the ``seg-quick``
   suite (U-Net and the pixel-forest baseline) on identical splits, evaluated with per-case Dice,
   HD95 and NSD, bootstrap CIs, Wilcoxon tests with Holm correction and overlays.

Sized to finish within 5 minutes on an idle 2-core CPU machine (the suites' epochs are set in
:mod:`medlens.study.suites`); ``max_samples`` / ``epochs`` / ``source`` shrink it further for
tests.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medlens.errors import MedlensError
from medlens.runs import RunDir, read_json

DEMO_SOURCE = "synthetic:chest2d"
DEMO_SUITE = "quick"
DEMO_SEG_SOURCE = "synthetic:chest2d-seg@32"
DEMO_SEG_SUITE = "seg-quick"
DEMO_SEG_CASES = 48  # cases per split: the pixel forest fits on every pixel of each training case
SEG_RUN_SUFFIX = "-seg"  # the segmentation run is OUT-seg, next to OUT

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
) -> DemoRuns:
    """Run the demo study into ``out`` and ``out-seg``; returns both runs and the wall time.

    An earlier demo in either folder is replaced; any other non-empty folder is refused (never
    deleted), before anything is trained.
    """
    from medlens.study.compare import compare

    if not source.startswith("synthetic:"):
        raise MedlensError(f"the demo runs on synthetic data (synthetic:...), not '{source}'")
    started = time.perf_counter()
    out = Path(out)
    seg_out = segmentation_out(out)
    _check_previous(out, DEMO_SUITE)
    _check_previous(seg_out, DEMO_SEG_SUITE)
    for folder in (out, seg_out):
        if folder.is_dir():
            shutil.rmtree(folder)

    def study(study_source: str, suite: str, folder: Path, cap: int | None) -> RunDir:
        return compare(
            study_source,
            suite,
            folder,
            seed=seed,
            max_samples=cap,
            epochs=epochs,
            n_resamples=n_resamples,
            show_progress=show_progress,
            log=log,
        )

    run = study(source, DEMO_SUITE, out, max_samples)
    if log:
        log(f"segmentation: the {DEMO_SEG_SUITE} suite on {DEMO_SEG_SOURCE}, into {seg_out}")
    seg_run = study(DEMO_SEG_SOURCE, DEMO_SEG_SUITE, seg_out, min(max_samples or DEMO_SEG_CASES, DEMO_SEG_CASES))
    return DemoRuns(run, seg_run, time.perf_counter() - started)


@dataclass(frozen=True)
class DemoRuns:
    """The demo's classification and segmentation runs and its wall time in seconds."""

    classification: RunDir
    segmentation: RunDir
    seconds: float


def segmentation_out(out: str | Path) -> Path:
    """The folder of the demo's segmentation run: ``OUT-seg`` next to ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + SEG_RUN_SUFFIX)


def _check_previous(out: Path, suite: str) -> None:
    """Refuse a folder that is neither absent, empty, nor an earlier demo run of ``suite``."""
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
        and study.get("suite") == suite
    ):
        raise MedlensError("the folder exists and is not an earlier demo run: choose another --out", out)
