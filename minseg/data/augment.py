"""On-the-fly augmentation of training batches, on the training device, seeded.

- dihedral: each sample becomes one of six views (identity, horizontal flip,
  vertical flip, rotations by 90, 180, 270 degrees): the Res-UNet paper's x6.
- shift_rotate: random shift up to ``shift`` x tile and rotation up to
  ``rotate_degrees``; uncovered image pixels take the mean (0 after normalisation),
  uncovered mask pixels become ignore (the microplastic paper's scheme).
- photometric (``exposure`` / ``colour`` > 0, after the geometric views): each tile's raw intensities are
  multiplied by one brightness gain and a gain per channel, as a photograph taken with another exposure
  time or white balance would be; masks are unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minseg.data.config import AugmentSettings
from minseg.enums import Augmentation


def _dihedral(images, masks, choice):
    out_images, out_masks = images.clone(), None if masks is None else masks.clone()
    ops = {
        1: lambda t, d: torch.flip(t, dims=(d,)),  # horizontal flip (width axis)
        2: lambda t, d: torch.flip(t, dims=(d - 1,)),  # vertical flip
        3: lambda t, d: torch.rot90(t, 1, dims=(d - 1, d)),
        4: lambda t, d: torch.rot90(t, 2, dims=(d - 1, d)),
        5: lambda t, d: torch.rot90(t, 3, dims=(d - 1, d)),
    }
    for code, op in ops.items():
        index = (choice == code).nonzero().flatten()
        if index.numel():
            out_images[index] = op(images[index], 3)
            if masks is not None:
                out_masks[index] = op(masks[index], 2)
    return out_images, out_masks


def _shift_rotate(images, masks, settings: AugmentSettings, generator, ignore_index: int):
    n = images.shape[0]
    device = images.device
    angle = (torch.rand(n, generator=generator, device="cpu") * 2 - 1) * math.radians(settings.rotate_degrees)
    shift = (torch.rand(n, 2, generator=generator, device="cpu") * 2 - 1) * settings.shift * 2  # grid units span 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    theta = theta.to(device=device, dtype=torch.float32)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is None:
        return warped.to(images.dtype), None
    shifted = (masks.float() + 1).unsqueeze(1)  # 0 marks "outside" after zero padding
    sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    sampled = sampled.squeeze(1).round().long() - 1
    sampled[sampled < 0] = ignore_index
    return warped.to(images.dtype), sampled.to(masks.dtype)


def _photometric(images, settings: AugmentSettings, generator, mean: torch.Tensor, std: torch.Tensor):
    """Gains on the raw intensities, applied to normalised ones: with x = (raw - mean) / std, raw * g becomes
    g * x + (g - 1) * mean / std. Not clipped to the sensor's range: a brighter tile stays linear."""
    n, channels = images.shape[:2]
    exposure = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * settings.exposure
    colour = 1 + (torch.rand(n, channels, 1, 1, generator=generator) * 2 - 1) * settings.colour
    gain = (exposure * colour).to(device=images.device, dtype=torch.float32)
    mean, std = (t.to(images.device, torch.float32).reshape(1, -1, 1, 1) for t in (mean, std))
    return (gain * images.float() + (gain - 1) * mean / std).to(images.dtype)


def augment_batch(images: torch.Tensor, masks: torch.Tensor | None, settings: AugmentSettings,
                  generator: torch.Generator, ignore_index: int = 255, mean: torch.Tensor | None = None,
                  std: torch.Tensor | None = None):
    """Augment normalised images (N, C, H, W) and their masks (N, H, W) together.

    Args:
        mean, std: the per-channel statistics the images were normalised with (C values, raw intensity units);
            needed by the photometric jitter, which scales raw intensities.

    Raises:
        ValueError: photometric jitter asked for without ``mean`` and ``std``.
    """
    mode = Augmentation(settings.mode)
    if mode in (Augmentation.DIHEDRAL, Augmentation.BOTH) and images.shape[-1] == images.shape[-2]:
        choice = torch.randint(0, 6, (images.shape[0],), generator=generator).to(images.device)
        images, masks = _dihedral(images, masks, choice)
    if mode in (Augmentation.SHIFT_ROTATE, Augmentation.BOTH):
        images, masks = _shift_rotate(images, masks, settings, generator, ignore_index)
    if settings.exposure or settings.colour:
        if mean is None or std is None:
            raise ValueError("photometric augmentation (exposure / colour) needs the normalisation mean and std")
        images = _photometric(images, settings, generator, mean, std)
    if images.is_cuda:  # flips, rotations and grid_sample leave NCHW strides: the convolutions want NHWC there
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks
