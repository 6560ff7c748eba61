"""Sliding-window prediction of whole images with blended softmax probabilities.

Tiles overlap; the last row/column of tiles ends at the image edge, with the slack
spread evenly over all overlaps; padding happens only when the image is smaller than
a tile. Each tile's probabilities are
weighted and accumulated, then divided by the accumulated weights, so there are no
seams. Labels are never blended: probabilities are.

Weights (``TileGrid.weights``): a tile contributes nothing within ``overlap // 4`` of
an edge it shares with a neighbour (there the model saw padding, not the slide; the
neighbour's interior covers those pixels: the overlap-tile strategy), and a gaussian
or pyramid ramp elsewhere, so neighbours blend over the middle half of their overlap.
For a fully convolutional model whose receptive field fits in that margin the
stitched result equals one pass over the whole image. A model with window context
(pooling over its whole input, e.g. ``context_bins``) sees one window at a time: use a
``tile`` close to its training tile so the pooled statistics match what it learned on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from minseg.data.tiling import mean_fill, pad_to, spread_starts
from minseg.enums import TTA, Blend


def blend_ramp(tile: int, mode: Blend | str = Blend.GAUSSIAN) -> np.ndarray:
    """(tile,) float64 ramp, 1 in the middle; its outer product weights a tile."""
    mode = Blend(mode)
    if mode is Blend.UNIFORM:
        return np.ones(tile)
    centre = (tile - 1) / 2
    axis = np.arange(tile, dtype=np.float64)
    if mode is Blend.PYRAMID:
        ramp = 1.0 - np.abs(axis - centre) / (centre + 1)
    else:
        sigma = tile / 8
        ramp = np.exp(-((axis - centre) ** 2) / (2 * sigma**2))
    return ramp / ramp.max()


@dataclass
class TileGrid:
    """Tiles over a (height, width) image, padded up to one tile when the image is smaller,
    with each tile's blending weights."""

    height: int
    width: int
    tile: int
    overlap: int
    blend: Blend = Blend.GAUSSIAN
    ys: list[int] = field(init=False)
    xs: list[int] = field(init=False)

    def __post_init__(self):
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap {self.overlap} must be in [0, tile={self.tile})")
        step = self.tile - self.overlap
        self.ys = spread_starts(self.padded_height, self.tile, step)
        self.xs = spread_starts(self.padded_width, self.tile, step)
        self._ramp = blend_ramp(self.tile, self.blend)
        self._ramps: dict[tuple[bool, bool], np.ndarray] = {}
        self._weights: dict[tuple[bool, ...], np.ndarray] = {}

    @property
    def padded_height(self) -> int:
        return max(self.height, self.tile)

    @property
    def padded_width(self) -> int:
        return max(self.width, self.tile)

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    def __len__(self) -> int:
        return self.rows * self.cols

    @property
    def margin(self) -> int:
        return self.overlap // 4

    def weighted_span(self, index: int, count: int) -> tuple[int, int]:
        """Offsets [lo, hi) inside tile ``index`` of ``count`` along one axis where its weight is not zero."""
        return (0 if index == 0 else self.margin), self.tile - (0 if index == count - 1 else self.margin)

    def _axis_ramp(self, index: int, count: int) -> np.ndarray:
        """Zero within the margin of an edge shared with a neighbour; an image edge keeps its weight."""
        key = (index == 0, index == count - 1)
        if key not in self._ramps:
            lo, hi = self.weighted_span(index, count)
            ramp = np.zeros(self.tile)
            ramp[lo:hi] = self._ramp[lo:hi]
            self._ramps[key] = ramp
        return self._ramps[key]

    def weights(self, row: int, col: int) -> np.ndarray:
        """(tile, tile) float32 weights of tile (row, col); read-only, shared between tiles alike."""
        key = (row == 0, row == self.rows - 1, col == 0, col == self.cols - 1)
        if key not in self._weights:
            weights = np.outer(self._axis_ramp(row, self.rows), self._axis_ramp(col, self.cols)).astype(np.float32)
            weights.flags.writeable = False
            self._weights[key] = weights
        return self._weights[key]


