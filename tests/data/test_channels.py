"""Several images of one scene as input channels (PPL + XPL), grey single-channel images, multi-band TIFFs."""

import hashlib
import json
import logging

import numpy as np
import pytest
import tifffile
from minseg.config.base import ConfigError, validate_config
from minseg.data.config import DataSettings
from minseg.data.pipeline import decode_scene, load_example, prepare_data
from minseg.enums import Task
from minseg.io.storage import Storage
from minseg.synth.minerals import CLASS_NAMES
from minseg.synth.sections import render_section
from tests.data.helpers import png_bytes

NINE = {"classes": [{"name": n, "codes": [i]} for i, n in enumerate(CLASS_NAMES)]}
PPL_XPL = [{"name": "ppl", "images_dir": "ppl", "image_pattern": "{scene}_ppl"},
           {"name": "xpl", "images_dir": "xpl", "image_pattern": "{scene}_xpl"}]


def crossed(image: np.ndarray) -> np.ndarray:
    """A stand-in for the cross-polarised view of a scene: another picture of the same pixels."""
    return (255 - image[..., ::-1]).astype(np.uint8)


def write_thin_sections(root, count=6, size=40, missing_xpl=(), misaligned=()):
    """``ppl/<scene>_ppl.png``, ``xpl/<scene>_xpl.png``, ``masks/<scene>_mask.tiff`` (the issue's dataset shape)."""
    for sub in ("ppl", "xpl", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    scenes = {}
    for index in range(count):
        scene = f"s{index:02d}"
        image, mask = render_section(index, size, size)
        (root / "ppl" / f"{scene}_ppl.png").write_bytes(png_bytes(image))
        if scene not in missing_xpl:
            xpl = crossed(image)[:-4] if scene in misaligned else crossed(image)
            (root / "xpl" / f"{scene}_xpl.png").write_bytes(png_bytes(xpl))
        tifffile.imwrite(root / "masks" / f"{scene}_mask.tiff", mask)
        scenes[scene] = (image, mask)
    return scenes


def data_settings(root, channels=PPL_XPL, **extra):
    source = {"uri": str(root), "masks_dir": "masks", "mask_pattern": "{scene}_mask", "channels": channels}
    return validate_config({"sources": [source], "classes": NINE, "tiling": {"size": 32},
                            "split": {"train": 0.5, "val": 0.5, "test": 0.0}, **extra}, DataSettings)


def test_ppl_and_xpl_stack_into_six_channels(ray_session, tmp_path):
    """One item per scene with both images; channels in the declared order; normalisation per channel; a scene
    without its XPL image, or with one of another size, is quarantined saying so."""
    root = tmp_path / "thin"
    scenes = write_thin_sections(root, missing_xpl=("s04",), misaligned=("s05",))
    data = data_settings(root)
    assert data.in_channels == 6 and data.channel_labels[:4] == ["ppl:R", "ppl:G", "ppl:B", "xpl:R"]
    prepared = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), 0.25)
    items = {i["item_id"]: i for split in ("train", "val") for i in prepared.splits[split]}
    assert sorted(items) == [f"thin/s{i:02d}" for i in range(4)]
    reasons = {r.file.rsplit("/", 1)[-1]: r.reason for r in prepared.quarantine}
    assert reasons["s04_ppl.png"] == "scene 's04' has no xpl/s04_xpl.*"
    assert "xpl/s05_xpl.png is 40x36 but ppl/s05_ppl.png is 40x40: the images of a scene must be aligned" in \
        reasons["s05_ppl.png"]
    image, ids = load_example(items["thin/s01"], prepared.classmap, data.limits, Storage())
    expected, mask = scenes["s01"]
    assert image.shape == (40, 40, 6) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., :3], expected)
    np.testing.assert_array_equal(image[..., 3:], crossed(expected))
    np.testing.assert_array_equal(ids, mask)
    assert len(prepared.normalization["mean"]) == 6 == len(prepared.normalization["std"])
    train = [scenes[i.split("/")[1]][0] for i in (x["item_id"] for x in prepared.splits["train"])]
    ppl_red = np.mean([t[..., 0].mean() for t in train])
    assert prepared.normalization["mean"][0] == pytest.approx(ppl_red, abs=0.01)
    assert prepared.normalization["mean"][3] == pytest.approx(255 - np.mean([t[..., 2].mean() for t in train]),
                                                              abs=0.01)
    small, _ = load_example(items["thin/s01"], prepared.classmap, data.limits, Storage(), scale=0.5)
    assert small.shape == (20, 20, 6)  # rescaled plane by plane


