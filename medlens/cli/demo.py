"""`medlens demo`: the whole study on synthetic data, with the summary table and the report path."""

from __future__ import annotations

from pathlib import Path

import typer

from medlens.cli.common import console


def demo(
    out: Path = typer.Option(
        Path("runs/demo"),
        "--out",
        "-o",
        help="Run directory of the classification study; the segmentation study goes to OUT-seg next to it "
        "(an earlier demo in either is replaced).",
    ),
    seed: int = typer.Option(0, "--seed", help="The one seed for data, splits, training and the bootstrap."),
    max_samples: int = typer.Option(
        None, "--max-samples", help="Use at most N samples per split (a faster, smaller demo)."
    ),
    epochs: int = typer.Option(None, "--epochs", help="Cap the deep models' epochs (a faster demo)."),
    source: str = typer.Option(
        "synthetic:chest2d", "--source", hidden=True, help="Synthetic source (e.g. synthetic:chest2d@32)."
    ),
    resamples: int = typer.Option(1000, "--resamples", hidden=True, help="Bootstrap resamples."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
) -> None:
    """Generate synthetic chest X-rays, train and compare classical and deep classifiers and segmenters of
    their lesions, write the two reports."""
    from medlens.cli.study import _log, print_summary
    from medlens.study.demo import demo as run_demo

    runs = run_demo(
        out,
        seed=seed,
        source=source,
        max_samples=max_samples,
        epochs=epochs,
        n_resamples=resamples,
        show_progress=not no_progress,
        log=_log,
    )
    for run in (runs.classification, runs.segmentation):
        print_summary(run.root)
        if not run.report.is_file():
            console.print(f"report of {run.root}: not written (see the messages above)", soft_wrap=True)
    console.print(f"demo finished in {runs.seconds:.0f} s")


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
