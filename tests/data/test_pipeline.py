import hashlib
import json
import logging

import numpy as np
import pytest

from minseg.config.base import ConfigError, validate_config
from minseg.data.classmap import ClassMap
from minseg.data.config import DataSettings, LimitSettings, SplitSettings
from minseg.data.containers import open_container
from minseg.data.layouts import detect_layout
from minseg.data.splits import assign_splits
from minseg.data.pipeline import (DataError, load_example, prepare_data, prepare_scoring_data, split_dataset,
                                  write_data_reports)
from minseg.enums import DatasetLayout, Task
from minseg.errors import InputError
from minseg.io.storage import Storage
from minseg.synth.minerals import CLASS_NAMES
from minseg.synth.sections import render_section
from tests.data.helpers import jpg_bytes, png_bytes, write_coco, write_labelme, write_paired, write_voc

NINE = {"classes": [{"name": n, "codes": [i]} for i, n in enumerate(CLASS_NAMES)]}


def settings(uri, **extra):
    values = {"sources": [{"uri": str(uri)}], "classes": NINE, "tiling": {"size": 32}}
    values.update(extra)
    return validate_config(values, DataSettings)


def prepare(data, task=Task.SEGMENTATION, tmp=None):
    return prepare_data(data, task, seed=0, storage=Storage(), work_uri=str(tmp), task_cpus=0.25)


def test_layout_detection(tmp_path):
    storage, limits = Storage(), LimitSettings()
    cases = {
        DatasetLayout.PAIRED: write_paired(tmp_path / "paired", 1),
        DatasetLayout.VOC: write_voc(tmp_path / "voc", 2),
        DatasetLayout.COCO: write_coco(tmp_path / "coco")[0],
        DatasetLayout.LABELME: write_labelme(tmp_path / "labelme"),
    }
    (tmp_path / "cls" / "a").mkdir(parents=True)
    (tmp_path / "cls" / "b").mkdir(parents=True)
    (tmp_path / "cls" / "a" / "1.jpg").write_bytes(jpg_bytes(render_section(0, 16, 16)[0]))
    (tmp_path / "cls" / "b" / "2.jpg").write_bytes(jpg_bytes(render_section(1, 16, 16)[0]))
    cases[DatasetLayout.CLASS_FOLDERS] = tmp_path / "cls"
    for layout, root in cases.items():
        assert detect_layout(open_container(str(root), limits, storage), storage=storage) is layout
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.txt").write_text("?")
    with pytest.raises(ValueError, match="cannot recognise the dataset layout .* set 'layout' explicitly"):
        detect_layout(open_container(str(tmp_path / "flat"), limits, storage), storage=storage)


def test_paired_split_by_source_and_stats(ray_session, tmp_path):
    root = write_paired(tmp_path / "ds", count=6, size=80)
    data = settings(root, split={"train": 0.5, "val": 0.25, "test": 0.25, "seed": 3})
    prepared = prepare(data, tmp=tmp_path / "work")
    counts = {s: len(v) for s, v in prepared.splits.items()}
    assert sum(counts.values()) == 6 and all(counts.values())
    again = prepare(data, tmp=tmp_path / "work2")
    assert {s: [i["item_id"] for i in v] for s, v in again.splits.items()} == \
           {s: [i["item_id"] for i in v] for s, v in prepared.splits.items()}  # deterministic by seed
    # 80 px images, 32 px tiles, step 32 -> starts 0, 32, 48 -> 9 tiles each
    assert prepared.tile_count("train") == 9 * counts["train"]
    train_rows = split_dataset(prepared, data, "train", Storage(), 0.25).take_all()
    assert len(train_rows) == prepared.tile_count("train")
    assert train_rows[0]["image"].shape == (32, 32, 3) and train_rows[0]["mask"].shape == (32, 32)
    stats = prepared.stats["train"]
    expected = np.zeros(9, np.int64)
    for item in prepared.splits["train"]:
        _, mask = render_section(int(item["source_id"].split("/s")[1]), 80, 80)
        expected += np.bincount(mask.ravel(), minlength=9)
    assert [stats["classes"][n]["pixels"] for n in CLASS_NAMES] == expected.tolist()
    assert stats["classes"]["magnetite"]["particles"] > 0
    reports = write_data_reports(prepared, str(tmp_path / "reports"), Storage())
    assert json.loads(open(reports["splits.json"]).read())["train"] == [i["item_id"] for i in prepared.splits["train"]]
    assert len(prepared.normalization["mean"]) == 3 and all(s > 0 for s in prepared.normalization["std"])


