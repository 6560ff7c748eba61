"""Grains and particles of a label map computed block by block, in any order, equal to the whole map's.

A **grain** is a connected region of one class; a **particle** a connected region of sample pixels
(any class not background). Each block is labelled on its own (scipy ``ndimage.label``) and keeps:

- for the components touching one of its four edges: their geometry (``SHAPE``: area, perimeter inside
  the block, bounding box, coordinate sums), class or composition, and their ids along the edges;
- for the components inside it (whole already): a row each for the per-object tables (when at least
  the noise threshold), and histograms for the slide statistics (grain (class, area) counts; particle
  area counts with their summed compositions; particle liberation by size fraction).

``mineralogy.merge`` joins the edge components of the blocks, band by band, into the slide's objects. The
result equals labelling and measuring the whole map at once (``ndimage`` labels, areas, bounding boxes,
centroids, outline edges; tests/mineralogy/test_components.py) whatever the block size and order.

Perimeter is counted in pixel edges (4-neighbour pixel pairs split by the object's outline), like the
association's boundary lengths: a grain's perimeter is its boundary with other classes, a particle's its
boundary with background; the slide's own edges are not outline (a cut object is flagged ``touching_edge``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from minseg.mineralogy.association import boundary_counts
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


def object_shapes(ids: np.ndarray, count: int, top: int, left: int) -> np.ndarray:
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
    shapes = object_shapes(ids, base, top, left)
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
    shapes = object_shapes(ids, count, top, left)
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
