"""VGG16-UNet: the b0/b1 baselines of the Res-UNet ensemble paper (ReLU, trained with CE)."""

from __future__ import annotations

from torch import nn

from minseg.enums import Activation, DepthPreset, PadMode, Task
from minseg.models.base import MinsegModel
from minseg.models.blocks import scaled
from minseg.models.registry import register_model
from minseg.models.unet_parts import UpConcatBlock

_VGG16 = {
    DepthPreset.PAPER: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    DepthPreset.TINY: [64, "M", 128, "M", 256, "M", 512, "M", 512],
}


class VGGEncoder(nn.Module):
    """VGG16 ``features`` (torchvision's and timm's parameter names, with or without batch norm);
    returns the five stage outputs."""

    def __init__(self, in_channels: int, width: float, depth: DepthPreset, batch_norm: bool = False):
        super().__init__()
        self.backbone = "vgg16_bn" if batch_norm else "vgg16"
        layers, taps, cin = [], [], in_channels
        for item in _VGG16[depth]:
            if item == "M":
                taps.append(len(layers) - 1)  # the ReLU before each pool
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = scaled(item, width)
                norm = [nn.BatchNorm2d(cout)] if batch_norm else []
                layers += [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU(inplace=True)]
                cin = cout
        taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.taps = set(taps)
        self.out_channels = [scaled(c, width) for c in (64, 128, 256, 512, 512)]

    def forward(self, x):
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


@register_model(
    "vgg16_unet",
    task=Task.SEGMENTATION,
    paper="Res-UNet ensemble (RUEL) for ore microscopy segmentation: baselines b0/b1",
    description="VGG16 encoder (batch_norm: VGG16-BN), UNet decoder [64,128,256,512] from [192,384,768,1024], ReLU",
)
class VGG16UNet(MinsegModel):
    size_multiple = 16

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        depth: DepthPreset | str = DepthPreset.PAPER,
        batch_norm: bool = False,
        pad_mode: PadMode | str = PadMode.REPLICATE,
    ):
        super().__init__(num_classes, in_channels, pad_mode)
        self.encoder = VGGEncoder(in_channels, width, DepthPreset(depth), batch_norm)
        skips = self.encoder.out_channels
        decoder = [scaled(c, width) for c in (64, 128, 256, 512)]
        relu = Activation.RELU
        self.up4 = UpConcatBlock(skips[3] + skips[4], decoder[3], relu)
        self.up3 = UpConcatBlock(skips[2] + decoder[3], decoder[2], relu)
        self.up2 = UpConcatBlock(skips[1] + decoder[2], decoder[1], relu)
        self.up1 = UpConcatBlock(skips[0] + decoder[1], decoder[0], relu)
        self.classifier = nn.Conv2d(decoder[0], num_classes, 1)

    def _forward(self, x):
        f0, f1, f2, f3, f4 = self.encoder(x)
        y = self.up4(f4, f3)
        y = self.up3(y, f2)
        y = self.up2(y, f1)
        return self.classifier(self.up1(y, f0))
