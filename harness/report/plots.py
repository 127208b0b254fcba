"""Figures for the report, one pair of files (PNG, SVG) per figure, per panel (dataset+model[+by values])."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window (CI and clusters have no display)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.report.stats import pareto_mask  # noqa: E402
from harness.report.summary import Report, panel_title  # noqa: E402

# Costs an accuracy-vs-cost figure is drawn for, when the runs logged them.
COST_AXES = {"total_s": "total time incl. selection (s)", "total_energy_j": "total energy (J)",
             "gpu_hours": "GPU-hours"}


@dataclass
class Figure:
    title: str
    png: Path
    svg: Path


def _slug(*parts: object) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(str(p) for p in parts))


def _save(fig: plt.Figure, out_dir: Path, stem: str, title: str) -> Figure:
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(svg, bbox_inches="tight")
    plt.close(fig)
    return Figure(title, png, svg)


def _yerr(g: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars in points from the CI columns; 0 where there is no interval (one seed)."""
    lo = (g["accuracy"] - g["accuracy_lo"]).fillna(0).to_numpy() * 100
    hi = (g["accuracy_hi"] - g["accuracy"]).fillna(0).to_numpy() * 100
    return np.vstack([lo, hi])


def accuracy_vs_cost(s: pd.DataFrame, cost: str, out_dir: Path, panel: str, colors: dict[str, str]) -> Figure:
    """Each (strategy, fraction) at its mean cost and accuracy; the Pareto frontier as a step line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for strategy, g in s.groupby("strategy", sort=True):
        ax.errorbar(g[cost], g["accuracy"] * 100, yerr=_yerr(g), fmt="o", capsize=3, label=strategy,
                    color=colors[strategy])
        for _, r in g.iterrows():
            ax.annotate(f"{r['fraction']:g}", (r[cost], r["accuracy"] * 100), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    front = s[pareto_mask(s[cost].to_numpy(float), s["accuracy"].to_numpy(float))].sort_values(cost)
    ax.step(front[cost], front["accuracy"] * 100, where="post", color="black", lw=1, ls="--",
            label="Pareto frontier")
    ax.set_xlabel(COST_AXES[cost])
    ax.set_ylabel("test accuracy (%)")
    title = f"{panel}: accuracy vs {COST_AXES[cost]}"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, _slug("accuracy_vs", cost, panel), title)


def accuracy_vs_fraction(s: pd.DataFrame, out_dir: Path, panel: str, colors: dict[str, str],
                         baseline: str) -> Figure:
    """Accuracy per strategy over the kept fraction, 95% band; the full-data baseline as a line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for strategy, g in s[s["strategy"] != baseline].groupby("strategy", sort=True):
        g = g.sort_values("fraction")
        line = ax.plot(g["fraction"], g["accuracy"] * 100, marker="o", label=strategy, color=colors[strategy])[0]
        ax.fill_between(g["fraction"], g["accuracy_lo"] * 100, g["accuracy_hi"] * 100, alpha=0.2,
                        color=line.get_color())
    base = s[s["strategy"] == baseline]
    if len(base) == 1:
        b = base.iloc[0]
        ax.axhline(b["accuracy"] * 100, color="black", ls="--", lw=1, label=f"{baseline} (n={b['n']})")
        if not np.isnan(b["accuracy_lo"]):
            ax.axhspan(b["accuracy_lo"] * 100, b["accuracy_hi"] * 100, color="black", alpha=0.08)
    ax.set_xlabel("fraction of the training set kept")
    ax.set_ylabel("test accuracy (%)")
    title = f"{panel}: accuracy vs fraction (mean, 95% CI)"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, _slug("accuracy_vs_fraction", panel), title)


def accuracy_by_strategy(s: pd.DataFrame, out_dir: Path, panel: str, colors: dict[str, str]) -> Figure:
    """One bar per strategy with its 95% interval: the figure for panels where every row keeps all the data."""
    s = s.sort_values("strategy")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.bar(s["strategy"], s["accuracy"] * 100, yerr=_yerr(s), capsize=3, color=[colors[k] for k in s["strategy"]])
    low = np.nanmin(s["accuracy_lo"].fillna(s["accuracy"])) * 100
    ax.set_ylim(max(0.0, low - 5), None)
    ax.set_ylabel("test accuracy (%)")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    title = f"{panel}: accuracy by strategy (mean, 95% CI)"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out_dir, _slug("accuracy_by_strategy", panel), title)


def draw_all(report: Report, out_dir: Path) -> list[Figure]:
    summary, figures = report.summary, []
    # one colour per strategy across every figure of the report
    colors = {name: f"C{i % 10}" for i, name in enumerate(sorted(summary["strategy"].unique()))}
    for key, g in summary.groupby(list(report.panel), sort=True, dropna=False):
        panel = panel_title(report.panel, key)
        for cost in COST_AXES:
            if (g[cost] > 0).any():  # not drawn when nothing was logged, or all zero (GPU-hours of CPU runs)
                figures.append(accuracy_vs_cost(g, cost, out_dir, panel, colors))
        if g["fraction"].nunique() > 1:
            figures.append(accuracy_vs_fraction(g, out_dir, panel, colors, report.baseline))
        else:
            figures.append(accuracy_by_strategy(g, out_dir, panel, colors))
    return figures
