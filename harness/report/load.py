"""Read an experiment's runs from MLflow into one flat frame: one row per run, tags and metrics as columns."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from harness.errors import UserError

# Tags every trial sets (harness/trial.py); the report groups on the first four. Some are set only sometimes:
# `error` (a failed run), `reproduction_of` (harness.reproduce), `audit_flagged` (audit.contamination=true).
GROUP_KEYS = ("dataset", "model", "strategy", "fraction")
TAGS = (*GROUP_KEYS, "seed", "config_hash", "dataset_fingerprint", "selected_indices_sha256", "device", "error",
        "reproduction_of", "audit_flagged")
_PAGE = 1000
# Params of the probe (harness/config.py ProbeConfig, flattened: probe.epochs, probe.model._target_, ...), read for
# every run: the summary keeps apart rows whose probe differs (summary.probe_keys).
PROBE_PARAMS = "probe."


def load_runs(tracking_uri: str, experiment: str, by: Sequence[str] = ()) -> pd.DataFrame:
    """All runs of `experiment`, via MLflow's search API (paged).

    Columns: run_id, status, start_time (ms), the TAGS above (None when absent), one float column per
    metric (latest value; NaN when a run did not log it). `fraction` is a float and `seed` an int.
    `by`: logged config params (e.g. `corruption.label_noise`) to add as columns, numeric where every value is.
    Every logged `probe.*` param is a column too, the string as logged ("None" for null), None where a run did not
    log it.
    """
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"experiment={experiment}: not found in {tracking_uri}; expected one of: "
                        f"{', '.join(names) or '(none)'}")
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=_PAGE, page_token=token)
        for run in page:
            row = {"run_id": run.info.run_id, "status": run.info.status, "start_time": run.info.start_time}
            row.update({t: run.data.tags.get(t) for t in TAGS})
            row.update({f"metric:{k}": v for k, v in run.data.metrics.items()})
            row.update({f"param:{k}": v for k, v in run.data.params.items() if k.startswith(PROBE_PARAMS)})
            row.update({f"param:{k}": run.data.params.get(k) for k in by})
            rows.append(row)
        token = page.token
        if not token:
            break
    df = pd.DataFrame(rows, columns=["run_id", "status", "start_time", *TAGS])
    if rows:
        df = pd.DataFrame(rows)
        for t in TAGS:
            if t not in df:
                df[t] = None
    df = df.rename(columns=lambda c: c.removeprefix("metric:"))
    for k in by:
        col = df.pop(f"param:{k}") if f"param:{k}" in df else pd.Series([None] * len(df), dtype=object)
        if len(df) and col.isna().all():
            raise UserError(f"--by {k}: no run of experiment {experiment} logged this parameter; expected a "
                            "config key such as trainer.epochs or corruption.label_noise")
        df[k] = _typed(col)
    for c in [c for c in df.columns if c.startswith(f"param:{PROBE_PARAMS}")]:
        df[c.removeprefix("param:")] = df.pop(c)  # as logged: "None" (null: a default derived at run time) stays
    df["fraction"] = pd.to_numeric(df["fraction"], errors="coerce").astype(float)
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    if "probe_cached_s" in df:
        # A run that read cached signals was charged the probe's original cost as probe_cached_s (already in
        # its total_s); the probe column shows what each strategy's probe cost, whichever run trained it.
        df["probe_s"] = df[[c for c in ("probe_s", "probe_cached_s") if c in df]].sum(axis=1, min_count=1)
    if "probe_cached_energy_j" in df:  # the same for its energy: the strategy's one-time cost (summary.ONE_TIME)
        df["probe_energy_j"] = df[[c for c in ("probe_energy_j", "probe_cached_energy_j") if c in df]].sum(
            axis=1, min_count=1)
    return df


def _typed(col: pd.Series) -> pd.Series:
    """Numeric where every logged value is, else the strings as logged."""
    numeric = pd.to_numeric(col, errors="coerce")
    return numeric if numeric.notna().sum() == col.notna().sum() else col


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """Names of the metric columns (everything that is not run info or a tag)."""
    fixed = {"run_id", "status", "start_time", *TAGS}
    return [c for c in runs.columns if c not in fixed and np.issubdtype(runs[c].dtype, np.number)]
