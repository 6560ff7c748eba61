"""Point geometries as coordinates: what sample tables and deposit layers accept as a point."""

from __future__ import annotations

import numpy as np

from minseg.geo.config import ProspectInputError

_TYPE_NAMES = {0: "Point", 1: "LineString", 2: "LinearRing", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
               6: "MultiPolygon", 7: "GeometryCollection"}


def point_coordinates(geometry, where: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of point geometries; a single-part MultiPoint is its point; empty or missing -> NaN.

    Raises:
        ProspectInputError: multi-part points or other geometry types, naming how many and what to do.
    """
    import shapely

    types = shapely.get_type_id(geometry)
    parts = shapely.get_num_geometries(geometry)
    multi = (types == 4) & (parts > 1)
    if multi.any():
        first = int(np.flatnonzero(multi)[0]) + 1
        raise ProspectInputError(
            f"{key}: {where}: {int(multi.sum())} feature(s) are multi-part MultiPoints (the first is feature "
            f"{first}, with {int(parts[multi][0])} points); make each point its own feature (e.g. `ogr2ogr "
            "-explodecollections`) or give x / y columns")
    other = ~np.isin(types, (-1, 0, 4))
    if other.any():
        names = sorted({_TYPE_NAMES.get(int(t), str(t)) for t in types[other]})
        raise ProspectInputError(f"{key}: {where}: expected points, found {int(other.sum())} {', '.join(names)} "
                                 "feature(s); use their centroids or points (docs/prospectivity.md)")
    single = np.where(types == 4, shapely.get_geometry(geometry, 0), geometry)  # a 1-part MultiPoint is its part
    point = shapely.get_type_id(single) == 0
    return np.where(point, shapely.get_x(single), np.nan), np.where(point, shapely.get_y(single), np.nan)
