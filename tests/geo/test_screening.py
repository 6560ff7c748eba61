"""Element screening by AUC / Z_AUC, deposits on the grid, semantic CRS comparison."""

import numpy as np
import pytest
from pydantic import ValidationError

from minseg.geo.config import GridSettings, ProspectInputError, ScreeningSettings
from minseg.geo.crs import input_crs, parse_crs, same_crs
from minseg.geo.grid import target_grid, world_to_cell
from minseg.geo.screening import format_table, screen_elements, screen_samples
from minseg.metrics import auc_z_score


def test_screening_table_by_hand():
    grid = np.arange(16, dtype=np.float32).reshape(4, 4)  # deposits on high values -> strong association
    deposits = np.array([[3, 3], [3, 2], [3, 3]])  # a duplicate cell counts once
    noise = np.array([[5, 1, 9, 3], [2, 8, 0, 7], [4, 6, 11, 10], [12, 15, 13, 14]], np.float32)[::-1]
    empty = np.full((4, 4), np.nan, np.float32)
    rows = screen_elements({"Cu": grid, "Zn": -grid, "Pb": noise, "Hg": empty}, deposits,
                           ScreeningSettings(critical_z=1.0, max_elements=None))
    by = {r["element"]: r for r in rows}
    assert by["Cu"]["positives"] == 2 and by["Cu"]["negatives"] == 14
    assert by["Cu"]["auc"] == 1.0 and by["Cu"]["kept"]
    # by hand: the two deposit cells hold 15 and 14; Zn = -Cu ranks them lowest -> AUC 0
    assert by["Zn"]["auc"] == 0.0 and not by["Zn"]["kept"]
    # deposit cells hold 3 and 9: 3 of the 14 other cells are below 3, 8 below 9 -> U = 11 of 2 x 14 pairs
    assert by["Pb"]["auc"] == pytest.approx(round(11 / 28, 4))
    assert by["Pb"]["z_auc"] == pytest.approx(auc_z_score(by["Pb"]["auc"], 2, 14), abs=1e-3)
    assert not by["Hg"]["kept"] and by["Hg"]["reason"] == "no values at all"
    two_sided = {r["element"]: r for r in screen_elements({"Zn": -grid}, deposits,
                                                           ScreeningSettings(critical_z=1.0, two_sided=True))}
    assert two_sided["Zn"]["kept"]
    assert "Cu" in format_table(rows)


def test_max_elements_keeps_the_strongest():
    rng = np.random.default_rng(0)
    base = rng.random((50, 50)).astype(np.float32)
    deposits = np.argwhere(base > 0.97)
    grids = {"strong": base, "weaker": base + rng.normal(0, 0.3, base.shape).astype(np.float32),
             "none": rng.random((50, 50)).astype(np.float32)}
    rows = {r["element"]: r for r in screen_elements(grids, deposits, ScreeningSettings(max_elements=1,
                                                                                         always=["none"]))}
    assert rows["strong"]["kept"] and not rows["weaker"]["kept"] and "max_elements" in rows["weaker"]["reason"]
    assert rows["none"]["kept"] and rows["none"]["reason"] == "always kept (config)"


def test_a_z_auc_resting_on_few_positives_is_kept_with_a_caveat():
    """Eq. 3 with 2 positives above all 14 negatives gives Z_AUC 7.3; the exact rank test's p is 1 / C(16, 2), a z of
    2.39, short of 2.58: the paper's rule keeps the element, its reason says how little evidence it had. With many
    positives the two agree and nothing is said."""
    from scipy.stats import norm

    from minseg.geo.screening import weakly_kept

    grid = np.arange(16, dtype=np.float32).reshape(4, 4)
    (row,) = screen_elements({"Cu": grid}, np.array([[3, 3], [3, 2]]), ScreeningSettings())
    assert row["z_auc"] == pytest.approx(auc_z_score(1.0, 2, 14), abs=1e-3) and row["z_auc"] > 7
    assert row["rank_z"] == pytest.approx(norm.isf(1 / 120), abs=1e-3)
    assert row["kept"] and row["weak"]
    assert row["reason"] == "Z_AUC >= 2.58; weak: the rank test gives z 2.39 with 2 positives"
    assert weakly_kept([row]) == [row]
    (low,) = screen_elements({"Cu": -grid}, np.array([[3, 3], [3, 2]]), ScreeningSettings(two_sided=True))
    assert low["rank_z"] == pytest.approx(-norm.isf(1 / 120), abs=1e-3) and "weak: the rank test gives z -2.39" in \
        low["reason"]
    rng = np.random.default_rng(0)
    base = rng.random((50, 50)).astype(np.float32)
    (strong,) = screen_elements({"strong": base}, np.argwhere(base > 0.97), ScreeningSettings())
    assert strong["positives"] > 50 and strong["rank_z"] > 2.58 and strong["reason"] == "Z_AUC >= 2.58"
    assert weakly_kept([strong]) == [] and strong["weak"] is False
    # every value tied (a constant layer): no evidence either way, not an infinite z
    (flat,) = screen_elements({"flat": np.ones((4, 4), np.float32)}, np.array([[3, 3]]), ScreeningSettings())
    assert flat["rank_z"] == 0.0 and not flat["kept"]
    # many pairs: exact in the far tail (one positive on top of 20,000: p 1 / 20,001, where the normal
    # approximation says z 1.7), the normal approximation in the middle (the exact distribution took minutes there)
    from minseg.geo.screening import rank_test_z

    spread = np.arange(60_001, dtype=np.float64)
    assert rank_test_z(spread[20_000:20_001], spread[:20_000]) == pytest.approx(norm.isf(1 / 20_001), abs=1e-6)
    assert abs(rank_test_z(spread[[5, 30_000, 59_000]], np.delete(spread, [5, 30_000, 59_000]))) < 1


