"""Learning-rate schedules the trainer steps once per optimizer step.

Config form: `trainer.scheduler: {_target_: harness.schedules.cosine, _partial_: true, warmup_fraction: 0.1}`;
the trainer calls it as `f(optimizer, total_steps=...)`.
"""

from __future__ import annotations

import math

import torch


def cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.0,
           final_lr_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_fraction` of the steps, then cosine decay to `final_lr_fraction` x lr."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def linear(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear decay from lr to 0 over the run."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total_steps))


def triangle(optimizer: torch.optim.Optimizer, total_steps: int, peak_fraction: float = 0.2,
             start_lr_fraction: float = 0.2, final_lr_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from `start_lr_fraction` x lr to lr at `peak_fraction` of the steps, then linear decay to
    `final_lr_fraction` x lr at the last step: airbench's schedule (0.2 -> 1 at 20% -> 0), a one-cycle of straight
    lines as in the ResNet-9 DAWNBench recipe."""
    for key, value in (("peak_fraction", peak_fraction), ("start_lr_fraction", start_lr_fraction),
                       ("final_lr_fraction", final_lr_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{key}={value}: expected a number in [0, 1]")
    peak = int(peak_fraction * total_steps)

    def factor(step: int) -> float:
        if step < peak:
            return start_lr_fraction + (1 - start_lr_fraction) * step / peak
        left = max(0.0, (total_steps - step) / max(1, total_steps - peak))
        return final_lr_fraction + (1 - final_lr_fraction) * left

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
