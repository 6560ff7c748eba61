"""Scoring a segmented slide against a reference mask, band by band (never a whole slide in memory)."""

from __future__ import annotations

import numpy as np
import torch

from minseg.errors import InputError
from minseg.io.slides import Slide
from minseg.io.storage import Storage
from minseg.metrics import ConfusionMatrix, metrics_from_confusion

BAND_ROWS = 1024


def compare_label_maps(labels_uri: str, reference_uri: str, class_names: list[str], ignore_index: int = 255,
                       storage: Storage | None = None) -> dict:
    """Pixel accuracy, IoU per class and mIoU of a label map (class ids) against a reference of the same size."""
    storage = storage or Storage()
    matrix = ConfusionMatrix(len(class_names), ignore_index)
    with Slide(labels_uri, storage) as labels, Slide(reference_uri, storage) as reference:
        if labels.info.levels[0] != reference.info.levels[0]:
            raise InputError(f"{labels_uri} is {labels.info.levels[0]}, {reference_uri} is {reference.info.levels[0]}")
        height, width = labels.info.levels[0]
        for top in range(0, height, BAND_ROWS):
            rows = min(BAND_ROWS, height - top)
            predicted = labels.read_region(top, 0, rows, width, rgb=False)
            truth = reference.read_region(top, 0, rows, width, rgb=False)
            matrix.update(torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    return metrics_from_confusion(matrix.matrix.numpy(), class_names)
