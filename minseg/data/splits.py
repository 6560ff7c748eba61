"""Train / val / test assignment by source image (tiles of one image never straddle
splits), deterministic by seed; explicit lists; or k folds for cross-validation."""

from __future__ import annotations

from dataclasses import dataclass

import hashlib
import json

import numpy as np

from minseg.data.config import SplitSettings
from minseg.enums import SplitGroup
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


def twin_scenes(source_ids) -> dict[str, list[str]]:
    """Scenes (an image's name below its source: ``source_id`` without the source prefix) that more than one
    source holds, with their source ids: PPL and XPL photographs given as two sources, one stem in two datasets."""
    by_scene: dict[str, set[str]] = {}
    for source_id in source_ids:
        by_scene.setdefault(source_id.split("/", 1)[-1], set()).add(source_id)
    return {scene: sorted(ids) for scene, ids in by_scene.items() if len(ids) > 1}


def split_groups(source_ids, group_by: SplitGroup) -> dict[str, str]:
    """source_id -> the group its split is chosen by: itself, or with ``group_by: scene`` its scene, shared by
    the images of one scene in several sources (a scene in one source only keeps its own id, so its split
    does not move)."""
    source_ids = set(source_ids)
    groups = {source_id: source_id for source_id in source_ids}
    if SplitGroup(group_by) is SplitGroup.SCENE:
        for scene, ids in twin_scenes(source_ids).items():
            groups.update({source_id: f"scene:{scene}" for source_id in ids})
    return groups


def assign_splits(items: list[dict], settings: SplitSettings, seed: int,
                  lists: dict[str, set[str]] | None = None) -> dict[str, str]:
    """source_id -> split name, chosen per group (``split_groups``: per image, or per scene).

    Precedence: explicit ``lists`` (item stems or ids) > splits named by the layout
    (VOC ImageSets, COCO folders) when ``use_layout_lists`` > seeded ratios. Sources
    not covered by lists/layout are spread by the ratios.

    Raises:
        InputError: a bare name in a list matches images of several groups (the candidates are named: list one
            by its full id, or group by scene); one group is listed, or named by its layout, in two splits.
    """
    groups = split_groups((item["source_id"] for item in items), settings.group_by)
    sources = sorted(set(groups.values()))
    members: dict[str, set[str]] = {}
    for source_id, group in groups.items():
        members.setdefault(group, set()).add(source_id)
    assigned: dict[str, str] = {}

    def assign(group: str, split: str, how: str) -> None:
        if assigned.get(group, split) != split:
            raise InputError(f"{how}: {', '.join(sorted(members[group]))} would be in both {assigned[group]} and "
                             f"{split}: trained on and scored at once; name it in one split")
        assigned[group] = split

    if lists:
        index: dict[str, set[str]] = {}
        for item in items:
            group = groups[item["source_id"]]
            for key in (item["item_id"], item["source_id"], item["source_id"].split("/", 1)[-1]):
                index.setdefault(key, set()).add(group)
        for split, names in sorted(lists.items()):
            for name in sorted(names):
                matched = index.get(name, set())
                if len(matched) > 1:
                    candidates = sorted(i for group in matched for i in members[group])
                    raise InputError(f"data.split.lists.{split}: {name!r} matches images of {len(matched)} sources "
                                     f"({', '.join(candidates)}); list one by its full id, or set "
                                     "data.split.group_by: scene when they are one scene")
                for group in matched:
                    assign(group, split, "data.split.lists")
    elif settings.use_layout_lists:
        for item in items:
            if item.get("layout_split"):
                assign(groups[item["source_id"]], item["layout_split"], "the splits the layouts name")
    remaining = [s for s in sources if s not in assigned]
    if not lists and assigned and remaining == [] and "val" not in assigned.values() and settings.val > 0:
        # the layout named train/test only: carve val out of train by the configured share
        train = _shuffled([s for s, split in assigned.items() if split == "train"], seed)
        take = max(1, round(len(train) * settings.val / (settings.train + settings.val))) if len(train) > 1 else 0
        for source in train[:take]:
            assigned[source] = "val"
    elif not lists:
        ratios = (settings.train, settings.val, settings.test)
        counts = split_counts(len(remaining), ratios)
        order = _shuffled(remaining, seed)
        start = 0
        for split, count in zip(SPLITS, counts):
            for source in order[start : start + count]:
                assigned[source] = split
            start += count
    # explicit lists are the whole truth: unlisted items are left out
    return {source_id: assigned[group] for source_id, group in groups.items() if group in assigned}


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


def kfold_assignments(source_ids: list[str], folds: int, seed: int, val_share: float = 0.1,
                      group_by: SplitGroup = SplitGroup.IMAGE) -> list[Fold]:
    """k disjoint test folds over the given sources' groups (``split_groups``: with ``group_by: scene`` a
    scene's images stay in one part); in each fold, ``val_share`` of the remaining groups (at least one) is held
    out to choose checkpoints (the microplastic paper: 72/8/20).

    Raises:
        ValueError: fewer than k groups, or too few to leave a training and a validation part.
    """
    groups = split_groups(source_ids, group_by)
    members: dict[str, set[str]] = {}
    for source_id, group in groups.items():
        members.setdefault(group, set()).add(source_id)
    scene_folds = _kfold(sorted(members), folds, seed, val_share)
    return [Fold(f.index, *(frozenset(i for g in part for i in members[g]) for part in (f.train, f.val, f.test)))
            for f in scene_folds]


def _kfold(source_ids: list[str], folds: int, seed: int, val_share: float) -> list[Fold]:
    if len(source_ids) < folds:
        raise InputError(f"data.split.folds: {folds}-fold cross-validation needs at least {folds} source images "
                         f"(scenes) in train + val, got {len(source_ids)}")
    order = _shuffled(sorted(source_ids), seed)
    result = []
    for k in range(folds):
        test = order[k::folds]
        rest = _shuffled([s for s in order if s not in set(test)], seed + 1 + k)
        if len(rest) < 2:
            raise InputError(f"data.split.folds: {folds}-fold cross-validation over {len(source_ids)} source images "
                             f"(scenes) leaves fold {k + 1} no training and validation part (data.split.fold_val); "
                             "use fewer folds")
        take = min(len(rest) - 1, max(1, round(val_share * len(rest))))
        result.append(Fold(k, frozenset(rest[take:]), frozenset(rest[:take]), frozenset(test)))
    return result
