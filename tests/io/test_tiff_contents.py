"""What a TIFF holds besides its one image, and the pixel size it claims: a stack of pages is refused (never read
as its first page), pyramid levels and a whole-slide format's label / macro / thumbnail (SVS, NDPI, OME-TIFF) are
not; a pixel size that is no size (NaN, negative, X != Y) is absent, logged naming the slide, and never reaches a JSON
file."""

import io
import logging

import numpy as np
import pytest
import tifffile

from minseg.io.images import DecodeError, decode_image, decode_mask
from minseg.io.slides import Slide, SlideError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 255, (64, 80, 3), dtype=np.uint8)
CODES = RNG.integers(0, 4, (64, 80), dtype=np.uint8)


def pages(*arrays, **options) -> bytes:
    """One TIFF page per array (``options`` per page: a list of dicts, or one dict for all)."""
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for index, array in enumerate(arrays):
            extra = options.get("each", [{}] * len(arrays))[index]
            writer.write(array, photometric="rgb" if array.ndim == 3 else "minisblack", metadata=None, **extra)
    return buffer.getvalue()


STACKS = {
    "PPL + XPL, one shape": pages(RGB, RGB[::-1]),  # tifffile: one series of 2 pages
    "two images of other shapes": pages(RGB[:32, :32], RGB),  # two series (a thumbnail first, not flagged)
}


def stack_written_whole() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.stack([CODES, CODES[::-1]]))  # a 'shaped' 2x64x80 series
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["PPL + XPL, one shape", "two images of other shapes", "whole"])
def test_multi_page_tiffs_are_refused_for_images_masks_and_slides(tmp_path, kind):
    data = stack_written_whole() if kind == "whole" else STACKS[kind]
    with pytest.raises(DecodeError, match=r"multi-(page|image) TIFF: 2 (pages|images)"):
        decode_image(data, "scene.tif", 10**8)
    with pytest.raises(DecodeError, match=r"multi-(page|image) TIFF: 2 (pages|images)"):
        decode_mask(data, "mask.tif", 10**8)
    (tmp_path / "scene.tif").write_bytes(data)
    with pytest.raises(SlideError, match=r"scene\.tif: multi-(page|image) TIFF: 2 (pages|images)"):
        Slide(str(tmp_path / "scene.tif"))


def test_reduced_resolution_pages_and_sub_ifd_pyramids_still_read(tmp_path):
    reduced = pages(RGB, RGB[::2, ::2], each=[{}, {"subfiletype": 1}])
    assert np.array_equal(decode_image(reduced, "a.tif", 10**8), RGB)
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        writer.write(CODES, metadata=None, subifds=1)
        writer.write(CODES[::2, ::2], metadata=None, subfiletype=1)
    assert np.array_equal(decode_mask(buffer.getvalue(), "m.tif", 10**8), CODES)
    (tmp_path / "pyramid.tif").write_bytes(reduced)
    with Slide(str(tmp_path / "pyramid.tif")) as slide:
        assert slide.info.levels == ((64, 80), (32, 40))


def test_an_ome_tiff_with_bio_formats_label_and_macro_images_reads_its_slide(tmp_path):
    """Bio-Formats (bfconvert, raw2ometiff) names an OME-TIFF's associated images 'macro image' and 'label image';
    they were counted as more images and the slide refused. Another named image still is."""
    path = tmp_path / "slide.ome.tif"

    def write(extra_names):
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as writer:
            writer.write(RGB, photometric="rgb", tile=(32, 32), subifds=1, metadata={"Name": "slide"})
            writer.write(RGB[::2, ::2], photometric="rgb", tile=(32, 32), subfiletype=1)
            for index, name in enumerate(extra_names):
                writer.write(RGB[: 16 + index, :24], photometric="rgb", metadata={"Name": name})

    write(["macro image", "Label Image", "thumbnail"])
    with Slide(str(path)) as slide:
        assert slide.info.levels == ((64, 80), (32, 40))
        assert np.array_equal(slide.read_region(0, 0, 64, 80), RGB)
    assert np.array_equal(decode_image(path.read_bytes(), "slide.ome.tif", 10**8), RGB)
    write(["macro image", "XPL"])
    with pytest.raises(SlideError, match=r"multi-image TIFF: 3 images"):
        Slide(str(path))


@pytest.mark.parametrize("name", ["yb10kx5k.zstd.tiff", "grey10kx5k.tif", "test3-DAPI-2-387.ndpi",
                                  "CMU-1-Small-Region.svs"])
def test_real_slides_with_label_macro_and_thumbnail_still_read(shared_data, name):
    with Slide(str(shared_data / "slides" / name)) as slide:
        assert slide.read_region(0, 0, 16, 16).shape == (16, 16, 3)


def svs(path, mpp: str) -> str:
    description = f"Aperio Image Library v12.0.5\r\n80x64 [0,0 80x64] (256x256) JPEG/RGB Q=70|AppMag = 20|MPP = {mpp}"
    tifffile.imwrite(path, RGB, photometric="rgb", tile=(32, 32), description=description, metadata=None)
    return str(path)


@pytest.mark.parametrize("mpp", ["-0.5", "nan", "inf", "0", "abc"])
def test_an_svs_mpp_that_is_no_pixel_size_is_absent_and_logged(tmp_path, caplog, mpp):
    path = svs(tmp_path / "slide.svs", mpp)
    with caplog.at_level(logging.WARNING, logger="minseg"), Slide(path) as slide:
        assert slide.info.format == "svs" and slide.info.pixel_size_um is None
    (record,) = [r for r in caplog.records if r.getMessage() == "slide.pixel_size_ignored"]
    assert record.fields["slide"] == path and "MPP" in record.fields["reason"]
    with Slide(svs(tmp_path / "good.svs", "0.25")) as slide:
        assert slide.info.pixel_size_um == 0.25


