"""UPerNet (pyramid pooling + FPN) on ResNet50: a heterogeneous ensemble member
(confidence-weighted neuronal-segmentation ensemble paper)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import Activation, DepthPreset, PadMode, Task
from minseg.models.blocks import ConvNormAct, PyramidPooling, scaled
from minseg.models.registry import register_model
from minseg.models.resnet import ResNetSegmentationModel


@register_model(
    "upernet",
    task=Task.SEGMENTATION,
    paper="Confidence-weighted heterogeneous ensembles (UPerNet member)",
    description="ResNet50 encoder, PPM on the last stage, FPN over stages 1-4, fused at 1/4",
)
class UPerNet(ResNetSegmentationModel):
    size_multiple = 32

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        fpn_channels: int = 256,
        activation: Activation | str = Activation.RELU,
        width: float = 1.0,
        depth: DepthPreset | str = DepthPreset.PAPER,
        pad_mode: PadMode | str = PadMode.REPLICATE,
    ):
        super().__init__(num_classes, in_channels, activation, width, depth, pad_mode)
        activation = self.activation
        stages = self.encoder.out_channels[1:]
        fpn = scaled(fpn_channels, width)
        self.ppm = PyramidPooling(stages[-1], fpn, (1, 2, 3, 6), activation)
        self.ppm_out = ConvNormAct(self.ppm.out_channels, fpn, 3, activation=activation)
        self.lateral = nn.ModuleList(ConvNormAct(c, fpn, 1, activation=activation) for c in stages[:-1])
        self.smooth = nn.ModuleList(ConvNormAct(fpn, fpn, 3, activation=activation) for _ in stages[:-1])
        self.fuse = ConvNormAct(fpn * len(stages), fpn, 3, activation=activation)
        self.classifier = nn.Conv2d(fpn, num_classes, 1)

    def decode(self, features):
        features = features[1:]  # the stem is not part of the pyramid
        top = self.ppm_out(self.ppm(features[-1]))
        pyramid = [top]
        for index in reversed(range(len(features) - 1)):
            lateral = self.lateral[index](features[index])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            pyramid.insert(0, self.smooth[index](top))
        size = pyramid[0].shape[-2:]
        fused = torch.cat(
            [pyramid[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid[1:]],
            dim=1,
        )
        return self.classifier(self.fuse(fused))
