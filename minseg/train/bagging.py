"""Bagging: each ensemble member trains on its own random sample of the training units.

Breiman, "Bagging predictors", Machine Learning 24 (1996) 123-140: members fitted to bootstrap samples of the
training set (drawn with replacement, as many as there are units) make less alike errors than members fitted to the
same data, and their vote gains from it. ``training.members[].bagging`` draws the sample per member (and per k-fold
trial) from the member's seed; ``fraction`` < 1 draws fewer units, ``replacement: false`` a subsample.

The unit is what the split keeps together: a source image (all tiles of a photograph, its channels) for image
members, a labelled window for prospectivity members; tiles of one photograph are too alike to count as separate
draws. A draw that leaves out a class some unit shows is repaired, so every member sees every class: a unit that
shows the missing class takes the place of one drawn slot, without losing a class the draw showed. Drawing again
until a sample happens to show every class fails often when a rare class sits in one or two units, and conditions
the sample on those units more than the repair does (a unit of a class no other unit shows is in every sample either
way: there is no class-covering sample without it).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from minseg.errors import InputError
from minseg.train.config import BaggingSettings, MemberSettings


def bagging_seed(member: MemberSettings, run_seed: int, fold: int | None) -> list[int]:
    """The generator seed of one member's sample on one trial: its seed (or the run's), its name and the fold, so
    members with the same seed still draw apart and a resumed trial draws the same sample."""
    seed = member.training_seed(run_seed)
    return [seed & 0xFFFFFFFF, zlib.crc32(member.name.encode()), 0 if fold is None else fold + 1]


def bagging_counts(classes_of: Sequence[set[int]], settings: BaggingSettings, seed: list[int] | int,
                   class_names: Sequence[str] = (), what: str = "training units") -> np.ndarray:
    """How many times each training unit is drawn for one member (int64, shape ``(len(classes_of),)``).

    ``round(fraction * units)`` draws (at least one), with or without replacement; the counts sum to the draws. A draw
    that shows every class the units show is returned as drawn. Otherwise it is repaired one slot at a time, for the
    lowest class it leaves out: a unit showing that class (not yet drawn, when drawing without replacement) takes the
    place of a drawn slot whose loss the newcomer makes good (a second copy of a unit, or a unit whose classes the
    rest of the draw or the newcomer show). Among the newcomers that have such a slot, one that shows the most classes
    still left out is picked uniformly; the slot it replaces, in proportion to copies. Each repair shows at least one
    more class and loses none, so there are at most as many repairs as classes.

    Args:
        classes_of: for each unit, the class ids it shows (pixels > 0 of a photograph, a window's label).
        settings: ``fraction`` and ``replacement``.
        seed: the generator seed (``bagging_seed``).
        class_names: names of the class ids, for the error.
        what: what a unit is, for the error ("source images", "windows").

    Raises:
        InputError: no units; or the repair is stuck (every slot is the only one showing a class, as in a draw
            too small for the classes: a low ``fraction``; the classes left out are named). The repair is greedy:
            it can be stuck where moving two slots at once would succeed.
    """
    units = len(classes_of)
    if units == 0:
        raise InputError(f"bagging: no {what} to draw from")
    draws = max(1, round(settings.fraction * units))
    needed = set().union(*classes_of)
    rng = np.random.default_rng(seed)
    counts = np.bincount(rng.choice(units, size=draws, replace=settings.replacement), minlength=units).astype(np.int64)
    while True:
        drawn = np.flatnonzero(counts)
        shown = Counter(c for i in drawn for c in classes_of[i])  # class -> drawn units showing it
        missing = needed - shown.keys()
        if not missing:
            return counts
        # what each drawn unit alone shows: its slot can go if a copy stays or the newcomer shows those classes
        alone = {i: frozenset(c for c in classes_of[i] if shown[c] == 1) for i in drawn if counts[i] == 1}
        takers: dict[frozenset, list[int]] = {}
        for t in range(units):
            if min(missing) in classes_of[t] and (settings.replacement or not counts[t]):
                takers.setdefault(frozenset(classes_of[t]), []).append(t)
        options = []  # (classes still left out it shows, newcomers, the slots they can take)
        for showing, newcomers in takers.items():
            givers = [i for i in drawn if i not in alone or alone[i] <= showing]
            if givers:
                options.append((len(showing & missing), newcomers, givers))
        if not options:
            names = ", ".join(class_names[c] if c < len(class_names) else str(c) for c in sorted(missing))
            raise InputError(f"bagging: the draw of {draws} of the {units} {what} (bagging.fraction "
                             f"{settings.fraction}) leaves out {names}, and no slot of it can go to a unit showing "
                             f"{'it' if len(missing) == 1 else 'them'} without losing another class; raise "
                             "bagging.fraction")
        most = max(gain for gain, _, _ in options)
        best = [(t, givers) for gain, newcomers, givers in options if gain == most for t in newcomers]
        taker, givers = best[rng.integers(len(best))]
        counts[rng.choice(givers, p=counts[givers] / counts[givers].sum())] -= 1
        counts[taker] += 1
