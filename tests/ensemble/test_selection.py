"""Choosing among candidates: validation chooses, the test split reports (no Ray)."""

import pytest

from minseg.demo import SlideScore, slide_comparison
from minseg.ensemble.selection import Candidate, select
from minseg.enums import FusionMode, SelectionRule


def candidate(key, val, test, tpi=1.0, mode=FusionMode.SOFT):
    return Candidate(key, [key], mode, [], {"miou": test}, tpi, {"miou": val} if val is not None else {})


def test_validation_chooses_even_when_test_disagrees():
    pool = [candidate("member:a", 0.80, 0.90, mode=None), candidate("RUEL-2-SOFT", 0.85, 0.70)]
    assert select(pool, "miou", SelectionRule.BEST, None).key == "RUEL-2-SOFT"
    # ties on validation: the faster one
    tied = [candidate("RUEL-2-PV", 0.85, 0.60, tpi=2.0), candidate("RUEL-2-SOFT", 0.85, 0.70, tpi=1.5)]
    assert select(tied, "miou", SelectionRule.BEST, None).key == "RUEL-2-SOFT"
    # a budget filters before the validation comparison
    assert select(pool + [candidate("RUEL-3-SOFT", 0.95, 0.5, tpi=9.0)], "miou", SelectionRule.TPI_BUDGET,
                  2.0).key == "RUEL-2-SOFT"


def test_without_validation_scores_the_test_split_chooses():
    """Documents from before validation scores (or with no validation split) carry test metrics only."""
    pool = [candidate("member:a", None, 0.90, mode=None), candidate("RUEL-2-SOFT", None, 0.70)]
    assert select(pool, "miou", SelectionRule.BEST, None).key == "member:a"
    round_trip = Candidate.from_document(pool[1].to_document())
    assert round_trip.selection_metrics == {} and round_trip.choosing_metrics == {"miou": 0.70}


@pytest.mark.parametrize("best_member", [None, "halfunet-b"])
def test_the_demo_says_what_the_ensemble_adds_or_that_a_member_was_chosen(best_member):
    score = SlideScore("out", 1.0, (10, 10), 0.9, 0.955, selected="RUEL-2-SOFT" if best_member else "member:x",
                       per_class_iou={"background": 0.99, "pyrite": float("nan")}, best_member=best_member,
                       best_member_miou=0.919 if best_member else None,
                       best_member_per_class_iou={"background": 0.98, "pyrite": float("nan")})
    lines = slide_comparison(score)
    if best_member is None:
        assert lines == ["The selection on validation is a single member (member:x): no ensemble beat it there."]
    else:
        assert lines[0] == ("Selected ensemble RUEL-2-SOFT: slide mIoU 0.955; its best member alone (halfunet-b, "
                            "ranked first on validation): 0.919 (+0.036)")
        assert lines[1].endswith("background 0.98->0.99, pyrite n/a->n/a")
    assert slide_comparison(SlideScore("out", 1.0, (10, 10), 0.9, 0.9)) == []  # not from an evaluation
