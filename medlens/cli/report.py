"""`medlens report RUN`: rebuild the HTML report of a run from its artifacts (no retraining)."""

from __future__ import annotations

from pathlib import Path

import typer

from medlens.cli.common import console


def report(
    run: Path = typer.Argument(..., help="Run directory (from `medlens train` / `medlens compare`)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the HTML here instead of RUN/report.html."),
    no_source: bool = typer.Option(
        False, "--no-source", help="Do not open the data source (no audit or montage unless already in the run)."
    ),
    open_path: bool = typer.Option(
        False, "--open-path", help="Print a file:// URI to open in a browser instead of the plain path."
    ),
) -> None:
    """Write a self-contained HTML report (figures embedded) and print its path."""
    from medlens.reporting import build_report

    path = build_report(run, use_source=not no_source, out=out).resolve()
    console.print(path.as_uri() if open_path else str(path), markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command(name="report")(report)
