"""Harness overhead: the default trial's training against a bare PyTorch loop doing the same steps.

Both run in this process on the same tensors (the default MNIST-1D split, cnn1d, Adam lr 1e-2,
batch 100, 6,000 steps, evaluation every epoch), alternating, several repeats; prints each time and
the ratio harness / bare. The harness side is `harness.train.train`, exactly what a trial runs.

    python scripts/bench_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from harness.config import TrainerConfig
from harness.data.sources import MNIST1D
from harness.models import CNN1D
from harness.seeding import derive_seed
from harness.train import train
from strategies import Selection


def bare_loop(x, y, x_test, y_test, steps: int, batch_size: int, seed: int) -> tuple[float, float]:
    """The same recipe written as plainly as PyTorch allows."""
    torch.manual_seed(derive_seed(seed, "init"))
    model = CNN1D((x.shape[1],), 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    step, steps_per_epoch = 0, (len(x) + batch_size - 1) // batch_size
    while step < steps:
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if step % steps_per_epoch == 0:  # evaluate every epoch, as the harness does
            with torch.no_grad():
                model.eval()
                acc = (model(x_test).argmax(1) == y_test).float().mean().item()
                model.train()
    return time.perf_counter() - start, acc


def harness_loop(data, seed: int) -> tuple[float, float]:
    cfg = OmegaConf.structured(TrainerConfig)
    torch.manual_seed(derive_seed(seed, "init"))
    model = CNN1D(data.input_shape, data.num_classes)
    start = time.perf_counter()
    out = train(model, data, Selection(np.arange(len(data.y_train))), cfg, seed, torch.device("cpu"))
    return time.perf_counter() - start, out.final_test_accuracy


def trial(seed: int, store: str) -> tuple[float, float]:
    """The whole default trial as `python -m harness.run` runs it, MLflow record included."""
    from harness.preflight import compose_config
    from harness.trial import run_trial

    cfg = compose_config([f"seed={seed}", f"tracking.uri={store}"])
    start = time.perf_counter()
    result = run_trial(cfg)
    return time.perf_counter() - start, result.test_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = MNIST1D().load(".winnow/cache")
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xt, yt = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    harness_loop(data, 99)  # warm-up: first-call allocations and thread-pool start outside the timing
    h_times, b_times, t_times = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        trial(99, store)  # creates the store's tables once, as any first run in a directory does
        for r in range(args.repeats):
            t_s, t_acc = trial(r, store)
            h_s, h_acc = harness_loop(data, r)
            b_s, b_acc = bare_loop(x, y, xt, yt, 6000, 100, r)
            t_times.append(t_s)
            h_times.append(h_s)
            b_times.append(b_s)
            print(f"repeat {r}: trial {t_s:.2f} s (acc {t_acc:.3f})  harness.train {h_s:.2f} s (acc {h_acc:.3f})  "
                  f"bare {b_s:.2f} s (acc {b_acc:.3f})")
    t, h, b = (statistics.median(v) for v in (t_times, h_times, b_times))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"median of {args.repeats}: whole trial {t:.2f} s, harness.train {h:.2f} s, bare loop {b:.2f} s")
    print(f"ratio trial/bare = {t / b:.3f}   ratio harness.train/bare = {h / b:.3f}")


if __name__ == "__main__":
    main()
