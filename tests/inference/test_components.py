"""Grains from blocks (any size, any order) equal connected components of the whole label map."""

import io

import numpy as np
import pytest
from scipy import ndimage

from minseg.inference.components import label_block, merge_components
from minseg.inference.grains import grain_statistics


def blob_labels(shape, classes, seed):
    """Smooth random fields, argmaxed: grains of many sizes, some spanning several tiles."""
    rng = np.random.default_rng(seed)
    fields = ndimage.gaussian_filter(rng.random((classes, *shape)), sigma=(0, 3, 3))
    return fields.argmax(0).astype(np.uint8)


def listed(grains, classes):
    """The histogram back as every grain's area, per class, ascending."""
    return {k: np.repeat(area, count) for k, (area, count) in grains.areas(classes).items()}


def whole_image_areas(labels, classes, connectivity):
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    areas = {}
    for klass in range(classes):
        components, count = ndimage.label(labels == klass, structure=structure)
        areas[klass] = np.sort(np.bincount(components.ravel(), minlength=count + 1)[1:])
    return areas


def count_by_blocks(labels, classes, block, connectivity, seed=0):
    """Label each block alone, then merge them in a shuffled order."""
    height, width = labels.shape
    blocks = [label_block(labels[top : top + block, left : left + block], top, left, classes, connectivity)
              for top in range(0, height, block) for left in range(0, width, block)]
    order = np.random.default_rng(seed).permutation(len(blocks))
    grains = merge_components([blocks[i] for i in order], height, width, connectivity)
    return grains, sum(b.class_pixels for b in blocks)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("shape, tile", [((97, 131), 16), ((64, 64), 64), ((40, 200), 32), ((1, 50), 16),
                                         ((50, 1), 16)])
def test_blocks_give_the_whole_image_components(shape, tile, connectivity):
    classes = 4
    labels = blob_labels(shape, classes, seed=sum(shape))
    grains, class_pixels = count_by_blocks(labels, classes, tile, connectivity, seed=tile)
    expected = whole_image_areas(labels, classes, connectivity)
    got = listed(grains, classes)
    for klass in range(classes):
        assert np.array_equal(got[klass], expected[klass]), klass
    assert np.array_equal(class_pixels, np.bincount(labels.ravel(), minlength=classes))


def test_diagonal_contacts_across_tile_corners():
    """A staircase crosses tile corners only diagonally: one grain with 8-connectivity, many with 4."""
    labels = np.zeros((32, 32), np.uint8)
    labels[np.arange(32), np.arange(32)] = 1  # the diagonal passes every 8x8 tile corner
    labels[np.arange(32), 31 - np.arange(32)] = 1  # and the anti-diagonal
    for connectivity in (4, 8):
        got = listed(count_by_blocks(labels, 2, 8, connectivity)[0], 2)[1]
        expected = whole_image_areas(labels, 2, connectivity)[1]
        assert np.array_equal(got, expected)
    assert len(listed(count_by_blocks(labels, 2, 8, 8)[0], 2)[1]) == 1


def test_missing_blocks_and_unknown_ids_are_refused():
    block = label_block(np.zeros((16, 16), np.uint8), 0, 0, 3)
    with pytest.raises(ValueError, match="cover 256 pixels of a 32x16 slide"):
        merge_components([block], 32, 16)
    with pytest.raises(ValueError, match="label 7 is not a class id"):
        label_block(np.full((16, 16), 7, np.uint8), 0, 0, 3)


def test_a_block_record_round_trips():
    """Grain components and particles share one record: every field survives, none collides."""
    from dataclasses import fields

    from minseg.inference.components import label_particles

    labels = blob_labels((24, 40), 3, seed=5)
    block = label_block(labels, 48, 96, 3)
    particles = label_particles(labels, 48, 96, np.array([False, True, True]))
    stored = dict(np.load(io.BytesIO(_npz({**block.to_arrays(), **particles.to_arrays()}))))
    for original in (block, particles):
        again = type(original).from_arrays(stored)
        assert again.top == 48 and again.left == 96 and (again.height, again.width) == (24, 40)
        for field in fields(original):
            assert np.array_equal(getattr(again, field.name), getattr(original, field.name)), field.name


def _npz(arrays):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_statistics_ignore_noise_and_convert_units():
    areas, counts = np.unique(np.array([1, 2, 50, 100, 400]), return_counts=True)
    stats = grain_statistics(areas, counts, min_grain_px=10, pixel_size_um=2.0)
    assert stats["count"] == 3 and stats["noise_components"] == 2
    assert stats["mean_area_px"] == pytest.approx(550 / 3)
    assert stats["max_area_px"] == 400
    assert stats["mean_area_um2"] == pytest.approx(550 / 3 * 4)
    assert stats["histogram_log2_px"] == [0, 0, 0, 0, 0, 1, 1, 0, 1]  # 50 -> 2^5, 100 -> 2^6, 400 -> 2^8
    assert grain_statistics(np.array([3]), np.array([1]), 10, None) == {"count": 0, "noise_components": 1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_from_the_histogram_equal_those_of_every_grain_listed(seed):
    rng = np.random.default_rng(seed)
    grains = np.concatenate([rng.integers(1, 30, 500), rng.integers(100, 5000, 40 + seed)])  # many repeats
    areas, counts = np.unique(grains, return_counts=True)
    stats = grain_statistics(areas, counts, min_grain_px=4, pixel_size_um=0.5)
    kept = np.sort(grains[grains >= 4])
    diameters = 2.0 * np.sqrt(kept * 0.25 / np.pi)
    assert stats["count"] == kept.size and stats["noise_components"] == int((grains < 4).sum())
    assert stats["median_area_px"] == pytest.approx(np.median(kept))
    assert stats["p10_area_px"] == pytest.approx(np.percentile(kept, 10))
    assert stats["p90_area_px"] == pytest.approx(np.percentile(kept, 90))
    assert stats["mean_area_px"] == pytest.approx(kept.mean())
    assert stats["mean_ecd_um"] == pytest.approx(diameters.mean())
    assert stats["median_ecd_um"] == pytest.approx(np.median(diameters))
    assert stats["histogram_log2_px"] == np.bincount(np.log2(kept).astype(int)).tolist()


def test_a_block_keeps_only_its_edge_components_one_by_one():
    """Inner grains are complete: a block record holds them as counts per (class, area), so its size
    follows the block's perimeter and the distinct areas, not the number of grains."""
    labels = np.zeros((64, 64), np.uint8)
    labels[4:60:4, 4:60:4] = 1  # 196 one-pixel grains inside the block
    labels[0, :] = 2  # one grain along the top edge
    block = label_block(labels, 0, 0, 3, connectivity=8)
    assert sorted(block.klass.tolist()) == [0, 2]  # background touches the edges, as does the top row
    assert block.inner_class.tolist() == [1] and block.inner_area.tolist() == [1]
    assert block.inner_count.tolist() == [196]
