import tracemalloc

import numpy as np
import pytest
import tifffile

from minseg.synth.config import SlideSynth
from minseg.enums import TiffCompression
from minseg.io.tiff import PyramidSpec, halve, read_metadata, write_pyramids
from minseg.synth.sections import SectionRenderer
from minseg.synth.slide import write_synthetic_slide


def test_slide_is_tiled_pyramidal_bigtiff_matching_the_renderer(tmp_path):
    settings = SlideSynth(height=1000, width=1300, tile=256, compression="zstd")
    write_synthetic_slide(str(tmp_path / "s.tif"), str(tmp_path / "m.tif"), settings, seed=11)
    expected_img, expected_mask = SectionRenderer(seed=11).render(0, 0, 1000, 1300)
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        assert tif.is_bigtiff
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        levels = tif.series[0].levels
        assert [lvl.shape for lvl in levels] == [(1000, 1300, 3), (500, 650, 3), (250, 325, 3), (125, 163, 3)]
        assert np.array_equal(levels[0].asarray(), expected_img)
        # written tile by tile (odd last blocks at levels 2 and 3) = halving whole images
        expected = expected_img
        for level in levels[1:]:
            expected = halve(expected, "mean")
            assert np.array_equal(level.asarray(), expected)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert np.array_equal(tif.series[0].levels[0].asarray(), expected_mask)
        # labels are subsampled, never averaged into codes that do not exist
        assert np.array_equal(tif.series[0].levels[1].asarray(), expected_mask[::2, ::2])
    meta = read_metadata(str(tmp_path / "m.tif"))
    assert [c["name"] for c in meta["classes"]][:3] == ["background", "pyrite", "galena"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "s.tif"]  # no scratch left


def test_jpeg_slide_keeps_lossless_mask(tmp_path):
    settings = SlideSynth(height=300, width=400, tile=128, compression="jpeg")
    write_synthetic_slide(str(tmp_path / "s.tif"), str(tmp_path / "m.tif"), settings, seed=1)
    _, expected_mask = SectionRenderer(seed=1).render(0, 0, 300, 400)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.pages[0].compression != 7  # not JPEG
        assert np.array_equal(tif.asarray(), expected_mask)
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        assert tif.pages[0].compression == 7


def test_streaming_memory_is_bounded_by_a_band_not_the_slide(tmp_path):
    """16384 x 4096 RGB is 192 MiB; the writer holds a band (3 MiB) per level, not the slide."""
    height, width = 16384, 4096
    tile = 256
    band = np.full((tile, tile, 3), 100, np.uint8)
    spec = PyramidSpec(height, width, channels=3, tile=tile, compression=TiffCompression.DEFLATE)
    tracemalloc.start()
    try:
        write_pyramids([(str(tmp_path / "big.tif"), spec)], lambda r, c: (band,))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = height * width * 3
    assert peak < full / 8, f"peak traced memory {peak / 2**20:.1f} MiB for a {full / 2**20:.0f} MiB slide"
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.series[0].levels[0].shape == (16384, 4096, 3)


def test_failing_tile_source_raises_and_publishes_nothing(tmp_path):
    from minseg.io.storage import Storage

    def broken(row, col):
        if row == 1:
            raise RuntimeError("renderer crashed")
        return (np.zeros((64, 64), np.uint8),)

    spec = PyramidSpec(200, 200, channels=1, tile=64)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        with Storage().staged_output(str(tmp_path / "out.tif")) as path:
            write_pyramids([(path, spec)], broken)
    assert list(tmp_path.iterdir()) == []


def test_pyramid_spec_rejects_bad_options():
    with pytest.raises(ValueError, match="lossy"):
        PyramidSpec(10, 10, compression=TiffCompression.JPEG, reduce="nearest")
    with pytest.raises(ValueError, match="multiple of 16"):
        PyramidSpec(10, 10, tile=100)


def test_slide_to_s3(s3):
    storage = s3.storage()
    settings = SlideSynth(height=200, width=300, tile=128, compression="zstd")
    write_synthetic_slide(s3.uri("slides/s.tif"), s3.uri("slides/m.tif"), settings, seed=2, storage=storage)
    with storage.open_read(s3.uri("slides/s.tif")) as stream:
        with tifffile.TiffFile(stream) as tif:
            page = tif.pages[0]
            assert page.shape == (200, 300, 3)
            # tifffile reads a single tile through ranged GETs
            assert page.is_tiled


def test_levels_stop_at_one_pixel_on_the_short_side(tmp_path):
    """More levels than halving allows was written as 1 x 1 pages that readers take for a second image; a thin
    slide's default (from its long side) had the same fault."""
    from minseg.config import ConfigError, MinsegConfig, validate_config
    from minseg.io.tiff import max_pyramid_levels

    assert [max_pyramid_levels(*shape) for shape in ((100, 100), (100, 10), (1, 50), (64, 64), (65, 4000))] == \
        [8, 5, 1, 7, 8]
    with pytest.raises(ConfigError, match=r"synth\.slide\.levels: .*a 100 x 100 slide has at most 8 pyramid levels"):
        validate_config({"synth": {"slide": {"height": 100, "width": 100, "tile": 16, "levels": 20}}}, MinsegConfig,
                        source="test")
    with pytest.raises(ValueError, match="a 100 x 100 pyramid has 1 to 8 levels, not 9"):
        PyramidSpec(100, 100, tile=16, levels=9)
    for name, settings in (("most", SlideSynth(height=100, width=100, tile=16, levels=8)),
                           ("thin", SlideSynth(height=600, width=3, tile=16))):
        write_synthetic_slide(str(tmp_path / f"{name}.tif"), str(tmp_path / f"{name}_mask.tif"), settings)
        for path in (tmp_path / f"{name}.tif", tmp_path / f"{name}_mask.tif"):
            with tifffile.TiffFile(path) as tif:
                assert len(tif.series) == 1, path  # one image: every page a level of it
                shapes = [level.shape[:2] for level in tif.series[0].levels]
        assert shapes == ([(100, 100), (50, 50), (25, 25), (13, 13), (7, 7), (4, 4), (2, 2), (1, 1)] if name == "most"
                          else [(600, 3), (300, 2), (150, 1)])
