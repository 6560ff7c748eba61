"""Spatial transformer placed before the encoder (Res-UNet ensemble paper).

A localisation network predicts six affine parameters, initialised to the identity,
which warp the input with ``affine_grid`` + ``grid_sample``. It is a registered
submodule and trains with the rest of the model. (The paper's public code builds a
new, untrained STN inside ``forward()`` on every call, so there it is an identity
that never learns; this implements what the paper describes.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels: int, hidden: int = 32, pooled: int = 4):
        super().__init__()
        self.localisation = nn.Sequential(
            nn.Conv2d(in_channels, 8, 7, padding=3),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 10, 5, padding=2),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(pooled),
        )
        self.regressor = nn.Sequential(
            nn.Flatten(), nn.Linear(10 * pooled * pooled, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 6)
        )
        nn.init.zeros_(self.regressor[-1].weight)
        with torch.no_grad():
            self.regressor[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(self.localisation(x)).view(-1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if x.is_cuda and x.is_contiguous(memory_format=torch.channels_last):  # grid_sample returns NCHW
            warped = warped.contiguous(memory_format=torch.channels_last)
        return warped
