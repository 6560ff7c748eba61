"""Geochemical sample tables → clean numeric samples in the working CRS, with a report.

Tables stream through Ray Data in read units (a CSV file, a Parquet row group, a slice
of a vector file's features), each parsed batch by batch, so millions of rows never sit
in one task's memory as text. Each cell becomes a raw number and a code:

- ``OK``: a number; ``FLAGGED``: a number with a qualifier that is not a censoring flag
  (kept, counted); ``OVER``: ``>X`` (kept as X, counted);
- ``CENSORED``: ``<X``, a censoring flag in the qualifier column, or (by default) a
  value <= 0; the raw number is the detection limit, NaN when the cell carries none
  (``NEGATIVE``: a censored value that was written below 0, counted apart: a lost sign
  reads the same, and the run warns);
- ``MISSING``: empty or a missing marker; ``SENTINEL``: a number the lab writes for
  "not analysed" (``missing_values``, e.g. -9999): missing too, and each one reported;
  ``BAD``: anything else, an infinite number in a numeric (Parquet, GeoPackage) column
  included (reported with file, row, sample id, column and the text; never a silent zero).
- With ``negative_is_limit``, ``-X`` is a lab's way of writing ``<X``: censored at limit X.

Whatever the policy, a substituted censored value never exceeds its own detection limit.

The driver then substitutes censored values (half the limit by default), fills unknown
limits (config, else the element's smallest uncensored value, reported as assumed),
merges duplicate sites and writes the problem rows to the report.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from minseg.enums import BadValue, CensoredValue, DuplicateSites, UnknownLimit
from minseg.geo.config import ProspectInputError, SampleTable, first_line, outside_prospect_output
from minseg.geo.crs import describe, input_crs, parse_crs, to_working, unprojectable
from minseg.geo.points import point_coordinates
from minseg.io.storage import Storage, StorageError, glob_uris, has_glob, is_s3
from minseg.runtime import ray_data_errors_raised_not_logged, task_options

# what a corrupt or foreign file raises while parsing (csv / parquet / gzip)
_UNREADABLE = (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, zlib.error, EOFError, OSError)

OK, FLAGGED, OVER, CENSORED, MISSING, BAD, SENTINEL, NEGATIVE = 0, 1, 2, 3, 4, 5, 6, 7
CODE_NAMES = {OK: "ok", FLAGGED: "flagged", OVER: "over_range", CENSORED: "censored", MISSING: "missing", BAD: "bad",
              SENTINEL: "missing_sentinel", NEGATIVE: "negative_censored"}
CENSORED_CODES = (CENSORED, NEGATIVE)

TABLE_FORMATS = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".csv.gz": "csv", ".parquet": "parquet",
                 ".pq": "parquet", ".gpkg": "vector", ".shp": "vector", ".geojson": "vector", ".json": "vector",
                 ".fgb": "vector", ".zip": "vector"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


def table_format(uri: str) -> str:
    lower = uri.lower()
    for suffix in sorted(TABLE_FORMATS, key=len, reverse=True):
        if lower.endswith(suffix):
            return TABLE_FORMATS[suffix]
    raise ProspectInputError(f"{uri}: unknown table format (expected one of {', '.join(sorted(TABLE_FORMATS))})")


def resolve_tables(uri: str, storage: Storage, output: str | None = None) -> list[str]:
    """The table files ``uri`` names: a glob expanded (less an earlier run's outputs in ``output``:
    ``config.outside_prospect_output``), a file checked to exist.

    Raises:
        ProspectInputError: a glob matching no table, a file that is not there."""
    if has_glob(uri):
        found = outside_prospect_output(glob_uris(uri, storage, tuple(TABLE_FORMATS)), output, storage, uri,
                                        "prospect.samples.uri")
        if not found:
            raise ProspectInputError(f"prospect.samples.uri: {uri!r} matched no table files")
        return found
    if not storage.exists(uri):
        raise ProspectInputError(f"prospect.samples.uri: {uri}: no such file")
    return [uri]


def local_vector(uri: str, storage: Storage):
    """A local path GDAL can open: the file itself, or a download with a shapefile's sidecars (in any case:
    ``X.SHP`` or ``X.shp`` beside ``X.DBF``, as old Windows tools write them)."""
    return storage.local_copy(uri, sidecars=SHAPEFILE_PARTS)


def _vector_info(path: str, layer: str | None, uri: str, key: str = "prospect.samples") -> dict:
    import pyogrio

    one_layer(path, layer, uri, key)
    try:
        return pyogrio.read_info(path, layer=layer)
    except Exception as exc:  # pyogrio raises DataSourceError / DataLayerError and friends
        raise ProspectInputError(f"{uri}: cannot be read as a vector file ({exc})") from None


def one_layer(path: str, layer: str | None, uri: str, key: str) -> None:
    """Refuse a vector file of several layers when ``layer`` names none: GDAL reads the first (pyogrio only warns),
    and the others (other deposits, other samples) would be left out without a word.

    A shapefile without its ``.dbf`` is refused too: GDAL reads its geometries alone, and every attribute (ids,
    commodity filters) would read as missing.

    Raises:
        ProspectInputError: naming the layers and ``key``.layer, or the missing ``.dbf``."""
    import pyogrio

    stem, extension = os.path.splitext(path)
    if extension.lower() == ".shp" and not any(os.path.exists(stem + dbf) for dbf in (".dbf", ".DBF")):
        raise ProspectInputError(f"{key}: {uri}: no {os.path.basename(stem)}.dbf beside it (the shapefile's attribute "
                                 "table): copy it with the .shp")
    if layer is not None:
        return
    try:
        # layers with geometry: a QGIS GeoPackage's layer_styles table (no geometry) is no second layer
        layers = [str(name) for name, geometry in pyogrio.list_layers(path) if geometry]
    except Exception:  # unreadable: the read that follows says why
        return
    if len(layers) > 1:
        raise ProspectInputError(f"{key}: {uri} holds {len(layers)} layers ({', '.join(layers[:10])}); name the one "
                                 f"to read as {key}.layer")


def _recorded_crs(text: str | None):
    if not text:
        return None
    try:
        return parse_crs(text, "")
    except ValueError:
        return None


# -- planning on the driver -----------------------------------------------------


@dataclass
class ReadUnit:
    uri: str
    format: str
    start: int  # first data row of the unit within its file (0-based)
    count: int | None  # rows, None = to the end
    crs_wkt: str
    row_group: int | None = None


def plan_units(settings: SampleTable, storage: Storage, working_crs, output: str | None = None) -> list[ReadUnit]:
    """Check every file's columns and CRS up front and cut the files into read units (``output``: the prospect
    output, whose earlier outputs a glob leaves out)."""
    import pyarrow.parquet as pq

    units: list[ReadUnit] = []
    for uri in resolve_tables(settings.uri, storage, output):
        kind = table_format(uri)
        needed = set(settings.elements.values()) | set(settings.flags.values())
        needed |= {c for c in (settings.x, settings.y, settings.id) if c}
        if kind == "vector":
            with local_vector(uri, storage) as path:
                info = _vector_info(path, settings.layer, uri)
            columns, recorded = set(info["fields"]), _recorded_crs(info.get("crs"))
            kind_name = (info.get("geometry_type") or "").lower().replace(" z", "").replace(" m", "")
            if settings.x is None and not (kind_name.endswith("point") or kind_name == "unknown"):
                raise ProspectInputError(f"{uri}: geometry is {info.get('geometry_type')!r}, not points; "
                                       "give prospect.samples.x / y columns or a point layer")
            if settings.x is None and ("multipoint" in kind_name or kind_name == "unknown"):
                _check_single_part(uri, settings, storage)  # up front: a multi-part sample has no one place
            total = int(info["features"])
        elif kind == "parquet":
            with storage.open_read(uri) as handle:  # seekable (ranged reads on S3): only the footer is fetched
                try:
                    meta = pq.ParquetFile(handle).metadata
                except StorageError:
                    raise
                except _UNREADABLE as exc:
                    raise ProspectInputError(f"{uri}: not a readable Parquet file ({exc})") from None
            header, recorded, total = list(meta.schema.names), None, meta.num_rows
        else:
            header, recorded, total = _csv_header(uri, settings, storage), None, None
        if kind != "vector":
            refuse_ambiguous(uri, header, needed)
            columns = set(header)
        missing = sorted(needed - columns)
        if missing:
            hint = separator_hint(header[0], settings.delimiter) if kind == "csv" and len(header) == 1 else ""
            raise ProspectInputError(f"{uri}: no column(s) {', '.join(missing)} (prospect.samples); it has: "
                                     f"{', '.join(sorted(columns)[:40])}{hint}")
        if kind != "vector" and settings.x is None:
            raise ProspectInputError(f"{uri}: a {kind} table has no geometry: give prospect.samples.x and y")
        crs = input_crs(recorded, settings.crs, uri, "prospect.samples.crs")
        wkt = crs.to_wkt()
        if kind == "vector":
            # local: slices read in parallel; s3: one unit, so the file is downloaded once, not once per slice
            step = total if is_s3(uri) else settings.batch_rows
            units += [ReadUnit(uri, kind, start, min(step, total - start), wkt) for start in range(0, total, step)]
        elif kind == "parquet":
            start = 0
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                units.append(ReadUnit(uri, kind, start, rows, wkt, row_group=group))
                start += rows
        else:
            units.append(ReadUnit(uri, kind, 0, None, wkt))
    return units


def refuse_ambiguous(uri: str, header: list[str], needed: set[str], key: str = "prospect.samples") -> None:
    """A column the config names (under ``key``) that the header gives twice (two 'Au' columns): which holds the
    values cannot be told, and a reader would silently take one.

    Raises:
        ProspectInputError: naming the columns and their positions."""
    repeated = sorted(name for name in needed if header.count(name) > 1)
    if repeated:
        where = "; ".join(f"{name!r} is columns {', '.join(str(i + 1) for i, c in enumerate(header) if c == name)}"
                          for name in repeated)
        raise ProspectInputError(f"{uri}: its header names a column {key} uses more than once ({where}): which one "
                                 "holds the values cannot be told; rename the others")


def _csv_header(uri: str, settings: SampleTable, storage: Storage) -> list[str]:
    import pyarrow.csv as pacsv

    with storage.open_read(uri) as handle:
        try:
            reader = pacsv.open_csv(_maybe_gzip(uri, handle), read_options=pacsv.ReadOptions(block_size=1 << 16),
                                    parse_options=pacsv.ParseOptions(delimiter=csv_delimiter(uri, settings.delimiter)))
        except StorageError:
            raise
        except _UNREADABLE as exc:
            failed = f"{uri}: cannot be read as a csv table ({first_line(exc)})"
            if where := csv_problem_row(uri, csv_delimiter(uri, settings.delimiter), storage):
                failed = f"{uri}: cannot be read as a csv table: {where} ({first_line(exc)})"
        else:
            return reader.schema.names
    try:  # why: a header of another separator says so
        with storage.open_read(uri) as handle:
            header = _maybe_gzip(uri, handle).readline(1 << 16).decode("utf-8", "replace")
    except _UNREADABLE:  # not even a first line (a broken gzip)
        header = ""
    raise ProspectInputError(failed + separator_hint(header, settings.delimiter))


def separator_hint(header: str, delimiter: str | None, key: str = "prospect.samples") -> str:
    """For a CSV header that reads as one column (or does not parse) with ``delimiter`` (None: ','): the separator
    it seems to use, if another, and the ``key``.delimiter that reads it."""
    used = delimiter or ","
    separator = next((c for c in ";\t|," if c != used and c in header and used not in header), None)
    return (f"; its header reads as one column: the file seems separated by {separator!r} (set "
            f"{key}.delimiter: {separator!r})" if separator else "")


def _check_single_part(uri: str, settings: SampleTable, storage: Storage) -> None:
    """Refuse a MultiPoint layer with any multi-part feature before any work (geometries only are read)."""
    import pyogrio
    import shapely

    with local_vector(uri, storage) as path:
        meta, table = pyogrio.read_arrow(path, layer=settings.layer, columns=[])
    wkb = table.column(meta["geometry_name"] or "wkb_geometry").to_numpy(zero_copy_only=False)
    point_coordinates(shapely.from_wkb(wkb), uri, "prospect.samples")


def csv_problem_row(uri: str, delimiter: str, storage: Storage, data: bytes | None = None) -> str | None:
    """Where a CSV that Arrow could not parse goes wrong, read again with Python's ``csv`` (only after a failure;
    ``data``: the file's bytes when already read): ``row N (line L): …`` for the first record whose field count
    differs from the header's (a quote never closed makes one record of the rest of the file), or the line with
    bytes that are not UTF-8; None when it finds nothing. Arrow names no row (its "Row #2" counts within a 64 KiB
    block). Rows count from 1 after the header, blank lines skipped, as Arrow and ``sample_problems.csv`` do."""
    import csv
    import io

    physical = 0

    def decoded(stream):  # line by line: a byte that is not UTF-8 is named at its line
        nonlocal physical
        for physical, raw in enumerate(stream, start=1):
            yield raw.decode("utf-8-sig" if physical == 1 else "utf-8")

    def first_problem(stream) -> str | None:
        reader = csv.reader(decoded(stream), delimiter=delimiter)
        header, row, ended = None, 0, 0
        for record in reader:
            began, ended = ended + 1, reader.line_num
            if not any(field.strip() for field in record):  # a blank line: skipped, as Arrow does
                continue
            if header is None:
                header = record
                continue
            row += 1
            if len(record) != len(header):
                shown = delimiter.join(record).replace("\r", "").replace("\n", "⏎")
                return (f"row {row} (line {began}) has {len(record)} fields, the header {len(header)}: "
                        f"{shown[:80]}{'…' if len(shown) > 80 else ''}")
        return None

    try:
        if data is not None:
            return first_problem(io.BytesIO(data))
        with storage.open_read(uri) as handle:
            buffered = handle if isinstance(handle, io.BufferedIOBase) else io.BufferedReader(handle)
            return first_problem(_maybe_gzip(uri, buffered))
    except UnicodeDecodeError as exc:
        return (f"line {physical}: bytes that are not UTF-8 (0x{exc.object[exc.start]:02x}); save the file as "
                "UTF-8 (\"CSV UTF-8\" in a spreadsheet)")
    except (csv.Error, OSError, EOFError, zlib.error):  # the file itself: Arrow's message says it
        return None


def csv_delimiter(uri: str, delimiter: str | None) -> str:
    """The field separator of a CSV: ``delimiter`` when given, else a tab for .tsv, else ','."""
    return delimiter or ("\t" if uri.lower().endswith((".tsv", ".tsv.gz")) else ",")


def _maybe_gzip(uri: str, handle):
    import gzip

    return gzip.GzipFile(fileobj=handle) if uri.lower().endswith(".gz") else handle


# -- reading and parsing in Ray tasks ------------------------------------------------


def _read_batches(unit: ReadUnit, settings: SampleTable, storage: Storage):
    """Yield (first row index, pyarrow table with the needed columns, x, y) per batch of a unit."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    text_columns = list(settings.elements.values()) + list(settings.flags.values()) + \
        [c for c in (settings.id, settings.x, settings.y) if c]
    if unit.format == "csv":
        # every column we use as text, parsed by us: a '<0.5' or an '380000.5' in row 900 000 must not break
        # a type pyarrow guessed from the first block (coordinates included; bad ones become problem rows)
        # only the columns we use: a late surprise in an unused 'comment' column must not stop the file
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns}, strings_can_be_null=False,
                                       include_columns=list(dict.fromkeys(text_columns)))
        delimiter = csv_delimiter(unit.uri, settings.delimiter)
        with storage.open_read(unit.uri) as handle:
            reader = pacsv.open_csv(_maybe_gzip(unit.uri, handle), convert_options=convert,
                                    parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                    read_options=pacsv.ReadOptions(block_size=1 << 22))
            start = 0
            for batch in reader:
                table = pa.Table.from_batches([batch])
                yield start, table, table.column(settings.x), table.column(settings.y)
                start += table.num_rows
    elif unit.format == "parquet":
        with storage.open_read(unit.uri) as handle:
            parquet = pq.ParquetFile(handle)
            start = unit.start
            for batch in parquet.iter_batches(batch_size=settings.batch_rows, row_groups=[unit.row_group]):
                table = pa.Table.from_batches([batch])
                yield start, table, table.column(settings.x), table.column(settings.y)
                start += table.num_rows
    else:
        import pyogrio
        import shapely

        with local_vector(unit.uri, storage) as path:
            end = unit.start + unit.count
            for start in range(unit.start, end, settings.batch_rows):
                meta, table = pyogrio.read_arrow(path, layer=settings.layer, skip_features=start,
                                                 max_features=min(settings.batch_rows, end - start))
                if settings.x is not None:
                    x, y = table.column(settings.x), table.column(settings.y)
                else:
                    wkb = table.column(meta["geometry_name"] or "wkb_geometry").to_numpy(zero_copy_only=False)
                    x, y = point_coordinates(shapely.from_wkb(wkb), unit.uri, "prospect.samples")
                yield start, table, x, y


