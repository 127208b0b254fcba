"""`python -m harness.reproduce RUN_ID [--tracking-uri URI]` (console script `winnow-reproduce`).

Re-runs a finished trial from its logged `config.yaml` in the same tracking store (the new run is
tagged `reproduction_of=RUN_ID`), with the numerics the run recorded (device, torch thread count:
harness/numerics.py), then compares the two runs: dataset fingerprint (and the embeddings file's, for a
selection on `embedding=file`), selected-indices hash, config hash
and every outcome metric. Circumstances (timings, energy, memory, whether the signal cache was warm) are
shown, never compared; the environment manifests are diffed for information. The store is
--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.
Run it from the directory the original trial ran in: relative paths in the config (dataset.path,
cache_dir) resolve against the working directory.

Exit codes: 0 reproduced; 1 results differ (or the re-run failed); 2 bad input (unknown run, no
config); 3 the data changed (dataset or embeddings fingerprint differs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError, exit_user_error, one_line
from harness.tracking import find_run, flatten

EXIT_OK, EXIT_DIFFERS, EXIT_USER, EXIT_DATA_CHANGED = 0, 1, 2, 3
DATA_TAGS = ("dataset_fingerprint", "embeddings_fingerprint")  # the trial's inputs; embeddings only for embedding=file
NUMERICS_TAGS = ("device", "torch_threads", "amp_dtype", "deterministic")  # harness/numerics.py
# Circumstances, not results: measurements of cost vary run to run, and whether the signal cache was warm says
# where the signals came from, not what they are (their content is compared through the selected indices).
# Shown, never compared.
COST_SUFFIXES = ("_s", "_bytes", "_j")
COST_NAMES = frozenset({"gpu_hours", "cpu_core_hours", "kwh", "energy_kwh", "co2e_g", "cost_usd", "cache_hit"})
# Counts fixed by the config and the selection: equal on any device.
EXACT = frozenset({"n_selected", "n_train", "selected_fraction", "steps", "epochs", "num_params", "samples_seen",
                   "samples_forwarded", "samples_backpropagated"})
# ...except where selection during training (tag `dynamic_stage`) decides from losses: then the budget counts
# follow the numerics and get the GPU tolerance like any other result.
DEPENDS_ON_LOSSES = frozenset({"steps", "epochs", "samples_seen", "samples_forwarded", "samples_backpropagated"})
# On a GPU (either run), kernels are not bitwise deterministic by default (cuDNN/cuBLAS algorithm
# choice, atomics, bf16 autocast): accuracies may differ by up to 1 point, other results (losses) by 5%.
GPU_ACCURACY_ABS = 0.01
GPU_OTHER_REL = 0.05
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the printed diff readable


def is_cost(metric: str) -> bool:
    return metric in COST_NAMES or metric.endswith(COST_SUFFIXES)


def within(metric: str, a: float, b: float, gpu: bool, dynamic: bool = False) -> bool:
    """Does the reproduced value `b` match the original `a` under this device's tolerance?"""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    if not gpu or (metric in EXACT and not (dynamic and metric in DEPENDS_ON_LOSSES)):
        return False  # CPU runs are deterministic: equal or not reproduced
    if "accuracy" in metric:
        return abs(a - b) <= GPU_ACCURACY_ABS + 1e-9  # 0.91 - 0.90 is 0.010000000000000009 in floats
    return abs(a - b) <= GPU_OTHER_REL * max(abs(a), abs(b))


def environment_diff(original: dict, new: dict) -> list[str]:
    a, b = flatten(original), flatten(new)
    return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]


@dataclass
class Comparison:
    new_run_id: str | None
    gpu: bool
    lines: list[str] = field(default_factory=list)       # one per compared item, "ok" or "DIFF"
    differences: list[str] = field(default_factory=list)  # items that did not reproduce
    environment: list[str] = field(default_factory=list)  # manifest differences (information)
    error: str | None = None                              # the re-run's error, when it failed
    changed_data: list[str] = field(default_factory=list)  # "dataset fingerprint <original> -> <new>" per changed input

    @property
    def data_changed(self) -> bool:
        return bool(self.changed_data)

    @property
    def exit_code(self) -> int:
        if self.data_changed:
            return EXIT_DATA_CHANGED
        return EXIT_DIFFERS if self.differences or self.error else EXIT_OK


def _download_text(client, run_id: str, name: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run_id, name, tmp)).read_text()
        except Exception:
            return None


def load_config(client, run_id: str):
    """The run's resolved config, typed again by the structured schema (ints stay ints, etc.)."""
    from omegaconf import OmegaConf

    from harness.config import WinnowConfig

    text = _download_text(client, run_id, "config.yaml")
    if text is None:
        raise UserError(f"run {run_id}: has no config.yaml artifact; expected a run recorded by harness.trial")
    return OmegaConf.merge(OmegaConf.structured(WinnowConfig), OmegaConf.create(text))


