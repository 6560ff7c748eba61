"""Evidence layers on the target grid: gridded rasters (any GDAL format) and distance-to-line rasters.

Rasters are reprojected / resampled onto the target grid with GDAL (rasterio): nearest
for categorical layers (a lithology code is never averaged), bilinear by default for
continuous ones. Categorical layers become one-hot channels (the most frequent classes in
the study area, the rest in one 'other' channel) or one index channel.

Distance to lines is exact (metres from each pixel centre to the nearest line, shapely's
STRtree), computed in grid blocks as Ray tasks.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from minseg.enums import CategoricalEncoding, EvidenceKind, Resampling
from minseg.geo.config import EvidenceRaster, LineLayer, ProspectInputError, outside_prospect_output
from minseg.geo.crs import describe, input_crs, parse_crs
from minseg.geo.grid import affine, map_blocks
from minseg.io.geotiff import GridGeometry
from minseg.io.storage import ObjectNotFoundError, Storage
from minseg.logs import get_logger, log_event

log = get_logger("geo.rasters")


@contextlib.contextmanager
def local_raster(uri: str, storage: Storage):
    """A local path GDAL can open; an s3:// raster (or an ESRI grid folder prefix) is downloaded first."""
    try:  # GDAL keeps an external mask, statistics and nodata in files named after the raster
        with storage.local_copy(uri, companions=(".msk", ".aux.xml", ".ovr")) as path:
            yield path
    except ObjectNotFoundError:
        raise ProspectInputError(f"{uri}: no such file, folder or prefix") from None


