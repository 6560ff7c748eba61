"""One epoch of the training loop (``train.loop.train_epoch``) on a real Ray Data stream."""

import numpy as np
import pytest
import torch

from minseg.data.config import AugmentSettings
from minseg.enums import Task
from minseg.errors import InputError
from minseg.io.storage import Storage
from minseg.losses import build_loss
from minseg.models import build_model
from minseg.train.config import MemberSettings
from minseg.train.ensemble import TrialInputs, WorkerConfig
from minseg.train.loop import Session, train_epoch


def _window_session(ray_session, windows: int, batch_size: int) -> Session:
    """An MFAF member (BatchNorm down to a 1x1 map on 16-cell windows) on ``windows`` random 4-channel windows."""
    rng = np.random.default_rng(0)
    rows = [{"image": rng.normal(size=(16, 16, 4)).astype(np.float32), "label": i % 2} for i in range(windows)]
    member = MemberSettings.model_validate({
        "name": "mfaf", "model": "mfaf", "stages": [{"epochs": 1, "batch_size": batch_size}],
        "model_options": {"backbone": "resnet18", "width": 0.125, "dilation_rates": [1, 2, 4], "branch_channels": 8}})
    inputs = TrialInputs(task=Task.CLASSIFICATION, num_classes=2, in_channels=4, ignore_index=255, classes={},
                         classes_names=["barren", "deposit"], normalization={"mean": [0.0] * 4, "std": [1.0] * 4},
                         augmentation=AugmentSettings(), train_tiles=windows, has_val=False, shuffle_buffer=windows)
    model = build_model("mfaf", num_classes=2, in_channels=4, **member.model_options)
    return Session(WorkerConfig(member, Storage(), "unused", inputs, batch_size, 0), 0, 1, torch.device("cpu"), 0,
                   model, build_loss("self_distillation", num_classes=2), torch.zeros(1, 4, 1, 1),
                   torch.ones(1, 4, 1, 1), AugmentSettings(), ray_session.data.from_items(rows), None, None, None,
                   None)


def test_a_last_batch_of_one_is_left_out_where_batch_norm_cannot_take_it(ray_session):
    """17 windows in batches of 16: the last batch holds one window, from which MFAF's BatchNorm on a 1x1 map
    cannot take statistics ("Expected more than 1 value per channel"): it is skipped, not the member failed. The
    prospectivity job met it whenever its window count was one more than a multiple of the batch."""
    session = _window_session(ray_session, 17, 16)
    optimizer = torch.optim.SGD(session.model.parameters(), lr=0.01)
    state = {"epochs_done": 0, "step": 0}
    metrics = train_epoch(session, session.model, optimizer, state, 0.01, 0, 2, 16)
    assert metrics["train_tiles"] == 16 and state["step"] == 1 and np.isfinite(metrics["train_loss"])
    metrics = train_epoch(_window_session(ray_session, 18, 16), session.model, optimizer, state, 0.01, 1, 2, 16)
    assert metrics["train_tiles"] == 18  # a last batch of two trains


def test_batches_of_one_only_cannot_train_such_a_member(ray_session):
    session = _window_session(ray_session, 3, 1)
    optimizer = torch.optim.SGD(session.model.parameters(), lr=0.01)
    with pytest.raises(InputError, match="member mfaf: no training batch holds more than one tile .* BatchNorm"):
        train_epoch(session, session.model, optimizer, {"epochs_done": 0, "step": 0}, 0.01, 0, 3, 1)
