"""The layout registry: one entry per layout, detection order as before, new layouts plug in."""

import logging
import posixpath

import numpy as np
import pytest

from minseg.config.base import validate_config
from minseg.data.config import DataSettings, LimitSettings
from minseg.data.containers import open_container
from minseg.data.layouts import (
    LayoutItems,
    detect_layout,
    get_layout,
    list_layouts,
    make_item,
    register_layout,
    unregister_layout,
)
from minseg.data.pipeline import _list_items, load_example, prepare_data
from minseg.enums import DatasetLayout, Task
from minseg.io.storage import Storage
from minseg.synth.minerals import CLASS_NAMES
from minseg.synth.sections import render_section
from tests.data.helpers import encode_rle, jpg_bytes, png_bytes, write_coco, write_labelme, write_paired, write_voc

NINE = {"classes": [{"name": n, "codes": [i]} for i, n in enumerate(CLASS_NAMES)]}
BUILT_IN = [DatasetLayout.VOC, DatasetLayout.INSTANCE_FOLDERS, DatasetLayout.PAIRED, DatasetLayout.COCO,
            DatasetLayout.LABELME, DatasetLayout.CLASS_FOLDERS]


def _detect(root):
    storage = Storage()
    return detect_layout(open_container(str(root), LimitSettings(), storage), storage=storage)


def test_every_layout_but_auto_has_exactly_one_reader():
    registered = [entry.layout for entry in list_layouts()]
    assert sorted(map(str, registered)) == sorted(m.value for m in DatasetLayout if m is not DatasetLayout.AUTO)
    assert len(registered) == len(set(registered))
    assert all(get_layout(m).layout is m for m in BUILT_IN)
    assert {m: get_layout(m).task for m in BUILT_IN} == {
        **{m: Task.SEGMENTATION for m in BUILT_IN}, DatasetLayout.CLASS_FOLDERS: Task.CLASSIFICATION}
    with pytest.raises(ValueError, match="'voc' is registered twice"):
        register_layout(DatasetLayout.VOC, detect=lambda probe: False, task=Task.SEGMENTATION, hint="-")(len)
    with pytest.raises(ValueError, match="'auto' means detection"):
        register_layout("auto", detect=lambda probe: False, task=Task.SEGMENTATION, hint="-")
    with pytest.raises(ValueError, match="unknown layout 'nope'; registered layouts: voc, paired, instance_folders"):
        get_layout("nope")


def test_detection_order_is_unchanged(tmp_path):
    assert [entry.layout for entry in list_layouts()] == BUILT_IN
    # sources that look like two layouts go to the one the old if-chain tried first
    both = write_paired(write_voc(tmp_path / "voc_and_paired", 1), 1)
    assert _detect(both) is DatasetLayout.VOC
    root, _ = write_coco(tmp_path / "paired_and_coco")
    assert _detect(write_paired(root, 1)) is DatasetLayout.PAIRED
    root, _ = write_coco(tmp_path / "coco_and_labelme")
    write_labelme(root / "a")
    assert _detect(root) is DatasetLayout.COCO  # by file name, before any JSON is read
    labelme = write_labelme(tmp_path / "labelme" / "x")
    write_labelme(tmp_path / "labelme" / "y")  # images in two folders also look like class folders
    assert _detect(tmp_path / "labelme") is DatasetLayout.LABELME
    with pytest.raises(ValueError, match=r"looked for VOC JPEGImages/ \+ SegmentationClass/, <id>/images/<id>.png "
                                         r"\+ <id>/masks/<object>.png, images/ \+ masks/, COCO or Labelme JSON, "
                                         r"and one folder per class\); set 'layout'"):
        # without storage no JSON is read: a lone Labelme folder is not recognised
        detect_layout(open_container(str(labelme), LimitSettings(), Storage()))


# -- a layout added from outside: images and <stem>_mask.png side by side ------------


def _looks_side_by_side(probe):
    return any(m.endswith("_mask.png") for m in probe.members)


def _read_side_by_side(container, prefix, source, storage, classmap):
    masks = {m[: -len("_mask.png")]: m for m in container.members if m.endswith("_mask.png")}
    items = [make_item(container, prefix, m, mask=container.members[masks[posixpath.splitext(m)[0]]],
                       mask_name=masks[posixpath.splitext(m)[0]])
             for m in sorted(container.members) if m.endswith(".jpg") and posixpath.splitext(m)[0] in masks]
    return LayoutItems(items, [])


@pytest.fixture
def side_by_side(tmp_path):
    register_layout("side_by_side", detect=_looks_side_by_side, task=Task.SEGMENTATION,
                    hint="<stem>_mask.png beside images")(_read_side_by_side)
    root = tmp_path / "sbs"
    root.mkdir()
    for i in range(3):
        image, mask = render_section(40 + i, 48, 48)
        (root / f"p{i}.jpg").write_bytes(jpg_bytes(image))
        (root / f"p{i}_mask.png").write_bytes(png_bytes(mask))
    try:
        yield root
    finally:
        unregister_layout("side_by_side")
    assert "side_by_side" not in [entry.layout for entry in list_layouts()]


def test_a_registered_layout_is_detected_and_listed(side_by_side, tmp_path):
    assert [entry.layout for entry in list_layouts()][-1] == "side_by_side"  # default priority: tried last
    assert _detect(side_by_side) == "side_by_side"
    assert _detect(write_paired(tmp_path / "paired", 1)) is DatasetLayout.PAIRED
    data = validate_config({"sources": [{"uri": str(side_by_side)}], "classes": NINE}, DataSettings)
    items, rejected, folder_names = _list_items(data, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)
    assert [i["item_id"] for i in items] == ["sbs/p0", "sbs/p1", "sbs/p2"]
    assert rejected == [] and folder_names is None
    with pytest.raises(ValueError, match=r"was detected as layout side_by_side \(<stem>_mask.png beside images\), "
                                         "which trains segmentation models, not this classification model"):
        _list_items(data, Storage(), str(tmp_path / "staging"), Task.CLASSIFICATION)


