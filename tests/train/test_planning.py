import math

import pytest

from minseg.config import ConfigError, MinsegConfig, validate_config
from minseg.train.config import MemberSettings, ScheduleSettings
from minseg.train.ensemble import ResourceError, format_members_table, plan_concurrency, MemberResult, preflight
from minseg.train.loop import learning_rate


def member(name, workers=1, cpus=0.25, gpus=0.0):
    return MemberSettings(name=name, model="unet", stages=[{"epochs": 1, "batch_size": 2 * workers}],
                          scaling={"workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus})


def test_plan_concurrency_fits_largest_members_first():
    members = [member("a", 2), member("b"), member("c")]  # needs 0.5, 0.25, 0.25
    assert plan_concurrency(members, cpus=2, gpus=0, data_cpus=0.5, requested=None) == 3
    assert plan_concurrency(members, cpus=1.25, gpus=0, data_cpus=0.5, requested=None) == 2
    assert plan_concurrency(members, cpus=2, gpus=0, data_cpus=0.5, requested=1) == 1
    # k-fold: every fold of a member is a trial; they run side by side when the cluster holds them
    assert plan_concurrency([member("b")], cpus=2, gpus=0, data_cpus=0.5, requested=None, trials_per_member=5) == 5
    assert plan_concurrency([member("b")], cpus=1.25, gpus=0, data_cpus=0.5, requested=None, trials_per_member=5) == 3
    assert plan_concurrency(members, cpus=2, gpus=0, data_cpus=0.5, requested=None, trials_per_member=2) == 4
    with pytest.raises(ResourceError, match=r"member 'g' needs 0.0002 CPUs \(2 workers x 0.0001\) and 2 GPUs"):
        plan_concurrency([member("g", 2, 0.0001, 1.0)], cpus=8, gpus=1, data_cpus=0.5, requested=None)


def test_one_worker_of_a_member_must_fit_on_one_node():
    """Ray Train places each worker on one node: a cluster's totals can hold a member whose workers no node can."""
    gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    members = [member("wide", 1, 12.0, 1.0)]  # 24 CPUs in all, but never 12 on one node
    assert plan_concurrency(members, cpus=24, gpus=2, data_cpus=0.5, requested=None) == 1  # the totals alone pass
    with pytest.raises(ResourceError) as refused:
        plan_concurrency(members, cpus=16, gpus=2, data_cpus=0.5, requested=None, nodes=gpu_nodes)
    assert str(refused.value).startswith("member 'wide': one worker of training.members[].scaling.cpus_per_worker "
                                         "12 CPUs and gpus_per_worker 1 GPUs must fit on one node; the cluster has 16 "
                                         "CPUs and 2 GPUs (2 node(s), at most 8 CPUs and 1 GPUs on one)")
    with pytest.raises(ResourceError, match=r"member 'wide': .*scaling\.cpus_per_worker 12 CPUs"):
        plan_concurrency([member("wide", 1, 12.0)], cpus=16, gpus=2, data_cpus=0.5, requested=None, nodes=gpu_nodes)
    mixed = [{"CPU": 16.0}, {"CPU": 4.0, "GPU": 1.0}]  # the most CPUs and the most GPUs are on different nodes
    with pytest.raises(ResourceError, match=r"\(2 node\(s\), at most 16 CPUs and 1 GPUs on one\)"):
        plan_concurrency([member("wide", 1, 20.0)], cpus=20, gpus=1, data_cpus=0, requested=None, nodes=mixed)
    # the same GPUs as two workers of one each (data-parallel across the nodes): planned
    assert plan_concurrency([member("ddp", 2, 1.0, 1.0)], cpus=16, gpus=2, data_cpus=0.5, requested=None,
                            nodes=gpu_nodes) == 1


def test_a_worker_trains_on_one_gpu_of_its_own():
    """The loop trains on one device: a second GPU per worker would idle; and NCCL refuses two data-parallel ranks
    on one GPU, where Ray may place fractional shares of one member's workers."""
    with pytest.raises(ValueError, match="2: a worker trains on one GPU, .* workers: N \\(data-parallel\\) with "
                                         "gpus_per_worker: 1"):
        member("two-gpus", 1, 1.0, 2.0)
    with pytest.raises(ValueError, match="gpus_per_worker 0.5 with 2 workers: the data-parallel workers of one member "
                                         "need a GPU each"):
        member("halves", 2, 1.0, 0.5)
    assert member("quarter", 1, 1.0, 0.25).scaling.gpus_per_worker == 0.25  # members share GPUs, one worker each
    assert member("ddp", 2, 1.0, 1.0).scaling.workers == 2


def test_cosine_schedule_with_warmup_and_step_schedule():
    cosine = ScheduleSettings(name="cosine", min_lr=1e-6, warmup_steps=10)
    assert learning_rate(cosine, 1e-4, 0, 110, 0) == pytest.approx(1e-5)
    assert learning_rate(cosine, 1e-4, 10, 110, 0) == pytest.approx(1e-4)
    assert learning_rate(cosine, 1e-4, 60, 110, 0) == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5)
    assert learning_rate(cosine, 1e-4, 110, 110, 0) == pytest.approx(1e-6)
    step = ScheduleSettings(name="step", step_epochs=30, gamma=0.6)
    assert learning_rate(step, 0.02, 0, 1, 29) == pytest.approx(0.02)
    assert learning_rate(step, 0.02, 0, 1, 65) == pytest.approx(0.02 * 0.36)
    by_steps = ScheduleSettings(name="step", step_steps=800, gamma=0.96)  # the microplastic paper
    assert learning_rate(by_steps, 1e-3, 799, 10_000, 0) == pytest.approx(1e-3)
    assert learning_rate(by_steps, 1e-3, 1600, 10_000, 0) == pytest.approx(1e-3 * 0.96**2)


def test_defaults_merge_and_member_errors():
    config = validate_config({"training": {
        "defaults": {"stages": [{"epochs": 2}], "loss": {"name": "ce", "focal_gamma": 3.0}},
        "members": [{"name": "a", "model": "unet", "loss": {"name": "focal"}}]}}, MinsegConfig)
    m = config.training.members[0]
    assert m.loss.name.value == "focal" and m.loss.focal_gamma == 3.0 and m.stages[0].epochs == 2
    with pytest.raises(ConfigError, match=r"training.members\[0\].loss.name: .*'ce', 'dice'"):
        validate_config({"training": {"members": [{"name": "a", "model": "unet", "stages": [{"epochs": 1}],
                                                   "loss": {"name": "dicey"}}]}}, MinsegConfig)
    with pytest.raises(ConfigError, match=r"member names must be unique \(whatever their case\), repeated: a$"):
        validate_config({"training": {"defaults": {"model": "unet", "stages": [{"epochs": 1}]},
                                      "members": [{"name": "a"}, {"name": "a"}]}}, MinsegConfig)
    # one folder where file names ignore case (macOS, Windows): the second member would train over the first
    with pytest.raises(ConfigError, match=r"repeated: UNet-B / unet-b$"):
        validate_config({"training": {"defaults": {"model": "unet", "stages": [{"epochs": 1}]},
                                      "members": [{"name": "UNet-B"}, {"name": "x"}, {"name": "unet-b"}]}},
                        MinsegConfig)
    with pytest.raises(ValueError, match="unknown member\\(s\\) zz"):
        config.training.select(["zz"])
    # a member's own augmentation: the keys it sets replace the data's, for it alone; validated like the data's
    config = validate_config({"data": {"sources": [{"uri": "x"}], "augmentation": {"mode": "shift_rotate"}},
                              "training": {"defaults": {"model": "unet", "stages": [{"epochs": 1}]}, "members": [
                                  {"name": "a"}, {"name": "b", "augmentation": {"exposure": 0.2}},
                                  {"name": "c", "augmentation": {"mode": "none", "colour": 0.1}}]}}, MinsegConfig)
    data = config.data.augmentation
    a, b, c = (m.training_augmentation(data) for m in config.training.members)
    assert a == data
    assert (b.mode.value, b.exposure, b.colour, b.rotate_degrees) == ("shift_rotate", 0.2, 0.0, 45.0)
    assert (c.mode.value, c.exposure, c.colour) == ("none", 0.0, 0.1)
    with pytest.raises(ConfigError, match=r"training.members\[0\].augmentation.exposure"):
        validate_config({"training": {"members": [{"name": "a", "model": "unet", "stages": [{"epochs": 1}],
                                                   "augmentation": {"exposure": 1.5}}]}}, MinsegConfig)


def test_the_checkpoint_metric_is_a_known_metric_kept_the_right_way_up():
    """``val_loss`` with the default ``max`` kept a member's worst epoch; a typo or an unknown class failed every
    member after its first epoch, inside Ray. The mode now follows the metric, a contradiction is refused, and
    the key is checked against the run's classes before any worker starts."""
    stages = [{"epochs": 1}]
    assert MemberSettings(name="a", model="unet", stages=stages).checkpoint_mode == "max"
    assert MemberSettings(name="a", model="unet", stages=stages, checkpoint_metric="val_loss").checkpoint_mode == "min"
    for metric, mode in (("val_loss", "max"), ("iou:pyrite", "min"), ("miou", "min")):
        with pytest.raises(ValueError, match=f"checkpoint_mode {mode} would keep the worst epoch"):
            MemberSettings(name="a", model="unet", stages=stages, checkpoint_metric=metric, checkpoint_mode=mode)
    classes = ["resin", "pyrite", "gangue"]
    for metric in ("iou:pyrite", "val_loss", "recall_weighted_f1", "stage"):
        assert preflight(MemberSettings(name="a", model="unet", stages=stages, checkpoint_metric=metric), 3, 3,
                         class_names=classes) is None
    for metric, says in (("iou:chalcopyrite", "unknown class 'chalcopyrite' in 'iou:chalcopyrite'; classes: resin"),
                         ("mean_iou", "unknown metric 'mean_iou'; one of miou,"),
                         ("dice:pyrite", "unknown per-class metric 'dice'")):
        problem = preflight(MemberSettings(name="a", model="unet", stages=stages, checkpoint_metric=metric), 3, 3,
                            class_names=classes)
        assert problem.startswith("checkpoint_metric: ") and says in problem


def test_resuming_a_loss_member_recorded_with_the_old_default_mode_says_why():
    """Before 2026-12-05 checkpoint_mode defaulted to max for a loss too: the record says max, the member's best
    checkpoint is its worst epoch, and the mode cannot be set back (refused now): --resume says to retrain."""
    from minseg.data.config import AugmentSettings
    from minseg.train.ensemble import changed_settings

    member = MemberSettings(name="a", model="unet", stages=[{"epochs": 1}], checkpoint_metric="val_loss", seed=1)
    recorded = {**member.model_dump(mode="json"), "checkpoint_mode": "max"}
    (difference,) = changed_settings(recorded, member, 0, AugmentSettings())
    assert difference == ('checkpoint_mode: "max" -> "min" (before 2026-12-05 a loss kept its worst epoch as best: '
                          "train the member again)")
    assert changed_settings({**recorded, "checkpoint_mode": "min"}, member, 0, AugmentSettings()) == []


def test_preflight_reports_bad_options_and_table_formats():
    assert preflight(member("ok"), 3, 3) is None
    bad = MemberSettings(name="x", model="res_unet", model_options={"activation": "tanh"}, stages=[{"epochs": 1}])
    assert "tanh" in preflight(bad, 3, 3)
    text = format_members_table([MemberResult("x", "unet", "failed", error="boom"),
                                 MemberResult("y", "unet", "done", best_value=0.5, best_epoch=2, epochs=2,
                                              best_checkpoint="/c")])
    assert "boom" in text and "0.5000" in text and not math.isnan(0.0)
    # long member names and metrics keep the columns aligned: every row's status starts under the header's
    text = format_members_table([MemberResult("unet-median-frequency-weights", "unet", "done",
                                              metric="recall_weighted_f1", best_value=0.5, epochs=2),
                                 MemberResult("a", "half_unet", "failed", metric="miou", error="boom")])
    header, _, *rows = text.splitlines()
    rows, note = rows[:2], rows[2]
    column = header.index("status")
    assert [row[column:column + 6] for row in rows] == ["done  ", "failed"]
    assert header.index("best") + len("best") == rows[0].index("0.5000") + len("0.5000")  # right-aligned under it
    # the note says training's score is not evaluate's (the demo's two orders of its members puzzled a newcomer)
    assert note.startswith("best: the metric on validation at the epoch kept, as training scores it")
    # trained without validation (prospect windows): the last epoch, its checkpoint, said so (was: miou, dashes,
    # no checkpoint)
    text = format_members_table([MemberResult("m", "mfaf", "done", metric="miou", epochs=8, last_checkpoint="/l8")])
    header, _, row, note = text.splitlines()
    assert row.split()[3:] == ["last", "epoch", "-", "-", "8", "8", "0.0", "/l8"]
    assert note.startswith("last epoch: no validation score to choose an epoch by (no validation split")


def test_ruel_paper_config_is_table_2():
    from pathlib import Path

    from minseg.config import load_config
    from minseg.enums import ScheduleSpan

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "ruel_paper.yaml", MinsegConfig)
    members = {m.name: m for m in config.training.members}
    assert list(members)[:2] == ["b0", "b1"] and all(members[b].model == "vgg16_unet" for b in ("b0", "b1"))
    learners = [m for m in members.values() if m.name.startswith("learner")]
    grid = {(m.loss.name.value, m.model_options["stn"], tuple(s.epochs for s in m.stages)) for m in learners}
    assert len(learners) == 12 and grid == {(loss, stn, epochs) for loss in ("ce", "ce_dice", "ce_focal")
                                            for stn in (False, True) for epochs in ((40, 80), (50, 100))}

    def row(name):
        m = members[name]
        return m.model_options["stn"], m.loss.name.value, tuple(s.epochs for s in m.stages)

    # the rows of the paper's Table 2 a reader checked: 05, 08 (its best learner) and 11
    assert row("learner05") == (False, "ce_focal", (40, 80))
    assert row("learner08") == (True, "ce_focal", (50, 100))
    assert row("learner11") == (False, "ce_focal", (50, 100))
    assert all(m.stages[0].freeze_encoder and m.stages[0].batch_size == 32 and m.stages[1].batch_size == 16
               for m in learners)
    assert all(m.model_options["activation"] == "leaky_relu" for m in learners)
    assert config.training.defaults["optimizer"]["lr"] == 1e-4 and learners[0].schedule.min_lr == 1e-6
    # pretrained encoders on every member, one cosine over both stages
    assert all(m.init is not None and m.init.uri.endswith(".pth") for m in members.values())
    assert all(m.schedule.span is ScheduleSpan.RUN for m in members.values())
    assert config.evaluation.voters == [m.name for m in learners] and "b0" not in config.evaluation.voters
    assert (config.evaluation.k_min, config.evaluation.k_max) == (3, 12)


