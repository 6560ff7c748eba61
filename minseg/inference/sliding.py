"""Sliding-window prediction of whole images with blended softmax probabilities.

Tiles overlap; each tile's probabilities are weighted (gaussian or pyramid: high in
the middle, low at the edges, where context is missing) and accumulated, then divided
by the accumulated weights, so there are no seams. The last row/column of tiles is
snapped to the image edge; padding happens only when the image is smaller than a tile.
Labels are never blended: probabilities are.
"""

from __future__ import annotations

import numpy as np
import torch

from minseg.data.tiling import tile_grid
from minseg.enums import TTA, Blend


def blend_weights(tile: int, mode: Blend | str = Blend.GAUSSIAN) -> np.ndarray:
    """(tile, tile) float32 weights, strictly positive so every pixel is covered."""
    mode = Blend(mode)
    if mode is Blend.UNIFORM:
        return np.ones((tile, tile), np.float32)
    centre = (tile - 1) / 2
    axis = np.arange(tile, dtype=np.float64)
    if mode is Blend.PYRAMID:
        ramp = 1.0 - np.abs(axis - centre) / (centre + 1)
        weights = np.minimum.outer(ramp, ramp)
    else:
        sigma = tile / 8
        ramp = np.exp(-((axis - centre) ** 2) / (2 * sigma**2))
        weights = np.outer(ramp, ramp)
    weights = weights / weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def _tta_views(mode: TTA, square: bool):
    """(forward, inverse) pairs acting on (N, C, H, W) tensors."""
    identity = (lambda t: t, lambda t: t)
    if mode is TTA.NONE:
        return [identity]
    views = [identity, (lambda t: t.flip(-1), lambda t: t.flip(-1)), (lambda t: t.flip(-2), lambda t: t.flip(-2))]
    if mode is TTA.DIHEDRAL and square:
        for k in (1, 2, 3):
            views.append((lambda t, k=k: torch.rot90(t, k, (-2, -1)), lambda t, k=k: torch.rot90(t, -k, (-2, -1))))
        views.append((lambda t: torch.rot90(t, 1, (-2, -1)).flip(-1), lambda t: torch.rot90(t.flip(-1), -1, (-2, -1))))
    return views


@torch.no_grad()
def tile_probabilities(model, batch: torch.Tensor, tta: TTA = TTA.NONE, autocast_dtype=None) -> torch.Tensor:
    """Softmax probabilities of one model on a batch of normalised tiles, averaged over TTA views."""
    views = _tta_views(TTA(tta), batch.shape[-1] == batch.shape[-2])
    total = None
    for forward, inverse in views:
        with torch.autocast(batch.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(forward(batch))
        logits = logits[0] if isinstance(logits, tuple) else logits
        probs = inverse(torch.softmax(logits.float(), dim=1))
        total = probs if total is None else total + probs
    return total / len(views)


def normalise(images: np.ndarray, mean, std, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), channels_last."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    mean = torch.as_tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    return ((tensor - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_image(models, image: np.ndarray, num_classes: int, tile: int, overlap: int, mean, std,
                  device="cpu", batch_size: int = 8, blend: Blend = Blend.GAUSSIAN, tta: TTA = TTA.NONE,
                  timings: list[float] | None = None) -> np.ndarray:
    """Blended probabilities (M, C, H, W) of every model on a whole (H, W, 3) uint8 image."""
    import time

    height, width = image.shape[:2]
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        fill = np.asarray(mean, dtype=np.float32).round().astype(np.uint8)  # the mean: zero after normalising
        padded = np.empty((height + pad_h, width + pad_w, 3), np.uint8)
        padded[...] = fill
        padded[:height, :width] = image
        image = padded
    full_h, full_w = image.shape[:2]
    positions = tile_grid(full_h, full_w, tile, tile - overlap)
    weights = torch.from_numpy(blend_weights(tile, blend)).to(device)
    out = np.zeros((len(models), num_classes, full_h, full_w), np.float32)
    norm = np.zeros((full_h, full_w), np.float32)
    for y, x in positions:
        norm[y : y + tile, x : x + tile] += weights.cpu().numpy()
    for m, model in enumerate(models):
        started = time.perf_counter()
        accumulated = torch.zeros((num_classes, full_h, full_w), device=device)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            tiles = np.stack([image[y : y + tile, x : x + tile] for y, x in chunk])
            probs = tile_probabilities(model, normalise(tiles, mean, std, device), tta)
            for (y, x), p in zip(chunk, probs):
                accumulated[:, y : y + tile, x : x + tile] += p * weights
        out[m] = accumulated.cpu().numpy()
        if timings is not None:
            timings.append(time.perf_counter() - started)
    out /= norm
    return out[:, :, :height, :width]
