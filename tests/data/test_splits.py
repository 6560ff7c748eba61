import numpy as np
import pytest

from minseg.data.config import SplitSettings
from minseg.data.splits import assign_splits, class_strata, kfold_assignments, split_counts, stratified_parts
from minseg.errors import InputError


def test_split_counts_and_kfold():
    assert split_counts(10, (0.7, 0.15, 0.15)) == (7, 2, 1) or split_counts(10, (0.7, 0.15, 0.15)) == (7, 1, 2)
    assert split_counts(3, (0.7, 0.15, 0.15)) == (1, 1, 1)
    sources = {f"s{i}" for i in range(11)}
    folds = kfold_assignments(sorted(sources), 5, seed=1, val_share=0.1)
    assert len(folds) == 5 and sum(len(f.test) for f in folds) == 11
    assert all(not (a.test & b.test) for i, a in enumerate(folds) for b in folds[i + 1 :])
    for fold in folds:  # the paper's protocol: a test fold, and a validation part of the rest
        assert fold.train | fold.val | fold.test == sources and len(fold.val) == 1
        assert not fold.val & fold.train and not fold.test & (fold.train | fold.val)
    with pytest.raises(InputError, match="leaves fold 1 no training and validation part"):
        kfold_assignments(["a", "b"], 2, 0)
    with pytest.raises(InputError, match="needs at least 5 source images"):
        kfold_assignments(["a", "b"], 5, 0)


def test_tiles_of_one_source_never_straddle_splits():
    items = [{"item_id": f"d/{s}-{t}", "source_id": f"d/{s}"} for s in range(20) for t in range(3)]
    assignment = assign_splits(items, SplitSettings(), seed=5)
    assert len(assignment) == 20
    assert assign_splits(list(reversed(items)), SplitSettings(), seed=5) == assignment  # listing order irrelevant
    assert assign_splits(items, SplitSettings(), seed=6) != assignment


def test_the_default_shuffle_keeps_its_assignments():
    """Pinned (unchanged since before stratification existed): a seeded run re-made later must split the same."""
    items = [{"item_id": f"d/{i:02d}", "source_id": f"d/{i:02d}"} for i in range(10)]
    assigned = assign_splits(items, SplitSettings(), 5)
    assert {k: v for k, v in assigned.items() if v != "train"} == {"d/01": "val", "d/03": "val", "d/05": "test"}
    folds = kfold_assignments(sorted(assigned), 3, 5)
    assert [sorted(f.test) for f in folds] == [["d/00", "d/02", "d/05", "d/09"], ["d/03", "d/04", "d/08"],
                                               ["d/01", "d/06", "d/07"]]
    assert [sorted(f.val) for f in folds] == [["d/07"], ["d/07"], ["d/04"]]


def test_a_scene_in_two_sources_is_never_split_apart_when_grouped_by_scene():
    """PPL and XPL of one scene as two sources, ``group_by: scene``: one split per scene, in ratios, lists
    and folds; a scene listed in two splits is refused, naming its images."""
    items = [{"item_id": f"{src}/scene{s}", "source_id": f"{src}/scene{s}"} for src in ("ppl", "xpl")
             for s in range(30)] + [{"item_id": "ppl/lonely", "source_id": "ppl/lonely"}]
    by_scene = SplitSettings(group_by="scene")
    for seed in range(5):
        assignment = assign_splits(items, by_scene, seed=seed)
        assert all(assignment[f"ppl/scene{s}"] == assignment[f"xpl/scene{s}"] for s in range(30))
        assert len(set(assignment.values())) == 3 and "ppl/lonely" in assignment
    lists = {"train": {"scene1", "scene2"}, "test": {"xpl/scene3"}}
    assert assign_splits(items, by_scene, 0, lists) == {
        "ppl/scene1": "train", "xpl/scene1": "train", "ppl/scene2": "train", "xpl/scene2": "train",
        "ppl/scene3": "test", "xpl/scene3": "test"}
    with pytest.raises(InputError, match="ppl/scene4, xpl/scene4 would be in both test and train"):
        assign_splits(items, by_scene, 0, {"train": {"ppl/scene4"}, "test": {"xpl/scene4"}})
    folds = kfold_assignments(sorted({i["source_id"] for i in items}), 5, seed=2, group_by="scene")
    for fold in folds:
        for part in (fold.train, fold.val, fold.test):
            assert all((f"ppl/scene{s}" in part) == (f"xpl/scene{s}" in part) for s in range(30))
    # twins whose layouts name different splits are refused, whatever the listing order
    marked = [{**items[0], "layout_split": "train"}, {**items[30], "layout_split": "test"}]
    with pytest.raises(InputError, match="ppl/scene0, xpl/scene0 would be in both train and test"):
        assign_splits(marked, by_scene, 0)


