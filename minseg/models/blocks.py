"""Small building blocks shared by the architectures."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import Activation


def make_activation(kind: Activation | str) -> nn.Module:
    kind = Activation(kind)
    if kind is Activation.LEAKY_RELU:
        return nn.LeakyReLU(0.1, inplace=True)
    return nn.ReLU(inplace=True)


def scaled(channels: int, width: float, minimum: int = 4) -> int:
    """Channel count under a width multiplier (kept even, never below ``minimum``).

    Raises ValueError for a width that is not above 0 (it would build the smallest model without a word)."""
    if not width > 0:
        raise ValueError(f"width must be a number above 0 (a share of the paper's channels, e.g. 0.25), got {width!r}")
    return max(minimum, int(round(channels * width / 2)) * 2) if width != 1.0 else channels


class ConvNormAct(nn.Sequential):
    def __init__(self, cin, cout, kernel=3, stride=1, dilation=1, activation=Activation.RELU, norm=True, groups=1):
        padding = dilation * (kernel - 1) // 2
        layers = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """SE channel attention: global pool -> bottleneck MLP -> sigmoid channel weights."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        weights = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * weights


class ECA(nn.Module):
    """Efficient channel attention: 1-D conv across pooled channels, adaptive kernel size.

    Not part of any pretrained backbone: it keeps training while the encoder is frozen."""

    trains_when_frozen = True

    def __init__(self, channels: int, gamma: int = 2, beta: int = 1):
        super().__init__()
        kernel = int(abs(math.log2(channels) / gamma + beta / gamma))
        kernel = kernel if kernel % 2 else kernel + 1
        self.conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1).unsqueeze(1)  # (N, 1, C)
        weights = torch.sigmoid(self.conv(pooled)).transpose(1, 2).unsqueeze(-1)  # (N, C, 1, 1)
        return x * weights


class SpatialAttention(nn.Module):
    """Channel max + mean -> 7x7 conv -> sigmoid map (CBAM's spatial branch)."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        summary = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(summary))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an (N, C, H, W) tensor."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drop whole residual branches per sample while training."""

    def __init__(self, probability: float = 0.0):
        super().__init__()
        self.probability = probability

    def forward(self, x):
        if not self.training or self.probability == 0.0:
            return x
        keep = 1 - self.probability
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: pool to several bin sizes, project, upsample, concat."""

    def __init__(self, cin: int, branch_channels: int, bins=(1, 2, 3, 6), activation=Activation.RELU):
        super().__init__()
        self.bins = tuple(bins)
        # no BatchNorm on pooled branches: a 1x1 map with batch 1 cannot be normalised
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, branch_channels, 1), make_activation(activation)) for _ in self.bins
        )
        self.out_channels = cin + branch_channels * len(self.bins)

    def forward(self, x):
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False)
            for b, branch in zip(self.bins, self.branches)
        ]
        return torch.cat([x, *pooled], dim=1)
