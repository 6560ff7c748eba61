import math

import numpy as np
import pytest
import torch

from minseg.metrics import ConfusionMatrix, auc_z_score, metric_value, metrics_from_confusion, roc_auc


def test_worked_example():
    # rows = truth, columns = prediction
    matrix = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    m = metrics_from_confusion(matrix, ["a", "b", "c"])
    assert m["iou"] == pytest.approx([5 / 8, 3 / 7, 4 / 5])  # TP / (TP + FP + FN)
    assert m["precision"] == pytest.approx([5 / 7, 3 / 4, 4 / 5])
    assert m["recall"] == pytest.approx([5 / 6, 3 / 6, 4 / 4])
    assert m["f1"] == pytest.approx([10 / 13, 6 / 10, 8 / 9])
    assert m["miou"] == pytest.approx((5 / 8 + 3 / 7 + 4 / 5) / 3)
    macro_p, macro_r = (5 / 7 + 3 / 4 + 4 / 5) / 3, (5 / 6 + 1 / 2 + 1) / 3
    assert m["mPA"] == pytest.approx(macro_p) and m["mRecall"] == pytest.approx(macro_r)
    assert m["F1_paper"] == pytest.approx(2 * macro_p * macro_r / (macro_p + macro_r))
    assert m["mean_f1"] == pytest.approx((10 / 13 + 0.6 + 8 / 9) / 3)
    assert m["accuracy"] == pytest.approx(12 / 16)
    # foreground classes b and c: F1 (IoU) times recall, then their mean; background a left out
    assert m["recall_weighted_f1"] == pytest.approx((0.6 * 0.5 + 8 / 9 * 1.0) / 2)
    assert m["recall_weighted_iou"] == pytest.approx((3 / 7 * 0.5 + 4 / 5 * 1.0) / 2)
    assert m["recall_weighted_f1_per_class"][0] is None
    assert metric_value(m, "iou:b") == pytest.approx(3 / 7)
    assert metric_value(m, "miou") == m["miou"]
    with pytest.raises(ValueError, match="unknown class 'gangue'"):
        metric_value(m, "iou:gangue")
    with pytest.raises(ValueError, match=r"unknown metric 'bogus'; one of miou, .*, or <iou\|precision"):
        metric_value(m, "bogus")  # select --key bogus named no alternative


def test_absent_class_is_left_out_of_means():
    m = metrics_from_confusion(np.array([[3, 0, 0], [1, 2, 0], [0, 0, 0]]))
    assert math.isnan(m["iou"][2])
    assert m["miou"] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_all_wrong_predictions_give_zero_not_a_crash():
    m = metrics_from_confusion(np.array([[0, 5], [7, 0]]))
    assert m["mPA"] == 0.0 and m["mRecall"] == 0.0 and m["F1_paper"] == 0.0 and m["miou"] == 0.0


def test_streaming_update_matches_and_halves_merge():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 16, 16)
    target = torch.randint(0, 5, (4, 16, 16))
    target[0, :2] = 255
    whole = ConfusionMatrix(5).update(logits, target)
    first = ConfusionMatrix(5).update(logits[:2], target[:2])
    second = ConfusionMatrix(5).update(logits[2:].argmax(1), target[2:])
    merged = first + second
    assert torch.equal(merged.matrix, whole.matrix)
    assert merged.compute() == whole.compute()
    assert whole.matrix.sum() == 4 * 256 - 32  # ignored pixels not counted
    reference = np.zeros((5, 5), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), logits.argmax(1).flatten().tolist()):
        if t != 255:
            reference[t, p] += 1
    assert np.array_equal(whole.matrix.numpy(), reference)
    restored = ConfusionMatrix.from_state_dict(whole.state_dict())
    assert torch.equal(restored.matrix, whole.matrix)


def test_bad_labels_are_reported():
    with pytest.raises(ValueError, match="target has label 7 outside 0..2"):
        ConfusionMatrix(3).update(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[0, 1, 7, 2]]))
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix(3).update(torch.zeros(1, 4), torch.zeros(1, 5))