def test_a_layout_for_the_other_task_says_which_layouts_and_keys_fit(tmp_path):
    """Class folders found for a segmentation model (and masks for a classifier): one line naming what was
    detected, the layouts that train this task with what each looks like, and the keys that choose one."""
    for name in ("pyrite", "quartz"):
        (tmp_path / "cls" / name).mkdir(parents=True)
        (tmp_path / "cls" / name / "0.jpg").write_bytes(jpg_bytes(render_section(1, 24, 24)[0]))
    data = validate_config({"sources": [{"uri": str(tmp_path / "paired")}, {"uri": str(tmp_path / "cls")}],
                            "classes": NINE}, DataSettings)
    write_paired(tmp_path / "paired", 1)
    with pytest.raises(ValueError) as caught:
        _list_items(data, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'cls'} was detected as layout class_folders "
                                                      "(one folder per class), which trains classification models")
    assert ("layouts for segmentation: voc (VOC JPEGImages/ + SegmentationClass/), instance_folders "
            "(<id>/images/<id>.png + <id>/masks/<object>.png), paired (images/ + masks/)") in message
    assert ("set data.sources[1].layout to one of them, and data.sources[1].images_dir / masks_dir (now 'images' / "
            "'masks')") in message
    data = validate_config({"sources": [{"uri": str(tmp_path / "paired"), "layout": "paired"}]}, DataSettings)
    with pytest.raises(ValueError, match=r"is set to layout paired \(images/ \+ masks/\), which trains segmentation "
                                         r"models, not this classification model; layouts for classification: "
                                         r"class_folders \(one folder per class\); set data.sources\[0\].layout"):
        _list_items(data, Storage(), str(tmp_path / "staging"), Task.CLASSIFICATION)


def test_a_registered_layout_prepares_for_training(ray_session, side_by_side, tmp_path):
    data = validate_config({"sources": [{"uri": str(side_by_side)}], "classes": NINE, "tiling": {"size": 32},
                            "split": {"train": 1.0, "val": 0.0, "test": 0.0}}, DataSettings)
    prepared = prepare_data(data, Task.SEGMENTATION, seed=0, storage=Storage(), work_uri=str(tmp_path / "work"),
                            task_cpus=0.25)
    assert sorted(i["item_id"] for i in prepared.splits["train"]) == ["sbs/p0", "sbs/p1", "sbs/p2"]
    first = min(prepared.splits["train"], key=lambda i: i["item_id"])
    _, ids = load_example(first, prepared.classmap, data.limits, Storage())
    assert np.array_equal(ids, render_section(40, 48, 48)[1])


# -- the same file name in different subfolders, in every layout (items in = used + quarantined) ---------


def _read(root, layout, classes=NINE, **selection):
    from minseg.data.classmap import ClassMap

    storage = Storage()
    data = validate_config({"sources": [{"uri": str(root), "layout": str(layout), **selection}], "classes": classes},
                           DataSettings)
    container = open_container(str(root), LimitSettings(), storage)
    return get_layout(layout).read(container, "src", data.sources[0], storage, ClassMap.from_settings(data.classes))


def _two_sites(root, images_dir, masks_dir, mask_ext=".png"):
    for site in ("siteA", "siteB"):
        for name in ("001", "002"):
            image, mask = render_section(hash((site, name)) % 1000, 16, 16)
            (root / images_dir / site).mkdir(parents=True, exist_ok=True)
            (root / masks_dir / site).mkdir(parents=True, exist_ok=True)
            (root / images_dir / site / f"{name}.jpg").write_bytes(jpg_bytes(image))
            (root / masks_dir / site / f"{name}{mask_ext}").write_bytes(png_bytes(mask))


@pytest.mark.parametrize("layout", [DatasetLayout.PAIRED, DatasetLayout.VOC])
def test_mask_folders_pair_by_path_below_their_roots(tmp_path, layout):
    images_dir, masks_dir = ("images", "masks") if layout is DatasetLayout.PAIRED else ("JPEGImages",
                                                                                        "SegmentationClass")
    _two_sites(tmp_path, images_dir, masks_dir)
    # a true collision: two images of one name in one folder (a .jpg and a .png)
    (tmp_path / images_dir / "siteA" / "002.png").write_bytes(png_bytes(render_section(7, 16, 16)[0]))
    listed = _read(tmp_path, layout)
    ids = sorted(item["item_id"] for item in listed.items)
    assert ids == ["src/siteA/001", "src/siteB/001", "src/siteB/002"]
    for item in listed.items:  # each image with its own folder's mask
        assert item["image_name"].split("/")[-2] == item["mask_name"].split("/")[-2]
    ambiguous = [r for r in listed.rejected if "is ambiguous" in r.reason]
    assert len(ambiguous) == 2 and all("siteA/002" in r.reason for r in ambiguous)
    # its mask is not "without an image": it has two (both layouts: _keyed says which keys are ambiguous)
    (mask,) = [r for r in listed.rejected if r.file.endswith(f"{masks_dir}/siteA/002.png")]
    assert mask.reason == ("the mask of 'siteA/002', whose images of one name are ambiguous (each quarantined): "
                           "keep one image")
    images_in = 5  # 4 jpg + 1 png
    assert len(listed.items) + len([r for r in listed.rejected if images_dir in r.file]) == images_in


