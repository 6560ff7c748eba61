"""Losses of the seed papers, each with class weights and an ignore index.

- ``ce``: cross-entropy.
- ``dice``: 1 - mean_c (2 sum p_c g_c) / (sum p_c^2 + sum g_c^2) (Res-UNet paper Eq. 3,
  squared terms in the denominator, averaged over the classes present in the target).
- ``focal``: -alpha_t (1 - p_t)^gamma log p_t (Eq. 4); alpha a scalar or one per class.
- ``ce_dice``, ``ce_focal``: sums with configurable weights.
- ``weighted_bce``: the microplastic paper's per-image weighted BCE (Eq. 25-29):
  w_T = HW / sum(Y) on foreground, w_F = HW / (HW - sum(Y)) on background.
- ``self_distillation``: MFAF's loss: CE on the vote plus, for every stage classifier,
  (1 - beta) CE + beta T^2 KL(vote || stage).

Ignored pixels (``ignore_index``) contribute nothing to any loss or normaliser.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import ClassWeighting, LossName


def _as_weight(values, num_classes: int | None, name: str) -> torch.Tensor | None:
    if values is None:
        return None
    tensor = torch.as_tensor(values, dtype=torch.float32)
    if tensor.ndim != 1 or (num_classes is not None and tensor.numel() != num_classes):
        given = f"{tensor.numel()} value(s)" if tensor.ndim == 1 else f"an array of shape {list(tensor.shape)}"
        raise ValueError(f"{name} must list one value per class ({num_classes}), got {given}")
    if (tensor < 0).any():
        raise ValueError(f"{name} must be non-negative")
    return tensor


def balanced_class_weights(weighting: ClassWeighting | str, class_counts) -> list[float]:
    """Loss weights (one per class) from the training data's counts per class.

    ``class_counts``: labelled pixels per class (length C, ignore pixels excluded; images or windows per class for
    classification). With ``f_c`` each class's share and ``m`` the median share over the classes present:
    ``median_frequency`` gives ``w_c = m / f_c`` (Eigen & Fergus 2015, median frequency balancing),
    ``inverse_sqrt_frequency`` its square root (rare classes count more without the most frequent class nearly
    vanishing from the loss). A class absent from training gets the largest weight given to a present one (it has
    no pixels to weigh until the data changes). Weights are rounded to 4
    decimals (they are recorded in member.json). Raises ValueError when no class has pixels.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("class weights from class frequencies: the training data has no labelled examples")
    share = counts / counts.sum()
    median = float(np.median(share[present]))
    weights = np.zeros_like(share)
    weights[present] = median / share[present]
    if ClassWeighting(weighting) is ClassWeighting.INVERSE_SQRT_FREQUENCY:
        weights = np.sqrt(weights)
    weights[~present] = weights[present].max()
    # 4 decimals (as ever: the same weights, the same members) from 0.01 up; 4 significant digits below, where 4
    # decimals rounded a dominant class's 5e-5 to 0 and took it out of the loss
    return [round(float(w), 4) if w >= 0.01 else float(f"{w:.4g}") for w in weights]


