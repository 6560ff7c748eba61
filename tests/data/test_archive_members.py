"""Archive members as they really arrive: corrupt bytes (a bad CRC, broken deflate data) are quarantined naming the
member, never a traceback; operating-system metadata (macOS ``__MACOSX/`` and ``._*``) is no data and no report."""

import gzip
import io
import logging
import tarfile
import zipfile

import pytest

from minseg.config.base import validate_config
from minseg.data.config import DataSettings, LimitSettings
from minseg.data.containers import MemberError, is_os_metadata, open_container, read_ref
from minseg.data.pipeline import prepare_data
from minseg.enums import Task
from minseg.io.storage import Storage, StorageError
from minseg.synth.minerals import CLASS_NAMES
from minseg.synth.sections import render_section
from tests.data.helpers import jpg_bytes, png_bytes

CLASSES = {"classes": [{"name": n, "codes": [i]} for i, n in enumerate(CLASS_NAMES)]}


def dataset(count=3, size=32) -> dict[str, bytes]:
    files = {}
    for i in range(count):
        image, mask = render_section(i, size, size)
        files[f"images/s{i}.jpg"] = jpg_bytes(image)
        files[f"masks/s{i}.png"] = png_bytes(mask)
    return files


def write_zip(path, files: dict, compression=zipfile.ZIP_STORED, corrupt: str | None = None):
    """A zip of ``files``; ``corrupt``: that member's stored bytes get one byte flipped (its CRC no longer fits)."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    if corrupt is not None:
        raw = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(corrupt)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        raw[start + info.compress_size // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_corrupt_zip_member_raises_a_member_error_naming_it(tmp_path, compression):
    files = dataset()
    path = write_zip(tmp_path / "ds.zip", files, compression, corrupt="images/s1.jpg")
    storage = Storage()
    container = open_container(str(path), LimitSettings(), storage)
    with pytest.raises(MemberError, match=r"ds\.zip!images/s1\.jpg: corrupt archive member") as info:
        read_ref(container.members["images/s1.jpg"], storage)
    assert isinstance(info.value, StorageError) and isinstance(info.value, OSError)  # what bad-item handlers catch
    assert read_ref(container.members["images/s0.jpg"], storage) == files["images/s0.jpg"]


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_scoring_and_training_quarantine_a_corrupt_member_and_carry_on(ray_session, tmp_path, compression):
    """The data preparation ``score`` and ``train`` share: the image with a bad CRC and the item whose mask has
    broken compressed data are quarantined with the reason; the others are used."""
    files = dataset(4)
    path = write_zip(tmp_path / "ds.zip", files, compression, corrupt="images/s1.jpg")
    raw = bytearray(path.read_bytes())  # and a second member, the mask of s2
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("masks/s2.png")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    data = validate_config({"sources": [{"uri": str(path)}], "classes": CLASSES,
                            "split": {"train": 1.0, "val": 0.0, "test": 0.0}, "tiling": {"size": 32}},
                           DataSettings)
    prepared = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), task_cpus=0.25)
    assert sorted(item["item_id"].rsplit("/", 1)[1] for item in prepared.splits["train"]) == ["s0", "s3"]
    reasons = {r.file.rsplit("/", 1)[1]: r.reason for r in prepared.quarantine}
    assert set(reasons) == {"s1.jpg", "s2.jpg"}
    assert reasons["s1.jpg"].startswith("corrupt archive member")  # the file, said once (row: ...ds.zip!images/s1.jpg)
    assert "ds.zip!masks/s2.png: corrupt archive member" in reasons["s2.jpg"]  # the row's image, its mask named


def test_a_corrupt_tar_gz_is_caught_by_its_crc(tmp_path):
    """A stored (uncompressed) deflate block decodes whatever its bytes: only gzip's CRC tells. The archive is
    refused (the source is quarantined), never staged as good."""
    files = dataset(2)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    packed = bytearray(gzip.compress(plain.getvalue(), compresslevel=0))  # stored blocks
    packed[len(packed) // 2] ^= 0xFF
    (tmp_path / "ds.tar.gz").write_bytes(bytes(packed))
    with pytest.raises(StorageError, match=r"ds\.tar\.gz: corrupt tar\.gz archive .*CRC"):
        open_container(str(tmp_path / "ds.tar.gz"), LimitSettings(), Storage(), str(tmp_path / "staging"))


MAC = {"__MACOSX/images/._s0.jpg": b"\x00\x05\x16\x07" + bytes(80), "__MACOSX/._images": bytes(10),
       "images/._s0.jpg": b"\x00\x05\x16\x07" + bytes(80), ".DS_Store": bytes(50), "masks/.DS_Store": bytes(50)}


def test_macos_metadata_is_not_data(tmp_path):
    files = dataset(2)
    write_zip(tmp_path / "ds.zip", {**files, **MAC})
    with tarfile.open(tmp_path / "ds.tar.gz", "w:gz") as archive:
        for name, data in {**files, **MAC}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    for name, data in {**files, **MAC}.items():
        (tmp_path / "folder" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / name).write_bytes(data)
    for uri in ("ds.zip", "ds.tar.gz", "folder"):
        container = open_container(str(tmp_path / uri), LimitSettings(), Storage(), str(tmp_path / "staging"))
        assert sorted(container.members) == sorted(files) and not container.rejected, uri
    assert is_os_metadata("a/__MACOSX/b/c.png") and is_os_metadata("Thumbs.db") and not is_os_metadata("a/_b.png")


def test_a_macos_zip_prepares_without_quarantine_rows(ray_session, tmp_path):
    """What the tester saw: a Mac's zip (``dataset/`` with ``__MACOSX/dataset/...``) gave a quarantine row per
    AppleDouble file, 'outside the layout's root'."""
    files = {f"dataset/{name}": data for name, data in dataset(3).items()}
    mac = {f"__MACOSX/dataset/{name.rsplit('/', 1)[0]}/._{name.rsplit('/', 1)[1]}": bytes(90) for name in dataset(3)}
    write_zip(tmp_path / "mac.zip", {**files, **mac, "dataset/.DS_Store": bytes(20)})
    data = validate_config({"sources": [{"uri": str(tmp_path / "mac.zip")}], "classes": CLASSES,
                            "split": {"train": 1.0, "val": 0.0, "test": 0.0}, "tiling": {"size": 32}},
                           DataSettings)
    prepared = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), task_cpus=0.25)
    assert len(prepared.splits["train"]) == 3 and prepared.quarantine == []


