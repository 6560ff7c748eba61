"""Coordinate-hashed noise: the value at a pixel depends only on (seed, y, x), so any
window of an arbitrarily large image renders identically on its own or as a crop."""

from __future__ import annotations

import numpy as np

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_GOLD = np.uint32(0x9E3779B1)


def _mix(values: np.ndarray) -> np.ndarray:
    values = values ^ (values >> np.uint32(16))
    values = values * _M1
    values = values ^ (values >> np.uint32(15))
    values = values * _M2
    return values ^ (values >> np.uint32(16))


def hash_uniform(ys: np.ndarray, xs: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) float32 per (y, x) pair; ``ys``/``xs`` broadcast."""
    salt = _mix(np.asarray([seed & 0xFFFFFFFF], dtype=np.uint32))[0]
    y = np.asarray(ys).astype(np.int64).astype(np.uint32)
    x = np.asarray(xs).astype(np.int64).astype(np.uint32)
    hashed = _mix(_mix(x ^ salt) ^ (y * _GOLD))
    return (hashed >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def value_noise(y0: int, x0: int, height: int, width: int, spacing: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1): hashed lattice values every ``spacing`` px, smoothstep-blended."""
    gy = (y0 + np.arange(height, dtype=np.float64)) / spacing
    gx = (x0 + np.arange(width, dtype=np.float64)) / spacing
    iy, ix = np.floor(gy).astype(np.int64), np.floor(gx).astype(np.int64)
    fy, fx = (gy - iy).astype(np.float32), (gx - ix).astype(np.float32)
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    lattice_y = np.arange(iy[0], iy[-1] + 2)
    lattice_x = np.arange(ix[0], ix[-1] + 2)
    lattice = hash_uniform(lattice_y[:, None], lattice_x[None, :], seed)
    ry, rx = (iy - iy[0])[:, None], (ix - ix[0])[None, :]
    top = lattice[ry, rx] * (1 - fx) + lattice[ry, rx + 1] * fx
    bottom = lattice[ry + 1, rx] * (1 - fx) + lattice[ry + 1, rx + 1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def cell_rng(seed: int, *cell: int) -> np.random.Generator:
    """A generator for one lattice cell (negative indices allowed)."""
    return np.random.default_rng([seed & 0xFFFFFFFF] + [c + (1 << 31) for c in cell])
