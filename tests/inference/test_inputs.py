"""Which slides a job segments: URIs, globs, list files, folder names, scale planning."""

import logging

import numpy as np
import pytest

from minseg.inference.config import SegmentSettings
from minseg.enums import Uncertainty
from minseg.ensemble.config import Tiling
from minseg.inference.plan import SlidePlan, read_tile
from minseg.inference.segment import resolve_slides, slide_ids
from minseg.io.storage import Storage


def test_globs_lists_and_literal_entries(tmp_path):
    for name in ("a/one.tif", "a/two.svs", "b/three.ndpi", "b/notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# slides\nb/three.ndpi\n\n/elsewhere/four.tif\n")
    (tmp_path / "list.csv").write_text("uri,note\na/one.tif,first\ns3://bucket/five.svs,remote\n")
    settings = SegmentSettings(slides=[str(tmp_path / "**" / "*")], slide_list=str(tmp_path / "list.txt"))
    uris = resolve_slides(settings, Storage(), str(tmp_path / "out"))
    assert uris == [str(tmp_path / "a/one.tif"), str(tmp_path / "a/two.svs"), str(tmp_path / "b/three.ndpi"),
                    "/elsewhere/four.tif"], "globs keep slide formats only; duplicates once; list paths relative"
    csv_settings = SegmentSettings(slide_list=str(tmp_path / "list.csv"))
    assert resolve_slides(csv_settings, Storage(), str(tmp_path / "out")) == [str(tmp_path / "a/one.tif"),
                                                                             "s3://bucket/five.svs"]


