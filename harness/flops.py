"""FLOPs of a training step (forward + backward) and of a forward pass, counted by PyTorch's `FlopCounterMode`.

It counts the matmul/convolution family (2 FLOPs per multiply-add; elementwise ops, norms and the optimizer are not
counted), which dominates for the models here. The step runs on a copy of the model under a forked RNG, so the
trained model, its buffers (BatchNorm statistics) and the random streams are untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _counted(model: nn.Module, x_batch: torch.Tensor, training: bool, work: Callable[[nn.Module], object]) -> int:
    """FLOPs of `work(copy of model)`, the copy in train or eval mode, under a forked RNG."""
    probe = copy.deepcopy(model).train(training)
    devices = [x_batch.device] if x_batch.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
        work(probe)
    return int(counter.get_total_flops())


def step_flops(model: nn.Module, x_batch: torch.Tensor, y_batch: torch.Tensor) -> int:
    """FLOPs of forward + cross-entropy + backward of `model` on one batch."""
    return _counted(model, x_batch, True, lambda m: F.cross_entropy(m(x_batch).float(), y_batch).backward())


@torch.no_grad()
def forward_flops(model: nn.Module, x_batch: torch.Tensor) -> int:
    """FLOPs of a forward pass of `model` on one batch, without gradient (Selective-Backprop's selection pass)."""
    return _counted(model, x_batch, False, lambda m: m(x_batch))
