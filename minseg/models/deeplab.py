"""DeepLabv3 (ASPP) on the ResNet50 encoder: a comparison model of the Res-UNet paper (Table 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import Activation, DepthPreset, PadMode, Task
from minseg.models.blocks import ConvNormAct, make_activation, scaled
from minseg.models.registry import register_model
from minseg.models.resnet import ResNetSegmentationModel


class ASPP(nn.Module):
    """1x1 branch, three atrous 3x3 branches and an image-pooling branch, projected."""

    def __init__(self, cin: int, cout: int, rates=(6, 12, 18), activation=Activation.RELU):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvNormAct(cin, cout, 1, activation=activation)]
            + [ConvNormAct(cin, cout, 3, dilation=r, activation=activation) for r in rates]
        )
        # no BatchNorm after global pooling: one value per channel cannot be normalised at batch 1
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), make_activation(activation))
        self.project = nn.Sequential(
            ConvNormAct(cout * (len(rates) + 2), cout, 1, activation=activation), nn.Dropout(0.1)
        )

    def forward(self, x):
        pooled = F.interpolate(self.pooling(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


@register_model(
    "deeplabv3",
    task=Task.SEGMENTATION,
    paper="Res-UNet ensemble paper, Table 7 comparison (DeepLabv3)",
    description="ResNet50 encoder at output stride 16, ASPP rates (6,12,18) + image pooling",
)
class DeepLabV3(ResNetSegmentationModel):
    size_multiple = 16

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        output_stride: int = 16,
        atrous_rates: tuple[int, ...] = (6, 12, 18),
        activation: Activation | str = Activation.RELU,
        width: float = 1.0,
        depth: DepthPreset | str = DepthPreset.PAPER,
        pad_mode: PadMode | str = PadMode.REPLICATE,
    ):
        super().__init__(num_classes, in_channels, activation, width, depth, pad_mode, output_stride)
        channels = scaled(256, width)
        self.aspp = ASPP(self.encoder.out_channels[-1], channels, tuple(atrous_rates), self.activation)
        self.head = nn.Sequential(ConvNormAct(channels, channels, 3, activation=self.activation),
                                  nn.Conv2d(channels, num_classes, 1))

    def decode(self, features):
        return self.head(self.aspp(features[-1]))