def test_a_glob_over_the_output_folder_leaves_the_run_s_own_files_out(tmp_path, caplog):
    """``'in/**/*.png' --out in/seg`` caught the previous run's previews and plots on the next run (segment refused
    the run; measure took them for label maps): a glob's matches in the run's own folders under the output (a slide
    folder its record names, the report folder of a marked output; through a link too) are left out and said. The
    user's own folders there, and inputs under an output that is their parent, are kept; a literal path is kept;
    a glob matching only the run's files names the output."""
    import json

    from minseg.inference.measure import MeasureInputError, resolve_label_maps
    from minseg.inference.config import MeasureSettings

    for name in ("a.png", "b/c.png", "seg/a/preview.png", "seg/mineralogy/modal.png", "seg/mine/own.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "seg" / "a" / "summary.json").write_text(json.dumps({"uri": "/slides/a.tif"}))
    (tmp_path / "seg" / "a" / "mineralogy.json").write_text(json.dumps({"source": "/maps/a.tif"}))
    (tmp_path / "seg" / "run_summary.json").write_text("{}")
    (tmp_path / "seg" / "measure_summary.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "seg")
    pattern, out = str(tmp_path / "**" / "*.png"), str(tmp_path / "seg")
    # the user's own folder once (the link's name first: one file under two names is taken once)
    expected = [str(tmp_path / "a.png"), str(tmp_path / "b/c.png"), str(tmp_path / "link/mine/own.png")]
    with caplog.at_level(logging.INFO, logger="minseg"):
        assert resolve_slides(SegmentSettings(slides=[pattern]), Storage(), out) == expected
        assert [uri for uri, _ in resolve_label_maps(MeasureSettings(labels=[pattern]), Storage(), out)] == expected
    said = [r.fields for r in caplog.records if r.getMessage().endswith(".glob_output_left_out")]
    assert [f["left_out"] for f in said] == [4, 4] and said[0]["output"] == out  # two under seg/, two by the link
    literal = str(tmp_path / "seg" / "a" / "preview.png")
    assert resolve_slides(SegmentSettings(slides=[literal]), Storage(), out) == [literal]
    # the output a parent of the inputs (`--out proj` over `proj/slides/*.png`): they are inputs still
    slides = str(tmp_path / "b" / "*.png")
    assert resolve_slides(SegmentSettings(slides=[slides]), Storage(), str(tmp_path)) == [str(tmp_path / "b/c.png")]
    only_there = str(tmp_path / "seg" / "a" / "*.png")
    with pytest.raises(ValueError, match=rf"matched no slides outside the output folder {out} \(all 1 lie in it\)"):
        resolve_slides(SegmentSettings(slides=[only_there]), Storage(), out)
    with pytest.raises(MeasureInputError, match=r"matched no label maps .* \(all 1 lie in it\)"):
        resolve_label_maps(MeasureSettings(labels=[only_there]), Storage(), out)


def test_no_slides_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"segment.slides: '\S+\*.tif' matched no slides"):
        resolve_slides(SegmentSettings(slides=[str(tmp_path / "*.tif")]), Storage(), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no slides given"):
        resolve_slides(SegmentSettings(), Storage(), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="slide_list: .*nope.txt: no such file"):
        resolve_slides(SegmentSettings(slide_list=str(tmp_path / "nope.txt")), Storage(), str(tmp_path / "out"))
    (tmp_path / "bad.csv").write_text("path,x\na.tif,1\n")
    with pytest.raises(ValueError, match="'uri' column"):
        resolve_slides(SegmentSettings(slide_list=str(tmp_path / "bad.csv")), Storage(), str(tmp_path / "out"))


def test_folder_names_are_unique():
    ids = slide_ids(["/a/x.tif", "/b/x.tif", "s3://b/y z.svs", "/c/w.zstd.tiff"])
    assert ids["s3://b/y z.svs"] == "y_z" and ids["/c/w.zstd.tiff"] == "w.zstd"
    assert ids["/a/x.tif"] != ids["/b/x.tif"] and all(ids[u].startswith("x-") for u in ("/a/x.tif", "/b/x.tif"))


def test_config_refuses_lossy_labels_and_odd_connectivity():
    from pydantic import ValidationError

    for key in ("compression", "tiff_compression"):
        with pytest.raises(ValidationError, match=f"{key}: jpeg is lossy"):
            SegmentSettings(**{key: "jpeg"})
    assert SegmentSettings().tiff_compression == "deflate" and SegmentSettings().compression == "zstd"
    from minseg.mineralogy.config import MineralogySettings

    with pytest.raises(ValidationError, match="4 or 8"):
        MineralogySettings(connectivity=6)
    # the keys that moved to the shared mineralogy section say where they went
    with pytest.raises(ValidationError, match=r"segment.densities moved to the mineralogy section \(mineralogy"):
        SegmentSettings(densities={"pyrite": 5.0})


def test_a_slide_named_like_the_run_s_own_files_gets_another_name():
    """A slide folder named as the batch report's folder, a run table or a command's marker would be written over
    by the run, or stop its tables from being put in place, or make the output read as another command's; names
    differing only in case are one folder on macOS and Windows."""
    from minseg.inference.segment import slide_ids

    ids = slide_ids(["/a/mineralogy.tif", "/a/other.tif", "/a/slides.csv.tif", "/a/Run_Summary.json.svs",
                     "/a/measure_summary.json.tif", "/a/evaluation.json.tif", "/a/Core-7.tif", "/b/core-7.ndpi"])
    assert ids["/a/other.tif"] == "other"
    for uri, stem in [("/a/mineralogy.tif", "mineralogy"), ("/a/slides.csv.tif", "slides.csv"),
                      ("/a/Run_Summary.json.svs", "Run_Summary.json"), ("/a/evaluation.json.tif", "evaluation.json"),
                      ("/a/measure_summary.json.tif", "measure_summary.json"), ("/a/Core-7.tif", "Core-7"),
                      ("/b/core-7.ndpi", "core-7")]:
        assert ids[uri].startswith(stem + "-") and len(ids[uri]) == len(stem) + 9, uri
    # a hidden name would be a hidden folder: passed by listings and globs, or taken for the run's redo folder
    ids = slide_ids(["/a/.minseg-redo.tif", "/b/.minseg-redoX.tif", "/c/.x.tif", "/d/..tif"])
    assert list(ids.values()) == ["minseg-redo", "minseg-redoX", "x", "slide"]


def test_a_slide_named_as_windows_cannot_keep_it_gets_another_name():
    """Outputs written on Linux or S3 are copied to Windows, where a folder named as a device (CON, aux with any
    extension) or ending in a dot cannot exist; a folder an earlier run gave such a name stays its source's."""
    import logging

    from minseg.config.base import not_portable
    from minseg.inference.folders import item_folder
    from minseg.inference.segment import slide_ids

    ids = slide_ids(["/a/CON.tif", "/a/aux.2.tif", "/a/Lpt3.ndpi", "/a/slide..tif", "/a/console.tif", "/a/COM10.tif"])
    for uri, stem in [("/a/CON.tif", "CON"), ("/a/aux.2.tif", "_aux.2"), ("/a/Lpt3.ndpi", "Lpt3"),
                      ("/a/slide..tif", "slide.")]:
        assert ids[uri].startswith(stem + "-") and len(ids[uri]) == len(stem) + 9, uri
        assert not_portable(ids[uri]) is None, uri  # 'aux.2-1a2b3c4d' is still 'aux' to Windows
    assert ids["/a/console.tif"] == "console" and ids["/a/COM10.tif"] == "COM10"
    kept = item_folder("/a/CON.tif", ids["/a/CON.tif"], ("CON", ids["/a/CON.tif"]), ids["/a/CON.tif"],
                       lambda folder: "/a/CON.tif" if folder == "CON" else None, "segment.renamed", logging.getLogger())
    assert kept == "CON"


class _Image:
    """A slide stand-in over an array (read_tile only calls read_region and level_shape)."""

    def __init__(self, array):
        self.array = array

    def level_shape(self, level):
        return self.array.shape[:2]

    def read_region(self, y, x, h, w, level=0):
        return self.array[y : y + h, x : x + w]


def test_scaled_tiles_agree_with_resizing_the_whole_image():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = (rng.random((400, 320, 3)) * 255).astype(np.uint8)
    whole = np.asarray(Image.fromarray(image).resize((80, 100), Image.Resampling.BOX))  # scale 1/4
    plan = SlidePlan(slide_id="s", uri="s.png", output_uri="out/s", format="png", level=0, read_level=0,
                     source_height=400, source_width=320, height=100, width=80, factor_y=4.0, factor_x=4.0,
                     tiling=Tiling(tile=32, overlap=8, scale=0.25), preview_stride=1, pixel_size_um=None,
                     uncertainty=Uncertainty.ENTROPY, num_classes=3)
    fill = np.zeros(3, np.uint8)
    for y, x in [(0, 0), (32, 48), (68, 48)]:
        tile = read_tile(_Image(image), plan, y, x, fill)
        h, w = min(32, 100 - y), min(32, 80 - x)
        assert np.abs(tile[:h, :w].astype(int) - whole[y : y + h, x : x + w]).max() <= 1


def test_cli_reports_input_errors_with_exit_2(tmp_path, capsys):
    from minseg.cli import main
    from tests.inference.conftest import write_manifest

    assert main(["segment", str(tmp_path / "*.tif"), "--manifest", str(tmp_path / "m.json")]) == 2
    assert "no such ensemble manifest" in capsys.readouterr().err
    manifest = write_manifest(tmp_path)
    assert main(["segment", str(tmp_path / "*.tif"), "--manifest", manifest]) == 2
    assert "matched no slides" in capsys.readouterr().err


@pytest.mark.parametrize("block", [64, 100, 256])
def test_the_preview_samples_the_whole_slide_on_one_grid(block):
    """Blocks' preview samples (image and labels) land where sampling the whole slide puts them, any block
    size (labels were once sampled twice: coloured only in a corner of each block)."""
    from minseg.inference.outputs import PreviewCanvas, preview_sample

    rng = np.random.default_rng(block)
    labels = rng.integers(0, 4, (300, 410), dtype=np.uint8)
    image = rng.integers(0, 255, (300, 410, 3), dtype=np.uint8)
    canvas = PreviewCanvas(300, 410, max_side=64)
    for top in range(0, 300, block):
        for left in range(0, 410, block):
            part = np.s_[top : top + block, left : left + block]
            canvas.add(top, left, preview_sample(image[part], top, left, canvas.stride),
                       preview_sample(labels[part], top, left, canvas.stride))
    assert canvas.stride == 7
    assert np.array_equal(canvas.labels, labels[::7, ::7]) and np.array_equal(canvas.image, image[::7, ::7])


def test_a_scene_is_read_at_the_manifests_scale_channel_by_channel(tmp_path):
    """A PPL + grey scene at scale 0.5: each image's channels resampled exactly as the slide alone would be (the
    plane-by-plane path gives what the RGB path gives), stacked in the manifest's order."""
    import json

    import tifffile
    from PIL import Image

    from minseg.data.config import ImageChannels
    from minseg.ensemble.manifest import load_manifest
    from minseg.data.tiling import mean_fill
    from minseg.inference.plan import open_scene, plan_slide, read_tile
    from minseg.io.slides import ChannelSource
    from tests.inference.conftest import write_manifest

    rng = np.random.default_rng(3)
    ppl, bse = rng.integers(0, 255, (300, 260, 3), np.uint8), rng.integers(0, 255, (300, 260), np.uint8)
    tifffile.imwrite(tmp_path / "ppl.tif", ppl, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "bse.tif", bse, tile=(64, 64), photometric="minisblack")
    rgb_uri = write_manifest(tmp_path / "m", mode="soft", tile=64, overlap=16, scale=0.5)
    document = json.loads(open(rgb_uri).read())
    document["channels"] = [ImageChannels(name="ppl").model_dump(mode="json"),
                            ImageChannels(name="bse", mode="grey").model_dump(mode="json")]
    document["normalization"] = {"mean": [120.0] * 4, "std": [60.0] * 4}
    scene_uri = str(tmp_path / "scene.json")
    open(scene_uri, "w").write(json.dumps(document))
    rgb, scene = load_manifest(rgb_uri, verify=False), load_manifest(scene_uri, verify=False)
    channels = (ChannelSource(str(tmp_path / "ppl.tif")), ChannelSource(str(tmp_path / "bse.tif"), "grey"))
    settings = SegmentSettings()
    plan = plan_slide(str(tmp_path / "ppl.tif"), "s", scene, settings, Storage(), str(tmp_path / "o"),
                      channels=channels)
    alone = plan_slide(str(tmp_path / "ppl.tif"), "s", rgb, settings, Storage(), str(tmp_path / "o"))
    assert (plan.height, plan.width, plan.in_channels, plan.first_channels) == (150, 130, 4, 3)
    fill = mean_fill(scene.normalization["mean"])
    with open_scene(plan.uri, plan.channels, Storage(), plan.limits) as slide, \
            open_scene(alone.uri, (), Storage(), alone.limits) as rgb_slide:
        for y, x in ((0, 0), (48, 96), (144, 96)):  # an edge tile is filled
            tile = read_tile(slide, plan, y, x, fill)
            assert tile.shape == (64, 64, 4)
            np.testing.assert_array_equal(tile[..., :3], read_tile(rgb_slide, alone, y, x, fill[:3]))
    grey_box = np.asarray(Image.fromarray(bse).resize((130, 150), Image.Resampling.BOX))
    with open_scene(plan.uri, plan.channels, Storage(), plan.limits) as slide:
        np.testing.assert_array_equal(read_tile(slide, plan, 0, 0, fill)[..., 3], grey_box[:64, :64])


def test_each_image_of_a_scene_is_planned_with_its_own_bit_depth(tmp_path):
    """A scene of an 8-bit PPL TIFF and a 12-bit BSE detector's 16-bit TIFF, for an ensemble whose BSE images were
    read as 12-bit (channels[].bit_depth): the BSE channel reads as its 8-bit view; segment.bit_depth gives one
    bit depth for all or some images by name; the outputs record only images of more than 8 bits (the 8-bit PPL
    reads alike at any), as one number when they agree."""
    import json

    import tifffile

    from minseg.data.config import ImageChannels
    from minseg.ensemble.manifest import load_manifest
    from minseg.data.tiling import mean_fill
    from minseg.inference.plan import open_scene, plan_slide
    from minseg.io.images import depth_record, describe_depth
    from minseg.inference.segment import SegmentInputError, resolve_scenes, source_change
    from tests.inference.conftest import write_manifest

    rng = np.random.default_rng(4)
    ppl, bse = rng.integers(0, 255, (96, 80, 3), np.uint8), rng.integers(0, 255, (96, 80), np.uint8)
    tifffile.imwrite(tmp_path / "ppl.tif", ppl, photometric="rgb")
    tifffile.imwrite(tmp_path / "bse.tif", (bse.astype(np.uint32) * 4095 // 255).astype(np.uint16),
                     photometric="minisblack")
    document = json.loads(open(write_manifest(tmp_path / "m", mode="soft", tile=64, overlap=16)).read())
    document["channels"] = [ImageChannels(name="ppl").model_dump(mode="json"),
                            ImageChannels(name="bse", mode="grey", bit_depth=12).model_dump(mode="json")]
    document["normalization"] = {"mean": [120.0] * 4, "std": [60.0] * 4}
    (tmp_path / "scene.json").write_text(json.dumps(document))
    manifest = load_manifest(str(tmp_path / "scene.json"), verify=False)
    scene = {"ppl": str(tmp_path / "ppl.tif"), "bse": str(tmp_path / "bse.tif")}

    def planned(bit_depth=None):
        settings = SegmentSettings(scenes=[scene], bit_depth=bit_depth)
        (uri, channels), = resolve_scenes(settings, manifest, Storage(), str(tmp_path / "out")).items()
        return plan_slide(uri, "s", manifest, settings, Storage(), str(tmp_path / "o"), channels=channels)

    plan = planned()
    assert [c.bit_depth for c in plan.channels] == [16, 12] and plan.images == (("ppl", 3), ("bse", 1))
    assert plan.image_bits == (8, 16) and plan.read_bit_depth == 12
    with open_scene(plan.uri, plan.channels, Storage(), plan.limits) as slide:
        tile = read_tile(slide, plan, 0, 0, mean_fill(manifest.normalization["mean"]))
    np.testing.assert_array_equal(tile[..., :3], ppl[:64, :64])
    np.testing.assert_array_equal(tile[..., 3], bse[:64, :64])
    assert [c.bit_depth for c in planned(14).channels] == [14, 14] and planned(14).read_bit_depth == 14
    some = planned({"ppl": 10})
    assert [c.bit_depth for c in some.channels] == [10, 12] and some.read_bit_depth == 12
    with pytest.raises(SegmentInputError, match="segment.bit_depth names xpl but the ensemble reads ppl, bse"):
        planned({"xpl": 12})
    rgb = load_manifest(write_manifest(tmp_path / "r", mode="soft", tile=64, overlap=16), verify=False)
    with pytest.raises(SegmentInputError, match="this ensemble reads one RGB image per slide: give one number"):
        resolve_scenes(SegmentSettings(slides=[scene["ppl"]], bit_depth={"ppl": 12}), rgb, Storage(),
                       str(tmp_path / "out"))
    # one file of both images' channels: one bit depth for its samples, which matters only above 8 bits
    from minseg.io.slides import ChannelSource, SlideError

    tifffile.imwrite(tmp_path / "both.tif", np.dstack([ppl, bse]), photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "deep.tif", np.dstack([ppl, bse]).astype(np.uint16) * 257,
                     photometric="minisblack", planarconfig="contig")
    one = plan_slide(str(tmp_path / "both.tif"), "b", manifest, SegmentSettings(), Storage(), str(tmp_path / "o"),
                     channels=(ChannelSource(str(tmp_path / "both.tif"), "bands", 4),))
    both = str(tmp_path / "both.tif")
    assert one.readings() == [("ppl", 3, both, 8, 16), ("bse", 1, both, 8, 16)] and one.read_bit_depth == 16
    assert one.first_channels == 3  # the preview shows the PPL image, not the file's first band
    with pytest.raises(SlideError, match="deep.tif is one multi-band file of 16-bit samples for images the ensemble "
                                         "reads as ppl 16-bit, bse 12-bit"):
        plan_slide(str(tmp_path / "deep.tif"), "d", manifest, SegmentSettings(), Storage(), str(tmp_path / "o"),
                   channels=(ChannelSource(str(tmp_path / "deep.tif"), "bands", 4),))
    # records: one number when the images of more than 8 bits agree, else each by name
    assert depth_record({}) == 16 and depth_record({"a": 12, "b": 12}) == 12
    assert depth_record({"ppl": 12, "bse": 16}) == {"bse": 16, "ppl": 12}
    assert describe_depth({"bse": 16, "ppl": 12}) == "bse 16-bit, ppl 12-bit" and describe_depth(12) == "12-bit"
    finished = {"uri": plan.uri, "source_shape": [96, 80], "source_identity": list(plan.identity)}
    assert source_change({**finished, "bit_depth": 12}, plan) is None
    assert source_change({**finished, "bit_depth": {"bse": 12, "ppl": 16}}, plan) == \
        "the outputs read its samples as bse 12-bit, ppl 16-bit, now 12-bit (segment.bit_depth or the ensemble's)"


def test_one_file_under_two_names_and_lists_saved_by_spreadsheets(tmp_path, caplog):
    """A break-it pass: a link beside its slide was segmented twice and counted twice in the batch totals; a CSV
    list saved with a byte-order mark (Excel's "CSV UTF-8") read its header as a slide named '\\ufeffuri'; a list or
    manifest that is no UTF-8 text was a UnicodeDecodeError traceback."""
    import logging

    from minseg.errors import InputError

    (tmp_path / "s.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "s.png")
    (tmp_path / "other.png").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="minseg"):
        uris = resolve_slides(SegmentSettings(slides=[str(tmp_path / "*.png")]), Storage(), str(tmp_path / "out"))
    assert uris == [str(tmp_path / "link.png"), str(tmp_path / "other.png")]  # the first name of s.png kept
    (warned,) = {id(r): r.fields for r in caplog.records if r.getMessage() == "segment.same_file_twice"}.values()
    assert warned["files"] == f"{tmp_path / 's.png'} (= {tmp_path / 'link.png'})"

    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfuri\nother.png\n")
    assert resolve_slides(SegmentSettings(slide_list=str(tmp_path / "bom.csv")), Storage(), str(tmp_path / "out")) == [
        str(tmp_path / "other.png")]
    (tmp_path / "latin.txt").write_bytes(b"# caf\xe9\nother.png\n")
    with pytest.raises(InputError, match=r"latin.txt: not UTF-8 text \(byte 5 is 0xe9\)"):
        resolve_slides(SegmentSettings(slide_list=str(tmp_path / "latin.txt")), Storage(), str(tmp_path / "out"))
    from minseg.ensemble.manifest import load_manifest

    (tmp_path / "swapped.json").write_bytes(b"\x89PNG\r\n\x1a\n")  # a picture given for the manifest
    with pytest.raises(InputError, match=r"swapped.json: not UTF-8 text \(byte 0 is 0x89\)"):
        load_manifest(str(tmp_path / "swapped.json"))
