"""Grains and particles of a label map computed block by block, in any order, equal to the whole map's.

A **grain** is a connected region of one class; a **particle** a connected region of sample pixels
(any class not background). Each block is labelled on its own (scipy ``ndimage.label``) and keeps:

- for the components touching one of its four edges: their geometry (``SHAPE``: area, perimeter inside
  the block, bounding box, coordinate sums), class or composition, and their ids along the edges;
- for the components inside it (whole already): a row each for the per-object tables (when at least
  the noise threshold), and histograms for the slide statistics (grain (class, area) counts; particle
  area counts with their summed compositions; particle liberation by size fraction).

``merge_grains`` / ``merge_particles`` join edge components that touch across block edges, straight and
(8-connectivity) diagonally, corners included, as a graph whose connected components
(``scipy.sparse.csgraph``) are the objects crossing blocks; their geometry adds up, bounding boxes widen,
and the pixel edges across a seam between two different objects are added to both perimeters (a block
counts only the edges inside it). The result equals labelling and measuring the whole map at once
(``skimage.measure.regionprops`` areas, bounding boxes and centroids; tests/mineralogy/test_components.py)
whatever the block size and order; what the merge holds grows with the blocks' perimeters and the number of
distinct object areas, never with the slide's area.

Perimeter is counted in pixel edges (4-neighbour pixel pairs split by the object's outline), like the
association's boundary lengths: a grain's perimeter is its boundary with other classes, a particle's its
boundary with background; the slide's own edges are not outline (a cut object is flagged ``touching_edge``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from minseg.mineralogy.association import boundary_counts, seam_counts
from minseg.mineralogy.liberation import DEFAULT_EDGES, accumulate_by_size
from minseg.mineralogy.sizes import size_fraction

#: the geometry of one object (columns of the ``shapes`` arrays): pixels, pixel edges of its outline, the
#: bounding box (top/left inclusive, bottom/right exclusive, slide pixels) and the sums of its pixels' row and
#: column indices (centroid = sum / area)
SHAPE = ("area", "perimeter", "top", "left", "bottom", "right", "sum_y", "sum_x")
AREA, PERIMETER, TOP, LEFT, BOTTOM, RIGHT, SUM_Y, SUM_X = range(len(SHAPE))
_BAND = 512  # rows per pass of the coordinate sums: bounds the float64 weights they need


class _Arrays:
    """A block's components as named arrays of an ``.npz`` block record (``to_arrays`` / ``from_arrays``), and
    its size from its edge id lines."""

    PREFIX = ""

    @property
    def height(self) -> int:
        return len(self.edge_left)

    @property
    def width(self) -> int:
        return len(self.edge_top)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"{self.PREFIX}{name}": np.asarray(getattr(self, name)) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays):
        values = {name: arrays[f"{cls.PREFIX}{name}"] for name in cls.__dataclass_fields__}
        values["top"], values["left"] = int(values["top"]), int(values["left"])
        return cls(**values)

    def drop_rows(self) -> None:
        """Forget the inner objects' table rows (written out already): the merge needs only the rest."""
        for name in self.__dataclass_fields__:
            if name.startswith("rows_"):
                value = getattr(self, name)
                setattr(self, name, value[:0])


def structure(connectivity: int) -> np.ndarray:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    return ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)