def _tta_views(mode: TTA, square: bool):
    """(forward, inverse) pairs acting on (N, C, H, W) tensors: ``flips`` the identity and two flips; ``dihedral``
    (square tiles) the 8 elements of the square's symmetry group (4 rotations, 4 reflections), so the average is
    the same for a tile and any of its views."""
    identity = (lambda t: t, lambda t: t)
    if mode is TTA.NONE:
        return [identity]
    views = [identity, (lambda t: t.flip(-1), lambda t: t.flip(-1)), (lambda t: t.flip(-2), lambda t: t.flip(-2))]
    if mode is TTA.DIHEDRAL and square:
        for k in (1, 2, 3):
            views.append((lambda t, k=k: torch.rot90(t, k, (-2, -1)), lambda t, k=k: torch.rot90(t, -k, (-2, -1))))
        views.append((lambda t: torch.rot90(t, 1, (-2, -1)).flip(-1), lambda t: torch.rot90(t.flip(-1), -1, (-2, -1))))
        views.append((lambda t: t.transpose(-2, -1), lambda t: t.transpose(-2, -1)))  # the group's 8th element
    return views


@torch.no_grad()
def tile_probabilities(model, batch: torch.Tensor, tta: TTA = TTA.NONE, autocast_dtype=None) -> torch.Tensor:
    """Softmax probabilities of one model on a batch of normalised tiles, averaged over TTA views."""
    views = _tta_views(TTA(tta), batch.shape[-1] == batch.shape[-2])
    total = None
    for forward, inverse in views:
        view = forward(batch)
        if view.is_cuda:  # a rotated or flipped view has NCHW-like strides; the members run channels_last there
            view = view.contiguous(memory_format=torch.channels_last)
        with torch.autocast(batch.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(view)
        logits = logits[0] if isinstance(logits, tuple) else logits
        probs = inverse(torch.softmax(logits.float(), dim=1))
        total = probs if total is None else total + probs
    return total / len(views)


def normalise(images: np.ndarray, mean, std, device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W), channels_last. To a GPU, the uint8 batch goes
    through pinned memory without blocking (a quarter of the bytes a float copy would move)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    tensor = tensor.permute(0, 3, 1, 2).float()
    mean = torch.as_tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1)
    return ((tensor - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_image(models, image: np.ndarray, num_classes: int, tile: int, overlap: int, mean, std,
                  device="cpu", batch_size: int = 8, blend: Blend = Blend.GAUSSIAN, tta: TTA = TTA.NONE,
                  timings: list[float] | None = None, autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Blended softmax probabilities of every model on a whole image.

    Args:
        models: predictors in eval mode (any callable mapping (N, 3, t, t) float to logits (N, C, t, t),
            or a tuple whose first element is the logits).
        image: (H, W, 3) uint8, not normalised.
        num_classes: C.
        tile, overlap: tile side and overlap in pixels (``0 <= overlap < tile``).
        mean, std: per-channel normalisation in uint8 units.
        device: where the models are.
        batch_size: tiles per forward pass.
        blend: weighting of overlapping tiles (``TileGrid``).
        tta: test-time augmentation views averaged per tile.
        timings: when given, each model's wall seconds are appended (for time per image).
        autocast_dtype: mixed precision for the forward passes (``minseg.device.autocast_dtype``).

    Returns:
        (M, C, H, W) float32 probabilities, members in the order given.
    """
    import time

    height, width = image.shape[:2]
    grid = TileGrid(height, width, tile, overlap, blend)
    image = pad_to(image, grid.padded_height, grid.padded_width, mean_fill(mean))
    positions = [(r, c) for r in range(grid.rows) for c in range(grid.cols)]
    out = np.zeros((len(models), num_classes, grid.padded_height, grid.padded_width), np.float32)
    norm = np.zeros((grid.padded_height, grid.padded_width), np.float32)
    weights = {}  # tiles alike share one weight array (grid.weights caches them); one tensor each
    for r, c in positions:
        array = grid.weights(r, c)
        weights.setdefault(id(array), torch.tensor(array, device=device))
        norm[grid.ys[r] : grid.ys[r] + tile, grid.xs[c] : grid.xs[c] + tile] += array
    for m, model in enumerate(models):
        started = time.perf_counter()
        accumulated = torch.zeros((num_classes, grid.padded_height, grid.padded_width), device=device)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            tiles = np.stack([image[grid.ys[r] : grid.ys[r] + tile, grid.xs[c] : grid.xs[c] + tile] for r, c in chunk])
            probs = tile_probabilities(model, normalise(tiles, mean, std, device), tta, autocast_dtype)
            for (r, c), p in zip(chunk, probs):
                weight = weights[id(grid.weights(r, c))]
                accumulated[:, grid.ys[r] : grid.ys[r] + tile, grid.xs[c] : grid.xs[c] + tile] += p * weight
        out[m] = accumulated.cpu().numpy()
        if timings is not None:
            timings.append(time.perf_counter() - started)
    out /= norm
    return out[:, :, :height, :width]
