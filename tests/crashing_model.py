"""A model for tests: fine for the preflight's forward (eval mode, no grad), fails as soon as it trains.

So a test can make a run crash after it started, past everything the preflight checks.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CrashInTraining(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, **_: object) -> None:
        super().__init__()  # **_: the model group's other arguments (cnn1d's channels) when only _target_ changes
        self.head = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("deliberate crash in training")
        return self.head(x.flatten(1))