def test_crs_compared_by_meaning(shared_data):
    esri = parse_crs((shared_data / "geochem-gtk" / "IOCG.prj").read_text(), "IOCG.prj")
    assert same_crs(esri, parse_crs("EPSG:3067", "x")) and not same_crs(esri, parse_crs("EPSG:3857", "x"))
    assert input_crs(esri, "EPSG:3067", "IOCG.shp", "prospect.deposits.crs") is not None


def test_unidentifiable_crs_needs_the_config(shared_data):
    import rasterio

    with rasterio.open(shared_data / "geochem-gtk" / "lithoname200k") as source:
        recorded = parse_crs(source.crs.to_wkt(), "grid")
    with pytest.raises(ProspectInputError, match=r"cannot be identified; give it in the config as prospect.rasters\[0\].crs"):
        input_crs(recorded, None, "lithoname200k", "prospect.rasters[0].crs")
    assert same_crs(input_crs(recorded, "EPSG:3067", "lithoname200k", "prospect.rasters[0].crs"),
                    parse_crs("EPSG:3067", "x"))


def test_grid_from_sample_bounds_and_cells_of_points():
    # small round numbers: Web Mercator near (0, 0), where its metres are ground metres (TM35FIN there is far outside
    # Finland: refused)
    geometry = target_grid(GridSettings(crs="EPSG:3857", cell_m=100, buffer_m=50), (1000, 2000, 1950, 2420))
    # 950..2000 x 1950..2470 snapped outwards to whole 100 m cells, anchored at the lower left
    assert (geometry.x0, geometry.y0, geometry.rows, geometry.cols) == (950, 2550, 6, 11)
    rows, cols, inside = world_to_cell(geometry, np.array([950.0, 1049.9, 1999.9, 5000.0]),
                                       np.array([2550.0, 2450.1, 1950.1, 2000.0]))
    assert rows.tolist()[:3] == [0, 0, 5] and cols.tolist()[:3] == [0, 0, 10]
    assert inside.tolist() == [True, True, True, False]
    # without buffer_m: half a cell, so the samples on the bounds' bottom and right edges are on the grid (a cell
    # holds its top and left edges only: with 0 they fell outside)
    bounds = (1000.0, 2000.0, 1900.0, 2400.0)
    for buffer, expected in ((None, [True] * 4), (0.0, [True, False, False, False])):
        geometry = target_grid(GridSettings(crs="EPSG:3857", cell_m=100, buffer_m=buffer), bounds)
        _, _, inside = world_to_cell(geometry, np.array([1000.0, 1900.0, 1000.0, 1900.0]),
                                     np.array([2400.0, 2400.0, 2000.0, 2000.0]))
        assert inside.tolist() == expected
    with pytest.raises(ValidationError, match="EPSG code"):  # the config refuses it (tests/geo/test_config.py)
        GridSettings(crs="+proj=tmerc +lon_0=27 +ellps=GRS80", cell_m=10)
    with pytest.raises(ProspectInputError, match="EPSG code"):  # and the job, given settings not validated
        target_grid(GridSettings.model_construct(crs="+proj=tmerc +lon_0=27 +ellps=GRS80", cell_m=10), (0, 0, 1, 1))


