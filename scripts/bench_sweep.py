"""Sweep throughput: eight default trials with the Ray launcher (two at a time) against Hydra's basic
launcher (one at a time), each as the user runs it (`python -m harness.run -m ...`), end to end.

Both sweeps train the default trial (MNIST-1D, cnn1d, 6,000 steps) for seeds 0-7 into their own fresh
SQLite store, from one warm dataset cache. Ray: `hydra.launcher.num_cpus=1` on a local instance with
the machine's cores, so two trials at once with one torch thread each; basic: torch's default threads.
Prints wall times, throughput ratio, each sweep's fixed costs (start-up: command start to the first trial's
MLflow run start; wind-down: the last run's end to the command's exit), and the launcher overhead per trial
(Ray task start to trial start, i.e. to the MLflow run's start time), read back from the tracking store.

    python scripts/bench_sweep.py [--trials 8] [--repeats 1] [--standing]

`--standing` adds a third sweep through the Ray launcher that joins a Ray instance started before the command
(`ray start --head`, outside the timing; stopped after), as a sweep on a running cluster does: it shows what the
local instance's start and shutdown cost the default sweep. Stopping it is `ray stop --force`, which stops every Ray
instance of this machine: run it where no other Ray work is running (a benchmark wants a quiet machine anyway).
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


def sweep(store: str, n: int, cache: str, sweep_dir: str, *launcher: str,
          env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Runs one sweep; returns its wall time and its start and end (epoch seconds, as MLflow's run times)."""
    cmd = [sys.executable, "-m", "harness.run", "-m", *launcher, f"seed=range({n})", f"tracking.uri={store}",
           f"cache_dir={cache}", f"hydra.sweep.dir={sweep_dir}"]
    start, epoch_start = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"sweep failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, epoch_start, epoch_start + wall


def runs(store: str):
    import mlflow

    mlflow.set_tracking_uri(store)
    return mlflow.search_runs(experiment_names=["winnow"])


PORT = 6391  # the standing instance's GCS port
RAY_CLI = str(Path(sys.executable).parent / "ray")
# The standing instance with token authentication, as docs/cluster.md advises: Ray (2.60) turns it on for `ray start`
# only where a token file exists, and a driver given an explicit address sends the token only with this set.
TOKEN_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}
LAUNCHERS = {
    "basic": (),
    "ray": ("hydra/launcher=ray", "hydra.launcher.num_cpus=1"),
    # the same Ray sweep joining a Ray instance that was up before the command (as on a cluster): no Ray start or
    # shutdown in the sweep; its workers are still fresh processes that import the trial code
    "ray-standing": ("hydra/launcher=ray", "hydra.launcher.num_cpus=1", f"hydra.launcher.address=127.0.0.1:{PORT}"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--standing", action="store_true",
                        help="also run the Ray sweep on a Ray instance started before it (`ray start --head`)")
    args = parser.parse_args()
    import torch

    from harness.data.sources import MNIST1D

    kinds = ["basic", "ray", *(["ray-standing"] if args.standing else [])]
    with tempfile.TemporaryDirectory() as tmp:
        cache = f"{tmp}/cache"
        MNIST1D().load(cache)  # generate the dataset once, outside the timings
        for r in range(args.repeats):
            store = {k: f"sqlite:///{tmp}/{k}{r}.db" for k in kinds}
            # Rotate which goes first, so load from others on a shared machine hits all alike.
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            wall, times, load = {}, {}, {}
            for kind in order:
                if kind == "ray-standing":  # started and stopped outside the timing
                    subprocess.run([RAY_CLI, "get-auth-token", "--generate"], check=True, capture_output=True,
                                   env=TOKEN_ENV)
                    subprocess.run([RAY_CLI, "start", "--head", f"--port={PORT}", f"--num-cpus={os.cpu_count()}",
                                    "--include-dashboard=false", "--disable-usage-stats"], check=True,
                                   capture_output=True, env=TOKEN_ENV)
                before = os.getloadavg()[0]
                env = TOKEN_ENV if kind == "ray-standing" else None
                try:
                    wall[kind], *times[kind] = sweep(store[kind], args.trials, cache, f"{tmp}/{kind}{r}",
                                                     *LAUNCHERS[kind], env=env)
                finally:
                    if kind == "ray-standing":
                        subprocess.run([RAY_CLI, "stop", "--force"], check=True, capture_output=True)
                load[kind] = f"{kind} load avg {before:.1f} -> {os.getloadavg()[0]:.1f}"
            found = {k: runs(store[k]) for k in kinds}
            assert all(len(d) == args.trials and set(d.status) == {"FINISHED"} for d in found.values())
            span = {k: (d.end_time.max() - d.start_time.min()).total_seconds() for k, d in found.items()}
            print(f"repeat {r} (order: {', '.join(order)}; {', '.join(load[k] for k in order)}):")
            for kind, d in found.items():
                start, end = times[kind]
                print(f"  {kind} launcher {wall[kind]:.1f} s ({args.trials / wall[kind] * 60:.2f} trials/min, "
                      f"mean acc {d['metrics.test_accuracy'].mean():.3f}, "
                      f"mean train_s {d['metrics.train_s'].mean():.1f}; "
                      f"start-up {d.start_time.min().timestamp() - start:.1f} s, "
                      f"wind-down {end - d.end_time.max().timestamp():.1f} s)")
            for kind in kinds[1:]:
                print(f"  throughput {kind}/basic: end to end {wall['basic'] / wall[kind]:.2f}x, first trial start to "
                      f"last trial end {span['basic'] / span[kind]:.2f}x ({span['basic']:.1f} s vs {span[kind]:.1f} s)")
            for kind in kinds[1:]:
                y = found[kind]
                overhead = sorted(t.timestamp() - float(s) for t, s in zip(y.start_time, y["tags.launcher_task_start"]))
                print(f"  {kind} overhead per trial (Ray task start -> trial start), s: median "
                      f"{statistics.median(overhead):.2f}, max {max(overhead):.2f}, all "
                      f"{' '.join(f'{o:.2f}' for o in overhead)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}")


if __name__ == "__main__":
    main()
