"""MultiResUNet and its Half / Quarter variants (microplastic segmentation paper).

MultiRes block: W = 1.67 U split into chained 3x3 convolutions of W/6, W/3 and W/2
channels whose outputs are concatenated, plus a 1x1 shortcut, each with BatchNorm.
ResPath: residual (3x3 + 1x1 shortcut) blocks of lengths 4, 3, 2, 1 on the skips.
Half keeps two encoder stages (receptive field ~200 px), Quarter one (~20 px).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import PadMode, Task
from minseg.models.base import MinsegModel
from minseg.models.blocks import scaled
from minseg.models.registry import register_model

PAPER = "Microplastic segmentation with U-Net / MultiResUNet variants for tiny objects"
ALPHA = 1.67


def _conv_bn(cin, cout, kernel, relu=True):
    layers = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MultiResBlock(nn.Module):
    def __init__(self, cin: int, units: int):
        super().__init__()
        w = ALPHA * units
        c1, c2, c3 = int(w / 6), int(w / 3), int(w / 2)
        self.out_channels = c1 + c2 + c3
        self.conv3 = _conv_bn(cin, c1, 3)
        self.conv5 = _conv_bn(c1, c2, 3)  # two chained 3x3 = a 5x5 receptive field
        self.conv7 = _conv_bn(c2, c3, 3)  # three chained 3x3 = 7x7
        self.shortcut = _conv_bn(cin, self.out_channels, 1, relu=False)
        self.norm_in = nn.BatchNorm2d(self.out_channels)
        self.norm_out = nn.BatchNorm2d(self.out_channels)

    def forward(self, x):
        a = self.conv3(x)
        b = self.conv5(a)
        c = self.conv7(b)
        y = self.norm_in(torch.cat([a, b, c], dim=1))
        return self.norm_out(F.relu(y + self.shortcut(x)))


class ResPath(nn.Sequential):
    def __init__(self, cin: int, cout: int, length: int):
        super().__init__(*[_ResPathStep(cin if i == 0 else cout, cout) for i in range(length)])


class _ResPathStep(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = _conv_bn(cin, cout, 3, relu=False)
        self.shortcut = _conv_bn(cin, cout, 1, relu=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.norm(F.relu(self.conv(x) + self.shortcut(x)))


class MultiResEncoder(nn.Module):
    def __init__(self, in_channels, units: list[int]):
        super().__init__()
        self.blocks = nn.ModuleList()
        cin = in_channels
        for u in units:
            block = MultiResBlock(cin, u)
            self.blocks.append(block)
            cin = block.out_channels
        self.pool = nn.MaxPool2d(2)
        self.out_channels = [b.out_channels for b in self.blocks]

    def forward(self, x):
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x if index == 0 else self.pool(x))
            features.append(x)
        return features


class _MultiResFamily(MinsegModel):
    """``stages`` encoder stages with ResPaths, a bottleneck MultiRes block, a decoder.

    A variant is a subclass naming its stage count, ``class X(_MultiResFamily, stages=2)``;
    each stage pools by 2, so inputs are padded to a multiple of ``2 ** stages``.
    """

    stages: ClassVar[int]

    def __init_subclass__(cls, stages: int, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.stages = stages
        cls.size_multiple = 2**stages

    def __init__(self, num_classes, in_channels=3, width: float = 1.0, pad_mode: PadMode | str = PadMode.REPLICATE):
        super().__init__(num_classes, in_channels, pad_mode)
        stages = self.stages
        units = [scaled(u, width) for u in (32, 64, 128, 256, 512)]
        self.encoder = MultiResEncoder(in_channels, units[:stages])
        self.bottleneck = MultiResBlock(self.encoder.out_channels[-1], units[stages])
        self.respaths = nn.ModuleList(
            ResPath(self.encoder.out_channels[i], units[i], length) for i, length in enumerate((4, 3, 2, 1)[:stages])
        )
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        cin = self.bottleneck.out_channels
        for i in reversed(range(stages)):
            self.ups.append(nn.ConvTranspose2d(cin, units[i], 2, stride=2))
            block = MultiResBlock(2 * units[i], units[i])
            self.decoders.append(block)
            cin = block.out_channels
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def _forward(self, x):
        skips = self.encoder(x)
        y = self.bottleneck(self.encoder.pool(skips[-1]))
        for up, decode, index in zip(self.ups, self.decoders, reversed(range(len(skips)))):
            y = decode(torch.cat([self.respaths[index](skips[index]), up(y)], dim=1))
        return self.classifier(y)


@register_model("multiresunet", task=Task.SEGMENTATION, paper=PAPER,
                description="MultiResUNet: 4 encoder stages (U = 32..256), bottleneck U = 512, ResPaths 4,3,2,1")
class MultiResUNet(_MultiResFamily, stages=4):
    pass


@register_model("half_multiresunet", task=Task.SEGMENTATION, paper=PAPER,
                description="Half MultiResUNet: 2 encoder stages, ResPaths 4,3 (receptive field ~200 px)")
class HalfMultiResUNet(_MultiResFamily, stages=2):
    pass


@register_model("quarter_multiresunet", task=Task.SEGMENTATION, paper=PAPER,
                description="Quarter MultiResUNet: 1 encoder stage, ResPath 4 (receptive field ~20 px)")
class QuarterMultiResUNet(_MultiResFamily, stages=1):
    pass
