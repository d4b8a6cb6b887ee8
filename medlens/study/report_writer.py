"""Writing a run's report.html at the end of an evaluation stage (classification, segmentation, external)."""

from __future__ import annotations

from typing import Any, Callable

from medlens.runs import RunDir

Log = Callable[[str], None]


def write_report(run: RunDir, say: Log, dataset: Any = None) -> None:
    """report.html (given the source when a stage opened it already, so it is not opened twice);
    a failure is logged, never raised: comparison.json and the manifest stay."""
    from medlens.reporting import build_report

    try:
        path = build_report(run.root, dataset=dataset)
    except Exception as e:  # noqa: BLE001 - the report's failure must not lose comparison.json or the manifest
        say(f"report not written: {type(e).__name__}: {e}")
        return
    say(f"wrote {path or run.report}")