@pytest.mark.parametrize("cut", ["in a member's data", "in a header"])
def test_a_truncated_tar_is_refused_not_listed_in_part(tmp_path, cut):
    """Python's tarfile raises when cut inside a member's data but ends its listing quietly at a header cut short:
    the members after it would be lost without a word."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in ("images/a.png", "images/b.png", "images/c.png"):
            data = png_bytes(render_section(0, 32, 32)[0])
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    whole = buffer.getvalue()
    with tarfile.open(fileobj=io.BytesIO(whole)) as archive:
        last = archive.getmembers()[-1]
    end = last.offset_data + 100 if cut == "in a member's data" else last.offset + 200
    (tmp_path / "cut.tar").write_bytes(whole[:end])
    (tmp_path / "whole.tar").write_bytes(whole)
    with pytest.raises(StorageError, match=r"cut.tar: (corrupt or truncated|truncated) tar archive"):
        open_container(str(tmp_path / "cut.tar"), LimitSettings(), Storage())
    assert len(open_container(str(tmp_path / "whole.tar"), LimitSettings(), Storage()).members) == 3


def test_a_voc_image_in_two_split_lists_is_refused(tmp_path):
    """Listed for train and for val: which split it lands in would depend on the order the lists are read."""
    from minseg.data.config import SourceSettings
    from minseg.data.layouts import read_voc
    from tests.data.helpers import write_voc

    root = write_voc(tmp_path / "voc", count=3)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000000\n2007_000002\n")
    with pytest.raises(ValueError, match=r"val.txt: '2007_000000' is also listed for the train split"):
        read_voc(open_container(str(root), LimitSettings(), Storage()), "", SourceSettings(uri=str(root)), Storage(),
                 None)


def test_malformed_coco_and_labelme_entries_are_quarantined_not_crashes(tmp_path):
    """An images[] entry without file_name or size, a category_id of 2.7 (it would become class 2), a Labelme file
    that is a JSON list or has a 3-point rectangle: each item is quarantined with the reason, the others read."""
    import json

    from minseg.data.classmap import ClassMap
    from minseg.data.config import SourceSettings
    from minseg.data.layouts import read_coco, read_labelme

    coco = tmp_path / "coco"
    coco.mkdir()
    for name in ("a", "b", "c"):
        (coco / f"{name}.png").write_bytes(png_bytes(render_section(0, 32, 32)[0]))
    square = [[1, 1, 20, 1, 20, 20, 1, 20]]
    (coco / "_annotations.coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32},
                   {"id": 2, "file_name": "b.png", "height": 32, "width": 32},
                   {"id": 3, "file_name": "c.png"},  # no height / width
                   {"id": 4}],  # no file_name
        "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "segmentation": square},
                        {"id": 11, "image_id": 2, "category_id": 2.7, "segmentation": square}],
        "categories": [{"id": 1, "name": "pyrite"}, {"id": 2, "name": "galena"}]}))
    found = read_coco(open_container(str(coco), LimitSettings(), Storage()), "", SourceSettings(uri=str(coco)),
                      Storage(), None)
    assert [item["item_id"].rsplit("/", 1)[-1] for item in found.items] == ["a"]
    reasons = " | ".join(r.reason for r in found.rejected)
    assert "category_id 2.7, not an integer" in reasons and "malformed COCO (KeyError: 'height')" in reasons
    assert "malformed COCO (KeyError: 'file_name')" in reasons

    labelme = tmp_path / "labelme"
    labelme.mkdir()
    for name in ("a", "b", "c"):
        (labelme / f"{name}.png").write_bytes(png_bytes(render_section(0, 32, 32)[0]))
    shape = {"label": "pyrite", "shape_type": "rectangle", "points": [[1, 1], [20, 20]]}
    (labelme / "a.json").write_text(json.dumps({"imagePath": "a.png", "shapes": [shape]}))
    (labelme / "b.json").write_text(json.dumps([shape]))
    (labelme / "c.json").write_text(json.dumps({"imagePath": "c.png", "shapes": [
        {**shape, "points": [[1, 1, 0], [20, 20, 0]]}]}))
    classes = ClassMap.from_names(["background", "pyrite"])
    found = read_labelme(open_container(str(labelme), LimitSettings(), Storage()), "",
                         SourceSettings(uri=str(labelme)), Storage(), classes)
    assert [item["item_id"].rsplit("/", 1)[-1] for item in found.items] == ["a"]
    reasons = {r.file.rsplit("/", 1)[-1]: r.reason for r in found.rejected}
    assert reasons["b.json"].startswith("not a Labelme document")
    assert "malformed Labelme (ValueError" in reasons["c.json"]


def test_coco_and_labelme_objects_that_would_paint_nothing_are_quarantined(tmp_path, caplog):
    """A polygon of two points (or an odd count of numbers), an empty segmentation (a bounding-box export), an
    annotation of an image id no images[] entry has, an image the export does not list, RLE runs that do not add
    up to the image: each painted nothing (the object became background) or was dropped without a word. Now each
    is quarantined naming the annotation; the good image still reads."""
    import json

    from minseg.data.classmap import ClassMap
    from minseg.data.config import SourceSettings
    from minseg.data.layouts import decode_coco_rle, read_coco, read_labelme

    coco = tmp_path / "coco"
    coco.mkdir()
    for name in ("good", "line", "odd", "bbox", "sliver", "unlisted", "away"):
        (coco / f"{name}.png").write_bytes(png_bytes(render_section(0, 32, 32)[0]))
    square = [1, 1, 20, 1, 20, 20, 1, 20]
    listed = [{"id": i, "file_name": f"{name}.png", "height": 32, "width": 32}
              for i, name in enumerate(("good", "line", "odd", "bbox", "sliver", "away"))]
    annotations = [{"id": 10, "image_id": 0, "category_id": 1, "segmentation": [square]},
                   {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 9, 9]]},
                   {"id": 15, "image_id": 4, "category_id": 1, "segmentation": [square, [1, 1, 9, 9]]},
                   {"id": 12, "image_id": 2, "category_id": 1, "segmentation": [square[:-1]]},
                   {"id": 13, "image_id": 3, "category_id": 1, "segmentation": [], "bbox": [1, 1, 19, 19]},
                   {"id": 14, "image_id": 999, "category_id": 1, "segmentation": [square]},
                   {"id": 16, "image_id": 5, "category_id": 1, "segmentation": [[100, 100, 120, 100, 120, 120]]}]
    (coco / "_annotations.coco.json").write_text(json.dumps({
        "images": listed, "annotations": annotations, "categories": [{"id": 1, "name": "pyrite"}]}))
    with caplog.at_level(logging.WARNING, logger="minseg"):
        found = read_coco(open_container(str(coco), LimitSettings(), Storage()), "", SourceSettings(uri=str(coco)),
                          Storage(), None)
    # a sliver beside an object's real polygon is left out (said), the object painted; alone, its image quarantined
    assert [item["item_id"].rsplit("/", 1)[-1] for item in found.items] == ["good", "sliver"]
    assert found.items[1]["polygons"] == [(1, [square])]
    (warned,) = [r.fields for r in caplog.records if r.getMessage() == "data.coco_slivers_dropped"]
    assert warned["annotations"] == 1 and warned["example"] == 15
    reasons = {r.file.rsplit("/", 1)[-1]: r.reason for r in found.rejected}
    assert reasons["line.png"] == "annotation 11: a polygon of 2 point(s): it needs 3 or more to enclose any pixel"
    assert reasons["odd.png"] == "annotation 12: a polygon of 7 numbers, not x, y pairs"
    assert reasons["away.png"].startswith("annotation 16: its polygon lies wholly outside the 32x32 image")
    assert reasons["bbox.png"].startswith("annotation 13 has an empty segmentation (a bounding box only?)")
    assert reasons["_annotations.coco.json"].startswith("1 annotation(s) refer to image ids no images[] entry has "
                                                        "(999)")
    assert reasons["unlisted.png"].startswith("an image no COCO annotation file lists")
    # images/ beside annotations/ (CVAT, Detectron) is read; images in a folder no rule names say where they were
    # looked for (file_name is read from the JSON's folder, the split's folder or images/ beside annotations/)
    other = tmp_path / "cvat"
    (other / "annotations").mkdir(parents=True)
    for folder in ("images", "pictures"):
        (other / folder).mkdir()
        (other / folder / f"{folder[0]}.png").write_bytes(png_bytes(render_section(0, 32, 32)[0]))
    (other / "annotations" / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "i.png", "height": 32, "width": 32},
                   {"id": 2, "file_name": "p.png", "height": 32, "width": 32}], "annotations": [],
        "categories": [{"id": 1, "name": "pyrite"}]}))
    found = read_coco(open_container(str(other), LimitSettings(), Storage()), "", SourceSettings(uri=str(other)),
                      Storage(), None)
    assert [item["item_id"] for item in found.items] == ["/images/i"]
    reasons = {r.file.split("/cvat/")[1]: r.reason for r in found.rejected}
    assert reasons["pictures/p.png"].startswith(
        "listed in annotations/instances.json as 'p.png', looked for at annotations/p.png, instances/p.png, "
        "images/instances/p.png, images/p.png, p.png: an annotation file's file_name is read relative")
    with pytest.raises(ValueError, match=r"RLE runs add up to 50 pixels, not the 10 x 10 = 100"):
        decode_coco_rle([0, 50], 10, 10)
    assert decode_coco_rle([10, 80, 10], 10, 10).sum() == 80

    labelme = tmp_path / "labelme"
    labelme.mkdir()
    (labelme / "a.png").write_bytes(png_bytes(render_section(0, 32, 32)[0]))
    (labelme / "a.json").write_text(json.dumps({"imagePath": "a.png", "shapes": [
        {"label": "pyrite", "shape_type": "polygon", "points": [[1, 1], [20, 20]]}]}))
    found = read_labelme(open_container(str(labelme), LimitSettings(), Storage()), "",
                         SourceSettings(uri=str(labelme)), Storage(), ClassMap.from_names(["background", "pyrite"]))
    assert not found.items
    assert [r.reason for r in found.rejected] == ["a 'pyrite' polygon: a polygon of 2 point(s): it needs 3 or more "
                                                  "to enclose any pixel"]
