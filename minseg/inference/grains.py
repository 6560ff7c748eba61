"""Grain statistics of a label map streamed tile by tile (never the whole slide).

Each output tile is labelled per class with scipy (connected components); components
that touch across a tile edge (above, left, and diagonally at corners with 8-connectivity)
are joined with a union-find over global ids, so a grain cut by tiles is counted once with
its whole area. Only the edge rows/columns' ids and one area per component are kept.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


class GrainCounter:
    """Feed ``add_tile`` the tiles of one fixed grid in row-major order (a band's tiles left to right)."""

    def __init__(self, num_classes: int, width: int, connectivity: int = 8):
        self.num_classes, self.width = num_classes, width
        self.structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
        self.diagonal = connectivity == 8
        self._parent = np.zeros(0, np.int64)
        self._area = np.zeros(0, np.int64)
        self._klass = np.zeros(0, np.uint8)
        self._size = 0
        self._above: np.ndarray | None = None  # global ids of the previous band's last row, -1 where none
        self._bottom = np.full(width, -1, np.int64)  # the current band's last row, filled tile by tile
        self._left_column: np.ndarray | None = None  # the previous tile's last column (same band)
        self._next_left = 0
        self.class_pixels = np.zeros(num_classes, np.int64)  # modal mineralogy comes for free

    def _allocate(self, areas: np.ndarray, klass: int) -> int:
        first = self._size
        needed = first + len(areas)
        if needed > len(self._parent):
            capacity = max(needed, 2 * len(self._parent), 1024)
            self._parent = np.concatenate([self._parent, np.zeros(capacity - len(self._parent), np.int64)])
            self._area = np.concatenate([self._area, np.zeros(capacity - len(self._area), np.int64)])
            self._klass = np.concatenate([self._klass, np.zeros(capacity - len(self._klass), np.uint8)])
        self._parent[first:needed] = np.arange(first, needed)
        self._area[first:needed] = areas
        self._klass[first:needed] = klass
        self._size = needed
        return first

    def _find(self, node: int) -> int:
        parent = self._parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def _union(self, a: int, b: int) -> None:
        root_a, root_b = self._find(a), self._find(b)
        if root_a != root_b:
            self._parent[max(root_a, root_b)] = min(root_a, root_b)

    def add_tile(self, top: int, left: int, labels: np.ndarray) -> None:
        """One tile of class ids at (top, left); tiles arrive in row-major order."""
        height, width = labels.shape
        if left != self._next_left:
            raise ValueError(f"tile at ({top}, {left}) out of order: expected left = {self._next_left}")
        if left == 0 and top > 0:  # a new band: the finished band's last row is now the row above
            self._above, self._bottom = self._bottom, np.full(self.width, -1, np.int64)
            self._left_column = None
        pixels = np.bincount(labels.ravel(), minlength=self.num_classes)
        if len(pixels) > self.num_classes:
            raise ValueError(f"label {len(pixels) - 1} is not a class id (expected < {self.num_classes})")
        self.class_pixels += pixels
        ids = np.full((height, width), -1, np.int64)
        for klass in np.flatnonzero(pixels):
            components, count = ndimage.label(labels == klass, structure=self.structure)
            areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
            base = self._allocate(areas, int(klass))
            found = components > 0
            ids[found] = components[found] - 1 + base
        if self._above is not None:
            # the row above from one column left to one column right: straight and diagonal neighbours
            above = np.full(width + 2, -1, np.int64)
            lo, hi = max(0, left - 1), min(self.width, left + width + 1)
            above[lo - (left - 1) : hi - (left - 1)] = self._above[lo:hi]
            self._join(above, ids[0])
        if self._left_column is not None:
            self._join(np.concatenate([[-1], self._left_column, [-1]]), ids[:, 0])
        self._bottom[left : left + width] = ids[-1]
        self._left_column = ids[:, -1].copy()
        self._next_left = 0 if left + width >= self.width else left + width

    def _join(self, neighbours: np.ndarray, edge: np.ndarray) -> None:
        """Union ``edge[i]`` with ``neighbours[i + 1]`` (straight) and, with 8-connectivity, ``neighbours[i]``
        and ``neighbours[i + 2]`` (diagonal); -1 is nothing."""
        pairs = [np.stack([neighbours[1:-1], edge], axis=1)]
        if self.diagonal:
            pairs.append(np.stack([neighbours[:-2], edge], axis=1))
            pairs.append(np.stack([neighbours[2:], edge], axis=1))
        pairs = np.concatenate(pairs)
        pairs = pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]
        pairs = pairs[self._klass[pairs[:, 0]] == self._klass[pairs[:, 1]]]
        keys = np.unique(pairs[:, 0] * self._size + pairs[:, 1])  # 1-D unique: far faster than axis=0
        for a, b in zip(*np.divmod(keys, self._size)):
            self._union(int(a), int(b))

    def grain_areas(self) -> dict[int, np.ndarray]:
        """Area in pixels of every grain (whole connected component), per class id."""
        size = self._size
        roots = self._parent[:size].copy()
        while True:  # pointer jumping: every id ends at its root
            jumped = roots[roots]
            if np.array_equal(jumped, roots):
                break
            roots = jumped
        totals = np.bincount(roots, weights=self._area[:size], minlength=size).astype(np.int64)
        is_root = roots == np.arange(size)
        return {klass: np.sort(totals[is_root & (self._klass[:size] == klass)])
                for klass in range(self.num_classes)}


def grain_statistics(areas: np.ndarray, min_grain_px: int, pixel_size_um: float | None) -> dict:
    """Count and size distribution of one class's grains (components below ``min_grain_px`` are noise)."""
    grains = areas[areas >= min_grain_px]
    stats: dict = {"count": int(grains.size), "noise_components": int(areas.size - grains.size)}
    if grains.size:
        stats.update(
            mean_area_px=float(grains.mean()), median_area_px=float(np.median(grains)),
            p10_area_px=float(np.percentile(grains, 10)), p90_area_px=float(np.percentile(grains, 90)),
            max_area_px=int(grains.max()),
            # log2 size classes: bin k counts grains of 2^k <= area < 2^(k+1) pixels
            histogram_log2_px=np.bincount(np.log2(grains).astype(np.int64)).tolist(),
        )
        if pixel_size_um:
            diameters = 2.0 * np.sqrt(grains * pixel_size_um**2 / np.pi)
            stats.update(mean_area_um2=float(grains.mean() * pixel_size_um**2),
                         mean_ecd_um=float(diameters.mean()), median_ecd_um=float(np.median(diameters)))
    return stats