@pytest.mark.parametrize("layout", [DatasetLayout.PAIRED, DatasetLayout.VOC])
def test_globs_choose_before_same_named_files_are_ambiguous(tmp_path, layout):
    """Readers that pair by name apply include / exclude first: 002.jpg beside 002.png is no ambiguity when the
    globs keep only one of them, and the masks of left-out images are not reported as masks without an image."""
    images_dir, masks_dir = ("images", "masks") if layout is DatasetLayout.PAIRED else ("JPEGImages",
                                                                                        "SegmentationClass")
    _two_sites(tmp_path, images_dir, masks_dir)
    (tmp_path / images_dir / "siteA" / "002.png").write_bytes(png_bytes(render_section(7, 16, 16)[0]))
    listed = _read(tmp_path, layout, include=["*.jpg"])
    assert sorted(item["image_name"].split("/", 1)[1] for item in listed.items) == [
        "siteA/001.jpg", "siteA/002.jpg", "siteB/001.jpg", "siteB/002.jpg"]
    assert listed.rejected == []
    assert listed.left_out == [f"{images_dir}/siteA/002.png"]
    # siteA's masks lose their images on purpose: not reported, not even two of one name
    (tmp_path / masks_dir / "siteA" / "001.tif").write_bytes((tmp_path / masks_dir / "siteA" / "001.png").read_bytes())
    listed = _read(tmp_path, layout, exclude=["siteA/*"])
    assert sorted(item["item_id"] for item in listed.items) == ["src/siteB/001", "src/siteB/002"]
    assert listed.rejected == [] and len(listed.left_out) == 3
    (tmp_path / masks_dir / "siteA" / "001.tif").unlink()
    listed = _read(tmp_path, layout, exclude=["siteA/002.png"])  # the kept .jpg pairs with the mask
    assert len(listed.items) == 4 and listed.rejected == []


def test_coco_and_labelme_keep_subfolders_in_item_ids(tmp_path):
    import json

    coco = tmp_path / "coco"
    for site in ("siteA", "siteB"):
        (coco / site).mkdir(parents=True)
        (coco / site / "001.jpg").write_bytes(jpg_bytes(render_section(1, 16, 16)[0]))
    document = {"images": [{"id": i, "file_name": f"{site}/001.jpg", "height": 16, "width": 16}
                           for i, site in enumerate(("siteA", "siteB"))],
                "annotations": [], "categories": [{"id": 1, "name": "pyrite"}]}
    (coco / "_annotations.coco.json").write_text(json.dumps(document))
    listed = _read(coco, DatasetLayout.COCO)
    assert sorted(i["item_id"] for i in listed.items) == ["src/siteA/001", "src/siteB/001"] and not listed.rejected

    labelme = tmp_path / "labelme"
    for site in ("siteA", "siteB"):
        (labelme / site).mkdir(parents=True)
        (labelme / site / "001.png").write_bytes(png_bytes(render_section(2, 16, 16)[0]))
        (labelme / site / "001.json").write_text(json.dumps({"imagePath": "001.png", "shapes": []}))
    listed = _read(labelme, DatasetLayout.LABELME)
    assert sorted(i["item_id"] for i in listed.items) == ["src/siteA/001", "src/siteB/001"] and not listed.rejected

    # left out before anything is checked: a listed image that is missing, an annotation with an unknown label
    document["images"].append({"id": 9, "file_name": "siteC/lost.jpg", "height": 16, "width": 16})
    (coco / "_annotations.coco.json").write_text(json.dumps(document))
    listed = _read(coco, DatasetLayout.COCO, exclude=["siteC/*"])
    assert len(listed.items) == 2 and not listed.rejected and listed.left_out == ["siteC/lost.jpg"]
    (labelme / "siteB" / "001.json").write_text(json.dumps({"imagePath": "001.png", "shapes": [
        {"label": "unobtainium", "points": [[1, 1], [5, 5]], "shape_type": "rectangle"}]}))
    listed = _read(labelme, DatasetLayout.LABELME, exclude=["siteB/*"])
    assert [i["item_id"] for i in listed.items] == ["src/siteA/001"] and not listed.rejected
    assert "unobtainium" in _read(labelme, DatasetLayout.LABELME).rejected[0].reason


def test_coco_in_the_coco_datasets_own_layout(tmp_path, caplog):
    """annotations/instances_train2017.json names its images by file name only; they sit in train2017/ beside
    annotations/ (the COCO dataset's layout), or in images/ there. Both are found, their folder gives the item's
    id and the split (train2017: train, a release year aside; from the file's name when the folder has none); an
    image in neither is missing, said with where it was looked for. The dataset's captions (no objects) and
    person keypoints (person masks again: every such image listed twice) beside the instances are not read."""
    import json

    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (tmp_path / "coco" / split).mkdir()
        (tmp_path / "coco" / split / f"{split[:-4]}1.jpg").write_bytes(jpg_bytes(render_section(1, 16, 16)[0]))
        images = [{"id": 1, "file_name": f"{split[:-4]}1.jpg", "height": 16, "width": 16}]
        person = {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]]}
        for kind, annotations in (("instances", [person]), ("person_keypoints", [{**person, "keypoints": []}]),
                                  ("captions", [{"id": 6, "image_id": 1, "caption": "a grain of pyrite"}])):
            document = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pyrite"}]}
            (tmp_path / "coco" / "annotations" / f"{kind}_{split}.json").write_text(json.dumps(document))
    with caplog.at_level(logging.INFO, logger="minseg"):
        listed = _read(tmp_path, DatasetLayout.COCO)
    assert not listed.rejected
    assert sorted((i["item_id"], i["layout_split"]) for i in listed.items) == [
        ("src/train2017/train1", "train"), ("src/val2017/val1", "val")]
    skipped = sorted((r.fields["file"], r.fields["reason"]) for r in caplog.records
                     if r.getMessage() == "data.coco_file_skipped")
    assert skipped[0] == ("coco/annotations/captions_train2017.json",
                          "no annotation has a category_id: not object annotations (image captions?)")
    assert skipped[2] == ("coco/annotations/person_keypoints_train2017.json",
                          "its person masks repeat those of coco/annotations/instances_train2017.json")
    assert len(skipped) == 4

    flat = tmp_path / "flat"  # every split's images in one images/ folder: the split from the file's name
    (flat / "annotations").mkdir(parents=True)
    (flat / "images").mkdir()
    (flat / "images" / "v.jpg").write_bytes(jpg_bytes(render_section(3, 16, 16)[0]))
    (flat / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "v.jpg", "height": 16, "width": 16}], "annotations": [],
        "categories": [{"id": 1, "name": "pyrite"}]}))
    assert [(i["item_id"], i["layout_split"]) for i in _read(flat, DatasetLayout.COCO).items] == [
        ("src/images/v", "val")]

    other = tmp_path / "other"  # images/ beside annotations/; one image nowhere
    (other / "annotations").mkdir(parents=True)
    (other / "images").mkdir()
    (other / "images" / "a.jpg").write_bytes(jpg_bytes(render_section(2, 16, 16)[0]))
    document = {"images": [{"id": 1, "file_name": "a.jpg", "height": 16, "width": 16},
                           {"id": 2, "file_name": "lost.jpg", "height": 16, "width": 16}],
                "annotations": [], "categories": [{"id": 1, "name": "pyrite"}]}
    (other / "annotations" / "export.json").write_text(json.dumps(document))
    listed = _read(other, DatasetLayout.COCO)
    assert [i["item_id"] for i in listed.items] == ["src/images/a"]
    (lost,) = listed.rejected
    assert lost.file.endswith("annotations/lost.jpg")
    assert lost.reason == ("listed in annotations/export.json as 'lost.jpg' but missing (looked for at "
                           "annotations/lost.jpg, export/lost.jpg, images/export/lost.jpg, images/lost.jpg, lost.jpg)")


