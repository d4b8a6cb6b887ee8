"""Shared pieces of the command line: consoles, options, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from medlens.data.sources import SOURCE_HELP

console = Console()
err_console = Console(stderr=True)

SOURCE_ARG_HELP = f"What to read: {SOURCE_HELP}."
SKIP_BAD_HELP = "Continue past unreadable files and list what was skipped (default: stop at the first one)."


def print_json(obj: Any) -> None:
    """Plain JSON on stdout (no colour codes), for scripts."""
    from medlens.runs import _json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def report_skipped(problems: list) -> None:
    """List what --skip-bad passed over, so nothing is dropped silently."""
    if not problems:
        return
    err_console.print(f"[yellow]skipped {len(problems)} file(s):[/yellow]")
    for p in problems:
        err_console.print(f"  {p}", markup=False, highlight=False)
