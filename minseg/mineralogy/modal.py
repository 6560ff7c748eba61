"""Modal mineralogy: each mineral's share of a sample by area and by weight.

Area % is the mineral's pixels over the sample's pixels (background classes — mounting resin, pores —
excluded), the 2D estimate of volume % by the Delesse principle. Weight % weights each mineral's area by
its density: wt%_m = A_m ρ_m / Σ_k A_k ρ_k (the usual automated-mineralogy conversion, e.g. QEMSCAN /
MLA reports; Fandrich et al. 2007, Int. J. Miner. Process. 84).
"""

from __future__ import annotations

import numpy as np

# g/cm³ from the Handbook of Mineralogy (Anthony, Bideaux, Bladh & Nichols): within its measured range,
# its calculated density where it gives one (e.g. pyrite 5.01), for the classes of the seed papers and
# common ore minerals. "gangue" is taken as quartz; set the real gangue's density in config otherwise.
DEFAULT_DENSITIES: dict[str, float] = {
    "pyrite": 5.01, "chalcopyrite": 4.19, "bornite": 5.07, "galena": 7.58, "sphalerite": 4.05,
    "magnetite": 5.18, "pyrrhotite": 4.61, "pentlandite": 4.8, "tennantite": 4.62, "quartz": 2.65,
    "gangue": 2.65, "hematite": 5.26, "ilmenite": 4.72, "arsenopyrite": 6.07, "covellite": 4.68,
    "chalcocite": 5.65, "molybdenite": 4.7, "cassiterite": 6.99, "gold": 19.3,
}

#: the ore sulphides among those: the "main sulphide" of a headline is the most abundant of them present
SULPHIDES = frozenset({"pyrite", "chalcopyrite", "bornite", "galena", "sphalerite", "pyrrhotite", "pentlandite",
                       "tennantite", "arsenopyrite", "covellite", "chalcocite", "molybdenite"})


def modal_mineralogy(class_pixels: np.ndarray, names: list[str], background: set[str],
                     densities: dict[str, float]) -> tuple[dict, list[str]]:
    """Area % and weight % per class.

    Args:
        class_pixels: (C,) pixels per class id.
        names: C class names.
        background: names of the classes that are not sample (resin, pores); they get area % of the image
            only, no sample or weight %.
        densities: g/cm³ by class name (defaults merged with config).

    Returns:
        (table, missing): table by class name with ``pixels``, ``area_percent`` (of the image),
        ``sample_area_percent`` and ``weight_percent`` (of the sample; None for every class when the image holds
        no sample pixel, and weight % also when a mineral present has no density); ``missing``: minerals present
        without a density.
    """
    pixels = np.asarray(class_pixels, np.int64)
    image = max(1, int(pixels.sum()))
    sample = [i for i, n in enumerate(names) if n not in background]
    sample_pixels = int(pixels[sample].sum()) if sample else 0  # 0: no sample, so no share of it (None, not 0 %)
    missing = [names[i] for i in sample if pixels[i] and names[i] not in densities]
    mass = {i: pixels[i] * densities.get(names[i], 0.0) for i in sample}
    total_mass = sum(mass.values())
    table = {}
    for i, name in enumerate(names):
        entry = {"pixels": int(pixels[i]), "area_percent": round(100.0 * pixels[i] / image, 4)}
        if i in mass:
            entry["sample_area_percent"] = round(100.0 * pixels[i] / sample_pixels, 4) if sample_pixels else None
            entry["weight_percent"] = None if missing or not total_mass else round(100.0 * mass[i] / total_mass, 4)
        table[name] = entry
    return table, missing