def _text(column, row: int) -> str:
    """A coordinate cell as the table wrote it (an Arrow column), for problem reports."""
    value = column[int(row)].as_py()
    return "" if value is None else str(value)


def as_float(column, decimal: str = ".") -> tuple[np.ndarray, np.ndarray]:
    """(numbers, bad) for a coordinate column: NaN + bad where not a finite number; text with the ``decimal`` mark
    ``,`` read as such ('380000,5')."""
    if isinstance(column, np.ndarray):
        values = column.astype(np.float64)
        return values, ~np.isfinite(values)
    import pandas as pd

    series = pd.Series(column.to_pandas())
    if decimal != "." and not pd.api.types.is_numeric_dtype(series.dtype):
        series = series.astype("string").str.replace(decimal, ".", regex=False)
    values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
    return values, ~np.isfinite(values)


def parse_cells(column, flags, settings: SampleTable) -> tuple[np.ndarray, np.ndarray]:
    """Raw numbers and codes of one element column (see the module docstring)."""
    import pandas as pd

    series = pd.Series(column.to_pandas() if hasattr(column, "to_pandas") else column)
    n = len(series)
    codes = np.full(n, OK, np.uint8)
    if pd.api.types.is_numeric_dtype(series.dtype):
        raw = series.to_numpy(np.float64, na_value=np.nan).copy()  # arrow-backed: read-only
        codes[np.isnan(raw)] = MISSING
        codes[np.isinf(raw)] = BAD  # as the text 'inf' in a CSV: no concentration
    else:
        text = series.astype("string").str.strip()
        missing = text.isna() | text.str.lower().isin([m.lower() for m in settings.missing_markers])
        prefix_series = text.str[:1]
        less, more = (prefix_series == "<").fillna(False), (prefix_series == ">").fillna(False)
        body = text.where(~(less | more), text.str[1:].str.strip())
        if settings.decimal != ".":  # '<0,5' and '1,5' as the lab wrote them
            body = body.str.replace(settings.decimal, ".", regex=False)
        raw = pd.to_numeric(body.where(~missing.fillna(True), None), errors="coerce").to_numpy(np.float64, na_value=np.nan).copy()
        missing = missing.fillna(True).to_numpy(bool)
        codes[missing] = MISSING
        bad = ~missing & ~np.isfinite(raw)
        codes[bad] = BAD
        codes[less.to_numpy(bool) & ~bad & ~missing] = CENSORED
        codes[more.to_numpy(bool) & ~bad & ~missing] = OVER
    if flags is not None:
        flag_text = pd.Series(flags.to_pandas() if hasattr(flags, "to_pandas") else flags).astype("string").str.strip()
        flag_text = flag_text.fillna("").to_numpy(object)
        flagged = (flag_text != "") & (codes == OK)
        censored_flag = np.isin(flag_text, settings.censored_flags) & np.isin(codes, (OK, MISSING))
        codes[censored_flag] = CENSORED  # the value (if any) is the detection limit
        codes[flagged & ~censored_flag] = FLAGGED
    measured = np.isin(codes, (OK, FLAGGED, OVER))
    if settings.missing_values:  # before any sign rule: -9999 is 'not analysed', not '<9999'
        # within float32 rounding: a Parquet float32 -99.9 is -99.90000153
        sentinel = measured & np.isclose(raw[:, None], np.asarray(settings.missing_values, np.float64)[None],
                                         rtol=1e-6, atol=0).any(axis=1)
        codes[sentinel], raw[sentinel] = SENTINEL, np.nan
        measured &= ~sentinel
    if settings.negative_is_limit:
        negative = measured & (raw < 0)
        codes[negative], raw[negative] = CENSORED, -raw[negative]  # '-5' is '<5': the limit is 5
        measured &= ~negative
    nonpositive = measured & (raw <= 0)
    if settings.nonpositive_censored:
        codes[nonpositive] = np.where(raw[nonpositive] < 0, NEGATIVE, CENSORED)  # a zero is the usual code
        raw[nonpositive] = np.nan  # a zero is not a limit
    else:
        codes[nonpositive] = BAD
    censored = np.isin(codes, CENSORED_CODES)
    raw[censored & ~(raw > 0)] = np.nan  # '<0' or a flagged zero: limit unknown
    return raw, codes