def measure(ids: np.ndarray, count: int, top: int, left: int) -> np.ndarray:
    """Geometry of the objects of an id map.

    Args:
        ids: (h, w) int32 object ids 0..count-1; -1 where no object is (background, for particles).
        count: number of objects.
        top, left: the map's origin in slide pixels (bounding boxes and sums are in slide coordinates).

    Returns:
        (count, len(SHAPE)) int64: area, perimeter (pixel edges between the object and anything else inside
        the map: the map's own edges are left for the merge), bounding box, coordinate sums.
    """
    shapes = np.zeros((count, len(SHAPE)), np.int64)
    if not count:
        return shapes
    height, width = ids.shape
    one_based = ids + 1  # 0: no object
    shapes[:, AREA] = np.bincount(one_based.ravel(), minlength=count + 1)[1:]
    boxes = ndimage.find_objects(one_based, max_label=count)
    shapes[:, TOP] = [top + box[0].start for box in boxes]
    shapes[:, BOTTOM] = [top + box[0].stop for box in boxes]
    shapes[:, LEFT] = [left + box[1].start for box in boxes]
    shapes[:, RIGHT] = [left + box[1].stop for box in boxes]
    sum_y, sum_x = np.zeros(count + 1), np.zeros(count + 1)  # exact: slide coordinate sums stay below 2**53
    columns = np.arange(left, left + width, dtype=np.float64)
    for start in range(0, height, _BAND):
        band = one_based[start : start + _BAND]
        rows = np.arange(top + start, top + start + len(band), dtype=np.float64)
        sum_y += np.bincount(band.ravel(), weights=np.repeat(rows, width), minlength=count + 1)
        sum_x += np.bincount(band.ravel(), weights=np.tile(columns, len(band)), minlength=count + 1)
    shapes[:, SUM_Y], shapes[:, SUM_X] = np.rint(sum_y[1:]), np.rint(sum_x[1:])
    for first, second in ((ids[:, 1:], ids[:, :-1]), (ids[1:], ids[:-1])):
        differ = first != second
        for side in (first[differ], second[differ]):
            shapes[:, PERIMETER] += np.bincount(side[side >= 0], minlength=count)
    return shapes


def _edge_lines(ids: np.ndarray) -> list[np.ndarray]:
    """The first and last row, first and last column of an id map."""
    return [ids[0], ids[-1], ids[:, 0], ids[:, -1]]


