"""Region reads of whole slides: only what a region touches, every format, clear errors."""

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from minseg.io.images import to_rgb8
from minseg.io.slides import (
    RASTER_SUFFIXES,
    SLIDE_SUFFIXES,
    TIFF_SUFFIXES,
    Slide,
    SlideError,
    SlideInfo,
    list_slide_readers,
    register_slide_reader,
    slide_reader_for,
    slide_suffixes,
    unregister_slide_reader,
)


@pytest.mark.parametrize("name", ["yb10kx5k.zstd.tiff", "grey10kx5k.tif", "test3-DAPI-2-387.ndpi",
                                  "CMU-1-Small-Region.svs"])
def test_real_slide_regions_equal_the_decoded_level(shared_data, name):
    path = shared_data / "slides" / name
    with Slide(str(path)) as slide, tifffile.TiffFile(path) as tiff:
        levels = slide.info.levels
        assert len(levels) == len(tiff.series[0].levels)
        rng = np.random.default_rng(0)
        for level in sorted({0, len(levels) - 1}):
            full = to_rgb8(tiff.series[0].levels[level].asarray())
            height, width = levels[level]
            for _ in range(4):
                h, w = int(rng.integers(1, min(height, 600))), int(rng.integers(1, min(width, 600)))
                y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                assert np.array_equal(slide.read_region(y, x, h, w, level), full[y : y + h, x : x + w])


def test_a_region_reads_only_the_segments_it_touches(shared_data):
    with Slide(str(shared_data / "slides" / "yb10kx5k.zstd.tiff")) as slide:
        slide.read_region(100, 2100, 50, 50)  # inside one 1024-px tile
        assert list(slide._cache) == [(0, 2)]
        slide.read_region(1000, 1000, 100, 100)  # straddles four tiles
        assert sorted(slide._cache) == [(0, 0), (0, 1), (0, 2), (0, 10), (0, 11)]


def test_pixel_sizes_come_from_svs_and_ndpi_not_from_dpi_defaults(shared_data):
    slides = shared_data / "slides"
    assert Slide(str(slides / "CMU-1-Small-Region.svs")).info.pixel_size_um == pytest.approx(0.499)
    assert 0.1 < Slide(str(slides / "test3-DAPI-2-387.ndpi")).info.pixel_size_um < 1
    assert Slide(str(slides / "grey10kx5k.tif")).info.pixel_size_um is None  # 72 dpi is not a calibration


def test_bad_slides_fail_with_the_file_and_the_reason(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlideError, match="notes.txt: not a slide format"):
        Slide(str(tmp_path / "notes.txt"))
    with pytest.raises(SlideError, match="missing.tif"):
        Slide(str(tmp_path / "missing.tif"))
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00" + b"\xff" * 100)
    with pytest.raises(SlideError, match="garbage.tif: unreadable"):
        Slide(str(tmp_path / "garbage.tif"))
    image = np.zeros((300, 300, 3), np.uint8)
    tifffile.imwrite(tmp_path / "cut.tif", image, tile=(128, 128), compression="zlib")
    data = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with Slide(str(tmp_path / "cut.tif")) as slide:
        with pytest.raises(SlideError, match="cut.tif"):
            slide.read_region(0, 0, 300, 300)
        with pytest.raises(SlideError, match="outside level 0"):
            slide.read_region(250, 0, 100, 10)


def test_label_maps_can_be_read_raw(tmp_path):
    labels = (np.arange(64 * 64) % 7).reshape(64, 64).astype(np.uint8)
    tifffile.imwrite(tmp_path / "labels.tif", labels, tile=(32, 32))
    with Slide(str(tmp_path / "labels.tif")) as slide:
        assert np.array_equal(slide.read_region(0, 0, 64, 64, rgb=False), labels)
        assert slide.read_region(0, 0, 64, 64).shape == (64, 64, 3)


def test_every_slide_suffix_maps_to_exactly_one_reader():
    owners = {suffix: [e.name for e in list_slide_readers() if suffix in e.suffixes] for suffix in SLIDE_SUFFIXES}
    assert all(len(names) == 1 for names in owners.values()), owners
    assert SLIDE_SUFFIXES == slide_suffixes() == TIFF_SUFFIXES + RASTER_SUFFIXES
    assert {owners[s][0] for s in TIFF_SUFFIXES} == {"tiff"} and {owners[s][0] for s in RASTER_SUFFIXES} == {"raster"}
    assert slide_reader_for("s3://bucket/scans/A.NDPI").name == "tiff"
    with pytest.raises(ValueError, match=r"suffixes already registered: \.svs \(tiff\)"):
        register_slide_reader("other", suffixes=(".SVS",))(object)
    with pytest.raises(ValueError, match="'raster' is registered twice"):
        register_slide_reader("raster", suffixes=(".webp",))(object)


