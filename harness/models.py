"""Models for the built-in datasets. Any torch module can be used instead through `_target_`.

Each built-in takes `input_shape` and `num_classes`; the harness fills those from the dataset for
any `_target_` whose signature accepts them and whose config leaves them out.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Logistic(nn.Module):
    """Multinomial logistic regression on the flattened input. The layer is the `head`, as in every model here, so it
    serves as a probe (SVP's cheapest proxy): its embedding is then the input itself."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class MLP(nn.Module):
    """Two hidden ReLU layers, as in the MNIST-1D paper (hidden width 100)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 100) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNN1D(nn.Module):
    """The MNIST-1D paper's CNN: three strided 1-D convolutions and a linear head (5,210 parameters at 40x10)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int = 25) -> None:
        super().__init__()
        length = input_shape[-1]
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        for k in (5, 3, 3):  # output length of each conv: floor((L + 2*pad - k) / stride) + 1
            length = (length + 2 - k) // 2 + 1
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(x.shape[0], 1, -1)))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stem, no max-pool (He et al. 2016; as in most pruning papers)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = [
            nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        ]
        c_in = width
        for i, w in enumerate(widths):
            layers += [_Block(c_in, w, 1 if i == 0 else 2), _Block(w, w, 1)]
            c_in = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _ConvGroup(nn.Sequential):
    """airbench's block: 3x3 conv, 2x2 max-pool, BN, GELU, 3x3 conv, BN, GELU (pooling before the norm is cheaper)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), _frozen_scale_bn(c_out),
                         nn.GELU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _frozen_scale_bn(c_out),
                         nn.GELU())


def _frozen_scale_bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm whose scale stays 1 (only the bias trains), as in airbench and hlb-CIFAR10."""
    bn = nn.BatchNorm2d(channels, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


class AirbenchNet(nn.Module):
    """The network of airbench (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU", from tysam-code's
    hlb-CIFAR10), as in its ablation baseline (standard initialisation; the final airbench94 adds a patch-whitening
    first layer, identity initialisation and lookahead): a 2x2 stem conv to 24 channels, BN, GELU; three conv
    groups of widths `width`, 4x`width`, 4x`width`; global max-pool; a bias-free linear head on features scaled by
    `logit_scale` (1/9: small logits early in training). 1.97M parameters at width 64 on CIFAR.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64,
                 logit_scale: float = 1 / 9) -> None:
        super().__init__()
        channels = input_shape[0]
        stem = 2 * channels * 2 * 2  # airbench's whitening width: two filters per 2x2 patch dimension
        widths = [width, 4 * width, 4 * width]
        self.features = nn.Sequential(
            nn.Conv2d(channels, stem, 2, bias=False), _frozen_scale_bn(stem), nn.GELU(),
            _ConvGroup(stem, widths[0]), _ConvGroup(widths[0], widths[1]), _ConvGroup(widths[1], widths[2]),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),  # on 32x32 inputs: airbench's MaxPool2d(3) over the last 3x3 map
        )
        self.logit_scale = logit_scale
        # scaling the head's input equals scaling its output (no bias), and keeps the output a Linear's (last_layer)
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x) * self.logit_scale)
