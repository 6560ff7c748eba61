"""ResNet encoders (18 and 50) in plain PyTorch, with torchvision-compatible parameter
names so a locally stored ImageNet state dict loads into ``encoder``; and
``ResNetSegmentationModel``, the base of the learners that put a head on ResNet50
(DeepLabv3, PSPNet, UPerNet)."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import Activation, DepthPreset, PadMode
from minseg.models.base import MinsegModel
from minseg.models.blocks import make_activation, scaled

RESNET_LAYERS = {
    "resnet18": {DepthPreset.PAPER: (2, 2, 2, 2), DepthPreset.TINY: (1, 1, 1, 1)},
    "resnet50": {DepthPreset.PAPER: (3, 4, 6, 3), DepthPreset.TINY: (1, 1, 1, 1)},
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, dilation=1, activation=Activation.RELU, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act = make_activation(activation)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand x4, plus the shortcut."""

    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1, activation=Activation.RELU, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.act = make_activation(activation)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + identity)


class ResNetEncoder(nn.Module):
    """Returns the stem (1/2) and layers 1-4 (1/4 ... 1/32) as a list of five features.

    ``output_stride`` 16 or 8 replaces the last strides by dilation (DeepLab / PSPNet).
    Parameter names are torchvision's (and timm's), so their ImageNet checkpoints load as they are.
    """

    backbone = "resnet"  # minseg.models.pretrained: which checkpoint layouts apply

    def __init__(
        self,
        arch: str = "resnet50",
        in_channels: int = 3,
        width: float = 1.0,
        depth: DepthPreset | str = DepthPreset.PAPER,
        activation: Activation | str = Activation.RELU,
        output_stride: int = 32,
    ):
        super().__init__()
        if arch not in RESNET_LAYERS:
            raise ValueError(f"unknown ResNet {arch!r}; choose from {sorted(RESNET_LAYERS)}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        block = Bottleneck if arch == "resnet50" else BasicBlock
        layers = RESNET_LAYERS[arch][DepthPreset(depth)]
        activation = Activation(activation)
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act = make_activation(activation)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
        self._cin, self._dilation = stem, 1
        planes = [scaled(p, width) for p in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(block, planes[0], layers[0], 1, False, activation)
        self.layer2 = self._make_layer(block, planes[1], layers[1], 2, dilate[0], activation)
        self.layer3 = self._make_layer(block, planes[2], layers[2], 2, dilate[1], activation)
        self.layer4 = self._make_layer(block, planes[3], layers[3], 2, dilate[2], activation)
        self.out_channels = [stem] + [p * block.expansion for p in planes]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride, dilate, activation):
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._cin, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._cin, planes, stride, previous_dilation, activation, downsample)]
        self._cin = planes * block.expansion
        layers += [block(self._cin, planes, 1, self._dilation, activation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        stem = self.act(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


class ResNetSegmentationModel(MinsegModel):
    """A head on the ResNet50 encoder whose logits are resized to the input
    (segmentation_models_pytorch's ``SegmentationModel`` pattern: encoder -> head).

    Builds ``self.encoder`` (what ``freeze_encoder`` freezes) from the options these
    learners share (``activation``, ``width``, ``depth``, ``output_stride``) and keeps
    ``self.activation`` for the head. A subclass builds its head after
    ``super().__init__`` and implements ``decode``; ``_forward`` resizes its
    (N, num_classes, h, w) logits bilinearly to the (H, W) of the input.
    """

    encoder_arch: ClassVar[str] = "resnet50"

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        activation: Activation | str,
        width: float,
        depth: DepthPreset | str,
        pad_mode: PadMode | str,
        output_stride: int = 32,
    ):
        super().__init__(num_classes, in_channels, pad_mode)
        self.activation = Activation(activation)
        self.encoder = ResNetEncoder(self.encoder_arch, in_channels, width, depth, self.activation, output_stride)

    @abc.abstractmethod
    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits (N, num_classes, h, w) from the encoder's five features: the stem (1/2)
        and layers 1-4 (1/4 ... 1/32, or held at 1/8 or 1/16 by ``output_stride``)."""

    def _forward(self, x):
        logits = self.decode(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
