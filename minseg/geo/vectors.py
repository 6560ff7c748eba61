"""Point and line layers (deposits, faults): shapefile, GeoPackage, GeoJSON or CSV, in the working CRS."""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from minseg.geo.config import CellLayer, LineLayer, PointLayer, ProspectInputError, first_line
from minseg.geo.crs import describe, input_crs, parse_crs, to_working, to_working_all, unprojectable
from minseg.geo.points import point_coordinates
from minseg.geo.samples import (as_float, comma_hint, csv_delimiter, csv_problem_row, local_vector, one_layer,
                                refuse_ambiguous, separator_hint)
from minseg.io.storage import Storage
from minseg.logs import get_logger, log_event

log = get_logger("geo.vectors")


@dataclass
class Points:
    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, mask: np.ndarray) -> "Points":
        return Points(self.ids[mask], self.x[mask], self.y[mask], dict(self.report))


def _read_table(uri: str, layer: str | None, storage: Storage, key: str, needed: set[str],
                delimiter: str | None = None):
    """(pyarrow table, geometry WKB array or None, recorded CRS or None); a ``needed`` column the header gives twice
    is refused (``samples.refuse_ambiguous``), one missing from a CSV whose header reads as one column names the
    separator it seems to use."""
    if uri.lower().endswith((".csv", ".txt", ".tsv")):
        import io

        import pyarrow as pa
        import pyarrow.csv as pacsv

        data = storage.read_bytes(uri)
        parse = pacsv.ParseOptions(delimiter=csv_delimiter(uri, delimiter))
        header = data[:1 << 16].split(b"\n", 1)[0].decode("utf-8", "replace")
        try:  # every column as text, parsed by us: no type guessed from the first rows
            names = pacsv.open_csv(io.BytesIO(data), parse_options=parse).schema.names
            table = pacsv.read_csv(io.BytesIO(data), parse_options=parse, convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names}))
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            where = csv_problem_row(uri, csv_delimiter(uri, delimiter), storage, data)
            raise ProspectInputError(f"{key}: {uri}: cannot be read as a csv table{f': {where}' if where else ''} "
                                     f"({first_line(exc)}){separator_hint(header, delimiter, key)}") from None
        if not table.num_rows:
            raise ProspectInputError(f"{key}: {uri}: holds no rows")
        refuse_ambiguous(uri, names, needed - {None}, key)
        missing = sorted(needed - {None} - set(names))
        if missing and len(names) == 1:  # said here, with the separator: the callers name one column
            raise ProspectInputError(f"{key}: {uri} has no column {missing[0]!r}"
                                     f"{separator_hint(header, delimiter, key)}")
        return table, None, None
    import pyogrio

    try:
        with local_vector(uri, storage) as path:
            one_layer(path, layer, uri, key)
            meta, table = pyogrio.read_arrow(path, layer=layer)
    except FileNotFoundError:
        raise ProspectInputError(f"{key}: {uri}: no such file") from None
    except ProspectInputError:
        raise
    except Exception as exc:
        raise ProspectInputError(f"{key}: {uri}: cannot be read as a vector file ({exc})") from None
    if not table.num_rows:  # before a column check says "no column 'type'" of an empty layer
        raise ProspectInputError(f"{key}: {uri}: holds no features")
    geometry_name = meta.get("geometry_name") or "wkb_geometry"
    wkb = table.column(geometry_name).to_numpy(zero_copy_only=False) if geometry_name in table.column_names else None
    recorded = parse_crs(meta["crs"], uri) if meta.get("crs") else None
    return table, wkb, recorded


def _filter(table, where: dict[str, str], uri: str, key: str) -> np.ndarray:
    keep = np.ones(table.num_rows, bool)
    for column, pattern in where.items():
        if column not in table.column_names:
            raise ProspectInputError(f"{key}.where: {uri} has no column {column!r}; it has: "
                                   f"{', '.join(table.column_names)}")
        regex = re.compile(pattern, re.IGNORECASE)
        text = table.column(column).to_pandas().astype("string").fillna("")
        keep &= np.array([bool(regex.search(value)) for value in text], bool)
    return keep


