"""ConvNeXt-T with ECA channel attention: the mineral image recognition paper's classifier."""

from __future__ import annotations

import torch
from torch import nn

from minseg.enums import DepthPreset, EcaPlacement, PadMode, Task
from minseg.models.base import MinsegModel
from minseg.models.blocks import ECA, DropPath, LayerNorm2d, scaled
from minseg.models.registry import InputSpec, register_model

_DEPTHS = {DepthPreset.PAPER: (3, 3, 9, 3), DepthPreset.TINY: (1, 1, 1, 1)}
STEM_STRIDE = 4  # 4x4 patchify convolution
STAGE_STRIDE = 2  # 2x2 downsampling convolution before stages 2-4


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LayerNorm -> 4x inverted bottleneck (GELU) -> layer scale."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: float = 1e-6, eca: bool = False):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))
        self.drop_path = DropPath(drop_path)
        self.eca = ECA(dim) if eca else None  # eca_placement="block": attention on every block's output

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        out = x + self.drop_path((self.gamma * y).permute(0, 3, 1, 2))
        return out if self.eca is None else self.eca(out)


class ConvNeXtEncoder(nn.Module):
    """``downsample.i`` (stem, then LayerNorm + 2x2 conv) and ``stages.i`` (blocks, then ECA): the
    original release's names but ``downsample_layers``; ``pretrained`` maps torchvision's and timm's."""

    backbone = "convnext"

    def __init__(self, in_channels, dims, depths, drop_path_rate, eca: bool,
                 eca_placement: EcaPlacement = EcaPlacement.STAGE):
        super().__init__()
        self.downsample = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_channels, dims[0], STEM_STRIDE, stride=STEM_STRIDE),
                           LayerNorm2d(dims[0], eps=1e-6))]
            + [nn.Sequential(LayerNorm2d(dims[i], eps=1e-6),
                             nn.Conv2d(dims[i], dims[i + 1], STAGE_STRIDE, stride=STAGE_STRIDE))
               for i in range(3)]
        )
        total = sum(depths)
        rates = [drop_path_rate * i / max(1, total - 1) for i in range(total)]  # stochastic depth ramps up
        self.stages = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            per_block = eca and eca_placement is EcaPlacement.BLOCK
            blocks = [ConvNeXtBlock(dims[i], rates[start + j], eca=per_block) for j in range(depth)]
            if eca and not per_block:
                blocks.append(ECA(dims[i]))  # channel attention after each stage's blocks
            self.stages.append(nn.Sequential(*blocks))
            start += depth
        self.out_channels = list(dims)

    def forward(self, x):
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
        return x


@register_model(
    "convnext_eca",
    task=Task.CLASSIFICATION,
    paper="Mineral image recognition with ConvNeXt + ECA",
    description="ConvNeXt-T: stages [3,3,9,3], dims [96,192,384,768], 7x7 depthwise, ECA after each stage "
                "(eca_placement: block puts it after every block)",
    # unpadded strided convolutions: the last stage needs one whole pixel (4 x 2^3 = 32 px)
    input_spec=InputSpec(min_size=STEM_STRIDE * STAGE_STRIDE**3),
)
class ConvNeXtECA(MinsegModel):
    task = Task.CLASSIFICATION

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        eca: bool = True,
        eca_placement: EcaPlacement | str = EcaPlacement.STAGE,
        drop_path_rate: float = 0.1,
        width: float = 1.0,
        depth: DepthPreset | str = DepthPreset.PAPER,
        pad_mode: PadMode | str = PadMode.REPLICATE,
    ):
        super().__init__(num_classes, in_channels, pad_mode)
        dims = [scaled(d, width, minimum=8) for d in (96, 192, 384, 768)]
        self.encoder = ConvNeXtEncoder(in_channels, dims, _DEPTHS[DepthPreset(depth)], drop_path_rate, eca,
                                       EcaPlacement(eca_placement))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _forward(self, x):
        return self.head(self.norm(self.encoder(x).mean(dim=(-2, -1))))