def test_labelme_saved_on_windows(tmp_path):
    """``..\\images\\a.png`` is a relative path with backslashes, not a missing file; a truly missing
    image is reported with the path it resolved to."""
    import json

    (tmp_path / "images").mkdir()
    (tmp_path / "ann").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(render_section(3, 16, 16)[0]))
    (tmp_path / "ann" / "a.json").write_text(json.dumps({"imagePath": "..\\images\\a.png", "shapes": []}))
    (tmp_path / "ann" / "b.json").write_text(json.dumps({"imagePath": "..\\images\\b.png", "shapes": []}))
    listed = _read(tmp_path, DatasetLayout.LABELME)
    assert [i["image_name"] for i in listed.items] == ["images/a.png"]
    (rejected,) = listed.rejected
    assert rejected.file.endswith("ann/b.json") and "'..\\\\images\\\\b.png', resolved to" in rejected.reason
    assert rejected.reason.split("resolved to ")[1].split(";")[0].endswith("images/b.png")


def test_an_annotation_file_finds_its_image_whichever_unicode_form_either_was_written_in(tmp_path):
    """Member names are compared in NFC (a Mac writes NFD); a Labelme file saved on a Mac names its image in NFD
    too, and must still find it: the name it writes is normalised alike."""
    import json

    (tmp_path / "images").mkdir()
    (tmp_path / "ann").mkdir()
    nfd = "Pen\u0303asco.png"
    (tmp_path / "images" / nfd).write_bytes(png_bytes(render_section(3, 16, 16)[0]))
    (tmp_path / "ann" / "a.json").write_text(json.dumps({"imagePath": f"../images/{nfd}", "shapes": []}))
    listed = _read(tmp_path, DatasetLayout.LABELME)
    assert [i["image_name"] for i in listed.items] == ["images/Pe\u00f1asco.png"] and not listed.rejected


def test_a_second_layout_root_is_reported_not_dropped(tmp_path):
    """siteA/images+masks beside siteB/images+masks: one root is read, the other's files are quarantined."""
    for site in ("siteA", "siteB"):
        _two_sites(tmp_path / site, "images", "masks")
    listed = _read(tmp_path, DatasetLayout.PAIRED)
    outside = [r for r in listed.rejected if "outside the layout's root" in r.reason]
    assert len(listed.items) == 4 and len(outside) == 8  # the other root's 4 images and 4 masks


def test_ambiguous_items_are_quarantined_in_every_layout(tmp_path, ray_session):
    """Class folders across sites, COCO a.jpg + a.png: every item in is used or quarantined, none dropped."""
    from minseg.data.pipeline import _list_items

    root = tmp_path / "cls"
    for site in ("siteA", "siteB"):
        for cls in ("quartz", "calcite"):
            (root / site / cls).mkdir(parents=True)
            (root / site / cls / "001.jpg").write_bytes(jpg_bytes(render_section(4, 16, 16)[0]))
    (root / "siteA" / "calcite" / "001.png").write_bytes(png_bytes(render_section(5, 16, 16)[0]))
    data = validate_config({"sources": [{"uri": str(root), "layout": "class_folders"}],
                            "classes": {"classes": [{"name": "quartz"}, {"name": "calcite"}]}}, DataSettings)
    items, rejected, _ = _list_items(data, Storage(), str(tmp_path / "staging"), Task.CLASSIFICATION)
    assert sorted(i["item_id"] for i in items) == ["cls/siteA/quartz/001", "cls/siteB/calcite/001",
                                                   "cls/siteB/quartz/001"]
    ambiguous = [r for r in rejected if "is ambiguous" in r.reason]
    assert len(items) + len(ambiguous) == 5 and all("siteA/calcite/001" in r.file for r in ambiguous)


