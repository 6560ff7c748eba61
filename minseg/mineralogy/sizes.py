"""Size distributions of particles or grains from their areas: equivalent circle diameter (ECD) quantiles.

ECD = 2·√(A/π), the diameter of the circle with the object's area (µm with a pixel size, else pixels).
The cumulative % passing at a size is the share of objects (number-weighted) or of their area (area-weighted,
the 2D stand-in for mass at uniform density) with an ECD at most that size. Dx (D10, D50) and P80 are the
smallest ECD at which the cumulative % passing reaches x: the sieve convention of comminution reports
(P80: the 80 % passing size; e.g. Wills & Finch, *Wills' Mineral Processing Technology*, 8th ed., ch. 4),
read off the exact distribution without interpolation.
"""

from __future__ import annotations

import math

import numpy as np

QUANTILES = (("d10", 10.0), ("d50", 50.0), ("p80", 80.0))


def ecd(area, pixel_size_um: float | None = None) -> np.ndarray:
    """Equivalent circle diameters of areas in pixels (µm when ``pixel_size_um`` is given)."""
    diameter = 2.0 * np.sqrt(np.asarray(area, np.float64) / math.pi)
    return diameter * pixel_size_um if pixel_size_um else diameter


def passing_size(sizes: np.ndarray, weights: np.ndarray, percent: float) -> float | None:
    """The smallest of ``sizes`` (ascending) at which the weights' cumulative share reaches ``percent``."""
    total = float(weights.sum())
    if total <= 0:
        return None
    cumulative = np.cumsum(weights) * 100.0 / total
    return float(sizes[min(int(np.searchsorted(cumulative, percent - 1e-9)), len(sizes) - 1)])


def size_distribution(area: np.ndarray, count: np.ndarray, pixel_size_um: float | None) -> dict:
    """D10 / D50 / P80 of the ECD, number- and area-weighted, from distinct areas (px, ascending) and how
    many objects have each; ``unit`` says whether sizes are in µm or pixels."""
    area, count = np.asarray(area, np.int64), np.asarray(count, np.int64)
    order = np.argsort(area, kind="stable")
    area, count = area[order], count[order]
    sizes = ecd(area, pixel_size_um)
    result = {"count": int(count.sum()), "unit": "um" if pixel_size_um else "px"}
    for name, weights in (("number", count.astype(np.float64)), ("area", (area * count).astype(np.float64))):
        result[name] = {key: (None if (v := passing_size(sizes, weights, p)) is None else round(v, 3))
                        for key, p in QUANTILES}
    return result
