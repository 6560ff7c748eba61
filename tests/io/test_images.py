"""Pixels as a person sees them: orientation and photometric interpretation, in every decoder.

Training images and masks (``decode_image`` / ``decode_mask``), raster slides and TIFF
slides (``Slide.read_region``) all return what a viewer shows, or refuse naming the tag.
"""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from minseg.io.images import DecodeError, decode_image, decode_mask, orient
from minseg.io.slides import Slide, SlideError

EXIF_ORIENTATION = 0x0112


def picture(height=48, width=64) -> np.ndarray:
    """An asymmetric RGB picture: every orientation gives a different array."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image[:8, :16] = (255, 0, 0)  # a red block in the stored top-left corner
    return image


def encoded(image: np.ndarray, fmt: str, orientation: int | None = None) -> bytes:
    pil = Image.fromarray(image)
    buffer = io.BytesIO()
    options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    pil.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow_exif_transpose(orientation):
    from PIL import ImageOps

    stored = picture()
    pil = Image.fromarray(stored)
    exif = pil.getexif()
    exif[EXIF_ORIENTATION] = orientation
    pil.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(pil))
    assert np.array_equal(orient(stored, orientation), expected)


def test_jpeg_with_exif_orientation_6_is_decoded_as_displayed():
    """The issue's example: stored landscape 64x48, shown portrait; the mask drawn on the portrait fits."""
    stored = picture()
    decoded = decode_image(encoded(stored, "JPEG", orientation=6), "a.jpg", 10**8)
    assert decoded.shape == (64, 48, 3)  # portrait, as displayed
    displayed = np.rot90(stored, -1)  # 90° clockwise
    assert np.abs(decoded.astype(int) - displayed).mean() < 3  # JPEG at quality 100
    assert np.abs(decoded[:16, -8:].astype(int) - (255, 0, 0)).mean() < 12  # the red block is now top-right
    mask = np.zeros((64, 48), np.uint8)  # drawn on the displayed picture
    assert decode_mask(encoded(mask, "PNG"), "a.png", 10**8).shape == decoded.shape[:2]


def test_orientation_3_puts_pixels_where_they_are_shown():
    """Same size either way, so only the pixels tell: 180° turns the stored top-left block to bottom-right."""
    stored = picture()
    decoded = decode_image(encoded(stored, "JPEG", orientation=3), "b.jpg", 10**8)
    assert decoded.shape == stored.shape
    assert np.abs(decoded.astype(int) - stored[::-1, ::-1]).mean() < 3


def test_png_exif_and_tiff_orientation_tags_too():
    """A second kind of carrier: PNG eXIf for an image, the TIFF Orientation tag for an image and its mask."""
    stored = picture()
    png = decode_image(encoded(stored, "PNG", orientation=8), "c.png", 10**8)
    assert np.array_equal(png, np.rot90(stored, 1))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stored, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    assert np.array_equal(decode_image(buffer.getvalue(), "d.tif", 10**8), np.rot90(stored, -1))
    codes = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64) % 5
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, codes, photometric="minisblack", extratags=[(274, "H", 1, 6, True)])
    assert np.array_equal(decode_mask(buffer.getvalue(), "d.tif", 10**8), np.rot90(codes, -1))