class _NpyReader:
    """A made-up format: one level, a .npy array in the file."""

    closed = 0

    def __init__(self, uri, storage, options):
        self.pixels = np.load(io.BytesIO(storage.read_bytes(uri)))
        self.info = SlideInfo(uri, "npy", (self.pixels.shape[:2],), None)

    def read_region(self, level, y, x, height, width):
        return self.pixels[y : y + height, x : x + width]

    def close(self):
        type(self).closed += 1


def test_a_registered_reader_is_used_for_its_suffix(tmp_path):
    samples = (np.arange(40 * 50, dtype=np.uint16) * 29).reshape(40, 50)
    path = tmp_path / "scan.npyslide"
    with open(path, "wb") as file:
        np.save(file, samples)
    register_slide_reader("npy", suffixes=(".npyslide",))(_NpyReader)
    try:
        assert ".npyslide" in slide_suffixes() and ".npyslide" not in SLIDE_SUFFIXES
        with Slide(str(path)) as slide:
            assert slide.info.format == "npy" and slide.level_shape(0) == (40, 50)
            assert np.array_equal(slide.read_region(2, 3, 10, 20, rgb=False), samples[2:12, 3:23])
            assert np.array_equal(slide.read_region(2, 3, 10, 20), to_rgb8(samples[2:12, 3:23]))
            with pytest.raises(SlideError, match="scan.npyslide: region y=35 x=0 10x10 is outside level 0"):
                slide.read_region(35, 0, 10, 10)
        assert _NpyReader.closed == 1
        with pytest.raises(SlideError, match="gone.npyslide"):
            Slide(str(tmp_path / "gone.npyslide"))
    finally:
        unregister_slide_reader("npy")
    with pytest.raises(SlideError, match=r"scan.npyslide: not a slide format minseg reads \(\.tif, .*\.jpeg\)$"):
        Slide(str(path))


def test_the_longest_matching_suffix_wins(tmp_path):
    register_slide_reader("ome", suffixes=(".ome.tif",))(_NpyReader)
    try:
        assert slide_reader_for("a/b.OME.tif").name == "ome"
        assert slide_reader_for("a/b.tif").name == "tiff"
    finally:
        unregister_slide_reader("ome")
    assert slide_reader_for("a/b.ome.tif").name == "tiff"


@pytest.mark.parametrize("name", ["missing.tif", "missing.png"])
def test_a_missing_slide_is_named_once(tmp_path, name):
    uri = str(tmp_path / name)
    with pytest.raises(SlideError) as caught:
        Slide(uri)
    assert str(caught.value).count(uri) == 1 and "no such file" in str(caught.value)


# -- size limits, checked from the header before anything is allocated ------------------------------


def test_a_tiny_file_claiming_a_huge_slide_is_refused(tmp_path):
    """The issue's case: a sparse tiled TIFF of a few hundred KB whose header claims 200000² pixels."""
    from minseg.io.slides import SlideLimits

    path = tmp_path / "claims.tif"
    count = (200000 // 1024 + 1) ** 2

    def tiles():
        yield np.zeros((1024, 1024), np.uint8)
        yield from (None for _ in range(count - 1))  # never written: a sparse file

    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(tiles(), shape=(200000, 200000), dtype=np.uint8, tile=(1024, 1024), compression="zlib")
    assert path.stat().st_size < 1 << 20
    with pytest.raises(SlideError, match=r"claims.tif: 200000x200000 = 40,000,000,000 pixels exceeds "
                                         r"segment.limits.max_pixels \(25,000,000,000\)"):
        Slide(str(path))
    with Slide(str(path), limits=SlideLimits(max_pixels=10**11)) as slide:  # a configured limit lets it through
        assert slide.info.levels[0] == (200000, 200000)


def test_one_huge_strip_and_a_raster_slide_over_the_limit_are_refused(tmp_path):
    """A second kind of header-only bomb: one strip that decodes to far more than a tile's worth; and PNG
    slides (decoded whole) are held to the same configured pixel limit, named in the message."""
    from minseg.io.slides import SlideLimits

    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, np.zeros((2000, 2000), np.uint8), rowsperstrip=2000, compression="zlib")
    small = SlideLimits(max_pixels=10**9, max_segment_bytes=1 << 20)
    with pytest.raises(SlideError, match=r"strip.tif: a stored tile/strip of level 0 decodes to 4 MiB "
                                         r"\(2000x2000x1\), over segment.limits.max_segment_mib \(1\)"):
        Slide(str(path), limits=small)
    Slide(str(path)).close()  # the default (256 MiB) allows it
    png = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png)
    with pytest.raises(SlideError, match=r"photo.png: image of 64x64 = 4,096 pixels exceeds the limit of 1,000 "
                                         r"\(segment.limits.max_pixels\)"):
        Slide(str(png), limits=SlideLimits(max_pixels=1000))


