"""Learners: every architecture of the seed papers, built by name.

>>> from minseg.models import build_model
>>> model = build_model("res_unet", num_classes=9, stn=True, width=0.25, depth="tiny")
"""

from minseg.models.base import MinsegModel
from minseg.models.pretrained import (InitWeightsError, WeightLoadReport, load_mismatch, load_pretrained,
                                     read_state_dict)
from minseg.models.registry import InputSpec, ModelEntry, build_model, get_entry, list_models, register_model

__all__ = [
    "InitWeightsError",
    "InputSpec",
    "MinsegModel",
    "ModelEntry",
    "WeightLoadReport",
    "build_model",
    "get_entry",
    "list_models",
    "load_mismatch",
    "load_pretrained",
    "read_state_dict",
    "register_model",
]
