"""The target grid every input is aligned to (pixel-centre nodes, north-up)."""

from __future__ import annotations


import numpy as np

from minseg.errors import InputError
from minseg.geo.config import GridSettings, ProspectInputError, grid_shape
from minseg.io.crs import far_outside_area, grid_epsg_code, grid_scale_problem
from minseg.io.geotiff import GridGeometry


def target_grid(settings: GridSettings, sample_bounds: tuple[float, float, float, float] | None,
                reference: GridGeometry | None = None) -> GridGeometry:
    """From an explicit extent, else the reference raster's, else the samples' bounds plus ``buffer_m`` (default
    half a cell, which keeps every sample inside: a cell holds its top and left edges, not its bottom and right).

    The extent is snapped outwards to whole cells; a reference raster's own grid is used
    as is when neither extent nor cell size is given.
    """
    try:
        epsg = grid_epsg_code(settings.crs)  # the config checked it (GridCrsText); settings built otherwise are not
    except InputError as exc:
        raise ProspectInputError(f"prospect.grid.crs: {settings.crs!r}: {exc}") from None
    if reference is not None and settings.extent is None and settings.cell_m is None:
        width, height = reference.cols * reference.pixel_width, reference.rows * reference.pixel_height
        if problem := settings.size_problem(width, height, reference.pixel_width, reference.pixel_height):
            raise ProspectInputError(f"prospect.grid.reference: {settings.reference}: {problem}")
        return _ground_metres(settings, GridGeometry(reference.x0, reference.y0, reference.pixel_width,
                                                     reference.pixel_height, reference.rows, reference.cols, epsg),
                              "the reference raster's extent")
    cell = settings.cell_m or reference.pixel_width
    if settings.extent is not None:
        xmin, ymin, xmax, ymax = settings.extent
    elif reference is not None:
        xmin, ymin, xmax, ymax = reference.bounds
    elif sample_bounds is not None:
        buffer = cell / 2 if settings.buffer_m is None else settings.buffer_m
        xmin, ymin, xmax, ymax = sample_bounds
        xmin, ymin, xmax, ymax = xmin - buffer, ymin - buffer, xmax + buffer, ymax + buffer
    else:
        raise ProspectInputError("prospect.grid: no extent, reference raster or samples to take the extent from")
    if problem := settings.size_problem(xmax - xmin, ymax - ymin, cell):  # samples' bounds or a reference raster's
        raise ProspectInputError(f"prospect.grid: {problem}")
    rows, cols = grid_shape(xmax - xmin, ymax - ymin, cell)
    source = ("prospect.grid.extent" if settings.extent is not None else "the reference raster's extent"
              if reference is not None else "the samples' bounds")
    return _ground_metres(settings, GridGeometry(float(xmin), float(ymin + rows * cell), cell, cell, rows, cols, epsg),
                          source)


def _ground_metres(settings: GridSettings, geometry: GridGeometry, source: str) -> GridGeometry:
    """``geometry``, once it lies where its CRS is used (``far_outside_area``: else the layers' "does not overlap"
    would blame a raster's CRS) and its CRS's metres are ground metres at its centre (``grid_scale_problem``).
    ``source``: what the extent came from."""
    xmin, ymin, xmax, ymax = geometry.bounds
    if where := far_outside_area(settings.crs, (xmin + xmax) / 2, (ymin + ymax) / 2):
        hint = ("are prospect.samples.x and y swapped, or the samples in another CRS than prospect.samples.crs?"
                if source == "the samples' bounds" else f"is it in {settings.crs} (prospect.grid.crs)?")
        raise ProspectInputError(f"prospect.grid: {source} centres on {where}: {hint}")
    if problem := grid_scale_problem(settings.crs, (xmin + xmax) / 2, (ymin + ymax) / 2):
        raise ProspectInputError(f"prospect.grid.crs: {settings.crs}: {problem}")
    return geometry


def world_to_cell(geometry: GridGeometry, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, inside) of points; a point on a cell's left/top edge belongs to that cell."""
    cols = np.floor((np.asarray(x) - geometry.x0) / geometry.pixel_width).astype(np.int64)
    rows = np.floor((geometry.y0 - np.asarray(y)) / geometry.pixel_height).astype(np.int64)
    inside = (rows >= 0) & (rows < geometry.rows) & (cols >= 0) & (cols < geometry.cols)
    return rows, cols, inside


def affine(geometry: GridGeometry):
    """The grid's transform as GDAL / rasterio take it."""
    from affine import Affine

    return Affine(geometry.pixel_width, 0.0, geometry.x0, 0.0, -geometry.pixel_height, geometry.y0)


def map_blocks(task, geometry: GridGeometry, block: int, task_cpus: float, *args):
    """Run ``task(geometry, (row0, row1, col0, col1), *args)`` on every ``block``-square of the grid as a Ray
    task; yields ``(bounds, result)`` as tasks finish (any order). Large ``args`` should be object refs."""
    import ray

    remote = ray.remote(num_cpus=task_cpus)(task)
    pending = [remote.remote(geometry, (r, min(r + block, geometry.rows), c, min(c + block, geometry.cols)), *args)
               for r in range(0, geometry.rows, block) for c in range(0, geometry.cols, block)]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
