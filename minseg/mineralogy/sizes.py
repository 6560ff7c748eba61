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


def size_fraction(area, edges: tuple[float, ...], pixel_size_um: float | None = None) -> np.ndarray:
    """(N,) int64: the size fraction of each area (px), by its ECD against ``edges`` (ascending; µm with a
    pixel size): 0 below ``edges[0]``, k for ``edges[k-1] <= ECD < edges[k]``, ``len(edges)`` at or above the
    last."""
    return np.searchsorted(np.asarray(edges, np.float64), ecd(area, pixel_size_um), side="right").astype(np.int64)


def fraction_names(edges: tuple[float, ...], unit: str) -> list[str]:
    """Names of the size fractions in the sieve notation: '-20', '+20-38', …, '+300' (the unit added)."""
    if not edges:
        return ["all"]
    text = [f"{e:g}" for e in edges]
    return ([f"-{text[0]} {unit}"] + [f"+{a}-{b} {unit}" for a, b in zip(text, text[1:])] + [f"+{text[-1]} {unit}"])


def passing_size(sizes: np.ndarray, weights: np.ndarray, percent: float) -> float | None:
    """The smallest of ``sizes`` at which the weights' cumulative share reaches ``percent``: the sieve reading
    (inverted CDF, no interpolation) every quantile of this package uses (D10 / D50 / P80, and the grains'
    median / P10 / P90 in ``grains.grain_statistics``).

    Args:
        sizes: (N,) ascending, any unit (ECD, area).
        weights: (N,) non-negative, the weight of each size (object counts, areas, masses).
        percent: 0-100. A share within 1e-9 of it counts as reached (3 of 10 objects is 30 % in float).

    Returns:
        A float from ``sizes``, or None when the weights sum to 0.
    """
    total = float(weights.sum())
    if total <= 0:
        return None
    cumulative = np.cumsum(weights) * 100.0 / total
    return float(sizes[min(int(np.searchsorted(cumulative, percent - 1e-9)), len(sizes) - 1)])


def size_distribution(area: np.ndarray, count: np.ndarray, pixel_size_um: float | None,
                      mass: np.ndarray | None = None) -> dict:
    """D10 / D50 / P80 of the ECD from distinct areas (px) and how many objects have each: ``number``-weighted,
    ``area``-weighted and ``mass``-weighted (``mass`` (A,) the summed mass of the objects of each area; None
    leaves the mass quantiles None: a mineral without a density). ``unit`` says whether sizes are in µm or
    pixels."""
    area, count = np.asarray(area, np.int64), np.asarray(count, np.int64)
    order = np.argsort(area, kind="stable")
    area, count = area[order], count[order]
    sizes = ecd(area, pixel_size_um)
    result = {"count": int(count.sum()), "unit": "um" if pixel_size_um else "px"}
    weightings = {"number": count.astype(np.float64), "area": (area * count).astype(np.float64),
                  "mass": None if mass is None else np.asarray(mass, np.float64)[order]}
    for name, weights in weightings.items():
        result[name] = {key: (None if weights is None or (v := passing_size(sizes, weights, p)) is None
                              else round(v, 3)) for key, p in QUANTILES}
    return result


#: the binned size curves (plots, batch totals): 10 bins per decade of ECD from 0.1 to 10^6 (µm or px)
BINS_PER_DECADE = 10
CURVE_EDGES = 10.0 ** (np.arange(-BINS_PER_DECADE, 6 * BINS_PER_DECADE + 1) / BINS_PER_DECADE)


def size_bins(area, pixel_size_um: float | None) -> np.ndarray:
    """(N,) int64: the curve bin of each area's ECD (bin i holds ``CURVE_EDGES[i] <= ECD < CURVE_EDGES[i+1]``;
    sizes outside the range go to the first or last bin)."""
    index = np.searchsorted(CURVE_EDGES, ecd(area, pixel_size_um), side="right") - 1
    return np.clip(index, 0, len(CURVE_EDGES) - 2)


def binned_passing_size(bins: np.ndarray, percent: float) -> float | None:
    """The upper edge of the first curve bin at which the cumulative share of ``bins`` (weights per bin)
    reaches ``percent``: the sieve reading of a binned curve (at most one bin, 26 %, above the exact size)."""
    total = float(np.sum(bins))
    if total <= 0:
        return None
    cumulative = np.cumsum(bins) * 100.0 / total
    return float(CURVE_EDGES[1 + min(int(np.searchsorted(cumulative, percent - 1e-9)), len(bins) - 1)])
