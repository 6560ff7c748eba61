"""Rate curves, captures, targets and window metrics, checked by hand."""

import json

import numpy as np
import pytest

from minseg.geo.config import TargetSettings
from minseg.geo.predict import block_centres
from minseg.geo.targets import AreaRanks, area_ranks, capture, find_targets, rate_curve, targets_geojson, window_metrics
from minseg.io.geotiff import GridGeometry


def test_area_ranks_and_rate_curve_by_hand():
    score = np.arange(100, dtype=np.float32).reshape(10, 10)  # 99 at the bottom right
    study = np.ones((10, 10), bool)
    cells = np.array([[9, 9], [9, 0], [0, 0]])  # scores 99, 90, 0
    ranks = area_ranks(score, study, cells)
    np.testing.assert_allclose(ranks.at_least, [0.01, 0.10, 1.0])  # 1, 10 and 100 cells score at least as high
    np.testing.assert_allclose(ranks.above, [0.0, 0.09, 0.99])
    curve = rate_curve(ranks)
    assert curve["auc"] == pytest.approx(1 - (0.005 + 0.095 + 0.995) / 3) and curve["deposits"] == 3
    assert curve["deposits_percent"][10] == pytest.approx(200 / 3)  # two of three in the top 10 %
    assert capture(ranks, [10, 20]) == {"top_10_percent": pytest.approx(200 / 3), "top_20_percent": pytest.approx(200 / 3)}
    study[9, 9] = False  # outside the study area cells do not count
    assert area_ranks(score, study, np.array([[9, 8]])).at_least[0] == pytest.approx(1 / 99)
    pooled = AreaRanks.concat([ranks, area_ranks(score, study, np.array([[9, 8]]))])
    assert len(pooled) == 4 and len(AreaRanks.concat([])) == 0 and rate_curve(AreaRanks.concat([]))["auc"] is None


def test_ties_come_in_together_and_share_the_auc():
    """A threshold keeps every cell tied with a deposit's (the curve and the captures); the AUC joins the curve's
    points by straight lines across ties, as the ROC's AUC does with tied scores: a constant map scores 0.5."""
    flat = np.ones((5, 5), np.float32)
    ranks = area_ranks(flat, np.ones((5, 5), bool), np.array([[2, 2], [0, 0]]))
    assert ranks.at_least.tolist() == [1.0, 1.0] and ranks.above.tolist() == [0.0, 0.0]
    assert rate_curve(ranks)["auc"] == 0.5 and capture(ranks, [10])["top_10_percent"] == 0.0
    saturated = np.zeros((10, 10), np.float32)
    saturated[:2] = 1.0  # 20 cells at the top score (a sigmoid saturating in float32)
    ranks = area_ranks(saturated, np.ones((10, 10), bool), np.array([[0, 0], [5, 5]]))
    assert ranks.at_least.tolist() == [0.2, 1.0] and ranks.above.tolist() == [0.0, 0.2]
    assert rate_curve(ranks)["auc"] == pytest.approx(1 - (0.1 + 0.6) / 2)
    assert capture(ranks, [10, 20]) == {"top_10_percent": 0.0, "top_20_percent": 50.0}


def test_a_deposit_the_map_leaves_unscored_is_found_last_never_first():
    """A NaN score at a deposit (a cell no window scored) once ranked 0: captured in the top 0 % of the area."""
    score = np.arange(16, dtype=np.float32).reshape(4, 4)
    score[0, :] = np.nan
    ranks = area_ranks(score, np.ones((4, 4), bool), np.array([[0, 1], [3, 3]]))
    assert ranks.at_least.tolist() == [1.0, 1 / 12] and ranks.above.tolist() == [1.0, 0.0]
    assert capture(ranks, [10])["top_10_percent"] == 50.0
    nothing = area_ranks(np.full((4, 4), np.nan, np.float32), np.ones((4, 4), bool), np.array([[0, 1], [3, 3]]))
    assert nothing.at_least.tolist() == [1.0, 1.0] and rate_curve(nothing)["deposits"] == 2  # not dropped