def test_bad_items_go_to_quarantine_and_the_rest_carry_on(ray_session, tmp_path):
    root = write_paired(tmp_path / "ds", count=4, size=48)
    image, mask = render_section(9, 48, 48)
    (root / "images" / "small.jpg").write_bytes(jpg_bytes(image[:40]))          # size mismatch
    (root / "masks" / "small.png").write_bytes(png_bytes(mask))
    (root / "images" / "turned.jpg").write_bytes(jpg_bytes(image[:40]))         # sides swapped (EXIF rotation?)
    (root / "masks" / "turned.png").write_bytes(png_bytes(mask[:, :40]))
    (root / "images" / "codes.jpg").write_bytes(jpg_bytes(image))              # unknown mask code
    bad_codes = mask.copy()
    bad_codes[0, 0] = 42
    (root / "masks" / "codes.png").write_bytes(png_bytes(bad_codes))
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # unreadable
    (root / "masks" / "corrupt.png").write_bytes(png_bytes(mask))
    (root / "images" / "lonely.jpg").write_bytes(jpg_bytes(image))             # no mask
    (root / "masks" / "orphan.png").write_bytes(png_bytes(mask))               # no image
    (root / "images" / "rgbmask.jpg").write_bytes(jpg_bytes(image))            # colours where codes expected
    (root / "masks" / "rgbmask.png").write_bytes(png_bytes(np.stack([mask, mask // 2, mask], -1)))
    (root / "images" / "greyrgb.jpg").write_bytes(jpg_bytes(image))            # a grey mask saved as RGB: codes
    (root / "masks" / "greyrgb.png").write_bytes(png_bytes(np.stack([mask] * 3, -1)))
    from PIL import Image

    Image.fromarray(image).save(root / "images" / "web.webp", lossless=True)  # a WebP photo: was "mask without
    (root / "masks" / "web.png").write_bytes(png_bytes(mask))                  # an image"
    data = settings(root, split={"train": 1.0, "val": 0.0, "test": 0.0})
    prepared = prepare(data, tmp=tmp_path / "work")
    assert len(prepared.splits["train"]) == 6 and {"greyrgb", "web"} <= {i["item_id"].rsplit("/", 1)[1]
                                                                         for i in prepared.splits["train"]}
    reasons = {r.file.rsplit("/", 1)[1]: r.reason for r in prepared.quarantine}
    # the row is the item's image; the reason names the mask at fault
    assert reasons["small.jpg"] == "its mask masks/small.png is 48x48 but the image is 48x40"
    assert reasons["turned.jpg"].startswith("its mask masks/turned.png is 40x48 but the image is 48x40 (its sides "
                                            "swapped: is the image rotated by an EXIF Orientation")
    assert reasons["codes.jpg"].startswith("its mask masks/codes.png: mask codes 42 are not in the class map")
    assert reasons["corrupt.jpg"].startswith("not a picture PIL can read (")
    assert reasons["lonely.jpg"].startswith("no mask masks/lonely.*")
    assert reasons["orphan.png"].startswith("mask without an image")
    assert "set mask_encoding: colors" in reasons["rgbmask.jpg"]
    reports = write_data_reports(prepared, str(tmp_path / "reports"), Storage())
    assert "small.jpg" in open(reports["quarantine.csv"]).read()
    listed = {r["file"].rsplit("/", 1)[1]: r["reason"] for r in json.loads(open(reports["quarantine.json"]).read())}
    assert listed == reasons


def test_everything_bad_fails_with_the_report(ray_session, tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):
        (root / "images" / f"{name}.jpg").write_bytes(b"garbage")
        (root / "masks" / f"{name}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"no usable training items(.|\n)*a.jpg: not a picture PIL can read \(7 bytes"):
        prepare(settings(root), tmp=tmp_path / "work")


def test_voc_palette_masks_void_border_and_lists(ray_session, tmp_path):
    root = write_voc(tmp_path / "voc", count=4)
    data = settings(root, classes={**NINE, "ignore_codes": [255]})
    prepared = prepare(data, tmp=tmp_path / "work")
    assert [len(prepared.splits[s]) for s in ("train", "val", "test")] == [3, 1, 0]  # from ImageSets lists
    image, ids = load_example(prepared.splits["train"][0], prepared.classmap, data.limits, Storage())
    _, expected = render_section(100, 64, 64)
    assert (ids[0] == 255).all() and np.array_equal(ids[1:], expected[1:])  # palette indices are the codes


def write_pyrite_sections(root, stems, magnetite=()):
    """32 x 32 sections with a pyrite grain each and a magnetite grain in those at the ``magnetite`` indices."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(stems):
        mask = np.zeros((32, 32), np.uint8)
        mask[4:12, 4:12] = CLASS_NAMES.index("pyrite")
        if i in magnetite:
            mask[20:24, 20:24] = CLASS_NAMES.index("magnetite")
        (root / "images" / f"{stem}.jpg").write_bytes(jpg_bytes(render_section(i, 32, 32)[0]))
        (root / "masks" / f"{stem}.png").write_bytes(png_bytes(mask))
    return root


def test_stratified_split_scans_first_and_every_split_shows_the_rare_mineral(ray_session, tmp_path, caplog):
    """``split.stratify: classes`` on real files: twelve sections show pyrite, four of them magnetite, one is
    unreadable. The unreadable one is quarantined, not given a split; magnetite reaches train, val and test. With
    the shuffle some seed leaves it out of a scored split, and the data preparation says so, naming the class."""
    root = write_pyrite_sections(tmp_path / "ds", [f"s{i:02d}" for i in range(12)], magnetite=(1, 4, 6, 10))
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "masks" / "broken.png").write_bytes(png_bytes(np.zeros((32, 32), np.uint8)))

    def magnetite_by_split(stratify, seed):
        data = settings(root, split={"train": 0.6, "val": 0.2, "test": 0.2, "seed": seed, "stratify": stratify})
        prepared = prepare(data, tmp=tmp_path / f"work-{stratify}-{seed}")
        return prepared, {s: prepared.stats[s]["classes"]["magnetite"]["pixels"] for s in ("train", "val", "test")}

    usable = [{"item_id": f"ds/s{i:02d}", "source_id": f"ds/s{i:02d}"} for i in range(12)]
    for seed in (0, 1, 2):
        prepared, magnetite = magnetite_by_split("classes", seed)
        assert all(magnetite.values()), (seed, magnetite)
        assert [r.file.rsplit("/", 1)[1] for r in prepared.quarantine] == ["broken.jpg"]
        # split from the usable images' class pixels: the unreadable one took no part
        pixels = {i["source_id"]: i["pixels"] for items in prepared.splits.values() for i in items}
        split = {i["source_id"]: s for s, items in prepared.splits.items() for i in items}
        assert split == assign_splits(usable, SplitSettings(train=0.6, val=0.2, test=0.2, stratify="classes"), seed,
                                      class_pixels=pixels)
    with caplog.at_level(logging.WARNING, logger="minseg.data"):
        missing = [seed for seed in range(6) if not all(magnetite_by_split("none", seed)[1].values())]
    assert missing, "the shuffle kept magnetite in every split: the stratified check above proves nothing"
    warned = [r.fields for r in caplog.records if r.getMessage() == "data.split.classes_missing"]
    assert warned and all(w["classes"] == "magnetite" and "stratify: classes" in w["hint"] for w in warned)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minseg.data"):  # five folds, at most three holders among them
        prepare(settings(root, split={"train": 0.6, "val": 0.2, "test": 0.2, "stratify": "classes", "folds": 5}),
                tmp=tmp_path / "work-folds")
    warned = [r.fields for r in caplog.records if r.getMessage() == "data.split.classes_missing"]
    assert sum(w["split"].startswith("fold ") and w["split"].endswith(" test") for w in warned) >= 2, warned
    # each fold's validation part (fold_val: one image here) cannot show it everywhere either, and is named
    assert any(w["split"].startswith("fold ") and w["split"].endswith(" val") for w in warned), warned
    assert all(w["classes"] == "magnetite" and "too few images" in w["hint"] for w in warned)


def test_a_class_only_validation_or_test_shows_is_warned_as_never_learnt(ray_session, tmp_path, caplog):
    """Lists put the one magnetite-bearing section in test: training never sees magnetite, and the preparation says
    so (data.split.classes_untrained), naming the class; the classes training does see are not named."""
    root = write_pyrite_sections(tmp_path / "ds", [f"s{i}" for i in range(5)], magnetite=(4,))
    for name, stems in (("train", "s0\ns1\ns2\n"), ("val", "s3\n"), ("test", "s4\n")):
        (tmp_path / f"{name}.txt").write_text(stems)
    lists = {name: str(tmp_path / f"{name}.txt") for name in ("train", "val", "test")}
    with caplog.at_level(logging.WARNING, logger="minseg.data"):
        prepared = prepare(settings(root, split={"lists": lists}), tmp=tmp_path / "work")
    assert prepared.stats["test"]["classes"]["magnetite"]["pixels"]
    warned = [r.fields for r in caplog.records if r.getMessage() == "data.split.classes_untrained"]
    assert len(warned) == 1 and warned[0]["classes"] == "magnetite" and warned[0]["split"] == "train", warned
    # the configured classes no image shows at all (the sections paint pyrite and magnetite only) are named too
    (absent,) = [r.fields for r in caplog.records if r.getMessage() == "data.classes_absent"]
    assert absent["classes"] == "galena,sphalerite,chalcopyrite,bornite,pyrrhotite,gangue"
    assert "Check data.classes" in absent["hint"]


def test_explicit_split_lists(ray_session, tmp_path, caplog):
    """Lists as people write them: Notepad's byte-order mark before the first name (it lost that image), names with
    their extension or in other case (refused as names no source has)."""
    root = write_paired(tmp_path / "ds", count=5, size=32)
    (tmp_path / "train.txt").write_text("\ufeffs0\nS1.PNG\ns2.jpg\n", encoding="utf-8")
    (tmp_path / "val.txt").write_text("s3\ns33\n")
    data = settings(root, split={"lists": {"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt")}})
    with caplog.at_level(logging.WARNING, logger="minseg.data"):
        prepared = prepare(data, tmp=tmp_path / "work")
    assert sorted(i["item_id"] for i in prepared.splits["train"]) == ["ds/s0", "ds/s1", "ds/s2"]
    assert [i["item_id"] for i in prepared.splits["val"]] == ["ds/s3"]
    assert prepared.splits["test"] == []  # s4 is listed nowhere: left out, and said
    (unlisted,) = [r.fields for r in caplog.records if r.getMessage() == "data.split.unlisted"]
    assert unlisted["images"] == 1 and unlisted["example"] == "ds/s4"
    assert not [r for r in caplog.records if r.getMessage() == "data.split.duplicate_images"]
    # a copy of a training picture under another name, listed in validation: the same pixels in two splits
    import shutil

    shutil.copy(root / "images" / "s0.jpg", root / "images" / "copy_of_s0.png")
    shutil.copy(root / "masks" / "s0.png", root / "masks" / "copy_of_s0.png")
    (tmp_path / "val.txt").write_text("s3\ncopy_of_s0\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minseg.data"):
        prepare(data, tmp=tmp_path / "work2")
    (duplicated,) = [r.fields for r in caplog.records if r.getMessage() == "data.split.duplicate_images"]
    assert duplicated["images"] == 1 and duplicated["copies"] == "ds/s0 (train) = ds/copy_of_s0 (val)"
    assert [(r.file, r.reason) for r in prepared.quarantine] == [
        (str(tmp_path / "val.txt"), "val list names 's33', which no source has")]


def test_coco_polygons_and_both_rle_forms(ray_session, tmp_path):
    root, truth = write_coco(tmp_path / "coco")
    classes = {"classes": [{"name": "background", "codes": [0]}, {"name": "plastic", "codes": [1]},
                           {"name": "fibre", "codes": [2]}]}
    data = settings(root, classes=classes, split={"train": 1.0, "val": 0.0, "test": 0.0})
    prepared = prepare(data, tmp=tmp_path / "work")
    items = {i["item_id"]: i for i in prepared.splits["train"]}
    _, first = load_example(items["coco/train/img0"], prepared.classmap, data.limits, Storage())
    x0, y0, x1, y1 = truth["polygon"]
    # filled as the COCO API fills it (pixel-edge coordinates, a pixel inside when its centre is): exactly the
    # 20 x 10 pixels from (10, 10), not Pillow's 21 x 11 with the outline's pixels
    polygon = np.zeros_like(first, bool)
    polygon[y0:y1, x0:x1] = True
    assert (first == 1).sum() == 200 and (first[polygon] == 1).all() and first[5, 5] == 0
    assert (first[truth["rle"] == 1] == 2).all()
    _, second = load_example(items["coco/train/img1"], prepared.classmap, data.limits, Storage())
    assert np.array_equal(second, truth["rle"].astype(np.uint8))


def test_labelme_polygons_by_class_name(ray_session, tmp_path):
    root = write_labelme(tmp_path / "lm")
    data = settings(root, split={"train": 1.0, "val": 0.0, "test": 0.0})
    prepared = prepare(data, tmp=tmp_path / "work")
    _, ids = load_example(prepared.splits["train"][0], prepared.classmap, data.limits, Storage())
    assert ids[10, 10] == CLASS_NAMES.index("pyrite") and ids[30, 30] == CLASS_NAMES.index("galena")
    assert ids[2, 38] == 0


def test_class_folders_for_classification(ray_session, tmp_path):
    for cls in ("calcite", "quartz"):
        for i in range(4):
            folder = tmp_path / "cls" / cls
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.jpg").write_bytes(jpg_bytes(render_section(i + (10 if cls == "quartz" else 0), 40, 30)[0]))
    (tmp_path / "cls" / "quartz" / "notes.txt").write_text("not an image")
    data = validate_config({"sources": [{"uri": str(tmp_path / "cls")}], "tiling": {"size": 24}}, DataSettings)
    prepared = prepare(data, Task.CLASSIFICATION, tmp=tmp_path / "work")
    assert prepared.classmap.names == ("calcite", "quartz")
    assert [r.reason for r in prepared.quarantine] == ["not an image"]
    rows = split_dataset(prepared, data, "train", Storage(), 0.25).take_all()
    assert rows[0]["image"].shape == (24, 24, 3) and {int(r["label"]) for r in rows} <= {0, 1}
    # the normalisation statistics are those of the very pixels training reads (the 40 x 30 photographs squashed
    # to 24 x 24; they were measured on an aspect-kept 24 x 18 box-filtered copy)
    pixels = np.concatenate([r["image"].reshape(-1, 3) for r in rows]).astype(np.float64)
    assert np.allclose(prepared.normalization["mean"], pixels.mean(0), atol=1e-3)
    assert np.allclose(prepared.normalization["std"], pixels.std(0), atol=1e-3)
    with pytest.raises(ValueError, match="which trains classification models, not this segmentation model"):
        prepare(data, Task.SEGMENTATION, tmp=tmp_path / "work2")


def test_what_the_run_loses_is_said_on_the_console(ray_session, tmp_path, caplog):
    """A source that cannot be read (a typo among several), quarantined files and a split left empty (too few usable
    images for the ratios: evaluate refused only after training) were each only in data/quarantine.csv or an INFO
    count. Each is a warning now."""
    root = write_paired(tmp_path / "ds", count=4, size=48)
    image, mask = render_section(9, 48, 48)
    (root / "images" / "small.jpg").write_bytes(jpg_bytes(image[:40]))  # quarantined: size mismatch
    (root / "masks" / "small.png").write_bytes(png_bytes(mask))
    from PIL import Image  # a 12-bit camera frame in 16-bit samples: 0..4095 of 65535 decodes to 0..16

    Image.fromarray(image[..., 0].astype(np.uint16) * 16).save(root / "images" / "bse.png")
    (root / "masks" / "bse.png").write_bytes(png_bytes(mask))
    data = settings(root, split={"train": 0.5, "val": 0.5, "test": 0.0})
    # a source that is not there (a typo among several): refused, as the others alone would train a run that
    # looks complete (it was a warning); a damaged one is a warning, its images reported
    data.sources.append(data.sources[0].model_copy(update={"uri": str(tmp_path / "dz")}))
    with pytest.raises(InputError, match=r"data.sources\[1\].uri: \S+/dz: no such file or folder"):
        prepare(data, tmp=tmp_path / "work")
    (tmp_path / "dz.zip").write_bytes(b"PK not a zip")
    data.sources[1] = data.sources[1].model_copy(update={"uri": str(tmp_path / "dz.zip")})
    with caplog.at_level(logging.WARNING, logger="minseg.data"):
        prepared = prepare(data, tmp=tmp_path / "work")
    warned = {r.getMessage(): r.fields for r in caplog.records}
    assert warned["data.source_unreadable"]["source"] == "data.sources[1]"
    assert warned["data.source_unreadable"]["uri"] == str(tmp_path / "dz.zip")
    assert warned["data.quarantined"]["files"] == len(prepared.quarantine) == 2
    assert "data.split.empty" not in warned  # test's ratio is 0: asked for
    assert warned["data.images_dark"]["images"] == 1 and warned["data.images_dark"]["example"] == "ds/bse"
    caplog.clear()
    two = write_paired(tmp_path / "two", count=2, size=48)
    single = settings(two, split={"train": 0.7, "val": 0.15, "test": 0.15})  # 2 usable images for 3 splits
    with caplog.at_level(logging.WARNING, logger="minseg.data"):
        prepared = prepare(single, tmp=tmp_path / "work2")
    empty = {r.fields["split"]: r.fields for r in caplog.records if r.getMessage() == "data.split.empty"}
    assert "test" in empty and not prepared.splits["test"] and "minseg evaluate needs test images" in \
        empty["test"]["hint"]


def test_twelve_bit_frames_with_data_bit_depth(ray_session, tmp_path, caplog):
    """12-bit camera frames in 16-bit PNGs: with data.bit_depth 12 they fill 0..255 (no images_dark warning), a
    frame with a sample above 4095 is quarantined naming the value, and the data signature tells the readings
    apart (a member trained on one is not resumed or evaluated on the other)."""
    from dataclasses import replace

    from PIL import Image

    root = tmp_path / "cam"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    greens = {}
    for index in range(3):
        image, mask = render_section(20 + index, 48, 48)
        greens[f"f{index}.png"] = image[..., 1]
        frame = (image[..., 1].astype(np.uint32) * 4095 // 255).astype(np.uint16)  # 0..4095
        if index == 2:
            frame[3, 4] = 4096
        Image.fromarray(frame).save(root / "images" / f"f{index}.png")
        (root / "masks" / f"f{index}.png").write_bytes(png_bytes(mask))
    data = settings(root, split={"train": 0.5, "val": 0.5, "test": 0.0}, bit_depth=12)
    with caplog.at_level(logging.WARNING, logger="minseg.data"):
        prepared = prepare(data, tmp=tmp_path / "work")
    assert "data.images_dark" not in {r.getMessage() for r in caplog.records}
    (bad,) = prepared.quarantine
    assert bad.file.endswith("f2.png") and "a sample of 4096 (at x=4, y=3) is above 4095" in bad.reason
    item = prepared.splits["train"][0]
    image, _ = load_example(item, prepared.classmap, data.limits, Storage(), bit_depth=12)
    assert np.array_equal(image[..., 0], greens[item["image_name"].rsplit("/", 1)[-1]])  # the camera's 8-bit view
    assert load_example(item, prepared.classmap, data.limits, Storage())[0].max() <= 16
    with caplog.at_level(logging.WARNING, logger="minseg.data"):  # scored as 16-bit: said to be dark
        scoring = prepare_scoring_data(settings(root), None, 0, Storage(), str(tmp_path / "score"), {})
    assert len(scoring.splits["test"]) == 3
    (dark,) = [r.fields for r in caplog.records if r.getMessage() == "data.images_dark"]
    assert dark["images"] == 3 and "data.bit_depth" in dark["hint"]
    tiles = split_dataset(prepared, data, "train", Storage(), 0.25).take_all()  # what members train on
    assert tiles and max(int(row["image"].max()) for row in tiles) > 100
    assert prepared.bit_depth == 12
    assert prepared.image_bit_depths == ((0, "image", 12),)
    sixteen = replace(prepared, bit_depth=16, image_bit_depths=((0, "image", 16),))
    assert prepared.data_signature() != sixteen.data_signature()
    # at the default, the signature checkpoints recorded before bit depths existed; at 12, the one recorded
    # since data.bit_depth exists
    parts = [sorted((i["item_id"], i["tiles"]) for i in prepared.splits[s]) for s in ("train", "val", "test")]
    before = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    assert sixteen.data_signature() == before
    assert prepared.data_signature() == hashlib.sha256(f"{before}/bit_depth=12".encode()).hexdigest()[:16]


def test_rgb_colour_masks(tmp_path):
    classmap = ClassMap.from_settings(validate_config(
        {"classes": [{"name": "bg", "color": [0, 0, 0]}, {"name": "ore", "color": [255, 0, 0]}],
         "mask_encoding": "colors"}, DataSettings.model_fields["classes"].annotation.__args__[0]))
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1] = (255, 0, 0)
    rgb[2, 2] = (0, 255, 0)
    ids, unknown = classmap.map_codes(rgb)
    assert ids[1, 1] == 1 and ids[0, 0] == 0 and ids[2, 2] == 255 and unknown == [0x00FF00]
    assert classmap.describe_unknown(unknown) == ("mask colours [0, 255, 0] are no class's colour (classes: bg "
                                                  "[0, 0, 0], ore [255, 0, 0])")
    grey = classmap.describe_unknown([0x808080], grey=True)
    assert grey.startswith("mask colours [128, 128, 128] are no class's colour (a grey mask: its pixels have no")
    white = classmap.describe_unknown([0xFFFFFF])  # a colour mask's unlabelled white: not "a grey mask"
    assert white.startswith("mask colours [255, 255, 255] are no class's colour (unlabelled pixels? list their "
                            "colour in ignore_colors)")


def test_colour_masks_that_would_be_read_wrong_are_refused():
    """With mask_encoding colors: two classes of one colour (every pixel of the first was read as the second),
    ignore_codes (never matching a colour: a white 'unlabelled' quarantined every mask, 'not in the class map
    (known: [..., 16777215])'), see-through pixels (read as the colour under them: black, the background's)."""
    from minseg.io.images import DecodeError, decode_mask

    model = DataSettings.model_fields["classes"].annotation.__args__[0]

    def classes(**extra):
        return validate_config({"classes": [{"name": "bg", "color": [0, 0, 0]}, {"name": "pyrite", "color": [9, 9, 9]},
                                            {"name": "pyrrhotite", "color": [200, 0, 0]}],
                                "mask_encoding": "colors", **extra}, model)

    with pytest.raises(ConfigError, match=r"colour \[200, 0, 0\] is given to both 'pyrite' and 'pyrrhotite'"):
        validate_config({"classes": [{"name": "pyrite", "color": [200, 0, 0]},
                                     {"name": "pyrrhotite", "color": [200, 0, 0]}], "mask_encoding": "colors"}, model)
    with pytest.raises(ConfigError, match=r"list the colours of unlabelled pixels as ignore_colors"):
        classes(ignore_codes=[16777215])
    with pytest.raises(ConfigError, match=r"colours \[\[9, 9, 9\]\] are both class colours and ignore_colors"):
        classes(ignore_colors=[[9, 9, 9]])
    classmap = ClassMap.from_settings(classes(ignore_colors=[[255, 255, 255]]))
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0], rgb[1, 2] = (255, 255, 255), (200, 0, 0)
    ids, unknown = classmap.map_codes(rgb)
    assert not unknown and ids[0, 0] == 255 and ids[1, 2] == 2 and ids[1, 1] == 0
    assert ClassMap.from_document(classmap.to_document()).to_document() == classmap.to_document()
    rgba = np.dstack([rgb, np.full((2, 3), 255, np.uint8)])
    rgba[0, 1, 3] = 0  # one unpainted pixel
    with pytest.raises(DecodeError, match=r"mask has 1 transparent pixel\(s\) \(16.7%\)"):
        decode_mask(png_bytes(rgba), "m.png", 10**6, rgb=True)
    rgba[0, 1, 3] = 255  # opaque: its alpha says nothing
    assert decode_mask(png_bytes(rgba), "m.png", 10**6, rgb=True).shape == (2, 3, 3)


def test_auto_cache_only_when_tiles_fit_the_object_store(ray_session):
    from minseg.data.pipeline import PreparedData, _should_cache

    data = settings("/unused")
    prepared = PreparedData(Task.SEGMENTATION, None, {}, [], {}, {}, data.tiling, data.limits)
    assert data.cache == "auto"
    assert _should_cache(data, prepared, 100)
    assert not _should_cache(data, prepared, 10**9)
    assert not _should_cache(data.model_copy(update={"cache": False}), prepared, 1)


def test_image_decompression_bomb_is_quarantined(ray_session, tmp_path):
    root = write_paired(tmp_path / "ds", count=2, size=64)
    data = settings(root, limits={"max_image_pixels": 2000}, split={"train": 1.0, "val": 0.0, "test": 0.0})
    with pytest.raises(DataError) as info:
        prepare(data, tmp=tmp_path / "work")
    assert all("exceeds the limit of 2,000 (data.limits.max_image_pixels)" in r.reason for r in info.value.quarantine)


def test_tiff_images_and_masks(tmp_path):
    import tifffile

    from minseg.data.config import SourceSettings
    from minseg.data.layouts import read_paired

    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    image, mask = render_section(5, 40, 56)
    tifffile.imwrite(tmp_path / "ds" / "images" / "t.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "ds" / "masks" / "t.tiff", mask)
    container = open_container(str(tmp_path / "ds"), LimitSettings(), Storage())
    listed = read_paired(container, "ds", SourceSettings(uri=str(tmp_path / "ds")), Storage(), None)
    items, rejected = listed.items, listed.rejected
    classmap = ClassMap.from_settings(settings(tmp_path).classes)
    decoded, ids = load_example(items[0], classmap, LimitSettings(), Storage())
    assert not rejected and np.array_equal(decoded, image) and np.array_equal(ids, mask)


def test_coco_category_zero_would_swallow_unannotated_pixels(tmp_path, ray_session):
    """Annotations of category 0 are refused (0 fills every pixel no annotation covers), naming the category;
    an unused category 0 (Roboflow's supercategory, as in the real microplastic export) is fine."""
    import json

    root, _ = write_coco(tmp_path / "coco")
    path = root / "train" / "_annotations.coco.json"
    document = json.loads(path.read_text())
    document["annotations"][0]["category_id"] = 0
    path.write_text(json.dumps(document))
    classes = {"classes": [{"name": "background", "codes": [0]}, {"name": "plastic", "codes": [1]},
                           {"name": "fibre", "codes": [2]}]}
    data = settings(root, classes=classes, split={"train": 1.0, "val": 0.0, "test": 0.0})
    with pytest.raises(DataError) as caught:
        prepare(data, tmp=tmp_path / "work")
    assert "_annotations.coco.json: annotations of category id 0 ('objects') collide with code 0" in str(caught.value)


def test_a_class_default_code_may_not_be_another_class_code():
    """Codes silently overwrote each other (the later class won every pixel of the code)."""
    from minseg.config import ConfigError

    with pytest.raises(ConfigError, match=r"mask code 1 is given to both 'pyrite \(by default.*' and 'quartz'"):
        settings("x", classes={"classes": [{"name": "resin", "codes": [0]}, {"name": "pyrite"},
                                           {"name": "quartz", "codes": [1]}]})
    with pytest.raises(ConfigError, match=r"mask code 0 is given to both 'resin \(by default.*' and 'quartz'"):
        settings("x", classes={"classes": [{"name": "resin"}, {"name": "quartz", "codes": [0]}]})


def test_a_palette_mask_whose_indices_are_not_class_codes_is_refused():
    """An editor's indexed-colour export of a colour mask numbers its colours as it finds them: index 1 drawn in
    sphalerite's colour was read as code 1 (every pixel another class, nothing said). Refused when an index is drawn
    in another class's colour; VOC-style palettes (index i in its own class's colour, or in colours no class has)
    are read by index as before."""
    from PIL import Image

    from minseg.io.images import decode_mask, mask_palette

    classmap = ClassMap.from_settings(validate_config(
        {"classes": [{"name": "bg", "color": [0, 0, 0]}, {"name": "pyrite", "color": [255, 215, 0]},
                     {"name": "sphalerite", "color": [128, 0, 128]}]},
        DataSettings.model_fields["classes"].annotation.__args__[0]))

    def palette_png(colours):
        image = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
        image.putpalette([c for colour in colours for c in colour])
        out = __import__("io").BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    adaptive = palette_png([(128, 0, 128), (0, 0, 0), (255, 215, 0)])  # sphalerite, background, pyrite
    codes = decode_mask(adaptive, "m.png", 100)
    problem = classmap.palette_problem(codes, mask_palette(adaptive, "m.png"))
    assert problem.startswith("palette mask whose colours are other classes': index 0 (read as 'bg') is drawn in "
                              "[128, 0, 128], the colour of 'sphalerite'")
    for fine in ([(0, 0, 0), (255, 215, 0), (128, 0, 128)], [(0, 0, 0), (128, 0, 0), (0, 128, 0)]):  # own / VOC's
        data = palette_png(fine)
        assert classmap.palette_problem(decode_mask(data, "m.png", 100), mask_palette(data, "m.png")) is None
    assert mask_palette(png_bytes(np.zeros((2, 2), np.uint8)), "m.png") is None  # a grey mask has no palette
    # colours the config does not give (default display colours) say nothing: VOC's bus (index 6) is drawn in
    # (0, 128, 128), the display colour of a twelfth class
    voc = ClassMap.from_names([f"c{i}" for i in range(12)])
    voc_palette = np.zeros((256, 3), np.uint8)
    voc_palette[6] = (0, 128, 128)
    assert voc.palette_problem(np.array([[0, 6]], np.uint8), voc_palette) is None
