"""HTML report of a run: one self-contained file (figures embedded) built from the run's artifacts."""

from medlens.reporting.build import build_report

__all__ = ["build_report"]