def test_every_study_cell_is_scored_by_a_window_in_its_own_block():
    """An irregular study edge: blocks whose middle lies outside still score their study cells (their window is
    centred on the study cell nearest the middle); blocks with none are not scored."""
    study = np.zeros((10, 9), bool)
    study[3:, :] = True  # rows 0-2 outside: the first row of 4 x 4 blocks has its middle (row 2) outside
    study[:, 8] = False
    centres = block_centres(study, 4)
    assert centres.shape == (3, 3, 2)
    assert centres[0, 0].tolist() == [3, 2] and centres[0, 1].tolist() == [3, 6]  # nearest study cells
    assert centres[1, 1].tolist() == [6, 6]  # a middle in the study area: as before
    assert centres[0, 2].tolist() == [-1, -1] and centres[2, 2].tolist() == [-1, -1]  # column 8 only: none
    for (i, j) in zip(*np.nonzero(centres[..., 0] >= 0)):
        r, c = centres[i, j]
        assert study[r, c] and r // 4 == i and c // 4 == j
    covered = np.zeros_like(study)
    for (i, j) in zip(*np.nonzero(centres[..., 0] >= 0)):
        covered[i * 4 : i * 4 + 4, j * 4 : j * 4 + 4] = True
    assert (covered | ~study).all()  # every study cell lies in a scored block


def test_targets_are_ranked_regions_with_their_deposits():
    geometry = GridGeometry(1000.0, 2000.0, 100.0, 100.0, 20, 20, 3067)
    score = np.zeros((20, 20), np.float32)
    score[2:5, 2:5] = 0.9  # 9 cells
    score[10:14, 10:14] = 0.95  # 16 cells, higher
    score[18, 18] = 0.99  # a single cell: below min_cells
    study = np.ones((20, 20), bool)
    deposits = {"ids": np.array(["A", "B"], object), "rows": np.array([3, 0]), "cols": np.array([3, 0])}
    rows, regions = find_targets(score, study, geometry, deposits, TargetSettings(top_percent=10, min_cells=4))
    assert [r["target_id"] for r in rows] == [1, 2]
    assert rows[0]["cells"] == 16 and rows[0]["max_score"] == pytest.approx(0.95)
    assert rows[1]["deposit_ids"] == "A" and rows[1]["known_deposits"] == 1
    assert rows[1]["area_km2"] == pytest.approx(0.09)
    assert rows[0]["centroid_x"] == pytest.approx(1000 + 12 * 100) and rows[0]["centroid_y"] == pytest.approx(2000 - 12 * 100)
    assert (regions == 1).sum() == 16 and regions[18, 18] == 0
    document = json.loads(targets_geojson(rows, regions, geometry))
    assert document["crs"]["properties"]["name"].endswith("EPSG::3067")
    ring = document["features"][0]["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert (min(xs), max(xs), min(ys), max(ys)) == (2000.0, 2400.0, 600.0, 1000.0)  # cell edges in map units


def test_window_metrics_by_hand():
    metrics = window_metrics(np.array([0.9, 0.8, 0.3, 0.6, 0.1]), np.array([1, 1, 1, 0, 0]))
    assert metrics["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    assert metrics["accuracy"] == pytest.approx(3 / 5) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["auc"] == pytest.approx(5 / 6)


def test_both_rate_curves_count_a_deposit_cell_once():
    """Two deposits in one cell are one place on the map (and one positive window, what the prediction rate
    pools): the success rate counted them twice."""
    from pathlib import Path

    from minseg.config import MinsegConfig, load_config
    from minseg.geo.prospect import Evidence, TrialMaps, rate_metrics

    settings = load_config(Path(__file__).resolve().parents[2] / "configs" / "prospect_synthetic.yaml",
                           MinsegConfig).prospect
    study = np.ones((10, 10), bool)
    probability = np.arange(100, dtype=np.float32).reshape(10, 10) / 100
    cells = np.array([[9, 9], [9, 9], [0, 0]])  # two deposits in the top cell, one in the bottom one
    evidence = Evidence({}, [], {}, None, study, np.ones(3, bool), cells, np.unique(cells, axis=0),
                        cells.astype(float), cells.astype(float))
    maps = TrialMaps([area_ranks(probability, study, cells[:1])], [], [], [], [], probability, probability, 1)
    curves, metrics = rate_metrics(settings, maps, evidence)
    assert metrics["success_rate"]["deposits"] == 2 and metrics["success_rate"]["top_10_percent"] == 50.0
    assert metrics["success_rate"]["auc"] == pytest.approx(1 - (0.005 + 0.995) / 2)
    assert metrics["prediction_rate"]["deposits"] == 1 and len(curves) == 2

