"""Rare-class oversampling of training tiles by repeat factors.

Repeat factor sampling (Gupta, Dollár & Girshick, "LVIS: A Dataset for Large Vocabulary Instance
Segmentation", CVPR 2019, section 5.2), applied to segmentation tiles: with ``f_c`` the share of training
tiles that contain class ``c`` and ``t`` the threshold,

    r_c = max(1, sqrt(t / f_c))                  (class repeat factor)
    r(tile) = min(max_repeat, max_{c in tile} r_c)

so a tile holding a class found in fewer than ``t`` of the tiles is seen ``r(tile)`` times an epoch; tiles of
common classes only are seen once. Each copy is augmented independently by the training stream. The
fractional part of ``r`` is rounded stochastically, once per run with a seeded generator per image, so an
epoch's tile count is known before training starts (it sets the steps per epoch) and a resumed run repeats
the same tiles.
"""

from __future__ import annotations

import zlib

import numpy as np

from minseg.data.config import OversamplingSettings


def class_tile_counts(tile_classes: list[list[int]], num_classes: int) -> np.ndarray:
    """How many of the tiles show each class (int64, shape (num_classes,)).

    Args:
        tile_classes: for each tile, the class ids (0..num_classes-1) it contains.
        num_classes: classes in the class map.
    """
    counts = np.zeros(num_classes, np.int64)
    for classes in tile_classes:
        counts[list(classes)] += 1
    return counts


def class_repeat_factors(tile_classes: list[list[int]], num_classes: int, threshold: float) -> np.ndarray:
    """``r_c`` for every class (float64, shape (num_classes,)); 1.0 for a class in no tile.

    Args:
        tile_classes: for each training tile, the class ids (0..num_classes-1) it contains.
        num_classes: classes in the class map (the ignore index is never listed).
        threshold: ``t``, the tile share below which a class is oversampled (0 < t <= 1).
    """
    share = class_tile_counts(tile_classes, num_classes) / max(1, len(tile_classes))
    factors = np.ones(num_classes, np.float64)
    seen = share > 0
    factors[seen] = np.maximum(1.0, np.sqrt(threshold / share[seen]))
    return factors


def tile_repeats(tile_classes: dict[str, list[list[int]]], num_classes: int, settings: OversamplingSettings,
                 seed: int, times: dict[str, int] | None = None) -> tuple[dict[str, list[int]], np.ndarray]:
    """How many times each kept tile of each training item is emitted per epoch.

    Args:
        tile_classes: training item id -> the class ids each of its kept tiles shows, in tile-grid order
            (``PreparedData.tile_classes``).
        num_classes: classes in the class map.
        settings: the threshold and the cap on repeats.
        seed: the run's seed (the rounding of fractional repeats depends on it and on the item id only).
        times: item id -> how many times the item is in the training data (a bagged member's draws): its tiles
            count that often in the class shares ``f_c``; None: once each. The repeats returned are per copy.

    Returns:
        (item id -> repeats per tile (ints >= 1), the class repeat factors ``r_c``).
    """
    times = times or {}
    factors = class_repeat_factors([classes for item_id, tiles in tile_classes.items()
                                    for _ in range(times.get(item_id, 1)) for classes in tiles],
                                   num_classes, settings.threshold)
    repeats: dict[str, list[int]] = {}
    for item_id, tiles in tile_classes.items():
        wanted = [min(float(settings.max_repeat), max((factors[c] for c in classes), default=1.0))
                  for classes in tiles]
        rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(item_id.encode())])  # any int seed
        draws = rng.random(len(wanted))
        repeats[item_id] = [int(np.floor(r)) + int(u < r - np.floor(r)) for r, u in zip(wanted, draws)]
    return repeats, factors
