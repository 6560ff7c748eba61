"""Sample tables: censoring, missing and bad cells, duplicates, CRS, formats; the real GTK till table."""

import json
import logging
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minseg.geo.config import SampleTable
from minseg.geo.crs import parse_crs
from minseg.geo.config import ProspectInputError
from minseg.geo.samples import BAD, CENSORED, MISSING, NEGATIVE, OK, parse_cells, read_samples
from minseg.io.storage import Storage

WORKING = parse_crs("EPSG:3067", "test")


def read(settings, **_):
    return read_samples(settings, WORKING, Storage(), task_cpus=0.25)


def table(tmp_path, text, name="samples.csv"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def test_censored_missing_and_bad_cells(tmp_path, ray_session):
    uri = table(tmp_path, """
        id,x,y,Cu,Au,Au_flag
        a,1000,2000,12.5,<0.5,
        b,1100,2000,<2,0.8,<
        c,1200,2000,n/a,0.0,
        d,1300,2000,abc,>50,
        e,1400,2000,0,3,!
        """)
    settings = SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu", "Au": "Au"},
                           flags={"Au": "Au_flag"}, detection_limits={"Cu": 1.0})
    samples = read(settings)
    cu, au = samples.values["Cu"], samples.values["Au"]
    assert cu[0] == 12.5 and cu[1] == 1.0  # <2 -> half the limit
    assert np.isnan(cu[2]) and np.isnan(cu[3])  # missing marker; garbage is never a silent zero
    assert cu[4] == 0.5  # a zero is 'not detected' with an unknown limit: the configured one, halved
    assert au[0] == 0.25 and au[1] == 0.4  # flag '<' makes the value the limit
    # a zero: unknown limit -> the smallest unqualified value; there is none ('!' 3, '>50'), so the smallest value
    assert au[2] == pytest.approx(3 / 2)
    assert au[3] == 50 and au[4] == 3
    assert [p["sample"] for p in samples.problems] == ["d"]
    problem = samples.problems[0]
    assert problem["column"] == "Cu" and problem["value"] == "abc" and problem["row"] == 4
    assert problem["file"].endswith("samples.csv")
    report = samples.report["elements"]
    assert report["Cu"]["bad"] == 1 and report["Cu"]["missing"] == 1 and report["Cu"]["censored"] == 2
    assert report["Au"]["over_range"] == 1 and report["Au"]["flagged"] == 1
    assert report["Au"]["censored_limit_from"].startswith("assumed")


def test_censoring_policies_and_unknown_limits(tmp_path, ray_session):
    uri = table(tmp_path, """
        x,y,Zr
        0,0,<10
        10,0,40
        20,0,0
        """)
    base = dict(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Zr": "Zr"})
    assert read(SampleTable(**base, censored="limit")).values["Zr"].tolist() == [10, 40, 40]
    assert np.isnan(read(SampleTable(**base, censored="missing")).values["Zr"][[0, 2]]).all()
    with pytest.raises(ProspectInputError, match="detection_limits.Zr"):
        read(SampleTable(**base, unknown_limit="error"))
    strict = read(SampleTable(**base, nonpositive_censored=False))
    assert np.isnan(strict.values["Zr"][2]) and strict.problems[0]["reason"] == "not a positive concentration"
    dropped = read(SampleTable(**base, nonpositive_censored=False, bad_values="drop_row"))
    assert len(dropped) == 2 and dropped.report["rows_dropped"] == 1


def test_all_nan_element_is_reported_not_fatal(tmp_path, ray_session):
    uri = table(tmp_path, """
        x,y,Cu,Hg
        0,0,5,
        10,0,6,n/a
        """)
    samples = read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Cu": "Cu", "Hg": "Hg"}))
    assert np.isnan(samples.values["Hg"]).all()
    assert samples.report["elements"]["Hg"]["usable"] == 0 and "cannot be interpolated" in samples.report["elements"]["Hg"]["note"]


@pytest.mark.parametrize("policy, expected", [("average", [3.0, 10.0]), ("first", [2.0, 10.0]), ("reject", [10.0])])
def test_duplicate_sites(tmp_path, ray_session, policy, expected):
    uri = table(tmp_path, """
        x,y,Cu
        0,0,2
        0.5,0,4
        100,0,10
        """)
    samples = read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Cu": "Cu"}, duplicates=policy,
                               duplicate_tolerance_m=1.0))
    assert samples.values["Cu"].tolist() == expected
    assert samples.report["duplicates"]["sites"] == 1 and samples.report["duplicates"]["samples"] == 2


def test_a_sample_id_given_at_two_sites_is_reported(tmp_path, ray_session):
    """The same id 5 km apart: a mistyped id or coordinate, reported (both kept); at one site it is a re-analysis."""
    uri = table(tmp_path, """
        id,x,y,Cu
        s1,0,0,2
        s2,100,0,4
        s1,5000,0,10
        s2,100,0,5
        """)
    samples = read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu"}))
    repeated = [p for p in samples.problems if p["column"] == "id"]
    assert [(p["row"], p["value"]) for p in repeated] == [(3, "s1")] and "first: " in repeated[0]["reason"]
    assert len(samples) == 3  # s1 twice (two sites), s2's two analyses one site


