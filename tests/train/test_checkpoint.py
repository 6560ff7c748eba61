"""Checkpoint writes in the background (rank 0's ``CheckpointWriter``)."""

import threading

import pytest
import torch

from minseg.io.storage import Storage, StorageError
from minseg.train.checkpoint import CheckpointWriter, load_checkpoint


class HeldStorage(Storage):
    """Local storage whose writes wait until the test lets them go: the write surely comes after training moved on."""

    def __init__(self):
        super().__init__()
        self.go = threading.Event()

    def write_bytes(self, uri: str, data: bytes) -> None:
        assert self.go.wait(30)
        super().write_bytes(uri, data)


def written(writer: CheckpointWriter, storage, root, model, optimizer, epoch: int) -> None:
    state = {"epochs_done": epoch, "history": [{"epoch": epoch}]}
    writer.submit(storage, str(root), "m", f"epoch-{epoch:04d}", model.state_dict(), optimizer.state_dict(),
                  state, {"name": "m"}, {"classes": []}, {"miou": 0.5}, True)
    state["history"].append({"epoch": epoch + 1})  # the loop goes on changing what it passed


def test_a_background_checkpoint_holds_the_epoch_it_was_submitted_at_not_what_training_did_next(tmp_path):
    """On CPU ``tensor.cpu()`` is the tensor itself: without a copy, the next epoch's in-place steps would reach the
    file being written."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()
    writer, storage = CheckpointWriter(), HeldStorage()
    written(writer, storage, tmp_path, model, optimizer, 1)
    for _ in range(3):  # the next epoch's steps, in place, before the write is let go
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
    storage.go.set()
    writer.wait()
    checkpoint = load_checkpoint(Storage(), str(tmp_path), "m")
    assert checkpoint.state == {"epochs_done": 1, "history": [{"epoch": 1}]}
    for key, value in expected.items():
        assert torch.equal(checkpoint.model[key], value), key
    assert torch.equal(checkpoint.optimizer["state"][0]["exp_avg"], moments)
    assert not torch.equal(model.weight.detach(), expected["weight"])  # training did move on


def test_a_failed_background_write_is_raised_by_the_next_call(tmp_path):
    (tmp_path / "run").write_text("a file where the run's folder should be")
    model = torch.nn.Linear(2, 2)
    writer = CheckpointWriter()
    written(writer, Storage(), tmp_path / "run", model, torch.optim.SGD(model.parameters(), lr=0.1), 1)
    with pytest.raises(StorageError, match="run"):
        writer.wait()
    writer.wait()  # said once
