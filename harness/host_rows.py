"""Features on the training device: in-memory arrays as one device tensor (the airbench pattern), rows left in their
file (`FileRows`, the `npy` source) as `HostRows`, which reads and copies one batch at a time."""

from __future__ import annotations

import numpy as np
import torch

from harness.data.rows import FileRows


class HostRows:
    """Stands in for the device tensor of the training set where the loop indexes it: `rows[positions]` (a tensor
    of positions, on any device) and `rows[start:stop]` read those rows from the file as a float32 tensor on
    `device`. On CUDA the batch is read into pinned memory and copied without blocking, so the copy overlaps the
    GPU's work."""

    dtype = torch.float32

    def __init__(self, rows: FileRows, device: torch.device) -> None:
        self.rows, self.device = rows, device
        self.shape = torch.Size(rows.shape)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: torch.Tensor | slice) -> torch.Tensor:
        positions = key.cpu().numpy() if isinstance(key, torch.Tensor) else key
        if self.device.type != "cuda":
            return torch.from_numpy(self.rows.take(positions))
        n = len(range(len(self))[positions]) if isinstance(positions, slice) else len(positions)
        # pinned blocks come from torch's caching host allocator, which keeps one until its copy has finished
        staged = torch.empty((n, *self.shape[1:]), dtype=torch.float32, pin_memory=True)
        self.rows.take(positions, out=staged.numpy())
        return staged.to(self.device, non_blocking=True)


def on_device(x: np.ndarray | FileRows, device: torch.device,
              indices: np.ndarray | None = None) -> torch.Tensor | HostRows:
    """Rows `indices` (None: all) of `x` for training on `device`: a device tensor, or HostRows for rows in a file."""
    if isinstance(x, FileRows):
        return HostRows(x if indices is None else x.subset(indices), device)
    if device.type != "cpu" and indices is not None and len(indices) == len(x) and \
            np.array_equal(indices, np.arange(len(x))):
        # The whole set in order (a full-data trial): gathering it on the host first would copy it twice. Not on the
        # CPU, where the tensor would then share memory with the dataset instead of being the trial's own copy.
        indices = None
    return torch.from_numpy(x if indices is None else x[indices]).to(device)