def _valid_mask(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    return torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index


def _pixel_weights(target: torch.Tensor, ignore_index: int | None, weight: torch.Tensor | None):
    """(each pixel's weight: its class's, 0 where ignored, float32; targets with ignored pixels set to class 0)."""
    valid = _valid_mask(target, ignore_index)
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    weights = valid.float()
    if weight is not None:
        weights = weights * weight.to(target.device)[safe_target]
    return weights, safe_target


class CrossEntropyLoss(nn.Module):
    def __init__(self, class_weights=None, ignore_index: int = 255, num_classes: int | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", _as_weight(class_weights, num_classes, "class_weights"), persistent=False)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits, target):
        # PyTorch's mean reduction divides by the valid pixels' summed class weights, which is 0/0 = NaN on a
        # batch whose pixels are all ignored (a tile cut from an unlabelled margin); the same normaliser,
        # clamped, gives 0 with no gradient there and the same value everywhere else
        per_pixel = F.cross_entropy(logits.float(), target.long(), weight=self.weight, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, reduction="none")
        normaliser = _pixel_weights(target, self.ignore_index, self.weight)[0].sum()
        # a zero normaliser (no valid pixel, or only zero-weight classes): no loss, not sum / 1e-12
        return torch.where(normaliser > 0, per_pixel.sum() / normaliser.clamp_min(1e-12), per_pixel.sum() * 0)


class DiceLoss(nn.Module):
    """Soft Dice with squared denominators, averaged over the classes present in the batch's target.

    A class absent from the target has Dice 0 whatever is predicted (its numerator is 0), so it adds a
    constant 1 with no gradient; averaging over it only shrinks the present classes' terms, and with class
    weights (large for rare classes, which are the ones usually absent from a batch) it all but switched
    Dice off. False positives of absent classes are the cross-entropy term's to penalise. Presence is per
    batch: a single pixel of a rare class brings in that class's (large) weight for the batch."""

    def __init__(self, class_weights=None, ignore_index: int = 255, num_classes: int | None = None,
                 smooth: float = 1e-6):
        super().__init__()
        self.register_buffer("weight", _as_weight(class_weights, num_classes, "class_weights"), persistent=False)
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits, target):
        num_classes = logits.shape[1]
        probs = torch.softmax(logits.float(), dim=1)
        valid = _valid_mask(target, self.ignore_index)
        safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
        onehot = F.one_hot(safe_target, num_classes).movedim(-1, 1).float()
        mask = valid.unsqueeze(1).float()
        probs, onehot = probs * mask, onehot * mask
        dims = (0,) + tuple(range(2, probs.ndim))
        intersection = (probs * onehot).sum(dims)
        denominator = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth)
        present = onehot.sum(dims) > 0
        weight = self.weight if self.weight is not None else torch.ones(num_classes, device=logits.device)
        weight = weight.to(logits.device) * present
        return ((1 - dice) * weight).sum() / weight.sum().clamp_min(1e-12)


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None, class_weights=None,
                 ignore_index: int = 255, num_classes: int | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        if alpha is not None and not isinstance(alpha, (int, float)):
            alpha = _as_weight(alpha, num_classes, "focal alpha")
        self.alpha = alpha
        self.register_buffer("weight", _as_weight(class_weights, num_classes, "class_weights"), persistent=False)
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        weights, safe_target = _pixel_weights(target, self.ignore_index, self.weight)
        log_probs = F.log_softmax(logits.float(), dim=1)
        log_pt = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        # (1 - p_t)^gamma has an infinite slope at p_t = 1 for 0 < gamma < 1, and float32 reaches p_t = 1 at a logit
        # margin of ~17: clamped off 0, a confident pixel's gradient is ~0, not NaN
        loss = -((1 - log_pt.exp()).clamp_min(1e-6) ** self.gamma) * log_pt
        if isinstance(self.alpha, torch.Tensor):
            loss = loss * self.alpha.to(logits.device)[safe_target]
        elif self.alpha is not None:
            loss = loss * float(self.alpha)
        return (loss * weights).sum() / weights.sum().clamp_min(1e-12)


class CombinedLoss(nn.Module):
    def __init__(self, parts: list[tuple[float, nn.Module]]):
        super().__init__()
        self.coefficients = [c for c, _ in parts]
        self.parts = nn.ModuleList(p for _, p in parts)

    def forward(self, logits, target):
        return sum(c * part(logits, target) for c, part in zip(self.coefficients, self.parts))


class WeightedBCELoss(nn.Module):
    """Per-image weighted BCE for one foreground class (microplastic paper, Eq. 25-29).

    ``logits``: (N, 1, H, W), (N, H, W), or (N, 2, H, W) (then the foreground logit is
    channel 1 minus channel 0). ``target``: (N, H, W) with 1 = foreground.
    """

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits, target):
        logits = logits.float()
        if logits.ndim == 4 and logits.shape[1] == 2:
            logits = logits[:, 1] - logits[:, 0]
        elif logits.ndim == 4 and logits.shape[1] == 1:
            logits = logits[:, 0]
        if logits.shape != target.shape:
            raise ValueError(f"weighted BCE: logits {tuple(logits.shape)} do not match target {tuple(target.shape)}")
        valid = _valid_mask(target, self.ignore_index).float()
        y = (target == 1).float() * valid
        dims = tuple(range(1, y.ndim))
        pixels = valid.sum(dims, keepdim=True)  # HW of each image, ignored pixels excluded
        positives = y.sum(dims, keepdim=True)
        w_true = torch.where(positives > 0, pixels / positives.clamp_min(1), torch.zeros_like(pixels))
        negatives = pixels - positives
        w_false = torch.where(negatives > 0, pixels / negatives.clamp_min(1), torch.zeros_like(pixels))
        per_pixel = -(w_true * y * F.logsigmoid(logits) + w_false * (1 - y) * valid * F.logsigmoid(-logits))
        return per_pixel.sum() / valid.sum().clamp_min(1)


