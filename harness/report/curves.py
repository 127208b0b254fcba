"""Anytime curves: per-epoch test accuracy against the cost spent so far, from the runs' MLflow metric histories.

A trial logs, with step = epoch, `epoch_test_accuracy`, `eval_cum_s` and `eval_cum_energy_j` (harness/trial.py):
cost so far at each evaluation, data + probe + static selection + training (per-epoch selection included),
evaluation excluded. Runs without `eval_cum_s` (logged before it existed) are left out of the curves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from harness.report.stats import bootstrap_mean_ci_columns

ACCURACY, CUM_S, CUM_ENERGY_J = "epoch_test_accuracy", "eval_cum_s", "eval_cum_energy_j"
# Columns of the tidy frame after the panel keys; of the mean curves after the group keys.
TIDY = ("epoch", "accuracy", "cum_s", "cum_energy_j")
MEAN = ("epoch", "n", "accuracy", "accuracy_lo", "accuracy_hi", "cum_s", "cum_energy_j")


def _row_keys(frame: pd.DataFrame) -> list[str]:
    """A row's keys besides the panel: `probe` too where the summary keeps probe configs apart (summary.probe_keys)."""
    return ["strategy", *(["probe"] if "probe" in frame else []), "fraction"]


def _history(client: MlflowClient, run_id: str, name: str) -> pd.Series:
    """{epoch: value}; a value logged twice at one step keeps the latest."""
    points = sorted(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
    return pd.Series({m.step: m.value for m in points}, dtype=float)


def load_curves(tracking_uri: str, runs: pd.DataFrame, panel: Sequence[str] = ("dataset", "model")) -> pd.DataFrame:
    """Per-epoch histories of `runs` (Report.runs_used: FINISHED, latest per group and seed) as one tidy frame.

    Columns: run_id, the panel keys, strategy, probe (where `runs` has it), fraction, seed, epoch, accuracy (0-1),
    cum_s, cum_energy_j (NaN where not metered). One row per epoch that has both an accuracy and a cumulative time.
    The runs' latest metrics (load_runs columns) say which runs logged a history, so older runs cost no history
    call.
    """
    id_cols = ["run_id", *panel, *_row_keys(runs), "seed"]
    if CUM_S not in runs or runs.empty:
        return pd.DataFrame(columns=[*id_cols, *TIDY])
    client = MlflowClient(tracking_uri)
    frames = []
    for _, run in runs[runs[CUM_S].notna()].iterrows():
        h = pd.DataFrame({"accuracy": _history(client, run["run_id"], ACCURACY),
                          "cum_s": _history(client, run["run_id"], CUM_S)})
        # a run with no finite energy at its last evaluation (data-parallel, no meter) has none before it either
        has_j = CUM_ENERGY_J in run and pd.notna(run[CUM_ENERGY_J])
        h["cum_energy_j"] = _history(client, run["run_id"], CUM_ENERGY_J) if has_j else np.nan
        h = h.dropna(subset=["accuracy", "cum_s"])
        if h.empty:
            continue
        h = h.rename_axis("epoch").reset_index()
        for c in id_cols:
            h[c] = run[c]
        frames.append(h[[*id_cols, *TIDY]])
    if not frames:
        return pd.DataFrame(columns=[*id_cols, *TIDY])
    tidy = pd.concat(frames, ignore_index=True)
    tidy["epoch"] = tidy["epoch"].astype(int)
    return tidy.sort_values([*panel, *_row_keys(runs), "seed", "epoch"]).reset_index(drop=True)


def mean_curves(tidy: pd.DataFrame, panel: Sequence[str] = ("dataset", "model")) -> pd.DataFrame:
    """One point per (panel, strategy, [probe,] fraction, epoch): mean over seeds of accuracy and cost so far.

    Only epochs every seed of the group evaluated are kept, so a point never averages a different set of seeds
    than its neighbours. accuracy_lo/hi: the 95% percentile bootstrap interval of the mean over seeds (as in the
    tables; NaN with one seed). cum_energy_j is NaN unless every seed metered it at that epoch.
    """
    keys = [*panel, *_row_keys(tidy)]
    rows = []
    for key, g in tidy.groupby(keys, dropna=False, sort=True):
        seeds = g["seed"].nunique()
        acc = g.pivot_table(index="seed", columns="epoch", values="accuracy", aggfunc="last", dropna=False)
        epochs = acc.columns[acc.notna().sum() == seeds]
        if not len(epochs):
            continue
        acc = acc[epochs].to_numpy(float)
        cost = g.pivot_table(index="seed", columns="epoch", values="cum_s", aggfunc="last")[epochs].to_numpy(float)
        energy = (g.pivot_table(index="seed", columns="epoch", values="cum_energy_j", aggfunc="last", dropna=False)
                  .reindex(columns=epochs).to_numpy(float))
        lo, hi = bootstrap_mean_ci_columns(acc)
        part = pd.DataFrame({"epoch": epochs.astype(int), "n": seeds, "accuracy": acc.mean(axis=0),
                             "accuracy_lo": lo, "accuracy_hi": hi, "cum_s": cost.mean(axis=0),
                             # a plain mean: NaN as soon as one seed has no energy, never a partial mean
                             "cum_energy_j": energy.mean(axis=0)})
        for k, v in zip(keys, key):
            part[k] = v
        rows.append(part[[*keys, *MEAN]])
    if not rows:
        return pd.DataFrame(columns=[*keys, *MEAN])
    return pd.concat(rows, ignore_index=True)
