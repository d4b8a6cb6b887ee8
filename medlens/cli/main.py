"""The `medlens` command."""

from __future__ import annotations

import sys

import typer

from medlens import __version__
from medlens.cli import data as data_cli
from medlens.cli import demo, models, report, serving, study, train
from medlens.cli.common import err_console
from medlens.errors import MedlensError
from medlens.progress import quiet_libraries

app = typer.Typer(
    name="medlens",
    help="Medical image analysis with deep and classical learning: read, learn, explain, compare, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
app.add_typer(data_cli.app, name="data")
for _verbs in (models, train, study, serving, demo, report):
    _verbs.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show the libraries' own messages and warnings (Lightning's device lines...)."
    ),
) -> None:
    """medlens: read medical images correctly, learn, explain, compare and serve."""
    quiet_libraries(verbose)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code. User mistakes print one line and return 2."""
    try:
        code = app(args=argv, standalone_mode=False)
    except MedlensError as e:
        err_console.print(
            f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True
        )  # one line, never wrapped
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except typer.TyperException as e:  # typer's own click: a mistyped flag, a missing option, an unknown verb
        e.show()  # type: ignore[attr-defined]
        return int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    # Without standalone mode, click returns the code of `raise typer.Exit(code)` instead of raising.
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
