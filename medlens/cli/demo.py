"""`medlens demo`: the whole study on synthetic data, with the summary table and the report path."""

from __future__ import annotations

from pathlib import Path

import typer

from medlens.cli.common import console


def demo(
    out: Path = typer.Option(
        Path("runs/demo"), "--out", "-o", help="Run directory (an earlier demo there is replaced)."
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
    """Generate synthetic chest X-rays, train and compare classical and deep models, write the report."""
    from medlens.cli.study import _log, print_summary
    from medlens.study.demo import demo as run_demo

    run, seconds = run_demo(
        out,
        seed=seed,
        source=source,
        max_samples=max_samples,
        epochs=epochs,
        n_resamples=resamples,
        show_progress=not no_progress,
        log=_log,
    )
    print_summary(run.root)
    console.print(f"demo finished in {seconds:.0f} s")
    if not run.report.is_file():
        console.print("report: not written (see the messages above)", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
