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
from matplotlib import ticker  # noqa: E402

from harness.report.stats import pareto_mask  # noqa: E402
from harness.report.summary import Report, panel_title  # noqa: E402

# Costs an accuracy-vs-cost figure is drawn for, when the runs logged them.
COST_AXES = {"total_s": "total time incl. selection (s)", "total_energy_j": "total energy (J)",
             "gpu_hours": "GPU-hours"}
# Cost so far at each evaluation (harness/report/curves.py), for the anytime figures.
ANYTIME_AXES = {"cum_s": ("time", "time so far incl. data, probe and selection, excl. evaluation (s)"),
                "cum_energy_j": ("energy", "energy so far incl. data, probe and selection, excl. evaluation (J)")}
_FRACTION_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v")]


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


def anytime(c: pd.DataFrame, cost: str, out_dir: Path, panel: str, colors: dict[str, str]) -> Figure:
    """Mean accuracy over seeds against mean cost so far, epoch by epoch: a line per (strategy, fraction), colour
    by strategy and line style by fraction, shaded 95% bootstrap band of the accuracy."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    c = c[np.isfinite(c[cost].to_numpy(float)) & (c[cost] > 0)]
    for strategy, gs in c.groupby("strategy", sort=True):
        for i, (fraction, g) in enumerate(gs.groupby("fraction", sort=True)):
            g = g.sort_values("epoch")
            ls, marker = _FRACTION_STYLES[i % len(_FRACTION_STYLES)]
            color = colors.get(strategy, "gray")
            ax.plot(g[cost], g["accuracy"] * 100, ls=ls, marker=marker, ms=3, lw=1.2, color=color,
                    label=f"{strategy} {fraction:g}")
            ax.fill_between(g[cost], g["accuracy_lo"] * 100, g["accuracy_hi"] * 100, alpha=0.15, color=color, lw=0)
    x = c[cost].to_numpy(float)
    if len(x) and x.max() > 10 * x.min():  # costs over orders of magnitude (cheap subsets next to full data)
        ax.set_xscale("log")
        # plain numbers; over less than two decades also 2x and 5x, else the axis may carry a single label
        few = x.max() < 100 * x.min()
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(
            lambda v, _: f"{v:g}" if few and f"{v:e}"[0] in "25" else ""))
    name, label = ANYTIME_AXES[cost]
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%)")
    title = f"{panel}: anytime accuracy vs {name} so far (mean over seeds per epoch, 95% CI band)"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2 if c.groupby(["strategy", "fraction"]).ngroups > 8 else 1)
    return _save(fig, out_dir, _slug("anytime", cost, panel), title)


def _panel_key(values: object) -> tuple:
    """A hashable panel key in which every missing value is None (NaN != NaN would miss a dict lookup)."""
    values = values if isinstance(values, tuple) else (values,)
    return tuple(None if pd.isna(v) else v for v in values)


def _named(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of one strategy with different probe configs drawn as their own series: `el2n (epochs=5)`. The
    baseline and strategies without a probe (probe "") keep their names, so the figures' baseline lookup holds."""
    if "probe" not in frame or frame.empty:
        return frame
    probe = frame["probe"].fillna("")
    return frame.assign(strategy=frame["strategy"].where(probe == "", frame["strategy"] + " (" + probe + ")"))


def draw_all(report: Report, out_dir: Path, curves: pd.DataFrame | None = None) -> list[Figure]:
    """Every figure of every panel. `curves`: curves.mean_curves of the report's runs (None or empty: no anytime
    figures)."""
    summary, figures = _named(report.summary), []
    curves = None if curves is None else _named(curves)
    # one colour per strategy across every figure of the report
    colors = {name: f"C{i % 10}" for i, name in enumerate(sorted(summary["strategy"].unique()))}
    by_panel = ({} if curves is None or curves.empty else
                {_panel_key(k): c for k, c in curves.groupby(list(report.panel), sort=True, dropna=False)})
    for key, g in summary.groupby(list(report.panel), sort=True, dropna=False):
        panel = panel_title(report.panel, key)
        for cost in COST_AXES:
            if (g[cost] > 0).any():  # not drawn when nothing was logged, or all zero (GPU-hours of CPU runs)
                figures.append(accuracy_vs_cost(g, cost, out_dir, panel, colors))
        if g["fraction"].nunique() > 1:
            figures.append(accuracy_vs_fraction(g, out_dir, panel, colors, report.baseline))
        else:
            figures.append(accuracy_by_strategy(g, out_dir, panel, colors))
        c = by_panel.get(_panel_key(key))
        for cost in ANYTIME_AXES if c is not None else ():
            if (c[cost] > 0).any():  # energy: only where some group metered it at every seed
                figures.append(anytime(c, cost, out_dir, panel, colors))
    return figures