def test_missing_crs_wrong_columns_and_crs_mismatch(tmp_path, ray_session):
    uri = table(tmp_path, "x,y,Cu\n0,0,1\n")
    with pytest.raises(ProspectInputError, match=r"records no CRS; give it in the config as prospect.samples.crs"):
        read(SampleTable(uri=uri, x="x", y="y", elements={"Cu": "Cu"}))
    with pytest.raises(ProspectInputError, match=r"no column\(s\) Zn"):
        read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Zn": "Zn"}))
    geojson = tmp_path / "points.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection",
                                   "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3067"}},
                                   "features": [{"type": "Feature", "properties": {"Cu": 1.0},
                                                 "geometry": {"type": "Point", "coordinates": [1, 2]}}]}))
    with pytest.raises(ValueError, match="the file says its CRS is EPSG:3067, but prospect.samples.crs says EPSG:4326"):
        read(SampleTable(uri=str(geojson), crs="EPSG:4326", elements={"Cu": "Cu"}))


def test_parquet_row_groups_and_reprojection(tmp_path, ray_session):
    """Samples in lon/lat are reprojected into the working CRS; row numbers run across row groups."""
    lon = np.linspace(24.0, 25.0, 10)
    lat = np.full(10, 65.0)
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"lon": lon, "lat": lat, "Cu": np.arange(10.0) + 1}), path, row_group_size=4)
    samples = read(SampleTable(uri=str(path), x="lon", y="lat", crs="EPSG:4326", elements={"Cu": "Cu"}))
    from pyproj import Transformer

    ex, ey = Transformer.from_crs(4326, 3067, always_xy=True).transform(lon, lat)
    np.testing.assert_allclose(samples.x, ex)
    np.testing.assert_allclose(samples.y, ey)
    assert samples.values["Cu"].tolist() == list(np.arange(10.0) + 1)


def test_parse_cells_keeps_numeric_columns_numeric():
    settings = SampleTable(uri="x", x="x", y="y", elements={"Cu": "Cu"})
    raw, codes = parse_cells(pa.array([1.5, None, -2.0, 0.0, np.inf, -np.inf]), None, settings)
    assert raw[0] == 1.5 and np.isnan(raw[1:4]).all()
    # ok, missing, censored (0 and a negative are 'not detected' codes; a negative counted apart: a lost sign reads
    # the same), bad: an infinite number in a Parquet column is no concentration (the text 'inf' in a CSV was bad,
    # the number read as missing and counted ok)
    assert codes.tolist() == [OK, MISSING, NEGATIVE, CENSORED, BAD, BAD]


def test_real_gtk_till_table(shared_data, ray_session):
    path = shared_data / "geochem-gtk" / "till_geochem_IOCG_CLB.gpkg"
    elements = {"Cu": "Cu_ppm_511", "Zr": "Zr_ppm_511", "Th": "Th_ppm_511", "K": "K_ppm_511P"}
    flags = {e: f"{e}_511P_T" for e in elements}
    samples = read(SampleTable(uri=str(path), id="OBJECTID", elements=elements, flags=flags))
    assert len(samples) == 1112 and samples.report["problems"] == 0
    zr = samples.report["elements"]["Zr"]
    assert zr["censored"] == 182 and zr["usable"] == 1112  # 166 '<' flags + 16 zeros qualified '!'
    assert all(np.isfinite(v).all() and (v > 0).all() for v in samples.values.values())
    assert 346000 < samples.x.min() and samples.x.max() < 414000  # point geometry in EPSG:3067


def test_tables_on_s3_through_ray_workers(s3, ray_session):
    """A glob of CSV files under an s3:// prefix, read by Ray workers (credentials forwarded to them)."""
    storage = s3.storage(forward_credentials=True)
    storage.write_text(s3.uri("survey/a.csv"), "x,y,Cu\n0,0,1.5\n10,0,<1\n")
    storage.write_text(s3.uri("survey/b.csv"), "x,y,Cu\n20,0,oops\n")
    settings = SampleTable(uri=s3.uri("survey/*.csv"), x="x", y="y", crs="EPSG:3067", elements={"Cu": "Cu"})
    samples = read_samples(settings, WORKING, storage, task_cpus=0.25)
    assert samples.values["Cu"][:2].tolist() == [1.5, 0.5] and np.isnan(samples.values["Cu"][2])
    assert samples.problems == [{"file": s3.uri("survey/b.csv"), "row": 1, "sample": "1", "column": "Cu",
                                 "value": "oops",
                                 "reason": "not a number, a detection-limit value such as '<0.5', or a missing marker"}]