def _readable(unit: ReadUnit, settings: SampleTable, storage: Storage):
    """``_read_batches`` with a file that cannot be parsed turned into one input error naming it."""
    rows = unit.start
    try:
        for start, table, xs, ys in _read_batches(unit, settings, storage):
            rows = start + table.num_rows
            yield start, table, xs, ys
    except StorageError:
        raise
    except _UNREADABLE as exc:
        where = csv_problem_row(unit.uri, csv_delimiter(unit.uri, settings.delimiter), storage) \
            if unit.format == "csv" else None
        if where:
            raise ProspectInputError(f"{unit.uri}: cannot be read as a csv table: {where} ({first_line(exc)})") \
                from None
        raise ProspectInputError(f"{unit.uri}: cannot be read as a {unit.format} table after row {rows} "
                                 f"({first_line(exc)})") from None


def clean_unit(batch: dict, settings: SampleTable, working_wkt: str, storage: Storage):
    """Ray Data UDF: one read unit in, parsed batches out (a generator: bounded memory)."""
    sample_settings, store = settings, storage
    working = parse_crs(working_wkt, "grid")
    for index in range(len(batch["uri"])):
        unit = ReadUnit(**{k: _scalar(batch[k][index]) for k in ReadUnit.__dataclass_fields__})
        source = parse_crs(unit.crs_wkt, unit.uri)
        for start, table, xs, ys in _readable(unit, sample_settings, store):
            n = table.num_rows
            x, bad_x = as_float(xs, sample_settings.decimal)
            y, bad_y = as_float(ys, sample_settings.decimal)
            tx, ty = to_working(x, y, source, working)
            lost = unprojectable(x, y, tx, ty)
            problems = [[] for _ in range(n)]
            for row in np.flatnonzero(bad_x | bad_y | lost):
                shown = (f"{x[row]:g}, {y[row]:g}" if isinstance(xs, np.ndarray) else
                         f"{_text(xs, row)}, {_text(ys, row)}")  # as written
                reason = (f"the coordinates do not project from {describe(source)} to {describe(working)}: are they "
                          f"in {describe(source)}?" if lost[row] else
                          "no usable coordinates (empty, non-point or not a number)")
                problems[row].append({"column": sample_settings.x or "geometry", "value": shown, "reason": reason})
            out = {"uri": np.full(n, unit.uri, object), "row": np.arange(start, start + n, dtype=np.int64) + 1,
                   "x": tx, "y": ty, "coordinates_ok": ~(bad_x | bad_y | lost)}
            out["id"] = (np.asarray(table.column(sample_settings.id).to_pandas().astype("string").fillna(""), object)
                         if sample_settings.id else out["row"].astype(str).astype(object))
            for element, column_name in sample_settings.elements.items():
                column = table.column(column_name)
                flag_name = sample_settings.flags.get(element)
                raw, codes = parse_cells(column, table.column(flag_name) if flag_name else None, sample_settings)
                out[f"raw:{element}"], out[f"code:{element}"] = raw, codes
                if (codes == BAD).any() or (codes == SENTINEL).any():
                    texts = column.to_pandas()
                    for row in np.flatnonzero(codes == BAD):
                        problems[row].append({"column": column_name, "value": str(texts.iloc[row])[:60],
                                              "reason": _bad_reason(raw[row])})
                    for row in np.flatnonzero(codes == SENTINEL):
                        problems[row].append({"column": column_name, "value": str(texts.iloc[row])[:60],
                                              "reason": "missing-value sentinel (prospect.samples.missing_values): "
                                                        "not analysed"})
            out["problems"] = np.array([json.dumps(p) if p else "" for p in problems], object)
            yield out


