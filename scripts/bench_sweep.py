"""Sweep throughput: eight default trials with the Ray launcher (two at a time) against Hydra's basic
launcher (one at a time), each as the user runs it (`python -m harness.run -m ...`), end to end.

Both sweeps train the default trial (MNIST-1D, cnn1d, 6,000 steps) for seeds 0-7 into their own fresh
SQLite store, from one warm dataset cache. Ray: `hydra.launcher.num_cpus=1` on a local instance with
the machine's cores, so two trials at once with one torch thread each; basic: torch's default threads.
Prints wall times, throughput ratio, each sweep's fixed costs (start-up: command start to the first trial's
MLflow run start; wind-down: the last run's end to the command's exit), and the launcher overhead per trial
(Ray task start to trial start, i.e. to the MLflow run's start time), read back from the tracking store.

    python scripts/bench_sweep.py [--trials 8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sweep(store: str, n: int, cache: str, sweep_dir: str, *launcher: str) -> tuple[float, float, float]:
    """Runs one sweep; returns its wall time and its start and end (epoch seconds, as MLflow's run times)."""
    cmd = [sys.executable, "-m", "harness.run", "-m", *launcher, f"seed=range({n})", f"tracking.uri={store}",
           f"cache_dir={cache}", f"hydra.sweep.dir={sweep_dir}"]
    start, epoch_start = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, epoch_start, epoch_start + wall


def runs(store: str):
    import mlflow

    mlflow.set_tracking_uri(store)
    return mlflow.search_runs(experiment_names=["winnow"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import torch

    from harness.data.sources import MNIST1D

    with tempfile.TemporaryDirectory() as tmp:
        cache = f"{tmp}/cache"
        MNIST1D().load(cache)  # generate the dataset once, outside the timings
        for r in range(args.repeats):
            basic_store, ray_store = f"sqlite:///{tmp}/basic{r}.db", f"sqlite:///{tmp}/ray{r}.db"
            # Alternate which goes first, so load from others on this shared machine hits both alike.
            order = ["basic", "ray"] if r % 2 == 0 else ["ray", "basic"]
            wall, times, load = {}, {}, {}
            for kind in order:
                launcher = ("hydra/launcher=ray", "hydra.launcher.num_cpus=1") if kind == "ray" else ()
                before = os.getloadavg()[0]
                wall[kind], *times[kind] = sweep(basic_store if kind == "basic" else ray_store, args.trials, cache,
                                                 f"{tmp}/{kind}{r}", *launcher)
                load[kind] = f"load avg {before:.1f} -> {os.getloadavg()[0]:.1f}"
            found = {"basic": runs(basic_store), "ray": runs(ray_store)}
            b, y = found["basic"], found["ray"]
            assert len(b) == len(y) == args.trials and set(b.status) == set(y.status) == {"FINISHED"}
            span = {k: (d.end_time.max() - d.start_time.min()).total_seconds() for k, d in found.items()}
            print(f"repeat {r} (order: {', '.join(order)}; basic {load['basic']}, ray {load['ray']}):")
            for kind, d in found.items():
                start, end = times[kind]
                print(f"  {kind} launcher {wall[kind]:.1f} s ({args.trials / wall[kind] * 60:.2f} trials/min, "
                      f"mean acc {d['metrics.test_accuracy'].mean():.3f}, "
                      f"mean train_s {d['metrics.train_s'].mean():.1f}; "
                      f"start-up {d.start_time.min().timestamp() - start:.1f} s, "
                      f"wind-down {end - d.end_time.max().timestamp():.1f} s)")
            print(f"  throughput ray/basic: end to end {wall['basic'] / wall['ray']:.2f}x, first trial start to last "
                  f"trial end {span['basic'] / span['ray']:.2f}x ({span['basic']:.1f} s vs {span['ray']:.1f} s)")
            overhead = sorted(t.timestamp() - float(s) for t, s in zip(y.start_time, y["tags.launcher_task_start"]))
            warm = (y["tags.launcher_warm_worker"] == "true").sum() if "tags.launcher_warm_worker" in y else 0
            print(f"  launcher overhead per trial (Ray task start -> trial start), s: median "
                  f"{statistics.median(overhead):.2f}, max {max(overhead):.2f}, all "
                  f"{' '.join(f'{o:.2f}' for o in overhead)}; {warm} of {len(y)} trials on a warm worker")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}")


if __name__ == "__main__":
    main()
