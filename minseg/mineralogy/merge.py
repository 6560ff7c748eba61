"""The slide's grains and particles from its blocks' (``components``), joined band by band.

Blocks may arrive in any order; they are held until their band (the row of blocks at one ``top``) is complete,
and bands are joined top to bottom. Each band's edge objects are joined with each other across the band's
vertical seams and with the objects still **open** at the previous band's bottom row, across the horizontal
seam, straight and (8-connectivity) diagonally, corners included: a graph whose connected components
(``scipy.sparse.csgraph``) are the merged objects. Their geometry adds up, bounding boxes widen, and each
pixel edge across a seam between two different objects is added to both perimeters (a block counts only
the edges inside it). An object that does not reach the band's bottom row is complete: it goes to the
statistics (and the per-object tables) at once; the others stay open for the next band.

What is held is the open objects along one row, the blocks of the band being completed and the histograms
of distinct object areas: bounded by a row of blocks, never the slide's area (bench/mineralogy_memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from minseg.mineralogy.association import seam_counts
from minseg.mineralogy.components import (AREA, BOTTOM, LEFT, PERIMETER, RIGHT, SHAPE, SUM_X, SUM_Y, TOP,
                                          BlockGrains, BlockParticles, SizeFractions)
from minseg.mineralogy.liberation import DEFAULT_EDGES, accumulate_by_size

_COMPACT = 64  # histogram parts gathered before they are summed into one (bounded by distinct areas)


def touching_edge(shapes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N,) bool: the objects whose bounding box reaches the slide's edge (cut by it)."""
    return (shapes[:, TOP] == 0) | (shapes[:, LEFT] == 0) | (shapes[:, BOTTOM] == height) | (shapes[:, RIGHT] == width)


def _edge_pairs(first: np.ndarray, second: np.ndarray, diagonal: bool) -> np.ndarray:
    """(P, 2) pairs of ids facing each other across a seam: ``first[i]`` with ``second[i]``, and with
    8-connectivity ``second[i - 1]`` and ``second[i + 1]``; -1 is nothing."""
    pairs = [np.stack([first, second], axis=1)]
    if diagonal and len(first) > 1:
        pairs += [np.stack([first[1:], second[:-1]], axis=1), np.stack([first[:-1], second[1:]], axis=1)]
    pairs = np.concatenate(pairs)
    return pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]


def _shifted(ids: np.ndarray, offset: int) -> np.ndarray:
    """A block's local edge ids as node ids of the band (offset added); -1 (nothing there) stays -1."""
    ids = ids.astype(np.int64)
    return np.where(ids >= 0, ids + offset, -1)