def test_grey_images_are_one_channel_and_bands_keep_every_sample(tmp_path):
    """Grey single-channel data (mode grey: luminance, a grey file's own values) and a 4-band TIFF (mode bands)."""
    root = tmp_path / "bse"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    image, mask = render_section(3, 24, 24)
    grey = image[..., 1]
    (root / "images" / "a.png").write_bytes(png_bytes(grey))
    (root / "images" / "b.png").write_bytes(png_bytes(image))  # an RGB picture read as grey: its luminance
    bands = np.dstack([image, grey]).astype(np.uint16) * 257  # 16-bit, four samples
    tifffile.imwrite(root / "images" / "c.tif", bands, photometric="minisblack", planarconfig="contig")
    for name in ("a", "b", "c"):
        (root / "masks" / f"{name}.png").write_bytes(png_bytes(mask))
    storage = Storage()
    def ref(name):
        return {"kind": "file", "uri": str(root / "images" / name)}

    item = {"image": None, "channels": [{"ref": ref("a.png"), "name": "a.png", "mode": "grey", "bands": None}]}
    from minseg.data.config import LimitSettings

    limits = LimitSettings()
    np.testing.assert_array_equal(decode_scene(item, limits, storage)[..., 0], grey)
    item["channels"][0].update(ref=ref("b.png"), name="b.png")
    luminance = decode_scene(item, limits, storage)[..., 0].astype(int)
    red, green, blue = (image[..., k].astype(int) for k in range(3))
    expected = (red * 299 + green * 587 + blue * 114) / 1000
    assert np.abs(luminance - expected).max() <= 1
    item["channels"][0].update(ref=ref("c.tif"), name="c.tif", mode="bands", bands=4)
    four = decode_scene(item, limits, storage)
    assert four.shape == (24, 24, 4) and four.dtype == np.uint8
    np.testing.assert_array_equal(four[..., 3], grey)
    item["channels"][0]["bands"] = 3
    from minseg.io.images import DecodeError

    with pytest.raises(DecodeError, match="c.tif: has 4 sample\\(s\\) per pixel, channels\\[\\].bands says 3"):
        decode_scene(item, limits, storage)


def test_grey_source_prepares_one_channel(ray_session, tmp_path):
    from tests.data.helpers import write_paired

    root = write_paired(tmp_path / "paired", count=4, size=32)
    data = validate_config({"sources": [{"uri": str(root), "channels": [{"name": "bse", "mode": "grey"}]}],
                            "classes": NINE, "tiling": {"size": 32}, "split": {"train": 0.75, "val": 0.25,
                                                                                 "test": 0.0}}, DataSettings)
    prepared = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), 0.25)
    item = prepared.splits["train"][0]
    image, _ = load_example(item, prepared.classmap, data.limits, Storage())
    assert image.shape == (32, 32, 1) and len(prepared.normalization["mean"]) == 1


def test_channel_declarations_are_checked(tmp_path):
    with pytest.raises((ConfigError, ValueError), match="bands: give it exactly when mode is 'bands'"):
        data_settings(tmp_path, channels=[{"name": "ms", "mode": "bands"}])
    with pytest.raises((ConfigError, ValueError), match="names must be unique, repeated: ppl"):
        data_settings(tmp_path, channels=[PPL_XPL[0], PPL_XPL[0]])
    with pytest.raises((ConfigError, ValueError), match="normalization.mean needs 6 values"):
        data_settings(tmp_path, normalization={"mean": [1, 2, 3], "std": [1, 1, 1]})
    with pytest.raises((ConfigError, ValueError), match=r"sources\[1\].channels give image \(rgb, 3\) but "
                                                        r"sources\[0\] gives ppl \(rgb, 3\) \+ xpl \(rgb, 3\)"):
        validate_config({"sources": [{"uri": "a", "channels": PPL_XPL}, {"uri": "b"}], "classes": NINE}, DataSettings)
    with pytest.raises((ConfigError, ValueError), match="several images per scene are read from the paired layout"):
        validate_config({"sources": [{"uri": "a", "layout": "coco", "channels": PPL_XPL}]}, DataSettings)
    from minseg.train.config import MemberSettings

    with pytest.raises((ConfigError, ValueError), match="in_channels is set by the data"):
        MemberSettings.model_validate({"name": "m", "model": "unet", "model_options": {"in_channels": 6},
                                       "stages": [{"epochs": 1}]})


