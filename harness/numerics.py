"""What changes a trial's floating-point results besides its config and seed: recorded, and replayed by reproduce.

On the CPU, torch's intra-op thread count changes reduction order (the same trial ended at test accuracy 0.504
with 1 thread and 0.506 with 2); the device type, bf16 autocast and deterministic kernels change results on
GPUs. Every run records these as tags; `harness.reproduce` re-runs with the same device and thread count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from harness.errors import UserError


@dataclass(frozen=True)
class Numerics:
    device: torch.device
    torch_threads: int  # torch.get_num_threads() while the trial ran (a Ray trial: its num_cpus)
    amp_dtype: str  # "bfloat16" where autocast ran (CUDA with trainer.amp), else "none"
    deterministic: bool  # torch.use_deterministic_algorithms

    @classmethod
    def of_trial(cls, device: torch.device, amp: bool, deterministic: bool) -> Numerics:
        return cls(device, torch.get_num_threads(), "bfloat16" if amp and device.type == "cuda" else "none",
                   deterministic)

    def tags(self) -> dict[str, str]:
        return {"device": str(self.device), "torch_threads": str(self.torch_threads), "amp_dtype": self.amp_dtype,
                "deterministic": str(self.deterministic).lower()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], run_id: str) -> Numerics:
        """The numerics a run recorded; one line naming the run when it recorded none (an older run)."""
        missing = [k for k in ("device", "torch_threads") if k not in tags]
        if missing:
            raise UserError(f"run {run_id}: has no {missing[0]} tag; expected a run recorded with its numerics "
                            "(device, torch_threads), so it can be replayed exactly")
        device = torch.device(tags["device"])
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"run {run_id}: trained on {device}; this machine has no CUDA device")
        return cls(device, int(tags["torch_threads"]), tags.get("amp_dtype", "none"),
                   tags.get("deterministic", "false") == "true")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op threads, then restore the process's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
