"""Vectorised voting against a plain per-pixel reference, ties included."""

import numpy as np
import pytest
import torch

from minseg.ensemble.voting import fuse, hard_vote, normalised_rank_weights, rank_weights, soft_vote


def reference_hard_vote(labels: np.ndarray, weights: list[int], num_classes: int) -> np.ndarray:
    """Per pixel: sum weights per class; among tied classes, the best-ranked member's class wins."""
    out = np.zeros(labels.shape[1:], dtype=np.int64)
    for index in np.ndindex(*labels.shape[1:]):
        scores = [0] * num_classes
        for m in range(labels.shape[0]):
            scores[labels[(m,) + index]] += weights[m]
        best = max(scores)
        tied = {c for c in range(num_classes) if scores[c] == best}
        out[index] = next(labels[(m,) + index] for m in range(labels.shape[0]) if labels[(m,) + index] in tied)
    return out


@pytest.mark.parametrize("members, classes", [(3, 2), (4, 3), (7, 9), (12, 9)])
def test_hard_vote_matches_reference_with_many_ties(members, classes):
    rng = np.random.default_rng(members * 10 + classes)
    labels = rng.integers(0, classes, size=(members, 17, 19))
    for weights in ([1] * members, list(range(members, 0, -1))):
        winner, _ = hard_vote(torch.from_numpy(labels), torch.tensor(weights), classes)
        assert np.array_equal(winner.numpy(), reference_hard_vote(labels, weights, classes))


def test_tie_goes_to_the_highest_ranked_member():
    # 4 members, plurality: classes 1 and 2 get two votes each; member 0 (best) votes 2
    labels = torch.tensor([[2], [1], [1], [2]])
    assert hard_vote(labels, torch.ones(4, dtype=torch.int64), 3)[0].item() == 2
    labels = torch.tensor([[1], [2], [2], [1]])
    assert hard_vote(labels, torch.ones(4, dtype=torch.int64), 3)[0].item() == 1
    # WV with n = 3: weights 3, 2, 1; member 0 alone (3) ties members 1 + 2 (2 + 1): member 0 wins
    labels = torch.tensor([[0], [1], [1]])
    assert hard_vote(labels, rank_weights(3), 2)[0].item() == 0
    # weighted: three low-ranked members outvote the best one
    labels = torch.tensor([[0], [1], [1], [1]])  # weights 4 vs 3 + 2 + 1
    assert hard_vote(labels, rank_weights(4), 2)[0].item() == 1


def test_wv_weights_follow_the_papers_code():
    assert normalised_rank_weights(7) == pytest.approx([(7 - i) / 28 for i in range(7)])
    assert rank_weights(4).tolist() == [4, 3, 2, 1]


def test_soft_modes_and_learned_weights():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 4, 5, 6), dim=1)
    labels, fused = fuse(probs, "soft")
    torch.testing.assert_close(fused, probs.mean(0))
    assert torch.equal(labels, probs.mean(0).argmax(0))
    _, weighted = fuse(probs, "weighted_soft")
    torch.testing.assert_close(weighted, (probs * torch.tensor([3.0, 2, 1]).view(3, 1, 1, 1)).sum(0) / 6)
    per_class = torch.rand(3, 4)
    _, learned = fuse(probs, "learned", per_class)
    manual = (probs * per_class.view(3, 4, 1, 1)).sum(0) / per_class.sum(0).view(4, 1, 1)
    torch.testing.assert_close(learned, manual)
    only_first = soft_vote(probs, torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(only_first, probs[0])
    with pytest.raises(ValueError, match="needs weights fitted on the validation split"):
        fuse(probs, "learned")


def test_hard_modes_return_vote_shares():
    probs = torch.zeros(3, 2, 1, 1)
    probs[0, 0] = probs[1, 1] = probs[2, 1] = 1
    labels, shares = fuse(probs, "wv")  # weights 3, 2, 1 -> class 0: 3, class 1: 3 -> tie -> member 0 -> class 0
    assert labels.item() == 0 and shares.flatten().tolist() == [0.5, 0.5]
    labels, shares = fuse(probs, "pv")
    assert labels.item() == 1 and shares.flatten().tolist() == pytest.approx([1 / 3, 2 / 3])


def test_ruel_3_wv_is_always_its_top_member():
    """Weights 3, 2, 1: the other two together only tie the best member, and ties go to the best
    ranked voter. So the paper's RUEL-3-WV equals its learner 08 (Tables 4 and 5 agree to the digit)."""
    import torch

    from minseg.ensemble.voting import fuse

    probabilities = torch.rand(3, 5, 64, 64, generator=torch.Generator().manual_seed(0))  # (M, C, H, W)
    labels, _ = fuse(probabilities, "wv")
    assert torch.equal(labels, probabilities[0].argmax(0))
    four = torch.rand(4, 5, 64, 64, generator=torch.Generator().manual_seed(1))
    fused, _ = fuse(four, "wv")
    assert not torch.equal(fused, four[0].argmax(0))  # with 4 members (4, 3, 2, 1) the others can outvote the best