def test_different_x_and_y_resolutions_are_not_one_pixel_size(tmp_path, caplog):
    path = tmp_path / "aniso.tif"  # 0.5 µm wide, 1 µm high
    tifffile.imwrite(path, RGB, photometric="rgb", resolution=(20000, 10000), resolutionunit="CENTIMETER")
    with caplog.at_level(logging.WARNING, logger="minseg"), Slide(str(path)) as slide:
        assert slide.info.pixel_size_um is None
    (record,) = [r for r in caplog.records if r.getMessage() == "slide.pixel_size_ignored"]
    assert "0.5 µm wide but 1 µm high" in record.fields["reason"] and record.fields["slide"] == str(path)
    tifffile.imwrite(path, RGB, photometric="rgb", resolution=(20000, 20000), resolutionunit="CENTIMETER")
    with Slide(str(path)) as slide:
        assert slide.info.pixel_size_um == pytest.approx(0.5)


def test_a_slide_whose_mpp_is_nan_is_planned_without_a_pixel_size(tmp_path):
    """Where it went into summary.json as a bare NaN: the plan (and so every output) has no pixel size."""
    from minseg.ensemble.manifest import load_manifest
    from minseg.inference.config import SegmentSettings
    from minseg.inference.plan import plan_slide
    from minseg.io.storage import Storage
    from tests.inference.conftest import write_manifest

    manifest = load_manifest(write_manifest(tmp_path))
    plan = plan_slide(svs(tmp_path / "nan.svs", "nan"), "nan", manifest, SegmentSettings(), Storage(), str(tmp_path))
    assert plan.pixel_size_um is None and plan.measure.pixel_size_um is None
    plan = plan_slide(svs(tmp_path / "ok.svs", "0.5"), "ok", manifest, SegmentSettings(), Storage(), str(tmp_path))
    assert plan.pixel_size_um == 0.5
    with pytest.raises(ValueError, match="finite"):
        SegmentSettings(pixel_size_um=float("inf"))


def test_exported_pyramids_carry_their_pixel_size_in_the_resolution_tags(tmp_path):
    """labels.tif / uncertainty.tif carried the pixel size only in their JSON description: Fiji and QuPath read the
    X/YResolution tags, left at 1 pixel per no unit. Every level gets its own (twice the pixel size per level)."""
    import tifffile

    from minseg.enums import TiffCompression
    from minseg.io.tiff import PyramidSpec, write_pyramids

    labels = np.arange(256 * 200, dtype=np.uint32).reshape(256, 200).astype(np.uint8) % 7
    path = tmp_path / "labels.tif"
    spec = PyramidSpec(256, 200, tile=64, reduce="nearest", compression=TiffCompression.DEFLATE, pixel_size_um=0.5)
    write_pyramids([(str(path), spec)], lambda r, c: (labels[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64],))
    with tifffile.TiffFile(path) as tiff:
        pages = [tiff.pages[0]] + list(tiff.pages[0].pages)
        assert [p.compression for p in pages] == [tifffile.COMPRESSION.ADOBE_DEFLATE] * len(pages) and len(pages) > 1
        for level, page in enumerate(pages):
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            assert page.get_resolution() == pytest.approx((2e4 / 2**level, 2e4 / 2**level))
    with Slide(str(path)) as slide:  # minseg's reader (measure) too
        assert slide.info.pixel_size_um == pytest.approx(0.5)
    unscaled = tmp_path / "unscaled.tif"
    write_pyramids([(str(unscaled), PyramidSpec(256, 200, tile=64, reduce="nearest"))],
                   lambda r, c: (labels[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64],))
    with tifffile.TiffFile(unscaled) as tiff:
        assert tiff.pages[0].resolutionunit == tifffile.RESUNIT.NONE


@pytest.mark.parametrize("resolution, unit, said", [
    ((0, 20000), "CENTIMETER", "a resolution tag is 0"),
    ((1e-8, 1e-8), "CENTIMETER", "1e+12 µm wide: no microscope's"),
    ((1, 1), "INCH", "25400 µm wide: no microscope's"),
])
def test_resolution_tags_that_give_no_pixel_size_are_said(tmp_path, caplog, resolution, unit, said):
    """A zero term or pixels coarser than a writer's 72 dpi default were dropped without a word (the docs said a
    warning); a writer's default (72 or 300 dpi) stays silent: it is no calibration, and said of every such file."""
    from minseg.logs import _format_value

    path = tmp_path / "r.tif"
    tifffile.imwrite(path, RGB, photometric="rgb", resolution=resolution, resolutionunit=unit)
    with caplog.at_level(logging.WARNING, logger="minseg"), Slide(str(path)) as slide:
        assert slide.info.pixel_size_um is None
    (record,) = [r for r in caplog.records if r.getMessage() == "slide.pixel_size_ignored"]
    assert said in record.fields["reason"]
    assert "µm" not in said or "µm" in _format_value(record.fields["reason"])  # written as µm, not \u00b5
    caplog.clear()
    for dpi in (72, 300):
        tifffile.imwrite(path, RGB, photometric="rgb", resolution=(dpi, dpi), resolutionunit="INCH")
        with caplog.at_level(logging.WARNING, logger="minseg"), Slide(str(path)) as slide:
            assert slide.info.pixel_size_um is None
    assert not [r for r in caplog.records if r.getMessage() == "slide.pixel_size_ignored"]