def _local_edge_ids(ids: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(count,) bool: which objects touch the map's edge; (count + 1,) their ids renumbered 0..K-1 in order
    (index ``id + 1``; -1 for the others and for "no object")."""
    on_edge = np.zeros(count + 1, bool)
    for line in _edge_lines(ids):
        on_edge[line + 1] = True
    on_edge[0] = False
    local = np.full(count + 1, -1, np.int64)
    local[on_edge] = np.arange(int(on_edge.sum()))
    return on_edge[1:], local


@dataclass
class BlockGrains(_Arrays):
    """One block's grains.

    Attributes:
        top, left: the block's origin in slide pixels.
        klass: (K,) uint8, class id of each grain touching the block's edge (local id = index).
        shapes: (K, len(SHAPE)) int64, their geometry inside the block.
        edge_top, edge_bottom: (width,) int32 local ids of the block's first and last rows.
        edge_left, edge_right: (height,) int32 local ids of its first and last columns.
        class_pixels: (C,) int64 pixels per class (modal mineralogy).
        inner_class, inner_area, inner_count: (I,) uint8 / int64 / int64: the grains touching no edge, as
            counts per distinct (class, area).
        boundary: (C, C) int64 pixel edges between classes inside the block (``association.boundary_counts``).
        rows_class, rows_shapes: (N,) uint8 and (N, len(SHAPE)) int64: the grains inside the block of at least
            the noise threshold, for the grain table.
    """

    top: int
    left: int
    klass: np.ndarray
    shapes: np.ndarray
    edge_top: np.ndarray
    edge_bottom: np.ndarray
    edge_left: np.ndarray
    edge_right: np.ndarray
    class_pixels: np.ndarray
    inner_class: np.ndarray
    inner_area: np.ndarray
    inner_count: np.ndarray
    boundary: np.ndarray
    rows_class: np.ndarray
    rows_shapes: np.ndarray

    PREFIX = "grains_"


def label_grains(labels: np.ndarray, top: int, left: int, num_classes: int, connectivity: int = 8,
                 min_area: int = 1) -> BlockGrains:
    """Grains of a (h, w) uint8 block of class ids at (top, left) of the slide; grains under ``min_area``
    pixels are noise (histogram only, no table row).

    Raises:
        ValueError: a label is not a class id (>= ``num_classes``), or connectivity is not 4 or 8.
    """
    pixels = np.bincount(labels.ravel(), minlength=num_classes)
    if len(pixels) > num_classes:
        raise ValueError(f"label {len(pixels) - 1} is not a class id (expected < {num_classes})")
    ids = np.empty(labels.shape, np.int32)
    kinds, base = [], 0
    for klass in np.flatnonzero(pixels):
        mask = labels == klass
        components, count = ndimage.label(mask, structure=structure(connectivity))
        ids[mask] = components[mask] - 1 + base
        kinds.append(np.full(count, klass, np.uint8))
        base += count
    klass = np.concatenate(kinds) if kinds else np.zeros(0, np.uint8)
    shapes = measure(ids, base, top, left)
    on_edge, local = _local_edge_ids(ids, base)
    inner = ~on_edge
    inner_class, inner_area, inner_count = histogram(klass[inner], shapes[inner, AREA])
    rows = inner & (shapes[:, AREA] >= min_area)
    lines = [local[line + 1].astype(np.int32) for line in _edge_lines(ids)]
    return BlockGrains(
        top=top, left=left, klass=klass[on_edge], shapes=shapes[on_edge], edge_top=lines[0], edge_bottom=lines[1],
        edge_left=lines[2], edge_right=lines[3], class_pixels=pixels.astype(np.int64), inner_class=inner_class,
        inner_area=inner_area, inner_count=inner_count, boundary=boundary_counts(labels, num_classes),
        rows_class=klass[rows], rows_shapes=shapes[rows],
    )


def histogram(klass: np.ndarray, area: np.ndarray,
              count: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, area) pairs, each with a multiplicity (default 1), as the distinct pairs sorted by
    class then area, and their summed counts."""
    if count is None:
        count = np.ones(len(klass), np.int64)
    if not len(klass):
        return np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs, inverse = np.unique(np.stack([klass.astype(np.int64), area.astype(np.int64)], axis=1), axis=0,
                               return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=count, minlength=len(pairs)).astype(np.int64)
    return pairs[:, 0].astype(np.uint8), pairs[:, 1], counts


def _edge_pairs(first: np.ndarray, second: np.ndarray, diagonal: bool) -> np.ndarray:
    """(P, 2) pairs of ids facing each other across an edge: ``first[i]`` with ``second[i]``, and with
    8-connectivity ``second[i - 1]`` and ``second[i + 1]``; -1 is nothing."""
    pairs = [np.stack([first, second], axis=1)]
    if diagonal and len(first) > 1:
        pairs += [np.stack([first[1:], second[:-1]], axis=1), np.stack([first[:-1], second[1:]], axis=1)]
    pairs = np.concatenate(pairs)
    return pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]


