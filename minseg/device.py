"""Where a model runs and at what precision: one rule for training, evaluation, segmentation and mapping."""

from __future__ import annotations

import torch

from minseg.enums import Precision


def select_device(gpus: float = 0.0) -> torch.device:
    """``cuda`` when this process was given (a share of) a GPU and one is visible, else ``cpu``.

    ``gpus`` is the Ray resource the actor or worker asked for (fractional shares allowed).
    """
    return torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: Precision | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``auto``: bf16 on GPUs that support it (Ampere and later: no loss scaling needed), fp16
    on older GPUs, fp32 on CPUs (CPU autocast is slower than fp32 for these convolutions).
    """
    precision = Precision(precision)
    if device.type != "cuda" or precision is Precision.FP32:
        return None
    if precision is Precision.FP16:
        return torch.float16
    # emulation excluded: torch's default calls a V100 or T4 bf16-capable, where bf16 runs without tensor cores
    if precision is Precision.BF16 or torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16