class _Bands:
    """Blocks held until their band is complete; complete bands are released top to bottom."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.next_top = 0
        self._waiting: dict[int, list] = {}

    def add(self, block) -> list[list]:
        """The bands ready now (each sorted left to right), after ``block``.

        Raises:
            ValueError: the block overlaps a band already done or another block.
        """
        if block.top < self.next_top or block.top + block.height > self.height or block.left + block.width > self.width:
            raise ValueError(f"block at ({block.top}, {block.left}) overlaps blocks already merged or lies outside "
                             f"the {self.height}x{self.width} slide")
        self._waiting.setdefault(block.top, []).append(block)
        ready = []
        while self.next_top in self._waiting:
            band = sorted(self._waiting[self.next_top], key=lambda b: b.left)
            lefts = np.cumsum([0] + [b.width for b in band])
            if lefts[-1] < self.width:
                break
            if [b.left for b in band] != lefts[:-1].tolist() or lefts[-1] != self.width \
                    or len({b.height for b in band}) != 1:
                raise ValueError(f"the blocks at row {self.next_top} do not tile it: "
                                 f"{[(b.left, b.width, b.height) for b in band]}")
            del self._waiting[self.next_top]
            ready.append(band)
            self.next_top += band[0].height
        return ready

    def check_complete(self) -> None:
        """Raises ValueError unless every row of the slide was merged."""
        if self.next_top != self.height or self._waiting:
            covered = self.next_top * self.width + sum(b.height * b.width for band in self._waiting.values()
                                                       for b in band)
            raise ValueError(f"blocks cover {covered} pixels of a {self.height}x{self.width} slide")


class _Frontier:
    """The objects open at the last merged band's bottom row: their geometry, payload (a grain's class, a
    particle's composition) and ``line``, the open object under each column of that row (-1: none)."""

    def __init__(self, width: int, connectivity: int, payload: np.ndarray, same_payload: bool):
        self.diagonal = connectivity == 8
        self.same_payload = same_payload  # grains join only objects of one class; particles any
        self.shapes = np.zeros((0, len(SHAPE)), np.int64)
        self.payload = payload
        self.line: np.ndarray | None = None  # no band yet: the first band's top row is the slide's edge

    def join(self, band: list, payloads: list[np.ndarray], last: bool):
        """Join a band's edge objects with the open ones.

        Returns (complete shapes, complete payloads, seams, node payloads): the merged objects that end in
        this band (all of them on the ``last`` band), and the band's seams as pairs of node-id lines with
        the nodes' payloads (for the boundary counts across seams).
        """
        nodes = [self.shapes] + [b.shapes for b in band]
        node_payload = np.concatenate([self.payload] + payloads)
        offsets = np.cumsum([len(self.shapes)] + [len(b.shapes) for b in band])
        top = np.concatenate([_shifted(b.edge_top, o) for b, o in zip(band, offsets)])
        bottom = np.concatenate([_shifted(b.edge_bottom, o) for b, o in zip(band, offsets)])
        seams = ([(self.line, top)] if self.line is not None else []) + [
            (_shifted(a.edge_right, oa), _shifted(b.edge_left, ob))
            for (a, oa), (b, ob) in zip(zip(band, offsets), zip(band[1:], offsets[1:]))]
        pairs = np.concatenate([np.zeros((0, 2), np.int64)] + [_edge_pairs(f, s, self.diagonal) for f, s in seams])
        if self.same_payload:
            pairs = pairs[node_payload[pairs[:, 0]] == node_payload[pairs[:, 1]]]
        shapes = np.concatenate(nodes)
        count = len(shapes)
        graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
        groups, group_of = connected_components(graph, directed=False)
        merged = np.zeros((groups, len(SHAPE)), np.int64)
        for column in (AREA, PERIMETER, SUM_Y, SUM_X):
            np.add.at(merged[:, column], group_of, shapes[:, column])
        merged[:, TOP] = merged[:, LEFT] = np.iinfo(np.int64).max
        for column, extreme in ((TOP, np.minimum), (LEFT, np.minimum), (BOTTOM, np.maximum), (RIGHT, np.maximum)):
            extreme.at(merged[:, column], group_of, shapes[:, column])
        lookup = np.append(group_of, -1)  # node -1 (nothing) looks up the last entry: -1
        for first, second in seams:  # pixel edges across a seam between two objects: outline of both
            a, b = lookup[first], lookup[second]
            differ = a != b
            for side in (a[differ], b[differ]):
                merged[:, PERIMETER] += np.bincount(side[side >= 0], minlength=groups)
        if self.same_payload:
            payload = np.zeros(groups, node_payload.dtype)
            payload[group_of] = node_payload
        else:
            payload = np.zeros((groups,) + node_payload.shape[1:], node_payload.dtype)
            np.add.at(payload, group_of, node_payload)
        below = lookup[bottom]
        open_ = np.zeros(groups, bool)
        if not last:
            open_[below[below >= 0]] = True
        renumber = np.append(np.cumsum(open_) - 1, -1)  # group -1 (nothing) stays -1
        self.shapes, self.payload = merged[open_], payload[open_]
        self.line = renumber[below]
        return merged[~open_], payload[~open_], seams, node_payload


class _Histogram:
    """Distinct keys (rows of an int64 array) with summed values, gathered in parts and summed now and then."""

    def __init__(self, key_width: int, value_width: int):
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.keys = np.zeros((0, key_width), np.int64)
        self.values = np.zeros((0, value_width), np.int64)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if len(keys):
            self._parts.append((np.asarray(keys, np.int64), np.asarray(values, np.int64)))
        if len(self._parts) >= _COMPACT:
            self.compact()

    def compact(self) -> None:
        keys = np.concatenate([self.keys] + [k for k, _ in self._parts])
        values = np.concatenate([self.values] + [v for _, v in self._parts])
        self._parts = []
        if not len(keys):
            return
        self.keys, inverse = np.unique(keys, axis=0, return_inverse=True)
        self.values = np.zeros((len(self.keys), values.shape[1]), np.int64)
        np.add.at(self.values, inverse.ravel(), values)


