"""Grain statistics of one class: counts, sizes, equivalent circle diameters (grains from
``components.merge_components``)."""

from __future__ import annotations

import numpy as np


def grain_statistics(areas: np.ndarray, min_grain_px: int, pixel_size_um: float | None) -> dict:
    """Count and size distribution of one class's grains (components below ``min_grain_px`` are noise)."""
    grains = areas[areas >= min_grain_px]
    stats: dict = {"count": int(grains.size), "noise_components": int(areas.size - grains.size)}
    if grains.size:
        stats.update(
            mean_area_px=float(grains.mean()), median_area_px=float(np.median(grains)),
            p10_area_px=float(np.percentile(grains, 10)), p90_area_px=float(np.percentile(grains, 90)),
            max_area_px=int(grains.max()),
            # log2 size classes: bin k counts grains of 2^k <= area < 2^(k+1) pixels
            histogram_log2_px=np.bincount(np.log2(grains).astype(np.int64)).tolist(),
        )
        if pixel_size_um:
            diameters = 2.0 * np.sqrt(grains * pixel_size_um**2 / np.pi)
            stats.update(mean_area_um2=float(grains.mean() * pixel_size_um**2),
                         mean_ecd_um=float(diameters.mean()), median_ecd_um=float(np.median(diameters)))
    return stats