def test_images_of_a_scene_in_one_folder_go_to_the_pattern_that_fits_best(tmp_path):
    """PPL and XPL side by side in images/: each file goes to the entry whose pattern fits it most specifically
    (no false quarantine, no fake scene '<s>_xpl' for a bare '{scene}' pattern); one entry without its own pattern
    reads the source's."""
    from minseg.data.classmap import ClassMap
    from minseg.data.config import LimitSettings
    from minseg.data.containers import open_container
    from minseg.data.layouts import get_layout
    from minseg.enums import DatasetLayout

    root = tmp_path / "side"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for index in range(3):
        image, mask = render_section(index, 16, 16)
        (root / "images" / f"s{index}.png").write_bytes(png_bytes(image))
        (root / "images" / f"s{index}_xpl.png").write_bytes(png_bytes(crossed(image)))
        (root / "masks" / f"s{index}.png").write_bytes(png_bytes(mask))
    (root / "images" / "notes_scan.png").write_bytes(png_bytes(image))
    storage = Storage()
    container = open_container(str(root), LimitSettings(), storage)

    def read(**source):
        data = validate_config({"sources": [{"uri": str(root), **source}], "classes": NINE}, DataSettings)
        classmap = ClassMap.from_settings(data.classes)
        return get_layout(DatasetLayout.PAIRED).read(container, "side", data.sources[0], storage, classmap)

    listed = read(channels=[{"name": "ppl"}, {"name": "xpl", "image_pattern": "{scene}_xpl"}])
    assert [i["item_id"] for i in listed.items] == ["side/s0", "side/s1", "side/s2"]
    assert [c["name"] for c in listed.items[1]["channels"]] == ["images/s1.png", "images/s1_xpl.png"]
    # notes_scan.png fits the bare '{scene}' pattern: a ppl image of scene 'notes_scan' without its xpl image
    assert [r.reason for r in listed.rejected] == [
        "scene 'notes_scan' has no images/notes_scan_xpl.*, no masks/notes_scan.*"]
    # include / exclude choose scenes by their first entry's image: a left-out scene's xpl image and mask (and a
    # left-out stray) are not reported
    chosen = read(channels=[{"name": "ppl"}, {"name": "xpl", "image_pattern": "{scene}_xpl"}],
                  exclude=["s1.png", "notes_*"])
    assert [i["item_id"] for i in chosen.items] == ["side/s0", "side/s2"] and chosen.rejected == []
    (root / "images" / "s1_xpl.tif").write_bytes(png_bytes(image))  # two xpl images of the left-out scene
    container = open_container(str(root), LimitSettings(), storage)
    chosen = read(channels=[{"name": "ppl"}, {"name": "xpl", "image_pattern": "{scene}_xpl"}],
                  exclude=["s1.png", "notes_*"])
    assert len(chosen.items) == 2 and chosen.rejected == [] and sorted(chosen.left_out) == ["images/notes_scan.png",
                                                                                    "images/s1.png"]
    (root / "images" / "s1_xpl.tif").unlink()
    container = open_container(str(root), LimitSettings(), storage)
    grey = read(image_pattern="{scene}_xpl", channels=[{"name": "bse", "mode": "grey"}])
    assert [i["item_id"] for i in grey.items] == ["side/s0", "side/s1", "side/s2"]  # the source's pattern
    channel = grey.items[0]["channels"][0]
    assert channel["name"] == "images/s0_xpl.png" and channel["mode"] == "grey"


