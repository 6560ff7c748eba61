"""Members that start from pretrained weights, on real Ray Train: the frozen stage keeps the
encoder (weights and BatchNorm statistics) exactly as loaded, under DDP and across a worker
kill + resume; the unfrozen stage changes it; one cosine schedule spans both stages. The DDP
member is bagged too (the recipes' members, data-parallel on a cluster): its two workers share
its bootstrap sample's tile count, repeats included, in every epoch (across the kill when one
happened; which tiles a sample gives: tests/train/test_sources.py)."""

import json
import math
from pathlib import Path

import pytest
import torch

from minseg.models import build_model
from minseg.models.pretrained import family_normalization
from minseg.train.checkpoint import load_checkpoint
from tests.train.conftest import TINY, BackgroundTraining, training_config

TWO_STAGES = [{"epochs": 3, "batch_size": 4, "freeze_encoder": True}, {"epochs": 1, "batch_size": 4}]
# the paper's shape: a larger batch while frozen, so the stages have different step counts
UNEQUAL_STAGES = [{"epochs": 3, "batch_size": 8, "freeze_encoder": True}, {"epochs": 1, "batch_size": 4}]


def imagenet_stand_in(path) -> dict:
    """An encoder checkpoint in torchvision's names with BatchNorm statistics no training would give."""
    torch.manual_seed(7)
    encoder = build_model("res_unet", num_classes=2, **TINY).encoder
    state = encoder.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.copy_(torch.randn_like(value) * 0.3)
        elif key.endswith("running_var"):
            value.copy_(torch.rand_like(value) + 0.5)
    state = {k: v.clone() for k, v in state.items()}
    torch.save({**state, "fc.weight": torch.zeros(1000, 8), "fc.bias": torch.zeros(1000)}, path)
    return state


@pytest.fixture(scope="module")
def pretrained_run(synthetic_sections, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    weights = root / "resnet50-imagenet.pth"
    init_state = imagenet_stand_in(weights)
    wrong = root / "convnext-tiny.pth"
    torch.save(build_model("convnext_eca", num_classes=3, width=0.25, depth="tiny").state_dict(), wrong)
    members = [
        {"name": "frozen-ddp", "model": "res_unet", "model_options": TINY, "init": {"uri": str(weights)},
         "stages": TWO_STAGES, "scaling": {"workers": 2, "cpus_per_worker": 0.25}, "max_failures": 3,
         "bagging": {"fraction": 0.75},  # 4 draws from the 6 training sections: 16 tiles an epoch, not 24
         # validated after the frozen stage (epoch 3) and at the end; "best" = the frozen stage's end
         "validate_every": 3, "checkpoint_metric": "stage", "checkpoint_mode": "min"},
        {"name": "one-schedule", "model": "res_unet", "model_options": TINY,
         "init": {"uri": str(weights), "normalization": "data"}, "stages": UNEQUAL_STAGES, "max_failures": 3,
         "schedule": {"name": "cosine", "min_lr": 1e-5, "span": "run"}},
        {"name": "wrong-file", "model": "res_unet", "model_options": TINY, "init": {"uri": str(wrong)},
         "stages": TWO_STAGES},
    ]
    training = BackgroundTraining(training_config(synthetic_sections, root, "pre", members), "frozen-ddp", 500)
    killed = []
    if training.wait_for_checkpoint()["epoch"] < 3:  # still inside the frozen stage: kill every worker there
        killed = training.kill_workers()
    return {r.member: r for r in training.join()}, root / "pre", init_state, bool(killed)


def test_frozen_stage_keeps_the_loaded_encoder_and_bn_statistics(pretrained_run):
    rows, run, init_state, killed = pretrained_run
    row = rows["frozen-ddp"]
    assert row.status == "done", row.error
    assert row.init == "resnet50-imagenet.pth [torchvision names]: encoder " + "/".join(
        [str(sum(1 for k in init_state if not k.endswith("num_batches_tracked")))] * 2)
    best = load_checkpoint(_storage(), str(run), "frozen-ddp", "best")
    last = load_checkpoint(_storage(), str(run), "frozen-ddp", "last")
    assert best.state["epochs_done"] == 3 and last.state["epochs_done"] == 4
    if killed:
        assert last.state["restarts"] >= 1 and [h["epoch"] for h in last.state["history"]] == [1, 2, 3, 4]
    encoder_keys = [k for k in init_state if not k.endswith("num_batches_tracked")]
    for key in encoder_keys:  # after the frozen stage: exactly the file's tensors, buffers included
        assert torch.equal(best.model[f"encoder.{key}"], init_state[key]), key
    assert not torch.equal(best.model["classifier.weight"], last.model["classifier.weight"])  # decoder kept training
    changed = [k for k in encoder_keys if not torch.equal(last.model[f"encoder.{k}"], init_state[k])]
    assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("conv1.weight") for k in changed)
    metrics = json.loads((run / "members" / "frozen-ddp" / "checkpoints" / best.uri.rsplit("/", 1)[-1]
                          / "metrics.json").read_text())
    imagenet = family_normalization(3)  # the weights' statistics
    assert metrics["normalization"]["mean"] == pytest.approx(imagenet["mean"])
    assert metrics["normalization"]["std"] == pytest.approx(imagenet["std"])
    report = json.loads((run / "members" / "frozen-ddp" / "init_report.json").read_text())
    assert report["encoder_share"] == 1.0 and report["unexpected"] == ["fc.weight", "fc.bias"]
    assert report["normalization"] == "weights (ImageNet)"
    assert "resnet50-imagenet.pth [torchvision names]: encoder" in (run / "members.csv").read_text()
    assert last.state["history"][0]["init"] == row.init and "init" not in last.state["history"][1]
    assert last.optimizer is None  # the run is over: no optimizer state kept