def test_parquet_and_a_shapefile_on_s3(s3, ray_session, shared_data, tmp_path):
    """Parquet through ranged reads; a shapefile downloaded once with its sidecars (.dbf, .shx, .prj)."""
    from minseg.geo.config import PointLayer
    from minseg.geo.vectors import read_points

    storage = s3.storage(forward_credentials=True)
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"x": [0.0, 10.0, 20.0], "y": [0.0, 0.0, 0.0], "Cu": ["1", "<2", "3"]}), path,
                   row_group_size=2)
    storage.upload_file(str(path), s3.uri("t/s.parquet"))
    samples = read_samples(SampleTable(uri=s3.uri("t/s.parquet"), x="x", y="y", crs="EPSG:3067",
                                       elements={"Cu": "Cu"}), WORKING, storage, task_cpus=0.25)
    assert samples.values["Cu"].tolist() == [1.0, 1.0, 3.0]
    for extension in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
        storage.upload_file(str(shared_data / "geochem-gtk" / f"IOCG{extension}"), s3.uri(f"v/IOCG{extension}"))
    deposits = read_points(PointLayer(uri=s3.uri("v/IOCG.shp"), id="Name"), WORKING, storage)
    assert len(deposits) == 24 and "Hannukainen" in deposits.ids.tolist()
    for extension in (".shp", ".shx", ".dbf", ".prj"):  # an old Windows tool's upper-case names: fetched alike
        storage.upload_file(str(shared_data / "geochem-gtk" / f"IOCG{extension}"),
                            s3.uri(f"w/IOCG{extension.upper()}"))
    assert len(read_points(PointLayer(uri=s3.uri("w/IOCG.SHP"), id="Name"), WORKING, storage)) == 24
    for extension in (".shp", ".SHX", ".DBF", ".Prj"):  # mixed: a lower-case .shp with upper-case sidecars
        storage.upload_file(str(shared_data / "geochem-gtk" / f"IOCG{extension.lower()}"), s3.uri(f"m/IOCG{extension}"))
    storage.upload_file(str(shared_data / "geochem-gtk" / "IOCG.dbf"), s3.uri("m/IOCG.dbf.bak"))  # no sidecar
    storage.write_bytes(s3.uri("m/IOCG.SHP"), b"another file's geometry")  # never written over the one read
    mixed = read_points(PointLayer(uri=s3.uri("m/IOCG.shp"), id="Name"), WORKING, storage)
    assert len(mixed) == 24 and "Hannukainen" in mixed.ids.tolist()


def test_negative_means_below_limit_and_missing_sentinels(tmp_path, ray_session):
    """The issue's lab table: '-5' is '<5' (not 6.25, above its own limit); -9999 is 'not analysed'
    and is counted in the problems report; a second lab writes the same in text ('-0.2', '-99')."""
    uri = table(tmp_path, """
        id,x,y,Cu,Au
        a,1000,2000,12.5,0.8
        b,1100,2000,-5,-0.2
        c,1200,2000,-9999,-99
        d,1300,2000,25,n/a
        """)
    settings = SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu", "Au": "Au"},
                           negative_is_limit=True, missing_values=[-9999, -99])
    samples = read(settings)
    cu, au = samples.values["Cu"], samples.values["Au"]
    assert cu[1] == 2.5 and au[1] == pytest.approx(0.1)  # half of their own limits
    assert np.isnan(cu[2]) and np.isnan(au[2])  # sentinels: missing, not '<9999'
    sentinels = [(p["sample"], p["column"], p["value"]) for p in samples.problems]
    assert sentinels == [("c", "Cu", "-9999"), ("c", "Au", "-99")]
    assert all("missing-value sentinel" in p["reason"] for p in samples.problems)
    assert samples.report["elements"]["Cu"]["missing_sentinel"] == 1
    # without the option a negative stays a 'not detected' code with an unknown limit (documented default)
    plain = read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu"}))
    assert plain.values["Cu"][1] == pytest.approx(12.5 / 2)


@pytest.mark.parametrize("policy", ["half_limit", "limit", "missing"])
def test_a_substituted_censored_value_never_exceeds_its_own_limit(policy):
    from minseg.enums import CensoredValue
    from minseg.geo.samples import substitute_censored

    rng = np.random.default_rng(3)
    limits = rng.uniform(0.01, 100, 500)
    censored = rng.random(500) < 0.4
    measured = ~censored
    value = substitute_censored(limits, measured, censored, CensoredValue(policy))
    substituted = value[censored]
    assert (np.isnan(substituted) | (substituted <= limits[censored])).all()
    assert np.array_equal(value[measured], limits[measured])
    assert np.isnan(substituted).all() == (policy == "missing")
    # and through the cell parser, for every way a lab writes a limit: '<X', '-X' (negative_is_limit)
    texts = [f"<{v:.3f}" if i % 2 else f"-{v:.3f}" for i, v in enumerate(limits[:100])]
    settings = SampleTable(uri="x", x="x", y="y", elements={"Cu": "Cu"}, negative_is_limit=True,
                           censored=policy)
    raw, codes = parse_cells(pa.array(texts), None, settings)
    assert (codes == 3).all() and np.allclose(raw, np.round(limits[:100], 3))
    parsed = substitute_censored(raw, codes == 0, codes == 3, CensoredValue(policy))
    assert (np.isnan(parsed) | (parsed <= raw)).all()


def test_column_types_are_declared_not_guessed_from_the_start(tmp_path, ray_session):
    """The issue's file: integer x for ~5 MB (pyarrow guesses int64 from its first block), then 380000.5;
    a second kind of late surprise in the same file: a y that is text, reported as a problem row."""
    rows = 180_000
    lines = ["id,x,y,Cu"] + [f"s{i},{380000 + i % 1000},{7500000 + i % 997},{1 + i % 50}" for i in range(rows)]
    lines += ["late,380000.5,7500000,3", "text,380001,seven,4"]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    samples = read(SampleTable(uri=str(path), x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu"},
                               duplicate_tolerance_m=0, duplicates="first"))
    assert samples.report["rows_read"] == rows + 2
    assert 380000.5 in samples.x  # the late float is read, not an ArrowInvalid
    (problem,) = samples.problems
    assert problem["sample"] == "text" and problem["row"] == rows + 2 and "no usable coordinates" in problem["reason"]


