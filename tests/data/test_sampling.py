"""Rare-class oversampling by repeat factors (minseg/data/sampling.py), by hand and through the pipeline."""

import math

import numpy as np
import pytest

from minseg.config.base import validate_config
from minseg.data.config import DataSettings, OversamplingSettings
from minseg.data.pipeline import expand_copies, split_dataset, tile_rows
from minseg.data.sampling import class_repeat_factors, tile_repeats
from minseg.io.storage import Storage
from minseg.synth.minerals import CLASS_NAMES
from tests.data.helpers import write_paired
from tests.data.test_pipeline import NINE, prepare


def test_class_repeat_factors_by_hand():
    # 10 tiles: class 0 in all, class 1 in one (f = 0.1), class 2 in four (f = 0.4), class 3 in none
    tiles = [[0, 1, 2]] + [[0, 2]] * 3 + [[0]] * 6
    factors = class_repeat_factors(tiles, 4, threshold=0.4)
    # r_c = max(1, sqrt(t / f_c)): sqrt(0.4 / 0.1) = 2; f = t gives 1; above t gives 1; absent gives 1
    assert factors.tolist() == pytest.approx([1.0, 2.0, 1.0, 1.0])
    assert class_repeat_factors(tiles, 4, threshold=0.9).tolist() == pytest.approx(
        [1.0, 3.0, math.sqrt(0.9 / 0.4), 1.0])


def test_a_tile_takes_its_rarest_class_factor_capped():
    items = {"a": [[0, 1], [0], [0, 2]], "b": [[0]] * 13 + [[0, 1, 2]]}
    # 17 tiles: class 1 in 2 (f = 2/17), class 2 in 2; t = 8/17 gives r = 2 exactly for both
    repeats, factors = tile_repeats(items, 3, OversamplingSettings(threshold=8 / 17), seed=0)
    assert factors.tolist() == pytest.approx([1.0, 2.0, 2.0])
    assert repeats == {"a": [2, 1, 2], "b": [1] * 13 + [2]}
    capped, _ = tile_repeats(items, 3, OversamplingSettings(threshold=1.0, max_repeat=2), seed=0)
    assert capped["a"] == [2, 1, 2]  # sqrt(17 / 2) = 2.9 capped at 2


def test_an_item_drawn_n_times_counts_n_times_in_the_class_shares():
    # a bagged member's sample: "a" drawn 3 times, "b" once, "c" not at all (left out of the items)
    items = {"a": [[0, 1], [0]], "b": [[0]] * 6}
    repeats, factors = tile_repeats(items, 2, OversamplingSettings(threshold=0.5), seed=0, times={"a": 3})
    # 3 * 2 + 6 = 12 tiles, class 1 in 3: f = 1/4, r = sqrt(0.5 / 0.25) = 1.41 (counted once: f = 1/8, r = 2)
    assert factors.tolist() == pytest.approx([1.0, math.sqrt(2)])
    assert factors.tolist() == pytest.approx(class_repeat_factors([[0, 1], [0]] * 3 + [[0]] * 6, 2, 0.5).tolist())
    assert repeats["a"][0] in (1, 2) and repeats["a"][1] == 1 and repeats["b"] == [1] * 6  # per copy
    once, factors_once = tile_repeats(items, 2, OversamplingSettings(threshold=0.5), seed=0)
    assert factors_once.tolist() == pytest.approx([1.0, 2.0]) and once["a"] == [2, 1]


def test_fractional_repeats_round_to_their_mean_and_depend_on_seed_and_item_only():
    # one rare class in 1 of 4 tiles, t = 0.5625: r = sqrt(0.5625 / 0.25) = 1.5 for the rare tiles
    items = {f"img{i}": [[0, 1]] + [[0]] * 3 for i in range(2000)}
    repeats, _ = tile_repeats(items, 2, OversamplingSettings(threshold=0.5625), seed=7)
    rare = np.array([r[0] for r in repeats.values()])
    assert set(rare.tolist()) == {1, 2} and abs(rare.mean() - 1.5) < 0.05
    assert all(r[1:] == [1, 1, 1] for r in repeats.values())
    again, _ = tile_repeats(dict(reversed(items.items())), 2, OversamplingSettings(threshold=0.5625), seed=7)
    assert again == repeats  # per item, not per position in the list: resumed and k-fold runs agree
    other, _ = tile_repeats(items, 2, OversamplingSettings(threshold=0.5625), seed=8)
    assert other != repeats
    negative, _ = tile_repeats(items, 2, OversamplingSettings(threshold=0.5625), seed=-8)  # run.seed may be < 0
    assert negative != other and abs(np.mean([r[0] for r in negative.values()]) - 1.5) < 0.05


def test_oversampling_config_is_validated():
    with pytest.raises(ValueError, match="threshold"):
        validate_config({"sources": [{"uri": "x"}], "oversampling": {"threshold": 0}}, DataSettings)
    for bad in (0, 17):
        with pytest.raises(ValueError, match="max_repeat"):
            validate_config({"sources": [{"uri": "x"}], "oversampling": {"max_repeat": bad}}, DataSettings)


