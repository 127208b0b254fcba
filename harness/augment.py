"""Data augmentation on the device, per training batch (the airbench pattern: a pure function over a batch tensor).

`trainer.augment=crop_flip`: each training image is padded by `trainer.crop_padding` pixels (reflect), cropped back
to its size at a random corner and mirrored left-right with probability 1/2 (random crop + horizontal flip, the
standard CIFAR augmentation of He et al. 2016; reflect padding as in airbench and the ResNet-9 DAWNBench entry).
The random draws come from the trial's seeded data-order generator, so a run stays reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.errors import UserError

AUGMENTS = ("crop_flip",)


def crop_flip_params(n: int, padding: int, gen: torch.Generator,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the crop's top-left corner in the padded image, (row, column) each in [0, 2 * padding], and
    whether to mirror it."""
    corners = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen, device=device)
    flips = torch.randint(0, 2, (n,), generator=gen, device=device).bool()
    return corners, flips


def crop_flip(images: torch.Tensor, corners: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Images (N, C, H, W) padded by `padding` (reflect), each cropped to (H, W) at its corner, then mirrored
    left-right where `flips`: one gather, no loop over images. Labels are untouched by construction."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4, mode="reflect") if padding else images
    device = images.device
    rows = corners[:, :1] + torch.arange(h, device=device)  # (N, H)
    cols = torch.arange(w, device=device).expand(n, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + corners[:, 1:]  # a mirrored crop reads right to left
    out = padded[torch.arange(n, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)  # (N, C, H, W), channels-last in memory (what convolutions on GPUs prefer)


class CropFlip:
    """`crop_flip` drawn from `gen`. Called with this process's shard of a global batch of `batch` images: the draws
    are made for the whole global batch, so every data-parallel rank advances the generator alike (and trains on
    the same augmented batch as one process would)."""

    def __init__(self, padding: int, gen: torch.Generator) -> None:
        self.padding, self.gen = padding, gen

    def __call__(self, images: torch.Tensor, batch: int, mine: torch.Tensor) -> torch.Tensor:
        corners, flips = crop_flip_params(batch, self.padding, self.gen, images.device)
        if len(mine) != batch:
            corners, flips = corners[mine], flips[mine]
        return crop_flip(images, corners, flips, self.padding)


def build_augment(name: str | None, padding: int,
                  gen: torch.Generator) -> Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor] | None:
    """The training loop's augmentation for `trainer.augment` (None: none)."""
    if name is None:
        return None
    if name == "crop_flip":
        return CropFlip(padding, gen)
    raise ValueError(f"unknown augmentation {name!r}; expected one of {AUGMENTS}")


def check_augment(name: str | None, padding: int, sample_shape: tuple[int, ...] | None = None,
                  dataset: str = "") -> None:
    """Before any compute: the augmentation exists and, where the dataset's sample shape is known, fits its samples.
    Raises UserError."""
    if name is None:
        return
    if name not in AUGMENTS:
        raise UserError(f"trainer.augment={name}: expected null or one of: {', '.join(AUGMENTS)}")
    if sample_shape is None:
        return
    if len(sample_shape) != 3:
        raise UserError(f"trainer.augment={name}: expected image samples (channels, height, width); dataset={dataset} "
                        f"has samples of shape {tuple(sample_shape)}")
    if padding >= min(sample_shape[1:]):  # reflect padding needs a source pixel for each padded one
        raise UserError(f"trainer.crop_padding={padding}: expected fewer pixels than the images' height and width "
                        f"{tuple(sample_shape[1:])}")