def test_a_table_that_cannot_be_parsed_is_one_input_error_naming_the_file(tmp_path, ray_session):
    """Arrow names no row (its "Row #2" counts within a block; the job said "after row 0"): the file is read again
    to name the row and line: a ragged record deep in the file, bytes that are not UTF-8 (a Latin-1 export), a
    quote never closed."""
    path = tmp_path / "ragged.csv"
    path.write_text("id,x,y,Cu\na,1,2,3\nb,1,2,3,4,5\n")
    with pytest.raises(ProspectInputError, match=r"ragged.csv: cannot be read as a csv table: row 2 \(line 3\) has 6 "
                                                 r"fields, the header 4: b,1,2,3,4,5 \(CSV parse error: "):
        read(SampleTable(uri=str(path), x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu"}))
    rows = ["id,x,y,Cu"] + [f"s{i},{i},{i},1" for i in range(20_000)]  # past Arrow's first 64 KiB block
    rows[5000:5000] = ["", ""]  # blank lines: skipped, as Arrow does, not counted as rows
    for bad, reason in [(["s,1,2"], r"row 20001 \(line 20004\) has 3 fields, the header 4: s,1,2 \("),
                        (["Sämple,1,2,3"], r"line 20004: bytes that are not UTF-8 \(0xe4\); save the file as UTF-8"),
                        (['"s,1,2,3'], r"row 20001 \(line 20004\) has 1 fields, the header 4: s,1,2,3⏎t,1,1,1⏎")]:
        path.write_bytes("\n".join(rows + bad + ["t,1,1,1"]).encode("latin-1") + b"\n")
        with pytest.raises(ProspectInputError, match=r"ragged.csv: cannot be read as a csv table: " + reason):
            read(SampleTable(uri=str(path), x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu"}))


def test_a_table_mostly_unusable_is_refused_not_read_on_what_is_left(tmp_path, ray_session):
    """Decimal commas (quoted, so the columns still split) in the coordinates, then in an element's values.
    Dropping those rows and mapping from the few left would look like a result; more than half unusable is refused,
    the cause named."""
    path = table(tmp_path, """
        id,x,y,Cu
        a,"355682,8","7460000,5",1.2
        b,"355700,1","7460100,0",0.8
        c,355800,7460200,3
    """)
    with pytest.raises(ProspectInputError, match=r"prospect.samples: 2 of 3 rows cannot be used .* more than half: "
                                                 r"the table is probably read wrongly\. Values such as '355682,8' use "
                                                 r"a decimal comma.* First problems: samples.csv row 1 x "
                                                 r"'355682,8, 7460000,5'"):
        read(SampleTable(uri=path, x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu"}))
    # the coordinates written with points, the values with commas: the element would be all NaN, silently dropped
    path = table(tmp_path, """
        id,x,y,Cu,Zn
        a,355682.8,7460000.5,"1,2",5
        b,355700.1,7460100.0,"0,8",6
        c,355800,7460200,3,7
    """, "values.csv")
    with pytest.raises(ProspectInputError, match=r"prospect.samples.elements.Cu: 2 of 3 cells are not numbers \(if "
                                                 r"they mean 'not analysed', .*missing_markers\), more than half: "
                                                 r".* Values such as '1,2' use a decimal comma.* First "
                                                 r"problems: values.csv row 1 Cu '1,2'"):
        read(SampleTable(uri=path, x="x", y="y", crs="EPSG:3067", id="id", elements={"Cu": "Cu", "Zn": "Zn"}))


def _as_multipoints(source, target, extra_part=False):
    """The same features with each point saved as a single-part MultiPoint (or, for one feature, two parts)."""
    import pyarrow as pa
    import pyogrio
    import shapely

    meta, table = pyogrio.read_arrow(source)
    name = meta["geometry_name"] or "wkb_geometry"
    points = shapely.from_wkb(table.column(name).to_numpy(zero_copy_only=False))
    geometries = [shapely.multipoints([g]) for g in points]
    if extra_part:
        geometries[3] = shapely.multipoints([points[3], points[4]])
    table = table.set_column(table.column_names.index(name), "geometry", pa.array(shapely.to_wkb(geometries)))
    pyogrio.write_arrow(table, target, geometry_name="geometry", geometry_type="MultiPoint", crs=meta["crs"],
                        encoding="UTF-8")
    return str(target)


def test_single_part_multipoints_are_points(shared_data, ray_session, tmp_path):
    """The issue's case: the real GTK till table saved with single-part MultiPoints (0 of 1,112 usable before);
    the second example: the IOCG deposits as single-part MultiPoints."""
    from minseg.geo.config import PointLayer
    from minseg.geo.vectors import read_points

    multi = _as_multipoints(shared_data / "geochem-gtk" / "till_geochem_IOCG_CLB.gpkg", tmp_path / "till.gpkg")
    samples = read(SampleTable(uri=multi, id="OBJECTID", elements={"Cu": "Cu_ppm_511"}))
    assert len(samples) == 1112 and np.isfinite(samples.x).all() and samples.report["problems"] == 0
    deposits = _as_multipoints(shared_data / "geochem-gtk" / "IOCG.shp", tmp_path / "iocg.gpkg")
    points = read_points(PointLayer(uri=deposits, id="Name"), WORKING, Storage())
    assert len(points) == 24 and "Hannukainen" in points.ids.tolist()


def test_multipart_points_and_polygons_are_refused_up_front(shared_data, tmp_path):
    from minseg.geo.config import PointLayer
    from minseg.geo.vectors import read_points

    multi = _as_multipoints(shared_data / "geochem-gtk" / "till_geochem_IOCG_CLB.gpkg", tmp_path / "till.gpkg",
                            extra_part=True)
    with pytest.raises(ProspectInputError, match=r"till.gpkg: 1 feature\(s\) are multi-part MultiPoints \(the first "
                                                 r"is feature 4, with 2 points\); make each point its own feature"):
        read(SampleTable(uri=multi, id="OBJECTID", elements={"Cu": "Cu_ppm_511"}))  # before any Ray work
    import pyogrio
    import shapely

    import pyarrow as pa

    meta, table = pyogrio.read_arrow(shared_data / "geochem-gtk" / "IOCG.shp")
    name = meta["geometry_name"] or "wkb_geometry"
    areas = shapely.buffer(shapely.from_wkb(table.column(name).to_numpy(zero_copy_only=False)), 100.0)
    table = table.set_column(table.column_names.index(name), "geometry", pa.array(shapely.to_wkb(areas)))
    pyogrio.write_arrow(table, tmp_path / "areas.gpkg", geometry_name="geometry", geometry_type="Polygon",
                        crs=meta["crs"], encoding="UTF-8")
    with pytest.raises(ProspectInputError, match=r"expected points, found 24 Polygon feature\(s\)"):
        read_points(PointLayer(uri=str(tmp_path / "areas.gpkg")), WORKING, Storage())


def test_tables_that_used_to_escape_as_tracebacks_or_be_misread(tmp_path, ray_session):
    """TSV headers, a corrupt Parquet or gzip file, float32 sentinels, a late surprise in an unused column."""
    tsv = tmp_path / "s.tsv"
    tsv.write_text("x\ty\tCu\n1\t2\t3\n")
    assert read(SampleTable(uri=str(tsv), x="x", y="y", crs="EPSG:3067", elements={"Cu": "Cu"})).values["Cu"][0] == 3
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ProspectInputError, match="broken.parquet: not a readable Parquet file"):
        read(SampleTable(uri=str(broken), x="x", y="y", crs="EPSG:3067", elements={"Cu": "Cu"}))
    gz = tmp_path / "s.csv.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ProspectInputError, match=r"s.csv.gz: cannot be read as a csv table"):
        read(SampleTable(uri=str(gz), x="x", y="y", crs="EPSG:3067", elements={"Cu": "Cu"}))
    path = tmp_path / "f32.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0], "y": [1.0, 1.0], "Cu": pa.array([-99.9, 5.0], pa.float32())}), path)
    samples = read(SampleTable(uri=str(path), x="x", y="y", crs="EPSG:3067", elements={"Cu": "Cu"},
                               missing_values=[-99.9], negative_is_limit=True))
    assert np.isnan(samples.values["Cu"][0]) and samples.report["elements"]["Cu"]["missing_sentinel"] == 1
    rows = ["x,y,Cu,comment"] + [f"{i},{i},1,{i}" for i in range(150_000)] + ["5,5,2,abc"]
    late = tmp_path / "late.csv"
    late.write_text("\n".join(rows) + "\n")
    samples = read(SampleTable(uri=str(late), x="x", y="y", crs="EPSG:3067", elements={"Cu": "Cu"},
                               duplicates="first"))
    assert samples.report["rows_read"] == 150_001


def test_deposit_tables_parse_coordinates_and_report_the_unlocated(tmp_path):
    """The deposits CSV is the same kind of table: text coordinates are parsed, not guessed; a deposit
    without usable coordinates is named in the report; a ragged file is one input error naming it."""
    from minseg.geo.config import PointLayer
    from minseg.geo.vectors import read_points

    rows = ["name,x,y"] + [f"d{i},{380000 + i},{7500000 + i}" for i in range(3000)] + ["late,380000.5,7500000",
                                                                                       "lost,n/a,7500000"]
    path = tmp_path / "deposits.csv"
    path.write_text("\n".join(rows) + "\n")
    points = read_points(PointLayer(uri=str(path), x="x", y="y", crs="EPSG:3067", id="name"), WORKING, Storage())
    assert len(points) == 3001 and "late" in points.ids.tolist()
    assert points.report["without_coordinates"] == ["lost"] and points.report["repeated_ids"] == []
    # one name at two places (a reused name, a typed-over id): kept, and reported (outputs list sites by id)
    path.write_text("name,x,y\nPuro,380000,7500000\nPuro,390000,7510000\nKuru,385000,7505000\n")
    points = read_points(PointLayer(uri=str(path), x="x", y="y", crs="EPSG:3067", id="name"), WORKING, Storage())
    assert len(points) == 3 and points.report["repeated_ids"] == ["Puro"]
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("name,x,y\na,1,2\nb,1,2,3\n")
    with pytest.raises(ProspectInputError, match=r"prospect.deposits: .*ragged.csv: cannot be read as a csv table: "
                                                 r"row 2 \(line 3\) has 4 fields, the header 3"):
        read_points(PointLayer(uri=str(ragged), x="x", y="y", crs="EPSG:3067"), WORKING, Storage())


def test_a_lines_layer_with_other_geometries_is_refused_not_thinned(tmp_path):
    """A fault file that also holds polygons (or points): distances are to lines only, and leaving the others out
    would drop faults without a word."""
    from minseg.geo.config import LineLayer
    from minseg.geo.vectors import read_lines

    line = {"type": "Feature", "properties": {}, "geometry": {"type": "LineString",
                                                              "coordinates": [[25.0, 67.0], [25.1, 67.05]]}}
    polygon = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [
        [[25.2, 67.0], [25.3, 67.0], [25.3, 67.1], [25.2, 67.0]]]}}
    path = tmp_path / "faults.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [line, polygon, line]}))
    with pytest.raises(ProspectInputError, match=r"prospect.lines\[0\]: \S+faults.geojson: 1 of 3 geometries are "
                                                 r"not lines \(1 Polygon\)"):
        read_lines(LineLayer(uri=str(path)), WORKING, Storage(), "prospect.lines[0]")
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [line, line]}))
    assert len(read_lines(LineLayer(uri=str(path)), WORKING, Storage(), "prospect.lines[0]")) == 2


