"""U-Net and Half U-Net of the microplastic segmentation paper.

Half U-Net keeps encoder stages 0-1 with their decoder stages and a bottleneck of
reduced width: a small receptive field for tiny objects, far fewer parameters.

Both take ``context_bins``: pyramid pooling (PSPNet, Zhao et al. 2017; bins ``(1,)`` is ParseNet's global
context, Liu et al. 2015) after the bottleneck, so every pixel's label can use what the whole input window
shows. A plain U-Net labels by what its receptive field sees (~190 px for the 4-stage U-Net); on LumenStone
the pale sulphides of one assemblage (pyrrhotite, pentlandite) look like another's pyrite, and only the rest
of the section tells them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minseg.enums import Activation, PadMode, Task
from minseg.models.base import MinsegModel
from minseg.models.blocks import ConvNormAct, PyramidPooling, scaled
from minseg.models.registry import register_model
from minseg.models.unet_parts import DoubleConv

PAPER = "Microplastic segmentation with U-Net / MultiResUNet variants for tiny objects"


class UNetEncoder(nn.Module):
    def __init__(self, in_channels: int, channels: list[int], activation: Activation):
        super().__init__()
        self.stages = nn.ModuleList()
        cin = in_channels
        for cout in channels:
            self.stages.append(DoubleConv(cin, cout, activation))
            cin = cout
        self.pool = nn.MaxPool2d(2)
        self.out_channels = list(channels)

    def forward(self, x):
        features = []
        for index, stage in enumerate(self.stages):
            x = stage(x if index == 0 else self.pool(x))
            features.append(x)
        return features


class _UNetFamily(MinsegModel):
    def __init__(self, num_classes, in_channels, stage_channels, bottleneck, activation, pad_mode, context_bins=()):
        super().__init__(num_classes, in_channels, pad_mode)
        activation = Activation(activation)
        self.encoder = UNetEncoder(in_channels, stage_channels, activation)
        self.bottleneck = DoubleConv(stage_channels[-1], bottleneck, activation)
        if not isinstance(context_bins, (list, tuple)):
            raise ValueError(f"context_bins must be a list of distinct positive integers (pooled grid sizes, e.g. "
                             f"[1, 2, 3, 6]), got {context_bins!r}")
        bins = tuple(context_bins)
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins) or len(set(bins)) < len(bins):
            raise ValueError(f"context_bins must be a list of distinct positive integers (pooled grid sizes), got "
                             f"{context_bins!r}")
        self.context_bins = bins
        if bins:
            # pooled branches each get a share of the bottleneck's width; a 1x1 conv folds them back into it
            pooling = PyramidPooling(bottleneck, max(1, bottleneck // len(bins)), bins, activation)
            self.context = nn.Sequential(pooling, ConvNormAct(pooling.out_channels, bottleneck, 1, activation=activation))
        else:
            self.context = nn.Identity()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        cin = bottleneck
        for cout in reversed(stage_channels):
            self.ups.append(nn.ConvTranspose2d(cin, cout, 2, stride=2))
            self.decoders.append(DoubleConv(2 * cout, cout, activation))
            cin = cout
        self.classifier = nn.Conv2d(stage_channels[0], num_classes, 1)

    def _forward(self, x):
        skips = self.encoder(x)
        y = self.context(self.bottleneck(self.encoder.pool(skips[-1])))
        for up, decode, skip in zip(self.ups, self.decoders, reversed(skips)):
            y = decode(torch.cat([skip, up(y)], dim=1))
        return self.classifier(y)


@register_model("unet", task=Task.SEGMENTATION, paper=PAPER, description="U-Net: 4 stages [64..512], bottleneck 1024")
class UNet(_UNetFamily):
    size_multiple = 16

    def __init__(self, num_classes, in_channels=3, width: float = 1.0, activation=Activation.RELU,
                 pad_mode: PadMode | str = PadMode.REPLICATE, context_bins: Sequence[int] = ()):
        stages = [scaled(c, width) for c in (64, 128, 256, 512)]
        super().__init__(num_classes, in_channels, stages, scaled(1024, width), activation, pad_mode, context_bins)


@register_model(
    "half_unet",
    task=Task.SEGMENTATION,
    paper=PAPER,
    description="Half U-Net: encoder stages 0-1 [64,128] with their decoders, reduced bottleneck (128)",
)
class HalfUNet(_UNetFamily):
    size_multiple = 4

    def __init__(self, num_classes, in_channels=3, width: float = 1.0, bottleneck_channels: int = 128,
                 activation=Activation.RELU, pad_mode: PadMode | str = PadMode.REPLICATE,
                 context_bins: Sequence[int] = ()):
        stages = [scaled(c, width) for c in (64, 128)]
        super().__init__(num_classes, in_channels, stages, scaled(bottleneck_channels, width), activation, pad_mode,
                         context_bins)
