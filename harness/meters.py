"""One meter API around each stage of a trial: wall time now; energy and memory hook in here.

    meter = Meter(device)
    with meter.stage("train"):
        ...
    meter.totals()  -> {"train_s": ..., "total_s": ...}
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Meter:
    """Accumulates seconds per named stage; CUDA work is synchronised at both ends of a stage."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Move `seconds` measured inside another stage into `name` (e.g. evaluation inside training)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def totals(self) -> dict[str, float]:
        out = {f"{k}_s": v for k, v in self.seconds.items()}
        out["total_s"] = sum(self.seconds.values())
        return out
