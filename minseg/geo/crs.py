"""Coordinate reference systems, compared by meaning rather than by spelling.

An ESRI WKT of TM35FIN and ``EPSG:3067`` are the same CRS; a grid whose projection file
names no datum is not identifiable and needs its CRS from the config.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer

from minseg.errors import InputError
from minseg.geo.config import ProspectInputError
from minseg.io.crs import known_crs

_UNSPECIFIED_DATUM = ("not specified", "unknown", "not_specified")


def parse_crs(value, where: str) -> CRS:
    """``value`` (a CRS a file or the config gives) as a ``pyproj.CRS``.

    Raises:
        ProspectInputError: PROJ does not know it, naming ``where`` (``io.crs.known_crs``'s reason)."""
    try:
        return known_crs(value)
    except InputError as exc:
        raise ProspectInputError(f"{where}: CRS {str(value)[:80]!r}: {exc}") from None


def identifiable(crs: CRS | None) -> bool:
    """A CRS with a known datum (an ArcInfo grid's old projection file often has none)."""
    if crs is None:
        return False
    datum = (crs.datum.name if crs.datum else "").lower()
    return not any(word in datum for word in _UNSPECIFIED_DATUM)


def same_crs(a: CRS, b: CRS) -> bool:
    if a.equals(b, ignore_axis_order=True):
        return True
    code_a, code_b = a.to_epsg(min_confidence=70), b.to_epsg(min_confidence=70)
    return code_a is not None and code_a == code_b


def describe(crs: CRS | None) -> str:
    if crs is None:
        return "none"
    code = crs.to_epsg(min_confidence=70)
    return f"EPSG:{code}" if code else crs.name


def input_crs(recorded: CRS | None, configured: str | None, source: str, key: str) -> CRS:
    """The CRS to use for an input: the file's, or the config's where the file has none usable.

    ``key`` is the config key to name in the error (e.g. ``prospect.rasters[0].crs``).
    """
    if configured is not None:
        given = parse_crs(configured, key)
        if identifiable(recorded) and not same_crs(recorded, given):
            raise ProspectInputError(f"{source}: the file says its CRS is {describe(recorded)}, but {key} says "
                             f"{describe(given)}; remove {key} or fix the file")
        return given
    if recorded is None:
        raise ProspectInputError(f"{source}: the file records no CRS; give it in the config as {key}")
    if not identifiable(recorded):
        raise ProspectInputError(f"{source}: its CRS ({recorded.name!r}, datum {recorded.datum.name!r}) cannot be "
                         f"identified; give it in the config as {key}")
    return recorded


def to_working(x: np.ndarray, y: np.ndarray, source: CRS, working: CRS) -> tuple[np.ndarray, np.ndarray]:
    """Reproject coordinates into the working CRS (no-op when they are the same). A point that does not project
    (pyproj gives inf: a latitude beyond 90, metres read as degrees) comes back NaN, as a missing one does: callers
    report it like a point without coordinates (``unprojectable`` tells which)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if same_crs(source, working):
        return x, y
    transformer = Transformer.from_crs(source, working, always_xy=True)
    tx, ty = (np.asarray(v, np.float64) for v in transformer.transform(x, y))
    lost = ~(np.isfinite(tx) & np.isfinite(ty))
    return np.where(lost, np.nan, tx), np.where(lost, np.nan, ty)


def unprojectable(x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """Points given (finite ``x``, ``y``) that ``to_working`` could not project (NaN ``tx`` / ``ty``)."""
    return np.isfinite(x) & np.isfinite(y) & ~(np.isfinite(tx) & np.isfinite(ty))


def to_working_all(x: np.ndarray, y: np.ndarray, source: CRS, working: CRS,
                   name: str) -> tuple[np.ndarray, np.ndarray]:
    """``to_working`` for geometry that must project whole (lines, raster cells).

    Raises:
        ProspectInputError: a point that does not project, ``name`` (the file) named with the first of them."""
    tx, ty = to_working(x, y, source, working)
    lost = unprojectable(np.asarray(x, np.float64), np.asarray(y, np.float64), tx, ty)
    if lost.any():
        first = int(np.flatnonzero(lost)[0])
        raise ProspectInputError(
            f"{name}: {int(lost.sum())} of {lost.size} points cannot be projected from {describe(source)} to "
            f"{describe(working)} (the first: x={x[first]:g}, y={y[first]:g}); are they in {describe(source)}? Check "
            "the CRS the file records or the config gives")
    return tx, ty
