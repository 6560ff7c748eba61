"""Inverse-distance-weighted interpolation of samples onto a grid, in blocks, in parallel with Ray.

Nodes are pixel centres. Each node takes its ``k`` nearest samples (a scipy KD-tree),
optionally only those within ``radius``, weighted by ``1 / d^power``; a node on a sample
takes that sample's value exactly (the mean of the samples there). A node with no sample
in reach is NaN (nodata). Elements missing at different samples are interpolated from
their own samples: elements are grouped by which samples they have, one tree per group.

Memory: one block of ``block x block`` nodes x k neighbours per task, never the grid x
samples matrix that brute-force IDW needs.
"""

from __future__ import annotations

import numpy as np

from minseg.geo.config import IdwSettings
from minseg.geo.grid import map_blocks
from minseg.io.geotiff import GridGeometry


def _block_nodes(geometry: GridGeometry, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
    xs, ys = geometry.pixel_centres()
    grid_x, grid_y = np.meshgrid(xs[col0:col1], ys[row0:row1])
    return np.column_stack([grid_x.ravel(), grid_y.ravel()])


def idw_nodes(points: np.ndarray, values: np.ndarray, nodes: np.ndarray, power: float, neighbours: int,
              radius: float | None = None) -> np.ndarray:
    """(nodes, E) IDW of ``values`` (samples, E) at ``nodes`` (m, 2) with a KD-tree."""
    from scipy.spatial import cKDTree

    k = min(neighbours, len(points))
    tree = cKDTree(points)
    # the bound is strict (distances < it): the next float up keeps a sample exactly at the radius
    distances, index = tree.query(nodes, k=k, distance_upper_bound=np.nextafter(radius, np.inf) if radius else np.inf)
    if k == 1:
        distances, index = distances[:, None], index[:, None]
    found = np.isfinite(distances)  # beyond the radius: inf distance, index == len(points)
    padded = np.vstack([values, np.zeros((1, values.shape[1]))])
    neighbour_values = padded[index]  # (m, k, E)
    exact = found & (distances == 0)
    with np.errstate(divide="ignore"):
        weights = np.where(found & ~exact, 1.0 / np.power(np.where(found, distances, 1.0), power), 0.0)
    on_sample = exact.any(axis=1)
    weights[on_sample] = exact[on_sample].astype(np.float64)  # a node on a sample: that sample (mean if several)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.einsum("mk,mke->me", weights, neighbour_values) / total[:, None]
    result[total == 0] = np.nan
    return result


def idw_brute_force(points: np.ndarray, values: np.ndarray, nodes: np.ndarray, power: float) -> np.ndarray:
    """Reference IDW over every sample (no tree, no k): (nodes, E). Needs nodes x samples memory."""
    distances = np.hypot(nodes[:, None, 0] - points[None, :, 0], nodes[:, None, 1] - points[None, :, 1])
    exact = distances == 0
    with np.errstate(divide="ignore"):
        weights = np.where(exact, 0.0, 1.0 / np.power(np.where(exact, 1.0, distances), power))
    on_sample = exact.any(axis=1)
    weights[on_sample] = exact[on_sample]
    return weights @ values / weights.sum(axis=1, keepdims=True)


def _groups(values: dict[str, np.ndarray]) -> list[tuple[list[str], np.ndarray]]:
    """Elements grouped by the samples where they are known: (names, sample mask)."""
    groups: dict[bytes, tuple[list[str], np.ndarray]] = {}
    for name, value in values.items():
        mask = np.isfinite(value)
        groups.setdefault(np.packbits(mask).tobytes() + mask.size.to_bytes(8, "little"), ([], mask))[0].append(name)
    return list(groups.values())


def _interpolate_block(geometry: GridGeometry, bounds, groups, settings: IdwSettings):
    row0, row1, col0, col1 = bounds
    nodes = _block_nodes(geometry, row0, row1, col0, col1)
    out = {}
    for names, points, values in groups:
        if len(points) == 0:
            block = np.full((len(nodes), len(names)), np.nan)
        else:
            block = idw_nodes(points, values, nodes, settings.power, settings.neighbours, settings.radius_m)
        for index, name in enumerate(names):
            out[name] = block[:, index].reshape(row1 - row0, col1 - col0).astype(np.float32)
    return bounds, out


def interpolate(x: np.ndarray, y: np.ndarray, values: dict[str, np.ndarray], geometry: GridGeometry,
                settings: IdwSettings, task_cpus: float = 0.5) -> dict[str, np.ndarray]:
    """IDW grids (rows, cols) float32 per element; log10 values when ``settings.log_transform``."""
    import ray

    prepared = {}
    for name, value in values.items():
        value = np.asarray(value, np.float64)
        if settings.log_transform:
            with np.errstate(divide="ignore", invalid="ignore"):
                value = np.where(value > 0, np.log10(value), np.nan)
        prepared[name] = value
    points = np.column_stack([x, y]).astype(np.float64)
    groups = [(names, points[mask], np.column_stack([prepared[n][mask] for n in names]))
              for names, mask in _groups(prepared)]
    grids = {name: np.full((geometry.rows, geometry.cols), np.nan, np.float32) for name in values}
    for (row0, row1, col0, col1), blocks in map_blocks(_interpolate_block, geometry, settings.block, task_cpus,
                                                       ray.put(groups), settings):
        for name, block in blocks.items():
            grids[name][row0:row1, col0:col1] = block
    return grids