class SelfDistillationLoss(nn.Module):
    """MFAF training loss over (vote_logits, [stage_logits, ...]); plain CE on a tensor."""

    def __init__(self, beta: float = 0.4, temperature: float = 3.0, class_weights=None, ignore_index: int = -100,
                 num_classes: int | None = None):
        super().__init__()
        if not 0 <= beta <= 1:
            raise ValueError(f"self-distillation beta must be in [0, 1], got {beta}")
        self.beta = beta
        self.temperature = temperature
        self.ce = CrossEntropyLoss(class_weights, ignore_index, num_classes)

    def forward(self, output, target):
        if not isinstance(output, (tuple, list)):
            return self.ce(output, target)
        vote, stages = output
        loss = self.ce(vote, target)
        teacher = torch.softmax(vote.detach().float() / self.temperature, dim=1)
        valid = _valid_mask(target, self.ce.ignore_index).float()  # (N, ...): ignored pixels teach nothing
        for stage in stages:
            student = F.log_softmax(stage.float() / self.temperature, dim=1)
            # KL per sample (per pixel of a segmentation) averaged over the valid ones: "batchmean" for windows
            kl = F.kl_div(student, teacher, reduction="none").sum(dim=1)
            distill = (kl * valid).sum() / valid.sum().clamp_min(1.0) * self.temperature**2
            loss = loss + (1 - self.beta) * self.ce(stage, target) + self.beta * distill
        return loss


def build_loss(
    name: LossName | str,
    num_classes: int | None = None,
    class_weights=None,
    ignore_index: int = 255,
    dice_weight: float = 1.0,
    focal_weight: float = 1.0,
    focal_gamma: float = 2.0,
    focal_alpha: float | Sequence[float] | None = None,
    beta: float = 0.4,
) -> nn.Module:
    """A loss by name (see ``LossName``); unknown names fail listing the valid ones."""
    try:
        name = LossName(name)
    except ValueError:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LossName.choices())}") from None
    common = dict(class_weights=class_weights, ignore_index=ignore_index, num_classes=num_classes)
    if name is LossName.SELF_DISTILLATION:
        return SelfDistillationLoss(beta, class_weights=class_weights, num_classes=num_classes,
                                    ignore_index=ignore_index)
    if name is LossName.WEIGHTED_BCE and num_classes is not None and num_classes > 2:
        raise ValueError(f"loss weighted_bce is the binary loss of one foreground class (the microplastic paper's), "
                         f"and this run has {num_classes} classes: use ce, ce_dice or focal")
    if name is LossName.CE:
        return CrossEntropyLoss(**common)
    if name is LossName.DICE:
        return DiceLoss(**common)
    if name is LossName.FOCAL:
        return FocalLoss(focal_gamma, focal_alpha, **common)
    if name is LossName.CE_DICE:
        return CombinedLoss([(1.0, CrossEntropyLoss(**common)), (dice_weight, DiceLoss(**common))])
    if name is LossName.CE_FOCAL:
        return CombinedLoss([(1.0, CrossEntropyLoss(**common)),
                             (focal_weight, FocalLoss(focal_gamma, focal_alpha, **common))])
    return WeightedBCELoss(ignore_index)


class MainOutputLoss(nn.Module):
    """A loss of one output (every loss but ``self_distillation``) applied to a model that also returns auxiliary
    outputs (MFAF's ``(vote, [stage logits])``): the main output, the first, is scored."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, output, target):
        return self.loss(output[0] if isinstance(output, (tuple, list)) else output, target)
