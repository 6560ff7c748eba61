"""Readers on the real datasets beside the project (../shared/data); skipped when absent."""

import numpy as np

from minseg.config.base import validate_config
from minseg.data.config import DataSettings
from minseg.data.pipeline import load_example, prepare_data, split_dataset
from minseg.enums import Task
from minseg.io.storage import Storage

LUMENSTONE_CLASSES = {"classes": [
    {"name": "background", "codes": [0]}, {"name": "chalcopyrite", "codes": [1]}, {"name": "galena", "codes": [2]},
    {"name": "magnetite", "codes": [3]}, {"name": "bornite", "codes": [4]}, {"name": "pyrrhotite", "codes": [5]},
    {"name": "pyrite", "codes": [6]}, {"name": "pentlandite", "codes": [7]}, {"name": "sphalerite", "codes": [8]},
    {"name": "tennantite", "codes": [11]}]}


def test_lumenstone_paired_folders(ray_session, shared_data, tmp_path):
    (tmp_path / "train.txt").write_text("01\na01\n")
    (tmp_path / "val.txt").write_text("02\n")
    data = validate_config({
        "sources": [{"uri": str(shared_data / "lumenstone")}], "classes": LUMENSTONE_CLASSES,
        "tiling": {"size": 256, "scale": 0.125},
        "split": {"lists": {"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt")}},
    }, DataSettings)
    prepared = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), 0.25)
    assert sorted(i["item_id"] for i in prepared.splits["train"]) == ["lumenstone/01", "lumenstone/a01"]
    assert not prepared.quarantine
    image, ids = load_example(prepared.splits["train"][0], prepared.classmap, data.limits, Storage(), 0.125)
    assert image.shape == (318, 424, 3) and ids.shape == (318, 424)  # 2547 x 3396 at 1/8
    assert set(np.unique(ids)) <= set(range(10))
    stats = prepared.stats["train"]["classes"]
    assert sum(c["pixels"] for c in stats.values()) == 2 * 2547 * 3396  # counted at full resolution
    rows = split_dataset(prepared, data, "train", Storage(), 0.25).take_all()
    assert len(rows) == prepared.tile_count("train") > 0


def test_alteration_class_folders(ray_session, shared_data, tmp_path):
    data = validate_config({"sources": [{"uri": str(shared_data / "alteration-xpl")}], "tiling": {"size": 64}},
                           DataSettings)
    prepared = prepare_data(data, Task.CLASSIFICATION, 0, Storage(), str(tmp_path / "work"), 0.25)
    assert prepared.classmap.names == ("Carbonatization", "Chloritization", "Epidotization", "Sericitization",
                                       "Silicification")
    total = sum(len(v) for v in prepared.splits.values())
    files = sum(1 for p in (shared_data / "alteration-xpl").rglob("*") if p.is_file())
    assert total + len(prepared.quarantine) == files
    row = split_dataset(prepared, data, "val", Storage(), 0.25).take(1)[0]
    assert row["image"].shape == (64, 64, 3)


def test_lumenstone_assemblage_recipes_split_the_collection(shared_data, tmp_path):
    """configs/lumenstone_cu_ni.yaml and lumenstone_polymetallic.yaml select the two LumenStone subsets by
    ``include``: together every photograph once, nothing quarantined."""
    from pathlib import Path

    from minseg.config.loading import load_config
    from minseg.config.schema import MinsegConfig
    from minseg.data.pipeline import _list_items

    root = Path(__file__).resolve().parents[2]
    found = {}
    for name in ("cu_ni", "polymetallic"):
        config = load_config(root / "configs" / f"lumenstone_{name}.yaml", MinsegConfig)
        source = config.data.sources[0].model_copy(update={"uri": str(shared_data / "lumenstone")})
        data = config.data.model_copy(update={"sources": [source]})
        items, rejected, _ = _list_items(data, Storage(), str(tmp_path / name), Task.SEGMENTATION)
        assert not rejected
        found[name] = {i["item_id"].split("/")[1] for i in items}
    assert len(found["cu_ni"]) == 23 and all(n.isdigit() for n in found["cu_ni"])
    assert len(found["polymetallic"]) == 59 and all(n.startswith("a") for n in found["polymetallic"])
    assert found["cu_ni"] | found["polymetallic"] == {p.stem for p in (shared_data / "lumenstone" / "images").iterdir()}


def test_stratified_splits_of_the_lumenstone_cu_ni_recipe_show_every_mineral(ray_session, shared_data, tmp_path):
    """The Cu-Ni photographs (23; magnetite in 12, pyrrhotite in 21): shuffled, split seed 3 puts the four test
    photographs among those without magnetite (the recipe's worst split, #20); stratified, seeds 0-4 give train,
    validation and test every mineral, and the recipe's six bagged members each draw their own sample of the
    training photographs, with every mineral (the draws of split seeds 0-3 are the recipe page's)."""
    import dataclasses
    from pathlib import Path

    from minseg.config.loading import load_config
    from minseg.config.schema import MinsegConfig
    from minseg.data.splits import assign_splits
    from minseg.train.ensemble import ImageSource

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "lumenstone_cu_ni.yaml", MinsegConfig)
    source = config.data.sources[0].model_copy(update={"uri": str(shared_data / "lumenstone")})
    split = config.data.split.model_copy(update={"stratify": "classes", "seed": 3})
    data = config.data.model_copy(update={"sources": [source], "split": split})
    prepared = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), 0.25)
    assert all(prepared.stats[s]["classes"][c]["pixels"] for s in ("train", "val", "test")
               for c in prepared.classmap.names)
    items = [i for part in prepared.splits.values() for i in part]
    pixels = {i["source_id"]: i["pixels"] for i in items}
    magnetite = prepared.classmap.names.index("magnetite")
    assert all(m.bagging for m in config.training.members)
    distinct = {}
    for seed in (0, 1, 2, 3, 4):
        assigned = assign_splits(items, split, seed, class_pixels=pixels)
        parts = {name: [i for i in items if assigned[i["source_id"]] == name] for name in ("train", "val", "test")}
        for name, part in parts.items():
            shown = np.sum([i["pixels"] for i in part], axis=0)
            assert shown.all(), (seed, name, shown)
        on_split = ImageSource(dataclasses.replace(prepared, splits=parts), data)
        samples = [on_split.bagging_sample(m, None, config.run.seed) for m in config.training.members]
        assert len({tuple(sorted(s.items())) for s in samples}) == 6, (seed, samples)
        for sample in samples:
            assert set(sample) <= {i["source_id"] for i in parts["train"]}
            assert np.sum([pixels[s] for s in sample], axis=0).all(), (seed, sample)
        distinct[seed] = [len(s) for s in samples]
    assert distinct[0] == [9, 9, 9, 8, 9, 10] and distinct[1] == distinct[2] == distinct[3] == [10, 10, 9, 8, 9, 10]
    shuffled = assign_splits(items, split.model_copy(update={"stratify": "none"}), 3)
    assert not any(pixels[s][magnetite] for s, part in shuffled.items() if part == "test")
