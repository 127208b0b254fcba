"""Data-parallel training of one trial (`trainer.workers=N`) with Ray Train's TorchTrainer (DDP).

The trial computes the selection once; every worker gets the same model initialisation, data, selection and
dynamic stage, and runs harness/train.py's loop as one rank of `harness.parallel.Distributed`: the same global
batches (same seeded generator) as single-worker training, each rank training on its shard and scaling its loss
so that DDP's gradient average equals the gradient of the whole batch. Per-sample losses are gathered, so a
dynamic stage plans the same epoch on every rank. NCCL on whole GPUs, gloo on the CPU and on shared GPUs
(`hydra.launcher.num_gpus=0.5`: two workers on one GPU, which NCCL refuses). Rank 0 sends the trained
weights and the outcome back as a checkpoint.

Inside a sweep the launcher passes each worker's resources (`hydra.launcher.num_cpus/num_gpus`);
run alone, it starts a local Ray instance and gives each worker one CPU (and one GPU on CUDA).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from harness.data import Dataset
from harness.launch_context import ddp_worker_resources
from harness.parallel import Distributed
from harness.train import TrainOutcome, train
from strategies import Selection
from strategies.dynamic import DynamicStage


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    model: nn.Module = config["model"]
    out = train(model, config["data"], config["selection"], OmegaConf.create(config["trainer"]), config["seed"],
                device, dynamic=config["dynamic"], epoch_target=config["epoch_target"],
                workers=Distributed(rank, ctx.get_world_size(), device))
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save({"state_dict": state, "outcome": asdict(out)}, Path(tmp) / "trial.pt")
            ray.train.report({"test_accuracy": out.final_test_accuracy},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report({"test_accuracy": float("nan")})


def _outcome(saved: dict[str, Any]) -> TrainOutcome:
    """A TrainOutcome from its asdict() form (curves come back as lists of lists)."""
    values = {f.name: saved[f.name] for f in fields(TrainOutcome)}
    return TrainOutcome(**{k: [tuple(p) for p in v] if isinstance(v, list) else v for k, v in values.items()})


def train_ddp(model: nn.Module, data: Dataset, selection: Selection, cfg: DictConfig, seed: int,
              device: torch.device, dynamic: DynamicStage | None = None,
              epoch_target: int | None = None) -> TrainOutcome:
    """Train `model` in place on `cfg.workers` Ray Train workers; same contract as `harness.train.train`
    (without a meter: the trial's meter measures the whole train stage, workers included)."""
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
                                   "dynamic": dynamic, "epoch_target": epoch_target,
                                   "trainer": OmegaConf.to_container(cfg, resolve=True),
                                   "threads": max(1, int(resources["CPU"]))},
                # NCCL refuses two ranks on one GPU (workers with a fraction of a GPU each): gloo shares it
                torch_config=TorchConfig(backend="nccl" if use_gpu and resources["GPU"] >= 1 else "gloo"),
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
    return _outcome(saved["outcome"])
