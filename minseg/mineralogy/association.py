"""Mineral association: how much boundary each pair of classes shares.

The boundary between two classes is counted in **pixel edges**: one for every pair of 4-neighbour pixels
(side by side or one above the other) whose classes differ, so a boundary length in µm is that count times
the pixel size. This is the "shared perimeter" measure of automated mineralogy (QEMSCAN / MLA association
data: the fraction of a mineral's perimeter in contact with each other phase, its contact with background
being its free surface; Gottlieb et al. 2000, JOM 52(4); Fandrich et al. 2007, Int. J. Miner. Process. 84).
Edges of the image are not boundaries (what lies outside is unknown).

Counts add up over blocks: :func:`boundary_counts` counts the edges inside a block, :func:`seam_counts`
those across a seam between two blocks (each pixel edge belongs to exactly one block or one seam), so a
slide's matrix is the same whatever its block size and the order blocks finish in.
"""

from __future__ import annotations

import numpy as np


def _pair_counts(first: np.ndarray, second: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64: for each position where ``first`` and ``second`` (same shape, class ids) differ, one
    count at (first, second) and one at (second, first)."""
    a, b = first.ravel().astype(np.int64), second.ravel().astype(np.int64)
    differ = a != b
    flat = np.bincount(a[differ] * num_classes + b[differ], minlength=num_classes * num_classes)
    counts = flat[: num_classes * num_classes].reshape(num_classes, num_classes)
    return counts + counts.T


def boundary_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel edges between different classes inside a label map.

    Args:
        labels: (H, W) integer class ids, all below ``num_classes``.
        num_classes: C.

    Returns:
        (C, C) int64, symmetric, zero diagonal: entry (a, b) is the number of 4-neighbour pixel pairs with
        one pixel of class a and the other of class b. Row a sums to class a's boundary with other classes.

    Raises:
        ValueError: a label is not below ``num_classes``.
    """
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(f"label {int(labels.max())} is not a class id (expected < {num_classes})")
    return (_pair_counts(labels[:, 1:], labels[:, :-1], num_classes)
            + _pair_counts(labels[1:, :], labels[:-1, :], num_classes))


def seam_counts(first: np.ndarray, second: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel edges across a seam: ``first`` (n,) the classes along one block's last row or column, ``second``
    (n,) the facing first row or column of the next block. Same layout as :func:`boundary_counts`."""
    if first.shape != second.shape:
        raise ValueError(f"seam sides differ in length: {first.shape} and {second.shape}")
    return _pair_counts(first, second, num_classes)


def association_table(counts: np.ndarray, names: list[str], background: set[str],
                      pixel_size_um: float | None) -> dict:
    """The association matrix of a slide from its (C, C) boundary counts.

    Args:
        counts: (C, C) int pixel edges between classes (:func:`boundary_counts`, summed over blocks and seams).
        names: C class names.
        background: the names of the background classes (free surface).
        pixel_size_um: µm per pixel, or None.

    Returns:
        A dict by class name (background classes included as partners, not as rows): ``boundary_px`` (int, pixel
        edges with other classes), ``boundary_um`` (µm; None without a pixel size), ``free_surface_pct`` (% of the
        boundary shared with background classes), and ``shared_pct``: for every other class, the % of this
        class's boundary it shares with it (the row sums to 100). A class with no boundary (absent, or filling
        the whole image) has no shares: ``free_surface_pct`` and every ``shared_pct`` are None, not 0 (as an
        absent mineral's liberation), so that it reads as unknown and no mean over slides counts it as 0 %;
        its ``boundary_px`` is 0 and ``boundary_um`` 0.0 (None without a pixel size).
    """
    rows = {}
    for a, name in enumerate(names):
        if name in background:
            continue
        total = int(counts[a].sum())
        if total:
            share = 100.0 * counts[a] / total
            free = round(float(sum(share[b] for b, other in enumerate(names) if other in background)), 4)
            shared = {other: round(float(share[b]), 4) for b, other in enumerate(names) if b != a}
        else:
            free, shared = None, {other: None for b, other in enumerate(names) if b != a}
        rows[name] = {
            "boundary_px": total,
            "boundary_um": round(total * pixel_size_um, 3) if pixel_size_um else None,
            "free_surface_pct": free,
            "shared_pct": shared,
        }
    return rows
