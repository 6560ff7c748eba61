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
    # x and y swapped lie outside the CRS's area: no scale verdict there (the samples' check says what is wrong)
    swapped = target_grid(GridSettings(crs="EPSG:3067", cell_m=250, extent=(7450000, 350000, 7460000, 360000)), None)
    assert swapped.cols == 40


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
