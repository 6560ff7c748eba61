"""MFAF: the multiscale feature attention framework of the prospectivity paper
(Gao et al., Sustainability 2023).

Input: C-channel evidence windows (e.g. 10 x 128 x 128); output: ore / no-ore.

1. Multi-scale stem: parallel 3x3 convolutions with dilation rates (default 1, 6, 12,
   18, 24) over the evidence stack, concatenated.
2. Squeeze-and-excitation channel attention after the dilated convolutions (its weights
   say how much each evidence feature contributes).
3. A ResNet18 or ShuffleNetV2 backbone, whole (its own first convolution reads the stem's
   channels).
4. Spatial attention (channel max + mean -> 7x7 conv -> sigmoid) at the last convolution:
   on the backbone's last feature map (§3.2; ``attention_placement="stem"`` puts it after
   the channel attention instead, minseg's reading before 2026-11-30).
5. Every backbone stage feeds a small sub-network (pool -> projection to a shared
   width); one fully connected classifier, shared by all of them, scores each; the
   prediction is the vote (mean of softmax) of the stage classifiers.
6. Self-distillation: in training, ``forward`` also returns every stage's logits so
   the loss can pull each stage towards the vote (weight beta, default 0.4; see
   ``minseg.losses.SelfDistillationLoss``).

The paper's ablation (its Table 4) switches parts off: ``channel_attention=False``,
``spatial_attention=False``, ``dilated=False`` (one undilated 3x3 convolution of the same
width instead of the multi-scale stem). docs/learners.md records the reading implemented.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from minseg.enums import AttentionPlacement, DepthPreset, PadMode, Task
from minseg.logs import get_logger
from minseg.models.base import MinsegModel
from minseg.models.blocks import SpatialAttention, SqueezeExcitation, scaled
from minseg.models.registry import InputSpec, register_model
from minseg.models.resnet import ResNetEncoder
from minseg.models.shufflenet import ShuffleNetV2Encoder

log = get_logger("models")

BACKBONES = ("resnet18", "shufflenetv2")


class MultiScaleStem(nn.Module):
    def __init__(self, in_channels: int, branch_channels: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, branch_channels, 3, padding=r, dilation=r, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(inplace=True),
            )
            for r in rates
        )
        self.out_channels = branch_channels * len(rates)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class _ResNet18Stages(ResNetEncoder):
    """ResNet18 applied after the MFAF stem, whole (its own conv1 takes the stem's channels);
    returns the outputs of layers 1-4. torchvision's names, so ImageNet weights load (conv1 adapted)."""

    def __init__(self, in_channels: int, width: float, depth: DepthPreset):
        super().__init__("resnet18", in_channels, width, depth)
        self.out_channels = self.out_channels[1:]

    def forward(self, x):
        return super().forward(x)[1:]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before torchvision names: stem.0/1 = conv1/bn1, layers.i = layer{i+1}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            renamed = re.sub(r"^layers\.(\d)\.", lambda m: f"layer{int(m.group(1)) + 1}.",
                             re.sub(r"^stem\.1\.", "bn1.", re.sub(r"^stem\.0\.", "conv1.", rest)))
            if renamed != rest:
                state_dict[prefix + renamed] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@register_model(
    "mfaf",
    task=Task.CLASSIFICATION,
    paper="MFAF prospectivity network (Gao et al., Sustainability 2023)",
    description="dilated multi-scale stem + SE + spatial attention, ResNet18/ShuffleNetV2, voted stage classifiers",
    # 10 evidence channels, ore / no-ore (the paper). 16 px is a floor, not a hard limit:
    # every backbone stride pads, so smaller windows would run, but 16 is the third stage's
    # stride, the smallest window whose 1/16 pixel sees a whole stride (paper: 128 px).
    input_spec=InputSpec(channels=10, num_classes=2, min_size=16),
)
class MFAF(MinsegModel):
    task = Task.CLASSIFICATION
    encoder_reads_input = False  # the backbone reads the multi-scale stem's features, not the evidence stack

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 10,
        backbone: str = "resnet18",
        dilation_rates: tuple[int, ...] = (1, 6, 12, 18, 24),
        branch_channels: int = 16,
        head_channels: int = 128,
        channel_attention: bool = True,
        spatial_attention: bool = True,
        dilated: bool = True,
        attention_placement: AttentionPlacement | str = AttentionPlacement.PAPER,
        width: float = 1.0,
        depth: DepthPreset | str = DepthPreset.PAPER,
        pad_mode: PadMode | str = PadMode.REPLICATE,
    ):
        super().__init__(num_classes, in_channels, pad_mode)
        if backbone not in BACKBONES:
            raise ValueError(f"MFAF backbone must be one of {BACKBONES}, got {backbone!r}")
        if not dilation_rates or any(int(r) < 1 for r in dilation_rates):
            raise ValueError(f"dilation_rates must be positive integers, got {dilation_rates!r}")
        self.dilation_rates = tuple(int(r) for r in dilation_rates)
        self.attention_placement = AttentionPlacement(attention_placement)
        branch = scaled(branch_channels, width)
        if dilated:
            self.stem = MultiScaleStem(in_channels, branch, self.dilation_rates)
        else:  # ablation: one plain 3x3 convolution, as wide as the multi-scale stem
            self.stem = MultiScaleStem(in_channels, branch * len(self.dilation_rates), (1,))
        self.channel_attention = SqueezeExcitation(self.stem.out_channels, reduction=4) if channel_attention else None
        self.spatial_attention = SpatialAttention(7) if spatial_attention else None
        depth = DepthPreset(depth)
        if backbone == "resnet18":
            self.encoder = _ResNet18Stages(self.stem.out_channels, width, depth)
        else:
            self.encoder = ShuffleNetV2Encoder(self.stem.out_channels, width, depth)
        shared = scaled(head_channels, width)
        self.stage_heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, shared), nn.ReLU(inplace=True))
            for c in self.encoder.out_channels
        )
        self.classifier = nn.Linear(shared, num_classes)  # shared by every stage

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a ResNet18 MFAF saved before 2026-11-30 (old backbone names) was trained with spatial attention at
        # the stem: keep that wiring rather than silently predicting with another network
        if any(k.startswith(prefix + "encoder.layers.") for k in state_dict) and \
                self.attention_placement is not AttentionPlacement.STEM:
            log.warning("MFAF weights from before 2026-11-30: using attention_placement='stem', as they were trained")
            self.attention_placement = AttentionPlacement.STEM
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """SE weights per stem channel (N, branches x rates): how much each feature counts.

        Raises:
            ValueError: the model was built without channel attention.
        """
        if self.channel_attention is None:
            raise ValueError("this MFAF has no channel attention (channel_attention=False)")
        features = self.stem(x)
        se = self.channel_attention
        return torch.sigmoid(se.fc2(torch.relu(se.fc1(features.mean(dim=(-2, -1), keepdim=True))))).flatten(1)

    def _forward(self, x):
        y = self.stem(x)
        if self.channel_attention is not None:
            y = self.channel_attention(y)
        at_stem = self.attention_placement is AttentionPlacement.STEM
        if self.spatial_attention is not None and at_stem:
            y = self.spatial_attention(y)
        features = list(self.encoder(y))
        if self.spatial_attention is not None and not at_stem:
            features[-1] = self.spatial_attention(features[-1])  # at the last convolution
        stage_logits = [self.classifier(head(f)) for head, f in zip(self.stage_heads, features)]
        vote = torch.stack([torch.softmax(l.float(), dim=1) for l in stage_logits]).mean(0)
        logits = torch.log(vote.clamp_min(1e-8))  # fp32: in bf16, p near 0.01 moves in 3 % steps (ties in AUC, ranks)
        if self.training:
            return logits, stage_logits
        return logits
