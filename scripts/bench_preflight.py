"""How fast bad input stops: the time from `python -m harness.run <bad overrides>` to its one-line error, against
`python -m harness.run --cfg job` (start-up and config composition only: the floor any command pays) and against
a good one-epoch trial (what a user would otherwise wait for before seeing a traceback).

Each command runs as a subprocess, alternating, several repeats; prints medians and the ratios bad / floor and
bad / trial. The unit tests assert only the one line and the exit code, never a time (CI machines differ 5x).

    python scripts/bench_preflight.py [--repeats 3]
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
BAD = {
    "strategy.fraction=1.5": ["strategy=random", "strategy.fraction=1.5"],
    "model=resnet18 on mnist1d": ["model=resnet18"],
    "trainer.optimizer.lr=-1": ["trainer.optimizer.lr=-1"],
    "seed=-5": ["seed=-5"],
    "bad launcher value": ["-m", "hydra/launcher=ray", "hydra.launcher.num_cpus=-1", "seed=0,1"],
}


def timed(args: list[str], store: str, cache: str) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.run", *args, f"tracking.uri={store}", f"cache_dir={cache}"],
                          cwd=REPO, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    commands = {"floor (--cfg job)": ["--cfg", "job"], **BAD, "good trial (1 epoch)": ["trainer.epochs=1"]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        store, cache = f"sqlite:///{tmp}/mlflow.db", f"{tmp}/cache"
        timed(commands["good trial (1 epoch)"], store, cache)  # warm-up: store tables, dataset cache, page cache
        for r in range(args.repeats):
            names = list(commands) if r % 2 == 0 else list(reversed(commands))  # alternate the order
            for name in names:
                seconds, rc = timed(commands[name], store, cache)
                expected = 0 if name.startswith(("floor", "good")) else 2
                if rc != expected:
                    raise SystemExit(f"{name}: exit code {rc}, expected {expected}")
                times[name].append(seconds)
    floor = statistics.median(times["floor (--cfg job)"])
    trial = statistics.median(times["good trial (1 epoch)"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; median of {args.repeats}")
    print(f"{'command':<28} {'s':>6} {'/ floor':>8} {'/ trial':>8}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<28} {med:6.2f} {med / floor:8.2f} {med / trial:8.2f}")


if __name__ == "__main__":
    main()
