"""Errors of a predicted mineralogy against its reference mask's (``mineralogy.compare``), by hand."""

import numpy as np
import pytest

from minseg.mineralogy.compare import compare_mineralogy
from minseg.mineralogy.config import MineralogySettings
from minseg.mineralogy.slide import MeasureSpec
from tests.mineralogy.test_slide import NAMES, measured


def pair(names):
    """A gangue particle (4x4) in resin holding pyrite: the prediction's 2x2 pyrite inside it (all its boundary
    with gangue), the reference's 2x3 pyrite reaching the resin (2 of its 10 edges: 20 % free surface, 80 %
    gangue). Class ids follow ``names`` (resin, pyrite, chalcopyrite, gangue first)."""
    predicted = np.zeros((8, 8), np.uint8)
    predicted[2:6, 2:6] = 3
    predicted[3:5, 3:5] = 1
    reference = predicted.copy()
    reference[3:5, 3:6] = 1
    spec = MeasureSpec(tuple(names), MineralogySettings(), 1.0)
    return measured(predicted, 8, spec), measured(reference, 8, spec)


def test_association_error_is_the_share_of_boundary_given_to_another_partner():
    """Pyrite 0/100 (free surface / gangue) against 20/80: 20 % of its boundary has the wrong partner, whatever
    the class list. The mean absolute difference over the other classes said 13.33 pp with 4 classes and 4.44
    with 10 (classes absent from both maps diluted it)."""
    predicted, reference = pair(NAMES)
    assert reference["association"]["pyrite"]["free_surface_pct"] == 20.0
    errors = compare_mineralogy(predicted, reference)["association"]
    assert errors["minerals"]["pyrite"]["misassigned_pp"] == 20.0
    assert errors["minerals"]["pyrite"]["free_surface"] == {"predicted": 0.0, "reference": 20.0, "error": -20.0}
    more = NAMES + ("galena", "sphalerite", "bornite", "magnetite", "pyrrhotite", "covellite")  # absent from both
    errors_more = compare_mineralogy(*pair(more))["association"]
    assert errors_more["minerals"]["pyrite"]["misassigned_pp"] == 20.0
    assert errors_more["mean_misassigned_pp"] == errors["mean_misassigned_pp"]
    assert "mae_pp" not in errors and "mae_pp" not in errors["minerals"]["pyrite"]


def test_the_mean_is_over_the_minerals_with_an_error():
    """Gangue: its rows differ in pyrite and resin contacts; chalcopyrite is only in the prediction (no row on
    the reference side: no error, left out of the mean)."""
    _, reference = pair(NAMES)
    labels = np.zeros((8, 8), np.uint8)
    labels[2:6, 2:6] = 3
    labels[3:5, 3:5] = 1
    labels[0, 0] = 2  # a chalcopyrite pixel in resin, predicted only
    predicted = measured(labels, 8, MeasureSpec(NAMES, MineralogySettings(), 1.0))
    errors = compare_mineralogy(predicted, reference)["association"]
    minerals = errors["minerals"]
    assert minerals["chalcopyrite"]["misassigned_pp"] is None
    gangue_p, gangue_r = predicted["association"]["gangue"], reference["association"]["gangue"]
    expected = 0.5 * sum(abs(gangue_p["shared_pct"][k] - gangue_r["shared_pct"][k]) for k in gangue_r["shared_pct"])
    assert minerals["gangue"]["misassigned_pp"] == pytest.approx(expected, abs=1e-4) and expected > 0
    assert errors["mean_misassigned_pp"] == pytest.approx((20.0 + expected) / 2, abs=1e-4)
    # modal and liberation keep their mean absolute errors
    result = compare_mineralogy(predicted, reference)
    assert result["modal"]["mae_pp"] is not None and "mae_pp" in result["liberation"]
