"""Grain counting tile by tile equals connected components of the whole label map."""

import numpy as np
import pytest
from scipy import ndimage

from minseg.inference.grains import GrainCounter, grain_statistics


def blob_labels(shape, classes, seed):
    """Smooth random fields, argmaxed: grains of many sizes, some spanning several tiles."""
    rng = np.random.default_rng(seed)
    fields = ndimage.gaussian_filter(rng.random((classes, *shape)), sigma=(0, 3, 3))
    return fields.argmax(0).astype(np.uint8)


def whole_image_areas(labels, classes, connectivity):
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    areas = {}
    for klass in range(classes):
        components, count = ndimage.label(labels == klass, structure=structure)
        areas[klass] = np.sort(np.bincount(components.ravel(), minlength=count + 1)[1:])
    return areas


def count_by_tiles(labels, classes, tile, connectivity):
    height, width = labels.shape
    counter = GrainCounter(classes, width, connectivity)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            counter.add_tile(top, left, labels[top : top + tile, left : left + tile])
    return counter


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("shape, tile", [((97, 131), 16), ((64, 64), 64), ((40, 200), 32), ((1, 50), 16),
                                         ((50, 1), 16)])
def test_tiles_give_the_whole_image_components(shape, tile, connectivity):
    classes = 4
    labels = blob_labels(shape, classes, seed=sum(shape))
    counter = count_by_tiles(labels, classes, tile, connectivity)
    expected = whole_image_areas(labels, classes, connectivity)
    got = counter.grain_areas()
    for klass in range(classes):
        assert np.array_equal(got[klass], expected[klass]), klass
    assert np.array_equal(counter.class_pixels, np.bincount(labels.ravel(), minlength=classes))


def test_diagonal_contacts_across_tile_corners():
    """A staircase crosses tile corners only diagonally: one grain with 8-connectivity, many with 4."""
    labels = np.zeros((32, 32), np.uint8)
    labels[np.arange(32), np.arange(32)] = 1  # the diagonal passes every 8x8 tile corner
    labels[np.arange(32), 31 - np.arange(32)] = 1  # and the anti-diagonal
    for connectivity in (4, 8):
        got = count_by_tiles(labels, 2, 8, connectivity).grain_areas()[1]
        expected = whole_image_areas(labels, 2, connectivity)[1]
        assert np.array_equal(got, expected)
    assert len(count_by_tiles(labels, 2, 8, 8).grain_areas()[1]) == 1


def test_tiles_out_of_order_and_unknown_ids_are_refused():
    counter = GrainCounter(3, 32)
    counter.add_tile(0, 0, np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="out of order"):
        counter.add_tile(16, 0, np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="label 7 is not a class id"):
        GrainCounter(3, 16).add_tile(0, 0, np.full((16, 16), 7, np.uint8))


def test_statistics_ignore_noise_and_convert_units():
    areas = np.array([1, 2, 50, 100, 400])
    stats = grain_statistics(areas, min_grain_px=10, pixel_size_um=2.0)
    assert stats["count"] == 3 and stats["noise_components"] == 2
    assert stats["mean_area_px"] == pytest.approx(550 / 3)
    assert stats["max_area_px"] == 400
    assert stats["mean_area_um2"] == pytest.approx(550 / 3 * 4)
    assert stats["histogram_log2_px"] == [0, 0, 0, 0, 0, 1, 1, 0, 1]  # 50 -> 2^5, 100 -> 2^6, 400 -> 2^8
    assert grain_statistics(np.array([3]), 10, None) == {"count": 0, "noise_components": 1}
