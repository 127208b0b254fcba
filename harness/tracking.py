"""MLflow tracking for one trial. A run always ends FINISHED or FAILED, never RUNNING."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from harness.errors import one_line

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow 3's own default, in the working directory
URI_ENV = "MLFLOW_TRACKING_URI"  # what every MLflow user sets on a cluster; honoured wherever no URI is given
_BATCH = 900  # MLflow accepts at most 1,000 metrics per log_batch call

# MLflow announces creating its SQLite tables at INFO; a user error must stay one line on stderr.
for _name in ("mlflow", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def tracking_uri(uri: str | None = None) -> str:
    """The store to use: `uri` when given (tracking.uri, --tracking-uri), else $MLFLOW_TRACKING_URI, else the
    SQLite file in the working directory."""
    return uri or os.environ.get(URI_ENV) or DEFAULT_URI


def find_run(run_id: str, uri: str | None = None) -> tuple[MlflowClient, Any]:
    """A client of the store `uri` (resolved as `tracking_uri` does) and run `run_id` in it; UserError naming both
    when the store has no such run (harness.reproduce and harness.export start so)."""
    from mlflow.exceptions import MlflowException

    from harness.errors import UserError

    uri = tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        return client, client.get_run(run_id)
    except MlflowException:
        raise UserError(f"run {run_id}: not found in {uri}") from None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"trainer.optimizer.lr": "0.01", ...} for MLflow params."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out


class TrialRun:
    """One MLflow run, logged through the client API so concurrent trials never share fluent state."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def params(self, params: Mapping[str, str]) -> None:
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        self.curves({k: [(step, v)] for k, v in values.items()})

    def curves(self, curves: Mapping[str, list[tuple[int, float]]]) -> None:
        """Whole curves at once ({name: [(step, value), ...]}): one round-trip per 900 points."""
        now = int(time.time() * 1000)
        items = [Metric(name, float(v), now, int(step)) for name, pts in curves.items() for step, v in pts]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def artifact_text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def artifact_array(self, name: str, array: np.ndarray) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            np.save(path, array)
            self.client.log_artifact(self.run_id, str(path))


@contextmanager
def trial_run(uri: str | None, experiment: str, run_name: str, tags: Mapping[str, Any]) -> Iterator[TrialRun]:
    """Start a run; end it FINISHED, or FAILED with the error as a tag and a traceback artifact.

    Ctrl-C (KeyboardInterrupt) and SystemExit also end the run FAILED before propagating.
    """
    mlflow.set_tracking_uri(tracking_uri(uri))
    client = MlflowClient(tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else _create_experiment(client, experiment)
    run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    trial = TrialRun(client, run.info.run_id)
    try:
        yield trial
    except BaseException as e:
        error = one_line(e)[:5000]
        try:
            trial.tags({"error": error, "error_type": type(e).__name__})
            trial.artifact_text("error.txt", traceback.format_exc())
        finally:
            client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")


def _create_experiment(client: MlflowClient, name: str) -> str:
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # another trial created it first
        return client.get_experiment_by_name(name).experiment_id