def test_whole_run_schedule_refuses_a_stage_learning_rate():
    from minseg.config import validate_config
    from minseg.errors import InputError

    member = {"name": "m", "model": "unet", "schedule": {"span": "run"},
              "stages": [{"epochs": 1, "freeze_encoder": True}, {"epochs": 1, "lr": 0.1}]}
    with pytest.raises(InputError, match=r"stages\[1\].lr cannot be set with schedule.span 'run'"):
        validate_config({"training": {"members": [member]}}, MinsegConfig)
    member["init"] = {"uri": "weights/resnet50.onnx"}
    with pytest.raises(InputError, match="weights must be .pt, .pth"):
        validate_config({"training": {"members": [member]}}, MinsegConfig)


def test_ruel_paper_members_pack_onto_fewer_gpus():
    """The fourteen members of the paper's recipe on four GPUs (docs/training.md, "Packing members onto
    GPUs"): a quarter of a GPU each runs all of them at once; whole GPUs run four at a time."""
    from pathlib import Path

    from minseg.config import load_config

    path = Path(__file__).resolve().parents[2] / "configs" / "ruel_paper.yaml"
    packed = load_config(path, MinsegConfig, overrides={"training.defaults.scaling.gpus_per_worker": "0.25",
                                                        "training.defaults.scaling.cpus_per_worker": "2"})
    members = packed.training.members
    assert len(members) == 14 and {m.scaling.gpus_per_worker for m in members} == {0.25}
    assert plan_concurrency(members, cpus=32, gpus=4, data_cpus=2, requested=None) == 14
    whole = load_config(path, MinsegConfig)
    assert plan_concurrency(whole.training.members, cpus=64, gpus=4, data_cpus=2, requested=None) == 4
    # a share that can never start is refused up front, not left pending
    with pytest.raises(ResourceError, match="GPUs"):
        plan_concurrency(load_config(path, MinsegConfig, overrides={
            "training.defaults.scaling.workers": "2"}).training.members, cpus=64, gpus=1, data_cpus=2, requested=None)


