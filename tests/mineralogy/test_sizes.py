"""ECD quantiles by hand."""

import math

import numpy as np
import pytest

from minseg.mineralogy.sizes import ecd, size_distribution


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
                      "area": {"d10": None, "d50": None, "p80": None}}
