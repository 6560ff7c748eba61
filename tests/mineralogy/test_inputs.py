"""What the mineralogy refuses rather than measures wrong: class names by id that are empty or repeated, pixel
sizes that are not finite numbers above 0, and documents holding NaN or infinity (JSON has neither)."""

import math

import numpy as np
import pytest

from minseg.data.config import class_list_problem
from minseg.mineralogy.config import MineralogySettings
from minseg.mineralogy.slide import MeasureSpec, SlideMineralogy, check_finite, measure_block


def test_class_names_by_id_are_given_and_distinct():
    assert class_list_problem(["resin", "pyrite", "gangue"]) is None
    assert class_list_problem(["resin", "", "gangue"]) == "class id 1 (entry 2 of 3) has an empty name"
    assert class_list_problem(["resin", "pyrite", " "]) == "class id 2 (entry 3 of 3) has an empty name"
    assert "'pyrite' names class ids 1 and 3 (entries 2 and 4)" in class_list_problem(
        ["resin", "pyrite", "gangue", "pyrite"])
    with pytest.raises(ValueError, match="the class names of m.png: 'resin' names class ids 0 and 1"):
        MineralogySettings().check_class_names(["resin", "resin"], owner="m.png")


@pytest.mark.parametrize("size", [math.inf, -math.inf, math.nan, 0.0, -1.0, 1e200, True])
def test_a_pixel_size_is_a_finite_number_above_zero(size):
    """(True: a label map's ``"pixel_size_um": true`` was read as 1 µm.)"""
    from minseg.io.slides import usable_pixel_size

    with pytest.raises(ValueError, match=r"is not a number above 0 and below 1e\+06"):
        MeasureSpec(("resin", "pyrite"), MineralogySettings(), size)
    assert usable_pixel_size(size) is None or size == 1e200  # a size the reader passes, MeasureSpec refuses


def test_documents_hold_finite_numbers_only():
    spec = MeasureSpec(("resin", "pyrite"), MineralogySettings(), 0.8)
    labels = np.zeros((32, 32), np.uint8)
    labels[8:20, 8:20] = 1
    slide = SlideMineralogy(spec, 32, 32)
    slide.add(measure_block(labels, 0, 0, spec))
    document = slide.finish()  # checked on the way out
    assert document["modal_mineralogy"]["pyrite"]["pixels"] == 144
    with pytest.raises(ValueError, match=r"particles\.p80 is inf"):
        check_finite({"particles": {"p80": math.inf}})
    with pytest.raises(ValueError, match=r"grains\[1\] is nan"):
        check_finite({"grains": [1.0, np.float64("nan")]})