def test_bagged_ddp_member_trains_its_whole_sample_every_epoch(pretrained_run):
    """Ray Train splits the member's training tiles over its workers after the sample's repeats are laid out: every
    epoch (across the kill when one happened) the two workers together train 16 tiles, the sample's count (all six
    sections: 24; each worker reading the whole sample: 32; a repeated section once: 12 or fewer)."""
    rows, run, _, killed = pretrained_run
    assert rows["frozen-ddp"].status == "done", rows["frozen-ddp"].error
    last = load_checkpoint(_storage(), str(run), "frozen-ddp")
    state, sample = last.state, last.state["bagging_sample"]
    assert sum(sample.values()) == 4 and max(sample.values()) > 1  # this seed's draw has a section twice
    assert state["train_tiles"] == 4 * 4  # four 48-px tiles per 96-px section, repeats included
    assert [h["train_tiles"] for h in state["history"]] == [state["train_tiles"]] * 4
    assert json.loads(Path(last.uri, "member.json").read_text())["bagging_sample"] == sample
    if killed:
        assert state["restarts"] >= 1


def test_one_schedule_spans_both_stages(pretrained_run):
    rows, run, _, _ = pretrained_run
    assert rows["one-schedule"].status == "done", rows["one-schedule"].error
    state = load_checkpoint(_storage(), str(run), "one-schedule").state
    history = state["history"]
    # (if the kill caught this member running, it resumed: the closed form below then also checks that the
    # optimizer state and the step count carried over)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    tiles = history[0]["train_tiles"]
    frozen_steps, open_steps = -(-tiles // 8), -(-tiles // 4)  # batches per epoch in each stage, one worker
    total = 3 * frozen_steps + open_steps
    last_step = [frozen_steps - 1, 2 * frozen_steps - 1, 3 * frozen_steps - 1, total - 1]
    for row, step in zip(history, last_step):  # lr_min + (lr - lr_min)(1 + cos(pi t / T)) / 2 over the whole run
        expected = 1e-5 + (0.003 - 1e-5) * 0.5 * (1 + math.cos(math.pi * step / total))
        assert row["lr"] == pytest.approx(expected, rel=1e-9), row
    assert history[2]["lr"] > history[3]["lr"] > 1e-5  # no restart at unfreezing
    assert state["normalization"] != family_normalization(3)  # normalization: data


def test_wrong_file_is_refused_before_training(pretrained_run):
    rows, run, _, _ = pretrained_run
    row = rows["wrong-file"]
    assert row.status == "failed" and row.epochs == 0
    assert row.error.startswith("not started: ") and "convnext-tiny.pth: only 0 of" in row.error
    assert not (run / "members" / "wrong-file" / "checkpoints").exists()


def _storage():
    from minseg.io.storage import Storage

    return Storage()