def test_class_folders_with_subfolders_strays_and_misspelt_classes(tmp_path, ray_session, caplog):
    """``Quartz/batch1/001.jpg`` took its class from ``batch1`` (classes batch1, batch2: both minerals in each);
    an image beside the class folders became a class named '' (a config error) or hid the layout; a misspelt
    class folder was quarantined at INFO level only."""
    import logging

    from minseg.data.pipeline import _list_items

    root = tmp_path / "cls"
    for cls in ("Quartz", "Calcite"):
        for batch in ("batch1", "batch2"):
            (root / cls / batch).mkdir(parents=True)
            (root / cls / batch / "001.jpg").write_bytes(jpg_bytes(render_section(4, 16, 16)[0]))
    (root / "Calcit" / "x").mkdir(parents=True)  # a misspelt class folder
    (root / "Calcit" / "x" / "002.jpg").write_bytes(jpg_bytes(render_section(5, 16, 16)[0]))
    (root / "preview.jpg").write_bytes(jpg_bytes(render_section(6, 16, 16)[0]))

    def listed(classes=None, layout="auto"):
        values = {"sources": [{"uri": str(root), "layout": layout}]}
        if classes:
            values["classes"] = {"classes": [{"name": n} for n in classes]}
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="minseg"):
            items, rejected, _ = _list_items(validate_config(values, DataSettings), Storage(),
                                             str(tmp_path / "staging"), Task.CLASSIFICATION)
        return {i["item_id"]: i["label"] for i in items}, {r.file.rsplit("/cls/", 1)[1]: r.reason for r in rejected}

    items, rejected = listed(["Quartz", "Calcite"])  # configured: the nearest enclosing class folder
    assert items == {"cls/Quartz/batch1/001": 0, "cls/Quartz/batch2/001": 0, "cls/Calcite/batch1/001": 1,
                     "cls/Calcite/batch2/001": 1}
    assert rejected == {"Calcit/x/002.jpg": "folder 'x' is not a configured class",
                        "preview.jpg": "an image outside any class folder (a class-folder source holds one folder "
                                       "of images per class)"}
    (warned,) = [r.fields for r in caplog.records if r.getMessage() == "data.class_folder_not_configured"]
    assert warned["folder"] == "Calcit/x" and warned["images"] == 1
    assert warned["hint"].startswith("did you mean 'Calcite'?")  # the misspelt folder is one level up
    (root / "Calcit" / "x" / "002.jpg").rename(root / "Calcit" / "002.jpg")
    (root / "Calcit" / "x").rmdir()
    _, rejected = listed(["Quartz", "Calcite"], layout="class_folders")
    (warned,) = [r.fields for r in caplog.records if r.getMessage() == "data.class_folder_not_configured"]
    assert warned["folder"] == "Calcit" and warned["hint"].startswith("did you mean 'Calcite'?")
    # not configured: each image's folder is its class, and one name under several parents is said
    items, _ = listed()
    assert sorted(set(items)) == sorted(items) and len(items) == 5
    (warned,) = [r.fields for r in caplog.records if r.getMessage() == "data.class_folders_repeated"]
    assert warned["classes"] == "batch1,batch2" and "list them in data.classes" in warned["hint"]
    # an export's split folders hold the same classes: no warning, and their split is the item's
    export = tmp_path / "export"
    for split in ("train", "valid", "test"):
        for cls in ("quartz", "calcite"):
            (export / split / cls).mkdir(parents=True)
            (export / split / cls / f"{split}.jpg").write_bytes(jpg_bytes(render_section(4, 16, 16)[0]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minseg"):
        items, _, _ = _list_items(validate_config({"sources": [{"uri": str(export)}]}, DataSettings), Storage(),
                                  str(tmp_path / "staging2"), Task.CLASSIFICATION)
    assert not [r for r in caplog.records if r.getMessage() == "data.class_folders_repeated"]
    assert {i["item_id"].split("/", 1)[1]: i["layout_split"] for i in items if "quartz" in i["item_id"]} == {
        "train/quartz/train": "train", "valid/quartz/valid": "val", "test/quartz/test": "test"}
    assert not [r for r in caplog.records if r.getMessage() == "data.class_folders_differ_in_case"]
    # folders named alike but for case are two classes: said (one folder on Windows and macOS)
    (export / "train" / "Quartz").mkdir()
    (export / "train" / "Quartz" / "big.jpg").write_bytes(jpg_bytes(render_section(7, 16, 16)[0]))
    with caplog.at_level(logging.WARNING, logger="minseg"):
        items, _, names = _list_items(validate_config({"sources": [{"uri": str(export)}]}, DataSettings), Storage(),
                                      str(tmp_path / "staging3"), Task.CLASSIFICATION)
    assert list(names) == ["Quartz", "calcite", "quartz"]
    (warned,) = [r.fields for r in caplog.records if r.getMessage() == "data.class_folders_differ_in_case"]
    assert warned["classes"] == "Quartz, quartz" and "data.classes" in warned["hint"]


def test_labelme_class_with_code_0_would_swallow_unlabelled_pixels(tmp_path):
    """Labelme's unlabelled pixels are code 0: a shape of the class holding code 0 is refused (second example
    of the COCO category-0 kind)."""
    write_labelme(tmp_path / "lm")
    classes = {"classes": [{"name": "pyrite"}, {"name": "galena"}, {"name": "background"}]}  # pyrite has code 0
    listed = _read(tmp_path / "lm", DatasetLayout.LABELME, classes)
    (rejected,) = listed.rejected
    assert "label 'pyrite' has code 0" in rejected.reason and not listed.items


def test_paired_names_by_pattern_and_ome_tiff_masks(tmp_path):
    """``<scene>_paralelos.jpg`` meets ``<scene>_mascara.tiff`` (and an ``.ome.tiff`` mask) by the patterns the
    source declares; a name the pattern does not fit is quarantined with the pattern named, never dropped."""
    import tifffile

    from minseg.data.classmap import ClassMap

    root = tmp_path / "thin"
    (root / "images" / "siteA").mkdir(parents=True)
    (root / "masks" / "siteA").mkdir(parents=True)
    for index, scene in enumerate(("001", "002", "003")):
        image, mask = render_section(index, 16, 16)
        (root / "images" / "siteA" / f"{scene}_paralelos.jpg").write_bytes(jpg_bytes(image))
        suffix = ".ome.tiff" if scene == "003" else ".tiff"
        tifffile.imwrite(root / "masks" / "siteA" / f"{scene}_mascara{suffix}", mask)
    (root / "images" / "siteA" / "004_cruzados.jpg").write_bytes(jpg_bytes(render_section(9, 16, 16)[0]))
    storage = Storage()
    container = open_container(str(root), LimitSettings(), storage)
    classmap = ClassMap.from_settings(validate_config({"sources": [{"uri": str(root)}], "classes": NINE},
                                                      DataSettings).classes)

    def read(**patterns):
        data = validate_config({"sources": [{"uri": str(root), "layout": "paired", **patterns}], "classes": NINE},
                               DataSettings)
        return get_layout(DatasetLayout.PAIRED).read(container, "thin", data.sources[0], storage, classmap)

    listed = read(image_pattern="{scene}_paralelos", mask_pattern="{scene}_mascara")
    assert [i["item_id"] for i in listed.items] == ["thin/siteA/001", "thin/siteA/002", "thin/siteA/003"]
    assert listed.items[2]["mask_name"].endswith("003_mascara.ome.tiff")
    assert [(posixpath.basename(r.file), r.reason) for r in listed.rejected] == [
        ("004_cruzados.jpg", "the name does not match image_pattern '{scene}_paralelos'")]
    # without the patterns nothing pairs, and each file says what it lacks
    reasons = sorted(r.reason for r in read().rejected)
    assert "no mask masks/siteA/001_paralelos.* for this image" in reasons
    assert "mask without an image images/siteA/001_mascara.*" in reasons and len(reasons) == 7
    with pytest.raises(ValueError, match="holds '\\{scene\\}' once"):
        read(image_pattern="{scene}_{scene}")


def write_instance_folders(root, count=30, size=24):
    """The microscopy instance layout: <id>/images/<id>.png and one binary mask per object in <id>/masks/."""
    truth = {}
    for index in range(count):
        folder = root / f"cell{index:02d}"
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        (folder / "images" / f"cell{index:02d}.png").write_bytes(png_bytes(render_section(index, size, size)[0]))
        merged = np.zeros((size, size), np.uint8)
        for k in range(1 + index % 3):  # 1-3 separate objects
            mask = np.zeros((size, size), np.uint8)
            mask[2 + 7 * k : 6 + 7 * k, 3 : 3 + 4 + index % 5] = 255
            merged[mask > 0] = 1
            (folder / "masks" / f"obj{k}.png").write_bytes(png_bytes(mask))
        truth[f"cell{index:02d}"] = merged
    return truth


def test_instance_mask_folders_are_merged_and_every_folder_is_used(tmp_path):
    """30 folders, each an image and its objects' masks: all 30 become items (not the first one only), each
    mask the union of its objects in the configured class; objects are counted; a folder with two images or
    with masks only, and a class subfolder that is no class, are quarantined with why."""
    from minseg.data.classmap import ClassMap
    from minseg.data.config import LimitSettings as Limits
    from minseg.data.pipeline import scan_item

    root = tmp_path / "stage1_train"
    truth = write_instance_folders(root)
    (root / "cell03" / "images" / "extra.png").write_bytes(png_bytes(render_section(99, 24, 24)[0]))
    (root / "orphan" / "masks").mkdir(parents=True)
    (root / "orphan" / "masks" / "obj0.png").write_bytes(png_bytes(np.zeros((24, 24), np.uint8)))
    (root / "cell05" / "masks" / "quartz").mkdir()
    (root / "cell05" / "masks" / "quartz" / "q.png").write_bytes(png_bytes(np.full((24, 24), 255, np.uint8)))
    (root / "unlabelled" / "images").mkdir(parents=True)  # a test folder: no masks, so no ground truth
    (root / "unlabelled" / "images" / "unlabelled.png").write_bytes(png_bytes(render_section(7, 24, 24)[0]))
    assert _detect(root) is DatasetLayout.INSTANCE_FOLDERS
    classes = {"classes": [{"name": "background"}, {"name": "nucleus", "codes": [7]}]}
    data = validate_config({"sources": [{"uri": str(root), "instance_class": "nucleus"}], "classes": classes},
                           DataSettings)
    items, rejected, _ = _list_items(data, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)
    assert len(items) == 29 and "stage1_train/cell00" in {i["item_id"] for i in items}
    reasons = {posixpath.relpath(r.file, str(root)) if r.file.startswith(str(root)) else r.file: r.reason
               for r in rejected}
    assert reasons["cell03/images/extra.png"] == "cell03/images/ holds 2 images; one image per instance folder"
    assert reasons["orphan/masks/obj0.png"] == "no image in orphan/images/ for these masks"
    assert reasons["cell05/masks/quartz/q.png"] == "class 'quartz' is not in data.classes (background, nucleus)"
    assert reasons["unlabelled/images/unlabelled.png"].startswith("no object masks in unlabelled/masks/")
    classmap = ClassMap.from_settings(data.classes)
    for item in items:
        name = item["item_id"].split("/")[-1]
        _, ids = load_example(item, classmap, Limits(), Storage())
        assert np.array_equal(ids, truth[name]), name
    row = scan_item(next(i for i in items if i["item_id"].endswith("cell02")), classmap, data, Task.SEGMENTATION,
                    Storage())
    assert row["instances"] == [0, 3] and row["particles"][1] == 3  # three separate objects
    # each true object's own area, to check grain sizes against: 4 rows x (4 + 2 % 5) columns
    assert row["instance_areas"] == [[], [4 * 6, 4 * 6, 4 * 6]]
    from minseg.data.pipeline import _instance_sizes

    assert _instance_sizes([20, 20, 40]) == {"instance_area_px": {"p10": 20.0, "median": 20.0, "p90": 36.0,
                                                                  "mean": 26.7},
                                             "instance_ecd_px_median": 5.05}
    # a class mask where an object mask belongs would turn every class into one: refused, naming it
    (root / "cell01" / "masks" / "obj0.png").write_bytes(png_bytes(np.arange(576, dtype=np.uint8).reshape(24, 24) % 3))
    bad = next(i for i in items if i["item_id"].endswith("cell01"))
    with pytest.raises(ValueError, match="obj0.png holds several non-zero values"):
        load_example(bad, classmap, Limits(), Storage())
    without = validate_config({"sources": [{"uri": str(root)}], "classes": classes}, DataSettings)
    with pytest.raises(ValueError, match="their class is not said: set the source's instance_class"):
        _list_items(without, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)
    # include / exclude choose each folder's images first: extra.png left out leaves cell03 one image; a folder
    # whose image is left out goes whole, its masks unreported
    chosen = validate_config({"sources": [{"uri": str(root), "instance_class": "nucleus", "exclude": [
        "extra.png", "cell0[4-9]/*/*"]}], "classes": classes}, DataSettings)
    items, rejected, _ = _list_items(chosen, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)
    assert "stage1_train/cell03" in {i["item_id"] for i in items} and len(items) == 24  # 30 - cell04..09
    assert not any("cell03" in r.file or "cell07" in r.file for r in rejected)


def test_instance_sizes_reach_the_dataset_statistics(ray_session, tmp_path):
    """dataset_stats: per class the true objects' count and sizes beside the connected particles."""
    root = tmp_path / "cells"
    truth = write_instance_folders(root, count=6)
    classes = {"classes": [{"name": "background"}, {"name": "nucleus", "codes": [7]}]}
    data = validate_config({"sources": [{"uri": str(root), "instance_class": "nucleus"}], "classes": classes,
                            "tiling": {"size": 16}, "split": {"train": 1.0, "val": 0.0, "test": 0.0}}, DataSettings)
    prepared = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), 0.25)
    nucleus = prepared.stats["train"]["classes"]["nucleus"]
    expected = [4 * (4 + i % 5) for i in range(6) for _ in range(1 + i % 3)]
    assert nucleus["instances"] == len(expected) == 12 and len(truth) == 6
    assert nucleus["instance_area_px"]["mean"] == round(float(np.mean(expected)), 1)
    assert nucleus["instance_area_px"]["median"] == float(np.median(expected))
    assert "instance_area_px" not in prepared.stats["train"]["classes"]["background"]


