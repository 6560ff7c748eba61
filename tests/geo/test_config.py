"""The prospect section's own checks, before any input is read."""

import re
from pathlib import Path

import pytest

from minseg.config import ConfigError, MinsegConfig, load_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "prospect_synthetic.yaml"


@pytest.mark.parametrize("key", ["prospect.samples.crs", "prospect.deposits.crs", "prospect.rasters[0].crs",
                                 "prospect.lines[0].crs", "prospect.grid.crs"])
def test_a_crs_proj_does_not_know_is_a_config_error_naming_the_key(key):
    """Was a ProspectInputError once the job ran (after Ray started); now ``config validate`` says it too."""
    with pytest.raises(ConfigError, match=re.escape(key) + r": not a CRS that PROJ knows \(crs not found"):
        load_config(CONFIG, MinsegConfig, overrides={key: "EPSG:99999"})
    assert load_config(CONFIG, MinsegConfig, overrides={key: "EPSG:3067"}).prospect is not None


def test_the_working_crs_needs_an_epsg_code():
    with pytest.raises(ConfigError, match=r"prospect.grid.crs: .*without an EPSG code"):
        load_config(CONFIG, MinsegConfig, overrides={"prospect.grid.crs": "+proj=tmerc +lon_0=27 +ellps=GRS80"})
    config = load_config(CONFIG, MinsegConfig, overrides={"prospect.samples.crs": "+proj=tmerc +lon_0=27 +ellps=GRS80"})
    assert config.prospect.samples.crs.startswith("+proj=tmerc")  # inputs may come in any CRS PROJ knows


@pytest.mark.parametrize("crs, units", [("EPSG:4326", "a geographic CRS (units: degree)"),
                                        ("EPSG:2249", "a projected CRS (units: US survey foot)")])
def test_a_grid_crs_not_in_metres_is_refused(crs, units):
    """Cell sizes, distances, radii and km² are read as metres: a grid in degrees or feet would be silently wrong
    (a 0.01° cell: 1e-10 'km²'). Inputs in such CRSs are fine (they are reprojected)."""
    for key in ("prospect.grid.crs", "synth.survey.crs"):
        overrides = {key: crs} if key.startswith("prospect") else {key: crs, "synth.survey.n_samples": 10}
        with pytest.raises(ConfigError, match=re.escape(f"{key}: {units}: a grid needs a projected CRS in metres")):
            load_config(CONFIG, MinsegConfig, overrides=overrides)
    assert load_config(CONFIG, MinsegConfig, overrides={"prospect.samples.crs": crs}).prospect.samples.crs == crs
    with pytest.raises(ConfigError, match=r"prospect.grid.crs: a compound CRS \(a horizontal CRS with heights\): "
                                          r"give its horizontal part, EPSG:25832"):
        load_config(CONFIG, MinsegConfig, overrides={"prospect.grid.crs": "EPSG:5972"})


def test_a_grid_whose_metres_are_not_ground_metres_is_refused():
    """Web Mercator is 'metres', but at 65° N a map metre is 0.42 m of ground: cells, distances and km² off."""
    from minseg.geo.config import GridSettings, ProspectInputError
    from minseg.geo.grid import target_grid

    with pytest.raises(ProspectInputError, match=r"prospect.grid.crs: EPSG:3857: its projection's scale at the "
                                                 r"grid's centre \(65\.0°, 25\.2°\) is 2\.36"):
        target_grid(GridSettings(crs="EPSG:3857", cell_m=250, extent=(2790000, 9590000, 2810000, 9610000)), None)
    near_equator = target_grid(GridSettings(crs="EPSG:3857", cell_m=250, extent=(0, 0, 20000, 20000)), None)
    assert near_equator.rows == 80  # Mercator near the equator: its metres are ground metres
    # x and y swapped lie outside the CRS's area: refused as such, not given a scale verdict (the next test)


def test_a_proj_string_only_near_an_epsg_crs_is_refused_for_the_grid():
    """The maps were computed in the PROJ string's CRS but labelled with the EPSG code PROJ guessed (KKJ for a
    datum-less tmerc): ~189 m off in a GIS."""
    kkj_like = "+proj=tmerc +lat_0=0 +lon_0=27 +k=1 +x_0=3500000 +y_0=0 +ellps=intl +units=m"
    with pytest.raises(ConfigError, match=r"prospect.grid.crs: PROJ matches it to EPSG:2393 only approximately"):
        load_config(CONFIG, MinsegConfig, overrides={"prospect.grid.crs": kkj_like})
    from pyproj import CRS

    esri = CRS.from_epsg(3067).to_wkt("WKT1_ESRI")  # the same CRS as another tool writes it: accepted
    assert load_config(CONFIG, MinsegConfig, overrides={"prospect.grid.crs": esri}).prospect.grid.crs == esri



def test_evidence_names_clash_whatever_their_case():
    """Each evidence channel names a file (``evidence/<name>.tif``): ``Cu`` and ``cu`` are one file where names
    ignore case (macOS, Windows), so two channels of those names are refused as two of one name are."""
    from types import SimpleNamespace

    from minseg.geo.config import ProspectInputError
    from minseg.geo.prospect import _check_names

    settings = SimpleNamespace(samples=SimpleNamespace(elements={"Cu": "Cu_ppm", "Au": "Au_ppb"}),
                               lines=[SimpleNamespace(name="faults")])
    rasters = [(0, SimpleNamespace(name="cu", uri="grids/cu.tif")), (1, SimpleNamespace(name="FAULTS", uri="f.tif"))]
    with pytest.raises(ProspectInputError, match=r"Cu / cu: prospect.samples.elements and prospect.rasters\[0\] "
                                                 r"\(grids/cu.tif\); FAULTS / faults: prospect.rasters\[1\] \(f.tif\) "
                                                 r"and prospect.lines\[0\]; rename one"):
        _check_names(settings, rasters)
    _check_names(settings, rasters[:0])  # distinct names pass


