"""The nine classes of the Res-UNet ensemble paper and how they look under reflected light.

Reflectance colours put the paper's hard cases in: gangue is dark like the mounting resin
(background) and sphalerite is grey like magnetite. They stay separable the way they are under
a real ore microscope, by cues that survive JPEG compression: the epoxy is darker and smooth
(LumenStone's background splits into resin at grey ~12-45 with local 5x5 std 1-3 and gangue at
~45-90 with std 3-5), gangue is mottled with pits and bright internal reflections, sphalerite
shows yellow-brown internal reflections and magnetite is a little brighter with a brownish
tint. Grain weights follow the spirit of the paper's particle counts (magnetite 11,160 ...
pyrrhotite 216).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mineral:
    name: str
    class_id: int
    palette: tuple[int, int, int]  # colour for masks / overlays
    reflectance: tuple[int, int, int]  # mean RGB under reflected light
    texture: float  # amplitude of the grain's internal texture, grey levels
    grain_weight: float  # relative number of grains (0: not a grain class)
    radius_px: tuple[float, float]  # grain radius range before grain_scale
    layer: int = 1  # lower layers are painted first (gangue under ore minerals)
    mottle: float = 0.0  # amplitude of coarse (~15 px) brightness variation, grey levels
    reflections: float = 0.0  # share of the area in bright internal-reflection spots (transparent minerals)
    reflection_rgb: tuple[int, int, int] = (0, 0, 0)  # what an internal reflection adds at its centre
    pits: float = 0.0  # share of the area in dark polishing pits


MINERALS: tuple[Mineral, ...] = (
    Mineral("background", 0, (0, 0, 0), (24, 25, 29), 1.0, 0, (0, 0), layer=0),
    Mineral("pyrite", 1, (255, 230, 60), (226, 218, 168), 4.0, 1600, (8, 40), pits=0.01),
    Mineral("galena", 2, (200, 200, 255), (222, 224, 230), 3.0, 900, (6, 34), pits=0.02),
    Mineral("sphalerite", 3, (120, 60, 160), (98, 99, 104), 5.0, 1200, (10, 46), mottle=4.0, reflections=0.03,
            reflection_rgb=(70, 48, 12)),
    Mineral("chalcopyrite", 4, (255, 140, 0), (214, 192, 86), 4.0, 1000, (5, 30)),
    Mineral("bornite", 5, (220, 40, 120), (176, 118, 98), 5.0, 380, (6, 28)),
    Mineral("magnetite", 6, (40, 90, 220), (122, 114, 112), 3.0, 11160, (2, 9)),
    Mineral("pyrrhotite", 7, (160, 110, 60), (206, 176, 138), 4.0, 216, (16, 52)),
    Mineral("gangue", 8, (60, 180, 75), (60, 60, 58), 5.0, 1500, (40, 120), layer=0, mottle=10.0,
            reflections=0.04, reflection_rgb=(64, 62, 52), pits=0.03),
)

CLASS_NAMES: tuple[str, ...] = tuple(m.name for m in MINERALS)
PALETTE = np.array([m.palette for m in MINERALS], dtype=np.uint8)
REFLECTANCE = np.array([m.reflectance for m in MINERALS], dtype=np.float32)
TEXTURE = np.array([m.texture for m in MINERALS], dtype=np.float32)
MOTTLE = np.array([m.mottle for m in MINERALS], dtype=np.float32)
REFLECTIONS = np.array([m.reflections for m in MINERALS], dtype=np.float32)
REFLECTION_RGB = np.array([m.reflection_rgb for m in MINERALS], dtype=np.float32)
PITS = np.array([m.pits for m in MINERALS], dtype=np.float32)
GRAIN_CLASSES = np.array([m.class_id for m in MINERALS if m.grain_weight > 0])
GRAIN_PROBABILITIES = np.array([m.grain_weight for m in MINERALS if m.grain_weight > 0], dtype=np.float64)
GRAIN_PROBABILITIES /= GRAIN_PROBABILITIES.sum()


def class_map_document() -> dict:
    """The class map written beside synthetic data (names, colours, mask codes): its ``classes`` list is a
    ``data.classes`` as a config gives it (``{name, codes, color}`` in id order; ``id`` for readers)."""
    return {
        "classes": [
            {"id": m.class_id, "name": m.name, "codes": [m.class_id], "color": list(m.palette)} for m in MINERALS
        ],
        "ignore_index": 255,
        "source": "minseg synthetic polished sections (Res-UNet ensemble paper classes)",
    }
