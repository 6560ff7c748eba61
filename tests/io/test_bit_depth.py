"""A camera's bit depth in 16-bit samples (``data.bit_depth``, the manifest's, ``segment.bit_depth``): every decoder
scales 0..2**bits-1 to 0..255, refuses a sample above it naming the file, and leaves 8-bit pictures alone."""

import numpy as np
import pytest
import tifffile

from minseg.io.images import DecodeError, decode_channels, decode_image, significant_bits, to_rgb8
from minseg.io.slides import ChannelSource, SceneSlide, Slide, SlideCache, SlideError
from minseg.io.storage import Storage
from tests.data.helpers import png_bytes as png
from tests.io.test_images import tiff_bytes as tiff

TWELVE = (np.arange(48 * 64, dtype=np.uint16) * 7 % 4096).reshape(48, 64)  # a 12-bit camera's frame, 0..4095
SHOWN = np.round(TWELVE * (255 / 4095)).astype(np.uint8)  # what it shows over 0..255


def test_significant_bits():
    assert significant_bits(16, 12) == 12 and significant_bits(16) == 16
    assert significant_bits(12, 16) == 12 and significant_bits(12, 10) == 10  # BitsPerSample 12, a 10-bit camera
    assert significant_bits(8, 12) == 8 and significant_bits(1, 12) == 1  # 8-bit and fewer: as stored


@pytest.mark.parametrize("name,data", [("frame.tif", tiff(TWELVE, photometric="minisblack")),
                                       ("frame.png", png(TWELVE))])
def test_twelve_bit_frames_in_16_bit_files_fill_the_range(name, data):
    dark = decode_image(data, name, 10**8)  # as 16-bit: 4096 grey levels become 17
    assert dark.max() <= 16
    shown = decode_image(data, name, 10**8, bit_depth=12)
    assert shown.shape == (48, 64, 3) and np.array_equal(shown[..., 0], SHOWN) and shown.max() == 255
    np.testing.assert_array_equal(decode_channels(data, name, 10**8, "grey", bit_depth=12)[..., 0], SHOWN)


def test_a_sample_above_the_bit_depth_is_refused_never_clipped():
    frame = TWELVE.copy()
    frame[5, 7] = 5000
    for name, data in (("frame.tif", tiff(frame, photometric="minisblack")), ("frame.png", png(frame))):
        with pytest.raises(DecodeError, match=r"a sample of 5000 \(at x=7, y=5\) is above 4095, the largest 12-bit "
                                              r"value: its samples are not 12-bit \(the bit depth: data\.bit_depth"):
            decode_image(data, name, 10**8, bit_depth=12)
        assert decode_image(data, name, 10**8).shape == (48, 64, 3)  # 16-bit: fine


