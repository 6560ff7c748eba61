"""Tile grids over images: last row/column snapped to the edge; padding only when an
image is smaller than a tile. Shared by training crops and whole-slide inference."""

from __future__ import annotations

import numpy as np


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets along one axis; the last tile ends exactly at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def spread_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets with the slack spread evenly: as many tiles as ``tile_starts`` gives, the first at 0
    and the last ending exactly at ``length``, every overlap at least ``tile - step`` and all about equal
    (no sliver of a last tile overlapping its neighbour almost entirely)."""
    if length <= tile:
        return [0]
    count = -(-(length - tile) // step) + 1
    if count == 1:
        return [0]
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_grid(height: int, width: int, tile: int, step: int) -> list[tuple[int, int]]:
    return [(y, x) for y in tile_starts(height, tile, step) for x in tile_starts(width, tile, step)]


def owned_spans(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """Per tile along one axis (``starts``), the [lo, hi) image coordinates it owns: the pixels nearer its centre
    than any other tile's (boundaries halfway between neighbouring centres), so overlapping tiles that are scored
    count every pixel once, each where it lies furthest from a tile edge."""
    bounds = [0] + [(a + b + tile) // 2 for a, b in zip(starts, starts[1:])] + [max(length, tile)]
    # tiles further apart than a tile (stride > size) own their own pixels only: a gap is scored by none
    return [(max(lo, start), min(hi, start + tile)) for start, lo, hi in zip(starts, bounds[:-1], bounds[1:])]


def score_once(mask: np.ndarray, y: int, x: int, rows: tuple[int, int], cols: tuple[int, int],
               ignore_index: int) -> np.ndarray:
    """A copy of the tile ``mask`` at (``y``, ``x``) with ``ignore_index`` outside the span it owns (``rows`` /
    ``cols``: ``owned_spans`` entries): what validation and test score, so an overlap is not counted twice."""
    out = np.full_like(mask, ignore_index)
    r0, r1, c0, c1 = rows[0] - y, rows[1] - y, cols[0] - x, cols[1] - x
    out[r0:r1, c0:c1] = mask[r0:r1, c0:c1]
    return out


def extract_tile(array: np.ndarray, y: int, x: int, tile: int, fill) -> np.ndarray:
    """The tile at (y, x), padded with ``fill`` where the image is smaller than a tile."""
    return pad_to(array[y : y + tile, x : x + tile], tile, tile, fill)


def mean_fill(mean) -> np.ndarray:
    """uint8 per channel of the normalisation mean: padding that becomes zero after normalising (training and
    inference pad an image smaller than a tile alike)."""
    return np.asarray(mean, dtype=np.float32).round().astype(np.uint8)


def pad_to(array: np.ndarray, height: int, width: int, fill) -> np.ndarray:
    """``array`` at the top left of a (height, width) canvas of ``fill`` (itself, contiguous, when it fits)."""
    if array.shape[:2] == (height, width):
        return np.ascontiguousarray(array)
    out = np.empty((height, width) + array.shape[2:], dtype=array.dtype)
    out[...] = fill
    out[: array.shape[0], : array.shape[1]] = array
    return out