def test_by_image_a_bare_name_of_several_sources_is_refused_and_full_ids_select_one():
    """Grouped by image (the default), twins are split alone: a full id lists its own image only, and a bare
    name matching images of two sources is refused with the candidates named."""
    items = [{"item_id": f"{src}/{s:03d}", "source_id": f"{src}/{s:03d}"} for src in ("A", "B") for s in range(8)]
    assigned = assign_splits(items, SplitSettings(), 0, {"train": {"A/000", "A/001"}, "test": {"B/000"}})
    assert assigned == {"A/000": "train", "A/001": "train", "B/000": "test"}
    with pytest.raises(InputError, match=r"lists.train: '001' matches images of 2 sources \(A/001, B/001\); list "
                                         "one by its full id, or set data.split.group_by: scene"):
        assign_splits(items, SplitSettings(), 0, {"train": {"001"}})
    ratio = assign_splits(items, SplitSettings(), 3)
    assert ratio == assign_splits(items, SplitSettings(group_by="image"), 3) and len(ratio) == 16


def test_list_entries_match_as_written_first_then_extension_and_case_aside():
    """``S1.PNG`` names ``s1``; an entry written exactly as one image's id picks that image even when another differs
    from it only in case (case aside, the two would collide and be refused)."""
    items = [{"item_id": f"ds/{name}", "source_id": f"ds/{name}"} for name in ("Section_01", "section_01", "s1")]
    assigned = assign_splits(items, SplitSettings(), 0, {"train": {"ds/Section_01", "S1.PNG"},
                                                         "val": {"ds/section_01"}})
    assert assigned == {"ds/Section_01": "train", "ds/section_01": "val", "ds/s1": "train"}
    with pytest.raises(InputError, match=r"'SECTION_01.jpg' matches images of 2 sources"):
        assign_splits(items, SplitSettings(), 0, {"train": {"SECTION_01.jpg"}})


def rare_mineral_sections(sections: int = 20, holders=(2, 9, 15)) -> dict[str, list[int]]:
    """source_id -> pixels of (background, chalcopyrite, magnetite): every section shows the first two, three show
    a few grains of magnetite, as in a magmatic Cu-Ni suite."""
    return {f"d/{i:02d}": [9000 - 50 * i, 1000 + 50 * i, 40 + i if i in holders else 0] for i in range(sections)}


def splits_showing(assignment: dict[str, str], pixels: dict[str, list[int]], c: int) -> set[str]:
    return {split for source, split in assignment.items() if pixels[source][c]}