def test_16_bit_colour_pngs_keep_their_16_bits():
    """Pillow reads 16-bit RGB / RGBA / grey + alpha PNGs as 8-bit (each sample's high byte: 0..4095 -> 0..15,
    whatever the bit depth): they are decoded with their 16 bits, in images, bands and slides."""
    import imagecodecs

    from minseg.io.images import decode_samples, show_samples

    rgb = np.dstack([TWELVE, 4095 - TWELVE, TWELVE // 2])
    expected = np.round(rgb * (255 / 4095)).astype(np.uint8)
    opaque = np.full_like(TWELVE, 65535)  # a 16-bit alpha is 65535 whatever the camera's bits: not checked
    for samples in (rgb, np.dstack([rgb, opaque])):  # RGB, RGBA
        data = imagecodecs.png_encode(samples)
        assert np.array_equal(decode_image(data, "c.png", 10**8, bit_depth=12), expected)
        if samples.shape[2] == 3:
            assert np.array_equal(decode_channels(data, "c.png", 10**8, "bands", 3, bit_depth=12), expected)
        else:  # as bands, an alpha is a band like any other, held to the bit depth
            with pytest.raises(DecodeError, match="a sample of 65535"):
                decode_channels(data, "c.png", 10**8, "bands", 4, bit_depth=12)
        stored, palette = decode_samples(data, "c.png", 10**8)
        assert stored.dtype == np.uint16 and np.array_equal(show_samples(stored, palette, 12), expected)
        full = decode_image(data, "c.png", 10**8)  # 16 bits over 0..65535, as a TIFF's are
        assert np.array_equal(full, np.round(rgb * (255 / 65535)).astype(np.uint8))
    grey_alpha = imagecodecs.png_encode(np.dstack([TWELVE, opaque]))
    assert np.array_equal(decode_image(grey_alpha, "g.png", 10**8, bit_depth=12)[..., 0], SHOWN)
    rgba = tiff(np.dstack([rgb, opaque]), photometric="rgb", extrasamples=["unassalpha"])
    assert np.array_equal(decode_image(rgba, "a.tif", 10**8, bit_depth=12), expected)
    with pytest.raises(DecodeError, match="exceeds the limit of 100"):
        decode_image(imagecodecs.png_encode(rgb), "c.png", 100)


def test_32_bit_samples_are_not_held_to_the_16_bit_depth():
    deep = (np.arange(48 * 64, dtype=np.uint32) * 1_000_003).reshape(48, 64)
    shown = decode_image(tiff(deep, photometric="minisblack"), "d.tif", 10**8, bit_depth=12)
    assert np.array_equal(shown[..., 0], (deep * (255 / (2**32 - 1)) + 0.5).astype(np.uint8))


def test_palette_bands_read_alike_in_training_and_in_slides(tmp_path):
    indices = (np.arange(48 * 64) % 16).reshape(48, 64).astype(np.uint8)
    colormap = np.zeros((3, 256), np.uint16)  # tifffile writes 256 entries whatever BitsPerSample
    path = tmp_path / "palette.tif"
    tifffile.imwrite(path, indices, photometric="palette", colormap=colormap, bitspersample=4)
    trained = decode_channels(path.read_bytes(), "palette.tif", 10**8, "bands", 1, bit_depth=12)
    assert np.array_equal(trained[..., 0], indices)  # indices as they are
    with Slide(str(path), bit_depth=12) as slide:
        assert np.array_equal(ChannelSource(str(path), "bands", 1).channels(slide, 0, 0, 48, 64, 0), trained)


def test_8_bit_pictures_and_low_bitspersample_tiffs_are_as_before():
    eight = (TWELVE // 16).astype(np.uint8)
    for data, name in ((png(eight), "a.png"), (tiff(eight, photometric="minisblack"), "a.tif")):
        assert np.array_equal(decode_image(data, name, 10**8, bit_depth=12)[..., 0], eight)
    packed = tiff(TWELVE, photometric="minisblack", bitspersample=12)  # BitsPerSample 12: its own range
    assert np.array_equal(decode_image(packed, "p.tif", 10**8)[..., 0], SHOWN)
    assert np.array_equal(decode_image(packed, "p.tif", 10**8, bit_depth=16)[..., 0], SHOWN)


def test_bands_use_the_bits_of_their_samples():
    bands = np.dstack([TWELVE, 4095 - TWELVE])
    expected = np.dstack([SHOWN, np.round((4095 - TWELVE) * (255 / 4095)).astype(np.uint8)])
    stored = tiff(bands, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(decode_channels(stored, "b.tif", 10**8, "bands", 2, bit_depth=12), expected)
    # BitsPerSample 12 read as bands: scaled by 4095 (it was scaled by 65535, as dark as 16-bit)
    packed = tiff(bands, photometric="minisblack", planarconfig="contig", bitspersample=12)
    np.testing.assert_array_equal(decode_channels(packed, "b.tif", 10**8, "bands", 2), expected)
    with pytest.raises(DecodeError, match="above 1023, the largest 10-bit value"):
        decode_channels(stored, "b.tif", 10**8, "bands", 2, bit_depth=10)


def test_slides_read_with_the_bit_depth(tmp_path):
    frame = np.tile(TWELVE, (3, 3))  # 144 x 192: several 32-px tiles
    shown = np.tile(SHOWN, (3, 3))
    tiled = tmp_path / "slide.tif"
    tifffile.imwrite(tiled, frame, photometric="minisblack", tile=(32, 32))
    (tmp_path / "slide.png").write_bytes(png(frame))
    for path in (tiled, tmp_path / "slide.png"):
        with Slide(str(path), bit_depth=12) as slide:
            assert np.array_equal(slide.read_region(10, 20, 100, 150)[..., 1], shown[10:110, 20:170])
        with Slide(str(path)) as slide:  # the default: 16 bits
            assert slide.read_region(0, 0, 144, 192).max() <= 16
    bands = tmp_path / "bands.tif"
    tifffile.imwrite(bands, np.dstack([frame, frame]), photometric="minisblack", planarconfig="contig", tile=(32, 32))
    with SceneSlide((ChannelSource(str(bands), "bands", 2), ChannelSource(str(tiled), "grey")), Storage(),
                    bit_depth=12) as scene:
        region = scene.read_region(0, 0, 144, 192)
        assert region.shape == (144, 192, 3) and all(np.array_equal(region[..., c], shown) for c in range(3))
    bright = frame.copy()
    bright[100, 150] = 40000
    tifffile.imwrite(tmp_path / "bright.tif", bright, photometric="minisblack", tile=(32, 32))
    with Slide(str(tmp_path / "bright.tif"), bit_depth=12) as slide:
        assert slide.read_region(0, 0, 64, 64).max() == 255  # tiles without it read fine
        with pytest.raises(SlideError, match=r"bright\.tif: a sample of 40000 \(at x=150, y=100\) is above 4095"):
            slide.read_region(96, 128, 32, 32)


def test_the_slide_cache_keeps_readings_of_two_bit_depths_apart(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, TWELVE, photometric="minisblack", tile=(32, 32))
    cache = SlideCache()
    assert cache.get(str(path), Storage(), bit_depth=12).read_region(0, 0, 48, 64).max() == 255
    assert cache.get(str(path), Storage()).read_region(0, 0, 48, 64).max() <= 16


def test_a_registered_reader_without_bits_is_read_by_its_dtype(tmp_path):
    """A format with 16-bit samples and neither displayed() nor bits(): to_rgb8 with the slide's bit depth."""
    from minseg.io.slides import register_slide_reader, unregister_slide_reader
    from tests.io.test_slides import _NpyReader

    path = tmp_path / "frame.npybits"
    with open(path, "wb") as file:
        np.save(file, TWELVE)
    register_slide_reader("npybits", suffixes=(".npybits",))(type("Reader", (_NpyReader,), {"closed": 0}))
    try:
        with Slide(str(path), bit_depth=12) as slide:
            assert np.array_equal(slide.read_region(0, 0, 48, 64), to_rgb8(SHOWN))
            assert slide.band_bits(0, slide.read_region(0, 0, 4, 4, rgb=False)) == 12
            assert slide.info.stored_bits == 16  # a reader that does not say: taken as 16-bit
    finally:
        unregister_slide_reader("npybits")


def test_a_real_section_saved_by_a_12_bit_camera_reads_as_its_8_bit_photograph(shared_data, tmp_path):
    """A LumenStone photograph as a 12-bit camera's 16-bit TIFF (each value v * 4095 // 255) and a region of a real
    slide the same way: read with bit depth 12, the very pixels of the 8-bit originals."""
    photograph = decode_image((shared_data / "lumenstone" / "images" / "03.jpg").read_bytes(), "03.jpg", 10**9)
    frame = (photograph.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    data = tiff(frame, photometric="rgb", compression="zlib")
    assert np.array_equal(decode_image(data, "03.tif", 10**9, bit_depth=12), photograph)
    with Slide(str(shared_data / "slides" / "CMU-1-Small-Region.svs")) as slide:
        region = slide.read_region(1000, 800, 300, 400)
    path = tmp_path / "region.tif"
    tifffile.imwrite(path, (region.astype(np.uint32) * 4095 // 255).astype(np.uint16), photometric="rgb",
                     tile=(64, 64), compression="zlib")
    with Slide(str(path), bit_depth=12) as slide:
        assert np.array_equal(slide.read_region(0, 0, 300, 400), region)


def test_the_refusal_crosses_processes_and_says_where_in_a_slide(tmp_path):
    """Raised in Ray tasks and actors, the refusal is pickled; in a slide it gives the position at the pyramid level
    read, through the RGB and the bands paths alike."""
    import pickle

    from minseg.io.images import SampleAboveBitDepth

    error = pickle.loads(pickle.dumps(SampleAboveBitDepth(5000, 12, 3, 4).at(10, 20, 1)))
    assert isinstance(error, DecodeError) and (error.y, error.x, error.level) == (13, 24, 1)
    assert str(error).startswith("a sample of 5000 (at x=24, y=13 of pyramid level 1) is above 4095")
    frame = np.tile(TWELVE, (2, 2))
    frame[70, 90] = 50000
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tiff:  # level 0 and a level 1 with the hot sample at (y 35, x 45)
        tiff.write(frame, photometric="minisblack", tile=(32, 32), subifds=1)
        tiff.write(frame[::2, ::2], photometric="minisblack", tile=(32, 32), subfiletype=1)
    with Slide(str(path), bit_depth=12) as slide:
        with pytest.raises(SlideError, match=r"pyramid\.tif: a sample of 50000 \(at x=45, y=35 of pyramid level 1\)"):
            slide.read_region(32, 32, 16, 16, level=1)
        with pytest.raises(SlideError, match=r"a sample of 50000 \(at x=90, y=70\) is above 4095"):
            ChannelSource(str(path), "bands", 1).channels(slide, 64, 64, 32, 32, 0)


def test_grey_with_extra_samples_is_shown_grey():
    """A MinIsBlack TIFF with two extra samples (alpha and another) is its grey, by the interpretation, not an RGB
    guessed from three samples."""
    grey = np.dstack([TWELVE, np.full_like(TWELVE, 65535), np.zeros_like(TWELVE)])
    data = tiff(grey, photometric="minisblack", planarconfig="contig", extrasamples=["unassalpha", "unspecified"])
    assert np.array_equal(decode_image(data, "g.tif", 10**8, bit_depth=12), np.dstack([SHOWN] * 3))


def test_stored_bits_say_whether_a_bit_depth_applies(tmp_path):
    """What a slide stores decides whether a bit depth changes it: 16-bit PNGs (colour too, which Pillow opens as
    8-bit) and a 16-bit TIFF saved under a .png name say 16; 8-bit pictures and palette TIFFs 8; a scene its most."""
    import imagecodecs

    from minseg.io.images import depth_applies

    assert [depth_applies(bits) for bits in (1, 8, 10, 12, 16, 32)] == [False, False, True, True, True, False]
    (tmp_path / "grey16.png").write_bytes(png(TWELVE))
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(np.dstack([TWELVE] * 3)))
    (tmp_path / "eight.png").write_bytes(png(SHOWN))
    (tmp_path / "tiff16.png").write_bytes(tiff(TWELVE, photometric="minisblack"))
    tifffile.imwrite(tmp_path / "palette.tif", SHOWN, photometric="palette", colormap=np.zeros((3, 256), np.uint16))
    tifffile.imwrite(tmp_path / "deep.tif", TWELVE, photometric="minisblack", tile=(32, 32))
    expected = {"grey16.png": 16, "rgb16.png": 16, "eight.png": 8, "tiff16.png": 16, "palette.tif": 8, "deep.tif": 16}
    for name, bits in expected.items():
        with Slide(str(tmp_path / name), bit_depth=12) as slide:
            assert slide.info.stored_bits == bits, name
            if bits == 16:  # read over 0..4095
                assert slide.read_region(0, 0, 48, 64)[..., 0].max() == 255, name
    sources = (ChannelSource(str(tmp_path / "eight.png"), "grey"), ChannelSource(str(tmp_path / "deep.tif"), "grey"))
    with SceneSlide(sources, Storage(), bit_depth=12) as scene:
        assert scene.info.stored_bits == 16


def test_8_bit_rgba_bands_read_alike_in_training_and_slides(tmp_path):
    rgba = np.dstack([SHOWN, 255 - SHOWN, SHOWN // 2, np.full_like(SHOWN, 200)])
    (tmp_path / "rgba.png").write_bytes(png(rgba))
    trained = decode_channels((tmp_path / "rgba.png").read_bytes(), "rgba.png", 10**8, "bands", 4)
    assert np.array_equal(trained, rgba)
    with Slide(str(tmp_path / "rgba.png")) as slide:
        assert np.array_equal(ChannelSource(str(tmp_path / "rgba.png"), "bands", 4).channels(slide, 0, 0, 48, 64, 0),
                              trained)
        assert np.array_equal(slide.read_region(0, 0, 48, 64), rgba[..., :3])  # shown without its alpha


def test_one_file_read_as_two_images_of_a_scene_with_two_bit_depths_stays_open(tmp_path):
    """The per-process cache keeps a file opened at two bit depths (two images of one scene naming one file): the
    second does not close the first while the scene reads them; another version of the file does."""
    frame = np.linspace(0, 4095, 32 * 48).reshape(32, 48).astype(np.uint16)  # a 12-bit camera's range
    path = tmp_path / "bse.tif"
    tifffile.imwrite(path, frame, photometric="minisblack")
    cache = SlideCache()
    sources = (ChannelSource(str(path), "grey", bit_depth=12), ChannelSource(str(path), "grey", bit_depth=16))
    with SceneSlide(sources, Storage(), cache=cache) as scene:
        region = scene.read_region(0, 0, 32, 48)
    assert region[..., 0].max() == 255 and region[..., 1].max() <= 16
    assert len(cache._slides) == 2
    cache.get(str(path), Storage(), version="replaced")
    assert len(cache._slides) == 1
