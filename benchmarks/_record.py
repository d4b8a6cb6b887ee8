"""Write one benchmark's results into its own section of BENCHMARKS.md.

Each benchmark script owns a section delimited by HTML comments, so scripts can be re-run
independently without clobbering each other's figures.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery figure below was measured by the script named in its section; command, machine and date are given with it.\n"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}, {platform.system()}"


def provenance(command: str | None = None) -> str:
    command = command or " ".join([Path(sys.executable).name, *sys.argv])
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    return (
        f"- command: `{command}`\n"
        f"- machine: {machine_description()}\n"
        f"- date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"- commit: {commit or 'uncommitted'}\n"
    )


def record_section(key: str, title: str, body_markdown: str, command: str | None = None) -> None:
    """Replace (or append) the section ``key`` of BENCHMARKS.md with ``body_markdown``."""
    begin, end = f"<!-- begin:{key} -->", f"<!-- end:{key} -->"
    section = f"{begin}\n## {title}\n\n{provenance(command)}\n{body_markdown.strip()}\n{end}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    BENCHMARKS_MD.write_text(text)
    print(f"recorded '{title}' in {BENCHMARKS_MD}")
