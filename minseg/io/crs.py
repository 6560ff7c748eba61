"""Coordinate reference systems as configs and files write them (``EPSG:3067``, a PROJ string, WKT), read by PROJ
(pyproj): one reader for config validation, the GeoTIFF writer and the prospectivity inputs."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import AfterValidator

from minseg.errors import InputError


def known_crs(crs: str | int):
    """``crs`` as a ``pyproj.CRS``.

    Raises:
        InputError: PROJ does not know it, with PROJ's reason (e.g. 'crs not found: EPSG:99999'); callers name the
            key or file (a config error adds the value)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        detail = str(exc).rsplit("proj_create: ", 1)[-1].rstrip(")")
        raise InputError(f"not a CRS that PROJ knows ({detail}); give e.g. EPSG:3067, a PROJ string or "
                         "WKT") from None


def epsg_code(crs: str | int) -> int:
    """'EPSG:3067' / 3067 / any CRS PROJ knows -> its EPSG code (pyproj's ``to_epsg``, 70 % confidence).

    Raises:
        InputError: a CRS PROJ does not know, or one without an EPSG code (GeoTIFFs minseg writes need one)."""
    code = known_crs(crs).to_epsg(min_confidence=70)
    if code is None:
        raise InputError("a CRS without an EPSG code: the GeoTIFFs minseg writes need one, e.g. EPSG:3067")
    return code


def grid_epsg_code(crs: str | int) -> int:
    """``epsg_code`` of a grid's CRS, which must be projected in metres (cell sizes, distances, radii and areas in
    km² are all read as metres) and be exactly that EPSG CRS (the GeoTIFFs written are labelled with the code).

    Raises:
        InputError: as ``epsg_code``; a geographic CRS (degrees) or a projected one in other units (US feet),
            naming its units."""
    found = known_crs(crs)
    if found.is_compound:
        horizontal = found.sub_crs_list[0].to_epsg(min_confidence=70)
        raise InputError("a compound CRS (a horizontal CRS with heights): give its horizontal part"
                         + (f", EPSG:{horizontal}" if horizontal else ""))
    code = epsg_code(found)  # the CRS parsed once
    units = {axis.unit_name for axis in found.axis_info}
    if not found.is_projected or len(found.axis_info) != 2 or units - {"metre", "meter"}:
        kind = "geographic" if found.is_geographic else ("projected" if found.is_projected else "3-D")
        raise InputError(f"a {kind} CRS (units: {', '.join(sorted(units)) or 'none'}): a grid needs a projected CRS in "
                         "metres (cell sizes, distances and areas are metres), e.g. the UTM zone of the area "
                         "(EPSG:326xx) or the national grid (EPSG:3067 in Finland)")
    from pyproj import CRS

    if not CRS.from_epsg(code).equals(found, ignore_axis_order=True):
        raise InputError(f"PROJ matches it to EPSG:{code} only approximately (another datum or other parameters): "
                         f"the maps would be computed in it but labelled EPSG:{code}, off by up to hundreds of metres "
                         "in a GIS; give the EPSG code of the CRS meant")
    return code


def _crs_text(text: str) -> str:
    known_crs(text)
    return text


def _grid_crs_text(text: str) -> str:
    grid_epsg_code(text)
    return text


CrsText = Annotated[str, AfterValidator(_crs_text)]
"""A CRS as the config gives it, checked against PROJ when validated (an error names the key)."""
GridCrsText = Annotated[str, AfterValidator(_grid_crs_text)]
"""A ``CrsText`` for a grid minseg builds: projected in metres, with an EPSG code (its GeoTIFFs record one)."""


def far_outside_area(crs: str | int, x: float, y: float, margin_deg: float = 10.0) -> str | None:
    """Where (``x``, ``y``) in ``crs`` lies when it is more than ``margin_deg`` outside the CRS's area of use, or
    None: coordinates of another CRS, or x and y swapped (a national grid's northing as its easting). A UTM zone
    used a few degrees beyond its band passes."""
    from pyproj import Transformer

    found = known_crs(crs)
    area = found.area_of_use
    if area is None:
        return None
    lon, lat = Transformer.from_crs(found, found.geodetic_crs, always_xy=True).transform(x, y)
    # longitudes on the circle: an area may cross the antimeridian (Fiji: west 176.8, east -178.4), and UTM zone 1
    # used just past it lies at 179°E
    width = (area.east - area.west) % 360 if area.east - area.west < 360 else 360
    past_west = (lon - area.west) % 360
    off_lon = 0.0 if past_west <= width else min(past_west - width, 360 - past_west)
    if np.isfinite(lon) and np.isfinite(lat) and off_lon <= margin_deg \
            and area.south - margin_deg <= lat <= area.north + margin_deg:
        return None
    at = "no place on Earth" if not (np.isfinite(lon) and np.isfinite(lat)) else f"{lat:.1f}°, {lon:.1f}°"
    return (f"({x:.0f}, {y:.0f}) is {at} in {found.name}, far outside its area ({area.name.split('. ')[0].rstrip('.')}: "
            f"{area.south:.1f}° to {area.north:.1f}° N, {area.west:.1f}° to {area.east:.1f}° E)")


def grid_scale_problem(crs: str | int, x: float, y: float, tolerance: float = 0.05) -> str | None:
    """Why a grid's metres at (``x``, ``y``) (its centre, in ``crs``) are not ground metres, or None: the
    projection's linear scale there (PROJ's meridional and parallel scale factors) off 1 by more than
    ``tolerance`` (Web Mercator at 65° N: 2.36, cells 2.4 times longer and km² 5.6 times larger on the map than on
    the ground; UTM within its zone: 0.9996-1.001)."""
    from pyproj import Proj, Transformer

    found = known_crs(crs)
    lon, lat = Transformer.from_crs(found, found.geodetic_crs, always_xy=True).transform(x, y)
    area = found.area_of_use
    if area is not None and not (area.west <= lon <= area.east and area.south <= lat <= area.north):
        return None  # outside the CRS's area: another CRS's coordinates, or x and y swapped (the samples' check says)
    factors = Proj(found).get_factors(lon, lat)
    scale = max(factors.meridional_scale, factors.parallel_scale, key=lambda f: abs(f - 1.0))
    if abs(scale - 1.0) <= tolerance:
        return None
    return (f"its projection's scale at the grid's centre ({lat:.1f}°, {lon:.1f}°) is {scale:.2f}: "
            f"{1 / scale:.2f} m of ground per metre of the map, so cell sizes, distances and km² would be off by "
            f"that much (Mercator away from the equator); use the area's UTM zone (EPSG:326xx) or national grid")

