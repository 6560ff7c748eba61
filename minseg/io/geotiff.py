"""GeoTIFF read/write through tifffile (no GDAL needed): north-up grids, EPSG CRS.

Georeferencing uses ModelPixelScale + ModelTiepoint (upper-left corner of the
upper-left pixel, PixelIsArea) and a GeoKey directory naming the EPSG code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import tifffile

from minseg.io.storage import Storage

_PIXEL_SCALE, _TIEPOINT, _GEOKEYS, _GDAL_NODATA = 33550, 33922, 34735, 42113
_GT_MODEL_TYPE, _GT_RASTER_TYPE, _GEOGRAPHIC_TYPE, _PROJECTED_CS_TYPE = 1024, 1025, 2048, 3072


@dataclass(frozen=True)
class GridGeometry:
    """A north-up grid: upper-left corner (x0, y0), square-or-not pixel size, shape, CRS."""

    x0: float
    y0: float
    pixel_width: float
    pixel_height: float
    rows: int
    cols: int
    epsg: int | None

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL-style geotransform (x0, dx, 0, y0, 0, -dy)."""
        return (self.x0, self.pixel_width, 0.0, self.y0, 0.0, -self.pixel_height)

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """X of column centres and Y of row centres."""
        xs = self.x0 + (np.arange(self.cols) + 0.5) * self.pixel_width
        ys = self.y0 - (np.arange(self.rows) + 0.5) * self.pixel_height
        return xs, ys

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax)."""
        return (self.x0, self.y0 - self.rows * self.pixel_height, self.x0 + self.cols * self.pixel_width, self.y0)


def write_geotiff(
    uri: str,
    array: np.ndarray,
    geometry: GridGeometry,
    nodata: float | None = None,
    description: str | None = None,
    storage: Storage | None = None,
) -> None:
    """Write a (rows, cols) or (bands, rows, cols) array atomically to a path or s3:// URI."""
    from pyproj import CRS

    storage = storage or Storage()
    if array.shape[-2:] != (geometry.rows, geometry.cols):
        raise ValueError(f"array shape {array.shape} does not match the grid {geometry.rows}x{geometry.cols}")
    keys = [1, 1, 0, 0]
    if geometry.epsg is not None:
        geographic = CRS.from_epsg(geometry.epsg).is_geographic
        keys += [_GT_MODEL_TYPE, 0, 1, 2 if geographic else 1, _GT_RASTER_TYPE, 0, 1, 1]
        keys += [_GEOGRAPHIC_TYPE if geographic else _PROJECTED_CS_TYPE, 0, 1, geometry.epsg]
    keys[3] = (len(keys) - 4) // 4
    tags = [
        (_PIXEL_SCALE, "d", 3, (geometry.pixel_width, geometry.pixel_height, 0.0), True),
        (_TIEPOINT, "d", 6, (0.0, 0.0, 0.0, geometry.x0, geometry.y0, 0.0), True),
        (_GEOKEYS, "H", len(keys), tuple(keys), True),
    ]
    if nodata is not None:
        tags.append((_GDAL_NODATA, "s", 0, repr(float(nodata)) if not float(nodata).is_integer() else str(int(nodata)), True))
    with storage.staged_output(uri, ".tif") as path:
        tile = 256 if min(geometry.rows, geometry.cols) >= 256 else None
        planar = array.ndim == 3
        tifffile.imwrite(
            path,
            array,
            extratags=tags,
            compression="zlib",
            tile=(tile, tile) if tile else None,
            photometric="minisblack",
            planarconfig="separate" if planar else None,
            description=description,
            metadata=None,
        )


def read_geotiff(uri: str, storage: Storage | None = None) -> tuple[np.ndarray, GridGeometry, float | None]:
    """Read a north-up GeoTIFF: (array, geometry, nodata). CRS is None when not recorded."""
    storage = storage or Storage()
    data = storage.read_bytes(uri)
    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        page = tiff.pages[0]
        tags = page.tags
        if _PIXEL_SCALE not in tags or _TIEPOINT not in tags:
            raise ValueError(f"{uri}: not a GeoTIFF (no pixel scale / tiepoint tags)")
        scale = tags[_PIXEL_SCALE].value
        tie = tags[_TIEPOINT].value
        epsg = None
        if _GEOKEYS in tags:
            keys = tags[_GEOKEYS].value
            for index in range(4, 4 + 4 * keys[3], 4):
                key_id, location, _, value = keys[index : index + 4]
                if key_id in (_PROJECTED_CS_TYPE, _GEOGRAPHIC_TYPE) and location == 0 and value not in (0, 32767):
                    epsg = int(value)
        nodata = float(tags[_GDAL_NODATA].value) if _GDAL_NODATA in tags else None
        array = tiff.asarray()
    rows, cols = array.shape[-2:]
    x0 = tie[3] - tie[0] * scale[0]
    y0 = tie[4] + tie[1] * scale[1]
    return array, GridGeometry(x0, y0, float(scale[0]), float(scale[1]), rows, cols, epsg), nodata