def test_the_training_split_repeats_the_tiles_of_rare_classes(ray_session, tmp_path):
    root = write_paired(tmp_path / "ds", count=4, size=80)
    data = validate_config({"sources": [{"uri": str(root)}], "classes": NINE, "tiling": {"size": 32},
                            "split": {"train": 1.0, "val": 0.0, "test": 0.0},
                            "oversampling": {"threshold": 0.9, "max_repeat": 4}}, DataSettings)
    prepared = prepare(data, tmp=tmp_path / "work")
    plain = split_dataset(prepared, data, "train", Storage(), 0.25).take_all()
    # the scan's per-class tile counts agree with the tiles the training stream yields
    for c, name in enumerate(CLASS_NAMES):
        assert prepared.stats["train"]["classes"][name]["tiles"] == sum(bool((r["mask"] == c).any()) for r in plain)
    items = prepared.splits["train"]
    assert set(prepared.tile_classes) == {i["item_id"] for s in prepared.splits.values() for i in s}
    assert all("tile_classes" not in i for i in items)  # beside the items, which travel to every task
    repeats, factors = tile_repeats(prepared.tile_classes_of(items), len(CLASS_NAMES), data.oversampling, seed=0)
    assert factors.max() > 1.5  # some class is rare here, so some tiles are repeated
    rows = split_dataset(prepared, data, "train", Storage(), 0.25, repeats=repeats).take_all()
    assert len(rows) == sum(sum(r) for r in repeats.values()) > len(plain)

    def key(row):
        return row["image"].tobytes() + row["mask"].tobytes()

    expected: dict[bytes, int] = {}
    for item in items:  # per item, in tile-grid order: copy k of the stream is tile k, repeats[k] times
        tiles = tile_rows(item, prepared.classmap, data, Storage())
        counted = tile_rows(item, prepared.classmap, data, Storage(), repeats[item["item_id"]])
        assert [int(row["copies"]) for row in counted] == repeats[item["item_id"]]
        for tile, row, n in zip(tiles, counted, repeats[item["item_id"]]):
            wanted = min(4.0, max(factors[c] for c in np.unique(tile["mask"]) if c < len(CLASS_NAMES)))
            assert n in (math.floor(wanted), math.ceil(wanted))  # its rarest class's factor, rounded
            copies = expand_copies(dict(row))
            assert len(copies) == n and all(key(c) == key(tile) and "copies" not in c for c in copies)
            expected[key(tile)] = expected.get(key(tile), 0) + n
    copies: dict[bytes, int] = {}
    for row in rows:
        copies[key(row)] = copies.get(key(row), 0) + 1
    assert copies == expected  # the Ray stream yields the same copies


def test_an_image_smaller_than_a_tile_is_padded_with_the_mean_as_inference_pads_it(ray_session, tmp_path):
    """Training padded with black (after normalising, -mean/std) while inference pads with the mean (0 after
    normalising): the members learnt edges that inference never shows them."""
    from minseg.data.tiling import mean_fill

    root = write_paired(tmp_path / "ds", count=3, size=24)
    data = validate_config({"sources": [{"uri": str(root)}], "classes": NINE, "tiling": {"size": 32},
                            "split": {"train": 1.0, "val": 0.0, "test": 0.0}}, DataSettings)
    prepared = prepare(data, tmp=tmp_path / "work")
    fill = mean_fill(prepared.normalization["mean"])
    rows = split_dataset(prepared, data, "train", Storage(), 0.25).take_all()
    assert len(rows) == 3 and fill.any()
    for row in rows:
        assert (row["image"][24:] == fill).all() and (row["image"][:, 24:] == fill).all()
        assert (row["mask"][24:] == 255).all() and (row["mask"][:24, :24] != 255).all()


def test_validation_tiles_count_each_labelled_pixel_once(ray_session, tmp_path):
    from minseg.data.pipeline import load_example

    root = write_paired(tmp_path / "ds", count=4, size=80)
    data = validate_config({"sources": [{"uri": str(root)}], "classes": NINE, "tiling": {"size": 32, "overlap": 12},
                            "split": {"train": 0.5, "val": 0.5, "test": 0.0}}, DataSettings)
    prepared = prepare(data, tmp=tmp_path / "work")
    labelled = sum(int((load_example(i, prepared.classmap, data.limits, Storage())[1] != 255).sum())
                   for i in prepared.splits["val"])
    rows = split_dataset(prepared, data, "val", Storage(), 0.25).take_all()
    assert len(rows) > len(prepared.splits["val"]) and sum(int((r["mask"] != 255).sum()) for r in rows) == labelled
    train = split_dataset(prepared, data, "train", Storage(), 0.25).take_all()  # training keeps whole tiles
    assert sum(int((r["mask"] != 255).sum()) for r in train) > sum(
        int((load_example(i, prepared.classmap, data.limits, Storage())[1] != 255).sum())
        for i in prepared.splits["train"])
