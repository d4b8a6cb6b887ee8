"""`medlens models`: every registered model with its kind, dimensions and tasks."""

from __future__ import annotations

import typer

from medlens.cli.common import console, print_json


def models(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List every model `medlens train --model NAME` accepts."""
    from rich.table import Table

    from medlens.models.registry import all_models

    specs = all_models()
    if as_json:
        print_json(
            [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "dims": list(s.dims),
                    "tasks": list(s.tasks),
                    "description": s.description,
                }
                for s in specs
            ]
        )
        return
    table = Table(title=f"{len(specs)} models")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("kind", no_wrap=True)
    table.add_column("dims", no_wrap=True)
    table.add_column("tasks", overflow="fold")
    table.add_column("description", overflow="fold")
    for s in specs:
        table.add_row(s.name, s.kind, "/".join(f"{d}D" for d in s.dims), ", ".join(s.tasks), s.description)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command(name="models")(models)
