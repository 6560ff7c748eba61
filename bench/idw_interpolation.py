"""IDW at the MFAF paper's sizes: a 1560 x 1560 grid from 7,512 samples, measured in one run.

1. ``minseg.geo.idw.interpolate``: k nearest samples (scipy KD-tree), grid blocks as Ray tasks;
2. brute-force vectorised IDW over every sample (the textbook formula, numpy, chunked so it fits in
   memory) on a subgrid of ``--subgrid-rows`` full rows, and the KD-tree version on the same subgrid:
   the ratio is per node, so it holds for the full grid. The brute-force full-grid time is that ratio
   applied to the measured subgrid time (it would need a 2.4 M x 7,512 distance matrix at once).

Samples are clustered like a till survey (uniform plus dense campaigns), values lognormal.

    python bench/idw_interpolation.py [--grid 1560] [--samples 7512] [--csv bench/results/idw_interpolation.csv]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit  # noqa: E402


def survey_points(count: int, extent: float, rng: np.random.Generator) -> np.ndarray:
    dense = count // 4
    centres = rng.uniform(0, extent, (5, 2))
    clustered = centres[rng.integers(0, 5, dense)] + rng.normal(0, 0.05 * extent, (dense, 2))
    return np.clip(np.concatenate([rng.uniform(0, extent, (count - dense, 2)), clustered]), 0, extent - 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, default=1560)
    parser.add_argument("--samples", type=int, default=7512)
    parser.add_argument("--elements", type=int, default=8, help="interpolated together, as the kept elements are")
    parser.add_argument("--neighbours", type=int, default=12)
    parser.add_argument("--subgrid-rows", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--csv")
    args = parser.parse_args()

    import ray

    from minseg.geo.config import IdwSettings
    from minseg.geo.idw import _block_nodes, idw_brute_force, idw_nodes, interpolate
    from minseg.io.geotiff import GridGeometry

    rng = np.random.default_rng(0)
    cell = 100.0
    extent = args.grid * cell
    points = survey_points(args.samples, extent, rng)
    values = {f"E{i}": rng.lognormal(3, 1, args.samples) for i in range(args.elements)}
    geometry = GridGeometry(0.0, extent, cell, cell, args.grid, args.grid, 3067)
    settings = IdwSettings(power=2, neighbours=args.neighbours, log_transform=False, block=256)

    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False)
    interpolate(points[:, 0], points[:, 1], values, GridGeometry(0.0, 1000.0, 100.0, 100.0, 10, 10, 3067), settings)
    started = time.perf_counter()
    grids = interpolate(points[:, 0], points[:, 1], values, geometry, settings)
    ray_seconds = time.perf_counter() - started
    assert all(np.isfinite(g).all() for g in grids.values())

    nodes = _block_nodes(geometry, 0, args.subgrid_rows, 0, args.grid)
    stacked = np.column_stack(list(values.values()))
    started = time.perf_counter()
    idw_nodes(points, stacked, nodes, 2.0, args.neighbours)
    kd_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(0, len(nodes), 2048):  # 2048 x 7512 distances at a time
        idw_brute_force(points, stacked, nodes[i : i + 2048], 2.0)
    brute_seconds = time.perf_counter() - started
    per_node_ratio = brute_seconds / kd_seconds
    scale = args.grid / args.subgrid_rows
    row = {"date": time.strftime("%Y-%m-%d"), "grid": f"{args.grid}x{args.grid}", "samples": args.samples,
           "elements": args.elements, "neighbours": args.neighbours, "cpus": args.cpus,
           "ray_kdtree_full_grid_s": round(ray_seconds, 2),
           "subgrid_nodes": len(nodes), "kdtree_subgrid_s": round(kd_seconds, 3), "brute_subgrid_s": round(brute_seconds, 3),
           "brute_over_kdtree_per_node": round(per_node_ratio, 1),
           "brute_full_grid_estimate_s": round(brute_seconds * scale, 1),
           "brute_over_ray_full_grid": round(brute_seconds * scale / ray_seconds, 1)}
    emit(row, args.csv)
    print(f"# IDW {args.grid}^2 from {args.samples} samples x {args.elements} elements: Ray + KD-tree "
          f"{ray_seconds:.1f} s on {args.cpus} CPUs; brute force would take ~{row['brute_full_grid_estimate_s']} s "
          f"({row['brute_over_ray_full_grid']}x); per node brute/KD-tree = {per_node_ratio:.1f}x", file=sys.stderr)
    ray.shutdown()


if __name__ == "__main__":
    main()