def _bad_reason(raw: float) -> str:
    if np.isinf(raw):
        return "not a finite number"
    if raw <= 0:
        return "not a positive concentration"
    return "not a number, a detection-limit value such as '<0.5', or a missing marker"


def _scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


# -- the driver: substitution, duplicates, report ---------------------------------------


@dataclass
class Samples:
    """Clean samples in the working CRS: ``values[element]`` is NaN where not usable."""

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    values: dict[str, np.ndarray]
    report: dict = field(default_factory=dict)
    problems: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.x)


def read_samples(settings: SampleTable, working_crs, storage: Storage, task_cpus: float = 0.5,
                 output: str | None = None) -> Samples:
    """Read, parse and clean every sample table with Ray Data (see the module docstring); ``output``: the prospect
    output, whose earlier outputs a glob leaves out."""
    import ray

    units = plan_units(settings, storage, working_crs, output)
    items = [{k: getattr(u, k) for k in ReadUnit.__dataclass_fields__} for u in units]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200))).map_batches(
        clean_unit, batch_size=1, num_cpus=task_cpus,
        fn_kwargs={"settings": settings, "working_wkt": working_crs.to_wkt(), "storage": storage},
        **task_options(storage.settings),
    )
    dataset.context.execution_options.preserve_order = True  # rows keep file order: stable reports and ids
    parts: dict[str, list] = {}
    try:
        with ray_data_errors_raised_not_logged():
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for key, value in batch.items():
                    parts.setdefault(key, []).append(value)
    except Exception as exc:  # a read task's input error arrives wrapped in Ray's task error: say it plainly
        cause = _input_error_in(exc)
        if cause is None:
            raise
        raise ProspectInputError(first_line(cause)) from None  # without the retry hint Ray Data appends
    if not parts:
        raise ProspectInputError(f"prospect.samples.uri: {settings.uri}: no rows")
    columns = {key: np.concatenate(value) for key, value in parts.items()}
    return finish_samples(columns, settings)