def test_a_sample_whose_coordinates_do_not_project_is_a_problem_row(tmp_path, ray_session):
    """One latitude typed beyond 90 among good rows: that sample is left out and reported, the others are used."""
    uri = table(tmp_path, """
        id,lon,lat,Cu
        a,25.0,67.0,2
        b,25.1,95.2,4
        c,25.2,67.1,3
        d,25.3,67.2,5
        """)
    samples = read(SampleTable(uri=uri, x="lon", y="lat", crs="EPSG:4326", id="id", elements={"Cu": "Cu"}))
    assert sorted(samples.ids.tolist()) == ["a", "c", "d"] and np.isfinite(samples.x).all()
    (problem,) = samples.problems
    assert problem["sample"] == "b" and problem["value"] == "25.1, 95.2"
    assert problem["reason"].startswith("the coordinates do not project from EPSG:4326 to EPSG:3067")


def test_a_vector_file_of_several_layers_needs_the_layer_named(tmp_path):
    """GDAL reads a GeoPackage's first layer when none is named (pyogrio only warns): the Au deposits of a second
    layer would be left out of training and scoring without a word."""
    import pyogrio
    import shapely

    from minseg.geo.config import PointLayer
    from minseg.geo.vectors import read_points

    path = str(tmp_path / "deposits.gpkg")
    for layer, x in (("cu_deposits", 380000.0), ("au_deposits", 390000.0)):
        table = pa.table({"name": [layer[:2] + "1"],
                          "geometry": shapely.to_wkb(shapely.points([x], [7500000.0]))})
        pyogrio.write_arrow(table, path, layer=layer, geometry_name="geometry", geometry_type="Point",
                            crs="EPSG:3067", append=layer == "au_deposits")
    with pytest.raises(ProspectInputError, match=r"prospect.deposits: \S+deposits.gpkg holds 2 layers \(cu_deposits, "
                                                 r"au_deposits\); name the one to read as prospect.deposits.layer"):
        read_points(PointLayer(uri=path, id="name"), WORKING, Storage())
    points = read_points(PointLayer(uri=path, id="name", layer="au_deposits"), WORKING, Storage())
    assert points.ids.tolist() == ["au1"]