def test_paired_folders_per_split_are_not_taken_for_instance_folders(tmp_path):
    """train/, val/, test/ each with images/ and masks/ of the same names is paired data, not object masks."""
    for split, count in (("train", 3), ("val", 1), ("test", 1)):
        write_paired(tmp_path / "data" / split, count)
    assert _detect(tmp_path / "data") is not DatasetLayout.INSTANCE_FOLDERS
    write_paired(tmp_path / "one", 1)
    (tmp_path / "one" / "masks" / "extra.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    assert _detect(tmp_path / "one") is DatasetLayout.PAIRED


@pytest.mark.parametrize("layout", ["paired", "voc", "coco", "class_folders"])
def test_include_and_exclude_pick_a_subset_in_every_layout(tmp_path, layout):
    """Globs on the image's file name or its path inside the source keep a subset; what they leave out is not
    quarantined; globs that leave nothing are an InputError naming the key."""
    from minseg.errors import InputError

    root = tmp_path / "src"
    classes = NINE
    if layout == "paired":
        write_paired(root, count=4)  # images/s0.jpg .. s3.jpg
        include, exclude, expected = ["s[0-2].jpg"], ["images/s1.*"], ["src/s0", "src/s2"]
        # a hidden image the globs leave out is not quarantined either, and neither it nor a mask without its image
        # turns "leave none" into the general "no usable items"
        (root / "images" / ".hidden.jpg").write_bytes(jpg_bytes(render_section(4, 16, 16)[0]))
        (root / "masks" / "extra.png").write_bytes(png_bytes(np.zeros((16, 16), np.uint8)))
    elif layout == "voc":
        write_voc(root, count=4)  # JPEGImages/2007_000000.jpg ..
        include, exclude, expected = ["2007_00000[12].jpg"], [], ["src/2007_000001", "src/2007_000002"]
    elif layout == "coco":
        write_coco(root)  # train/img0.jpg, train/img1.jpg
        include, exclude, expected = None, ["*0.jpg"], ["src/train/img1"]
        classes = None
    else:
        for cls in ("quartz", "calcite"):
            (root / "site" / cls).mkdir(parents=True)
            for name in ("a1", "b1"):
                (root / "site" / cls / f"{name}.jpg").write_bytes(jpg_bytes(render_section(4, 16, 16)[0]))
        include, exclude, expected = ["*/quartz/*"], ["b*"], ["src/site/quartz/a1"]
        classes = {"classes": [{"name": "quartz"}, {"name": "calcite"}]}
    task = Task.CLASSIFICATION if layout == "class_folders" else Task.SEGMENTATION

    def listed(**selection):
        data = validate_config({"sources": [{"uri": str(root), "layout": layout, **selection}],
                                **({"classes": classes} if classes else {})}, DataSettings)
        return _list_items(data, Storage(), str(tmp_path / "staging"), task)

    _, everything_rejected, _ = listed()
    items, rejected, folder_names = listed(**({"include": include} if include else {}), exclude=exclude)
    assert sorted(i["item_id"] for i in items) == expected
    if layout == "class_folders":  # without a class list, a left-out folder is no class
        classes = None
        assert listed(include=include, exclude=exclude)[2] == ("quartz",)
    hidden = [r for r in everything_rejected if ".hidden" in r.file]
    assert len(hidden) == (layout == "paired") and not [r for r in rejected if ".hidden" in r.file]
    assert len(rejected) == len(everything_rejected) - len(hidden)  # left out is not quarantined
    with pytest.raises(InputError, match=r"data\.sources\[0\]: include .* leave none of its \d+ images"):
        listed(include=["no-such-*"])


def test_include_and_exclude_are_validated():
    from minseg.config.base import ConfigError

    for bad, key in (({"include": []}, "include"), ({"include": [" "]}, "include"), ({"exclude": [""]}, "exclude"),
                     ({"include": "a*"}, "include")):
        with pytest.raises(ConfigError) as raised:
            validate_config({"sources": [{"uri": "x", **bad}]}, DataSettings)
        assert f"sources.0.{key}" in str(raised.value) or f"sources[0].{key}" in str(raised.value), str(raised.value)


def test_globs_match_trailing_path_parts_and_left_out_files_are_not_reported(tmp_path, ray_session):
    """``a*.jpg`` is a file-name glob wherever the folder (an archive's top folder too) starts; ``*`` never
    crosses '/'; an unpaired photograph the globs leave out is not quarantined, one they keep is; a split list
    naming a left-out image says the globs may be why; ``score --data`` reads new folders whole."""
    import tarfile

    from minseg.cli import data_from_folders
    from minseg.data.config import SourceSettings

    source = SourceSettings(uri="x", include=["a*.jpg"], exclude=["old\\*"])
    assert source.exclude == ["old/*"]
    kept = [n for n in ("images/a1.jpg", "archive/images/b1.jpg", "all/images/a2.jpg", "old/a3.jpg",
                        "old/sub/a4.jpg", "a5.jpg", "images/A6.jpg") if source.selects(n)]
    assert kept == ["images/a1.jpg", "all/images/a2.jpg", "old/sub/a4.jpg", "a5.jpg"]

    folder = tmp_path / "sections"
    write_paired(folder, count=3)  # s0, s1, s2
    for name in ("s9", "t9"):  # photographs without masks
        (folder / "images" / f"{name}.jpg").write_bytes(jpg_bytes(render_section(9, 16, 16)[0]))
    archive = tmp_path / "sections.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="sections")  # members: sections/images/..., sections/masks/...
    (tmp_path / "train.txt").write_text("s0\ns2\n")
    for uri in (str(folder), str(archive)):
        data = validate_config({"sources": [{"uri": uri, "layout": "paired", "include": ["s*"], "exclude": ["s2.*"]}],
                                "classes": NINE, "split": {"lists": {"train": str(tmp_path / "train.txt")}}},
                               DataSettings)
        items, rejected, _ = _list_items(data, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)
        assert sorted(i["item_id"].split("/")[-1] for i in items) == ["s0", "s1"], uri
        assert [r.file.rsplit("/", 1)[-1] for r in rejected] == ["s9.jpg"], uri  # t9 left out, s9 kept: no mask
    quarantine = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), 0.25).quarantine
    (listed,) = [r.reason for r in quarantine if "list names" in r.reason]
    assert "'s2'" in listed and "(or data.sources[].include / exclude leave out)" in listed

    scored = data_from_folders(data, ["/new/a", "/new/b"])
    assert [(s.uri, s.include, s.exclude, s.layout) for s in scored.sources] == [
        ("/new/a", None, [], DatasetLayout.PAIRED), ("/new/b", None, [], DatasetLayout.PAIRED)]


