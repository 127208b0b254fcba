"""FLOPs of a training step (forward + backward) and of a forward pass, counted by PyTorch's `FlopCounterMode`.

It counts the matmul/convolution family (2 FLOPs per multiply-add; elementwise ops, norms and the optimizer are not
counted), which dominates for the models here. The step runs on a copy of the model under a forked RNG, so the
trained model, its buffers (BatchNorm statistics) and the random streams are untouched.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def step_flops(model: nn.Module, x_batch: torch.Tensor, y_batch: torch.Tensor) -> int:
    """FLOPs of forward + cross-entropy + backward of `model` on one batch."""
    probe = copy.deepcopy(model).train()
    devices = [x_batch.device] if x_batch.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
        F.cross_entropy(probe(x_batch).float(), y_batch).backward()
    return int(counter.get_total_flops())


def forward_flops(model: nn.Module, x_batch: torch.Tensor) -> int:
    """FLOPs of a forward pass of `model` on one batch, without gradient (Selective-Backprop's selection pass)."""
    probe = copy.deepcopy(model).eval()
    devices = [x_batch.device] if x_batch.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(x_batch)
    return int(counter.get_total_flops())