def _seams(blocks: list, offsets: np.ndarray, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The facing lines of global edge-object ids (block offset added; -1 where nothing) across every seam of
    sorted blocks: horizontal seams slide-wide (so 8-connectivity diagonals cross block corners too), then
    the vertical seams within each band of blocks."""
    lines = []
    rows: dict[int, list[tuple[object, int]]] = {}
    for block, offset in zip(blocks, offsets):
        rows.setdefault(block.top, []).append((block, int(offset)))
    tops = sorted(rows)
    for upper, lower in zip(tops, tops[1:]):
        above, below = np.full(width, -1, np.int64), np.full(width, -1, np.int64)
        for block, offset in rows[upper]:
            above[block.left : block.left + block.width] = _shifted(block.edge_bottom, offset)
        for block, offset in rows[lower]:
            below[block.left : block.left + block.width] = _shifted(block.edge_top, offset)
        lines.append((above, below))
    for top in tops:
        band = sorted(rows[top], key=lambda entry: entry[0].left)
        for (left_block, left_offset), (right_block, right_offset) in zip(band, band[1:]):
            lines.append((_shifted(left_block.edge_right, left_offset), _shifted(right_block.edge_left, right_offset)))
    return lines


def _shifted(ids: np.ndarray, offset: int) -> np.ndarray:
    """Local edge ids as slide-wide ones; -1 (nothing there: background, for particles) stays -1."""
    ids = ids.astype(np.int64)
    return np.where(ids >= 0, ids + offset, -1)


def _tiled(blocks: list, height: int, width: int) -> tuple[list, np.ndarray]:
    """The blocks sorted by position and the offsets of their edge objects in the slide's list."""
    blocks = sorted(blocks, key=lambda b: (b.top, b.left))
    covered = sum(b.height * b.width for b in blocks)
    if covered != height * width or len({(b.top, b.left) for b in blocks}) != len(blocks):
        raise ValueError(f"blocks cover {covered} pixels of a {height}x{width} slide, "
                         f"{len(blocks)} blocks at {len({(b.top, b.left) for b in blocks})} places")
    return blocks, np.cumsum([0] + [len(b.shapes) for b in blocks])


@dataclass
class _Joined:
    """Edge objects of every block joined across seams: ``group_of`` (N,) the merged object of each block's
    edge object (slide-wide index), ``shapes`` (G, len(SHAPE)) the merged objects' geometry."""

    blocks: list
    group_of: np.ndarray
    shapes: np.ndarray

    @property
    def groups(self) -> int:
        return len(self.shapes)


def _join(blocks: list, height: int, width: int, connectivity: int, same=None) -> _Joined:
    """Join the blocks' edge objects that touch across seams (``same(first, second)``, arrays of global ids,
    says which touching pairs are one object: for grains, the same class) and merge their geometry."""
    blocks, offsets = _tiled(blocks, height, width)
    lines = _seams(blocks, offsets, width)
    pairs = [_edge_pairs(first, second, connectivity == 8) for first, second in lines]
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    if same is not None:
        pairs = pairs[same(pairs[:, 0], pairs[:, 1])]
    count = int(offsets[-1])
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    groups, group_of = connected_components(graph, directed=False)
    shapes = np.concatenate([b.shapes for b in blocks]) if blocks else np.zeros((0, len(SHAPE)), np.int64)
    merged = np.zeros((groups, len(SHAPE)), np.int64)
    for column in (AREA, PERIMETER, SUM_Y, SUM_X):
        np.add.at(merged[:, column], group_of, shapes[:, column])
    merged[:, TOP] = merged[:, LEFT] = np.iinfo(np.int64).max
    for column, extreme in ((TOP, np.minimum), (LEFT, np.minimum), (BOTTOM, np.maximum), (RIGHT, np.maximum)):
        extreme.at(merged[:, column], group_of, shapes[:, column])
    lookup = np.append(group_of, -1)  # id -1 (nothing) looks up the last entry: -1
    for first, second in lines:  # pixel edges across a seam between two objects: outline of both
        a, b = lookup[first], lookup[second]
        differ = a != b
        for side in (a[differ], b[differ]):
            merged[:, PERIMETER] += np.bincount(side[side >= 0], minlength=groups)
    return _Joined(blocks, group_of, merged)


def touching_edge(shapes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N,) bool: the objects whose bounding box reaches the slide's edge (cut by it)."""
    return (shapes[:, TOP] == 0) | (shapes[:, LEFT] == 0) | (shapes[:, BOTTOM] == height) | (shapes[:, RIGHT] == width)


def merge_boundaries(blocks: list[BlockGrains], height: int, width: int) -> np.ndarray:
    """The slide's (C, C) boundary counts (``association.boundary_counts`` of the whole label map) from its
    blocks': their own plus every seam's, each pixel edge counted once.

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    blocks, offsets = _tiled(blocks, height, width)
    total = sum(b.boundary for b in blocks).astype(np.int64)
    klass = np.concatenate([b.klass for b in blocks]).astype(np.int64)
    for first, second in _seams(blocks, offsets, width):
        if (first < 0).any() or (second < 0).any():
            raise ValueError("the blocks leave a gap along a seam")
        total += seam_counts(klass[first], klass[second], len(total))
    return total


@dataclass
class Grains:
    """A slide's grains: the histogram of every grain (``klass``, ``area``, ``count``: distinct (class, area)
    pairs sorted by class then area, and how many grains have each), and the grains that crossed blocks
    (``merged_class`` (G,), ``merged_shapes`` (G, len(SHAPE)): their table rows come from here)."""

    klass: np.ndarray
    area: np.ndarray
    count: np.ndarray
    merged_class: np.ndarray
    merged_shapes: np.ndarray

    def areas(self, num_classes: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per class id: (distinct grain areas ascending, how many grains have each)."""
        return {k: (self.area[self.klass == k], self.count[self.klass == k]) for k in range(num_classes)}


