"""Modal mineralogy by area and weight, by hand."""

import numpy as np

from minseg.mineralogy import DEFAULT_DENSITIES, modal_mineralogy


def test_area_and_weight_percent_exclude_background_and_weight_by_density():
    names = ["resin", "pyrite", "quartz"]
    table, missing = modal_mineralogy(np.array([50, 25, 25]), names, {"resin"}, DEFAULT_DENSITIES)
    assert missing == []
    assert table["resin"] == {"pixels": 50, "area_percent": 50.0}  # image share only: not sample
    assert table["pyrite"]["area_percent"] == 25.0 and table["pyrite"]["sample_area_percent"] == 50.0
    # equal areas: weight follows density, 5.01 : 2.65
    assert table["pyrite"]["weight_percent"] == round(100 * 5.01 / (5.01 + 2.65), 4)
    assert table["quartz"]["weight_percent"] == round(100 * 2.65 / (5.01 + 2.65), 4)


def test_a_mineral_without_density_leaves_weight_percent_unknown_and_named():
    table, missing = modal_mineralogy(np.array([10, 5, 5]), ["pore", "pyrite", "unobtainium"], {"pore"},
                                      DEFAULT_DENSITIES)
    assert missing == ["unobtainium"]
    assert table["pyrite"]["weight_percent"] is None and table["pyrite"]["sample_area_percent"] == 50.0
    # absent minerals need no density
    table, missing = modal_mineralogy(np.array([10, 5, 0]), ["pore", "pyrite", "unobtainium"], {"pore"},
                                      DEFAULT_DENSITIES)
    assert missing == [] and table["pyrite"]["weight_percent"] == 100.0