def read_points(settings: PointLayer, working, storage: Storage, key: str = "prospect.deposits") -> Points:
    table, wkb, recorded = _read_table(settings.uri, settings.layer, storage, key,
                                       {settings.x, settings.y, settings.id, *settings.where}, settings.delimiter)
    crs = input_crs(recorded, settings.crs, settings.uri, f"{key}.crs")
    keep = _filter(table, settings.where, settings.uri, key)
    if settings.x is not None:
        for column in (settings.x, settings.y):
            if column not in table.column_names:
                raise ProspectInputError(f"{key}: {settings.uri} has no column {column!r}")
        x, y = (as_float(table.column(column), settings.decimal)[0] for column in (settings.x, settings.y))
    else:
        import shapely

        if wkb is None:
            raise ProspectInputError(f"{key}: {settings.uri} has no geometry; give {key}.x and {key}.y")
        # only the features the filter keeps must be points: a Pb-Zn polygon left out by `where` refused them all
        geometry = shapely.from_wkb(wkb)
        geometry[~keep] = None
        x, y = point_coordinates(geometry, settings.uri, key)
    if settings.id and settings.id not in table.column_names:
        raise ProspectInputError(f"{key}.id: {settings.uri} has no column {settings.id!r}")
    ids = (table.column(settings.id).to_pandas().astype(str).to_numpy(object) if settings.id
           else np.array([str(i + 1) for i in range(table.num_rows)], object))
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    tx, ty = to_working(x, y, crs, working)
    lost = unprojectable(x, y, tx, ty)
    if lost.any():  # reported with the unlocated (their coordinates do not exist in the declared CRS)
        log_event(log, "prospect.points_not_projectable", logging.WARNING, file=settings.uri, count=int(lost.sum()),
                  crs=describe(crs), ids=",".join(str(i) for i in np.asarray(ids, object)[lost][:20]))
    located = np.isfinite(tx) & np.isfinite(ty)
    x, y = tx, ty
    points = Points(ids, x, y).subset(keep & located)
    unlocated = [str(i) for i in ids[keep & ~located]]
    points.report = {"file": settings.uri, "features": int(table.num_rows), "kept": len(points),
                     "filtered_out": int((~keep).sum()), "where": dict(settings.where),
                     "without_coordinates": unlocated}
    unread = keep & ~located & ~lost  # the unprojectable are warned above: once each
    if unread.any():  # reported (summary.json), never silently left out
        texts = ([{"value": str(table.column(column)[int(row)])} for row in np.flatnonzero(unread)[:20]
                  for column in (settings.x, settings.y)] if settings.x is not None else [])
        hint = comma_hint(texts, key).strip()  # '380000,5': the file's decimal mark, not missing coordinates
        log_event(log, "prospect.points_without_coordinates", logging.WARNING, file=settings.uri,
                  count=int(unread.sum()), ids=",".join(str(i) for i in ids[unread][:20]),
                  **({"hint": hint} if hint else {}))
    # an id several sites share (a name used twice, a typed-over id): outputs listing sites by id would be ambiguous
    names, counts = np.unique(np.asarray(points.ids, str), return_counts=True)
    points.report["repeated_ids"] = names[counts > 1].tolist()
    if points.report["repeated_ids"]:
        log_event(log, "prospect.points_repeated_ids", logging.WARNING, file=settings.uri,
                  ids=",".join(points.report["repeated_ids"][:20]))
    return points



def read_cells(settings: CellLayer, working, storage: Storage, key: str) -> Points:
    """Sites at the centres of a raster's marked cells (value neither 0 nor nodata), in the working CRS.

    Ids are ``r<row>c<col>`` of the source raster (0-based). Raises ProspectInputError: unreadable raster, no such
    band, or no marked cell.
    """
    import rasterio

    from minseg.geo.rasters import open_band

    with open_band(settings.raster, settings.band, settings.crs, storage, key) as (source, crs):
        band = source.read(settings.band)
        valid = source.read_masks(settings.band) > 0 if settings.nodata is None else band != settings.nodata
        marked = valid & (band != 0) & ~np.isnan(band.astype(np.float64))
        rows, cols = np.nonzero(marked)
        x, y = rasterio.transform.xy(source.transform, rows, cols, offset="center")
        values = np.unique(band[marked])
    if not len(rows):
        raise ProspectInputError(f"{key}: {settings.raster} marks no cell (every cell is 0 or nodata)")
    x, y = to_working_all(np.asarray(x, np.float64), np.asarray(y, np.float64), crs, working, settings.raster)
    ids = np.array([f"r{r}c{c}" for r, c in zip(rows, cols)], object)
    points = Points(ids, x, y)
    points.report = {"file": settings.raster, "marked_cells": len(points), "values": values[:10].tolist(),
                     "without_coordinates": []}
    log_event(log, "prospect.sites_from_raster", key=key, file=settings.raster, cells=len(points),
              values=",".join(f"{v:g}" for v in values[:10]))
    return points


def read_sites(settings: PointLayer | CellLayer, working, storage: Storage, key: str) -> Points:
    """Deposits or barren sites: points from a vector file / CSV, or the centres of a raster's marked cells."""
    if isinstance(settings, CellLayer):
        return read_cells(settings, working, storage, key)
    return read_points(settings, working, storage, key)


def read_lines(settings: LineLayer, working, storage: Storage, key: str) -> list[np.ndarray]:
    """Each line as an (n, 2) array of vertices in the working CRS (multi-lines split into parts)."""
    import shapely

    table, wkb, recorded = _read_table(settings.uri, settings.layer, storage, key, set(settings.where))
    if wkb is None:
        raise ProspectInputError(f"{key}: {settings.uri} has no geometry")
    crs = input_crs(recorded, settings.crs, settings.uri, f"{key}.crs")
    geometry = shapely.from_wkb(wkb)[_filter(table, settings.where, settings.uri, key)]
    parts = shapely.get_parts(geometry)
    present = [part for part in parts if part is not None and not part.is_empty]
    others = Counter(part.geom_type for part in present if shapely.get_type_id(part) not in (1, 2))
    if others and sum(others.values()) < len(present):  # mixed: leaving the others out would drop faults unsaid
        raise ProspectInputError(
            f"{key}: {settings.uri}: {sum(others.values())} of {len(present)} geometries are not lines "
            f"({', '.join(f'{n} {name}' for name, n in others.items())}); distances are measured to lines only: "
            "convert them (e.g. polygons to their boundaries) or leave them out with a where filter")
    lines = []
    for part in parts:
        if part is None or part.is_empty or shapely.get_type_id(part) not in (1, 2):
            continue
        coords = np.asarray(part.coords)[:, :2]
        x, y = to_working_all(coords[:, 0], coords[:, 1], crs, working, settings.uri)
        lines.append(np.column_stack([x, y]))
    if not lines:
        raise ProspectInputError(f"{key}: {settings.uri}: no line geometries (after filtering)")
    return lines
