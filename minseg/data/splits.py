"""Train / val / test assignment by source image (tiles of one image never straddle
splits), deterministic by seed; explicit lists; or k folds for cross-validation.

Seeded splits and folds are a shuffle with exact counts, or (``stratify: classes``) iterative stratification
(Sechidis, Tsoumakas & Vlahavas 2011, "On the stratification of multi-label data", ECML PKDD; the
``iterative-stratification`` package) on what each image group shows: every class, and how much of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import hashlib
import json
import logging

import numpy as np

from minseg.data.config import SplitSettings
from minseg.enums import SplitGroup, SplitStratify
from minseg.errors import InputError
from minseg.logs import get_logger, log_event

log = get_logger("data.splits")

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


def class_strata(pixels: np.ndarray) -> np.ndarray:
    """What stratification balances, per image group: shows class c; and c's share of the group's labelled pixels
    reaches the first / second tertile of its share among the groups showing c (so that the images with much of a
    mineral are spread too, not only those with a few grains of it).

    Args:
        pixels: (groups, classes) labelled pixels per class (classification: 1 for the image's class).

    Returns:
        (groups, 3 · classes) bool.
    """
    pixels = np.asarray(pixels, np.float64)
    present = pixels > 0
    share = pixels / np.maximum(pixels.sum(axis=1, keepdims=True), 1)
    labels = [present]
    for quantile in (1 / 3, 2 / 3):
        floor = np.array([np.quantile(share[present[:, c], c], quantile) if present[:, c].any() else np.inf
                          for c in range(pixels.shape[1])])
        labels.append(present & (share >= floor))
    return np.hstack(labels)


def stratified_parts(pixels: np.ndarray, ratios, seed: int) -> np.ndarray:
    """Part index (0..len(ratios)-1) per image group, by iterative stratification on ``class_strata``: each part
    gets about its ratio of the groups showing each class, rarest classes first; then ``_fill_missing_classes``.
    Part sizes follow the ratios loosely (exact counts would undo the balance): in 3000 random trials of 8-60
    groups, within 2.4 groups of ratio x groups at the 99th percentile, 3.4 at most. A part with a ratio > 0 gets
    at least one group when there are enough (the first part, training, always), preferably one whose classes its
    part shows elsewhere too.

    Args:
        pixels: (groups, classes) labelled pixels per class, rows in the (seeded) order ties are broken by.
        ratios: each part's share, summing to 1.
        seed: breaks ties (deterministic).

    Returns:
        (groups,) int64.
    """
    from iterstrat.ml_stratifiers import IterativeStratification

    ratios = np.asarray(ratios, np.float64)
    if len(pixels) == 0:
        return np.zeros(0, np.int64)
    present = np.asarray(pixels) > 0
    parts = IterativeStratification(class_strata(pixels), ratios.copy(), np.random.RandomState(seed % 2**32))
    active = np.flatnonzero(ratios > 0)
    for part in active:
        if (parts == part).any():
            continue
        # the largest part gives a group, one it can spare if it has one; with fewer groups than parts only the
        # first (training) part may empty another: a model needs a training image more than a scored split
        counts = np.bincount(parts, minlength=len(ratios))
        donor = int(np.argmax(counts))
        if counts[donor] < 2 and part != active[0]:
            continue
        _give(present, parts, donor, part)
    _fill_missing_classes(present, parts, ratios)
    _train_on_every_class(present, parts, ratios)
    return parts


def _spares(present: np.ndarray, parts: np.ndarray, group: int, part: int) -> bool:
    """``part`` still shows every class ``group`` shows without it."""
    rest = present[(parts == part) & (np.arange(len(parts)) != group)].any(axis=0)
    return not (present[group] & ~rest).any()


def _give(present: np.ndarray, parts: np.ndarray, donor: int, receiver: int) -> None:
    """In place: ``donor`` gives ``receiver`` one group, the last it can spare (``_spares``), else its last."""
    groups = np.flatnonzero(parts == donor)
    spared = [g for g in groups if _spares(present, parts, g, donor)]
    parts[(spared or list(groups))[-1]] = receiver


def _cap_part_sizes(present: np.ndarray, parts: np.ndarray, count: int) -> None:
    """In place: the largest of ``count`` parts gives groups to the smallest until none holds more than
    ceil(n / count) + 1, or ceil(n / count) where one more would leave another part under two groups. Stratified
    folds of a few groups can be lopsided (4 groups, 2 folds: 3 / 1 leaves one fold no training and validation
    part); k-fold needs comparable folds more than a perfect class balance."""
    even = -(-len(parts) // count)
    cap = max(even, min(even + 1, len(parts) - 2))
    while True:
        counts = np.bincount(parts, minlength=count)
        if counts.max() <= cap:
            return
        _give(present, parts, int(np.argmax(counts)), int(np.argmin(counts)))


def _train_on_every_class(present: np.ndarray, parts: np.ndarray, ratios: np.ndarray) -> None:
    """In place: the part holding more than half the groups (training) gets a group of each class only other parts
    show (greedy stratification can put a class of one image in validation), and gives back a group it can spare,
    so a model never misses a class outright: an unlearnt class scores 0 wherever it is scored."""
    train = int(np.argmax(ratios))
    if ratios[train] <= 0.5:
        return
    for c in np.flatnonzero(present.any(axis=0) & ~present[parts == train].any(axis=0)):
        group = int(np.flatnonzero(present[:, c])[-1])
        donor = int(parts[group])
        parts[group] = train
        back = [g for g in np.flatnonzero(parts == train)
                if g != group and _spares(present, parts, g, train)]
        if back:
            parts[back[-1]] = donor
        elif not (parts == donor).any():  # a scored part keeps its one image: the class is warned as untrained
            parts[group] = donor


def _fill_missing_classes(present: np.ndarray, parts: np.ndarray, ratios: np.ndarray) -> None:
    """In place: a part with a share that lacks a class shown by at least one group per such part gets a group
    showing it from the part with most of them (or the next that can give one), and gives back a group it can
    spare. Greedy stratification can leave the gap: 4 groups showing a class, shares .7 / .15 / .15, go 3 / 1 / 0,
    filled 2 / 1 / 1. Limits: a part holding more than half the groups (training) keeps two groups showing the
    class (3 groups at .7 / .15 / .15 go 2 / 1 / 0: the model needs examples more than a second scored split does,
    and the preparation warns); no part loses a class it shows; a part with nothing to give back takes the group
    only while it stays within one group of its ratio."""
    active = np.flatnonzero(ratios > 0)
    ceiling = np.round(ratios * len(parts)) + 1
    for c in np.argsort(present.sum(axis=0), kind="stable"):  # rarest first
        holders = present[:, c]
        if holders.sum() < len(active):
            continue
        for part in active:
            if (holders & (parts == part)).any():
                continue
            counts = np.bincount(parts[holders], minlength=len(ratios))
            for donor in np.argsort(-counts, kind="stable"):  # the part holding most of the class first
                if counts[donor] <= (2 if ratios[donor] > 0.5 else 1):
                    continue
                movable = [g for g in np.flatnonzero(holders & (parts == donor))
                           if _spares(present, parts, g, donor)]
                if not movable:
                    continue
                parts[movable[-1]] = part
                back = [g for g in np.flatnonzero(parts == part)
                        if not present[g, c] and _spares(present, parts, g, part)]
                if back:
                    parts[back[-1]] = donor
                elif (parts == part).sum() > ceiling[part]:
                    parts[movable[-1]] = donor
                break


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


def _group_pixels(members: dict[str, set[str]], class_pixels: dict[str, list[int]] | None,
                  settings_stratify: SplitStratify) -> dict[str, np.ndarray] | None:
    """Labelled pixels per class of each group (its images summed), when splits are stratified."""
    if SplitStratify(settings_stratify) is SplitStratify.NONE:
        return None
    if class_pixels is None:
        raise ValueError("stratified splits need each source image's labelled pixels per class")
    return {group: np.sum([class_pixels[i] for i in ids], axis=0) for group, ids in members.items()}


def list_entry_key(name: str) -> str:
    """How a split list's entry is matched to an image's names (its id, source id, or the source id below its
    source's name) when none is the entry as written: an image file extension and case aside, as lists are typed or
    exported (``Section_01.PNG`` names ``section_01``)."""
    stem, dot, suffix = name.strip().rpartition(".")
    if dot and suffix.lower() in ("jpg", "jpeg", "png", "tif", "tiff", "bmp", "gif", "webp"):
        name = stem
    return name.strip().casefold()


def list_names_of(item: dict) -> tuple[str, str, str]:
    """The names a split list may give an item by: its id, its source id, and the source id below its source."""
    return item["item_id"], item["source_id"], item["source_id"].split("/", 1)[-1]


def unmatched_list_entries(items: list[dict], names: set[str]) -> list[str]:
    """The entries of a split list that name no item, as written nor :func:`list_entry_key` aside (sorted)."""
    known = {key for item in items for key in list_names_of(item)}
    loose = {list_entry_key(key) for key in known}
    return sorted(n for n in names if n not in known and list_entry_key(n) not in loose)


def assign_splits(items: list[dict], settings: SplitSettings, seed: int,
                  lists: dict[str, set[str]] | None = None,
                  class_pixels: dict[str, list[int]] | None = None) -> dict[str, str]:
    """source_id -> split name, chosen per group (``split_groups``: per image, or per scene).

    Precedence: explicit ``lists`` (item stems or ids) > splits named by the layout
    (VOC ImageSets, COCO folders) when ``use_layout_lists`` > seeded ratios. Sources
    not covered by lists/layout are spread by the ratios: shuffled, or with ``stratify: classes`` by
    ``stratified_parts`` on ``class_pixels`` (source_id -> labelled pixels per class, required then).

    Raises:
        InputError: a bare name in a list matches images of several groups (the candidates are named: list one
            by its full id, or group by scene); one group is listed, or named by its layout, in two splits.
    """
    groups = split_groups((item["source_id"] for item in items), settings.group_by)
    sources = sorted(set(groups.values()))
    members: dict[str, set[str]] = {}
    for source_id, group in groups.items():
        members.setdefault(group, set()).add(source_id)
    pixels = _group_pixels(members, class_pixels, settings.stratify)
    assigned: dict[str, str] = {}

    def assign(group: str, split: str, how: str) -> None:
        if assigned.get(group, split) != split:
            raise InputError(f"{how}: {', '.join(sorted(members[group]))} would be in both {assigned[group]} and "
                             f"{split}: trained on and scored at once; name it in one split")
        assigned[group] = split

    if lists:
        exact: dict[str, set[str]] = {}
        loose: dict[str, set[str]] = {}
        for item in items:
            group = groups[item["source_id"]]
            for key in list_names_of(item):
                exact.setdefault(key, set()).add(group)
                loose.setdefault(list_entry_key(key), set()).add(group)
        for split, names in sorted(lists.items()):
            for name in sorted(names):
                matched = exact.get(name) or loose.get(list_entry_key(name), set())
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
        val_share = settings.val / (settings.train + settings.val)
        if pixels is not None and len(train) > 1:
            carved = stratified_parts([pixels[g] for g in train], (1 - val_share, val_share), seed)
        else:
            take = max(1, round(len(train) * val_share)) if len(train) > 1 else 0
            carved = np.arange(len(train)) < take
        for source, to_val in zip(train, carved):
            if to_val:
                assigned[source] = "val"
    elif not lists and remaining:
        ratios = (settings.train, settings.val, settings.test)
        order = _shuffled(remaining, seed)
        if pixels is not None:
            parts = stratified_parts([pixels[g] for g in order], ratios, seed)
        else:
            parts = np.repeat(np.arange(3), split_counts(len(remaining), ratios))
        for source, part in zip(order, parts):
            assigned[source] = SPLITS[part]
    elif pixels is not None and not lists:
        log_event(log, "data.split.not_stratified", logging.WARNING, reason="the layouts name every image's split "
                  "(VOC ImageSets, COCO folders)", hint="set data.split.use_layout_lists: false to stratify them all")
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
                      group_by: SplitGroup = SplitGroup.IMAGE, stratify: SplitStratify = SplitStratify.NONE,
                      class_pixels: dict[str, list[int]] | None = None) -> list[Fold]:
    """k disjoint test folds over the given sources' groups (``split_groups``: with ``group_by: scene`` a
    scene's images stay in one part); in each fold, ``val_share`` of the remaining groups (at least one) is held
    out to choose checkpoints (the microplastic paper: 72/8/20). ``stratify: classes``: the test folds and each
    fold's validation part by ``stratified_parts`` on ``class_pixels`` (source_id -> labelled pixels per class).

    Raises:
        ValueError: fewer than k groups, or too few to leave a training and a validation part.
    """
    groups = split_groups(source_ids, group_by)
    members: dict[str, set[str]] = {}
    for source_id, group in groups.items():
        members.setdefault(group, set()).add(source_id)
    scene_folds = _kfold(sorted(members), folds, seed, val_share, _group_pixels(members, class_pixels, stratify))
    return [Fold(f.index, *(frozenset(i for g in part for i in members[g]) for part in (f.train, f.val, f.test)))
            for f in scene_folds]


def _kfold(source_ids: list[str], folds: int, seed: int, val_share: float,
           pixels: dict[str, np.ndarray] | None = None) -> list[Fold]:
    if len(source_ids) < folds:
        raise InputError(f"data.split.folds: {folds}-fold cross-validation needs at least {folds} source images "
                         f"(scenes) in train + val, got {len(source_ids)}")
    order = _shuffled(sorted(source_ids), seed)
    if pixels is not None:
        ordered = np.asarray([pixels[s] for s in order])
        fold_of = stratified_parts(ordered, [1 / folds] * folds, seed)
        _cap_part_sizes(ordered > 0, fold_of, folds)
    else:
        fold_of = np.arange(len(order)) % folds
    result = []
    for k in range(folds):
        test = [s for s, fold in zip(order, fold_of) if fold == k]
        rest = _shuffled([s for s in order if s not in set(test)], seed + 1 + k)
        if len(rest) < 2:
            raise InputError(f"data.split.folds: {folds}-fold cross-validation over {len(source_ids)} source images "
                             f"(scenes) leaves fold {k + 1} no training and validation part (data.split.fold_val); "
                             "use fewer folds")
        if pixels is not None:
            held = stratified_parts([pixels[s] for s in rest], (1 - val_share, val_share), seed + 1 + k)
            val, train = [s for s, p in zip(rest, held) if p], [s for s, p in zip(rest, held) if not p]
        else:
            take = min(len(rest) - 1, max(1, round(val_share * len(rest))))
            val, train = rest[:take], rest[take:]
        result.append(Fold(k, frozenset(train), frozenset(val), frozenset(test)))
    return result
