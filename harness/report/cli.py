"""`python -m harness.report EXPERIMENT [--tracking-uri URI] [--out DIR] [--by PARAM ...] [--baseline S]
[--reference S] [--reuse K]` (console script `winnow-report`).

Reads the experiment's runs from MLflow and writes report.md, report.tex, summary.csv,
failed_runs.csv, missing_seeds.csv, report.html and a PNG + SVG per figure (anytime curves included) into DIR.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from harness.errors import UserError, exit_user_error
from harness.tracking import tracking_uri as resolve_uri


def build(experiment: str, tracking_uri: str | None = None, out_dir: str | Path | None = None,
          by: Sequence[str] = (), baseline: str = "full", reference: str = "random",
          reuse: int | None = None) -> dict[str, Path]:
    """Read, summarise, draw and write; returns the written files by kind (md, tex, csv, html). `reuse`: K, the
    trainings one selection serves in the saved-over-K columns (None: no such columns)."""
    from harness.report.curves import load_curves, mean_curves
    from harness.report.load import load_runs
    from harness.report.plots import draw_all
    from harness.report.render import write_all
    from harness.report.summary import summarise

    out = Path(out_dir) if out_dir else Path("reports") / experiment
    tracking_uri = resolve_uri(tracking_uri)  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    if reuse is not None and reuse < 1:
        raise UserError(f"--reuse {reuse}: expected a number of trainings >= 1")
    report = summarise(load_runs(tracking_uri, experiment, by), experiment, by, baseline, reference, reuse)
    if report.n_runs == 0:
        raise UserError(f"experiment={experiment}: has no runs in {tracking_uri}")
    out.mkdir(parents=True, exist_ok=True)
    curves = mean_curves(load_curves(tracking_uri, report.runs_used, report.panel), report.panel)
    figures = draw_all(report, out, curves)
    paths = write_all(report, figures, out)
    paths.update({f"figure:{f.png.stem}": f.png for f in figures})
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="winnow-report",
                                     description="Build a report of one experiment from its MLflow runs.")
    parser.add_argument("experiment", help="MLflow experiment name (tracking.experiment of the trials)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--out", default=None, help="output directory (default reports/EXPERIMENT/)")
    parser.add_argument("--by", nargs="+", default=[], metavar="PARAM",
                        help="config keys that split the tables besides dataset and model "
                             "(e.g. corruption.label_noise trainer.epochs); probe.* keys need not be given: rows "
                             "whose probe config differs are kept apart in one table already")
    parser.add_argument("--baseline", default="full", help="strategy every row is compared with (default full)")
    parser.add_argument("--reference", default="random",
                        help="strategy each row is paired with seed by seed at its fraction (default random)")
    parser.add_argument("--reuse", type=int, default=None, metavar="K",
                        help="also show what one selection reused for K trainings saves against K baseline "
                             "trainings, in seconds and as a share (default: not shown; break-even k* always is)")
    args = parser.parse_args(argv)
    try:
        paths = build(args.experiment, args.tracking_uri, args.out, args.by, args.baseline, args.reference,
                      args.reuse)
    except UserError as e:
        exit_user_error("winnow-report", e)
    print(paths["md"].read_text().split("\n## Method")[0])  # the tables, as in report.md
    print(f"wrote {paths['md'].parent}/ ({', '.join(sorted(p.name for p in paths.values()))})")


if __name__ == "__main__":
    main()
