"""Grain statistics of a label map streamed band by band (never the whole slide).

Each band is labelled per class with scipy (connected components); components that
touch across a band boundary are joined with a union-find over global ids, so a grain
cut by a band is counted once with its whole area. Only the boundary row's ids and
one area per component are kept.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

STRIP_ROWS = 64  # labelling works on strips this tall: bounded scratch memory on wide slides


class GrainCounter:
    def __init__(self, num_classes: int, connectivity: int = 8):
        self.num_classes = num_classes
        self.structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
        self.diagonal = connectivity == 8
        self._parent = np.zeros(0, np.int64)
        self._area = np.zeros(0, np.int64)
        self._klass = np.zeros(0, np.uint8)
        self._size = 0
        self._previous_row: np.ndarray | None = None  # global ids of the last row seen, -1 where none

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

    def add_band(self, labels: np.ndarray) -> None:
        """Rows of the label map in order from the top, any number of rows at a time."""
        for top in range(0, labels.shape[0], STRIP_ROWS):
            self._add_strip(labels[top : top + STRIP_ROWS])

    def _add_strip(self, labels: np.ndarray) -> None:
        width = labels.shape[1]
        first_row = np.full(width, -1, np.int64)
        last_row = np.full(width, -1, np.int64)
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=self.num_classes))
        for klass in present:
            components, count = ndimage.label(labels == klass, structure=self.structure)
            areas = np.bincount(components.ravel(), minlength=count + 1)[1:]
            base = self._allocate(areas, int(klass))
            top, bottom = components[0], components[-1]
            first_row[top > 0] = top[top > 0] - 1 + base
            last_row[bottom > 0] = bottom[bottom > 0] - 1 + base
        if self._previous_row is not None:
            self._join(self._previous_row, first_row)
        self._previous_row = last_row

    def _join(self, above: np.ndarray, below: np.ndarray) -> None:
        pairs = [np.stack([above, below], axis=1)]
        if self.diagonal:
            pairs.append(np.stack([above[:-1], below[1:]], axis=1))
            pairs.append(np.stack([above[1:], below[:-1]], axis=1))
        pairs = np.concatenate(pairs)
        pairs = pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0)]
        pairs = pairs[self._klass[pairs[:, 0]] == self._klass[pairs[:, 1]]]
        for a, b in np.unique(pairs, axis=0):
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
