"""Grains (connected regions of one class) of a label map computed block by block, in any order.

Each block is labelled on its own (scipy ``ndimage.label`` per class present) and keeps only
what the union step needs: per component its class and area, and the component ids along the
block's four edges. ``merge_components`` joins components that touch across block edges,
straight and (8-connectivity) diagonally, corners included, as a graph whose connected
components (``scipy.sparse.csgraph``) are the whole slide's grains. The result equals labelling
the whole label map at once, whatever the block size and the order blocks finish in
(tests/inference/test_components.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class BlockComponents:
    """One block's components.

    Attributes:
        top, left: the block's origin in slide pixels.
        klass: (K,) uint8, class id of each component (local id = index).
        area: (K,) int64, pixels.
        edge_top, edge_bottom: (width,) int32 local ids of the block's first and last rows.
        edge_left, edge_right: (height,) int32 local ids of its first and last columns.
        class_pixels: (C,) int64 pixels per class (modal mineralogy).
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

    @property
    def height(self) -> int:
        return len(self.edge_left)

    @property
    def width(self) -> int:
        return len(self.edge_top)

    def to_arrays(self, prefix: str = "components_") -> dict[str, np.ndarray]:
        """Named arrays (for an ``.npz`` block record); ``from_arrays`` reverses it."""
        return {f"{prefix}{name}": np.asarray(getattr(self, name)) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "components_") -> "BlockComponents":
        values = {name: arrays[f"{prefix}{name}"] for name in cls.__dataclass_fields__}
        values["top"], values["left"] = int(values["top"]), int(values["left"])
        return cls(**values)


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
    return BlockComponents(
        top=top, left=left,
        klass=np.concatenate(kinds) if kinds else np.zeros(0, np.uint8),
        area=np.concatenate(areas).astype(np.int64) if areas else np.zeros(0, np.int64),
        edge_top=ids[0].copy(), edge_bottom=ids[-1].copy(), edge_left=ids[:, 0].copy(), edge_right=ids[:, -1].copy(),
        class_pixels=pixels.astype(np.int64),
    )


def _edge_pairs(first: np.ndarray, second: np.ndarray, diagonal: bool) -> np.ndarray:
    """(P, 2) pairs of ids facing each other across an edge: ``first[i]`` with ``second[i]``, and with
    8-connectivity ``second[i - 1]`` and ``second[i + 1]``; -1 is nothing."""
    pairs = [np.stack([first, second], axis=1)]
    if diagonal and len(first) > 1:
        pairs += [np.stack([first[1:], second[:-1]], axis=1), np.stack([first[:-1], second[1:]], axis=1)]
    pairs = np.concatenate(pairs)
    return pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]


@dataclass
class Grains:
    """The slide's grains: (G,) class ids and (G,) areas in pixels, in no particular order."""

    klass: np.ndarray
    area: np.ndarray

    def areas(self, num_classes: int) -> dict[int, np.ndarray]:
        """Sorted grain areas per class id."""
        return {klass: np.sort(self.area[self.klass == klass]) for klass in range(num_classes)}


def merge_components(blocks: list[BlockComponents], height: int, width: int, connectivity: int = 8) -> Grains:
    """The grains of a (height, width) slide from its blocks' components (any order, any block grid whose
    blocks tile the slide).

    Raises:
        ValueError: the blocks do not tile the slide exactly.
    """
    blocks = sorted(blocks, key=lambda b: (b.top, b.left))
    covered = sum(b.height * b.width for b in blocks)
    if covered != height * width:
        raise ValueError(f"blocks cover {covered} pixels of a {height}x{width} slide")
    offsets = np.cumsum([0] + [len(b.klass) for b in blocks])
    klass = np.concatenate([b.klass for b in blocks]) if blocks else np.zeros(0, np.uint8)
    area = np.concatenate([b.area for b in blocks]) if blocks else np.zeros(0, np.int64)
    diagonal = connectivity == 8
    pairs = []
    rows: dict[int, list[tuple[BlockComponents, int]]] = {}
    for block, offset in zip(blocks, offsets):
        rows.setdefault(block.top, []).append((block, int(offset)))
    tops = sorted(rows)
    for upper, lower in zip(tops, tops[1:]):  # horizontal seams, slide-wide: diagonals cross block corners too
        above, below = np.full(width, -1, np.int64), np.full(width, -1, np.int64)
        for block, offset in rows[upper]:
            above[block.left : block.left + block.width] = block.edge_bottom + offset
        for block, offset in rows[lower]:
            below[block.left : block.left + block.width] = block.edge_top + offset
        pairs.append(_edge_pairs(above, below, diagonal))
    for top in tops:  # vertical seams within a band of blocks (its corners are the horizontal seams' work)
        band = sorted(rows[top], key=lambda entry: entry[0].left)
        for (left_block, left_offset), (right_block, right_offset) in zip(band, band[1:]):
            pairs.append(_edge_pairs(left_block.edge_right.astype(np.int64) + left_offset,
                                     right_block.edge_left.astype(np.int64) + right_offset, diagonal))
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    pairs = pairs[klass[pairs[:, 0]] == klass[pairs[:, 1]]]
    count = len(klass)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count))
    groups, labels = connected_components(graph, directed=False)
    merged_area = np.bincount(labels, weights=area, minlength=groups).astype(np.int64)
    merged_class = np.zeros(groups, np.uint8)
    merged_class[labels] = klass
    return Grains(merged_class, merged_area)
