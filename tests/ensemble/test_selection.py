"""Choosing among candidates: validation chooses, the test split reports (no Ray)."""

import numpy as np
import pytest

from minseg.demo import SlideScore, slide_comparison
from minseg.ensemble.selection import Candidate, cross_fit_learned_weights, fit_learned_weights, select
from minseg.ensemble.config import SelectionSettings
from minseg.enums import FusionMode, SelectionRule

BEST, ONE_SE = SelectionSettings(rule=SelectionRule.BEST), SelectionSettings(rule=SelectionRule.ONE_SE)


def candidate(key, val, test, tpi=1.0, mode=FusionMode.SOFT):
    """``member:a``, or ``RUEL-k-…`` of k members ``m1`` … ``mk`` (as an evaluation names them)."""
    members = [key.removeprefix("member:")] if mode is None else [f"m{i + 1}" for i in range(int(key.split("-")[1]))]
    return Candidate(key, members, mode, [], {"miou": test}, tpi, {"miou": val} if val is not None else {})


def test_validation_chooses_even_when_test_disagrees():
    pool = [candidate("member:a", 0.80, 0.90, mode=None), candidate("RUEL-2-SOFT", 0.85, 0.70)]
    assert select(pool, "miou", BEST).key == "RUEL-2-SOFT"
    # a budget filters before the validation comparison
    assert select(pool + [candidate("RUEL-3-SOFT", 0.95, 0.5, tpi=9.0)], "miou",
                  SelectionSettings(rule=SelectionRule.TPI_BUDGET, tpi_budget_s=2.0)).key == "RUEL-2-SOFT"


def test_ties_on_validation_go_the_same_way_every_time_whatever_the_timing():
    """Equal scores: fewer members, then the fusion fitted less to validation, then the name; never time per image,
    which differs by milliseconds of noise between equal candidates (a learned fusion with equal weights is SOFT:
    the demo's choice flipped between the two from one run to the next)."""
    def tied(key, members, mode, tpi, noise=0.0):
        return Candidate(key, members, mode, [], {"miou": 0.7}, tpi, {"miou": 0.85 + noise})

    soft = tied("RUEL-2-SOFT", ["a", "b"], FusionMode.SOFT, 0.24)
    learned = tied("RUEL-2-LEARNED", ["a", "b"], FusionMode.LEARNED, 0.23, noise=1e-15)  # float noise: equal
    assert learned.selection_metrics["miou"] != soft.selection_metrics["miou"]
    for tpi in (0.20, 0.26):
        soft.tpi = tpi
        assert select([learned, soft], "miou", BEST).key == "RUEL-2-SOFT"
    weighted = tied("RUEL-2-WEIGHTED_SOFT", ["a", "b"], FusionMode.WEIGHTED_SOFT, 0.1)
    assert select([learned, weighted], "miou", BEST).key == "RUEL-2-WEIGHTED_SOFT"
    assert select([tied("RUEL-2-WV", ["a", "b"], FusionMode.WV, 0.2), weighted], "miou", BEST).key == "RUEL-2-WV"
    member = tied("member:a", ["a"], None, 0.5)  # slower than the pair here, but one member
    assert select([learned, soft, member], "miou", BEST).key == "member:a"
    assert select([tied("RUEL-3-PV", ["a", "b", "c"], FusionMode.PV, 0.01), learned], "miou",
                  BEST).key == "RUEL-2-LEARNED"
    pv = tied("RUEL-2-PV", ["a", "b"], FusionMode.PV, 0.3)
    assert select([soft, pv], "miou", BEST).key == "RUEL-2-PV"  # no weights either, and first in the order
    assert select([tied("member:b", ["b"], None, 0.1), member], "miou", BEST).key == "member:a"  # then the name
    # a real difference still wins
    better = Candidate("RUEL-3-LEARNED", ["a", "b", "c"], FusionMode.LEARNED, [], {}, 9.0, {"miou": 0.851})
    assert select([member, soft, better], "miou", BEST).key == "RUEL-3-LEARNED"


def test_every_fusion_mode_has_its_place_in_the_tie_order():
    from minseg.ensemble.selection import _FITTED_LEAST_FIRST

    assert set(_FITTED_LEAST_FIRST) == {None, *FusionMode} and len(_FITTED_LEAST_FIRST) == len(FusionMode) + 1


