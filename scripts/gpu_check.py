"""One prepared check of Winnow's GPU code paths for a lent GPU machine (issue 14): at most 8 minutes on one H100.

    scripts/gpu_check.sh [OUT_DIR]                    # on the GPU machine: sets up, then runs this
    python scripts/gpu_check.py [--out DIR] [--only a,c] [--tiny]

Parts, each timed against its own budget (seconds, on an H100) and guarded: a part that raises or runs past its
budget is recorded (status failed / timeout, its error in one line, the figures it had) and the next part runs.

  a  the default trial's training on CUDA (MNIST-1D, cnn1d, 6,000 steps): test accuracy of seeds 0-2 against the
     published 92.3% +-3 points (the band tests/test_cli.py holds the CPU to); train time in bf16 autocast (the
     default), fp32, and bf16 + torch.compile
  b  the CIFAR-10 recipe (+experiment=cifar10_fast) on synthetic data of CIFAR's shapes (CIFAR cannot be fetched
     there): harness.train.train against a bare PyTorch loop with the same model, batch, optimizer, schedule,
     augmentation and loss; samples/s, harness time / bare time (goal <= 1.10)
  c  four 20-epoch trials packed on one GPU (hydra.launcher.num_gpus=0.25) through the Ray launcher against the same
     four one at a time (num_gpus=1): all FINISHED, four distinct runs, sweep wall time ratio
  d  NVML energy counter against integrated power samples on a 30 s load (scripts/check_nvml_energy.py; goal within
     5%), GPU model
  e  SemDeDup on 1,000,000 x 384 with device=cuda: time and recall of planted near-duplicates; on a 100,000 slice
     the within-cluster kernel on the CPU and on CUDA keeps the same set
  f  one data-parallel trial, trainer.workers=2 on one GPU (two half-GPU Ray Train workers, gloo), through the same
     training loop

Writes DIR/gpu_check.json and DIR/gpu_check.md after every part (DIR: --out, else $OUT, else gpu_check_out).
Without a CUDA GPU it says so in one line, runs a, b and e on the CPU at a tiny size (seconds: it shows the code runs,
it measures nothing) and exits 0; --tiny asks for those sizes on a GPU too (a set-up check in seconds). Exit code 1
when a part failed or timed out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

PUBLISHED_CNN1D = 0.923  # MNIST-1D paper's CNN (greydanus/mnist1d); tests/test_cli.py's band is +-0.03
COMPILE_STEPS = 2000  # part (a)'s torch.compile run: a third of the default trial
DEADLINE_S = 455  # all parts together; with gpu_check.sh's unpacking and start-up (23 s on an H200) 8 minutes


class Skip(Exception):
    """A part that cannot run here (no GPU, a package missing): recorded as skipped with the reason."""


class PartTimeout(Exception):
    pass


@dataclass
class Ctx:
    """What every part gets: where to work, on what, at which size."""

    device: torch.device
    tiny: bool
    scratch: Path  # caches and MLflow stores; deleted at the end (only the results go to the output folder)
    simulate_gpu: bool = False  # tests only: run c and f on the CPU with one logical Ray GPU

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Result:
    part: str
    title: str
    budget_s: float
    status: str = "skipped"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    goals: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    ends_at: float = math.inf  # time.monotonic() by which the part must be done (its budget or the deadline)

    def seconds_left(self) -> float:
        return self.ends_at - time.monotonic()

    def goal(self, name: str, value: float, target: str, met: bool) -> None:
        self.goals.append({"name": name, "value": value, "goal": target, "met": bool(met)})


# ------------------------------------------------------------------------------------------------- guards


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise PartTimeout in this (main) thread after `seconds`."""
    def expire(*_: Any) -> None:
        raise PartTimeout(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def needs(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed here (scripts/gpu_check.sh pack carries it)")


def run_parts(parts: list[tuple[str, str, float, Callable[[Ctx, Result], None]]], ctx: Ctx,
              deadline_s: float = DEADLINE_S,
              after_each: Callable[[list[Result]], None] | None = None) -> list[Result]:
    """Each part under min(its budget, what is left of the deadline); one part's failure never stops the next.
    `after_each` gets the results so far after every part."""
    start = time.perf_counter()
    results = []
    for key, title, budget, fn in parts:
        res = Result(key, title, budget)
        left = deadline_s - (time.perf_counter() - start)
        res.ends_at = time.monotonic() + min(budget, left)
        t0 = time.perf_counter()
        try:
            if left < 5:
                raise Skip(f"no time left of the {deadline_s:.0f} s deadline")
            with time_limit(min(budget, left)):
                fn(ctx, res)
            res.status = "ok"
        except Skip as e:
            res.status, res.error = "skipped", str(e)
        except PartTimeout as e:
            res.status, res.error = "timeout", str(e)
        except Exception as e:  # recorded, and the next part runs
            res.status, res.error = "failed", one_line(e)
            res.figures["traceback_tail"] = traceback.format_exc().strip().splitlines()[-6:]
        res.seconds = round(time.perf_counter() - t0, 2)
        results.append(res)
        print(summary_line(res), flush=True)
        if after_each is not None:
            after_each(results)
    return results


def run_cli(args: list[str], res: Result) -> subprocess.CompletedProcess:
    """`python <args>` from the repository root, stopped (with everything it started: Ray's processes) when the
    part's time is up."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(1.0, res.seconds_left() - 2))
    except subprocess.TimeoutExpired:
        raise PartTimeout(f"{' '.join(args[:3])} ran past the part's budget") from None
    finally:  # its own session: Ray's raylet and workers go with it, also when the alarm interrupts the wait
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -------------------------------------------------------------------------------------------------- parts


def part_default_trial(ctx: Ctx, res: Result) -> None:
    """(a) The default trial's training (harness.train.train, as run_trial calls it) on this device."""
    from omegaconf import OmegaConf

    from harness.config import TrainerConfig
    from harness.data.sources import MNIST1D
    from harness.models import CNN1D
    from harness.seeding import derive_seed
    from harness.train import train
    from strategies import Selection

    source = MNIST1D(num_samples=500 if ctx.tiny else 5000)
    source.prepare(ctx.scratch / "cache")
    data = source.load(ctx.scratch / "cache")
    everything = Selection(np.arange(len(data.y_train)))
    base = OmegaConf.structured(TrainerConfig)
    if ctx.tiny:
        base.epochs = 2

    f = res.figures

    def run(seed: int, **trainer: Any) -> tuple[float, float]:
        cfg = OmegaConf.merge(base, {"device": str(ctx.device), **trainer})
        torch.manual_seed(derive_seed(seed, "init"))
        model = CNN1D(data.input_shape, data.num_classes)
        sync(ctx.device)
        t0 = time.perf_counter()
        out = train(model, data, everything, cfg, seed, ctx.device)
        sync(ctx.device)
        if "steps" not in trainer:  # the default trial's, not the warm-up's or the shorter compile run's
            f["steps_per_run"] = out.steps
        return time.perf_counter() - t0, out.final_test_accuracy

    run(99, steps=50, epochs=None)  # CUDA context, cuDNN and allocator warm-up outside the timings
    accs = []
    for seed in (0, 1, 2):  # the default: bf16 autocast on CUDA (fp32 on the CPU, where amp does nothing)
        seconds, acc = run(seed)
        accs.append(acc)
        f[f"default_seed{seed}_train_s"], f[f"default_seed{seed}_accuracy"] = round(seconds, 2), acc
    f["default_mean_accuracy"] = round(statistics.mean(accs), 4)
    if not ctx.tiny:
        res.goal("mean test accuracy, seeds 0-2", f["default_mean_accuracy"], f"{PUBLISHED_CNN1D} +- 0.03",
                 abs(f["default_mean_accuracy"] - PUBLISHED_CNN1D) <= 0.03)
    if not ctx.cuda:
        f["note"] = "bf16 autocast and torch.compile are CUDA-only in the harness: not timed on the CPU"
        return
    f["fp32_train_s"], f["fp32_accuracy"] = (round(v, 4) for v in run(0, amp=False))
    # compilation included; 2,000 steps, so a cold Inductor/Triton compile cannot push the part past its budget
    f["compile_steps"] = COMPILE_STEPS
    f["compile_train_s"], f["compile_accuracy"] = (round(v, 4) for v in run(0, compile=True, steps=COMPILE_STEPS,
                                                                             epochs=None))


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0):
    """Gaussian images and uniform labels of CIFAR-10's shapes: the throughput of training does not depend on them."""
    from harness.data.base import make_dataset

    gen = np.random.default_rng(seed)
    return make_dataset("synthetic_cifar10", gen.standard_normal((n_train, 3, 32, 32), dtype=np.float32),
                        gen.integers(0, 10, n_train), gen.standard_normal((n_test, 3, 32, 32), dtype=np.float32),
                        gen.integers(0, 10, n_test), num_classes=10)


def bare_recipe_loop(model: torch.nn.Module, data, cfg, seed: int, device: torch.device) -> float:
    """The recipe written as plainly as PyTorch allows: same model, batch, SGD, triangle schedule, crop/flip and
    smoothed loss, evaluation at the end; the data copy to the device included, as in harness.train.train."""
    import torch.nn.functional as F

    from harness.augment import crop_flip, crop_flip_params
    from harness.schedules import triangle

    x, y = torch.from_numpy(data.x_train).to(device), torch.from_numpy(data.y_train).to(device)
    x_test, y_test = torch.from_numpy(data.x_test).to(device), torch.from_numpy(data.y_test).to(device)
    o, s = cfg.optimizer, cfg.scheduler
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    sched = triangle(opt, steps, peak_fraction=s.peak_fraction, start_lr_fraction=s.start_lr_fraction)
    gen = torch.Generator(device=device).manual_seed(seed)
    amp = device.type == "cuda"
    model.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x), generator=gen, device=device).split(cfg.batch_size):
            corners, flips = crop_flip_params(len(idx), cfg.crop_padding, gen, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(crop_flip(x[idx], corners, flips, cfg.crop_padding))
            loss = F.cross_entropy(logits.float(), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        correct = sum((model(x_test[i:i + 4096]).argmax(1) == y_test[i:i + 4096]).sum() for i in range(0, len(x_test),
                                                                                                  4096))
    return float(correct) / len(x_test)


def part_cifar_recipe(ctx: Ctx, res: Result) -> None:
    """(b) The CIFAR-10 recipe: the harness's loop against a bare loop, side by side, alternating."""
    from omegaconf import OmegaConf

    from harness.build import build_model
    from harness.preflight import compose_config
    from harness.seeding import derive_seed
    from harness.train import train
    from strategies import Selection

    n_train, n_test, epochs, repeats = (256, 64, 1, 1) if ctx.tiny else (50_000, 10_000, 2, 3)
    recipe = compose_config(["+experiment=cifar10_fast"])
    overrides: dict[str, Any] = {"device": str(ctx.device), "epochs": epochs, "eval_every_epochs": epochs}
    if ctx.tiny:
        overrides["batch_size"] = 64
    cfg = OmegaConf.merge(recipe.trainer, overrides)
    model_cfg = OmegaConf.merge(recipe.model, {"width": 8} if ctx.tiny else {})
    data = synthetic_cifar(n_train, n_test)
    everything = Selection(np.arange(n_train))
    f = res.figures
    f.update(data="synthetic, CIFAR-10's shapes", n_train=n_train, epochs_per_run=epochs,
             batch_size=cfg.batch_size, model_width=model_cfg.width)

    def timed(side: str, seed: int, run_cfg=cfg) -> float:
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_model(model_cfg, data.input_shape, data.num_classes)
        sync(ctx.device)
        t0 = time.perf_counter()
        if side == "harness":
            train(model, data, everything, run_cfg, seed, ctx.device)
        else:
            bare_recipe_loop(model.to(ctx.device), data, run_cfg, seed, ctx.device)
        sync(ctx.device)
        return time.perf_counter() - t0

    warm = OmegaConf.merge(cfg, {"epochs": 1})
    timed("harness", 99, warm)  # cuDNN's algorithm choice and the allocator, outside the timings
    timed("bare", 99, warm)
    seconds: dict[str, list[float]] = {"harness": [], "bare": []}
    for r in range(repeats):
        for side in (("harness", "bare") if r % 2 == 0 else ("bare", "harness")):
            seconds[side].append(timed(side, r))
    samples = n_train * epochs
    h, b = statistics.median(seconds["harness"]), statistics.median(seconds["bare"])
    f["harness_s"], f["bare_s"] = [round(s, 3) for s in seconds["harness"]], [round(s, 3) for s in seconds["bare"]]
    f["harness_samples_per_s"], f["bare_samples_per_s"] = round(samples / h), round(samples / b)
    f["ratio_harness_over_bare_time"] = round(h / b, 3)
    if not ctx.tiny:  # at a tiny size one repeat of a few steps is noise, not a ratio
        f["recipe_35_epochs_projected_s"] = round(35 * 50_000 / (samples / h), 1)
        res.goal("harness time / bare loop time", f["ratio_harness_over_bare_time"], "<= 1.10",
                 f["ratio_harness_over_bare_time"] <= 1.10)


def sweep_runs(store: str, experiment: str) -> Any:
    import mlflow

    mlflow.set_tracking_uri(store)
    return mlflow.search_runs(experiment_names=[experiment])


def ray_gpus(ctx: Ctx) -> int:
    """The GPUs the local Ray instance is told it has: torch's count (simulated: one), not Ray's own detection,
    which a virtualised machine may not support, and then GPU trials would wait for a GPU until their time runs out."""
    return torch.cuda.device_count() if ctx.cuda else 1


def part_packed_trials(ctx: Ctx, res: Result) -> None:
    """(c) Four trials sharing one GPU through the Ray launcher, against the same four one at a time."""
    if not (ctx.cuda or ctx.simulate_gpu):
        raise Skip("needs a CUDA GPU")
    needs("ray", "mlflow")
    epochs = 2 if ctx.tiny else 20  # half the default's 40: eight trials must fit the part's budget on a slow host
    device = "cpu" if ctx.simulate_gpu else "cuda"
    f = res.figures
    walls = {}
    for label, gpus in (("packed", 0.25), ("one_at_a_time", 1)):
        store = f"sqlite:///{ctx.scratch / f'{label}.db'}"
        args = ["-m", "harness.run", "-m", "hydra/launcher=ray", f"hydra.launcher.num_gpus={gpus}",
                "seed=0,1,2,3", f"trainer.device={device}", f"trainer.epochs={epochs}", f"tracking.uri={store}",
                "tracking.experiment=gpu_check", f"cache_dir={ctx.scratch / 'cache'}",
                f"hydra.sweep.dir={ctx.scratch / f'sweep_{label}'}"]
        if ctx.tiny:
            args.append("dataset.num_samples=500")
        args.append(f"+hydra.launcher.init.num_gpus={ray_gpus(ctx)}")
        t0 = time.perf_counter()
        proc = run_cli(args, res)
        walls[label] = time.perf_counter() - t0
        f[f"{label}_wall_s"] = round(walls[label], 1)
        if proc.returncode != 0:
            f[f"{label}_stderr_tail"] = proc.stderr.strip().splitlines()[-3:]
        runs = sweep_runs(store, "gpu_check")
        finished = runs[runs["status"] == "FINISHED"] if len(runs) else runs
        f[f"{label}_finished"] = int(len(finished))
        if len(finished):
            f[f"{label}_distinct_configs"] = int(finished["tags.config_hash"].nunique())
            f[f"{label}_mean_train_s"] = round(float(finished["metrics.train_s"].mean()), 2)
            f[f"{label}_mean_accuracy"] = round(float(finished["metrics.test_accuracy"].mean()), 4)
            f[f"{label}_cuda_visible_devices"] = sorted(set(finished["tags.cuda_visible_devices"].astype(str)))
        distinct = f.get(f"{label}_distinct_configs", 0)
        res.goal(f"{label}: trials FINISHED with distinct configs", distinct, "4", len(finished) == 4 == distinct)
        if len(finished) != 4:
            raise RuntimeError(f"{label} sweep: {len(finished)} of 4 trials FINISHED "
                               f"({(f.get(f'{label}_stderr_tail') or ['no error output'])[-1]})")
    f["throughput_packed_over_one_at_a_time"] = round(walls["one_at_a_time"] / walls["packed"], 2)


def part_nvml_energy(ctx: Ctx, res: Result) -> None:
    """(d) scripts/check_nvml_energy.py, whose exit code says whether the two readings agree within 5%."""
    if not ctx.cuda:
        raise Skip("needs a CUDA GPU")
    needs("pynvml")
    proc = run_cli(["scripts/check_nvml_energy.py", "--seconds", "30"], res)
    lines = proc.stdout.strip().splitlines()
    res.figures["output"] = lines
    ratio = re.search(r"ratio sampled/counter ([0-9.]+)", proc.stdout)
    gpu = re.search(r"^GPU: (.*?),", proc.stdout, re.M)
    res.figures["gpu"] = gpu.group(1) if gpu else None
    if ratio is None:
        raise RuntimeError(f"check_nvml_energy exited {proc.returncode}: {(lines or [proc.stderr.strip()])[-1]}")
    res.goal("NVML energy: sampled / counter", float(ratio.group(1)), "within 5% of 1",
             abs(float(ratio.group(1)) - 1) <= 0.05)


def part_semdedup(ctx: Ctx, res: Result) -> None:
    """(e) SemDeDup at the issue's size on this device; on a slice, the CPU and CUDA kernels keep the same set."""
    from bench_selection import clustered_with_duplicates

    from strategies.base import SelectionContext
    from strategies.coresets import nearest_centroid, spherical_kmeans
    from strategies.dedup import SemDeDup, max_sim_to_earlier, within_cluster_order

    n, d, clusters, n_slice = (4_000, 32, 20, 2_000) if ctx.tiny else (1_000_000, 384, 1000, 100_000)
    eps = 0.01
    device = "cuda" if ctx.cuda else "cpu"
    f = res.figures
    t0 = time.perf_counter()
    x, src, dup = clustered_with_duplicates(n, d, n // 100, seed=0)
    f["data_s"] = round(time.perf_counter() - t0, 1)

    def semdedup(rows: np.ndarray, k: int, on: str) -> np.ndarray:
        stage = SemDeDup(embedding="e", n_clusters=k, eps=eps, niter=10, max_points_per_centroid=64, device=on)
        m = len(rows)
        ctx_ = SelectionContext(np.arange(m), np.zeros(m, np.int64), 1, 1.0, np.random.default_rng(0), {"e": rows})
        return stage.select(ctx_).indices

    if ctx.cuda:
        semdedup(x[:20_000], 20, device)  # CUDA context and kernels, outside the timing
    sync(ctx.device)
    t0 = time.perf_counter()
    kept_idx = semdedup(x, clusters, device)
    sync(ctx.device)
    f[f"semdedup_{n}x{d}_{device}_s"] = round(time.perf_counter() - t0, 2)
    kept = np.zeros(n, bool)
    kept[kept_idx] = True
    f["removed"] = int(n - len(kept_idx))
    f["recall_planted_pairs"] = round(float(np.mean(~(kept[src] & kept[dup]))), 4)
    if not ctx.tiny:
        res.goal("SemDeDup recall of planted near-duplicates", f["recall_planted_pairs"], ">= 0.99",
                 f["recall_planted_pairs"] >= 0.99)
    if not ctx.cuda:
        f["note"] = "no CUDA: the CPU-vs-CUDA comparison on the slice is not made"
        return
    part = np.ascontiguousarray(x[:n_slice])
    rng = np.random.default_rng(1)
    sim, assign = nearest_centroid(part, spherical_kmeans(part, clusters // 10, rng, niter=10,
                                                          max_points_per_centroid=64))
    order = within_cluster_order(assign, sim, "hard", rng)
    m_cpu, _ = max_sim_to_earlier(part, order, assign, device="cpu")
    m_cuda, _ = max_sim_to_earlier(part, order, assign, device="cuda")
    f[f"slice_{n_slice}_max_abs_diff"] = float(np.abs(m_cpu - m_cuda).max())
    same = bool(np.array_equal(m_cpu <= 1 - eps, m_cuda <= 1 - eps))
    res.goal(f"same kept set, CPU and CUDA kernels, {n_slice:,} rows", same, "True", same)


def part_ddp(ctx: Ctx, res: Result) -> None:
    """(f) trainer.workers=2 on one GPU: two Ray Train workers of half a GPU each, gloo, harness.train's loop."""
    if not (ctx.cuda or ctx.simulate_gpu):
        raise Skip("needs a CUDA GPU")
    needs("ray", "mlflow")
    store = f"sqlite:///{ctx.scratch / 'ddp.db'}"
    gpus = 0 if ctx.simulate_gpu else 0.5  # simulated: CPU workers (gloo), the same code path otherwise
    args = ["-m", "harness.run", "-m", "hydra/launcher=ray", f"hydra.launcher.num_gpus={gpus}", "trainer.workers=2",
            f"trainer.device={'cpu' if ctx.simulate_gpu else 'cuda'}", f"trainer.epochs={2 if ctx.tiny else 10}",
            "seed=0", f"tracking.uri={store}", "tracking.experiment=gpu_check_ddp",
            f"cache_dir={ctx.scratch / 'cache'}", f"hydra.sweep.dir={ctx.scratch / 'sweep_ddp'}"]
    if ctx.tiny:
        args.append("dataset.num_samples=500")
    if ctx.cuda:
        args.append(f"+hydra.launcher.init.num_gpus={ray_gpus(ctx)}")
    proc = run_cli(args, res)
    runs = sweep_runs(store, "gpu_check_ddp")
    f = res.figures
    f["statuses"] = sorted(runs["status"]) if len(runs) else []
    if len(runs):
        run = runs.iloc[0]
        f["accuracy"], f["steps"] = float(run.get("metrics.test_accuracy", math.nan)), run.get("metrics.steps")
        f["train_s"] = float(run.get("metrics.train_s", math.nan))
        f["error"] = run.get("tags.error")
    if proc.returncode != 0:
        f["stderr_tail"] = proc.stderr.strip().splitlines()[-3:]
    finished = f["statuses"] == ["FINISHED"]
    res.goal("2-worker trial FINISHED", f["statuses"], "['FINISHED']", finished)
    if not finished:
        raise RuntimeError(f"data-parallel trial did not finish: {f.get('error') or f['statuses']}")


# Budgets in seconds. Two runs on H200 machines (16 CPU cores, 2026-12-04; docs/benchmarks.md) took a 81 / >95 s,
# b 10 / 12, c 104 / >123 (40-epoch trials), d 34 / 36, e 17 / 22 and f 84 s (20 epochs); the second machine's host
# was about 20% slower. Since then c's trials train 20 epochs and f's 10. Each budget leaves a margin over the slower
# figure, and together they add up to the 455 s deadline.
PARTS: list[tuple[str, str, float, Callable[[Ctx, Result], None]]] = [
    ("a", "default trial on CUDA: accuracy band; bf16, fp32, compile times", 120, part_default_trial),
    ("b", "CIFAR-10 recipe: harness vs bare loop, samples/s", 20, part_cifar_recipe),
    ("c", "four trials packed on one GPU (num_gpus=0.25) vs one at a time", 145, part_packed_trials),
    ("d", "NVML energy counter vs power sampling, 30 s load", 45, part_nvml_energy),
    ("e", "SemDeDup 1M x 384 on CUDA; CPU and CUDA keep the same set", 30, part_semdedup),
    ("f", "2-worker data-parallel trial on one GPU (gloo)", 95, part_ddp),
]


# ------------------------------------------------------------------------------------------------- output


def summary_line(res: Result) -> str:
    goals = "; ".join(f"{g['name']}: {g['value']} ({g['goal']}: {'met' if g['met'] else 'MISSED'})"
                      for g in res.goals)
    tail = f" - {res.error}" if res.error else ""
    return f"[{res.part}] {res.status} in {res.seconds:.1f} s (budget {res.budget_s:.0f} s){tail}" + \
        (f"; {goals}" if goals else "")


def environment() -> dict[str, Any]:
    try:  # the device machine's copy of the tree may have no .git (or no git)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip() or None
    except OSError:
        commit = None
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_cores": os.cpu_count(), "git_commit": commit,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return env


def write_results(out: Path, env: dict[str, Any], results: list[Result], tiny: bool) -> None:
    """Rewritten after every part: a call stopped mid-write leaves the previous part's complete files."""
    from harness.data.base import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    doc = {"environment": env, "tiny": tiny, "total_s": round(sum(r.seconds for r in results), 1),
           "parts": [r.__dict__ for r in results]}
    atomic_write_text(out / "gpu_check.json", json.dumps(doc, indent=2, default=str) + "\n")
    lines = [f"# gpu_check ({env['date']})", "",
             f"GPU: {env['gpu'] or 'none'}; torch {env['torch']} (CUDA {env['cuda']}); Python {env['python']}; "
             f"{env['cpu_cores']} CPU cores; commit {env['git_commit']}{'; tiny sizes' if tiny else ''}; "
             f"parts took {doc['total_s']} s", "",
             "| part | what | status | s (budget) | goals |", "| --- | --- | --- | ---: | --- |"]
    for r in results:
        goals = "<br>".join(f"{g['name']}: {g['value']} ({g['goal']}: {'met' if g['met'] else '**missed**'})"
                            for g in r.goals) or (r.error or "")
        lines.append(f"| {r.part} | {r.title} | {r.status} | {r.seconds:.1f} ({r.budget_s:.0f}) | {goals} |")
    lines.append("")
    for r in results:
        figures = {k: v for k, v in r.figures.items() if k != "traceback_tail"}
        lines.append(f"- **{r.part}** {json.dumps(figures, default=str)}" + (f" error: `{r.error}`" if r.error else ""))
    atomic_write_text(out / "gpu_check.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for the results")
    parser.add_argument("--only", default=",".join(p[0] for p in PARTS), help="parts to run, e.g. a,b")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; always so without a GPU)")
    parser.add_argument("--simulate-gpu", action="store_true", help=argparse.SUPPRESS)  # tests: c and f on the CPU
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiply every budget and the deadline (a machine slower than an H100's host)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda  # the CPU is not what this check measures: there it only shows the code runs
    if not cuda:
        print(f"gpu_check: no CUDA GPU visible (torch {torch.__version__}); running the parts that run on a CPU "
              "(a, b, e) at a tiny size and skipping c, d, f", flush=True)
    wanted = set(args.only.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ctx = Ctx(torch.device("cuda" if cuda else "cpu"), tiny, scratch, args.simulate_gpu)
    try:
        parts = [(key, title, budget * args.budget_scale, fn) for key, title, budget, fn in PARTS if key in wanted]
        # the results files are rewritten after every part: a device call stopped early still returns the figures
        env = environment()
        results = run_parts(parts, ctx, DEADLINE_S * args.budget_scale,
                            after_each=lambda done: write_results(Path(args.out), env, done, tiny))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_results(Path(args.out), env, results, tiny)
    print(f"gpu_check: results in {Path(args.out) / 'gpu_check.json'} and gpu_check.md", flush=True)
    return 1 if any(r.status in ("failed", "timeout") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
