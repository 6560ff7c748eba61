"""Res-UNet of the Res-UNet ensemble paper: ResNet50 encoder, UNet decoder, optional STN."""

from __future__ import annotations

from torch import nn

from minseg.enums import Activation, DepthPreset, PadMode, Task
from minseg.models.base import MinsegModel
from minseg.models.blocks import make_activation, scaled
from minseg.models.registry import register_model
from minseg.models.resnet import ResNetEncoder
from minseg.models.stn import SpatialTransformer
from minseg.models.unet_parts import UpConcatBlock

PAPER = "Res-UNet ensemble (RUEL) for ore microscopy segmentation"


@register_model(
    "res_unet",
    task=Task.SEGMENTATION,
    paper=PAPER,
    description="ResNet50 encoder (3,4,6,3 bottlenecks), UNet decoder [64,128,256,512], optional pre-positioned STN",
)
class ResUNet(MinsegModel):
    """Decoder stages take [192, 512, 1024, 3072] channels (skip + upsampled) to
    [64, 128, 256, 512]; a final x2 stage returns to full resolution. 43.9 M parameters
    at full width with 9 classes."""

    size_multiple = 32

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        activation: Activation | str = Activation.LEAKY_RELU,
        stn: bool = False,
        width: float = 1.0,
        depth: DepthPreset | str = DepthPreset.PAPER,
        pad_mode: PadMode | str = PadMode.REPLICATE,
    ):
        super().__init__(num_classes, in_channels, pad_mode)
        activation = Activation(activation)
        self.stn = SpatialTransformer(in_channels) if stn else None
        self.encoder = ResNetEncoder("resnet50", in_channels, width, depth, activation)
        skips = self.encoder.out_channels  # [64, 256, 512, 1024, 2048] at full width
        decoder = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.up4 = UpConcatBlock(skips[3] + skips[4], decoder[3], activation)
        self.up3 = UpConcatBlock(skips[2] + decoder[3], decoder[2], activation)
        self.up2 = UpConcatBlock(skips[1] + decoder[2], decoder[1], activation)
        self.up1 = UpConcatBlock(skips[0] + decoder[1], decoder[0], activation)
        self.final_up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(decoder[0], decoder[0], 3, padding=1),
            make_activation(activation),
            nn.Conv2d(decoder[0], decoder[0], 3, padding=1),
            make_activation(activation),
        )
        self.classifier = nn.Conv2d(decoder[0], num_classes, 1)

    def _forward(self, x):
        if self.stn is not None:
            x = self.stn(x)
        f0, f1, f2, f3, f4 = self.encoder(x)
        y = self.up4(f4, f3)
        y = self.up3(y, f2)
        y = self.up2(y, f1)
        y = self.up1(y, f0)
        return self.classifier(self.final_up(y))


