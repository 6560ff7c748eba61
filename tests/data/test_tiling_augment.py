import numpy as np
import pytest
import torch

from minseg.data.augment import augment_batch
from minseg.data.config import AugmentSettings, SplitSettings
from minseg.errors import InputError
from minseg.data.splits import assign_splits, kfold_assignments, split_counts
from minseg.data.tiling import extract_tile, tile_grid, tile_starts


def test_tile_starts_snap_to_the_edge():
    assert tile_starts(100, 32, 32) == [0, 32, 64, 68]
    assert tile_starts(96, 32, 32) == [0, 32, 64]
    assert tile_starts(100, 32, 22) == [0, 22, 44, 66, 68]  # the microplastic paper's overlap style
    assert tile_starts(20, 32, 32) == [0]
    assert len(tile_grid(100, 64, 32, 32)) == 4 * 2


def test_small_image_is_padded_with_fill():
    image = np.ones((10, 12, 3), np.uint8)
    tile = extract_tile(image, 0, 0, 16, 0)
    assert tile.shape == (16, 16, 3) and tile[:10, :12].all() and not tile[10:].any()
    mask = extract_tile(np.zeros((10, 12), np.uint8), 0, 0, 16, 255)
    assert (mask[10:] == 255).all() and (mask[:10, :12] == 0).all()


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


def paired_batch(n=6, size=8):
    torch.manual_seed(0)
    masks = torch.randint(0, 5, (n, size, size))
    images = torch.stack([masks.float(), masks.float() * 2, -masks.float()], 1)  # image encodes its mask
    return images, masks


def test_dihedral_keeps_images_and_masks_aligned_and_is_seeded():
    images, masks = paired_batch()
    settings = AugmentSettings(mode="dihedral")
    out_images, out_masks = augment_batch(images, masks, settings, torch.Generator().manual_seed(1))
    assert torch.equal(out_images[:, 0], out_masks.float())
    assert not torch.equal(out_masks, masks)
    again = augment_batch(images, masks, settings, torch.Generator().manual_seed(1))
    assert torch.equal(again[1], out_masks)
    views = {tuple(out_masks[i].flatten().tolist()) for i in range(6)}
    candidates = [masks[0], masks[0].flip(-1), masks[0].flip(-2)] + [torch.rot90(masks[0], k, (0, 1)) for k in (1, 2, 3)]
    assert all(any(torch.equal(out_masks[i], c) for c in
                   [masks[i], masks[i].flip(-1), masks[i].flip(-2)] + [torch.rot90(masks[i], k, (0, 1)) for k in (1, 2, 3)])
               for i in range(6))
    assert len(views) > 1 and len(candidates) == 6


def test_shift_rotate_fills_mean_and_ignore():
    images, masks = paired_batch(4, 32)
    images = images + 5  # non-zero everywhere, so zero-fill is visible
    settings = AugmentSettings(mode="shift_rotate", shift=0.2, rotate_degrees=45)
    out_images, out_masks = augment_batch(images, masks, settings, torch.Generator().manual_seed(3), ignore_index=255)
    outside = out_masks == 255
    assert outside.any()
    filled = out_images[:, 0][outside]
    # uncovered pixels take the mean (0 after normalisation); only the boundary band blends bilinearly
    assert (filled.abs() < 1e-5).float().mean() > 0.8
    assert filled.abs().mean() < 0.2 * out_images[:, 0][~outside].abs().mean()
    inside = ~outside
    assert set(out_masks[inside].unique().tolist()) <= set(range(5))
