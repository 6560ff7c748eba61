"""Fusing ensemble members' predictions, vectorised on the device.

Members are always given in rank order (index 0 = best ranked).

Hard voting (PV, WV) accumulates integer weights per class with one scatter-add;
ties are broken by the highest-ranked member among those voting for a tied class,
exactly (integer weights, no floating-point near-ties). Soft modes average
probabilities (optionally weighted per member or per member and class); their ties,
which need exact equality of floats, go to the lower class id.

WV weights: member i of n gets n - i, i.e. w_i = (n - i) / (n(n + 1)/2) once
normalised. (The paper's Eq. 5 prints sum n in the denominator; its code uses
(7 - i)/28 for n = 7, which is the sum 1 + ... + n implemented here.)
"""

from __future__ import annotations

import torch

from minseg.enums import FusionMode


def argmax_classes(values: torch.Tensor) -> torch.Tensor:
    """argmax over dim 0 of (C, ...), first index on ties; a running maximum over the C
    planes, because a strided reduction over the leading dim is slow on CPUs."""
    best = values[0].clone()
    index = torch.zeros(values.shape[1:], dtype=torch.int64, device=values.device)
    for c in range(1, values.shape[0]):
        better = values[c] > best
        best = torch.where(better, values[c], best)
        index.masked_fill_(better, c)
    return index


def rank_weights(n: int, device=None) -> torch.Tensor:
    """Integer WV weights n, n-1, ..., 1 for members in rank order."""
    return torch.arange(n, 0, -1, dtype=torch.int64, device=device)


def normalised_rank_weights(n: int) -> list[float]:
    total = n * (n + 1) // 2
    return [(n - i) / total for i in range(n)]


def hard_vote(labels: torch.Tensor, weights: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted plurality vote.

    labels: (M, ...) class ids per member (rank order); weights: (M,) integers.
    Returns (winner labels (...), vote scores (C, ...)).
    """
    scores, keys = vote_keys(labels, weights, num_classes)
    return argmax_classes(keys), scores


def vote_keys(labels: torch.Tensor, weights: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, keys), both (C, ...) int32.

    The tie-break is folded into one integer key per class: score * (M + 1) plus the
    priority M - m of the best-ranked member m voting for that class. Its argmax is
    the highest score, and among equal scores the class the best-ranked member chose.
    """
    members = labels.shape[0]
    labels = labels.to(torch.int64)  # scatter indices must be int64
    weights = weights.to(device=labels.device, dtype=torch.int32)
    if int(weights.sum()) * (members + 1) + members >= 2**31:
        raise ValueError("vote weights too large for exact integer voting")
    shape = (num_classes,) + tuple(labels.shape[1:])
    scores = torch.zeros(shape, dtype=torch.int32, device=labels.device)
    priority = torch.zeros(shape, dtype=torch.int32, device=labels.device)
    for m in range(members):  # (C, ...) memory whatever the number of members
        scores.scatter_add_(0, labels[m : m + 1], weights[m].expand_as(labels[m : m + 1]))
    for m in reversed(range(members)):  # better-ranked members write last
        priority.scatter_(0, labels[m : m + 1], torch.full_like(labels[m : m + 1], members - m, dtype=torch.int32))
    return scores, scores * (members + 1) + priority


def soft_vote(probabilities: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of probabilities (M, C, ...); weights (M,) or (M, C). Returns (C, ...)."""
    if weights is None:
        return probabilities.mean(dim=0)
    weights = weights.to(probabilities.device, probabilities.dtype)
    shape = (weights.shape[0],) + (weights.shape[1] if weights.ndim == 2 else 1,) + (1,) * (probabilities.ndim - 2)
    weighted = (probabilities * weights.view(shape)).sum(dim=0)
    return weighted / weights.view(shape).sum(dim=0).clamp_min(1e-12)


def fuse(probabilities: torch.Tensor, mode: FusionMode | str, learned_weights: torch.Tensor | None = None):
    """Fuse member probabilities (M, C, ...) in rank order.

    Returns (labels (...), confidence (C, ...)): vote shares for hard modes, fused
    probabilities for soft modes (what uncertainty maps are made from).
    """
    mode = FusionMode(mode)
    members, num_classes = probabilities.shape[:2]
    if mode in (FusionMode.PV, FusionMode.WV):
        labels = probabilities.argmax(dim=1)
        weights = _vote_weights(mode, members)
        winner, scores = hard_vote(labels, weights, num_classes)
        return winner, scores.to(probabilities.dtype) / weights.sum()
    if mode is FusionMode.SOFT:
        fused = soft_vote(probabilities)
    elif mode is FusionMode.WEIGHTED_SOFT:
        fused = soft_vote(probabilities, rank_weights(members).to(probabilities.dtype))
    else:
        if learned_weights is None:
            raise ValueError("fusion mode 'learned' needs weights fitted on the validation split")
        fused = soft_vote(probabilities, learned_weights)
    return argmax_classes(fused), fused


def _vote_weights(mode: FusionMode, members: int) -> torch.Tensor:
    return torch.ones(members, dtype=torch.int64) if mode is FusionMode.PV else rank_weights(members)


#: the largest rank tie-break in blendable vote scores (``fusion_scores``)
TIE_BREAK = 1e-4


def fusion_scores(probabilities: torch.Tensor, mode: FusionMode | str,
                  learned_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(C, ...) scores that can be blended across overlapping tiles; their argmax is the fused label.

    Soft modes: the fused probabilities. Voting: each class's vote share (0..1) plus its rank priority (0..M, that
    of the best-ranked member voting for it: ``vote_keys``) times ``TIE_BREAK`` / (M + 1), under ``TIE_BREAK`` (1e-4,
    below a quarter vote): a tile alone gives exact ties to the best-ranked member, as :func:`fuse` does, while
    blended tiles are decided by their blended vote shares (a tie-break worth up to a vote once overrode blended
    majorities), and ``1 - max`` is the winner's vote share within 1e-4 (the disagreement map). Voting scores need
    float32 to keep the tie-break (``blend_dtype``).
    """
    mode = FusionMode(mode)
    if mode not in (FusionMode.PV, FusionMode.WV):
        return fuse(probabilities, mode, learned_weights)[1]
    members, num_classes = probabilities.shape[:2]
    weights = _vote_weights(mode, members)
    scores, keys = vote_keys(probabilities.argmax(dim=1), weights, num_classes)
    total = float(weights.sum())
    priority = (keys - scores * (members + 1)).to(torch.float32)
    return scores.to(torch.float32) / total + priority * (min(TIE_BREAK, 0.25 / total) / (members + 1))


def blend_dtype(mode: FusionMode | str):
    """The numpy dtype ``fusion_scores`` of ``mode`` may be kept in while tiles wait to be blended: float16 for
    probabilities, float32 for vote scores (float16's step near 1, ~1e-3, would swallow the tie-break)."""
    import numpy as np

    return np.float32 if FusionMode(mode) in (FusionMode.PV, FusionMode.WV) else np.float16