def test_tables_that_were_read_without_a_word(tmp_path, ray_session):
    """What a break-it pass found read silently: an infinite number in a Parquet column counted as a good cell (the
    text 'inf' in a CSV was a problem row); a header naming a used column twice (the first taken); a ';'-separated
    CSV refused without saying why; negative concentrations merged into the censored count."""
    path = tmp_path / "inf.parquet"
    pq.write_table(pa.table({"x": [0.0, 10, 20], "y": [0.0, 0, 0], "Au": [1.0, np.inf, 2.0]}), path)
    samples = read(SampleTable(uri=str(path), x="x", y="y", crs="EPSG:3067", elements={"Au": "Au"}))
    assert samples.report["elements"]["Au"]["bad"] == 1 and samples.report["elements"]["Au"]["ok"] == 2
    assert [(p["row"], p["column"], p["reason"]) for p in samples.problems] == [(2, "Au", "not a finite number")]

    uri = table(tmp_path, "x,y,Au,B,Au\n0,0,1,2,3\n", "twice.csv")
    with pytest.raises(ProspectInputError, match=r"twice.csv: its header names a column prospect.samples uses more "
                                                 r"than once \('Au' is columns 3, 5\)"):
        read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Au": "Au"}))
    path = tmp_path / "twice.parquet"  # Parquet allows it too
    pq.write_table(pa.Table.from_arrays([pa.array([0.0]), pa.array([0.0]), pa.array([1.0]), pa.array([2.0])],
                                        names=["x", "y", "Au", "Au"]), path)
    with pytest.raises(ProspectInputError, match=r"'Au' is columns 3, 4"):
        read(SampleTable(uri=str(path), x="x", y="y", crs="EPSG:3067", elements={"Au": "Au"}))

    hint = r"its header reads as one column: the file seems separated by ';' \(set prospect.samples.delimiter: ';'\)"
    for text, reason in [("x;y;Au\n0;0;2\n", r"no column\(s\) Au, x, y \(prospect.samples\); it has: x;y;Au; "),
                         ("x;y;Au\n0;0;1,5\n10;0;2\n", r"cannot be read as a csv table: row 1 \(line 2\) has 2 fields, "
                                                       r"the header 1: 0;0;1,5 \(CSV parse error: .*\); ")]:
        uri = table(tmp_path, text, "semicolons.csv")
        with pytest.raises(ProspectInputError, match=reason + hint):
            read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Au": "Au"}))
    samples = read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Au": "Au"}, delimiter=";"))
    assert samples.values["Au"][1] == 2 and samples.problems[0]["value"] == "1,5"  # a decimal comma: listed
    # as a European lab writes it: ';' between fields, ',' the decimal mark, in values, limits and coordinates
    uri = table(tmp_path, "x;y;Au\n0,5;0;1,5\n10;0;<0,5\n20;0;2\n", "european.csv")
    samples = read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Au": "Au"}, delimiter=";",
                               decimal=","))
    assert samples.values["Au"].tolist() == [1.5, 0.25, 2.0] and samples.x[0] == 0.5 and not samples.problems
    with pytest.raises(ValueError, match=r"decimal: ',' needs another field separator: set delimiter"):
        SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Au": "Au"}, decimal=",")

    uri = table(tmp_path, "x,y,Au\n0,0,1\n10,0,-150\n20,0,0\n30,0,<5\n", "negative.csv")
    counts = read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Au": "Au"})).report["elements"]["Au"]
    assert (counts["censored"], counts["negative_censored"], counts["ok"]) == (3, 1, 1)


