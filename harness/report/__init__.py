"""Reports from the tracking store alone: `python -m harness.report EXPERIMENT` (console script `winnow-report`)."""

from harness.report.load import load_runs
from harness.report.summary import Report, summarise

__all__ = ["Report", "load_runs", "summarise"]
