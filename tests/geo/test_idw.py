"""IDW: exact at samples, equal to brute force, pixel-centre nodes, radius, per-element samples."""

import numpy as np
import pytest

from minseg.geo.config import IdwSettings
from minseg.geo.idw import idw_brute_force, idw_nodes, interpolate
from minseg.io.geotiff import GridGeometry


def test_by_hand():
    points = np.array([[0.0, 0.0], [10.0, 0.0]])
    values = np.array([[1.0], [4.0]])
    # midway: equal weights; at x=2.5: weights 1/2.5^2 and 1/7.5^2 -> (9*1 + 1*4) / 10
    result = idw_nodes(points, values, np.array([[5.0, 0.0], [2.5, 0.0], [0.0, 0.0]]), power=2, neighbours=2)
    np.testing.assert_allclose(result[:, 0], [2.5, 1.3, 1.0])


def test_equals_brute_force_with_all_neighbours_and_with_k():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1000, (300, 2))
    values = rng.lognormal(size=(300, 3))
    nodes = rng.uniform(-50, 1050, (500, 2))
    np.testing.assert_allclose(idw_nodes(points, values, nodes, 2.0, 300), idw_brute_force(points, values, nodes, 2.0),
                               rtol=1e-10)
    # k nearest: brute force over the same k samples
    k = 7
    order = np.argsort(np.hypot(*(nodes[:, None, :] - points[None]).transpose(2, 0, 1)), axis=1)[:, :k]
    expected = np.array([idw_brute_force(points[o], values[o], node[None], 3.0)[0] for o, node in zip(order, nodes)])
    np.testing.assert_allclose(idw_nodes(points, values, nodes, 3.0, k), expected, rtol=1e-10)


def test_radius_leaves_far_nodes_empty():
    points = np.array([[0.0, 0.0]])
    result = idw_nodes(points, np.array([[2.0]]), np.array([[50.0, 0.0], [500.0, 0.0]]), 2, 5, radius=100)
    assert result[0, 0] == 2.0 and np.isnan(result[1, 0])
    # "ignore samples farther than radius_m": one exactly at the radius counts (scipy's bound is strict)
    at = idw_nodes(points, np.array([[2.0]]), np.array([[5.0, 0.0], [5.001, 0.0]]), 2, 5, radius=5.0)
    assert at[0, 0] == 2.0 and np.isnan(at[1, 0])


def test_grid_nodes_are_pixel_centres_and_samples_are_exact(ray_session):
    geometry = GridGeometry(x0=1000.0, y0=2000.0, pixel_width=10.0, pixel_height=10.0, rows=40, cols=30, epsg=3067)
    rng = np.random.default_rng(1)
    cols, rows = rng.integers(0, 30, 25), rng.integers(0, 40, 25)
    keep = np.unique(rows * 30 + cols, return_index=True)[1]
    cols, rows = cols[keep], rows[keep]
    x, y = 1000.0 + (cols + 0.5) * 10.0, 2000.0 - (rows + 0.5) * 10.0  # exactly on cell centres
    cu = rng.lognormal(size=len(x))
    zn = cu * 3
    zn[0] = np.nan  # Zn was not analysed at one sample: it interpolates from its own samples
    settings = IdwSettings(power=2, neighbours=len(x), log_transform=False, block=16)  # 3 x 2 blocks
    grids = interpolate(x, y, {"Cu": cu, "Zn": zn}, geometry, settings, task_cpus=0.25)
    assert grids["Cu"].dtype == np.float32 and grids["Cu"].shape == (40, 30)
    np.testing.assert_allclose(grids["Cu"][rows, cols], cu, rtol=1e-6)  # exact at samples
    xs, ys = geometry.pixel_centres()
    nodes = np.column_stack([g.ravel() for g in np.meshgrid(xs, ys)])
    expected = idw_brute_force(np.column_stack([x, y]), cu[:, None], nodes, 2.0).reshape(40, 30)
    np.testing.assert_allclose(grids["Cu"], expected, rtol=1e-5)
    expected_zn = idw_brute_force(np.column_stack([x, y])[1:], zn[1:, None], nodes, 2.0).reshape(40, 30)
    np.testing.assert_allclose(grids["Zn"], expected_zn, rtol=1e-5)
    # a half-pixel shift (corner nodes instead of centres) would not match
    shifted = idw_brute_force(np.column_stack([x, y]), cu[:, None], nodes + [5.0, -5.0], 2.0).reshape(40, 30)
    assert np.abs(grids["Cu"] - shifted).max() > 1e-2


def test_log_transform_and_an_element_with_no_values(ray_session):
    geometry = GridGeometry(0.0, 100.0, 10.0, 10.0, 10, 10, 3067)
    x, y = np.array([5.0, 95.0]), np.array([95.0, 5.0])
    grids = interpolate(x, y, {"Au": np.array([10.0, 1000.0]), "Hg": np.array([np.nan, np.nan])}, geometry,
                        IdwSettings(neighbours=2, log_transform=True))
    assert grids["Au"][0, 0] == pytest.approx(1.0) and grids["Au"][9, 9] == pytest.approx(3.0)
    assert np.isnan(grids["Hg"]).all()