def substitute_censored(limits: np.ndarray, measured: np.ndarray, censored: np.ndarray,
                        policy: CensoredValue) -> np.ndarray:
    """Values of one element: measured values as reported, censored ones by ``policy`` from their own
    detection limit (``limits``), NaN elsewhere. Never above a censored value's own limit."""
    value = np.where(measured, limits, np.nan)
    if policy is CensoredValue.HALF_LIMIT:
        value[censored] = limits[censored] / 2
    elif policy is CensoredValue.LIMIT:
        value[censored] = limits[censored]
    else:
        value[censored] = np.nan
    return value


def _input_error_in(exc: BaseException) -> ProspectInputError | None:
    """The ProspectInputError a Ray task raised, wherever Ray's wrapping put it (cause chain, ``.cause``)."""
    seen, todo = set(), [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ProspectInputError):  # Ray's task error as the cause's class: the cause itself
            cause = getattr(current, "cause", None)
            return cause if isinstance(cause, ProspectInputError) else current
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def finish_samples(columns: dict[str, np.ndarray], settings: SampleTable) -> Samples:
    """Substitute censored values, drop unusable rows, merge duplicate sites; everything reported."""
    n = len(columns["x"])
    problems: list[dict] = []
    keep = columns["coordinates_ok"].astype(bool).copy()
    for index in np.flatnonzero(columns["problems"] != ""):
        for problem in json.loads(columns["problems"][index]):
            problems.append({"file": columns["uri"][index], "row": int(columns["row"][index]),
                             "sample": columns["id"][index], **problem})
    values: dict[str, np.ndarray] = {}
    element_report: dict[str, dict] = {}
    for element in settings.elements:
        raw, codes = columns[f"raw:{element}"].copy(), columns[f"code:{element}"]
        if settings.bad_values is BadValue.DROP_ROW:
            keep &= codes != BAD
        censored = np.isin(codes, CENSORED_CODES)
        measured = np.isin(codes, (OK, FLAGGED, OVER)) & (raw > 0)
        unknown = censored & ~(raw > 0)
        limit_source, assumed = "value", None
        # qualified values (e.g. GTK's '!': below the quantification limit) are not a lab's limit
        unqualified = measured & (codes == OK)
        if unknown.any():
            if element in settings.detection_limits:
                raw[unknown], limit_source = settings.detection_limits[element], "config"
            elif settings.unknown_limit is UnknownLimit.MIN_REPORTED and measured.any():
                assumed = float(raw[unqualified if unqualified.any() else measured].min())
                raw[unknown], limit_source = assumed, "assumed: smallest unqualified reported value"
            else:
                rows = np.flatnonzero(unknown)[:5]
                where = ", ".join(f"{columns['uri'][r]} row {int(columns['row'][r])}" for r in rows)
                raise ProspectInputError(
                    f"{element}: {int(unknown.sum())} censored value(s) carry no detection limit (e.g. {where}); "
                    f"give prospect.samples.detection_limits.{element}")
        if (codes == BAD).sum() * 2 > n:  # a column mostly unreadable is read wrongly, not a few bad cells
            raise ProspectInputError(_mostly_unusable(n, int((codes == BAD).sum()), [
                p for p in problems if p.get("column") == settings.elements[element]], element))
        value = substitute_censored(raw, measured, censored, settings.censored)
        values[element] = value
        element_report[element] = {
            "column": settings.elements[element],
            **{CODE_NAMES[c]: int((codes == c).sum()) for c in CODE_NAMES},
            "censored": int(censored.sum()),  # negative_censored included: the counts add up to more than the rows
            "censored_limit_from": limit_source if censored.any() else None,
            "assumed_detection_limit": assumed,
            "censored_as": str(settings.censored),
        }
    if settings.id:
        problems += _repeated_ids(columns, keep, settings)
    ids, x, y = columns["id"][keep], columns["x"][keep], columns["y"][keep]
    values = {e: v[keep] for e, v in values.items()}
    dropped = int(n - keep.sum())
    if dropped * 2 > n:
        raise ProspectInputError(_mostly_unusable(n, dropped, problems))
    ids, x, y, values, duplicates = merge_sites(ids, x, y, values, settings, problems)
    for element, value in values.items():
        finite = value[np.isfinite(value)]
        element_report[element]["usable"] = int(finite.size)
        if finite.size:
            element_report[element].update(min=float(finite.min()), median=float(np.median(finite)),
                                            max=float(finite.max()))
        else:
            element_report[element]["note"] = "no usable value: the element cannot be interpolated"
    report = {"rows_read": n, "rows_dropped": dropped, "samples": int(len(x)), "duplicates": duplicates,
              "problems": len(problems), "elements": element_report,
              "files": sorted(set(columns["uri"].tolist()))}
    return Samples(ids=ids, x=x, y=y, values=values, report=report, problems=problems)


