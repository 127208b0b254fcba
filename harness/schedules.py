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