def test_a_picture_slide_is_opened_from_its_header_and_decoded_on_first_read(tmp_path):
    """Planning opens every slide of a batch at once on a thread pool: opening a PNG / JPEG must not decode
    it (a 3000² PNG is 27 MB decoded): a file whose body is cut opens, with its shape, and fails on the first
    read, naming the slide. The shape is the displayed one (EXIF Orientation applied, JPEG and PNG), and the
    pixels equal a whole decode."""
    from minseg.io.images import decode_image

    rng = np.random.default_rng(3)
    png = tmp_path / "large.png"
    Image.fromarray(np.repeat(rng.integers(0, 255, (3000, 1, 3), np.uint8), 3000, axis=1)).save(png)
    slide = Slide(str(png))
    assert slide.info.levels == ((3000, 3000),)
    assert np.array_equal(slide.read_region(100, 2000, 50, 1000),
                          decode_image(png.read_bytes(), "large.png", 10**9)[100:150, 2000:3000])
    slide.close()

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60 wide x 20 high, shown rotated: 20 wide x 60 high
    for name in ("turned.jpg", "turned.png"):
        Image.fromarray(rng.integers(0, 255, (20, 60, 3), np.uint8)).save(tmp_path / name, exif=exif)
        with Slide(str(tmp_path / name)) as slide:
            assert slide.info.levels == ((60, 20),)
            assert slide.read_region(0, 0, 60, 20).shape == (60, 20, 3)

    cut = tmp_path / "cut.png"
    data = png.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with Slide(str(cut)) as slide:
        assert slide.info.levels == ((3000, 3000),)
        with pytest.raises(SlideError, match=r"cut.png: unreadable image"):
            slide.read_region(0, 0, 10, 10)
    # PIL's own words named an io object ("cannot identify image file <_io.BufferedReader ...>")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SlideError, match=r"empty.png: an empty file \(0 bytes\)"):
        Slide(str(tmp_path / "empty.png"))
    (tmp_path / "text.png").write_bytes(b"not a picture at all")
    with pytest.raises(SlideError, match=r"text.png: not a picture PIL can read \(20 bytes of an unknown"):
        Slide(str(tmp_path / "text.png"))


def test_a_scene_of_five_images_reads_through_a_four_slide_cache(tmp_path):
    """Several XPL angles: five aligned images read together through the per-process cache (capacity 4) must not
    close one another; images of another size are refused naming both; grey and bands modes give 1 and k
    channels."""
    from minseg.io.slides import ChannelSource, SceneSlide, SlideCache, SlideError
    from minseg.io.storage import Storage

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 80, 3), dtype=np.uint8) for _ in range(5)]
    for index, image in enumerate(images):
        tifffile.imwrite(tmp_path / f"xpl{index}.tif", image, tile=(32, 32), photometric="rgb")
    tifffile.imwrite(tmp_path / "four.tif", np.dstack([images[0], images[1][..., :1]]), tile=(32, 32),
                     photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "small.tif", images[0][:64], photometric="rgb")
    cache = SlideCache()
    sources = tuple(ChannelSource(str(tmp_path / f"xpl{i}.tif")) for i in range(5))
    for _ in range(2):  # a second read through the same cache: every image still open
        scene = SceneSlide(sources, Storage(), cache=cache)
        region = scene.read_region(10, 20, 40, 30)
        assert region.shape == (40, 30, 15)
        for index, image in enumerate(images):
            np.testing.assert_array_equal(region[..., 3 * index : 3 * index + 3], image[10:50, 20:50])
    grey = SceneSlide((ChannelSource(str(tmp_path / "xpl0.tif"), "grey"),
                       ChannelSource(str(tmp_path / "four.tif"), "bands", 4)), Storage())
    both = grey.read_region(0, 0, 8, 8)
    assert both.shape == (8, 8, 5)
    np.testing.assert_array_equal(both[..., 1:], np.dstack([images[0], images[1][..., :1]])[:8, :8])
    with pytest.raises(SlideError, match="has 4 sample\\(s\\) per pixel; the ensemble reads 6 channels"):
        SceneSlide((ChannelSource(str(tmp_path / "four.tif"), "bands", 6),), Storage()).read_region(0, 0, 8, 8)
    with pytest.raises(SlideError, match="small.tif is 80x64 but .*xpl0.tif is 80x96: the images of a scene"):
        SceneSlide((sources[0], ChannelSource(str(tmp_path / "small.tif"))), Storage())


def test_display_rgb_shows_the_first_image_of_a_scene():
    from minseg.io.images import display_rgb

    stacked = np.dstack([np.full((2, 2, 1), 7, np.uint8), np.full((2, 2, 3), 200, np.uint8)])  # bse + ppl
    assert (display_rgb(stacked, first=1) == 7).all()  # grey first: its one channel, not bse + ppl:R + ppl:G
    rgb_first = np.dstack([np.full((2, 2, 3), 9, np.uint8), np.full((2, 2, 3), 200, np.uint8)])
    assert (display_rgb(rgb_first) == 9).all() and display_rgb(rgb_first).shape == (2, 2, 3)