def test_without_validation_scores_the_test_split_chooses():
    """Documents from before validation scores (or with no validation split) carry test metrics only."""
    pool = [candidate("member:a", None, 0.90, mode=None), candidate("RUEL-2-SOFT", None, 0.70)]
    assert select(pool, "miou", BEST).key == "member:a"
    round_trip = Candidate.from_document(pool[1].to_document())
    assert round_trip.selection_metrics == {} and round_trip.choosing_metrics == {"miou": 0.70}


FIT = dict(num_classes=2, key="miou", class_names=["gangue", "pyrite"], per_class=False, ignore_index=255)


def _sample(truth, right):
    """Two members on one image: member ``right`` predicts ``truth`` (0.9), the other its opposite."""
    onehot = np.stack([truth == 0, truth == 1]).astype(np.float16) * 0.8 + 0.1  # (C, P)
    members = [onehot, onehot[::-1]] if right == 0 else [onehot[::-1], onehot]
    return {"probs": np.stack(members), "truth": truth.astype(np.uint8)}


def test_learned_weights_are_scored_on_images_they_were_not_fitted_to():
    """Folds go round robin over sorted ids ({a, c} and {b, d}); member 1 is right on a and c, member 0 on b and d:
    the weights each image is scored with were fitted on the other fold, so they favour the member wrong there.
    Weights fitted in-sample would favour the right one and flatter the learned candidate."""
    rng = np.random.default_rng(0)
    samples = {item: _sample(rng.integers(0, 2, 400), right) for item, right in zip("abcd", (1, 0, 1, 0))}
    held_out = cross_fit_learned_weights(samples, 2, folds=2, **FIT)
    assert sorted(held_out) == list("abcd")
    for item, right in zip("abcd", (1, 0, 1, 0)):
        weights = held_out[item]
        assert weights[1 - right] > weights[right], (item, weights)
        others = [samples[i] for i in "abcd" if (i in "ac") != (item in "ac")]
        assert weights == fit_learned_weights(others, 2, **FIT)
    # in-sample, image a alone would pick member 1 (what cross-fitting keeps out of its score)
    alone = fit_learned_weights([samples["a"]], 2, **FIT)
    assert alone[1] > alone[0]
    # more folds than images: one image per fold; one image: nothing to hold out
    assert set(cross_fit_learned_weights(samples, 2, folds=9, **FIT)) == set("abcd")
    assert cross_fit_learned_weights({"a": samples["a"]}, 2, folds=5, **FIT) == {}


def test_images_of_one_scene_are_held_out_together():
    """a and b are one scene (split together): neither is scored with weights fitted on the other, which is its
    near-copy; with one group in all there is nothing to hold out."""
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 400)
    samples = {"a": _sample(truth, 1), "b": _sample(truth, 1), "c": _sample(rng.integers(0, 2, 400), 0)}
    held_out = cross_fit_learned_weights(samples, 2, folds=5, groups={"a": "scene:1", "b": "scene:1"}, **FIT)
    assert held_out["a"] == held_out["b"] == fit_learned_weights([samples["c"]], 2, **FIT)
    assert held_out["a"][0] > held_out["a"][1]  # fitted on c alone, where member 0 is right
    assert held_out["c"] == fit_learned_weights([samples["a"], samples["b"]], 2, **FIT)
    assert cross_fit_learned_weights(samples, 2, folds=5, groups=dict.fromkeys("abc", "one"), **FIT) == {}


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


def test_out_of_fold_weights_must_cover_the_choosing_images_and_no_test_image():
    from minseg.ensemble.evaluate import _check_held_out

    _check_held_out({"RUEL-2-LEARNED": {"v1": [1, 2], "v2": [2, 1]}}, {"v1", "v2"}, {"t1"})
    with pytest.raises(RuntimeError, match="1 images, the selection split has 2"):
        _check_held_out({"RUEL-2-LEARNED": {"v1": [1, 2]}}, {"v1", "v2"}, {"t1"})
    with pytest.raises(RuntimeError, match="1 of them test images"):
        _check_held_out({"RUEL-2-LEARNED": {"v1": [1, 2], "t1": [1, 1]}}, {"v1"}, {"t1"})


