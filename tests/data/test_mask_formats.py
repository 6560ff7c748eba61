"""Masks in a format that cannot hold class codes faithfully (JPEG) are refused saying so, in every layout with mask
files; never an image quarantined for a mask it seemingly lacks."""

from minseg.config.base import validate_config
from minseg.data.classmap import ClassMap
from minseg.data.config import DataSettings, LimitSettings
from minseg.data.containers import open_container
from minseg.data.layouts import get_layout
from minseg.enums import DatasetLayout
from minseg.io.storage import Storage
from minseg.synth.minerals import CLASS_NAMES
from minseg.synth.sections import render_section
from tests.data.helpers import jpg_bytes, png_bytes

NINE = {"classes": [{"name": n, "codes": [i]} for i, n in enumerate(CLASS_NAMES)]}


def _read(root, layout, **source):
    storage = Storage()
    data = validate_config({"sources": [{"uri": str(root), "layout": str(layout), **source}], "classes": NINE},
                           DataSettings)
    container = open_container(str(root), LimitSettings(), storage)
    return get_layout(layout).read(container, "src", data.sources[0], storage, ClassMap.from_settings(data.classes))


def test_a_jpeg_mask_in_the_paired_layout_is_named_as_the_reason(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a", "b", "c"):
        image, mask = render_section(len(name), 16, 16)
        (tmp_path / "images" / f"{name}.png").write_bytes(png_bytes(image))
    (tmp_path / "masks" / "a.png").write_bytes(png_bytes(mask))
    (tmp_path / "masks" / "b.jpg").write_bytes(jpg_bytes(mask))  # b's mask, lossy
    (tmp_path / "masks" / "z.jpeg").write_bytes(jpg_bytes(mask))  # no image either
    listed = _read(tmp_path, DatasetLayout.PAIRED)
    assert [item["item_id"] for item in listed.items] == ["src/a"]
    reasons = {r.file.rsplit("/", 1)[1]: r.reason for r in listed.rejected}
    assert set(reasons) == {"b.png", "c.png", "z.jpeg"}
    assert reasons["b.png"].startswith("no mask masks/b.* for this image: its mask b.jpg is a JPEG. JPEG masks are "
                                       "not accepted: JPEG's lossy compression")
    assert "save masks as PNG or TIFF" in reasons["b.png"]
    assert reasons["c.png"] == "no mask masks/c.* for this image"
    assert reasons["z.jpeg"].startswith("JPEG masks are not accepted")


def test_a_jpeg_mask_in_voc_and_instance_folders_is_named_as_the_reason(tmp_path):
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir(parents=True)
    image, mask = render_section(1, 16, 16)
    for name in ("a", "b"):
        (voc / "JPEGImages" / f"{name}.jpg").write_bytes(jpg_bytes(image))
    (voc / "SegmentationClass" / "a.png").write_bytes(png_bytes(mask))
    (voc / "SegmentationClass" / "b.jpg").write_bytes(jpg_bytes(mask))
    listed = _read(voc, DatasetLayout.VOC)
    assert [item["item_id"] for item in listed.items] == ["src/a"]
    assert [(r.file.rsplit("/", 1)[1], r.reason.split(":")[0]) for r in listed.rejected] == [
        ("b.jpg", "JPEG masks are not accepted")]

    folders = tmp_path / "instances"
    for name in ("x", "y"):
        (folders / name / "images").mkdir(parents=True)
        (folders / name / "masks").mkdir(parents=True)
        (folders / name / "images" / f"{name}.png").write_bytes(png_bytes(image))
        (folders / name / "masks" / "grain1.png").write_bytes(png_bytes((mask > 0).astype("uint8") * 255))
    (folders / "y" / "masks" / "grain2.jpg").write_bytes(jpg_bytes((mask > 0).astype("uint8") * 255))
    listed = _read(folders, DatasetLayout.INSTANCE_FOLDERS, instance_class=CLASS_NAMES[1])
    assert len(listed.items) == 2
    assert [(r.file.rsplit("/", 1)[1], r.reason.split(":")[0]) for r in listed.rejected] == [
        ("grain2.jpg", "JPEG masks are not accepted")]
