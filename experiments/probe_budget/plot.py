"""Target accuracy against what the probe cost, from the report's summary.csv (run after the report).

    python experiments/probe_budget/plot.py [experiments/probe_budget/report/summary.csv]

One point per strategy and probe (mean over seeds, with the report's 95% interval); random and full data as
horizontal lines; the x axis is the probe's seconds on a log scale. Writes accuracy_vs_probe_s.png beside the CSV.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def main() -> None:
    csv = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/probe_budget/report/summary.csv")
    rows = pd.read_csv(csv)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, marker in (("el2n", "o"), ("forgetting", "s")):
        part = rows[rows.strategy == strategy].sort_values("probe_s")
        err = [100 * (part.accuracy - part.accuracy_lo), 100 * (part.accuracy_hi - part.accuracy)]
        ax.errorbar(part.probe_s, 100 * part.accuracy, yerr=err, fmt=marker, capsize=2, label=strategy)
        for _, r in part.iterrows():
            ax.annotate(str(r.get("probe", "")), (r.probe_s, 100 * r.accuracy), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    for strategy, style in (("random", "--"), ("full", ":")):
        acc = rows.loc[rows.strategy == strategy, "accuracy"]
        if len(acc):
            ax.axhline(100 * acc.iloc[0], linestyle=style, color="grey", label=f"{strategy} (no probe)")
    full_s = rows.loc[rows.strategy == "full", "total_s"]
    if len(full_s):  # a probe dearer than this can never pay for itself within one training
        ax.axvline(full_s.iloc[0], color="black", linewidth=0.8, label="one full training (s)")
    ax.set_xscale("log")
    ax.set_xlabel("probe s (mean over seeds, log scale)")
    ax.set_ylabel("test accuracy % at fraction 0.5")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = csv.parent / "accuracy_vs_probe_s.png"
    fig.savefig(out, dpi=150)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