def merge_grains(blocks: list[BlockGrains], height: int, width: int, connectivity: int = 8) -> Grains:
    """The grains of a (height, width) slide from its blocks' (any order, any block grid whose blocks tile the
    slide).

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    klass = np.concatenate([b.klass for b in sorted(blocks, key=lambda b: (b.top, b.left))]) \
        if blocks else np.zeros(0, np.uint8)
    joined = _join(blocks, height, width, connectivity, same=lambda a, b: klass[a] == klass[b])
    merged_class = np.zeros(joined.groups, np.uint8)
    merged_class[joined.group_of] = klass
    inner = [(b.inner_class, b.inner_area, b.inner_count) for b in joined.blocks]
    hist = histogram(np.concatenate([merged_class] + [i[0] for i in inner]),
                     np.concatenate([joined.shapes[:, AREA]] + [i[1] for i in inner]),
                     np.concatenate([np.ones(joined.groups, np.int64)] + [i[2] for i in inner]))
    return Grains(*hist, merged_class, joined.shapes)


@dataclass
class BlockParticles(_Arrays):
    """One block's particles (connected sample pixels, whatever their classes; ``mineralogy.liberation``).

    Attributes:
        top, left: the block's origin in slide pixels.
        composition: (K, C) int64 pixels of each class in each particle touching the block's edge.
        shapes: (K, len(SHAPE)) int64 their geometry inside the block.
        edge_top, edge_bottom, edge_left, edge_right: local ids of those particles along the edges
            (-1: background).
        liberation: (F, C, B) int64, ``liberation.accumulate_by_size`` of the particles inside the block of
            at least the noise threshold.
        inner_area, inner_count: (I,) int64 the areas of the particles inside the block, as counts per area;
        inner_composition: (I, C) int64 the summed composition of the particles of each area (for mass).
        rows_composition, rows_shapes: (N, C), (N, len(SHAPE)) int64: the particles inside the block of at least
            the noise threshold, for the particle table.
    """

    top: int
    left: int
    composition: np.ndarray
    shapes: np.ndarray
    edge_top: np.ndarray
    edge_bottom: np.ndarray
    edge_left: np.ndarray
    edge_right: np.ndarray
    liberation: np.ndarray
    inner_area: np.ndarray
    inner_count: np.ndarray
    inner_composition: np.ndarray
    rows_composition: np.ndarray
    rows_shapes: np.ndarray

    PREFIX = "particles_"


@dataclass(frozen=True)
class SizeFractions:
    """The size fractions liberation is reported by: ``edges`` ECD edges ascending (µm with ``pixel_size_um``,
    else pixels); fraction k holds ECDs in [edges[k-1], edges[k])."""

    edges: tuple[float, ...] = ()
    pixel_size_um: float | None = None

    @property
    def count(self) -> int:
        return len(self.edges) + 1

    def of(self, area: np.ndarray) -> np.ndarray:
        return size_fraction(area, self.edges, self.pixel_size_um)


def label_particles(labels: np.ndarray, top: int, left: int, sample: np.ndarray, connectivity: int = 8,
                    edges: tuple[int, ...] = DEFAULT_EDGES, min_area: int = 1,
                    fractions: SizeFractions = SizeFractions()) -> BlockParticles:
    """Particles of a (h, w) block of class ids at (top, left): ``sample`` (C,) bool says which classes are
    sample (the rest is background: resin, pores). Particles under ``min_area`` pixels are noise: counted in
    the areas, left out of liberation and the table (a stray pixel in resin is no liberated particle)."""
    num_classes = len(sample)
    mask = np.asarray(sample, bool)[labels]
    ids, count = ndimage.label(mask, structure=structure(connectivity))
    ids = ids.astype(np.int32) - 1  # -1: background
    composition = np.bincount(ids[mask].astype(np.int64) * num_classes + labels[mask],
                              minlength=count * num_classes).reshape(count, num_classes)
    shapes = measure(ids, count, top, left)
    on_edge, local = _local_edge_ids(ids, count)
    inner = ~on_edge
    areas = shapes[:, AREA]
    inner_area, inverse = np.unique(areas[inner], return_inverse=True)
    inner_composition = np.zeros((len(inner_area), num_classes), np.int64)
    np.add.at(inner_composition, inverse.ravel(), composition[inner])
    rows = inner & (areas >= min_area)
    lines = [local[line + 1].astype(np.int32) for line in _edge_lines(ids)]
    return BlockParticles(
        top=top, left=left, composition=composition[on_edge], shapes=shapes[on_edge],
        edge_top=lines[0], edge_bottom=lines[1], edge_left=lines[2], edge_right=lines[3],
        liberation=accumulate_by_size(composition[rows], np.asarray(sample, bool), fractions.of(areas[rows]),
                                      fractions.count, edges),
        inner_area=inner_area.astype(np.int64), inner_count=np.bincount(inverse.ravel(), minlength=len(inner_area)),
        inner_composition=inner_composition, rows_composition=composition[rows], rows_shapes=shapes[rows],
    )


@dataclass
class Particles:
    """A slide's particles.

    Attributes:
        liberation: (F, C, B) int64, ``liberation.accumulate_by_size`` of every particle of at least the noise
            threshold.
        area, count: distinct particle areas (ascending, noise included) and how many particles have each;
        composition: (A, C) int64 the summed composition of the particles of each area (mass-weighted sizes).
        touching_edge: particles of at least the noise threshold cut by the slide's edge (smaller and more
            liberated than they are).
        merged_composition, merged_shapes: the particles that crossed blocks (their table rows).
    """

    liberation: np.ndarray
    area: np.ndarray
    count: np.ndarray
    composition: np.ndarray
    touching_edge: int
    merged_composition: np.ndarray
    merged_shapes: np.ndarray


def merge_particles(blocks: list[BlockParticles], height: int, width: int, sample: np.ndarray,
                    connectivity: int = 8, edges: tuple[int, ...] = DEFAULT_EDGES, min_area: int = 1,
                    fractions: SizeFractions = SizeFractions()) -> Particles:
    """The slide's particles from its blocks' (any order, any block grid that tiles the slide): particles
    touching block edges are joined across seams, their compositions summed, then classed.

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    num_classes = len(sample)
    joined = _join(blocks, height, width, connectivity)
    composition = np.concatenate([b.composition for b in joined.blocks]) if blocks \
        else np.zeros((0, num_classes), np.int64)
    merged = np.zeros((joined.groups, num_classes), np.int64)
    np.add.at(merged, joined.group_of, composition)
    merged_area = joined.shapes[:, AREA]
    real = merged_area >= min_area
    liberation = accumulate_by_size(merged[real], np.asarray(sample, bool), fractions.of(merged_area[real]),
                                    fractions.count, edges)
    liberation = liberation + sum((b.liberation for b in joined.blocks), np.zeros_like(liberation))
    touching = int((touching_edge(joined.shapes, height, width) & real).sum())
    areas = np.concatenate([merged_area] + [b.inner_area for b in joined.blocks])
    counts = np.concatenate([np.ones(joined.groups, np.int64)] + [b.inner_count for b in joined.blocks])
    compositions = np.concatenate([merged] + [b.inner_composition for b in joined.blocks])
    distinct, inverse = np.unique(areas, return_inverse=True)
    summed = np.zeros((len(distinct), num_classes), np.int64)
    np.add.at(summed, inverse.ravel(), compositions)
    return Particles(liberation, distinct, np.bincount(inverse.ravel(), weights=counts).astype(np.int64), summed,
                     touching, merged, joined.shapes)