def test_stratified_splits_give_every_split_a_rare_class_a_shuffle_loses():
    """Four of twenty sections show magnetite, shares .7 / .15 / .15: greedy stratification goes 3 / 1 / 0 here,
    the fill step makes it 2 / 1 / 1 on every seed; a seeded shuffle leaves it out of validation or test on some
    seeds, which the test checks so that it can fail. Three sections: training keeps two (2 / 1 / 0)."""
    pixels = rare_mineral_sections(holders=(2, 9, 15, 17))
    items = [{"item_id": s, "source_id": s} for s in pixels]
    shuffled, stratified = SplitSettings(), SplitSettings(stratify="classes")
    lost = 0
    for seed in range(12):
        assignment = assign_splits(items, stratified, seed, class_pixels=pixels)
        assert splits_showing(assignment, pixels, 2) == {"train", "val", "test"}, seed
        sizes = [list(assignment.values()).count(s) for s in ("train", "val", "test")]
        assert len(assignment) == 20 and abs(sizes[0] - 14) <= 2 and min(sizes[1:]) >= 2  # about the ratios
        assert assign_splits(items[::-1], stratified, seed, class_pixels=pixels) == assignment  # listing order
        lost += splits_showing(assign_splits(items, shuffled, seed), pixels, 2) != {"train", "val", "test"}
    assert lost > 0
    three = rare_mineral_sections(holders=(2, 9, 15))
    for seed in range(6):
        assignment = assign_splits([{"item_id": s, "source_id": s} for s in three], stratified, seed,
                                   class_pixels=three)
        assert [assignment[s] for s in ("d/02", "d/09", "d/15")].count("train") == 2
    with pytest.raises(ValueError, match="need each source image's labelled pixels"):
        assign_splits(items, stratified, 0)


def test_stratification_spreads_abundance_not_only_presence():
    """Every section shows pyrite; six are rich in it. Presence alone cannot tell them apart, the tertile strata
    can: each of three equal parts gets two rich sections on every seed."""
    pixels = np.array([[1000, 900 if i in (0, 1, 2, 3, 4, 5) else 10] for i in range(12)])
    strata = class_strata(pixels)
    assert strata.shape == (12, 6) and strata[:, 1].all() and strata[:6, 5].all() and not strata[6:, 5].any()
    for seed in range(8):
        parts = stratified_parts(pixels, (1 / 3, 1 / 3, 1 / 3), seed)
        assert np.bincount(parts[:6], minlength=3).tolist() == [2, 2, 2], seed


def test_stratified_parts_edge_cases():
    """A part with a share gets a group when there are enough; a class in fewer groups than parts cannot be
    everywhere and is left where it fell; a zero share gets nothing; no groups, no parts."""
    assert stratified_parts(np.ones((3, 2)), (0.7, 0.15, 0.15), 0).tolist().count(0) == 1
    parts = stratified_parts(np.array([[5, 1], [5, 0], [5, 0], [5, 0]]), (0.5, 0.25, 0.25), 0)
    assert sorted(np.bincount(parts, minlength=3)) == [1, 1, 2]
    assert not (stratified_parts(np.ones((10, 2)), (0.8, 0.2, 0.0), 1) == 2).any()
    assert stratified_parts(np.zeros((0, 3)), (0.5, 0.5), 0).shape == (0,)
    # the empty part takes a group its giver can spare, not the one image of a class
    only = np.array([[100, 0], [100, 0], [100, 0], [100, 5]])
    for seed in range(6):
        parts = stratified_parts(only, (0.9, 0.1), seed)
        assert parts[3] == 0 and parts.tolist().count(1) == 1, seed


def test_stratified_folds_and_the_carved_validation_part_hold_the_rare_class():
    """k folds stratified: five folds over 20 sections, magnetite in five of them: one per test fold; each fold's
    validation part (fold_val .25 of the rest) is stratified too."""
    pixels = rare_mineral_sections(holders=(1, 4, 8, 13, 17))
    for seed in range(4):
        folds = kfold_assignments(sorted(pixels), 5, seed, 0.25, stratify="classes", class_pixels=pixels)
        assert sorted(len(f.test) for f in folds) == [4] * 5
        for fold in folds:
            assert sum(bool(pixels[s][2]) for s in fold.test) == 1
            assert any(pixels[s][2] for s in fold.val) and fold.train | fold.val | fold.test == set(pixels)
            assert not fold.val & fold.train and not fold.test & (fold.train | fold.val)


