"""The training loop's view of its workers: one process (`Local`), or a torch.distributed group (`Distributed`).

Every rank runs the same loop over the same global batches; it trains on its shard of each batch, and what
dynamic selection needs (per-sample losses, the accuracy that may stop training) is shared so that every rank
makes the same decision.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def shard(positions: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s contiguous share of a global batch: shards are disjoint and their union is the batch."""
    return positions.tensor_split(world)[rank]


class Local:
    """A single process: no sharding, nothing to exchange."""

    rank = 0
    world = 1

    def shard(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    def gather(self, values: torch.Tensor, batch: int) -> torch.Tensor:  # noqa: ARG002 (same signature as below)
        """Every rank's `values` (one row per sample of its shard) for one global batch of `batch` samples, in
        batch order."""
        return values

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def agree(self, value: float) -> float:
        """Rank 0's value on every rank."""
        return value

    def wrap(self, model: nn.Module) -> nn.Module:
        return model


class Distributed(Local):
    """Ranks of an initialised torch.distributed process group (gloo on the CPU, NCCL on GPUs); DDP reduces the
    gradients."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device

    def shard(self, positions: torch.Tensor) -> torch.Tensor:
        return shard(positions, self.rank, self.world)

    def gather(self, values: torch.Tensor, batch: int) -> torch.Tensor:
        # tensor_split shards differ in size by at most one: pad to the largest for all_gather, then trim
        sizes = [len(s) for s in torch.arange(batch).tensor_split(self.world)]
        padded = torch.zeros((max(sizes), *values.shape[1:]), dtype=values.dtype, device=values.device)
        padded[: len(values)] = values
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(value)
        return value

    def agree(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, src=0)
        return float(t.item())

    def wrap(self, model: nn.Module) -> nn.Module:
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