@dataclass
class Grains:
    """A slide's grains: the histogram of every grain (``klass``, ``area``, ``count``: distinct (class, area)
    pairs sorted by class then area, and how many grains have each), pixels per class, and the (C, C)
    boundary counts (``association.boundary_counts`` of the whole map); ``merged_class`` / ``merged_shapes``:
    the grains that crossed blocks (filled by ``merge_grains``)."""

    klass: np.ndarray
    area: np.ndarray
    count: np.ndarray
    class_pixels: np.ndarray
    boundary: np.ndarray
    merged_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    merged_shapes: np.ndarray = field(default_factory=lambda: np.zeros((0, len(SHAPE)), np.int64))

    def areas(self, num_classes: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per class id: (distinct grain areas ascending, how many grains have each)."""
        return {k: (self.area[self.klass == k], self.count[self.klass == k]) for k in range(num_classes)}


class GrainMerger:
    """A slide's grains from its blocks' (``add`` in any order, then ``finish``).

    ``on_rows(klass, shapes)`` receives the grains that crossed blocks as they are completed, those of at least
    ``min_area`` pixels (the blocks' inner grains have their rows in the blocks already).
    """

    def __init__(self, height: int, width: int, num_classes: int, connectivity: int = 8, min_area: int = 1,
                 on_rows=None):
        self.height, self.width, self.num_classes, self.min_area = height, width, num_classes, min_area
        self.on_rows = on_rows
        self._bands = _Bands(height, width)
        self._frontier = _Frontier(width, connectivity, np.zeros(0, np.uint8), same_payload=True)
        self._histogram = _Histogram(2, 1)
        self.class_pixels = np.zeros(num_classes, np.int64)
        self.boundary = np.zeros((num_classes, num_classes), np.int64)

    def add(self, block: BlockGrains) -> None:
        """Raises ValueError when the block overlaps others or its class count differs."""
        if len(block.class_pixels) != self.num_classes:
            raise ValueError(f"a block has {len(block.class_pixels)} classes, the slide {self.num_classes}")
        self.class_pixels += block.class_pixels
        self.boundary += block.boundary
        self._histogram.add(np.stack([block.inner_class, block.inner_area], axis=1), block.inner_count[:, None])
        for band in self._bands.add(block):
            self._join(band)

    def _join(self, band: list[BlockGrains]) -> None:
        last = band[0].top + band[0].height == self.height
        shapes, klass, seams, node_class = self._frontier.join(band, [b.klass for b in band], last)
        for first, second in seams:  # every pixel is in a grain: no -1 on a grain seam
            self.boundary += seam_counts(node_class[first], node_class[second], self.num_classes)
        self._histogram.add(np.stack([klass, shapes[:, AREA]], axis=1), np.ones((len(klass), 1), np.int64))
        if self.on_rows is not None:
            keep = shapes[:, AREA] >= self.min_area
            self.on_rows(klass[keep], shapes[keep])

    def finish(self) -> Grains:
        """Raises ValueError unless the blocks added tile the slide exactly."""
        self._bands.check_complete()
        self._histogram.compact()
        keys = self._histogram.keys  # distinct (class, area), sorted by class then area
        return Grains(keys[:, 0].astype(np.uint8), keys[:, 1], self._histogram.values[:, 0], self.class_pixels,
                      self.boundary)


def merge_grains(blocks: list[BlockGrains], height: int, width: int, connectivity: int = 8) -> Grains:
    """The grains of a (height, width) slide from all its blocks (any order, any block grid that tiles the
    slide), with every grain that crossed blocks in ``merged_class`` / ``merged_shapes``.

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    rows = []
    merger = GrainMerger(height, width, len(blocks[0].class_pixels) if blocks else 0, connectivity,
                         on_rows=lambda klass, shapes: rows.append((klass, shapes)))
    for block in blocks:
        merger.add(block)
    grains = merger.finish()
    if rows:
        grains.merged_class = np.concatenate([k for k, _ in rows])
        grains.merged_shapes = np.concatenate([s for _, s in rows])
    return grains


def merge_boundaries(blocks: list[BlockGrains], height: int, width: int) -> np.ndarray:
    """The slide's (C, C) boundary counts from its blocks': their own plus every seam's, each pixel edge once.

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    return merge_grains(blocks, height, width).boundary


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
        merged_composition, merged_shapes: the particles that crossed blocks (filled by ``merge_particles``).
    """

    liberation: np.ndarray
    area: np.ndarray
    count: np.ndarray
    composition: np.ndarray
    touching_edge: int
    merged_composition: np.ndarray | None = None
    merged_shapes: np.ndarray = field(default_factory=lambda: np.zeros((0, len(SHAPE)), np.int64))


class ParticleMerger:
    """A slide's particles from its blocks' (``add`` in any order, then ``finish``); ``on_rows(composition,
    shapes)`` receives the particles that crossed blocks, of at least ``min_area`` pixels, as they complete."""

    def __init__(self, height: int, width: int, sample: np.ndarray, connectivity: int = 8,
                 edges: tuple[int, ...] = DEFAULT_EDGES, min_area: int = 1, fractions: SizeFractions = SizeFractions(),
                 on_rows=None):
        self.height, self.width, self.min_area, self.on_rows = height, width, min_area, on_rows
        self.sample, self.edges, self.fractions = np.asarray(sample, bool), edges, fractions
        num_classes = len(self.sample)
        self._bands = _Bands(height, width)
        self._frontier = _Frontier(width, connectivity, np.zeros((0, num_classes), np.int64), same_payload=False)
        self._histogram = _Histogram(1, 1 + num_classes)  # area -> count, composition
        self.liberation = np.zeros((fractions.count, num_classes, len(edges) + 1), np.int64)
        self.touching_edge = 0

    def add(self, block: BlockParticles) -> None:
        """Raises ValueError when the block overlaps others."""
        self.liberation += block.liberation
        self._histogram.add(block.inner_area[:, None], np.concatenate([block.inner_count[:, None],
                                                                       block.inner_composition], axis=1))
        for band in self._bands.add(block):
            self._join(band)

    def _join(self, band: list[BlockParticles]) -> None:
        last = band[0].top + band[0].height == self.height
        shapes, composition, _, _ = self._frontier.join(band, [b.composition for b in band], last)
        area = shapes[:, AREA]
        real = area >= self.min_area
        self.liberation += accumulate_by_size(composition[real], self.sample, self.fractions.of(area[real]),
                                              self.fractions.count, self.edges)
        self.touching_edge += int((touching_edge(shapes, self.height, self.width) & real).sum())
        self._histogram.add(area[:, None], np.concatenate([np.ones((len(area), 1), np.int64), composition], axis=1))
        if self.on_rows is not None:
            self.on_rows(composition[real], shapes[real])

    def finish(self) -> Particles:
        """Raises ValueError unless the blocks added tile the slide exactly."""
        self._bands.check_complete()
        self._histogram.compact()
        values = self._histogram.values
        return Particles(self.liberation, self._histogram.keys[:, 0], values[:, 0], values[:, 1:], self.touching_edge)


def merge_particles(blocks: list[BlockParticles], height: int, width: int, sample: np.ndarray,
                    connectivity: int = 8, edges: tuple[int, ...] = DEFAULT_EDGES, min_area: int = 1,
                    fractions: SizeFractions = SizeFractions()) -> Particles:
    """The slide's particles from all its blocks (any order, any block grid that tiles the slide), with the
    particles that crossed blocks (at least ``min_area``) in ``merged_composition`` / ``merged_shapes``.

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    rows = []
    merger = ParticleMerger(height, width, sample, connectivity, edges, min_area, fractions,
                            on_rows=lambda composition, shapes: rows.append((composition, shapes)))
    for block in blocks:
        merger.add(block)
    particles = merger.finish()
    particles.merged_composition = np.concatenate([c for c, _ in rows]) if rows \
        else np.zeros((0, len(sample)), np.int64)
    if rows:
        particles.merged_shapes = np.concatenate([s for _, s in rows])
    return particles
