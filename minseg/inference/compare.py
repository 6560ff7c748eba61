"""Scoring a segmented slide against a reference mask, band by band (never a whole slide in memory)."""

from __future__ import annotations

import numpy as np
import torch

from minseg.errors import InputError
from minseg.io.slides import Slide
from minseg.io.storage import Storage
from minseg.metrics import ConfusionMatrix, metrics_from_confusion

BAND_ROWS = 1024


class _ZarrLabels:
    """The class-id level 0 of a segmentation OME-Zarr, read like a ``Slide``."""

    def __init__(self, uri: str, storage: Storage):
        from minseg.io.ngff import SegmentationArrays

        self.arrays = SegmentationArrays(uri, storage, read_only=True)
        self.shape = tuple(self.arrays.array(self.arrays.LABELS, 0).shape)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_region(self, top: int, left: int, rows: int, cols: int, rgb: bool = False) -> np.ndarray:
        return self.arrays.read(self.arrays.LABELS, 0, top, top + rows, left, left + cols)


def compare_label_maps(labels_uri: str, reference_uri: str, class_names: list[str], ignore_index: int = 255,
                       storage: Storage | None = None) -> dict:
    """Pixel accuracy, IoU per class and mIoU of a label map (class ids: a ``segmentation.ome.zarr`` or a
    label TIFF) against a reference of the same size.

    Raises:
        InputError: the two differ in size.
    """
    storage = storage or Storage()
    matrix = ConfusionMatrix(len(class_names), ignore_index)
    zarr = labels_uri.rstrip("/").endswith(".zarr")
    with (_ZarrLabels(labels_uri, storage) if zarr else Slide(labels_uri, storage)) as labels, \
            Slide(reference_uri, storage) as reference:
        shape = labels.shape if zarr else labels.info.levels[0]
        if tuple(shape) != tuple(reference.info.levels[0]):
            raise InputError(f"{labels_uri} is {tuple(shape)}, {reference_uri} is {reference.info.levels[0]}")
        height, width = shape
        for top in range(0, height, BAND_ROWS):
            rows = min(BAND_ROWS, height - top)
            predicted = labels.read_region(top, 0, rows, width, rgb=False)
            truth = reference.read_region(top, 0, rows, width, rgb=False)
            matrix.update(torch.from_numpy(predicted.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    return metrics_from_confusion(matrix.matrix.numpy(), class_names)
