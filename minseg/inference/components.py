"""Grains (connected regions of one class) of a label map computed block by block, in any order.

Each block is labelled on its own (scipy ``ndimage.label`` per class present) and keeps only
what the union step needs: the class and area of each component touching one of the block's
four edges, the ids along those edges, and for the components inside the block (complete
grains already) only how many there are of each (class, area). ``merge_components`` joins
edge components that touch across block edges, straight and (8-connectivity) diagonally,
corners included, as a graph whose connected components (``scipy.sparse.csgraph``) are the
grains crossing blocks. The result equals labelling the whole label map at once, whatever the
block size and the order blocks finish in (tests/inference/test_components.py); its size grows
with the blocks' perimeters and the number of distinct grain areas, not with the slide's area
(the number of grains of a noisy label map grows with its area).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from minseg.mineralogy import boundary_counts, seam_counts
from minseg.mineralogy.liberation import DEFAULT_EDGES, accumulate


class _Arrays:
    """A block's edge components (``top``, ``left``, ``edge_*`` id lines and arrays): its size, and the
    conversion to and from named arrays of an ``.npz`` block record."""

    PREFIX = ""

    @property
    def height(self) -> int:
        return len(self.edge_left)

    @property
    def width(self) -> int:
        return len(self.edge_top)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays; ``from_arrays`` reverses it."""
        return {f"{self.PREFIX}{name}": np.asarray(getattr(self, name)) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays):
        values = {name: arrays[f"{cls.PREFIX}{name}"] for name in cls.__dataclass_fields__}
        values["top"], values["left"] = int(values["top"]), int(values["left"])
        return cls(**values)


@dataclass
class BlockComponents(_Arrays):
    """One block's components.

    Attributes:
        top, left: the block's origin in slide pixels.
        klass: (K,) uint8, class id of each component touching the block's edge (local id = index).
        area: (K,) int64, their pixels.
        edge_top, edge_bottom: (width,) int32 local ids of the block's first and last rows.
        edge_left, edge_right: (height,) int32 local ids of its first and last columns.
        class_pixels: (C,) int64 pixels per class (modal mineralogy).
        inner_class, inner_area, inner_count: (I,) uint8 / int64 / int64: the components touching no
            edge, as counts per distinct (class, area).
        boundary: (C, C) int64 pixel edges between classes inside the block (``mineralogy.boundary_counts``).
    """

    top: int
    left: int
    klass: np.ndarray
    area: np.ndarray
    edge_top: np.ndarray
    edge_bottom: np.ndarray
    edge_left: np.ndarray
    edge_right: np.ndarray
    class_pixels: np.ndarray
    inner_class: np.ndarray
    inner_area: np.ndarray
    inner_count: np.ndarray
    boundary: np.ndarray

    PREFIX = "components_"


def structure(connectivity: int) -> np.ndarray:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    return ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)


