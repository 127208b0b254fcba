"""Meter overhead: whole trials with the real Meter against a no-op meter with the same interface.

Both sides run `harness.trial.run_trial` in this process (MLflow record included), alternating, several repeats;
prints each time, the medians and the ratio meters-on / meters-off (goal <= 1.01). The no-op side swaps
`harness.trial.Meter` for `harness.meters.NullMeter`; everything else (FLOP count, evaluation) is identical.

    python scripts/bench_meters.py [--repeats 5] [--epochs 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch

import harness.trial
from harness.meters import Meter, NullMeter


def trial(seed: int, store: str, epochs: int, meter_cls: type) -> tuple[float, dict]:
    from harness.preflight import compose_config

    cfg = compose_config([f"seed={seed}", f"tracking.uri={store}", f"trainer.epochs={epochs}"])
    harness.trial.Meter = meter_cls
    try:
        start = time.perf_counter()
        result = harness.trial.run_trial(cfg)
        return time.perf_counter() - start, result.metrics
    finally:
        harness.trial.Meter = Meter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="trainer.epochs of the default MNIST-1D trial")
    args = parser.parse_args()
    on_s, off_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        trial(99, store, args.epochs, Meter)  # warm-up: store tables, dataset cache, first-call allocations
        for r in range(args.repeats):
            first, second = (Meter, NullMeter) if r % 2 == 0 else (NullMeter, Meter)  # alternate which goes first
            for cls in (first, second):
                s, m = trial(r, store, args.epochs, cls)
                (on_s if cls is Meter else off_s).append(s)
                extra = f"  total_energy_j {m['total_energy_j']:.1f}" if cls is Meter else ""
                print(f"repeat {r}: meters {'on ' if cls is Meter else 'off'} {s:.2f} s{extra}")
    on, off = statistics.median(on_s), statistics.median(off_s)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"median of {args.repeats}: meters on {on:.2f} s, meters off {off:.2f} s")
    print(f"ratio on/off = {on / off:.3f} (goal <= 1.01)")


if __name__ == "__main__":
    main()
