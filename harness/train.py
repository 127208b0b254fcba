"""Training on a Selection with the whole dataset resident on the device (the airbench pattern).

Batches are slices of `torch.randperm` on the device; no DataLoader workers for in-memory data.
With a curriculum (order + pacing) each batch is drawn from the first g(t)*n samples of the order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.build import build_optimizer, build_scheduler
from harness.data import Dataset
from harness.seeding import torch_generator
from strategies import Selection

if TYPE_CHECKING:
    from harness.meters import Meter


@dataclass
class TrainOutcome:
    """What training produced: per-epoch curves, the final accuracy and the time spent evaluating."""

    steps: int
    epochs: int
    final_test_accuracy: float
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (epoch, mean loss)
    test_accuracy: list[tuple[int, float]] = field(default_factory=list)  # (epoch, accuracy)
    eval_s: float = 0.0  # evaluation inside the training loop, to be booked as eval, not train
    # Time-to-accuracy (trainer.target_accuracy): at the end of the first epoch whose evaluation reached it,
    # training wall time since train() began (evaluation excluded, as in train_s), steps, and the meter's energy
    # over the same span (evaluation's time share taken out). NaN when never reached.
    tta_s: float = math.nan
    tta_steps: float = math.nan
    tta_energy_j: float = math.nan


def resolve_device(name: str) -> torch.device:
    """`auto` means the first visible CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def budget_steps(n_samples: int, batch_size: int, epochs: int | None, steps: int | None) -> int:
    """Total optimizer steps: `steps` when given, else `epochs` passes over the selected samples."""
    if steps is not None:
        return steps
    return epochs * math.ceil(n_samples / batch_size)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096, amp: bool = False) -> float:
    """Top-1 accuracy of `model` on (x, y)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x[start : start + batch_size])
        correct += (logits.argmax(1) == y[start : start + batch_size]).sum()
    model.train(was_training)
    return correct.item() / len(x)


def _batches(
    n: int, batch_size: int, order: torch.Tensor | None, pacing: Callable[[float], float] | None,
    step: int, total_steps: int, gen: torch.Generator, device: torch.device,
) -> Iterator[torch.Tensor]:
    """Positions (into the selected samples) of each batch of one epoch."""
    if order is None:  # standard training: a fresh random order each epoch
        yield from torch.randperm(n, generator=gen, device=device).split(batch_size)
    elif pacing is None:  # a fixed order, followed as given every epoch
        yield from order.split(batch_size)
    else:  # curriculum: each batch uniformly from the first g(t)*n of the order
        for s in range(step, step + math.ceil(n / batch_size)):
            available = min(n, max(batch_size, math.ceil(pacing(s / total_steps) * n)))
            pick = torch.randperm(available, generator=gen, device=device)[:batch_size]
            yield order[pick]


def train(model: nn.Module, data: Dataset, selection: Selection, cfg: DictConfig, seed: int,
          device: torch.device, on_epoch_end: Callable[[int, nn.Module], None] | None = None,
          meter: Meter | None = None) -> TrainOutcome:
    """Train `model` in place on the selected samples; evaluate on the test split every few epochs.

    `on_epoch_end(epoch, model)` runs after each epoch's steps (the signal probe records per-epoch outputs there).
    `meter` (optional) gives the energy for time-to-accuracy.
    """
    start_s = time.perf_counter()
    target = cfg.get("target_accuracy")
    start_j = meter.energy_j() if meter is not None and target is not None else math.nan
    x = torch.from_numpy(data.x_train[selection.indices]).to(device)
    y = torch.from_numpy(data.y_train[selection.indices]).to(device)
    x_test = torch.from_numpy(data.x_test).to(device)
    y_test = torch.from_numpy(data.y_test).to(device)
    weights = None
    if selection.weights is not None:  # mean 1, so the loss scale (and the lr) match unweighted training
        w = np.asarray(selection.weights, dtype=np.float32)
        weights = torch.from_numpy(w / w.mean()).to(device)
    order = None if selection.order is None else torch.as_tensor(selection.order, device=device)

    n, batch_size = len(x), cfg.batch_size
    total_steps = budget_steps(n, batch_size, cfg.epochs, cfg.steps)
    steps_per_epoch = math.ceil(n / batch_size)
    epochs = math.ceil(total_steps / steps_per_epoch)
    amp = cfg.amp and device.type == "cuda"  # bf16 autocast only where it pays (tensor cores)

    model.to(device).train()
    step_model = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    optimizer = build_optimizer(cfg, model.parameters())
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    gen = torch_generator(seed, "data_order", device)

    out = TrainOutcome(steps=0, epochs=0, final_test_accuracy=float("nan"))
    for epoch in range(1, epochs + 1):
        loss_sum = torch.zeros((), device=device)
        n_batches = 0
        for idx in _batches(n, batch_size, order, selection.pacing, out.steps, total_steps, gen, device):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = step_model(x[idx])
            losses = F.cross_entropy(logits.float(), y[idx], reduction="none")
            loss = (losses * weights[idx]).mean() if weights is not None else losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach()
            n_batches += 1
            out.steps += 1
            if out.steps >= total_steps:
                break
        out.epochs = epoch
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        out.train_loss.append((epoch, loss_sum.item() / max(n_batches, 1)))
        if epoch % cfg.eval_every_epochs == 0 or out.steps >= total_steps:
            start = time.perf_counter()
            acc = evaluate(model, x_test, y_test, amp=amp)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out.eval_s += time.perf_counter() - start
            out.test_accuracy.append((epoch, acc))
            out.final_test_accuracy = acc
            if target is not None and acc >= target and math.isnan(out.tta_s):
                wall_s = time.perf_counter() - start_s
                out.tta_s, out.tta_steps = wall_s - out.eval_s, out.steps
                if meter is not None:
                    out.tta_energy_j = (meter.energy_j() - start_j) * out.tta_s / wall_s
                if cfg.get("stop_at_target"):
                    break
        if out.steps >= total_steps:
            break
    return out