@contextlib.contextmanager
def open_band(uri: str, band: int, crs: str | None, storage: Storage, key: str):
    """(open rasterio dataset, its CRS) of a raster whose ``band`` exists; the CRS is the file's or ``crs`` from the
    config (``<key>.crs``).

    Raises:
        ProspectInputError: no such file, not a readable raster, no such band, no usable CRS.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    with local_raster(uri, storage) as path:
        try:
            source = rasterio.open(path)
        except RasterioIOError as exc:
            raise ProspectInputError(f"{key}: {uri}: not a readable raster ({exc})") from None
        with source:
            if band > source.count:
                raise ProspectInputError(f"{key}.band: {uri} has {source.count} band(s)")
            recorded = parse_crs(source.crs.to_wkt(), uri) if source.crs else None
            yield source, input_crs(recorded, crs, uri, f"{key}.crs")


GDAL_SIDE_FILES = (".ovr", ".aux.xml", ".aux", ".msk", ".rrd", ".tfw", ".tifw", ".tiffw", ".wld", ".prj", ".hdr",
                   ".xml")


def expand_rasters(rasters: list[EvidenceRaster], storage: Storage,
                   output: str | None = None) -> list[tuple[int, EvidenceRaster]]:
    """(config index, layer) of the configured layers, each glob ``uri`` replaced by one layer per matched file,
    named after it (errors about a layer name its config entry and its file); a glob's matches among an earlier
    run's outputs in ``output`` are left out.

    Raises:
        ProspectInputError: a glob matching nothing, or two layers with one name.
    """
    import os
    import re

    from minseg.io.storage import glob_uris, has_glob

    layers = []
    for index, raster in enumerate(rasters):
        if not has_glob(raster.uri):
            layers.append((index, raster))
            continue
        # GDAL's side files (overviews, aux metadata, masks, world files) beside a raster are no layers of their own:
        # mag.tif.ovr, which GDAL also opens, would add a low-resolution copy of mag as another channel
        found = [uri for uri in glob_uris(raster.uri, storage) if not uri.lower().endswith(GDAL_SIDE_FILES)]
        # an earlier run's map and evidence rasters in the output are no layers (``outside_prospect_output``)
        found = outside_prospect_output(found, output, storage, raster.uri, f"prospect.rasters[{index}].uri")
        if not found:
            raise ProspectInputError(f"prospect.rasters[{index}].uri: {raster.uri!r} matched no files")
        for uri in found:
            stem = os.path.basename(uri.rstrip("/"))
            stem = re.sub(r"\.(tiff?|img|asc|vrt|nc|grd|bil|flt)$", "", stem, flags=re.IGNORECASE)
            name = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-") or f"layer{len(layers)}"
            layers.append((index, raster.model_copy(update={"uri": uri, "name": name})))
    names = [layer.name for _, layer in layers]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        files = [f"{layer.name}: {layer.uri}" for _, layer in layers if layer.name in twins]
        raise ProspectInputError(f"prospect.rasters: several layers named {', '.join(twins)} ({'; '.join(files)}); "
                                 "name them apart")
    return layers


def read_raster_on_grid(settings: EvidenceRaster, index: int, geometry: GridGeometry, working, storage: Storage,
                        study: np.ndarray | None = None, min_coverage: float = 0.0):
    """The raster's band on the target grid: (float64 array with NaN for nodata, report).

    The report (also one log line) says what was done: the source grid and cell size, where its CRS came from,
    the resampling method, and the share of the grid — and of ``study`` (a (rows, cols) bool mask of the study
    area), when given — the layer covers.

    Raises:
        ProspectInputError: unreadable, no such band, no overlap with the grid, or it covers less than
            ``min_coverage`` of the study area (``prospect.grid.min_layer_coverage``).
    """
    from rasterio.warp import Resampling as GdalResampling
    from rasterio.warp import reproject

    key = f"prospect.rasters[{index}]"
    categorical = settings.kind is EvidenceKind.CATEGORICAL
    resampling = settings.resampling or (Resampling.NEAREST if categorical else Resampling.BILINEAR)
    if categorical and resampling is not Resampling.NEAREST:
        raise ProspectInputError(f"{key}.resampling: a categorical layer must be resampled with 'nearest'")
    with open_band(settings.uri, settings.band, settings.crs, storage, key) as (source, crs):
        # GDAL's mask says which cells are valid however the file encodes it: a nodata value, an
        # internal or external mask band, an alpha band; NaN cells of float data are invalid too
        # a configured nodata replaces the file's (which can be a valid code, e.g. lithology class 0)
        from rasterio.enums import MaskFlags

        flags = set(source.mask_flag_enums[settings.band - 1])
        band = source.read(settings.band).astype(np.float64)
        if settings.nodata is not None:
            band[band == settings.nodata] = np.nan
        elif source.nodata is not None:
            band[band == source.nodata] = np.nan
        if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:  # a mask band (or byte alpha)
            band[source.read_masks(settings.band) == 0] = np.nan
        alpha = _alpha_band(source, settings.band)
        if alpha is not None:  # GDAL derives masks from alpha only for byte data: a float layer's alpha too
            band[source.read(alpha) == 0] = np.nan
        validity = _validity(source, settings)
        band[~np.isfinite(band)] = np.nan  # an inf is no value either: bilinear resampling would spread it
        missing = int((~np.isfinite(band)).sum())
        destination = np.full((geometry.rows, geometry.cols), np.nan)
        reproject(band, destination, src_transform=source.transform, src_crs=crs.to_wkt(), src_nodata=np.nan,
                  dst_transform=affine(geometry), dst_crs=working.to_wkt(), dst_nodata=np.nan,
                  resampling=getattr(GdalResampling, resampling.value))
        report = {"file": settings.uri, "driver": source.driver, "source_shape": list(source.shape),
                  "source_cell": list(source.res), "crs_from": "config" if settings.crs else "file",
                  "resampling": resampling.value, "validity_from": validity,
                  "missing_source_cells": missing, "missing_grid_cells": int((~np.isfinite(destination)).sum()),
                  "covered_fraction": round(float(np.isfinite(destination).mean()), 4)}
        bounds = tuple(round(float(b), 6) for b in source.bounds)
    if missing == band.size:  # said before "does not overlap": that would send the user to its CRS
        raise ProspectInputError(f"{key}: {settings.uri} has no valid cell (every cell is nodata or masked: "
                                 f"{report['validity_from']})")
    if not np.isfinite(destination).any():
        raise ProspectInputError(f"{key}: {settings.uri} does not overlap the target grid "
                                 f"(bounds {geometry.bounds}; the raster's: {bounds} in {describe(crs)}); check its CRS")
    # a categorical layer's missing cells are "no unit mapped" (every one-hot channel 0), not unknown: a map of
    # one unit (granite only) is partial on purpose, so only continuous layers must cover the study area
    if study is not None and study.any() and settings.kind is not EvidenceKind.CATEGORICAL:
        covered = float(np.isfinite(destination)[study].mean())
        report["study_covered_fraction"] = round(covered, 4)
        if covered < min_coverage:
            raise ProspectInputError(
                f"{key} ({settings.name}): {settings.uri} covers {covered:.1%} of the study area, less than "
                f"prospect.grid.min_layer_coverage ({min_coverage:.0%}); check its extent and CRS (source cell "
                f"{report['source_cell']}, {report['source_shape'][0]}x{report['source_shape'][1]} cells), or lower "
                "the share to use it")
        if covered < NARROWS:  # allowed, but the map (and the deposits scored) shrink to what it covers: said
            log_event(log, "prospect.layer_narrows_study", logging.WARNING, layer=settings.name, file=settings.uri,
                      study_covered=round(covered, 4),
                      hint=f"the study area keeps only the {covered:.0%} of its cells this layer covers (deposits "
                           "outside it leave the training and the rates); check its extent and its nodata cells, or "
                           "leave it out")
    log_event(log, "prospect.layer_resampled", layer=settings.name, file=settings.uri,
              source=f"{report['source_shape'][0]}x{report['source_shape'][1]}",
              source_cell="x".join(f"{c:g}" for c in report["source_cell"]),
              target_cell=f"{geometry.pixel_width:g}x{geometry.pixel_height:g}", crs_from=report["crs_from"],
              method=report["resampling"], grid_covered=report["covered_fraction"],
              study_covered=report.get("study_covered_fraction"))
    return destination, report


#: a layer covering less of the study area than this (yet at least ``min_layer_coverage``) is warned about
NARROWS = 0.99


def _alpha_band(source, band: int) -> int | None:
    """The 1-based index of the raster's alpha band (if it has one other than ``band``)."""
    from rasterio.enums import ColorInterp

    return next((i + 1 for i, c in enumerate(source.colorinterp) if c == ColorInterp.alpha and i + 1 != band), None)


