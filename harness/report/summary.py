"""Aggregate an experiment's runs: one row per (dataset, model, [by...], strategy, fraction) over seeds.

A panel is one (dataset, model) plus the values of any `by` params (e.g. label noise and budget): its own
table and figures. Accuracy gets a mean and a 95% bootstrap interval; the baseline strategy's runs
("full" unless told otherwise) of the same panel give deltas, speedup and savings; a strategy is compared
seed by seed with the reference ("random") at the same fraction. Failed, missing and repeated seeds are listed.
Rows of one strategy whose probe config differs (probe.epochs, probe.model._target_, ...) stay apart: column
`probe`. Amortised cost: the break-even number of trainings that reuse one selection, and what K reuses save.
Data audits, where runs logged them: what a selection kept of each planted corruption, how well it removed the
surplus duplicates, and whether the test set overlaps the training set (the contamination audit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report.load import PROBE_PARAMS
from harness.report.stats import bootstrap_diff_ci, bootstrap_mean_ci, paired_comparison, pareto_mask

ACCURACY = "test_accuracy"
BASELINE = "full"     # default strategy tag of the baseline runs (the full data)
REFERENCE = "random"  # default strategy tag every other strategy is paired against at the same fraction
# Cost metrics, summarised when a group's runs logged them. total_s is the meters' sum over every
# stage (data, probe, selection, training, evaluation), so a strategy's own cost is never left out.
COSTS = ("total_s", "data_s", "probe_s", "selection_s", "dynamic_selection_s", "train_s", "eval_s", "total_energy_j",
         "gpu_hours", "cpu_core_hours", "energy_kwh", "co2e_g", "cost_usd", "tta_s")
# The costs of choosing the data, whose sum over total_s is the `selection_share` column.
SELECTION_COSTS = ("probe_s", "selection_s", "dynamic_selection_s")
# What each group spent of its budget (means; in summary.csv, not the display tables): a strategy that skips samples
# shows here how many it forwarded and backpropagated.
BUDGET = ("steps", "epochs", "samples_seen", "samples_backpropagated", "train_flops")
# The cost a speedup and a saving are computed from, each against the full baseline's mean.
SAVINGS = {"time": "total_s", "energy": "total_energy_j", "gpu_hours": "gpu_hours"}
PARETO_COST = "total_s"
# What choosing the data costs once, and a training that reuses the selection does not pay again: the probe (a
# probe read from the signal cache is charged its original cost: load.py folds probe_cached_* in) and the static
# selection. Everything else in the total (data, training, selection inside training, evaluation) recurs.
# unit -> (total, one-time stages); the per-training cost is the total minus the one-time cost.
ONE_TIME = {"s": ("total_s", ("probe_s", "selection_s")),
            "energy_j": ("total_energy_j", ("probe_energy_j", "selection_energy_j"))}
# A run that logged this trained a probe or read one from the cache (harness/signals/compute.py ProbeRecord.metrics).
PROBE_USED = "probe_train_s"
# Probe params that never tell two rows apart: not an input of the probe (the projection signal's width).
PROBE_IGNORED = ("probe.projection_dim",)
# What a selection did to the corruptions a trial planted (harness/data/corrupt.py selection_audit and
# ground_truth_counts; docs/data-audits.md) and the trial's contamination audit (audit.contamination=true,
# harness/trial.py). Summarised only when some run logged them: a clean experiment's summary gets none of these columns.
CORRUPTION_KINDS = ("label_noise", "exact_duplicates", "near_duplicates", "outliers")
DUPLICATE_KINDS = ("exact_duplicates", "near_duplicates")  # those with precision/recall of removing the copies
# corrupted rows selected / corrupted rows: mean over seeds with a bootstrap interval, as accuracy
KEPT = tuple(f"kept_{kind}_fraction" for kind in CORRUPTION_KINDS)
# plain means over seeds (n/a when a seed's value is NaN: a precision with nothing removed)
DATA_AUDIT = (*(f"{pr}_{kind}_removal" for kind in DUPLICATE_KINDS for pr in ("precision", "recall")),
              "noisy_selected_fraction", *(f"n_{kind}" for kind in CORRUPTION_KINDS), "n_imbalance_dropped",
              "audit_n_exact", "audit_n_near", "audit_fraction_contaminated", "audit_s")
AUDIT_FLAG = "audit_flagged"  # tag: "true" when the audit found a test sample with a copy in the training set


@dataclass
class Report:
    experiment: str
    summary: pd.DataFrame     # one row per group; numbers, NaN where not available
    failed: pd.DataFrame      # runs that did not finish, with their error tag
    missing: pd.DataFrame     # groups with fewer finished seeds than the most complete group
    repeated: pd.DataFrame    # finished runs left out because a later run of the same group and seed exists
    n_runs: int               # runs read (reproductions excluded)
    panel: tuple[str, ...] = ("dataset", "model")  # one table and one set of figures per value of these
    baseline: str = BASELINE
    reference: str = REFERENCE
    # probe params that differ between runs of strategies that train a probe: their values label the `probe` column
    # and keep such rows apart (empty: no `probe` column)
    probe_keys: tuple[str, ...] = ()
    reuse: int | None = None  # K of the reuse_saved_* columns; None: not computed
    # the runs behind the numbers (finished, latest per group and seed): the anytime curves read their histories
    runs_used: pd.DataFrame = field(default_factory=pd.DataFrame)


def _group_mean(values: pd.Series) -> float:
    """Mean only when every run of the group logged the metric: a partial mean would mislead."""
    return float(values.mean()) if len(values) and values.notna().all() else float("nan")


def _mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% bootstrap interval over seeds; all NaN when some seed has no value."""
    if not len(values) or np.isnan(values).any():
        return (float("nan"),) * 3
    return (float(values.mean()), *bootstrap_mean_ci(values))