def _repeated_ids(columns: dict[str, np.ndarray], keep: np.ndarray, settings: SampleTable) -> list[dict]:
    """Problem rows for a sample id given again at another site (farther than ``duplicate_tolerance_m``): a
    mistyped id or coordinate. Both stay samples (nothing says which is right); re-analyses at one site merge."""
    rows = np.flatnonzero(keep & (columns["id"] != ""))
    first: dict[str, int] = {}
    found = []
    for row in rows:
        earlier = first.setdefault(columns["id"][row], row)
        if earlier != row and np.hypot(columns["x"][row] - columns["x"][earlier],
                                       columns["y"][row] - columns["y"][earlier]) > settings.duplicate_tolerance_m:
            found.append({"file": columns["uri"][row], "row": int(columns["row"][row]), "sample": columns["id"][row],
                          "column": settings.id, "value": columns["id"][row],
                          "reason": f"sample id given again at another site (first: {columns['uri'][earlier]} row "
                                    f"{int(columns['row'][earlier])}); both kept as samples"})
    return found


def comma_hint(problems: list[dict], key: str = "prospect.samples") -> str:
    """A sentence for problem rows whose values use a decimal comma (``'1,5'``), or "": ``key``.decimal reads them."""
    commas = [part for p in problems for part in str(p["value"]).split(", ")
              if re.fullmatch(r"\s*[<>]?\s*-?\d+,\d+\s*", part)]
    return (f" Values such as {commas[0]!r} use a decimal comma: set {key}.decimal: ',' (with delimiter "
            "';'), or write the table with decimal points (or as Parquet / GeoPackage)." if commas else "")


