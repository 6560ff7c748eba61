"""Metrics from one streaming confusion matrix (on the model's device, mergeable across
workers), plus ranking metrics for prospectivity.

Conventions:

- IoU is TP / (TP + FP + FN). (The Res-UNet paper's Eq. 11 prints ``+ num_ii`` in the
  denominator, which double-counts TP; the paper's own numbers only make sense with
  the standard definition, which is what is implemented.)
- The paper's **mPA** (Eq. 8) is per-class precision averaged over classes; its **F1**
  (Eq. 10) is the harmonic mean of macro precision and macro recall. Both are reported,
  next to the mean of per-class F1.
- **Recall-weighted** F1 and IoU (microplastic paper, Eq. 34-35) are F1 and IoU multiplied by
  recall (docs/papers.md).
- A class with no true and no predicted pixels has undefined IoU/precision/recall/F1
  (NaN) and is left out of the means.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from minseg.enums import metric_key_problem  # noqa: F401 (re-exported: checks of keys before a job)
from minseg.errors import InputError


class ConfusionMatrix:
    """Counts ``matrix[true, predicted]``; ``update`` accepts labels or logits/probabilities."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> "ConfusionMatrix":
        """``prediction``: (N, C, ...) scores or (N, ...) labels; ``target``: (N, ...) labels."""
        if prediction.ndim == target.ndim + 1:
            prediction = prediction.argmax(dim=1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        prediction = prediction.reshape(-1).to(self.matrix.device, torch.int64)
        target = target.reshape(-1).to(self.matrix.device, torch.int64)
        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        prediction, target = prediction[keep], target[keep]
        bad = (target < 0) | (target >= self.num_classes)
        if bad.any():
            raise ValueError(
                f"target has label {int(target[bad][0])} outside 0..{self.num_classes - 1} "
                f"(ignore_index is {self.ignore_index})"
            )
        if ((prediction < 0) | (prediction >= self.num_classes)).any():
            raise ValueError(f"prediction has labels outside 0..{self.num_classes - 1}")
        counts = torch.bincount(target * self.num_classes + prediction, minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class counts into {self.num_classes}-class counts")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        result = ConfusionMatrix(self.num_classes, self.ignore_index, self.matrix.device)
        result.matrix = self.matrix.clone()
        return result.merge(other)

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the counts over a torch.distributed group (DDP workers), in place."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    def state_dict(self) -> dict:
        return {"num_classes": self.num_classes, "ignore_index": self.ignore_index, "matrix": self.matrix.cpu().tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ConfusionMatrix":
        cm = cls(state["num_classes"], state["ignore_index"])
        cm.matrix = torch.tensor(state["matrix"], dtype=torch.int64)
        return cm

    def compute(self, class_names: Sequence[str] | None = None, background: int | None = 0) -> dict:
        return metrics_from_confusion(self.matrix.cpu().numpy(), class_names, background)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str] | None = None,
                           background: int | None = 0) -> dict:
    """Every segmentation/classification metric minseg reports, from a confusion matrix (rows: truth).

    ``background``: the class left out of the recall-weighted scores (segmentation: 0, the resin /
    background of every seed paper's class map); None for classifiers, where every class counts.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a {n}-class confusion matrix")
    tp = np.diag(matrix)
    true = matrix.sum(axis=1)  # TP + FN
    predicted = matrix.sum(axis=0)  # TP + FP
    present = (true + predicted) > 0
    iou = np.where(present, _divide(tp, true + predicted - tp), np.nan)
    precision = np.where(present, _divide(tp, predicted), np.nan)
    precision = np.where(present & (predicted == 0), 0.0, precision)  # never predicted but present: 0
    recall = np.where(present, _divide(tp, true), np.nan)
    f1 = np.where(present, _divide(2 * tp, true + predicted), np.nan)
    macro_precision, macro_recall = _nanmean(precision), _nanmean(recall)
    # the microplastic paper's recall-weighted scores (Eq. 34-35): a foreground class's F1 and IoU
    # times its recall, so missing the objects costs however well the background is labelled.
    # The background class is left out; a class predicted but absent from the truth has no recall
    # and scores 0 (its F1 and IoU are 0).
    recall_weight = np.nan_to_num(recall)
    rw_f1 = np.where(present, np.nan_to_num(f1) * recall_weight, np.nan)
    rw_iou = np.where(present, np.nan_to_num(iou) * recall_weight, np.nan)
    if background is not None:
        rw_f1[background] = rw_iou[background] = np.nan
    total = matrix.sum()
    denominator = macro_precision + macro_recall
    if math.isnan(denominator):
        paper_f1 = float("nan")
    else:
        paper_f1 = 2 * macro_precision * macro_recall / denominator if denominator > 0 else 0.0
    return {
        "classes": names,
        "iou": iou.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": true.astype(np.int64).tolist(),
        "miou": _nanmean(iou),
        "mean_precision": macro_precision,
        "mean_recall": macro_recall,
        "mean_f1": _nanmean(f1),
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        # the Res-UNet paper's names (Eq. 8-10)
        "mPA": macro_precision,
        "mRecall": macro_recall,
        "F1_paper": float(paper_f1),
        # the microplastic paper's recall-weighted scores (Eq. 34-35): per class (background: None) and
        # their mean over the foreground classes present; binary: the foreground class's value
        "recall_weighted_f1_per_class": [None if c == background else v for c, v in enumerate(rw_f1.tolist())],
        "recall_weighted_iou_per_class": [None if c == background else v for c, v in enumerate(rw_iou.tolist())],
        "recall_weighted_f1": _nanmean(rw_f1),
        "recall_weighted_iou": _nanmean(rw_iou),
        "uncertainty_coefficient": uncertainty_coefficient(matrix),
    }


def uncertainty_coefficient(matrix: np.ndarray) -> float:
    """Theil's uncertainty coefficient U = I(truth; prediction) / H(truth) of a confusion matrix (rows: truth): the
    share of the uncertainty about the true class that the predictions remove. 0 when they say nothing about it
    (one class predicted everywhere, or predictions independent of the truth), 1 when they determine it; NaN when
    the truth holds one class (H = 0) or nothing. Mutual information by ``sklearn.metrics.mutual_info_score`` on
    the matrix as a contingency table, entropy by ``scipy.stats.entropy`` (both in nats)."""
    from scipy.stats import entropy
    from sklearn.metrics import mutual_info_score

    matrix = np.asarray(matrix, dtype=np.float64)
    truth = entropy(matrix.sum(axis=1)) if matrix.sum() > 0 else 0.0
    if not truth > 0:
        return float("nan")
    return float(mutual_info_score(None, None, contingency=matrix) / truth)


def metric_value(metrics: dict, key: str) -> float:
    """Look up a ranking key: ``miou``, ``mean_f1``, ``iou:gangue``, ``f1:<class>``, ...

    Returns NaN where the value is undefined: NaN in memory, ``null`` in a JSON record read back (a class absent from
    the split and never predicted has no IoU)."""
    name, _, cls = key.partition(":")
    if not cls:
        if name not in metrics or isinstance(metrics[name], list):
            raise InputError(metric_key_problem(key, metrics.get("classes") or []) or f"unknown metric {key!r}")
        return _number(metrics[name])
    problem = metric_key_problem(key, metrics["classes"])
    if problem:
        raise InputError(problem)
    return _number(metrics[name][metrics["classes"].index(cls)])


def _number(value) -> float:
    return float("nan") if value is None else float(value)


# ------------------------------------------------------------------ prospectivity


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both classes: {positives} positive and {negatives} negative samples")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def auc_z_score(auc: float, positives: int, negatives: int) -> float:
    """Z_AUC of the prospectivity paper (Eq. 1-3), Hanley-McNeil standard error:

    Q1 = AUC / (2 - AUC), Q2 = 2 AUC^2 / (1 + AUC),
    S = sqrt((AUC (1 - AUC) + (Cp - 1)(Q1 - AUC^2) + (Cn - 1)(Q2 - AUC^2)) / (Cp Cn)),
    Z = (AUC - 0.5) / S.

    S is Eq. 3 with the AUC it is evaluated at kept half a positive-negative pair from 0 and 1, between 1 / (2 Cp
    Cn) and 1 - 1 / (2 Cp Cn): at AUC 0 or 1 Eq. 3 gives S = 0, an infinite Z whatever the counts; kept half a
    pair away, Z stays finite and still rises with the AUC (at 1 it is above its value at the next AUC the counts
    allow). Any AUC the counts allow short of 0 and 1 is evaluated as Eq. 3 writes it. Eq. 3 is a plug-in
    standard error, not the one under no association: with few positives it makes large Z of small evidence (1
    positive above 999 negatives: Z 22 at AUC 0.999, where the exact test's p of 1/1000 is a z of 3.1).
    """
    if positives < 1 or negatives < 1:
        raise ValueError("Z_AUC needs at least one positive and one negative sample")
    half_pair = 0.5 / (positives * negatives)
    at = min(max(auc, half_pair), 1.0 - half_pair)
    q1 = at / (2 - at)
    q2 = 2 * at * at / (1 + at)
    variance = (at * (1 - at) + (positives - 1) * (q1 - at * at) + (negatives - 1) * (q2 - at * at)) / (
        positives * negatives
    )
    return (auc - 0.5) / math.sqrt(variance)
