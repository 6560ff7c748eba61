"""ShuffleNetV2 backbone (a MFAF backbone option)."""

from __future__ import annotations

import torch
from torch import nn

from minseg.enums import DepthPreset
from minseg.models.blocks import scaled

_REPEATS = {DepthPreset.PAPER: (4, 8, 4), DepthPreset.TINY: (1, 1, 1)}


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Identity()
        source = cin if stride > 1 else branch
        self.branch2 = nn.Sequential(
            nn.Conv2d(source, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
        )

    def forward(self, x):
        if self.stride == 1:
            left, right = x.chunk(2, dim=1)
            out = torch.cat([left, self.branch2(right)], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(out)


class ShuffleNetV2Encoder(nn.Module):
    """Stem (1/4) and three stages (1/8, 1/16, 1/32) of ShuffleNetV2 1.0x; returns stage outputs.
    ``stem`` / ``stages.i`` are torchvision's ``conv1`` / ``stage{i+2}`` (``pretrained`` maps the names)."""

    backbone = "shufflenetv2"

    def __init__(self, in_channels: int, width: float = 1.0, depth: DepthPreset | str = DepthPreset.PAPER):
        super().__init__()
        channels = [scaled(c, width) for c in (24, 116, 232, 464)]
        channels = [c + c % 2 for c in channels]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        )
        self.stages = nn.ModuleList()
        cin = channels[0]
        for cout, repeats in zip(channels[1:], _REPEATS[DepthPreset(depth)]):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
            self.stages.append(nn.Sequential(*units))
            cin = cout
        self.out_channels = channels[1:]

    def forward(self, x):
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
