"""Scoring a segmented slide against a reference mask, band by band (never a whole slide in memory)."""

from __future__ import annotations

import numpy as np
import torch

from minseg.errors import InputError
from minseg.inference.labelmaps import class_names_difference, open_label_map
from minseg.io.storage import Storage
from minseg.metrics import ConfusionMatrix, metrics_from_confusion

BAND_ROWS = 1024


def compare_label_maps(labels_uri: str, reference_uri: str, class_names: list[str], ignore_index: int = 255,
                       storage: Storage | None = None) -> dict:
    """Pixel accuracy, IoU per class and mIoU of a label map (class ids: a ``segmentation.ome.zarr`` or a
    label TIFF) against a reference of the same size.

    Raises:
        InputError: the two differ in size, or either names its classes (label TIFF / OME-Zarr metadata) otherwise
            than ``class_names`` (ids are compared as they are).
    """
    storage = storage or Storage()
    matrix = ConfusionMatrix(len(class_names), ignore_index)
    with open_label_map(labels_uri, storage) as labels, open_label_map(reference_uri, storage) as reference:
        for opened in (labels, reference):
            if opened.names and (difference := class_names_difference(opened.names, class_names, "it",
                                                                      "the classes compared")):
                raise InputError(f"{opened.uri} names its classes otherwise: {difference}")
        if (labels.height, labels.width) != (reference.height, reference.width):
            raise InputError(f"{labels_uri} is {labels.height}x{labels.width}, {reference_uri} is "
                             f"{reference.height}x{reference.width}")
        for top in range(0, labels.height, BAND_ROWS):
            rows = min(BAND_ROWS, labels.height - top)
            predicted = labels.read(top, 0, rows, labels.width)
            truth = reference.read(top, 0, rows, labels.width)
            matrix.update(torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    return metrics_from_confusion(matrix.matrix.numpy(), class_names)
