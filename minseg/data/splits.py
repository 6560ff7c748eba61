"""Train / val / test assignment by source image (tiles of one image never straddle
splits), deterministic by seed; explicit lists; or k folds for cross-validation."""

from __future__ import annotations

from dataclasses import dataclass

import hashlib
import json

import numpy as np

from minseg.data.config import SplitSettings
from minseg.errors import InputError

SPLITS = ("train", "val", "test")


def _shuffled(ids: list[str], seed: int) -> list[str]:
    # order by a seeded hash: stable whatever order the sources were listed in
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def split_counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Whole-image counts per split; every split with a ratio > 0 gets at least one image when n allows."""
    raw = np.array(ratios) * n
    counts = np.floor(raw).astype(int)
    for index in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[index] += 1
    for index in range(3):
        if ratios[index] > 0 and counts[index] == 0 and n >= sum(r > 0 for r in ratios):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[index] += 1
    return tuple(int(c) for c in counts)


def assign_splits(items: list[dict], settings: SplitSettings, seed: int, lists: dict[str, set[str]] | None = None) -> dict[str, str]:
    """source_id -> split name.

    Precedence: explicit ``lists`` (item stems or ids) > splits named by the layout
    (VOC ImageSets, COCO folders) when ``use_layout_lists`` > seeded ratios. Sources
    not covered by lists/layout are spread by the ratios.
    """
    sources = sorted({item["source_id"] for item in items})
    assigned: dict[str, str] = {}
    if lists:
        for item in items:
            stem = item["source_id"].split("/", 1)[-1]
            for split, names in lists.items():
                if item["source_id"] in names or stem in names or item["item_id"] in names:
                    assigned[item["source_id"]] = split
    elif settings.use_layout_lists:
        for item in items:
            if item.get("layout_split"):
                assigned.setdefault(item["source_id"], item["layout_split"])
    remaining = [s for s in sources if s not in assigned]
    if lists:
        return assigned  # explicit lists are the whole truth: unlisted items are left out
    if assigned and remaining == [] and "val" not in assigned.values() and settings.val > 0:
        # the layout named train/test only: carve val out of train by the configured share
        train = _shuffled([s for s, split in assigned.items() if split == "train"], seed)
        take = max(1, round(len(train) * settings.val / (settings.train + settings.val))) if len(train) > 1 else 0
        for source in train[:take]:
            assigned[source] = "val"
        return assigned
    ratios = (settings.train, settings.val, settings.test)
    counts = split_counts(len(remaining), ratios)
    order = _shuffled(remaining, seed)
    start = 0
    for split, count in zip(SPLITS, counts):
        for source in order[start : start + count]:
            assigned[source] = split
        start += count
    return assigned


@dataclass(frozen=True)
class Fold:
    """One fold of k-fold cross-validation, by source image: ``test`` is never seen in training
    (it is what the fold reports), ``val`` chooses the checkpoint, ``train`` is the rest."""

    index: int
    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]

    def signature(self) -> str:
        """Identifies the fold's assignment: a resumed trial must see the same one."""
        text = json.dumps([sorted(self.train), sorted(self.val), sorted(self.test)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def kfold_assignments(source_ids: list[str], folds: int, seed: int, val_share: float = 0.1) -> list[Fold]:
    """k disjoint test folds over the given sources; in each fold, ``val_share`` of the remaining
    sources (at least one) is held out to choose checkpoints (the microplastic paper: 72/8/20).

    Raises:
        ValueError: fewer than k sources, or too few to leave a training and a validation part.
    """
    if len(source_ids) < folds:
        raise InputError(f"data.split.folds: {folds}-fold cross-validation needs at least {folds} source images "
                         f"in train + val, got {len(source_ids)}")
    order = _shuffled(sorted(source_ids), seed)
    result = []
    for k in range(folds):
        test = order[k::folds]
        rest = _shuffled([s for s in order if s not in set(test)], seed + 1 + k)
        if len(rest) < 2:
            raise InputError(f"data.split.folds: {folds}-fold cross-validation over {len(source_ids)} source images "
                             f"leaves fold {k + 1} no training and validation part (data.split.fold_val); use fewer folds")
        take = min(len(rest) - 1, max(1, round(val_share * len(rest))))
        result.append(Fold(k, frozenset(rest[take:]), frozenset(rest[:take]), frozenset(test)))
    return result
