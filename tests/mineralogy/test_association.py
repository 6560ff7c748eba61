"""Boundary counts (association) from blocks equal a pixel-by-pixel count of the whole label map."""

import numpy as np
import pytest

from minseg.mineralogy.components import label_grains
from minseg.mineralogy.merge import merge_boundaries
from minseg.mineralogy import association_table, boundary_counts
from tests.mineralogy.test_components import blob_labels


def brute_force(labels, classes):
    """Every pair of 4-neighbours, one at a time."""
    counts = np.zeros((classes, classes), np.int64)
    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < height and x + dx < width:
                    a, b = labels[y, x], labels[y + dy, x + dx]
                    if a != b:
                        counts[a, b] += 1
                        counts[b, a] += 1
    return counts


@pytest.mark.parametrize("shape, block", [((37, 53), 16), ((32, 32), 32), ((20, 70), 8), ((1, 40), 16),
                                          ((40, 1), 16), ((33, 33), 1)])
def test_block_boundaries_plus_seams_equal_the_whole_image_count(shape, block):
    classes = 5
    labels = blob_labels(shape, classes, seed=shape[0] * 7 + block)
    expected = brute_force(labels, classes)
    assert np.array_equal(boundary_counts(labels, classes), expected)
    height, width = shape
    blocks = [label_grains(labels[top : top + block, left : left + block], top, left, classes)
              for top in range(0, height, block) for left in range(0, width, block)]
    for seed in (0, 1):  # any order the blocks finish in
        order = np.random.default_rng(seed).permutation(len(blocks))
        assert np.array_equal(merge_boundaries([blocks[i] for i in order], height, width), expected)


def test_a_ring_around_a_core_and_a_free_grain_by_hand():
    """background 0, a 2x2 pyrite core (1) inside a chalcopyrite ring (2) one pixel wide, and a lone
    galena pixel (3) in resin. Core: 8 edges, all with the ring. Ring (4x4 minus core): outer 16 edges
    with background + 8 with the core. Galena: 4 edges with background."""
    labels = np.zeros((8, 10), np.uint8)
    labels[1:5, 1:5] = 2
    labels[2:4, 2:4] = 1
    labels[6, 8] = 3
    counts = boundary_counts(labels, 4)
    assert counts[1, 2] == counts[2, 1] == 8 and counts[2, 0] == 16 and counts[3, 0] == 4
    assert counts[1, 0] == 0 and np.all(np.diag(counts) == 0)
    table = association_table(counts, ["resin", "pyrite", "chalcopyrite", "galena"], {"resin"}, 2.5)
    assert "resin" not in table
    assert table["pyrite"] == {"boundary_px": 8, "boundary_um": 20.0, "free_surface_pct": 0.0,
                               "shared_pct": {"resin": 0.0, "chalcopyrite": 100.0, "galena": 0.0}}
    assert table["chalcopyrite"]["free_surface_pct"] == pytest.approx(100 * 16 / 24, abs=1e-4)
    assert table["galena"]["free_surface_pct"] == 100.0
    assert association_table(counts, ["resin", "pyrite", "chalcopyrite", "galena"], {"resin"},
                             None)["galena"]["boundary_um"] is None


def test_labels_beyond_the_classes_are_refused():
    with pytest.raises(ValueError, match="label 4 is not a class id"):
        boundary_counts(np.full((3, 3), 4, np.uint8), 4)


def test_a_class_without_boundary_has_no_shares_not_zero():
    """An absent class, or one filling the whole image, has no boundary: its free surface and shares were 0.0
    (pulling means over slides towards 0 and reading as "locked, no contact"); they are None, as an absent
    mineral's liberation is, while its boundary length stays a number (0)."""
    names = ["resin", "pyrite", "chalcopyrite", "galena"]
    labels = np.zeros((6, 6), np.uint8)
    labels[1:4, 1:4] = 1  # galena and chalcopyrite absent
    table = association_table(boundary_counts(labels, 4), names, {"resin"}, 2.0)
    assert table["galena"] == {"boundary_px": 0, "boundary_um": 0.0, "free_surface_pct": None,
                               "shared_pct": {"resin": None, "pyrite": None, "chalcopyrite": None}}
    assert table["pyrite"]["free_surface_pct"] == 100.0 and table["pyrite"]["shared_pct"]["galena"] == 0.0
    whole = association_table(boundary_counts(np.ones((5, 5), np.uint8), 4), names, {"resin"}, None)
    assert whole["pyrite"]["boundary_px"] == 0 and whole["pyrite"]["boundary_um"] is None
    assert whole["pyrite"]["free_surface_pct"] is None and set(whole["pyrite"]["shared_pct"].values()) == {None}
