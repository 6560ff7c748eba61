"""Decoder parts shared by the UNet-style learners."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import Activation
from minseg.models.blocks import make_activation


class UpConcatBlock(nn.Module):
    """Bilinear x2 -> concat skip -> two 3x3 conv + activation (the Res-UNet paper's
    decoder stage; no normalisation, as in the paper)."""

    def __init__(self, cin: int, cout: int, activation: Activation = Activation.RELU):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        x = torch.cat([skip, x], dim=1)
        return self.act(self.conv2(self.act(self.conv1(x))))


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BN -> ReLU) x 2: the classic U-Net stage."""

    def __init__(self, cin: int, cout: int, activation: Activation = Activation.RELU):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            make_activation(activation),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            make_activation(activation),
        )