def test_lines_off_the_grid_are_refused_and_thin_elements_warned(tmp_path, ray_session, caplog):
    """A fault file in the wrong place (300 km off) became a channel of near-constant 270-295 km distances; an empty
    element column vanished from screening and evidence, and one with three values was interpolated, without a
    word."""

    from minseg.geo.config import LineLayer
    from minseg.geo.grid import target_grid
    from minseg.geo.config import GridSettings
    from minseg.geo.prospect import _refuse_lines_off_grid, _warn_thin_elements
    from minseg.geo.vectors import read_lines

    grid = target_grid(GridSettings(crs="EPSG:3067", cell_m=250), (350000, 7450000, 374000, 7474000))
    path = tmp_path / "faults.geojson"
    EPSG_3067 = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3067"}}
    for shift, refused in [(0, False), (30000, False), (300000, True)]:  # 30 km: a regional fault beside the grid
        path.write_text(json.dumps({"type": "FeatureCollection", "crs": EPSG_3067, "features": [{"type": "Feature",
                                    "properties": {},
                        "geometry": {"type": "LineString", "coordinates": [[349000 + shift, 7460000],
                                                                           [352000 + shift, 7461000]]}}]}))
        layer = LineLayer(uri=str(path))
        lines = read_lines(layer, WORKING, Storage(), "prospect.lines[0]")
        if refused:
            with pytest.raises(ProspectInputError, match=r"prospect.lines\[0\]: \S+faults.geojson: its nearest line "
                               r"lies 275 km from the target grid, farther than the grid is wide \(34 km; grid 349875, "
                               r"7449875, 374125, .*; the lines span 649000, "
                               r"7460000, 652000, 7461000 in the grid's CRS\): check its CRS "
                               r"\(prospect.lines\[0\].crs\)"):
                _refuse_lines_off_grid(lines, grid, layer, "prospect.lines[0]")
        else:
            _refuse_lines_off_grid(lines, grid, layer, "prospect.lines[0]")  # crossing the west edge, or near it

    arsenic = {0: "0", 1: "-1", 2: "3"}
    uri = table(tmp_path, "x,y,Au,Cu,As\n" + "".join(f"{i},0,,{i + 1},{arsenic.get(i, '')}\n" for i in range(20)))
    samples = read(SampleTable(uri=uri, x="x", y="y", crs="EPSG:3067", elements={"Au": "Au", "Cu": "Cu", "As": "As"}))
    logging.getLogger("minseg").addHandler(caplog.handler)
    try:
        _warn_thin_elements(samples, neighbours=12)
    finally:
        logging.getLogger("minseg").removeHandler(caplog.handler)
    warned = {r.getMessage(): r.fields for r in caplog.records if r.levelno == logging.WARNING}
    assert warned["prospect.elements_unusable"]["elements"] == "Au"
    assert warned["prospect.elements_sparse"]["elements"] == "As:3"  # 0 and -1: censored, limit 3 assumed
    assert warned["prospect.negative_values"]["elements"] == "As:1"
    assert samples.report["elements"]["Cu"]["usable"] == 20 and len(warned) == 3