def test_each_image_of_a_scene_reads_with_its_own_bit_depth(ray_session, tmp_path, caplog):
    """A 12-bit camera's PPL frames (16-bit TIFF holding 0..4095) beside a 16-bit BSE detector's images: with
    channels[].bit_depth 12 on the PPL image both read as their 8-bit views; one data.bit_depth cannot read
    them (16: the PPL image is nearly black; 12: every BSE image is refused); the data signature, the items and
    the config's dump say which reading was used; read at 16, the dark image of each scene is warned about."""
    from dataclasses import replace

    from minseg.train.ensemble import _data_selection

    root = tmp_path / "scene"
    for sub in ("ppl", "bse", "masks"):
        (root / sub).mkdir(parents=True)
    views = {}
    for index in range(4):
        scene = f"s{index}"
        image, mask = render_section(30 + index, 32, 32)
        grey = crossed(image)[..., 1]
        frame = (image.astype(np.uint32) * 4095 // 255).astype(np.uint16)  # 0..4095 in 16-bit samples
        tifffile.imwrite(root / "ppl" / f"{scene}_ppl.tif", frame, photometric="rgb")
        tifffile.imwrite(root / "bse" / f"{scene}_bse.tif", grey.astype(np.uint16) * 257, photometric="minisblack")
        tifffile.imwrite(root / "masks" / f"{scene}_mask.tiff", mask)
        views[scene] = (image, grey)
    channels = [{"name": "ppl", "images_dir": "ppl", "image_pattern": "{scene}_ppl", "bit_depth": 12},
                {"name": "bse", "images_dir": "bse", "image_pattern": "{scene}_bse", "mode": "grey"}]
    data = data_settings(root, channels=channels)
    assert data.image_bit_depths == ((0, "ppl", 12), (0, "bse", 16))
    prepared = prepare_data(data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), 0.25)
    assert not prepared.quarantine
    for item in prepared.splits["train"] + prepared.splits["val"]:
        assert [c.get("bit_depth") for c in item["channels"]] == [12, None]
        image, _ = load_example(item, prepared.classmap, data.limits, Storage())
        ppl, bse = views[item["item_id"].rsplit("/", 1)[-1]]
        np.testing.assert_array_equal(image[..., :3], ppl)
        np.testing.assert_array_equal(image[..., 3], bse)
    # one bit depth for the whole scene: at 16 the camera's frames read nearly black, at 12 the detector's refused
    plain = data_settings(root, channels=[{k: v for k, v in c.items() if k != "bit_depth"} for c in channels])
    item = prepared.splits["train"][0]
    dark = decode_scene({**item, "channels": [{k: v for k, v in c.items() if k != "bit_depth"}
                                              for c in item["channels"]]}, data.limits, Storage())
    assert dark[..., :3].max() <= 16 and dark[..., 3].max() > 200
    with caplog.at_level(logging.WARNING, logger="minseg.data"):  # said, naming the dark image of the scene
        prepare_data(plain, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work16"), 0.25)
    (warned,) = [r.fields for r in caplog.records if r.getMessage() == "data.images_dark"]
    assert warned["images"] == 4 and warned["example"].endswith("(ppl)") and "channels[].bit_depth" in warned["hint"]
    twelve = data_settings(root, channels=plain.sources[0].model_dump(mode="json")["channels"], bit_depth=12)
    from minseg.data.pipeline import DataError

    with pytest.raises(DataError) as caught:
        prepare_data(twelve, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work12"), 0.25)
    assert all("bse" in r.reason and "is above 4095" in r.reason for r in caught.value.quarantine)
    # the reading is part of what members were trained on: signature and run digest differ, the dump says it
    assert prepared.data_signature() != replace(prepared, image_bit_depths=()).data_signature()
    assert _data_selection(data)[0] != _data_selection(plain)[0]
    assert [c.get("bit_depth") for c in data.sources[0].model_dump(mode="json")["channels"]] == [12, None]
    assert "bit_depth" not in plain.sources[0].model_dump(mode="json")["channels"][0]  # as before the key
    # the signature follows what is read, not how the config spells it
    same = data_settings(root, channels=[{**channels[0], "bit_depth": 16}, channels[1]])
    assert same.image_bit_depths == plain.image_bit_depths == ((0, "ppl", 16), (0, "bse", 16))
    spelled = data_settings(root, channels=[channels[0] | {"bit_depth": None}, {**channels[1], "bit_depth": 16}],
                            bit_depth=12)
    assert spelled.image_bit_depths == data.image_bit_depths
    parts = [sorted((i["item_id"], i["tiles"]) for i in prepared.splits[s]) for s in ("train", "val", "test")]
    base = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    reading = json.dumps([[0, "ppl", 12], [0, "bse", 16]])
    assert prepared.data_signature() == hashlib.sha256(f"{base}/images={reading}".encode()).hexdigest()[:16]


def test_sources_reading_an_image_with_other_bits_are_named(tmp_path):
    """Two cameras: a later source reading an image with other bits than the first is named (the manifest records
    the first source's; evaluate warns with these)."""
    first = {"uri": str(tmp_path / "a"), "masks_dir": "masks", "channels": PPL_XPL}
    second = {**first, "uri": str(tmp_path / "b"), "channels": [{**PPL_XPL[0], "bit_depth": 12}, PPL_XPL[1]]}
    data = validate_config({"sources": [first, second], "classes": NINE}, DataSettings)
    assert data.bit_depths_unlike_first() == ["sources[1].channels.ppl: 12-bit (sources[0]: 16-bit)"]
    assert data.image_bit_depths == ((0, "ppl", 16), (0, "xpl", 16), (1, "ppl", 12), (1, "xpl", 16))
    same = validate_config({"sources": [first, {**first, "uri": str(tmp_path / "b")}], "classes": NINE}, DataSettings)
    assert same.bit_depths_unlike_first() == []