def test_losses_are_read_back_in_windows_and_a_diverged_one_names_its_step():
    """On a GPU the loop reads losses back 16 steps at once (a read-back per step stalls the queue); the sum is the
    per-step one, and a NaN or inf anywhere in a window names its own step, not the window's last."""
    import torch

    from minseg.train.loop import DivergedError, LossWindow, loss_readback_every

    window = LossWindow("m", epoch=2, every=3)
    for step, (loss, tiles) in enumerate([(0.5, 4), (0.25, 4), (1.0, 2), (2.0, 1)]):
        window.add(torch.tensor(loss), tiles, step)
    assert window.total == 0.5 * 4 + 0.25 * 4 + 1.0 * 2  # the fourth waits for its window
    window.settle()
    assert window.total == 5.0 + 2.0
    window = LossWindow("m", epoch=2, every=3)
    window.add(torch.tensor(0.5), 4, 10)
    window.add(torch.tensor(float("inf")), 4, 11)
    with pytest.raises(DivergedError, match="member m: loss became inf at epoch 2, step 11; lower the learning rate"):
        window.add(torch.tensor(float("nan")), 4, 12)
    assert loss_readback_every(torch.device("cpu")) == 1 and loss_readback_every(torch.device("cuda")) == 16
    every_step = LossWindow("m", epoch=1, every=1)  # CPU: refused before the step is taken
    with pytest.raises(DivergedError, match="loss became nan at epoch 1, step 0"):
        every_step.add(torch.tensor(float("nan"), dtype=torch.bfloat16), 4, 0)