def test_an_image_a_backup_annotation_file_lists_again_is_named_as_listed_twice(tmp_path, ray_session):
    """A backup copy of the export beside it lists every image a second time: both copies are quarantined (never
    one dropped), and the reason says the image is listed twice, not that the image 'gives the same item'."""
    import shutil

    from minseg.data.pipeline import _list_items

    root, _ = write_coco(tmp_path / "coco")
    shutil.copy(root / "train" / "_annotations.coco.json", root / "train" / "_annotations.coco.bak.json")
    data = validate_config({"sources": [{"uri": str(root)}], "classes": {"classes": [
        {"name": "background"}, {"name": "plastic"}, {"name": "fibre"}]}}, DataSettings)
    items, rejected, _ = _list_items(data, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)
    assert not items and len(rejected) == 4
    assert all("is listed 2 times by the source's annotation files" in r.reason for r in rejected)


def test_coco_polygons_are_filled_as_the_coco_api_fills_them_labelme_as_labelme_does():
    """Pillow paints every pixel an outline touches: a COCO square from (1, 1) to (4, 4) was 16 px, not 9;
    Labelme draws its own masks with Pillow, so its polygons keep that rule."""
    from pycocotools import mask as coco_mask

    from minseg.data.geometry import coco_polygon_mask, rasterize_polygons
    from minseg.data.pipeline import _polygon_codes

    square = [[1.0, 1.0, 4.0, 1.0, 4.0, 4.0, 1.0, 4.0]]
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(square, 8, 8))).astype(bool)
    assert np.array_equal(coco_polygon_mask(8, 8, square), expected) and expected.sum() == 9
    assert (rasterize_polygons(8, 8, [(3, square)]) == 3).sum() == 16
    assert not coco_polygon_mask(8, 8, [[1.0, 1.0, 4.0, 1.0]]).any()  # no ring of 3 points: nothing, no error
    # objects in the file's order, polygon or RLE alike (RLE was painted after every polygon); two rings of one
    # object both painted
    rle = np.zeros((10, 10), np.uint8)
    rle[0:6, 0:6] = 1
    item = {"polygon_rule": "coco", "polygons": [
        (1, {"rle": encode_rle(rle)[0], "size": [10, 10]}),
        (2, [[2, 2, 4, 2, 4, 4, 2, 4], [7, 7, 9, 7, 9, 9, 7, 9]])]}
    codes = _polygon_codes(item, 10, 10)
    assert (codes == 2).sum() == 8 and (codes == 1).sum() == 32
    item["polygons"].reverse()  # the RLE object last: over the polygon inside it
    codes = _polygon_codes(item, 10, 10)
    assert (codes == 1).sum() == 36 and (codes == 2).sum() == 4


def test_a_reported_file_is_matched_by_its_path_inside_the_source():
    """include / exclude match an image's path inside its source; a quarantined file is reported by its full
    location (``Container.describe``), which inside an archive ('data.zip!images/x.jpg') no glob on the member path
    matched: ``member_of`` gives the member back."""
    from minseg.data.containers import Container

    for uri in ("/data/src", "/data/src/", "s3://bucket/src", "s3://bucket/data.zip", "/data/x.tar.gz"):
        container = Container(uri)
        assert container.member_of(container.describe("images/a01.jpg")) == "images/a01.jpg", uri