def test_sample_level_screening_by_hand():
    """The paper's level: samples near a training deposit against the other samples, before interpolation."""
    xy = np.array([[0, 0], [100, 0], [5000, 0], [6000, 0], [9000, 0], [20000, 0], [20100, 0]], float)
    cu = np.array([9.0, 8.0, 1.0, 2.0, 3.0, 7.0, np.nan])
    rows = screen_samples({"Cu": cu}, xy, training_xy=np.array([[50.0, 0.0]]), known_xy=np.array([[20050.0, 0]]),
                          settings=ScreeningSettings(level="samples", sample_radius_m=500, critical_z=0.5))
    (row,) = rows
    # positives: the two samples within 500 m of the training deposit; the two near the other known deposit are
    # neither (one of them has no value anyway); negatives: the three others
    assert row["positives"] == 2 and row["negatives"] == 3
    assert row["auc"] == 1.0 and row["z_auc"] == pytest.approx(auc_z_score(1.0, 2, 3), abs=1e-3)
    assert row["kept"]
    far = screen_samples({"Cu": cu}, xy, np.array([[50000.0, 0]]), np.zeros((0, 2)),
                         ScreeningSettings(level="samples", sample_radius_m=500))
    assert far[0]["positives"] == 0 and not far[0]["kept"] and far[0]["reason"] == "no values at deposits"


def test_sample_level_screening_on_the_gtk_till_survey(shared_data, ray_session):
    from minseg.config import MinsegConfig, load_config
    from minseg.geo.crs import parse_crs
    from minseg.geo.vectors import read_points
    from minseg.geo.samples import read_samples
    from minseg.io.storage import Storage
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "mfaf_paper.yaml", MinsegConfig)
    settings = config.prospect
    working = parse_crs("EPSG:3067", "grid")
    samples = read_samples(settings.samples, working, Storage(), 0.25)
    deposits = read_points(settings.deposits, working, Storage())
    xy = np.column_stack([samples.x, samples.y])
    rows = {r["element"]: r for r in screen_samples(samples.values, xy, np.column_stack([deposits.x, deposits.y]),
                                                     np.zeros((0, 2)), settings.screening)}
    assert settings.screening.level == "samples" and len(rows) == 22
    for row in rows.values():  # tens of positive samples, about a thousand negatives, Z from those counts
        assert 0 < row["positives"] < 200 and row["negatives"] > 800
        if row["auc"] is not None:
            assert row["z_auc"] == pytest.approx(auc_z_score(row["auc"], row["positives"], row["negatives"]), abs=2e-3)


def test_a_folds_sample_screening_is_blind_to_its_held_out_deposits():
    """Samples near a deposit the fold knows but does not train on (outside the study area) are no negatives;
    samples near its held-out deposits stay negatives (they were left out once: screening then favoured elements
    anomalous at the deposits it is tested on)."""
    from types import SimpleNamespace

    from minseg.geo.prospect import Evidence, screen

    study = np.ones((10, 10), bool)
    cells = np.array([[1, 1], [8, 8]])  # training, held out
    xy = np.array([[150.0, 850.0], [850.0, 150.0]])
    outside = np.array([[5000.0, 5000.0]])
    evidence = Evidence({"Cu": np.zeros((10, 10))}, [], {}, None, study, np.array([True, True, False]), cells,
                        cells, xy, np.vstack([xy, outside]))
    background = np.column_stack([np.linspace(300, 700, 10), np.full(10, 500.0)])
    near = np.array([[160.0, 850.0], [140.0, 850.0], [860.0, 150.0], [840.0, 150.0], [5010.0, 5000.0],
                     [4990.0, 5000.0]])
    sample_xy = np.vstack([background, near])
    cu = np.concatenate([np.arange(10.0), [50.0, 51.0, 52.0, 53.0, 54.0, 55.0]])
    samples = SimpleNamespace(values={"Cu": cu}, x=sample_xy[:, 0], y=sample_xy[:, 1])
    held_out = np.zeros((10, 10), bool)
    held_out[6:, 6:] = True  # the fold's test footprint holds the second deposit
    settings = ScreeningSettings(level="samples", sample_radius_m=100, critical_z=0.5)
    (row,) = screen(settings, evidence, samples, cells[:1], None, held_out, cells[1:])
    assert row["positives"] == 2 and row["negatives"] == 12  # the two near the held-out deposit among them
    # under a test window's footprint but not tested on (its own window dropped for the overlap): known, no negatives
    (near_test,) = screen(settings, evidence, samples, cells[:1], None, held_out, np.zeros((0, 2), np.int64))
    assert near_test["negatives"] == 10
    # the grid level alike: a held-out deposit's cell is a negative, a known one's is not (it was a negative too)
    grid = ScreeningSettings(level="grid", critical_z=0.5)
    (tested,) = screen(grid, evidence, samples, cells[:1], None, held_out, cells[1:])
    (known,) = screen(grid, evidence, samples, cells[:1], None, held_out, np.zeros((0, 2), np.int64))
    assert (tested["positives"], tested["negatives"], known["negatives"]) == (1, 99, 98)
    (final,) = screen(settings, evidence, samples, cells, None, np.zeros((10, 10), bool))
    assert final["positives"] == 4 and final["negatives"] == 10  # the outside deposit's samples left out

