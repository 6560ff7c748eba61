"""Procedural reflected-light polished sections with exact label masks.

A section is an unbounded plane: grains are seeded per lattice cell, scratches per
coarse cell, texture and sensor noise are hashed from pixel coordinates, and uneven
illumination is a smooth function of position. Rendering a window therefore never
needs anything outside it, so a 40000 x 40000 slide streams tile by tile and every
tile matches the same region cropped from a bigger render exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from minseg.synth.minerals import (
    GRAIN_CLASSES,
    GRAIN_PROBABILITIES,
    MINERALS,
    MOTTLE,
    PITS,
    REFLECTANCE,
    REFLECTION_RGB,
    REFLECTIONS,
    TEXTURE,
)
from minseg.synth.noise import cell_rng, hash_uniform, value_noise

_GRAIN_CELL = 128  # px; one Poisson batch of grains per cell
_SCRATCH_CELL = 1024
_HARMONICS = 4  # grain outlines: r(theta) = r0 (1 + sum a_k cos(k theta + phi_k)), k = 2..5
_MAX_HARMONIC = 0.12
_MAX_RADIUS = max(m.radius_px[1] for m in MINERALS) * (1 + _HARMONICS * _MAX_HARMONIC)
_LOG_RADIUS = {m.class_id: (math.log(max(m.radius_px[0], 1e-3)), math.log(max(m.radius_px[1], 1e-3))) for m in MINERALS}
_GRAIN_CACHE_CELLS = 16384  # a band of tiles across a 40000-px slide reuses its cells


@dataclass(frozen=True)
class _Grain:
    order: tuple[int, int, int, int]
    class_id: int
    cy: float
    cx: float
    radius: float
    amplitudes: np.ndarray
    phases: np.ndarray
    brightness: float


class SectionRenderer:
    """Renders any window ``(y0, x0, height, width)`` of one synthetic polished section."""

    def __init__(
        self,
        seed: int = 0,
        grain_scale: float = 1.0,
        grains_per_cell: float = 5.0,
        illumination_period_px: float = 3000.0,
        illumination_strength: float = 0.12,
        noise_level: float = 5.0,
        scratches_per_cell: float = 0.6,
    ):
        self.seed = int(seed)
        self.grain_scale = float(grain_scale)
        self.cell = max(16, int(round(_GRAIN_CELL * self.grain_scale)))
        self.grains_per_cell = grains_per_cell * (self.cell / (_GRAIN_CELL * self.grain_scale)) ** 2
        self.margin = _MAX_RADIUS * self.grain_scale + 2
        self.illumination_period = illumination_period_px
        self.illumination_strength = illumination_strength
        self.noise_level = noise_level
        self.scratches_per_cell = scratches_per_cell
        phase_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 7])
        self._illum_phases = phase_rng.uniform(0, 2 * math.pi, size=3)
        self._grain_cache: dict[tuple[int, int], list[_Grain]] = {}

    # -- scene description ---------------------------------------------------

    def _cell_grains(self, cy: int, cx: int) -> list[_Grain]:
        key = (cy, cx)
        cached = self._grain_cache.get(key)
        if cached is None:
            cached = self._grain_cache[key] = self._draw_cell_grains(cy, cx)
            if len(self._grain_cache) > _GRAIN_CACHE_CELLS:
                self._grain_cache.pop(next(iter(self._grain_cache)))  # oldest first
        return cached

    def _draw_cell_grains(self, cy: int, cx: int) -> list[_Grain]:
        rng = cell_rng(self.seed, 1, cy, cx)
        count = rng.poisson(self.grains_per_cell)
        classes = rng.choice(GRAIN_CLASSES, size=count, p=GRAIN_PROBABILITIES)
        position = rng.random((count, 2))
        size = rng.random(count)
        amplitudes = rng.uniform(0, _MAX_HARMONIC, (count, _HARMONICS)).astype(np.float32)
        phases = rng.uniform(0, 2 * math.pi, (count, _HARMONICS)).astype(np.float32)
        brightness = rng.normal(1.0, 0.035, count)
        grains = []
        for index in range(count):
            class_id = int(classes[index])
            low, high = _LOG_RADIUS[class_id]
            grains.append(
                _Grain(
                    order=(MINERALS[class_id].layer, cy, cx, index),
                    class_id=class_id,
                    cy=(cy + position[index, 0]) * self.cell,
                    cx=(cx + position[index, 1]) * self.cell,
                    radius=math.exp(low + (high - low) * size[index]) * self.grain_scale,
                    amplitudes=amplitudes[index],
                    phases=phases[index],
                    brightness=float(brightness[index]),
                )
            )
        return grains

    def _grains_near(self, y0: int, x0: int, height: int, width: int) -> list[_Grain]:
        m = self.margin
        rows = range(math.floor((y0 - m) / self.cell), math.floor((y0 + height + m) / self.cell) + 1)
        cols = range(math.floor((x0 - m) / self.cell), math.floor((x0 + width + m) / self.cell) + 1)
        grains = [g for cy in rows for cx in cols for g in self._cell_grains(cy, cx)]
        return sorted(grains, key=lambda g: g.order)

    def _scratches_near(self, y0: int, x0: int, height: int, width: int):
        c = _SCRATCH_CELL
        rows = range(math.floor(y0 / c) - 2, math.floor((y0 + height) / c) + 3)
        cols = range(math.floor(x0 / c) - 2, math.floor((x0 + width) / c) + 3)
        for cy in rows:
            for cx in cols:
                rng = cell_rng(self.seed, 2, cy, cx)
                for _ in range(rng.poisson(self.scratches_per_cell)):
                    sy, sx = (cy + rng.random()) * c, (cx + rng.random()) * c
                    angle, length = rng.uniform(0, math.pi), rng.uniform(150, 1800)
                    ey, ex = sy + math.sin(angle) * length, sx + math.cos(angle) * length
                    yield sy, sx, ey, ex, rng.uniform(0.6, 1.6), rng.uniform(0.65, 0.85)

    # -- rendering -------------------------------------------------------------

    def render(self, y0: int, x0: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 image (H, W, 3) and uint8 class-id mask (H, W) of the window."""
        mask = np.zeros((height, width), dtype=np.uint8)
        shade = np.ones((height, width), dtype=np.float32)
        for grain in self._grains_near(y0, x0, height, width):
            self._paint(grain, y0, x0, mask, shade)

        ys = (y0 + np.arange(height))[:, None]
        xs = (x0 + np.arange(width))[None, :]
        scale = self.grain_scale
        texture = value_noise(y0, x0, height, width, 5.0 * scale, self.seed + 11) - 0.5
        texture += 0.6 * (value_noise(y0, x0, height, width, 23.0 * scale, self.seed + 12) - 0.5)
        grey = texture * 2 * TEXTURE[mask]
        grey += (value_noise(y0, x0, height, width, 15.0 * scale, self.seed + 15) - 0.5) * 2 * MOTTLE[mask]
        grey += (hash_uniform(ys, xs, self.seed + 13) + hash_uniform(ys, xs, self.seed + 14) - 1.0) * self.noise_level
        gain = shade * self._illumination(ys, xs)
        image = REFLECTANCE[mask]
        image *= gain[..., None]
        image += (grey * gain)[..., None]
        # spots a few pixels wide: bright internal reflections of transparent grains, dark polishing pits
        spots = _spots(value_noise(y0, x0, height, width, 3.0 * scale, self.seed + 16), REFLECTIONS[mask])
        image += spots[..., None] * REFLECTION_RGB[mask] * gain[..., None]
        image *= 1.0 - 0.55 * _spots(value_noise(y0, x0, height, width, 2.5 * scale, self.seed + 17), PITS[mask])[..., None]
        self._scratch(image, y0, x0)
        return np.clip(image, 0, 255).astype(np.uint8), mask

    def _paint(self, grain: _Grain, y0: int, x0: int, mask: np.ndarray, shade: np.ndarray) -> None:
        reach = grain.radius * (1 + float(grain.amplitudes.sum()))
        ya, yb = max(y0, math.floor(grain.cy - reach)), min(y0 + mask.shape[0], math.ceil(grain.cy + reach) + 1)
        xa, xb = max(x0, math.floor(grain.cx - reach)), min(x0 + mask.shape[1], math.ceil(grain.cx + reach) + 1)
        if ya >= yb or xa >= xb:
            return
        dy = (np.arange(ya, yb, dtype=np.float32) + 0.5 - grain.cy)[:, None]
        dx = (np.arange(xa, xb, dtype=np.float32) + 0.5 - grain.cx)[None, :]
        distance = np.sqrt(dy * dy + dx * dx)
        theta = np.arctan2(dy, dx)
        outline = np.ones_like(distance)
        for k in range(_HARMONICS):
            outline += grain.amplitudes[k] * np.cos((k + 2) * theta + grain.phases[k])
        outline *= grain.radius
        inside = distance <= outline
        window = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
        mask[window][inside] = grain.class_id
        # polishing relief: a slightly darker rim on each grain
        rim = inside & (outline - distance < 1.5)
        local_shade = np.where(rim, grain.brightness * 0.88, grain.brightness).astype(np.float32)
        shade[window][inside] = local_shade[inside]

    def _illumination(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        # sin(y')cos(x') + 0.5 sin(y'' + x''), as outer products of 1-D terms (cheap)
        p = self.illumination_period
        a, b, c = self._illum_phases
        wy, wx = 2 * np.pi * ys.astype(np.float64) / p, 2 * np.pi * xs.astype(np.float64) / p
        field = np.sin(wy + a) * np.cos(wx / 1.3 + b)
        field = field + 0.5 * (np.sin(wy / 0.7 + c) * np.cos(wx / 0.7) + np.cos(wy / 0.7 + c) * np.sin(wx / 0.7))
        return (1.0 + self.illumination_strength * field / 1.5).astype(np.float32)

    def _scratch(self, image: np.ndarray, y0: int, x0: int) -> None:
        height, width = image.shape[:2]
        for sy, sx, ey, ex, half_width, darkening in self._scratches_near(y0, x0, height, width):
            ya, yb = max(y0, math.floor(min(sy, ey) - 2)), min(y0 + height, math.ceil(max(sy, ey) + 3))
            xa, xb = max(x0, math.floor(min(sx, ex) - 2)), min(x0 + width, math.ceil(max(sx, ex) + 3))
            if ya >= yb or xa >= xb:
                continue
            py = (np.arange(ya, yb, dtype=np.float32) + 0.5)[:, None]
            px = (np.arange(xa, xb, dtype=np.float32) + 0.5)[None, :]
            vy, vx = ey - sy, ex - sx
            t = np.clip(((py - sy) * vy + (px - sx) * vx) / (vy * vy + vx * vx), 0, 1)
            distance = np.hypot(py - (sy + t * vy), px - (sx + t * vx))
            hit = distance < half_width
            if hit.any():
                region = image[ya - y0 : yb - y0, xa - x0 : xb - x0]
                region[hit] *= darkening


_LEVELS = np.linspace(0.5, 1.0, 501)


@functools.cache
def _noise_quantiles() -> np.ndarray:
    """Value noise is not uniform (blending pulls values to the middle): its quantiles at ``_LEVELS`` turn an area
    share into a noise level. Measured once, on first use."""
    return np.quantile(value_noise(0, 0, 512, 512, 3.0, 1), _LEVELS)


def _spots(noise: np.ndarray, share: np.ndarray) -> np.ndarray:
    """Soft spots in [0, 1] where value noise rises into its top ``share`` (that share of the area is touched,
    brightest at the noise's peaks; 0 where ``share`` is 0)."""
    threshold = np.interp(1.0 - np.clip(share, 0.0, 0.5), _LEVELS, _noise_quantiles()).astype(np.float32)
    return np.clip((noise - threshold) / np.maximum(1.0 - threshold, 1e-6), 0.0, 1.0) * (share > 0)


def render_section(seed: int, height: int, width: int, grain_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One standalone section image + mask (e.g. a training photo)."""
    return SectionRenderer(seed=seed, grain_scale=grain_scale).render(0, 0, height, width)
