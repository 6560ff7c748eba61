"""Grain statistics of one class: counts, sizes, equivalent circle diameters, from the grain-area
histogram ``merge.GrainMerger`` gives (exactly what the list of every grain's area gives)."""

from __future__ import annotations

import numpy as np


def grain_statistics(areas: np.ndarray, counts: np.ndarray, min_grain_px: int, pixel_size_um: float | None) -> dict:
    """Count and size distribution of one class's grains; components below ``min_grain_px`` are noise.

    Args:
        areas: (A,) int, distinct grain areas in pixels, ascending.
        counts: (A,) int, how many grains have each area.
        pixel_size_um: µm per pixel; adds areas in µm² and equivalent circle diameters
            (ECD = 2·sqrt(area / π)) in µm.

    Percentiles and medians are numpy's default (linear between the two nearest ranks) over the
    grains as if listed one by one.
    """
    areas, counts = np.asarray(areas, np.int64), np.asarray(counts, np.int64)
    keep = areas >= min_grain_px
    values, weights = areas[keep], counts[keep]
    total = int(weights.sum())
    stats: dict = {"count": total, "noise_components": int(counts[~keep].sum())}
    if total:
        ranked = np.cumsum(weights)

        def percentile(q: float, transform=lambda a: a.astype(np.float64)) -> float:
            position = (total - 1) * q / 100.0
            low, high = int(np.floor(position)), int(np.ceil(position))
            at = transform(values[np.searchsorted(ranked, [low, high], side="right")])
            return float(at[0] + (at[1] - at[0]) * (position - low))

        stats.update(
            mean_area_px=float((values * weights).sum() / total), median_area_px=percentile(50),
            p10_area_px=percentile(10), p90_area_px=percentile(90), max_area_px=int(values[-1]),
            # log2 size classes: bin k counts grains of 2^k <= area < 2^(k+1) pixels
            histogram_log2_px=np.bincount(np.log2(values).astype(np.int64), weights=weights).astype(np.int64).tolist(),
        )
        if pixel_size_um:
            def ecd(area: np.ndarray) -> np.ndarray:
                return 2.0 * np.sqrt(area * pixel_size_um**2 / np.pi)

            stats.update(mean_area_um2=float((values * weights).sum() / total * pixel_size_um**2),
                         mean_ecd_um=float((ecd(values) * weights).sum() / total),
                         median_ecd_um=percentile(50, ecd))
    return stats
