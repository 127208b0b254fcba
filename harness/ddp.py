"""Data-parallel training of one trial (`trainer.workers=N`) with Ray Train's TorchTrainer (DDP).

The trial computes the selection once; every worker gets the same model initialisation, data and
selection, and draws the same global batches (same seeded generator) as single-worker training.
Each worker takes its share of every global batch and scales its loss so that DDP's gradient average
equals the gradient of the whole batch: N workers follow the single-worker recipe step for step.
NCCL on GPUs, gloo on the CPU. Rank 0 evaluates and sends the trained weights back as a checkpoint.

Inside a sweep the launcher passes each worker's resources (`hydra.launcher.num_cpus/num_gpus`);
run alone, it starts a local Ray instance and gives each worker one CPU (and one GPU on CUDA).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harness.build import build_optimizer, build_scheduler
from harness.data import Dataset
from harness.launch_context import ddp_worker_resources
from harness.train import TrainOutcome, _batches, budget_steps, evaluate
from strategies import Selection


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch
    from torch.nn.parallel import DistributedDataParallel

    from harness.seeding import torch_generator

    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    cfg = OmegaConf.create(config["trainer"])
    data: Dataset = config["data"]
    selection: Selection = config["selection"]

    x = torch.from_numpy(data.x_train[selection.indices]).to(device)
    y = torch.from_numpy(data.y_train[selection.indices]).to(device)
    weights = None
    if selection.weights is not None:  # mean 1, as in single-worker training
        w = np.asarray(selection.weights, dtype=np.float32)
        weights = torch.from_numpy(w / w.mean()).to(device)
    order = None if selection.order is None else torch.as_tensor(selection.order, device=device)
    n, batch_size = len(x), cfg.batch_size
    total_steps = budget_steps(n, batch_size, cfg.epochs, cfg.steps)
    epochs = math.ceil(total_steps / math.ceil(n / batch_size))
    amp = cfg.amp and device.type == "cuda"

    model: nn.Module = config["model"].to(device).train()
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(cfg, ddp.parameters())
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    gen = torch_generator(config["seed"], "data_order", device)  # same on every rank: same global batches
    if rank == 0:
        x_test, y_test = torch.from_numpy(data.x_test).to(device), torch.from_numpy(data.y_test).to(device)

    out = TrainOutcome(steps=0, epochs=0, final_test_accuracy=float("nan"))
    for epoch in range(1, epochs + 1):
        loss_sum, n_batches = torch.zeros((), device=device), 0
        for idx in _batches(n, batch_size, order, selection.pacing, out.steps, total_steps, gen, device):
            mine = idx.tensor_split(world)[rank]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = ddp(x[mine])
            losses = F.cross_entropy(logits.float(), y[mine], reduction="none")
            if weights is not None:
                losses = losses * weights[mine]
            # sum / global batch x world: DDP's mean over workers is then the whole batch's mean loss gradient.
            loss = losses.sum() * (world / len(idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() / world
            n_batches += 1
            out.steps += 1
            if out.steps >= total_steps:
                break
        torch.distributed.all_reduce(loss_sum)  # the global batch's loss, summed over workers
        out.epochs = epoch
        out.train_loss.append((epoch, loss_sum.item() / max(n_batches, 1)))
        if rank == 0 and (epoch % cfg.eval_every_epochs == 0 or out.steps >= total_steps):
            start = time.perf_counter()
            acc = evaluate(model, x_test, y_test, amp=amp)
            out.eval_s += time.perf_counter() - start
            out.test_accuracy.append((epoch, acc))
            out.final_test_accuracy = acc
        if out.steps >= total_steps:
            break

    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save({"state_dict": state, "outcome": asdict(out)}, Path(tmp) / "trial.pt")
            ray.train.report({"test_accuracy": out.final_test_accuracy},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({"test_accuracy": float("nan")})


def train_ddp(model: nn.Module, data: Dataset, selection: Selection, cfg: DictConfig, seed: int,
              device: torch.device) -> TrainOutcome:
    """Train `model` in place on `cfg.workers` Ray Train workers; same contract as `harness.train.train`."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = False
    if not ray.is_initialized():  # run alone: a local instance for this trial's workers
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        started = True
    resources = ddp_worker_resources()
    if resources is None:
        resources = {"CPU": 1.0, "GPU": 1.0 if device.type == "cuda" else 0.0}
    use_gpu = resources["GPU"] > 0
    try:
        with tempfile.TemporaryDirectory() as storage:
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={"model": model.cpu(), "data": data, "selection": selection, "seed": seed,
                                   "trainer": OmegaConf.to_container(cfg, resolve=True),
                                   "threads": max(1, int(resources["CPU"]))},
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                             resources_per_worker={k: v for k, v in resources.items() if v > 0}),
                run_config=RunConfig(storage_path=storage, name="ddp"),
            )
            result = trainer.fit()
            with result.checkpoint.as_directory() as d:
                saved = torch.load(Path(d) / "trial.pt", weights_only=False)
    finally:
        if started:
            ray.shutdown()
    model.load_state_dict(saved["state_dict"])
    model.to(device)
    o = saved["outcome"]
    return TrainOutcome(steps=o["steps"], epochs=o["epochs"], final_test_accuracy=o["final_test_accuracy"],
                        train_loss=[tuple(p) for p in o["train_loss"]],
                        test_accuracy=[tuple(p) for p in o["test_accuracy"]], eval_s=o["eval_s"])
