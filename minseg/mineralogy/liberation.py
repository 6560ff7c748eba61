"""Mineral liberation: how much of each mineral sits in particles where it is alone, or nearly.

A **particle** is a connected region of sample (non-background) pixels; its composition is the area of each
mineral in it. A mineral's **liberation class** in a particle is the mineral's share of the particle's
area (2D, by area: the "areal liberation" of QEMSCAN / MLA reports; Gaudin 1939, *Principles of Mineral
Dressing*; Fandrich et al. 2007, Int. J. Miner. Process. 84). The mineral's liberation distribution is its
area summed per class: by default 0-10 %, 10-20 %, …, 90-<100 % and 100 % (fully liberated). The
**cumulative liberation yield** at x % is the share of the mineral's area in particles where its share is
at least x %.
"""

from __future__ import annotations

import numpy as np

DEFAULT_EDGES = tuple(range(0, 100, 10))  # lower edges of the partial classes, %; 100 % is its own class


def liberation_classes(edges: tuple[int, ...] = DEFAULT_EDGES) -> list[str]:
    """Names of the classes: '0-10', …, '90-<100', '100'."""
    uppers = list(edges[1:]) + [100]
    names = [f"{low}-{high}" for low, high in zip(edges, uppers)]
    names[-1] = f"{edges[-1]}-<100"
    return names + ["100"]


def accumulate(compositions: np.ndarray, sample: np.ndarray, edges: tuple[int, ...] = DEFAULT_EDGES) -> np.ndarray:
    """Area of each class per liberation class over a set of particles.

    Args:
        compositions: (P, C) int64 pixels of each class in each particle.
        sample: (C,) bool, the classes that are sample (background classes are never in a particle).
        edges: lower edges (%) of the partial liberation classes, ascending from 0.

    Returns:
        (C, len(edges) + 1) int64: row m is mineral m's pixels in particles where its area share falls in each
        class (the last column: share exactly 100 %); rows of background classes are zero.
    """
    compositions = np.asarray(compositions, np.int64)
    table = np.zeros((len(sample), len(edges) + 1), np.int64)
    if not len(compositions):
        return table
    totals = compositions[:, sample].sum(axis=1)
    for m in np.flatnonzero(sample):
        present = compositions[:, m] > 0
        area, total = compositions[present, m], totals[present]
        # class index by exact integer arithmetic: share >= edge  <=>  100 * area >= edge * total
        index = (100 * area[:, None] >= np.asarray(edges)[None, :] * total[:, None]).sum(axis=1) - 1
        index = np.where(area == total, len(edges), index)
        table[m] = np.bincount(index, weights=area, minlength=len(edges) + 1).astype(np.int64)
    return table


def accumulate_by_size(compositions: np.ndarray, sample: np.ndarray, fraction: np.ndarray, fractions: int,
                       edges: tuple[int, ...] = DEFAULT_EDGES) -> np.ndarray:
    """:func:`accumulate` per size fraction: (fractions, C, len(edges) + 1) int64, ``fraction`` (P,) giving each
    particle's fraction index (``sizes.size_fraction``)."""
    table = np.zeros((fractions, len(sample), len(edges) + 1), np.int64)
    for index in np.unique(fraction):
        table[index] = accumulate(compositions[fraction == index], sample, edges)
    return table


def liberation_table(table: np.ndarray, names: list[str], sample: np.ndarray,
                     edges: tuple[int, ...] = DEFAULT_EDGES) -> dict:
    """Per mineral: its area % in each liberation class and the cumulative yield (% of its area with a share
    of at least each lower edge, and at 100 %). A mineral with no area in particles (absent, or only in noise)
    has no liberation: every percentage is None (0 % would read as "all locked" and pull averages down)."""
    labels = liberation_classes(edges)
    result = {}
    for m, name in enumerate(names):
        if not sample[m]:
            continue
        total = int(table[m].sum())
        percent = 100.0 * table[m] / total if total else np.full(len(labels), np.nan)
        cumulative = np.cumsum(percent[::-1])[::-1]  # at least this class
        result[name] = {
            "pixels": total,
            "classes_pct": {label: _percent(p) for label, p in zip(labels, percent)},
            "yield_pct": {f">={low}": _percent(c) for low, c in zip(list(edges) + [100], cumulative)},
            "liberated_pct": _percent(percent[-1]),
        }
    return result


def _percent(value: float) -> float | None:
    """A percentage as the documents hold it: 4 decimals, None where there is none (NaN)."""
    return None if np.isnan(value) else round(float(value), 4)