def test_stratify_and_explicit_lists_are_refused_together():
    with pytest.raises(ValueError, match="lists already fix each image's split"):
        SplitSettings(lists={"train": "train.txt"}, stratify="classes")


def test_layout_val_carved_from_train_is_stratified():
    """A layout naming train and test only: validation is carved from train, by the strata when stratified."""
    pixels = rare_mineral_sections(holders=(2, 9, 11, 15))
    items = [{"item_id": s, "source_id": s, "layout_split": "test" if s in ("d/15", "d/19") else "train"}
             for s in pixels]
    for seed in range(6):
        assignment = assign_splits(items, SplitSettings(stratify="classes"), seed, class_pixels=pixels)
        assert assignment["d/15"] == assignment["d/19"] == "test"
        assert sorted(assignment[s] for s in ("d/02", "d/09", "d/11")) == ["train", "train", "val"], seed
    # one training image: it stays in training, whatever validation's share
    alone = [{"item_id": s, "source_id": s, "layout_split": "test" if s != "d/00" else "train"} for s in pixels]
    assert assign_splits(alone, SplitSettings(train=0.4, val=0.5, test=0.1, stratify="classes"), 0,
                         class_pixels=pixels)["d/00"] == "train"


def test_training_gets_a_group_even_when_there_are_fewer_groups_than_parts():
    """One or two images under three shares: the shuffle gives training one (split_counts), and so does the
    stratified split, whatever share training has."""
    for seed in range(8):
        for groups in (1, 2):
            parts = stratified_parts(np.ones((groups, 2)), (0.4, 0.5, 0.1), seed)
            assert (parts == 0).sum() == 1, (seed, groups, parts)


def test_a_missing_class_is_taken_from_the_next_part_when_the_first_cannot_give():
    """Mineral 1 in four images, training 2 / validation 2 / test 0: training (most holders, first in a tie)
    keeps its two, so validation gives one and takes back an image without the mineral."""
    from minseg.data.splits import _fill_missing_classes

    present = np.zeros((12, 2), bool)
    present[:, 0] = True
    present[[0, 1, 2, 3], 1] = True
    parts = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 2, 2])
    _fill_missing_classes(present, parts, np.array([0.7, 0.15, 0.15]))
    assert [int(present[parts == p, 1].sum()) for p in range(3)] == [2, 1, 1]
    assert np.bincount(parts, minlength=3).tolist() == [8, 2, 2]


def test_training_shows_every_class_any_image_shows():
    """Greedy stratification can put the one image of a class in validation or test (about 1 % of such classes
    with 5-6 images at 60/20/20): training takes it and gives back an image it can spare, unless the image is the
    only one of its split (then the preparation warns, data.split.classes_untrained)."""
    from minseg.data.splits import _spares, _train_on_every_class

    present = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [1, 0]], bool)
    parts = np.array([0, 0, 0, 1, 2])
    _train_on_every_class(present, parts, np.array([0.6, 0.2, 0.2]))
    assert parts.tolist() == [0, 0, 1, 0, 2]
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(3, 9))
        pixels = rng.integers(1, 100, (n, 4)) * (rng.random((n, 4)) < [1, 0.5, 0.3, 1 / n])
        parts = stratified_parts(pixels, (0.6, 0.2, 0.2), trial)
        sizes = np.bincount(parts, minlength=3)
        assert (sizes > 0).all(), (trial, parts)
        for c in np.flatnonzero((pixels > 0).any(axis=0) & ~(pixels[parts == 0] > 0).any(axis=0)):
            # left out only when each image of it is its split's only one and training has none to give back
            assert all(sizes[parts[g]] == 1 for g in np.flatnonzero(pixels[:, c])), (trial, pixels, parts)
            assert not any(_spares(pixels > 0, parts, g, 0) for g in np.flatnonzero(parts == 0)), (trial, parts)