def test_classes_trained_on_but_absent_from_a_split_are_named():
    """LumenStone Cu-Ni split seed 3: no magnetite in the four test photographs, so every candidate's test IoU
    for it is 0 (270 stray pixels) and test mIoU loses a fifth; the evaluation warns, naming the class."""
    from minseg.data.pipeline import classes_missing

    stats = {"train": {"classes": {"background": {"pixels": 9}, "magnetite": {"pixels": 5}, "bornite": {"pixels": 0}}},
             "test": {"classes": {"background": {"pixels": 7}, "magnetite": {"pixels": 0}, "bornite": {"pixels": 0}}},
             "val": {"classes": {"background": {"pixels": 3}, "magnetite": {"pixels": 2}, "bornite": {"pixels": 0}}}}
    assert classes_missing(stats, "test") == ["magnetite"]  # bornite: never trained on, nothing to miss
    assert classes_missing(stats, "val") == []


# ------------------------------------------------------------------ the one-standard-error rule

DIFFICULTY = np.array([20, 400, 100, 250, 60])  # wrong pixels per class of the best member, per validation image


def scored(key, members, wrong, test=0.5):
    """A candidate on five validation images of two classes (1000 pixels each): ``wrong`` pixels of each class
    mislabelled per image; its validation mIoU from the summed matrices, as an evaluation records it."""
    from minseg.metrics import metrics_from_confusion

    confusions = [[[1000 - int(w), int(w)], [int(w), 1000 - int(w)]] for w in wrong]
    metrics = metrics_from_confusion(np.sum(confusions, axis=0), ["gangue", "pyrite"])
    mode = None if len(members) == 1 else FusionMode.SOFT
    return Candidate(key, members, mode, [], {"miou": test}, 1.0, metrics, confusions)


def test_one_se_takes_more_members_when_validation_cannot_tell_them_apart():
    """RUEL-3 trails the best member by a little on average but leads on some images and trails on others: the
    gap is inside its standard error, so one_se takes the three members; best takes the member."""
    from minseg.ensemble.selection import within_one_standard_error

    pool = [scored("member:a", ["a"], DIFFICULTY), scored("member:b", ["b"], DIFFICULTY + 200),
            scored("RUEL-3-SOFT", ["a", "b", "c"], DIFFICULTY + [150, -140, 150, -140, 0]),
            scored("RUEL-2-SOFT", ["a", "b"], DIFFICULTY + [60, -50, 60, -50, 0])]
    assert select(pool, "miou", BEST).key == "member:a"
    assert select(pool, "miou", ONE_SE).key == "RUEL-3-SOFT"
    within = dict((c.key, se) for c, se in within_one_standard_error(pool, "miou"))
    assert list(within) == ["member:a", "RUEL-2-SOFT", "RUEL-3-SOFT"] and within["member:a"] == 0.0
    assert 0 < within["RUEL-2-SOFT"] < within["RUEL-3-SOFT"]  # the bigger the swings, the wider the noise
    # reproducible: the resamples are seeded
    assert within_one_standard_error(pool, "miou") == within_one_standard_error(pool, "miou")


def test_one_se_keeps_the_best_when_it_is_better_on_every_image():
    """RUEL-3 is 30 pixels worse on every image: a real difference however much the images' difficulty varies.
    Paired resamples see that (the shared difficulty cancels); comparing the two scores' own spreads would not."""
    pool = [scored("member:a", ["a"], DIFFICULTY), scored("RUEL-3-SOFT", ["a", "b", "c"], DIFFICULTY + 30)]
    assert select(pool, "miou", ONE_SE).key == "member:a"
    # among several within the noise, the most members, and among those the better on validation
    pool += [scored("RUEL-3-PV", ["a", "b", "c"], DIFFICULTY + [20, -20, 20, -20, 1]),
             scored("RUEL-3-WV", ["a", "b", "c"], DIFFICULTY + [20, -20, 20, -20, 2])]
    assert select(pool, "miou", ONE_SE).key == "RUEL-3-PV"