def test_auc_and_z_auc_by_hand():
    scores = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.4, 0.3]
    labels = [1, 1, 0, 1, 0, 0, 1, 0]
    # pairs (pos, neg) ranked correctly: 0.9>all 4 neg, 0.8>4, 0.6>3 (0.55, 0.5, 0.3), 0.4>1 (0.3) -> 12 / 16
    auc = roc_auc(scores, labels)
    assert auc == pytest.approx(12 / 16)
    assert roc_auc([1, 1, 0], [1, 0, 0]) == pytest.approx(0.75)  # a tie counts one half
    q1, q2 = 0.75 / 1.25, 2 * 0.75**2 / 1.75
    s = math.sqrt((0.75 * 0.25 + 3 * (q1 - 0.5625) + 3 * (q2 - 0.5625)) / 16)
    assert auc_z_score(0.75, 4, 4) == pytest.approx((0.75 - 0.5) / s)
    assert auc_z_score(0.5, 10, 10) == 0.0
    # Eq. 3's S vanishes at AUC 1 (or 0), an infinite Z whatever the counts: S is taken half a pair from the bound,
    # so Z is finite and still rises with the AUC over every AUC the counts allow
    assert auc_z_score(1.0, 1, 1) == pytest.approx(1.0)  # one positive above one negative: evaluated at AUC 0.5
    for positives, negatives in [(1, 1), (2, 3), (3, 5), (10, 100), (1, 1000)]:
        pairs = positives * negatives
        z = [auc_z_score(k / pairs, positives, negatives) for k in range(pairs + 1)]
        assert all(map(math.isfinite, z)) and all(a < b for a, b in zip(z, z[1:])), (positives, negatives)
    assert auc_z_score(14 / 15, 3, 5) == pytest.approx(3.849, abs=1e-3)  # short of 1: Eq. 3 as written
    with pytest.raises(ValueError, match="needs both classes"):
        roc_auc([0.1, 0.2], [1, 1])


def test_recall_weighted_scores_are_the_microplastic_papers():
    """Its own case: precision 0.29, recall 0.92 on the particles -> F1 0.441 x 0.92 = 0.406."""
    tp, fn, fp, tn = 92, 8, 225, 100_000  # precision 92 / 317 = 0.290, recall 0.92
    m = metrics_from_confusion(np.array([[tn, fp], [fn, tp]]), ["background", "particle"])
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert m["precision"][1] == pytest.approx(0.29, abs=0.001)
    assert m["recall_weighted_f1"] == pytest.approx(f1 * 0.92) and m["recall_weighted_f1"] == pytest.approx(0.406, abs=0.001)
    assert m["recall_weighted_iou"] == pytest.approx(tp / (tp + fp + fn) * 0.92)
    # predicting background everywhere: ~99.7 % accuracy, and a recall-weighted score of 0
    everything_background = metrics_from_confusion(np.array([[tn + fp, 0], [fn + tp, 0]]))
    assert everything_background["accuracy"] > 0.99
    assert everything_background["recall_weighted_f1"] == 0.0 and everything_background["recall_weighted_iou"] == 0.0


def test_recall_weighting_of_a_classifier_counts_every_class():
    """No background among classifier classes: a model that always answers class 1 scores low."""
    always_one = np.array([[0, 50], [0, 50]])  # 50 of class 0 and 50 of class 1, all called class 1
    classifier = metrics_from_confusion(always_one, background=None)
    assert classifier["recall_weighted_f1"] == pytest.approx((0.0 + (100 / 150) * 1.0) / 2)
    assert metrics_from_confusion(always_one)["recall_weighted_f1"] == pytest.approx(100 / 150)  # segmentation


def test_the_metric_names_keys_are_checked_against_are_the_ones_reported():
    """``enums.SCORE_METRICS`` / ``PER_CLASS_METRICS`` (what checkpoint and ranking keys are checked against before a
    job starts) are exactly the scalars and per-class lists ``metrics_from_confusion`` reports."""
    import numpy as np

    from minseg.enums import PER_CLASS_METRICS, SCORE_METRICS
    from minseg.metrics import metrics_from_confusion

    metrics = metrics_from_confusion(np.array([[5, 1, 0], [2, 7, 1], [0, 0, 3]]), ["resin", "pyrite", "gangue"])
    scalars = {k for k, v in metrics.items() if not isinstance(v, list)}
    assert scalars == set(SCORE_METRICS)
    per_class = {k for k, v in metrics.items() if isinstance(v, list) and len(v) == 3 and k != "classes"}
    assert set(PER_CLASS_METRICS) <= per_class