def test_stratified_folds_stay_comparable_in_size():
    """Four images sharing few classes, two folds: stratification alone gave one fold three images on 8 of 20 seeds,
    leaving the other fold no training and validation part (an error); folds are capped at ceil(n / k)."""
    ids = [f"s/{i}" for i in range(4)]
    pixels = dict(zip(ids, np.array([[0, 0, 45], [0, 13, 31], [0, 45, 0], [14, 0, 0]])))
    for seed in range(20):
        folds = kfold_assignments(ids, 2, seed, 0.25, stratify="classes", class_pixels=pixels)
        assert [len(f.test) for f in folds] == [2, 2], seed
        assert all(f.train and f.val for f in folds)


def test_stratified_by_scene_keeps_twins_together_and_counts_a_scene_by_all_its_images():
    """PPL and XPL of 20 scenes as two sources, ``group_by: scene`` with ``stratify: classes``: magnetite is
    labelled in one image of four scenes only, the PPL one in two scenes and the XPL one in the others, so a
    scene shows it only when its images are summed. Every split (and every fold's test part) gets a magnetite
    scene, and twins never part, on every seed."""
    rare = rare_mineral_sections(holders=(2, 9, 15, 17))
    pixels = {}
    for name, values in rare.items():
        scene = name.split("/")[1]
        labelled, other = ("ppl", "xpl") if scene in ("02", "15") else ("xpl", "ppl")
        pixels[f"{labelled}/{scene}"] = values
        pixels[f"{other}/{scene}"] = values[:2] + [0]
    items = [{"item_id": s, "source_id": s} for s in pixels]
    settings = SplitSettings(group_by="scene", stratify="classes")
    for seed in range(8):
        assignment = assign_splits(items, settings, seed, class_pixels=pixels)
        assert all(assignment[f"ppl/{i:02d}"] == assignment[f"xpl/{i:02d}"] for i in range(20)), seed
        assert splits_showing(assignment, pixels, 2) == {"train", "val", "test"}, seed
        folds = kfold_assignments(sorted(pixels), 4, seed, 0.25, group_by="scene", stratify="classes",
                                  class_pixels=pixels)
        for fold in folds:
            assert any(pixels[s][2] for s in fold.test), (seed, fold.index)
            for part in (fold.train, fold.val, fold.test):
                assert all((f"ppl/{i:02d}" in part) == (f"xpl/{i:02d}" in part) for i in range(20))


def test_layouts_naming_every_split_are_not_stratified_and_say_so(caplog):
    """Every image's split named by its layout (VOC ImageSets, COCO folders) leaves nothing to stratify: the
    layout's splits are kept, with a warning that says how to stratify them all; ``use_layout_lists: false``
    stratifies every image and does not warn."""
    import logging

    pixels = rare_mineral_sections(holders=(2, 9, 15, 17))
    named = {s: "train" if i < 14 else "val" if i < 17 else "test" for i, s in enumerate(sorted(pixels))}
    items = [{"item_id": s, "source_id": s, "layout_split": named[s]} for s in pixels]
    with caplog.at_level(logging.WARNING, logger="minseg"):
        assert assign_splits(items, SplitSettings(stratify="classes"), 0, class_pixels=pixels) == named
    warned = [r for r in caplog.records if r.getMessage() == "data.split.not_stratified"]
    assert len(warned) == 1 and "use_layout_lists: false" in warned[0].fields["hint"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minseg"):
        assignment = assign_splits(items, SplitSettings(stratify="classes", use_layout_lists=False), 0,
                                   class_pixels=pixels)
    assert splits_showing(assignment, pixels, 2) == {"train", "val", "test"} and assignment != named
    assert not [r for r in caplog.records if r.getMessage() == "data.split.not_stratified"]