def _mostly_unusable(rows: int, dropped: int, problems: list[dict], element: str | None = None) -> str:
    """The message for a table most of whose rows cannot be used: it is read wrongly (decimal commas, another
    delimiter, columns shifted), not a few bad rows to leave out (those are listed and the rest used)."""
    first = "; ".join(f"{p['file'].rsplit('/', 1)[-1]} row {p['row']} {p['column']} {p['value']!r}: {p['reason']}"
                      for p in problems[:3])
    hint = comma_hint(problems)
    what = (f"prospect.samples.elements.{element}: {dropped} of {rows} cells are not numbers (if they mean 'not "
            "analysed', list those texts in prospect.samples.missing_markers)" if element else
            f"prospect.samples: {dropped} of {rows} rows cannot be used (no usable coordinates or a value that is not "
            "a number)")
    return f"{what}, more than half: the table is probably read wrongly.{hint} First problems: {first}"


def merge_sites(ids, x, y, values, settings: SampleTable, problems: list[dict]):
    """Samples at one site (within ``duplicate_tolerance_m``): averaged, first kept, or all rejected."""
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(x)
    if n == 0:
        return ids, x, y, values, {"sites": 0, "samples": 0, "policy": str(settings.duplicates)}
    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(settings.duplicate_tolerance_m, output_type="ndarray")
    if len(pairs) == 0:
        return ids, x, y, values, {"sites": 0, "samples": 0, "policy": str(settings.duplicates)}
    from scipy.sparse import coo_matrix

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, site = connected_components(graph, directed=False)
    sizes = np.bincount(site)
    shared = sizes[site] > 1
    summary = {"sites": int((sizes > 1).sum()), "samples": int(shared.sum()), "policy": str(settings.duplicates)}
    if settings.duplicates is DuplicateSites.REJECT:
        for index in np.flatnonzero(shared):
            problems.append({"file": "", "row": -1, "sample": str(ids[index]), "column": "x/y", "value": "",
                             "reason": f"duplicate site ({sizes[site[index]]} samples within "
                                       f"{settings.duplicate_tolerance_m} m): rejected"})
        keep = ~shared
        return ids[keep], x[keep], y[keep], {e: v[keep] for e, v in values.items()}, summary
    # one row per site, at the first sample's position
    order = np.argsort(site, kind="stable")
    first = order[np.r_[0, np.flatnonzero(np.diff(site[order])) + 1]]
    first.sort()
    if settings.duplicates is DuplicateSites.FIRST:
        return ids[first], x[first], y[first], {e: v[first] for e, v in values.items()}, summary
    merged = {}
    for element, value in values.items():
        finite = np.isfinite(value)
        sums = np.bincount(site, weights=np.where(finite, value, 0.0), minlength=len(sizes))
        counts = np.bincount(site, weights=finite.astype(np.float64), minlength=len(sizes))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / counts
        merged[element] = mean[site[first]]
    return ids[first], x[first], y[first], merged, summary
