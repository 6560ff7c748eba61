"""Particles and liberation from blocks equal the whole label map's; liberation classes by hand."""

import numpy as np
import pytest
from scipy import ndimage

from minseg.mineralogy.components import label_particles
from minseg.mineralogy.merge import merge_particles
from minseg.mineralogy.liberation import accumulate, liberation_classes, liberation_table
from tests.mineralogy.test_components import blob_labels


def whole_image(labels, sample, connectivity):
    """Particles of the whole map with ndimage.label, their compositions counted pixel class by class."""
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    ids, count = ndimage.label(sample[labels], structure=structure)
    composition = np.zeros((count, len(sample)), np.int64)
    for particle in range(1, count + 1):
        composition[particle - 1] = np.bincount(labels[ids == particle], minlength=len(sample))
    return composition


def noise_labels(shape, classes, seed, resin=0.6):
    """Speckle: mostly resin, small particles touching only diagonally, many cut by block edges."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, classes, shape).astype(np.uint8)
    labels[rng.random(shape) < resin] = 0
    return labels


def staircase(size):
    """One pixel per row, each diagonal to the last: one particle with 8-connectivity, `size` with 4."""
    labels = np.zeros((size, size), np.uint8)
    labels[np.arange(size), np.arange(size)] = 1 + np.arange(size) % 2
    return labels


MAPS = {
    "blobs": lambda shape, seed: blob_labels(shape, 5, seed),
    "noise": lambda shape, seed: noise_labels(shape, 5, seed),
    "staircase": lambda shape, seed: staircase(shape[0]),
}


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("kind", sorted(MAPS))
@pytest.mark.parametrize("shape, block", [((61, 83), 16), ((48, 48), 48), ((30, 90), 8), ((1, 40), 16),
                                          ((23, 23), 1), ((31, 29), 3)])
def test_block_particles_equal_the_whole_image(kind, shape, block, connectivity):
    if kind == "staircase":
        shape = (shape[0], shape[0])
    sample = np.array([False, True, True, True, True])  # class 0 is resin
    labels = MAPS[kind](shape, shape[1] + block)
    composition = whole_image(labels, sample, connectivity)
    min_area = 3
    areas = composition.sum(axis=1)
    expected_liberation = accumulate(composition[areas >= min_area], sample)
    height, width = shape
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    ids, _ = ndimage.label(sample[labels], structure=structure)
    border = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
    blocks = [label_particles(labels[top : top + block, left : left + block], top, left, sample, connectivity,
                              min_area=min_area)
              for top in range(0, height, block) for left in range(0, width, block)]
    order = np.random.default_rng(block).permutation(len(blocks))
    particles = merge_particles([blocks[i] for i in order], height, width, sample, connectivity, min_area=min_area)
    assert np.array_equal(particles.liberation.sum(axis=0), expected_liberation)
    assert np.array_equal(np.repeat(particles.area, particles.count), np.sort(areas))
    border = border[border > 0]
    assert particles.touching_edge == int((areas[border - 1] >= min_area).sum())  # noise is not counted


def test_a_stray_pixel_in_resin_is_noise_not_a_liberated_particle():
    labels = np.zeros((9, 9), np.uint8)
    labels[4, 4] = 1
    sample = np.array([False, True])
    particles = merge_particles([label_particles(labels, 0, 0, sample, min_area=4)], 9, 9, sample, min_area=4)
    assert particles.liberation.sum(axis=0).sum() == 0 and list(zip(particles.area, particles.count)) == [(1, 1)]
    assert particles.touching_edge == 0


def test_liberated_binary_and_locked_particles_by_hand():
    """Three particles in resin: pyrite alone (liberated), pyrite 30 % / chalcopyrite 70 %, and a
    chalcopyrite particle with a 5 % pyrite speck."""
    names = ["resin", "pyrite", "chalcopyrite"]
    sample = np.array([False, True, True])
    labels = np.zeros((12, 40), np.uint8)
    labels[1:3, 1:6] = 1                        # 10 px pyrite alone
    labels[5:10, 1:7] = 1                       # 30 px pyrite ...
    labels[5:10, 7:21] = 2                      # ... next to 70 px chalcopyrite: one particle of 100
    labels[1:11, 25:35] = 2                     # 100 px chalcopyrite ...
    labels[1:6, 25] = 1                         # ... with a 5 px pyrite speck at its edge
    blocks = [label_particles(labels[:, left : left + 10], 0, left, sample, 4) for left in range(0, 40, 10)]
    particles = merge_particles(blocks, 12, 40, sample, 4)
    assert list(zip(particles.area, particles.count)) == [(10, 1), (100, 2)]
    classes = liberation_classes()
    table = liberation_table(particles.liberation.sum(axis=0), names, sample)
    pyrite, chalcopyrite = table["pyrite"], table["chalcopyrite"]
    assert pyrite["pixels"] == 45 and chalcopyrite["pixels"] == 70 + 95
    assert pyrite["classes_pct"]["100"] == round(100 * 10 / 45, 4)
    assert pyrite["classes_pct"]["30-40"] == round(100 * 30 / 45, 4)   # exactly 30 %: the 30-40 class
    assert pyrite["classes_pct"]["0-10"] == round(100 * 5 / 45, 4)
    assert chalcopyrite["classes_pct"]["70-80"] == round(100 * 70 / 165, 4)
    assert chalcopyrite["classes_pct"]["90-<100"] == round(100 * 95 / 165, 4)
    assert pyrite["liberated_pct"] == pyrite["classes_pct"]["100"] and chalcopyrite["liberated_pct"] == 0.0
    assert pyrite["yield_pct"][">=0"] == 100.0 and pyrite["yield_pct"][">=30"] == round(100 * 40 / 45, 4)
    assert classes[0] == "0-10" and classes[-2:] == ["90-<100", "100"] and "resin" not in table
