"""PSPNet (pyramid pooling) on the ResNet50 encoder: a Table 7 comparison model."""

from __future__ import annotations

from torch import nn

from minseg.enums import Activation, DepthPreset, PadMode, Task
from minseg.models.blocks import ConvNormAct, PyramidPooling, scaled
from minseg.models.registry import register_model
from minseg.models.resnet import ResNetSegmentationModel


@register_model(
    "pspnet",
    task=Task.SEGMENTATION,
    paper="Res-UNet ensemble paper, Table 7 comparison (PSPNet)",
    description="ResNet50 encoder at output stride 8, pyramid pooling bins (1,2,3,6)",
)
class PSPNet(ResNetSegmentationModel):
    size_multiple = 8

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        output_stride: int = 8,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        activation: Activation | str = Activation.RELU,
        width: float = 1.0,
        depth: DepthPreset | str = DepthPreset.PAPER,
        pad_mode: PadMode | str = PadMode.REPLICATE,
    ):
        super().__init__(num_classes, in_channels, activation, width, depth, pad_mode, output_stride)
        cin = self.encoder.out_channels[-1]
        self.ppm = PyramidPooling(cin, cin // len(bins), bins, self.activation)
        channels = scaled(512, width)
        self.head = nn.Sequential(
            ConvNormAct(self.ppm.out_channels, channels, 3, activation=self.activation),
            nn.Dropout(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )

    def decode(self, features):
        return self.head(self.ppm(features[-1]))
