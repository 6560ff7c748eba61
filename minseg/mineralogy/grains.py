"""Grain statistics of one class: counts, sizes, equivalent circle diameters, from the grain-area
histogram ``merge.GrainMerger`` gives (exactly what the list of every grain's area gives)."""

from __future__ import annotations

import numpy as np

from minseg.mineralogy.sizes import ecd, passing_size


def grain_statistics(areas: np.ndarray, counts: np.ndarray, min_grain_px: int, pixel_size_um: float | None) -> dict:
    """Count and size distribution of one class's grains; components below ``min_grain_px`` are noise.

    Args:
        areas: (A,) int, distinct grain areas in pixels, ascending.
        counts: (A,) int, how many grains have each area.
        pixel_size_um: µm per pixel; adds areas in µm² and equivalent circle diameters
            (ECD = 2·sqrt(area / π), ``sizes.ecd``) in µm.

    Returns:
        ``count`` and ``noise_components`` (grains kept and left out); with grains kept, ``mean_area_px``,
        ``median_area_px``, ``p10_area_px``, ``p90_area_px`` (float, px), ``max_area_px`` (int),
        ``histogram_log2_px``, and with a pixel size ``mean_area_um2``, ``mean_ecd_um``, ``median_ecd_um``.

    Medians and percentiles follow the sieve convention of ``sizes.passing_size``, as D10 / D50 / P80 do: the
    smallest area at which the grains counted one by one reach the percentage (no interpolation), so
    ``median_ecd_um`` is the ECD of ``median_area_px`` and equals ``size.number.d50`` (before its rounding to
    3 decimals).
    """
    areas, counts = np.asarray(areas, np.int64), np.asarray(counts, np.int64)
    keep = areas >= min_grain_px
    values, weights = areas[keep], counts[keep]
    total = int(weights.sum())
    stats: dict = {"count": total, "noise_components": int(counts[~keep].sum())}
    if total:
        stats.update(
            mean_area_px=float((values * weights).sum() / total),
            median_area_px=passing_size(values, weights, 50.0), p10_area_px=passing_size(values, weights, 10.0),
            p90_area_px=passing_size(values, weights, 90.0), max_area_px=int(values[-1]),
            # log2 size classes: bin k counts grains of 2^k <= area < 2^(k+1) pixels
            histogram_log2_px=np.bincount(np.log2(values).astype(np.int64), weights=weights).astype(np.int64).tolist(),
        )
        if pixel_size_um:
            diameters = ecd(values, pixel_size_um)
            stats.update(mean_area_um2=float((values * weights).sum() / total * pixel_size_um**2),
                         mean_ecd_um=float((diameters * weights).sum() / total),
                         median_ecd_um=passing_size(diameters, weights, 50.0))
    return stats