def test_one_se_ties_go_the_same_way_whatever_the_timing():
    """Candidates that label every validation image alike (RUEL-2 in PV and in WV are their top member): one is
    kept by the tie order, whichever ran faster; a score a float's noise below the best is the best's."""
    from minseg.ensemble.selection import within_one_standard_error

    for pv_tpi, wv_tpi in ((1.0, 2.0), (2.0, 1.0)):
        pv, wv = scored("RUEL-2-PV", ["a", "b"], DIFFICULTY), scored("RUEL-2-WV", ["a", "b"], DIFFICULTY)
        pv.mode, wv.mode, pv.tpi, wv.tpi = FusionMode.PV, FusionMode.WV, pv_tpi, wv_tpi
        assert [c.key for c, _ in within_one_standard_error([wv, pv], "miou")] == ["RUEL-2-PV"]
    # one image: every standard error is 0, so only a tie is within; noise in the last bits is a tie
    one_image = [scored("member:a", ["a"], DIFFICULTY[:1]), scored("RUEL-2-SOFT", ["a", "b"], DIFFICULTY[:1] + 1)]
    assert select(one_image, "miou", ONE_SE).key == "member:a"
    one_image[1].selection_metrics = {**one_image[1].selection_metrics,
                                      "miou": one_image[0].selection_metrics["miou"] - 1e-15}
    assert select(one_image, "miou", ONE_SE).key == "RUEL-2-SOFT"


def test_one_se_needs_per_image_scores_and_reads_them_back():
    from minseg.errors import InputError

    pool = [scored("member:a", ["a"], DIFFICULTY), scored("RUEL-2-SOFT", ["a", "b"], DIFFICULTY + 5)]
    again = [Candidate.from_document(c.to_document()) for c in pool]
    assert again[1].selection_confusions == pool[1].selection_confusions
    assert select(again, "miou", ONE_SE).key == select(pool, "miou", ONE_SE).key
    old = Candidate.from_document({k: v for k, v in pool[1].to_document().items() if k != "selection_confusions"})
    with pytest.raises(InputError, match="RUEL-2-SOFT has no per-image confusion matrices.*evaluate again"):
        select([pool[0], old], "miou", ONE_SE)
    one_image = [scored("member:a", ["a"], DIFFICULTY[:1]), scored("RUEL-2-SOFT", ["a", "b"], DIFFICULTY[:1] + 1)]
    assert select(one_image, "miou", ONE_SE).key == "member:a"  # one image: no noise estimate


def test_one_se_passes_over_a_hard_vote_that_is_its_top_member():
    """RUEL-3-WV gives its top member's labels everywhere (3 votes against 2 + 1, ties to the top): same matrices,
    a standard error of 0, so inside the noise, but it adds nothing at three times the cost. The best stays;
    a real three-member fusion inside the noise is still taken."""
    from minseg.ensemble.selection import within_one_standard_error

    copy = scored("RUEL-3-WV", ["a", "b", "c"], DIFFICULTY)
    pool = [scored("member:a", ["a"], DIFFICULTY), copy, scored("RUEL-3-SOFT", ["a", "b", "c"], DIFFICULTY + 40)]
    assert select(pool, "miou", ONE_SE).key == "member:a"
    assert [c.key for c, _ in within_one_standard_error(pool, "miou")] == ["member:a"]
    pool[2] = scored("RUEL-3-SOFT", ["a", "b", "c"], DIFFICULTY + [150, -140, 150, -140, 0])
    assert select(pool, "miou", ONE_SE).key == "RUEL-3-SOFT"


def test_images_of_one_group_are_drawn_together():
    """Six validation images that are three scenes twice (PPL and XPL twins): drawn whole, the scenes give the
    standard errors of the three scenes alone, exactly (each resample is theirs, doubled); drawn as six independent
    images, the same numbers would look surer than they are."""
    from minseg.ensemble.selection import standard_errors

    wrong = {"member:a": DIFFICULTY[:3], "RUEL-2-SOFT": DIFFICULTY[:3] + [90, -80, 0]}
    three = [scored(k, ["a"] if k.startswith("member") else ["a", "b"], w) for k, w in wrong.items()]
    six = [scored(k, c.members, np.repeat(w, 2)) for (k, w), c in zip(wrong.items(), three)]
    by_scene = standard_errors(six, "miou", groups=["s1", "s1", "s2", "s2", "s3", "s3"])
    assert by_scene == pytest.approx(standard_errors(three, "miou"), rel=1e-12)
    assert standard_errors(six, "miou")["RUEL-2-SOFT"] < by_scene["RUEL-2-SOFT"]
    assert standard_errors(six, "miou", groups=["one"] * 6) == {"member:a": 0.0, "RUEL-2-SOFT": 0.0}
    from minseg.errors import InputError

    with pytest.raises(InputError, match="5 selection groups for 6 selection images"):
        standard_errors(six, "miou", groups=["s"] * 5)