def label_block(labels: np.ndarray, top: int, left: int, num_classes: int, connectivity: int = 8) -> BlockComponents:
    """Components of a (h, w) uint8 block of class ids at (top, left) of the slide.

    Raises:
        ValueError: a label is not a class id (>= ``num_classes``), or connectivity is not 4 or 8.
    """
    pixels = np.bincount(labels.ravel(), minlength=num_classes)
    if len(pixels) > num_classes:
        raise ValueError(f"label {len(pixels) - 1} is not a class id (expected < {num_classes})")
    ids = np.empty(labels.shape, np.int32)
    kinds, areas, base = [], [], 0
    for klass in np.flatnonzero(pixels):
        mask = labels == klass
        components, count = ndimage.label(mask, structure=structure(connectivity))
        ids[mask] = components[mask] - 1 + base
        areas.append(np.bincount(components[mask], minlength=count + 1)[1:])
        kinds.append(np.full(count, klass, np.uint8))
        base += count
    klass = np.concatenate(kinds) if kinds else np.zeros(0, np.uint8)
    area = np.concatenate(areas).astype(np.int64) if areas else np.zeros(0, np.int64)
    edges = [ids[0], ids[-1], ids[:, 0], ids[:, -1]]
    on_edge = np.zeros(len(klass), bool)
    for edge in edges:
        on_edge[edge] = True
    local = np.cumsum(on_edge, dtype=np.int64) - 1  # edge components renumbered 0..K-1
    inner_class, inner_area, inner_count = histogram(klass[~on_edge], area[~on_edge])
    return BlockComponents(
        top=top, left=left, klass=klass[on_edge], area=area[on_edge],
        edge_top=local[edges[0]].astype(np.int32), edge_bottom=local[edges[1]].astype(np.int32),
        edge_left=local[edges[2]].astype(np.int32), edge_right=local[edges[3]].astype(np.int32),
        class_pixels=pixels.astype(np.int64), inner_class=inner_class, inner_area=inner_area,
        inner_count=inner_count, boundary=boundary_counts(labels, num_classes),
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


def _seams(blocks: list[BlockComponents], offsets: np.ndarray, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The facing lines of global edge-component ids (block offset added; -1 where nothing) across every
    seam of sorted blocks: horizontal seams slide-wide (so 8-connectivity diagonals cross block corners
    too), then the vertical seams within each band of blocks."""
    lines = []
    rows: dict[int, list[tuple[BlockComponents, int]]] = {}
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


def _tiled(blocks: list, height: int, width: int, size=lambda b: len(b.klass)) -> tuple[list, np.ndarray]:
    """The blocks sorted by position and the offsets of their edge components (``size`` of each block) in
    the slide's list."""
    blocks = sorted(blocks, key=lambda b: (b.top, b.left))
    covered = sum(b.height * b.width for b in blocks)
    if covered != height * width or len({(b.top, b.left) for b in blocks}) != len(blocks):
        raise ValueError(f"blocks cover {covered} pixels of a {height}x{width} slide, "
                         f"{len(blocks)} blocks at {len({(b.top, b.left) for b in blocks})} places")
    return blocks, np.cumsum([0] + [size(b) for b in blocks])


def merge_boundaries(blocks: list[BlockComponents], height: int, width: int) -> np.ndarray:
    """The slide's (C, C) boundary counts (``mineralogy.boundary_counts`` of the whole label map) from its
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
    """The slide's grains as a histogram: (G,) class ids, areas in pixels and how many grains have that
    class and area (distinct pairs, sorted by class then area)."""

    klass: np.ndarray
    area: np.ndarray
    count: np.ndarray

    def areas(self, num_classes: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per class id: (distinct grain areas ascending, how many grains have each)."""
        return {k: (self.area[self.klass == k], self.count[self.klass == k]) for k in range(num_classes)}


def merge_components(blocks: list[BlockComponents], height: int, width: int, connectivity: int = 8) -> Grains:
    """The grains of a (height, width) slide from its blocks' components (any order, any block grid whose
    blocks tile the slide), as a ``Grains`` histogram.

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    blocks, offsets = _tiled(blocks, height, width)
    klass = np.concatenate([b.klass for b in blocks]) if blocks else np.zeros(0, np.uint8)
    area = np.concatenate([b.area for b in blocks]) if blocks else np.zeros(0, np.int64)
    diagonal = connectivity == 8
    pairs = [_edge_pairs(first, second, diagonal) for first, second in _seams(blocks, offsets, width)]
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    pairs = pairs[klass[pairs[:, 0]] == klass[pairs[:, 1]]]
    count = len(klass)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    groups, labels = connected_components(graph, directed=False)
    merged_area = np.bincount(labels, weights=area, minlength=groups).astype(np.int64)
    merged_class = np.zeros(groups, np.uint8)
    merged_class[labels] = klass
    inner = [(b.inner_class, b.inner_area, b.inner_count) for b in blocks]
    return Grains(*histogram(np.concatenate([merged_class] + [i[0] for i in inner]),
                             np.concatenate([merged_area] + [i[1] for i in inner]),
                             np.concatenate([np.ones(groups, np.int64)] + [i[2] for i in inner])))


@dataclass
class BlockParticles(_Arrays):
    """One block's particles (connected sample pixels, whatever their classes; ``mineralogy.liberation``).

    Attributes:
        top, left: the block's origin in slide pixels.
        composition: (K, C) int64 pixels of each class in each particle touching the block's edge.
        edge_top, edge_bottom, edge_left, edge_right: local ids of those particles along the edges
            (-1: background).
        liberation: (C, B) int64, ``mineralogy.liberation.accumulate`` of the particles inside the block.
        inner_area, inner_count: (I,) int64 the areas of the particles inside the block, as counts per area.
    """

    top: int
    left: int
    composition: np.ndarray
    edge_top: np.ndarray
    edge_bottom: np.ndarray
    edge_left: np.ndarray
    edge_right: np.ndarray
    liberation: np.ndarray
    inner_area: np.ndarray
    inner_count: np.ndarray

    PREFIX = "particles_"


def label_particles(labels: np.ndarray, top: int, left: int, sample: np.ndarray, connectivity: int = 8,
                    edges: tuple[int, ...] = DEFAULT_EDGES, min_area: int = 1) -> BlockParticles:
    """Particles of a (h, w) block of class ids at (top, left): ``sample`` (C,) bool says which classes are
    sample (the rest is background: resin, pores). Particles under ``min_area`` pixels are noise: counted in
    the areas, left out of liberation (a stray pixel in resin is no liberated particle)."""
    num_classes = len(sample)
    mask = np.asarray(sample, bool)[labels]
    ids, count = ndimage.label(mask, structure=structure(connectivity))
    composition = np.bincount((ids[mask].astype(np.int64) - 1) * num_classes + labels[mask],
                              minlength=count * num_classes).reshape(count, num_classes)
    lines = [ids[0], ids[-1], ids[:, 0], ids[:, -1]]
    on_edge = np.zeros(count + 1, bool)
    for line in lines:
        on_edge[line] = True
    on_edge = on_edge[1:]  # id 0 is background
    local = np.full(count + 1, -1, np.int64)
    local[1:][on_edge] = np.arange(int(on_edge.sum()))
    areas = composition.sum(axis=1)
    inner_area, inner_count = np.unique(areas[~on_edge], return_counts=True)
    classed = ~on_edge & (areas >= min_area)
    return BlockParticles(
        top=top, left=left, composition=composition[on_edge],
        edge_top=local[lines[0]].astype(np.int32), edge_bottom=local[lines[1]].astype(np.int32),
        edge_left=local[lines[2]].astype(np.int32), edge_right=local[lines[3]].astype(np.int32),
        liberation=accumulate(composition[classed], np.asarray(sample, bool), edges),
        inner_area=inner_area.astype(np.int64), inner_count=inner_count.astype(np.int64),
    )


@dataclass
class Particles:
    """A slide's particles: liberation (C, B) int64 (``mineralogy.liberation.accumulate`` of every particle
    of at least the minimum area), the particle areas as distinct areas with counts (ascending, noise
    included), and how many particles touch the slide's edge (cut by it: smaller and more liberated than
    they are)."""

    liberation: np.ndarray
    area: np.ndarray
    count: np.ndarray
    touching_edge: int


def merge_particles(blocks: list[BlockParticles], height: int, width: int, sample: np.ndarray,
                    connectivity: int = 8, edges: tuple[int, ...] = DEFAULT_EDGES, min_area: int = 1) -> Particles:
    """The slide's particles from its blocks' (any order, any block grid that tiles the slide): particles
    touching block edges are joined across seams, their compositions summed, then classed.

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    blocks, offsets = _tiled(blocks, height, width, size=lambda b: len(b.composition))
    num_classes = len(sample)
    composition = np.concatenate([b.composition for b in blocks]) if blocks else np.zeros((0, num_classes), np.int64)
    pairs = [_edge_pairs(first, second, connectivity == 8) for first, second in _seams(blocks, offsets, width)]
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    count = len(composition)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    groups, group_of = connected_components(graph, directed=False)
    merged = np.zeros((groups, num_classes), np.int64)
    np.add.at(merged, group_of, composition)
    merged_area = merged.sum(axis=1)
    liberation = accumulate(merged[merged_area >= min_area], np.asarray(sample, bool), edges) \
        + sum(b.liberation for b in blocks)
    border = []  # ids on the slide's own edges (inner particles never reach them)
    for block, offset in zip(blocks, offsets):
        for line, on_border in ((block.edge_top, block.top == 0), (block.edge_left, block.left == 0),
                                (block.edge_bottom, block.top + block.height == height),
                                (block.edge_right, block.left + block.width == width)):
            if on_border:
                border.append(line[line >= 0].astype(np.int64) + int(offset))
    touching = len(np.unique(group_of[np.concatenate(border)])) if border and count else 0
    areas = np.concatenate([merged_area] + [b.inner_area for b in blocks])
    counts = np.concatenate([np.ones(groups, np.int64)] + [b.inner_count for b in blocks])
    distinct, inverse = np.unique(areas, return_inverse=True)
    return Particles(liberation, distinct, np.bincount(inverse, weights=counts).astype(np.int64), touching)