def tiff_bytes(array, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def test_training_tiffs_by_photometric_interpretation():
    grey = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    white_is_zero = decode_image(tiff_bytes(grey, photometric="miniswhite"), "w.tif", 10**8)
    assert np.array_equal(white_is_zero[..., 0], 255 - grey)  # as shown: 0 is white
    colormap = np.zeros((3, 256), np.uint16)
    colormap[0, 1], colormap[2, 2] = 65535, 65535  # index 1 red, 2 blue
    indices = (grey % 3).astype(np.uint8)
    rgb = decode_image(tiff_bytes(indices, photometric="palette", colormap=colormap), "p.tif", 10**8)
    assert (rgb[indices == 1] == (255, 0, 0)).all() and (rgb[indices == 2] == (0, 0, 255)).all()
    assert np.array_equal(decode_mask(tiff_bytes(indices, photometric="palette", colormap=colormap), "p.tif", 10**8),
                          indices)  # a palette mask's indices are its codes
    bilevel = decode_image(tiff_bytes(grey > 100), "b.tif", 10**8)
    assert set(np.unique(bilevel)) == {0, 255}  # 1-bit samples shown black / white, not 0 / 1
    with pytest.raises(DecodeError, match="MinIsWhite: class codes must be stored as MinIsBlack"):
        decode_mask(tiff_bytes(indices, photometric="miniswhite"), "m.tif", 10**8)


@pytest.mark.parametrize("array,options,tag", [
    (np.zeros((32, 32, 4), np.uint8), {"photometric": "separated"}, "Separated (CMYK)"),
    (np.zeros((32, 32), np.float32), {"photometric": "minisblack"}, "SampleFormat 3 (floating point)"),
    (np.zeros((32, 32), np.int16), {"photometric": "minisblack"}, "SampleFormat 2 (signed integer)"),
])
def test_what_cannot_be_shown_is_refused_naming_the_tag(array, options, tag):
    with pytest.raises(DecodeError, match=tag.replace("(", r"\(").replace(")", r"\)")):
        decode_image(tiff_bytes(array, **options), "x.tif", 10**8)


def write_slide(path, array, **options):
    tifffile.imwrite(path, array, tile=(32, 32), **options)
    return str(path)


def test_tiff_slides_are_read_as_displayed(tmp_path):
    """The issue's MinIsWhite slide, and a second kind: a palette slide."""
    grey = (np.arange(96 * 128) % 251).astype(np.uint8).reshape(96, 128)
    with Slide(write_slide(tmp_path / "w.tif", grey, photometric="miniswhite")) as slide:
        region = slide.read_region(10, 20, 40, 50)
        assert np.array_equal(region[..., 0], 255 - grey[10:50, 20:70])
        assert np.array_equal(slide.read_region(10, 20, 40, 50, rgb=False), grey[10:50, 20:70])  # stored samples
    colormap = np.zeros((3, 256), np.uint16)
    colormap[1] = np.arange(256) * 257  # green ramp
    with Slide(write_slide(tmp_path / "p.tif", grey, photometric="palette", colormap=colormap)) as slide:
        region = slide.read_region(0, 0, 96, 128)
        assert np.array_equal(region[..., 1], grey) and not region[..., 0].any() and not region[..., 2].any()


@pytest.mark.parametrize("options,tag", [
    ({"photometric": "minisblack", "extratags": [(274, "H", 1, 3, True)]}, "Orientation 3"),
    ({"photometric": "rgb", "planarconfig": "separate"}, "planar"),
])
def test_tiff_slides_that_cannot_be_shown_are_refused(tmp_path, options, tag):
    array = np.zeros((3, 64, 64), np.uint8) if options.get("planarconfig") else np.zeros((64, 64), np.uint8)
    path = write_slide(tmp_path / "x.tif", array, **options)
    with pytest.raises(SlideError, match=tag) as caught:
        Slide(path)
    assert path in str(caught.value)


def test_a_cmyk_slide_is_refused_naming_the_file_and_tag(tmp_path):
    path = write_slide(tmp_path / "cmyk.tif", np.zeros((64, 64, 4), np.uint8), photometric="separated")
    with pytest.raises(SlideError, match=r"cmyk.tif: PhotometricInterpretation Separated \(CMYK\)"):
        Slide(path)


def test_a_tiff_without_photometric_tag_is_read_as_libtiff_reads_it():
    """tifffile says MinIsWhite when the tag is absent; libtiff (and every viewer) says RGB / MinIsBlack."""
    rgb = picture()
    raw = bytearray(tiff_bytes(rgb, photometric="rgb"))
    with tifffile.TiffFile(io.BytesIO(bytes(raw))) as tiff:
        tag = tiff.pages[0].tags[262]
        position = tag.offset
    raw[position : position + 2] = (65000).to_bytes(2, "little")  # rename the tag: it is now absent
    decoded = decode_image(bytes(raw), "no-tag.tif", 10**8)
    assert np.array_equal(decoded, rgb)


def test_a_short_colormap_is_refused_naming_it():
    """Indices beyond the ColorMap used to crash the read task (IndexError) instead of quarantining the file."""
    from minseg.io.images import tiff_pixel_format

    class Page:  # what tifffile reports for an 8-bit palette page whose ColorMap has 16 entries
        photometric, sampleformat, bitspersample, compression, samplesperpixel, extrasamples = 3, 1, 8, 1, 1, ()
        tags = {262: None}
        colormap = np.zeros((3, 16), np.uint16)

    with pytest.raises(DecodeError, match=r"ColorMap has 16 entries for 8-bit indices \(256 needed\)"):
        tiff_pixel_format(Page())


def test_a_jpeg_compressed_tiff_mask_is_refused():
    """JPEG masks were refused by name (.jpg), a TIFF mask with JPEG compression trained on changed codes (the
    label-map kind of fault a break-it pass found in measure); a deflate TIFF mask reads as stored."""
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 8:50] = 3
    lossy, exact = io.BytesIO(), io.BytesIO()
    tifffile.imwrite(lossy, mask, compression="jpeg")
    tifffile.imwrite(exact, mask, compression="zlib")
    with pytest.raises(DecodeError, match="a JPEG-compressed TIFF mask: JPEG's lossy compression changes the class"):
        decode_mask(lossy.getvalue(), "m.tif", 10**8)
    assert np.array_equal(decode_mask(exact.getvalue(), "m.tif", 10**8), mask)
    assert decode_image(lossy.getvalue(), "photo.tif", 10**8).shape == (64, 64, 3)  # an image may be JPEG
