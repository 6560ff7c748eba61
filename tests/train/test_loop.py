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
from minseg.train.loop import Session, has_batch_norm, steps_per_epoch, train_epoch


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
                   torch.ones(1, 4, 1, 1),
                   AugmentSettings(), ray_session.data.from_items(rows), None, None, None, None,
                   batch_norm=has_batch_norm(model))


def test_a_last_batch_of_one_is_left_out_for_batch_norm(ray_session):
    """17 windows in batches of 16: the last batch holds one window, from which BatchNorm cannot take statistics
    (on a 1x1 map it raises "Expected more than 1 value per channel"): it is skipped, and the schedule counts one
    step an epoch. The prospectivity job met it whenever its window count was one more than a multiple of the batch."""
    session = _window_session(ray_session, 17, 16)
    assert steps_per_epoch(session, 16) == 1
    optimizer = torch.optim.SGD(session.model.parameters(), lr=0.01)
    state = {"epochs_done": 0, "step": 0}
    metrics = train_epoch(session, session.model, optimizer, state, 0.01, 0, 1, 16)
    assert metrics["train_tiles"] == 16 and state["step"] == 1 and np.isfinite(metrics["train_loss"])
    assert steps_per_epoch(session, 8) == 2  # 8 + 8, and the one left out
    assert steps_per_epoch(_window_session(ray_session, 18, 16), 16) == 2  # a last batch of two trains
    # a batch of one by configuration trains as configured: nothing is skipped, one step a tile
    assert steps_per_epoch(session, 1) == 17 and has_batch_norm(session.model)
    assert not has_batch_norm(build_model("convnext_eca", num_classes=2, width=0.125, depth="tiny"))  # LayerNorm
    session.batch_norm = False  # what the loop did before: the batch of one stops the member
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        train_epoch(session, session.model, optimizer, {"epochs_done": 1, "step": 1}, 0.01, 1, 2, 16)


def test_one_window_cannot_train_a_batch_norm_member(ray_session):
    with pytest.raises(InputError, match="member mfaf: one training tile .* BatchNorm layers"):
        steps_per_epoch(_window_session(ray_session, 1, 16), 16)
