"""Rows read from the file a batch at a time against the same data in memory: training samples/s and peak RSS.

A 4 GiB training set (350,000 rows of CIFAR's shape, 3x32x32 float32, 12 KiB a row; classes 0-9 as noisy class
means) and a 10,000-row test set are written once as .npy files (`--dir`, reused when present). Each side is one
subprocess, so its peak RSS (the kernel's ru_maxrss of that process, from wait4) is its own:

- file: `dataset=npy dataset.in_memory=false`: rows stay in the file; each batch is read (from the page cache:
  the file was just written or read) and copied to the device;
- memory: `dataset.in_memory=true`: X is read whole, then the training loop holds the selected rows as one tensor
  (the harness's in-memory path, the airbench pattern).

Each side loads the data set as a trial does (`build_dataset(cfg).load`; the content hash is computed once
beforehand, `prepare`, as a sweep's driver does) and runs `harness.train.train`: model=logistic, the cheapest model
in the harness, so the data path and not the model dominates (a CNN's step would hide it); batch 256, Adam,
2 epochs of all 350,000 rows (strategy=full), evaluation after each epoch, one torch thread (tests do the same:
two threads on a shared 2-core VM spin on each other), after a warm-up of 4 batches (a process's first steps pay
torch's one-off initialisation, about 1 s). samples/s is for epoch 2 alone, its training time from
the loop's own clock (TrainOutcome.eval_train_s, evaluation excluded): the steady state. "whole" divides both
epochs' samples by train() wall time minus evaluation, set-up included (the memory side copies the selected rows
into one tensor there). Sides alternate (file, memory, memory, file, ... over `--rounds`), each after `--pause`
seconds of rest: the memory side's exit releases 9 GB, and a side started at once ran up to 2x slower (kernel time
on one of the 2 cores), and after X is read once to put it in the page cache (other processes' memory evicted
parts of it between sides: the first side then read from disk); medians are printed.
Goal (issue 14): file >= 0.8x memory's samples/s, file's peak RSS < 1.5 GB.

    python scripts/bench_data.py [--dir /tmp/winnow_bench_data] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROWS, TEST_ROWS, SHAPE, CLASSES = 350_000, 10_000, (3, 32, 32), 10
BATCH, EPOCHS = 256, 2
GOAL_RATIO, GOAL_RSS_BYTES = 0.8, 1.5e9


def write_rows(path: Path, means: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Class means plus noise, float32, written a chunk at a time; returns the labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, rows)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, *SHAPE)})
        for start in range(0, rows, 8192):
            noise = rng.standard_normal((min(8192, rows - start), *SHAPE), dtype=np.float32)
            (noise * 2 + means[y[start : start + 8192]]).tofile(f)
    os.replace(tmp, path)
    return y


def make_data(folder: Path, rows: int) -> dict[str, str]:
    paths = {k: str(folder / f"{k}.npy") for k in ("x_train", "y_train", "x_test", "y_test")}
    if all(Path(p).exists() for p in paths.values()) and len(np.load(paths["y_train"], mmap_mode="r")) == rows:
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    means = np.random.default_rng(99).standard_normal((CLASSES, *SHAPE), dtype=np.float32) * 0.05
    np.save(paths["y_test"], write_rows(Path(paths["x_test"]), means, TEST_ROWS, seed=1))
    np.save(paths["y_train"], write_rows(Path(paths["x_train"]), means, rows, seed=0))
    return paths


def overrides(paths: dict[str, str], in_memory: bool, cache_dir: str) -> list[str]:
    return ["dataset=npy", *(f"dataset.{k}={p}" for k, p in paths.items()), f"dataset.in_memory={in_memory}",
            "model=logistic", f"trainer.batch_size={BATCH}", f"trainer.epochs={EPOCHS}", "trainer.eval_every_epochs=1",
            "trainer.device=cpu", f"cache_dir={cache_dir}", "tracking.uri=sqlite:///:memory:"]


def side(args: list[str]) -> None:
    """One side, in its own process: load, train, print a JSON line."""
    import torch
    from omegaconf import OmegaConf

    from harness.build import build_dataset, build_model
    from harness.preflight import compose_config
    from harness.seeding import derive_seed
    from harness.train import train
    from strategies import Selection

    torch.set_num_threads(1)
    cfg = compose_config(args)
    start = time.perf_counter()
    data = build_dataset(cfg).load(cfg.cache_dir)
    load_s = time.perf_counter() - start
    # warm-up: a process's first steps pay torch's one-off initialisation (about 1 s here), which is not the data path
    warm = OmegaConf.merge(cfg.trainer, {"epochs": 1})
    train(build_model(cfg.model, data.input_shape, data.num_classes), data, Selection(np.arange(4 * BATCH)), warm,
          cfg.seed, torch.device("cpu"))
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    start = time.perf_counter()
    out = train(model, data, Selection(np.arange(len(data.y_train))), cfg.trainer, cfg.seed, torch.device("cpu"))
    wall_s = time.perf_counter() - start
    (_, t1), (_, t2) = out.eval_train_s[:2]
    print(json.dumps({"load_s": load_s, "epoch2_samples_per_s": len(data.y_train) / (t2 - t1),
                      "whole_samples_per_s": out.samples_seen / (wall_s - out.eval_s),
                      "accuracy": out.final_test_accuracy}))


def run_side(paths: dict[str, str], in_memory: bool, cache_dir: str) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, __file__, "--side", *overrides(paths, in_memory, cache_dir)],
                            stdout=subprocess.PIPE, text=True)
    with proc.stdout:
        stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen.wait would not give it)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"side in_memory={in_memory} failed (exit code {proc.returncode})")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak_rss_bytes": usage.ru_maxrss * 1024}


def warm_page_cache(path: str) -> float:
    """Read the file once (discarding it) so both sides start with it in the page cache, as a set that fits in
    memory is after its first epoch (other processes' memory can evict parts between sides); returns seconds."""
    start = time.perf_counter()
    buf = bytearray(64 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - start


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/winnow_bench_data")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pause", type=float, default=10.0, help="seconds of rest before each side")
    parser.add_argument("--rows", type=int, default=ROWS, help="training rows (a smaller set checks the script)")
    args = parser.parse_args()

    import torch

    from harness.data.npy import NPY

    start = time.perf_counter()
    paths = make_data(Path(args.dir), args.rows)
    size = os.path.getsize(paths["x_train"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 torch thread, "
          f"torch {torch.__version__}, CPU; load average (1/5/15 min) at start {load()}")
    print(f"data: X {args.rows:,} x {SHAPE} float32 = {size / 2**30:.2f} GiB (+ test {TEST_ROWS:,}), written or "
          f"checked in {time.perf_counter() - start:.1f} s; model=logistic, batch {BATCH}, {EPOCHS} epochs")
    cache_dir = str(Path(args.dir) / "cache")
    start = time.perf_counter()
    hashed = NPY(**paths).prepare(cache_dir)
    print(f"content hash: {'computed' if hashed else 'cached'} in {time.perf_counter() - start:.1f} s")

    results: dict[str, list[dict[str, float]]] = {"file": [], "memory": []}
    for r in range(args.rounds):
        order = ("file", "memory") if r % 2 == 0 else ("memory", "file")
        for name in order:
            warm_s = warm_page_cache(paths["x_train"])
            time.sleep(args.pause)  # the kernel takes seconds to release a 9 GB process's memory, on a core
            res = run_side(paths, name == "memory", cache_dir)
            results[name].append(res)
            print(f"round {r} {name:6s}: epoch 2 {res['epoch2_samples_per_s']:8,.0f} samples/s  whole "
                  f"{res['whole_samples_per_s']:8,.0f} samples/s  load {res['load_s']:5.1f} s  peak RSS "
                  f"{res['peak_rss_bytes'] / 1e9:.2f} GB  acc {res['accuracy']:.3f}  (page cache warmed in "
                  f"{warm_s:.1f} s)  load avg {load()}")

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    ratio = median("file", "epoch2_samples_per_s") / median("memory", "epoch2_samples_per_s")
    whole = median("file", "whole_samples_per_s") / median("memory", "whole_samples_per_s")
    rss = max(r["peak_rss_bytes"] for r in results["file"])
    print(f"median samples/s, epoch 2: file {median('file', 'epoch2_samples_per_s'):,.0f}  memory "
          f"{median('memory', 'epoch2_samples_per_s'):,.0f}  ratio file/memory = {ratio:.2f} "
          f"({'meets' if ratio >= GOAL_RATIO else 'misses'} the goal >= {GOAL_RATIO})")
    print(f"median samples/s, whole train(): ratio file/memory = {whole:.2f}")
    print(f"peak RSS: file {rss / 1e9:.2f} GB ({'meets' if rss < GOAL_RSS_BYTES else 'misses'} the goal < "
          f"{GOAL_RSS_BYTES / 1e9:.1f} GB), memory {max(r['peak_rss_bytes'] for r in results['memory']) / 1e9:.2f} GB;"
          f" X is {size / 1e9:.2f} GB")
    print(f"load average at end {load()}; wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        side(sys.argv[2:])
    else:
        main()
