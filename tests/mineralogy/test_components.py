"""Grains from blocks (any size, any order) equal connected components of the whole label map."""

import io

import numpy as np
import pytest
from scipy import ndimage

from minseg.mineralogy.components import label_grains
from minseg.mineralogy.merge import merge_grains
from minseg.mineralogy.grains import grain_statistics


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
    blocks = [label_grains(labels[top : top + block, left : left + block], top, left, classes, connectivity)
              for top in range(0, height, block) for left in range(0, width, block)]
    order = np.random.default_rng(seed).permutation(len(blocks))
    grains = merge_grains([blocks[i] for i in order], height, width, connectivity)
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
    block = label_grains(np.zeros((16, 16), np.uint8), 0, 0, 3)
    with pytest.raises(ValueError, match="cover 256 pixels of a 32x16 slide"):
        merge_grains([block], 32, 16)
    with pytest.raises(ValueError, match="label 7 is not a class id"):
        label_grains(np.full((16, 16), 7, np.uint8), 0, 0, 3)


def test_a_block_record_round_trips():
    """Grain components and particles share one record: every field survives, none collides."""
    from dataclasses import fields

    from minseg.mineralogy.components import label_particles

    labels = blob_labels((24, 40), 3, seed=5)
    block = label_grains(labels, 48, 96, 3)
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

    def sieve(values, percent):  # the smallest value whose rank reaches percent of the count
        return values[-(-values.size * percent // 100) - 1]

    assert stats["count"] == kept.size and stats["noise_components"] == int((grains < 4).sum())
    assert stats["median_area_px"] == sieve(kept, 50)
    assert stats["p10_area_px"] == sieve(kept, 10)
    assert stats["p90_area_px"] == sieve(kept, 90)
    assert stats["mean_area_px"] == pytest.approx(kept.mean())
    assert stats["mean_ecd_um"] == pytest.approx(diameters.mean())
    assert stats["median_ecd_um"] == pytest.approx(sieve(diameters, 50))
    assert stats["histogram_log2_px"] == np.bincount(np.log2(kept).astype(int)).tolist()


def test_grain_quantiles_by_hand_follow_the_sieve_convention():
    """Four grains of 4, 6, 9 and 20 px: 25, 50, 75 and 100 % of the count. The smallest area reaching 10 % is
    4, 50 % is 6 (reached exactly), 90 % is 20; numpy's interpolating median (7.5), P10 (4.6) and P90 (16.7)
    were a second rule beside D50's for the same grains."""
    stats = grain_statistics(np.array([4, 6, 9, 20]), np.array([1, 1, 1, 1]), min_grain_px=4, pixel_size_um=2.0)
    assert (stats["p10_area_px"], stats["median_area_px"], stats["p90_area_px"]) == (4.0, 6.0, 20.0)
    assert stats["median_ecd_um"] == pytest.approx(2 * np.sqrt(6 / np.pi) * 2.0)  # 5.528 µm
    # repeats count one by one: 3 grains of 4 px and 1 of 10 px -> 75 % at 4 px
    stats = grain_statistics(np.array([4, 10]), np.array([3, 1]), min_grain_px=1, pixel_size_um=None)
    assert (stats["p10_area_px"], stats["median_area_px"], stats["p90_area_px"]) == (4.0, 4.0, 10.0)


def test_median_ecd_equals_the_number_weighted_d50_of_the_same_grains():
    """Grains of 4 and 6 px at 2 µm per pixel: median_ecd_um was 5.021 (interpolated) while size.number.d50
    was 4.514; one rule gives one median."""
    from minseg.mineralogy.sizes import size_distribution

    cases = [(np.array([4, 6]), np.array([1, 1]))]
    rng = np.random.default_rng(3)
    for _ in range(20):
        grains = rng.integers(4, 400, rng.integers(1, 60))
        cases.append(np.unique(grains, return_counts=True))
    for areas, counts in cases:
        stats = grain_statistics(areas, counts, min_grain_px=4, pixel_size_um=2.0)
        d50 = size_distribution(areas, counts, 2.0)["number"]["d50"]
        assert stats["median_ecd_um"] == pytest.approx(d50, abs=5e-4)
    assert grain_statistics(*cases[0], 4, 2.0)["median_ecd_um"] == pytest.approx(4.514, abs=5e-4)


def test_a_block_keeps_only_its_edge_components_one_by_one():
    """Inner grains are complete: a block record holds them as counts per (class, area), so its size
    follows the block's perimeter and the distinct areas, not the number of grains."""
    labels = np.zeros((64, 64), np.uint8)
    labels[4:60:4, 4:60:4] = 1  # 196 one-pixel grains inside the block
    labels[0, :] = 2  # one grain along the top edge
    block = label_grains(labels, 0, 0, 3, connectivity=8)
    assert sorted(block.klass.tolist()) == [0, 2]  # background touches the edges, as does the top row
    assert block.inner_class.tolist() == [1] and block.inner_area.tolist() == [1]
    assert block.inner_count.tolist() == [196]


# -- object geometry: every grain and particle equals the whole map's, measured independently --------------


def reference_objects(ids):
    """Area, perimeter, bounding box and centroid of each object of a whole-map id image (0 = none), by
    ``ndimage`` and a pixel-by-pixel count of outline edges (4-neighbours with another id, inside the map)."""
    count = int(ids.max())
    index = np.arange(1, count + 1)
    area = ndimage.sum_labels(np.ones_like(ids), ids, index).astype(np.int64)
    centroids = np.asarray(ndimage.center_of_mass(np.ones_like(ids), ids, index)).reshape(-1, 2)
    boxes = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(ids)]
    perimeter = np.zeros(count, np.int64)
    height, width = ids.shape
    for y in range(height):
        for x in range(width):
            for dy, dx in ((0, 1), (1, 0)):
                ny, nx = y + dy, x + dx
                if ny < height and nx < width and ids[y, x] != ids[ny, nx]:
                    for side in (ids[y, x], ids[ny, nx]):
                        if side:
                            perimeter[side - 1] += 1
    return {(b, round(c[0], 6), round(c[1], 6)): (a, p) for a, p, b, c in zip(area, perimeter, boxes, centroids)}


def merged_objects(shapes):
    """The same keyed view of merged ``shapes`` rows."""
    from minseg.mineralogy.components import AREA, BOTTOM, LEFT, PERIMETER, RIGHT, SUM_X, SUM_Y, TOP

    return {((int(s[TOP]), int(s[LEFT]), int(s[BOTTOM]), int(s[RIGHT])), round(s[SUM_Y] / s[AREA], 6),
             round(s[SUM_X] / s[AREA], 6)): (int(s[AREA]), int(s[PERIMETER])) for s in shapes}


def whole_map_grain_ids(labels, classes, connectivity):
    ids, base = np.zeros(labels.shape, np.int64), 0
    for klass in range(classes):
        components, count = ndimage.label(labels == klass, structure=ndimage.generate_binary_structure(
            2, 2 if connectivity == 8 else 1))
        ids[components > 0] = components[components > 0] + base
        base += count
    return ids


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("shape, block", [((37, 53), 8), ((40, 40), 13), ((24, 60), 24), ((17, 9), 1)])
def test_object_geometry_equals_the_whole_map(shape, block, connectivity):
    """Every grain and particle (inner rows and merged ones together) has the whole map's area, perimeter,
    bounding box and centroid, for several block sizes, shuffled block order, components over 2-4 blocks."""
    from minseg.mineralogy.components import label_particles
    from minseg.mineralogy.merge import merge_particles

    classes = 4
    labels = blob_labels(shape, classes, seed=shape[0] * block + connectivity)
    labels[labels.shape[0] // 2, :] = 0  # a resin line across blocks: particles span several blocks, and end
    height, width = shape
    order = np.random.default_rng(block).permutation(
        [(top, left) for top in range(0, height, block) for left in range(0, width, block)].__len__())
    positions = [(top, left) for top in range(0, height, block) for left in range(0, width, block)]
    sample = np.array([False, True, True, True])
    grain_blocks, particle_blocks = [], []
    for i in order:
        top, left = positions[i]
        part = labels[top : top + block, left : left + block]
        grain_blocks.append(label_grains(part, top, left, classes, connectivity))
        particle_blocks.append(label_particles(part, top, left, sample, connectivity))
    grains = merge_grains(grain_blocks, height, width, connectivity)
    rows = np.concatenate([b.rows_shapes for b in grain_blocks] + [grains.merged_shapes])
    assert merged_objects(rows) == reference_objects(whole_map_grain_ids(labels, classes, connectivity))
    particles = merge_particles(particle_blocks, height, width, sample, connectivity)
    rows = np.concatenate([b.rows_shapes for b in particle_blocks] + [particles.merged_shapes])
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    assert merged_objects(rows) == reference_objects(ndimage.label(sample[labels], structure=structure)[0])


def test_perimeters_by_hand():
    """A 3x3 square in resin has 12 outline edges; a ring around a core: the ring's outline is its outer 20
    edges plus the 4 it shares with the core; a square cut by the slide's edge loses the edges outside."""
    from minseg.mineralogy.components import AREA, PERIMETER

    labels = np.zeros((9, 12), np.uint8)
    labels[1:4, 1:4] = 1                 # square
    labels[3:8, 6:11] = 2                # ring (5x5) ...
    labels[5, 8] = 1                     # ... around a one-pixel core
    labels[0:2, 11] = 1                  # 2 px in the top right corner: 2 edges left, 1 below, none outside
    grains = merge_grains([label_grains(labels[:, :6], 0, 0, 3), label_grains(labels[:, 6:], 0, 6, 3)], 9, 12)
    by_area = {(int(c), int(s[AREA])): int(s[PERIMETER]) for c, s in zip(grains.merged_class, grains.merged_shapes)}
    rows = {(1, 9): 12, (2, 24): 24, (1, 1): 4, (1, 2): 3}
    for block in (label_grains(labels[:, :6], 0, 0, 3), label_grains(labels[:, 6:], 0, 6, 3)):
        by_area.update({(int(c), int(s[AREA])): int(s[PERIMETER]) for c, s in zip(block.rows_class, block.rows_shapes)})
    for key, perimeter in rows.items():
        assert by_area[key] == perimeter, key