def test_deposit_layers_empty_filtered_or_missing_their_attributes(tmp_path, shared_data):
    """An empty layer and a shapefile without its .dbf were both "has no column 'type'"; a polygon the `where`
    filter leaves out refused the whole layer ("expected points")."""
    import shutil

    from minseg.geo.config import PointLayer
    from minseg.geo.vectors import read_points

    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3067"}}
    point = {"type": "Feature", "properties": {"type": "orogenic-Au"}, "geometry": {"type": "Point",
                                                                                    "coordinates": [360000, 7460000]}}
    polygon = {"type": "Feature", "properties": {"type": "Pb-Zn"}, "geometry": {"type": "Polygon", "coordinates": [
        [[361000, 7461000], [362000, 7461000], [362000, 7462000], [361000, 7461000]]]}}
    path = tmp_path / "deposits.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": [point, polygon]}))
    kept = read_points(PointLayer(uri=str(path), where={"type": "orogenic"}), WORKING, Storage())
    assert len(kept) == 1 and kept.report["filtered_out"] == 1
    with pytest.raises(ProspectInputError, match=r"expected points, found 1 Polygon"):  # not filtered: refused
        read_points(PointLayer(uri=str(path)), WORKING, Storage())
    path.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": []}))
    with pytest.raises(ProspectInputError, match=r"prospect.deposits: \S+deposits.geojson: holds no features"):
        read_points(PointLayer(uri=str(path), where={"type": "orogenic"}), WORKING, Storage())
    for suffix in (".shp", ".shx", ".prj"):
        shutil.copy(shared_data / "geochem-gtk" / f"IOCG{suffix}", tmp_path / f"IOCG{suffix}")
    with pytest.raises(ProspectInputError, match=r"prospect.deposits: \S+IOCG.shp: no IOCG.dbf beside it \(the "
                                                 r"shapefile's attribute table\): copy it with the .shp"):
        read_points(PointLayer(uri=str(tmp_path / "IOCG.shp")), WORKING, Storage())
    shutil.copy(shared_data / "geochem-gtk" / "IOCG.dbf", tmp_path / "IOCG.dbf")
    assert len(read_points(PointLayer(uri=str(tmp_path / "IOCG.shp")), WORKING, Storage())) == 24


def test_a_deposit_table_naming_a_used_column_twice_is_refused(tmp_path):
    """The sample tables' rule for deposit CSVs: pyarrow's column lookup failed with a traceback on two 'x'."""
    from minseg.geo.config import PointLayer
    from minseg.geo.vectors import read_points

    uri = table(tmp_path, "id,x,y,x\nd1,360000,7460000,1\n", "deposits.csv")
    with pytest.raises(ProspectInputError, match=r"deposits.csv: its header names a column prospect.deposits uses "
                                                 r"more than once \('x' is columns 2, 4\)"):
        read_points(PointLayer(uri=uri, x="x", y="y", crs="EPSG:3067", id="id"), WORKING, Storage())
    # a ';' deposits table: the sample tables' delimiter option and hint
    uri = table(tmp_path, "id;x;y\nd1;360000;7460000\n", "semicolons.csv")
    with pytest.raises(ProspectInputError, match=r"prospect.deposits: \S+semicolons.csv has no column 'id'; its header "
                                                 r"reads as one column: the file seems separated by ';' \(set "
                                                 r"prospect.deposits.delimiter: ';'\)"):
        read_points(PointLayer(uri=uri, x="x", y="y", crs="EPSG:3067", id="id"), WORKING, Storage())
    read = read_points(PointLayer(uri=uri, x="x", y="y", crs="EPSG:3067", id="id", delimiter=";"), WORKING, Storage())
    assert read.ids.tolist() == ["d1"] and read.x.tolist() == [360000]


def test_a_deposit_table_with_decimal_commas(tmp_path, caplog):
    """A European deposits CSV ('380000,5' in ';'-separated fields): read with decimal ',', and without it the
    unlocated deposits' warning names the decimal comma as the likely cause (a second kind: deposits, not samples)."""
    from minseg.geo.config import PointLayer
    from minseg.geo.vectors import read_points

    uri = table(tmp_path, "id;x;y\nd1;360000,5;7460000,25\nd2;360100;7460100\n", "deposits.csv")
    read = read_points(PointLayer(uri=uri, x="x", y="y", crs="EPSG:3067", id="id", delimiter=";", decimal=","),
                       WORKING, Storage())
    assert read.ids.tolist() == ["d1", "d2"] and read.x.tolist() == [360000.5, 360100]
    assert read.y.tolist() == [7460000.25, 7460100]
    logging.getLogger("minseg").addHandler(caplog.handler)
    try:
        read = read_points(PointLayer(uri=uri, x="x", y="y", crs="EPSG:3067", id="id", delimiter=";"), WORKING,
                           Storage())
    finally:
        logging.getLogger("minseg").removeHandler(caplog.handler)
    assert read.ids.tolist() == ["d2"] and read.report["without_coordinates"] == ["d1"]
    fields = next(r.fields for r in caplog.records if r.getMessage() == "prospect.points_without_coordinates")
    assert fields["ids"] == "d1" and "set prospect.deposits.decimal: ','" in fields["hint"]
    with pytest.raises(ValueError, match=r"decimal: ',' needs another field separator: set delimiter"):
        PointLayer(uri=uri, x="x", y="y", crs="EPSG:3067", decimal=",")