def reproduce(run_id: str, uri: str | None = None) -> Comparison:
    """Re-run `run_id` from the store `uri` (None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db) and compare."""
    client, original = find_run(run_id, uri)
    if original.info.status != "FINISHED":
        raise UserError(f"run {run_id}: status {original.info.status}; only a FINISHED run can be reproduced")
    cfg = load_config(client, run_id)
    cfg.tracking.uri = uri  # the store we read from, whatever (possibly relative) URI the trial used
    cfg.tracking.experiment = client.get_experiment(original.info.experiment_id).name

    # torch and the trial stack only once the run is known good
    from harness.numerics import Numerics, torch_threads
    from harness.trial import run_trial

    numerics = Numerics.from_tags(original.data.tags, run_id)
    started_ms = int(time.time() * 1000)
    try:
        with torch_threads(numerics.torch_threads):
            new_id, error = run_trial(cfg, replay=numerics).run_id, None
    except Exception as e:
        new_id, error = _find_new_run(client, original, started_ms), one_line(e)
    if new_id:
        client.set_tag(new_id, "reproduction_of", run_id)
    new = client.get_run(new_id) if new_id else None
    return compare(client, original, new, error)


def _find_new_run(client, original, started_ms: int) -> str | None:
    """The run a failed re-run left behind: same config hash, started after we began."""
    runs = client.search_runs([original.info.experiment_id],
                              f"tags.config_hash = '{original.data.tags.get('config_hash')}' "
                              f"and attributes.start_time >= {started_ms}", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def compare(client, original, new, error: str | None = None) -> Comparison:
    """Item by item: identity and data tags, then the outcome metrics under the device's tolerance."""
    a_tags = original.data.tags
    b_tags = new.data.tags if new else {}
    gpu = any(str(t.get("device", "")).startswith("cuda") for t in (a_tags, b_tags))
    c = Comparison(new.info.run_id if new else None, gpu, error=error)

    # the inputs: the training data, and the embeddings file a selection on `embedding=file` read
    data_tags = [t for t in DATA_TAGS if t == "dataset_fingerprint" or t in a_tags]
    for tag in data_tags:
        a, b = a_tags.get(tag), b_tags.get(tag)
        if a and b and a != b:
            c.changed_data.append(f"{tag.replace('_', ' ')} {a} -> {b}")
    for tag in (*data_tags, "config_hash", "selected_indices_sha256"):
        a, b = a_tags.get(tag), b_tags.get(tag)
        _record(c, tag, a == b and a is not None, f"{a} -> {b}" if a != b else f"{a}")
    for tag in NUMERICS_TAGS:  # replayed, so equal unless the re-run could not honour them
        a, b = a_tags.get(tag), b_tags.get(tag)
        _record(c, tag, a == b, f"{a} -> {b}" if a != b else f"{a}")
    if error:
        return c
    b_metrics = new.data.metrics
    for m, a in sorted(original.data.metrics.items(), key=lambda kv: (is_cost(kv[0]), kv[0])):
        b = b_metrics.get(m, float("nan"))
        if is_cost(m):
            c.lines.append(f"  info  {m:<26} {a:.4g} -> {b:.4g} (a circumstance; not compared)")
        else:
            _record(c, m, within(m, a, b, gpu, "dynamic_stage" in a_tags), f"{a:.10g} -> {b:.10g}")
    env_a, env_b = (_download_text(client, r.info.run_id, "environment.json") for r in (original, new))
    if env_a and env_b:
        c.environment = environment_diff(json.loads(env_a), json.loads(env_b))
    return c


def _record(c: Comparison, item: str, ok: bool, detail: str) -> None:
    c.lines.append(f"  {'ok' if ok else 'DIFF':<5} {item:<26} {detail}")
    if not ok:
        c.differences.append(item)


def report_text(run_id: str, c: Comparison) -> str:
    tolerance = (f"GPU tolerance: accuracy within {GPU_ACCURACY_ABS * 100:g} point, other results within "
                 f"{GPU_OTHER_REL:.0%}, counts and hashes equal" if c.gpu else "CPU: every result must be equal")
    out = [f"reproduction of run {run_id} -> run {c.new_run_id or '(none)'} ({tolerance})", *c.lines]
    if c.environment:
        out += [f"environment: {len(c.environment)} differences (information)"] + [f"  {d}" for d in c.environment]
    else:
        out.append("environment: same manifest")
    if c.data_changed:
        out.append(f"DATA CHANGED: {'; '.join(c.changed_data)}: the data differs from what run {run_id} "
                   "trained on")
    elif c.error:
        out.append(f"NOT REPRODUCED: the re-run failed: {c.error}")
    elif c.differences:
        out.append(f"NOT REPRODUCED: {len(c.differences)} differences: {', '.join(c.differences)}")
    else:
        out.append("REPRODUCED")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="winnow-reproduce",
                                     description="Re-run a trial from its MLflow record and compare.")
    parser.add_argument("run_id", help="MLflow run id of a FINISHED trial")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    args = parser.parse_args(argv)
    try:
        comparison = reproduce(args.run_id, args.tracking_uri)
    except UserError as e:
        exit_user_error("winnow-reproduce", e)
    print(report_text(args.run_id, comparison))
    sys.exit(comparison.exit_code)


if __name__ == "__main__":
    main()