def _latest_per_seed(finished: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    ordered = finished.sort_values("start_time")
    dup = ordered.duplicated([*keys, "seed"], keep="last")
    return ordered[~dup], ordered[dup]


def probe_keys(runs: pd.DataFrame, by: Sequence[str] = ()) -> list[str]:
    """The probe.* params whose values differ between FINISHED runs that used a probe (`by` keys excepted: those
    split panels already)."""
    used = runs[(runs["status"] == "FINISHED") & runs[PROBE_USED].notna()] if PROBE_USED in runs else runs.iloc[:0]
    cols = [c for c in runs.columns if c.startswith(PROBE_PARAMS) and c not in (*by, *PROBE_IGNORED)]
    return sorted(c for c in cols if used[c].nunique(dropna=False) > 1)


def probe_label(values: pd.Series, keys: Sequence[str]) -> str:
    """`epochs=5, model=MLP, subset=0.5`: the probe config of one run, keys without `probe.`, a `_target_` as its
    class name; a param the run did not log is left out."""
    parts = []
    for k in keys:
        v = values[k]
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        name = k.removeprefix(PROBE_PARAMS)
        if name.endswith("._target_"):
            name, v = name.removesuffix("._target_"), str(v).rsplit(".", 1)[-1]
        elif v == "None":
            v = "null"  # as the config is written: a default derived at run time (the trial's model, budget, ...)
        parts.append(f"{name}={v:g}" if isinstance(v, float) else f"{name}={v}")
    return ", ".join(parts)


def _label_probes(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Column `probe` on every run of a strategy that used a probe in some finished run (failed runs included, so
    they land in their own row's group); "" for the others, whose probe params are defaults they never used."""
    users = set(runs.loc[(runs["status"] == "FINISHED") & runs[PROBE_USED].notna(), "strategy"])
    runs = runs.copy()
    runs["probe"] = [probe_label(r, keys) if r["strategy"] in users else "" for _, r in runs.iterrows()]
    return runs


def summarise(runs: pd.DataFrame, experiment: str = "", by: Sequence[str] = (), baseline: str = BASELINE,
              reference: str = REFERENCE, reuse: int | None = None) -> Report:
    """`by`: columns of `runs` (load_runs(by=...)) that split the experiment into panels besides dataset+model.
    `reuse`: K, the number of trainings that reuse one selection in the reuse_saved_* columns (None: left out)."""
    panel = ("dataset", "model", *by)
    runs = runs[runs["reproduction_of"].isna()] if "reproduction_of" in runs else runs
    probe = probe_keys(runs, by)
    if probe:
        runs = _label_probes(runs, probe)
    keys = [*panel, "strategy", *(["probe"] if probe else []), "fraction"]
    finished_all = runs[runs["status"] == "FINISHED"]
    finished, repeated = _latest_per_seed(finished_all, keys)
    failed = runs[runs["status"] != "FINISHED"]

    audited = AUDIT_FLAG in finished and finished[AUDIT_FLAG].notna().any()
    rows = []
    for key, g in finished.groupby(keys, dropna=False, sort=True):
        g = g.sort_values("seed")
        row = dict(zip(keys, key))
        acc = g[ACCURACY].to_numpy(dtype=float) if ACCURACY in g else np.full(len(g), np.nan)
        row["n"] = len(g)
        row["seeds"] = " ".join(str(s) for s in g["seed"])
        row["accuracy"], row["accuracy_lo"], row["accuracy_hi"] = _mean_ci(acc)
        for m in (*COSTS, *BUDGET):
            row[m] = _group_mean(g[m]) if m in g else float("nan")
        for m in (m for m in KEPT if m in g):  # only where some run logged it: no column otherwise
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = _mean_ci(g[m].to_numpy(dtype=float))
        row.update({m: _group_mean(g[m]) for m in DATA_AUDIT if m in g})
        if audited:  # runs of the group whose audit found a test sample in the training set; n/a: none audited
            row["audit_flagged_runs"] = int((g[AUDIT_FLAG] == "true").sum()) if g[AUDIT_FLAG].notna().any() else np.nan
        row.update({k: g[k].iloc[0] for k in probe})  # one value per group: `probe` is their label
        for unit, (total, stages) in ONE_TIME.items():
            # per run, a stage it did not log cost it nothing once (its total has no such stage either)
            once = sum((g[m].fillna(0.0) for m in stages if m in g), pd.Series(0.0, index=g.index))
            row[f"one_time_{unit}"] = _group_mean(once.where(g[total].notna())) if total in g else float("nan")
        # the share of the total spent choosing data: probe, static selection and selection inside training
        chosen_s = [row[m] for m in SELECTION_COSTS if not np.isnan(row[m])]
        row["selection_share"] = sum(chosen_s) / row["total_s"] if chosen_s and row["total_s"] > 0 else np.nan
        row["_acc_by_seed"] = dict(zip(g["seed"].astype(int), acc))
        rows.append(row)
    summary = pd.DataFrame(rows)
    if summary.empty:
        summary = pd.DataFrame(columns=[*keys, "n", "seeds", "accuracy", "accuracy_lo", "accuracy_hi", *COSTS,
                                        "selection_share", *BUDGET, *probe, *(f"one_time_{u}" for u in ONE_TIME),
                                        "_acc_by_seed"])
    _add_baseline(summary, list(panel), baseline)
    _add_amortised(summary, list(panel), baseline, reuse)
    _add_paired(summary, list(panel), reference)
    _add_pareto(summary, list(panel))
    summary = summary.drop(columns="_acc_by_seed").reset_index(drop=True)

    cols = ["run_id", "status", *keys, "seed", "error"]
    return Report(experiment, summary, failed[cols].sort_values([*keys, "seed"]).reset_index(drop=True),
                  _missing_seeds(runs, finished, keys), repeated[cols].reset_index(drop=True), len(runs),
                  panel, baseline, reference, tuple(probe), reuse, finished.reset_index(drop=True))


def _same_panel(s: pd.DataFrame, row: pd.Series, panel: list[str]) -> pd.Series:
    mask = pd.Series(True, index=s.index)
    for k in panel:
        mask &= (s[k] == row[k]) | (s[k].isna() & pd.isna(row[k]))
    return mask


def _add_baseline(s: pd.DataFrame, panel: list[str], baseline: str) -> None:
    """Delta accuracy, speedup and savings against the baseline strategy's runs of the same panel."""
    s["delta_accuracy"] = s["delta_lo"] = s["delta_hi"] = np.nan
    s["speedup"] = np.nan
    for name in SAVINGS:
        s[f"savings_{name}"] = np.nan
    for idx, row in s.iterrows():
        base = s[_same_panel(s, row, panel) & (s["strategy"] == baseline)]
        if len(base) != 1:
            continue  # no baseline (or an ambiguous one, e.g. at two fractions): leave n/a
        b = base.iloc[0]
        s.at[idx, "delta_accuracy"] = row["accuracy"] - b["accuracy"]
        if row["strategy"] != baseline:  # the baseline against itself has no interval to speak of
            lo, hi = bootstrap_diff_ci(list(row["_acc_by_seed"].values()), list(b["_acc_by_seed"].values()))
            s.at[idx, "delta_lo"], s.at[idx, "delta_hi"] = lo, hi
        s.at[idx, "speedup"] = b["total_s"] / row["total_s"] if row["total_s"] > 0 else np.nan
        for name, metric in SAVINGS.items():
            if b[metric] > 0:
                s.at[idx, f"savings_{name}"] = 1 - row[metric] / b[metric]


def _add_amortised(s: pd.DataFrame, panel: list[str], baseline: str, reuse: int | None) -> None:
    """Per unit (s, energy_j): per_training_* = mean total - mean one-time cost; breakeven_trainings* = one-time cost
    / (baseline's per-training cost - this per-training cost), the number of trainings one selection must serve to
    cost less than training on the baseline's data each time (inf where this row saves nothing per training);
    with `reuse` K, reuse_saved_* = K x that per-training saving - the one-time cost, and its share of K baseline
    trainings. The baseline pays everything on every training: its one-time cost is 0, its per-training cost its
    total."""
    for unit, (total, _) in ONE_TIME.items():
        suffix = "" if unit == "s" else "_energy"
        s[f"per_training_{unit}"] = s[total] - s[f"one_time_{unit}"]
        s[f"breakeven_trainings{suffix}"] = np.nan
        if reuse is not None:
            s[f"reuse_saved_{unit}"] = s[f"reuse_saved{suffix}_share"] = np.nan
        for idx, row in s.iterrows():
            base = s[_same_panel(s, row, panel) & (s["strategy"] == baseline)]
            if len(base) != 1 or np.isnan(row[total]) or np.isnan(base.iloc[0][total]):
                continue
            full = float(base.iloc[0][total])
            if row["strategy"] == baseline:
                s.at[idx, f"one_time_{unit}"], s.at[idx, f"per_training_{unit}"] = 0.0, full
                if reuse is not None:
                    s.at[idx, f"reuse_saved_{unit}"] = s.at[idx, f"reuse_saved{suffix}_share"] = 0.0
                continue
            once, gain = row[f"one_time_{unit}"], full - (row[total] - row[f"one_time_{unit}"])
            s.at[idx, f"breakeven_trainings{suffix}"] = once / gain if gain > 0 else np.inf
            if reuse is not None:
                saved = reuse * gain - once
                s.at[idx, f"reuse_saved_{unit}"] = saved
                s.at[idx, f"reuse_saved{suffix}_share"] = saved / (reuse * full) if full > 0 else np.nan


def _add_paired(s: pd.DataFrame, panel: list[str], reference: str) -> None:
    """Paired-by-seed accuracy difference against the reference strategy in the same panel, at the same fraction."""
    for c in ("vs_reference_n", "vs_reference_diff", "vs_reference_lo", "vs_reference_hi", "vs_reference_p"):
        s[c] = np.nan
    s["vs_reference_significant"] = pd.Series([pd.NA] * len(s), dtype="boolean")
    for idx, row in s.iterrows():
        if row["strategy"] == reference:
            continue
        ref = s[_same_panel(s, row, panel) & (s["strategy"] == reference) & np.isclose(s["fraction"], row["fraction"])]
        if len(ref) != 1:
            continue
        pc = paired_comparison(row["_acc_by_seed"], ref.iloc[0]["_acc_by_seed"])
        if pc.n == 0:
            continue
        s.loc[idx, ["vs_reference_n", "vs_reference_diff", "vs_reference_lo", "vs_reference_hi", "vs_reference_p"]] = (
            pc.n, pc.mean_diff, pc.ci_lo, pc.ci_hi, pc.p_value)
        s.at[idx, "vs_reference_significant"] = pc.significant


def _add_pareto(s: pd.DataFrame, panel: list[str]) -> None:
    """Frontier of mean accuracy (up) against mean total cost (down), within each panel."""
    s["pareto"] = False
    for _, g in s.groupby(panel, dropna=False):
        s.loc[g.index, "pareto"] = pareto_mask(g[PARETO_COST].to_numpy(float), g["accuracy"].to_numpy(float))


def _missing_seeds(runs: pd.DataFrame, finished: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Groups (any run, finished or not) with fewer finished seeds than the most complete group."""
    cols = [*keys, "n", "expected_n", "missing_seeds"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    have = {k: set(g["seed"].dropna().astype(int)) for k, g in finished.groupby(keys, dropna=False)}
    groups = [k for k, _ in runs.groupby(keys, dropna=False)]
    most = max((len(v) for v in have.values()), default=0)
    expected = set().union(*(v for v in have.values() if len(v) == most)) if most else set()
    rows = []
    for k in groups:
        seeds = have.get(k, set())
        if len(seeds) < most:
            rows.append({**dict(zip(keys, k)), "n": len(seeds), "expected_n": most,
                         "missing_seeds": " ".join(str(x) for x in sorted(expected - seeds))})
    return pd.DataFrame(rows, columns=cols)


@dataclass(frozen=True)
class Overlap:
    """What the contamination audit found in one panel's runs (those behind its numbers)."""

    n_exact: tuple[float, float]  # min and max over the flagged runs of audit_n_exact: test samples with an exact copy
    n_near: tuple[float, float]  # the same of audit_n_near: test samples with a near copy and no exact one
    flagged: int  # runs tagged audit_flagged=true
    audited: int  # runs that ran the audit (tagged either way)


def contamination_overlap(report: Report, key: tuple) -> Overlap | None:
    """The audit of the panel `key` (values of report.panel): None unless one of its runs was flagged."""
    runs = report.runs_used
    if AUDIT_FLAG not in runs or runs.empty:
        return None
    runs = runs[_same_panel(runs, pd.Series(dict(zip(report.panel, key)), dtype=object), list(report.panel))]
    flagged = runs[runs[AUDIT_FLAG] == "true"]
    if flagged.empty:
        return None

    def span(metric: str) -> tuple[float, float]:
        v = flagged[metric] if metric in flagged else pd.Series(np.nan, index=flagged.index)
        return float(v.min(skipna=False)), float(v.max(skipna=False))

    return Overlap(span("audit_n_exact"), span("audit_n_near"), len(flagged), int(runs[AUDIT_FLAG].notna().sum()))


def panel_title(panel: tuple[str, ...], values: tuple) -> str:
    """`mnist1d / cnn1d` or, with `by` params, `mnist1d / cnn1d / corruption.label_noise=0.2 / trainer.epochs=15`."""
    return " / ".join([str(v) for v in values[:2]] + [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                      for k, v in zip(panel[2:], values[2:])])