def test_where_filters_and_grid_sizes_are_checked_before_the_job():
    """A `where` that is no regular expression was a traceback from the job (re.error, exit 1) that `config validate`
    called valid; a cell size in the wrong unit (1 m over a 24 km survey: 576 M cells) filled the memory without a
    word; a cell larger than the study area gave a 1 x 1 grid and a message about a raster's CRS."""
    for key in ("prospect.deposits.where.type", "prospect.lines[0].where.type"):
        with pytest.raises(ConfigError, match=re.escape(key.rsplit(".", 1)[0]) + r": type: 'orogenic-Au\(' is not a "
                                              r"regular expression \(missing \), unterminated subpattern"):
            load_config(CONFIG, MinsegConfig, overrides={key: "orogenic-Au("})
    assert load_config(CONFIG, MinsegConfig, overrides={"prospect.deposits.where.type": "au|cu"}).prospect
    with pytest.raises(ConfigError, match=r"prospect.grid: cell_m: 1 m gives 60000 x 60000 = 3,600,000,000 cells over "
                                          r"60000 x 60000 m, more than max_cells \(50,000,000; each evidence layer "
                                          r"would take 26.8 GiB while it is built\)"):
        load_config(CONFIG, MinsegConfig, overrides={"prospect.grid.cell_m": 1})
    with pytest.raises(ConfigError, match=r"prospect.grid: cell_m: 70000 m gives a grid of 1 x 1 cells over 60000 x "
                                          r"60000 m: a cell is larger than the study area"):
        load_config(CONFIG, MinsegConfig, overrides={"prospect.grid.cell_m": 70000})
    raised = load_config(CONFIG, MinsegConfig, overrides={"prospect.grid.cell_m": 10, "prospect.grid.max_cells": 4e7})
    assert raised.prospect.grid.max_cells == 40_000_000


def test_a_grid_from_the_samples_bounds_or_a_reference_is_sized_too():
    """Without an extent the grid's size is known only once the samples (or the reference raster) are read: the same
    bounds, before any layer is made."""
    from minseg.geo.config import GridSettings, ProspectInputError
    from minseg.geo.grid import target_grid
    from minseg.io.geotiff import GridGeometry

    with pytest.raises(ProspectInputError, match=r"prospect.grid: cell_m: 1 m gives 24001 x 24001 = 576,048,001 cells"):
        target_grid(GridSettings(crs="EPSG:3067", cell_m=1), (350000, 7450000, 374000, 7474000))
    reference = GridGeometry(350000, 7480000, 0.5, 0.5, 60000, 60000, 3067)
    with pytest.raises(ProspectInputError, match=r"prospect.grid.reference: r.tif: cell_m: 0.5 m gives 60000 x 60000"):
        target_grid(GridSettings(crs="EPSG:3067", reference="r.tif"), None, reference)
    assert target_grid(GridSettings(crs="EPSG:3067", cell_m=250), (350000, 7450000, 374000, 7474000)).rows == 97
    # samples along a north-south traverse: one cell wide, a map still
    assert target_grid(GridSettings(crs="EPSG:3067", cell_m=250), (360000, 7450000, 360000, 7474000)).cols == 1
    # a reference raster of tall pixels: its own rows and columns
    tall = GridGeometry(350000, 7480000, 100, 1000, 30, 300, 3067)
    assert (target_grid(GridSettings(crs="EPSG:3067", reference="r.tif"), None, tall).rows, tall.cols) == (30, 300)


def test_a_grid_far_from_where_its_crs_is_used_is_refused_naming_the_likely_cause():
    """x and y swapped (TM35FIN northings as eastings) built a grid near the equator from the samples' bounds, and
    the first raster was then said not to overlap it: "check its CRS", about a raster that was right."""
    from minseg.geo.config import GridSettings, ProspectInputError
    from minseg.geo.grid import target_grid

    settings = GridSettings(crs="EPSG:3067", cell_m=250)
    with pytest.raises(ProspectInputError, match=r"prospect.grid: the samples' bounds centres on \(7462000, 362000\) is "
                                                 r"2.0°, 79.9° in ETRS89 / TM35FIN\(E,N\), far outside its area "
                                                 r"\(Finland - onshore and offshore: 58.8° to 70.1° N, .*\): are "
                                                 r"prospect.samples.x and y swapped"):
        target_grid(settings, (7450000, 350000, 7474000, 374000))
    with pytest.raises(ProspectInputError, match=r"prospect.grid: prospect.grid.extent centres on .*: is it in "
                                                 r"EPSG:3067 \(prospect.grid.crs\)\?"):
        target_grid(GridSettings(crs="EPSG:3067", cell_m=250, extent=(7450000, 350000, 7474000, 374000)), None)
    assert target_grid(settings, (350000, 7450000, 374000, 7474000)).cols == 97
    # a UTM zone used a few degrees beyond its band is common, and fine; so are areas across the antimeridian (Fiji's
    # grid; UTM zone 1 just west of it)
    assert target_grid(GridSettings(crs="EPSG:32635", cell_m=250), (880000, 7450000, 900000, 7470000)).cols == 81
    from pyproj import Transformer

    for crs, lon, lat in [("EPSG:3460", 178.5, -18.0), ("EPSG:32601", 179.0, 60.0)]:
        x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
        assert target_grid(GridSettings(crs=crs, cell_m=250), (x, y, x + 10000, y + 10000)).cols == 41, crs
