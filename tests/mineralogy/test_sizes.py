"""ECD quantiles by hand."""

import math

import numpy as np
import pytest

from minseg.mineralogy.sizes import (CURVE_EDGES, binned_passing_size, ecd, fraction_names, size_bins,
                                     size_distribution, size_fraction)


def test_ecd_is_the_diameter_of_the_circle_of_equal_area():
    assert ecd([math.pi * 25])[0] == pytest.approx(10.0)
    assert ecd([math.pi * 25], pixel_size_um=0.5)[0] == pytest.approx(5.0)


def test_number_and_area_weighted_passing_sizes():
    # 8 small particles of 4 px and 2 large of 100 px: by number 80 % are small; by area 32 / 232 are
    area, count = np.array([100, 4]), np.array([2, 8])  # unsorted on purpose
    result = size_distribution(area, count, None)
    small, large = 2 * math.sqrt(4 / math.pi), 2 * math.sqrt(100 / math.pi)
    assert result["count"] == 10 and result["unit"] == "px"
    assert result["number"] == {"d10": round(small, 3), "d50": round(small, 3), "p80": round(small, 3)}
    assert result["area"] == {"d10": round(small, 3), "d50": round(large, 3), "p80": round(large, 3)}
    in_um = size_distribution(area, count, 2.0)
    assert in_um["unit"] == "um" and in_um["area"]["p80"] == round(2 * large, 3)


def test_no_particles_gives_no_sizes():
    result = size_distribution(np.zeros(0, np.int64), np.zeros(0, np.int64), 1.0)
    assert result == {"count": 0, "unit": "um", "number": {"d10": None, "d50": None, "p80": None},
                      "area": {"d10": None, "d50": None, "p80": None},
                      "mass": {"d10": None, "d50": None, "p80": None}}


def test_mass_weighting_follows_the_masses_given():
    # one light large particle, 8 small gold ones: by mass (86 % gold) the small ones dominate
    area, count = np.array([4, 100]), np.array([8, 1])
    result = size_distribution(area, count, None, mass=np.array([8 * 4 * 19.3, 100 * 1.0]))
    small = round(2 * math.sqrt(4 / math.pi), 3)
    assert result["mass"]["p80"] == small and result["area"]["p80"] != small
    assert size_distribution(area, count, None)["mass"] == {"d10": None, "d50": None, "p80": None}


def test_size_fractions_by_ecd():
    # ECD of 1 px area = 1.128 px; edges at 2 and 10 um with 1 um pixels
    areas = np.array([1, math.ceil(math.pi), 78, 79, 10_000])  # ECD 1.13, 2.0+, 9.97, 10.03, 112.8
    assert size_fraction(areas, (2.0, 10.0), 1.0).tolist() == [0, 1, 1, 2, 2]
    assert fraction_names((20.0, 38.0), "µm") == ["-20 µm", "+20-38 µm", "+38 µm"]


def test_binned_curves_read_the_bin_where_the_share_is_reached():
    bins = np.zeros(len(CURVE_EDGES) - 1)
    index = size_bins(np.array([100, 10_000]), None)  # ECD 11.3 and 112.8 px
    bins[index[0]], bins[index[1]] = 1, 3
    assert binned_passing_size(bins, 10) == CURVE_EDGES[index[0] + 1]  # first bin holds 25 %
    assert binned_passing_size(bins, 80) == CURVE_EDGES[index[1] + 1]
    assert CURVE_EDGES[index[1]] <= 2 * math.sqrt(10_000 / math.pi) < CURVE_EDGES[index[1] + 1]
    assert binned_passing_size(np.zeros(3), 50) is None
