"""Bagging: each ensemble member trains on its own random sample of the training units.

Breiman, "Bagging predictors", Machine Learning 24 (1996) 123-140: members fitted to bootstrap samples of the
training set (drawn with replacement, as many as there are units) make less alike errors than members fitted to the
same data, and their vote gains from it. ``training.members[].bagging`` draws the sample per member (and per k-fold
trial) from the member's seed; ``fraction`` < 1 draws fewer units, ``replacement: false`` a subsample.

The unit is what the split keeps together: a source image (all tiles of a photograph, its channels) for image
members, a labelled window for prospectivity members; tiles of one photograph are too alike to count as separate
draws. A draw that leaves out a class some unit shows is drawn again, so every member sees every class.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from minseg.errors import InputError
from minseg.train.config import BaggingSettings, MemberSettings

ATTEMPTS = 100  # draws tried before a class-covering sample is declared out of reach


def bagging_seed(member: MemberSettings, run_seed: int, fold: int | None) -> list[int]:
    """The generator seed of one member's sample on one trial: its seed (or the run's), its name and the fold, so
    members with the same seed still draw apart and a resumed trial draws the same sample."""
    seed = member.seed if member.seed is not None else run_seed
    return [seed & 0xFFFFFFFF, zlib.crc32(member.name.encode()), 0 if fold is None else fold + 1]


def bagging_counts(classes_of: Sequence[set[int]], settings: BaggingSettings, seed: list[int] | int,
                   class_names: Sequence[str] = (), what: str = "training units") -> np.ndarray:
    """How many times each training unit is drawn for one member (int64, shape ``(len(classes_of),)``).

    ``round(fraction * units)`` draws (at least one), with or without replacement; the counts sum to the draws.

    Args:
        classes_of: for each unit, the class ids it shows (pixels > 0 of a photograph, a window's label).
        settings: ``fraction`` and ``replacement``.
        seed: the generator seed (``bagging_seed``).
        class_names: names of the class ids, for the error.
        what: what a unit is, for the error ("source images", "windows").

    Raises:
        InputError: no draw in ``ATTEMPTS`` shows every class the units show (too few units of a class for the
            fraction; name the classes).
    """
    units = len(classes_of)
    if units == 0:
        raise InputError(f"bagging: no {what} to draw from")
    draws = max(1, round(settings.fraction * units))
    needed = set().union(*classes_of)
    rng = np.random.default_rng(seed)
    missing: set[int] = set()
    for _ in range(ATTEMPTS):
        picked = rng.choice(units, size=draws, replace=settings.replacement)
        counts = np.bincount(picked, minlength=units).astype(np.int64)
        missing = needed - set().union(*(classes_of[i] for i in np.flatnonzero(counts)))
        if not missing:
            return counts
    names = ", ".join(class_names[c] if c < len(class_names) else str(c) for c in sorted(missing))
    raise InputError(f"bagging: no sample of {draws} of the {units} {what} in {ATTEMPTS} draws shows every class "
                     f"(left out: {names}); raise bagging.fraction or draw without it")