def test_sync_batchnorm_is_for_gpu_workers_and_keeps_checkpoints_loadable():
    """SyncBatchNorm (torch: GPUs only) is refused for CPU workers; the converted model has the BatchNorm model's
    parameter and buffer names, so its checkpoints load into the plain model evaluate and segment build, and the
    frozen-encoder rule (BatchNorm statistics kept) still finds its layers."""
    import torch

    from minseg.models import build_model

    def synced_member(gpus):
        return MemberSettings(name="m", model="unet", stages=[{"epochs": 1, "batch_size": 4}],
                              scaling={"workers": 2, "gpus_per_worker": gpus, "sync_batchnorm": True})

    with pytest.raises(ValueError, match="sync_batchnorm needs GPU workers"):
        synced_member(0)
    assert synced_member(1).scaling.sync_batchnorm
    from types import SimpleNamespace

    from minseg.train.loop import build_member_model

    inputs = SimpleNamespace(num_classes=3, in_channels=3)
    settings = synced_member(1).model_copy(update={"model": "res_unet", "model_options": {"width": 0.125}})
    plain = build_model("res_unet", num_classes=3, width=0.125)
    synced = build_member_model(settings, inputs, world=2)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    alone = build_member_model(settings, inputs, world=1)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in alone.modules())
    plain.load_state_dict(synced.state_dict())  # strict: every name and shape
    synced.freeze_encoder()
    synced.train()
    frozen = [m for m in synced.encoder.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert frozen and not any(m.training for m in frozen)
