"""Coordinate reference systems as configs and files write them (``EPSG:3067``, a PROJ string, WKT), read by PROJ
(pyproj): one reader for config validation, the GeoTIFF writer and the prospectivity inputs."""

from __future__ import annotations

from typing import Annotated

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


def _crs_text(text: str) -> str:
    known_crs(text)
    return text


def _epsg_crs_text(text: str) -> str:
    epsg_code(text)
    return text


CrsText = Annotated[str, AfterValidator(_crs_text)]
"""A CRS as the config gives it, checked against PROJ when validated (an error names the key)."""
EpsgCrsText = Annotated[str, AfterValidator(_epsg_crs_text)]
"""A ``CrsText`` that has an EPSG code (the CRS of a GeoTIFF minseg writes)."""