def _validity(source, settings: EvidenceRaster) -> str:
    """How the raster says which cells are valid (for the run report)."""
    from rasterio.enums import MaskFlags

    flags = set(source.mask_flag_enums[settings.band - 1])
    found = [name for flag, name in ((MaskFlags.nodata, "nodata value"), (MaskFlags.per_dataset, "mask band"),
                                     (MaskFlags.alpha, "alpha band")) if flag in flags]
    if settings.nodata is not None:
        found = [name for name in found if name != "nodata value"]  # the file's is replaced by the config's
    if _alpha_band(source, settings.band) is not None:
        found = [name for name in found if name != "mask band"]  # GDAL reports a byte alpha as a per-dataset mask
        found += [] if "alpha band" in found else ["alpha band"]
    if settings.nodata is not None:
        found.insert(0, "nodata value from the config")
    return ", ".join(found) or "every cell valid"


def encode_categorical(values: np.ndarray, settings: EvidenceRaster, study: np.ndarray | None = None):
    """Channels (name, float32 array) of a categorical layer; NaN stays NaN in every channel.

    Raises:
        ProspectInputError: a value that is not a whole number (a class code cast to an integer would merge 1.2 and
            1.7 into class 1; a continuous layer declared categorical)."""
    valid = np.isfinite(values)
    fractional = valid & (values != np.round(values))
    if fractional.any():
        shown = ", ".join(f"{v:g}" for v in np.unique(values[fractional])[:5])
        raise ProspectInputError(
            f"raster {settings.name!r} ({settings.uri}): declared kind: categorical, but {int(fractional.sum())} of "
            f"its cells on the grid hold values that are not whole numbers ({shown}, ...): class codes must be "
            "integers. Declare it continuous or recode its classes")
    codes = np.where(valid, values, -1).astype(np.int64)
    if settings.encoding is CategoricalEncoding.INDEX:
        top = max(1, int(codes.max()))
        return [(settings.name, np.where(valid, codes / top, np.nan).astype(np.float32))], {}
    area = valid if study is None else valid & study
    classes, counts = np.unique(codes[area], return_counts=True)
    order = classes[np.argsort(-counts, kind="stable")]
    kept = [int(c) for c in order[: settings.max_classes]]
    channels = []
    for code in kept:
        channels.append((f"{settings.name}={code}", np.where(valid, codes == code, np.nan).astype(np.float32)))
    if len(order) > len(kept):
        other = valid & ~np.isin(codes, kept)
        channels.append((f"{settings.name}=other", np.where(valid, other, np.nan).astype(np.float32)))
    return channels, {"classes": len(order), "one_hot": kept, "other": len(order) > len(kept)}


# -- distance to lines ---------------------------------------------------------------


def _distance_block(geometry: GridGeometry, bounds, lines_wkb: list[bytes], max_distance):
    import shapely

    row0, row1, col0, col1 = bounds
    tree = shapely.STRtree(shapely.from_wkb(lines_wkb))
    xs, ys = geometry.pixel_centres()
    grid_x, grid_y = np.meshgrid(xs[col0:col1], ys[row0:row1])
    points = shapely.points(grid_x.ravel(), grid_y.ravel())
    distance = np.full(len(points), np.inf if max_distance is None else float(max_distance))
    found, nearest = tree.query_nearest(points, return_distance=True, all_matches=False,
                                        max_distance=max_distance)
    distance[found[0]] = nearest
    return bounds, distance.reshape(row1 - row0, col1 - col0).astype(np.float32)


def distance_to_lines(lines: list[np.ndarray], geometry: GridGeometry, settings: LineLayer,
                      block: int = 256, task_cpus: float = 0.5) -> np.ndarray:
    """(rows, cols) float32 metres from each pixel centre to the nearest line (clipped at max_distance_m)."""
    import ray
    import shapely

    wkb = ray.put([shapely.to_wkb(shapely.linestrings(line)) for line in lines if len(line) >= 2])
    result = np.empty((geometry.rows, geometry.cols), np.float32)
    for (row0, row1, col0, col1), values in map_blocks(_distance_block, geometry, block, task_cpus, wkb,
                                                       settings.max_distance_m):
        result[row0:row1, col0:col1] = values
    return result


def raster_geometry(uri: str, storage: Storage, crs_override: str | None = None) -> GridGeometry:
    """The grid of a reference raster (north-up only)."""
    import rasterio

    with local_raster(uri, storage) as path, rasterio.open(path) as source:
        transform = source.transform
        if transform.b != 0 or transform.d != 0:
            raise ProspectInputError(f"prospect.grid.reference: {uri} is rotated; only north-up grids are supported")
        recorded = parse_crs(source.crs.to_wkt(), uri) if source.crs else None
        crs = input_crs(recorded, crs_override, uri, "prospect.grid.crs")
        return GridGeometry(transform.c, transform.f, transform.a, -transform.e, source.height, source.width,
                            crs.to_epsg(min_confidence=70))