def test_one_se_keeps_the_best_when_every_score_is_undefined():
    """``--key iou:<class>`` for a class no validation image has and nothing predicts: every candidate scores NaN;
    the best by the usual order is still the answer (not an empty pool)."""
    pool = [scored("member:a", ["a"], DIFFICULTY), scored("RUEL-2-SOFT", ["a", "b"], DIFFICULTY + 5)]
    for c in pool:
        c.selection_metrics = {**c.selection_metrics, "classes": ["gangue", "pyrite"], "iou": [float("nan")] * 2}
    assert select(pool, "iou:pyrite", ONE_SE).key == select(pool, "iou:pyrite", BEST).key


def test_k_min_and_k_max_that_build_no_ensemble_are_refused_naming_them():
    """k_min above the voters (or k_max below k_min) used to build no RUEL-k without a word and "select" a member."""
    from minseg.ensemble.config import EvaluationSettings
    from minseg.ensemble.selection import candidate_ensembles, ensemble_sizes
    from minseg.errors import InputError

    with pytest.raises(InputError, match=r"evaluation.k_min 5 and evaluation.k_max None build no RUEL-k ensemble "
                                         r"from 4 member\(s\) evaluated, 3 of them voters.*at most 3"):
        ensemble_sizes(EvaluationSettings(k_min=5), 3, 4)
    with pytest.raises(InputError, match="evaluation.k_min 3 .* from 2 member"):
        candidate_ensembles(["a", "b"], EvaluationSettings(), {})
    with pytest.raises(InputError, match="raise k_max to at least 2"):
        ensemble_sizes(EvaluationSettings(k_min=1, k_max=1), 3)
    with pytest.raises(ValueError, match=r"k_max \(2\) is below k_min \(3\)"):
        EvaluationSettings(k_min=3, k_max=2)
    assert list(ensemble_sizes(EvaluationSettings(k_min=2, k_max=9), 3)) == [2, 3]  # k_max beyond the voters: all
    assert not ensemble_sizes(EvaluationSettings(), 1)  # one voter: nothing to fuse (evaluate warns), not an error
    assert [c.key for c in candidate_ensembles(["a"], EvaluationSettings(modes=["soft"]), {})] == []


def test_a_per_class_key_of_a_class_the_choosing_split_lacks_is_refused():
    """No true pyrite on validation: a candidate that predicts none scores NaN, one with stray pixels IoU 0, which
    used to win (NaN ranked as -inf); recall is NaN for all and the tie-break picked. Refused, naming class and
    split; a class the split holds chooses as before."""
    from minseg.errors import InputError
    from minseg.ensemble.selection import refuse_key_of_absent_class

    def scored(key, iou_pyrite, recall_pyrite):
        val = {"classes": ["background", "pyrite", "quartz"], "iou": [0.9, iou_pyrite, 0.5 + iou_pyrite],
               "recall": [0.9, recall_pyrite, 0.6], "support": [100, 0, 40], "miou": 0.7}
        return Candidate(key, [key], None, [], {"miou": 0.5}, 1.0, val)

    pool = [scored("member:none", float("nan"), float("nan")), scored("member:stray", 0.0, float("nan"))]
    for key in ("iou:pyrite", "recall:pyrite"):
        with pytest.raises(InputError, match=r"class 'pyrite' has no true pixels on the val split.*another key.*"
                                             r"\(background, quartz\)"):
            select(pool, key, BEST, split="val")
    assert select(pool, "iou:quartz", BEST, split="val").key == "member:stray"
    refuse_key_of_absent_class("iou:pyrite", ["background", "pyrite"], None, "val")  # unknown support: no check
    confusion = {"classes": ["a", "b"], "confusion": [[5, 1], [0, 0]], "iou": [0.8, 0.0], "miou": 0.4}
    with pytest.raises(InputError, match="class 'b' has no true pixels on the test split"):
        select([Candidate("member:a", ["a"], None, [], confusion)], "iou:b", BEST, split="test")
