"""Real Ray Train runs on 2 CPU cores with tiny members."""

import io
import json
import os
import time

import pytest
import torch

from minseg.enums import Task
from minseg.io.storage import Storage
from minseg.train.checkpoint import load_checkpoint, read_pointer
from minseg.train.ensemble import ResourceError, train_ensemble
from tests.train.conftest import TINY, BackgroundTraining, training_config

MEMBERS = ["resunet", "vgg", "halfunet", "diverges", "typo"]  # the session's run (tests/conftest.py)
FINISHED = ("resunet", "vgg", "halfunet")


@pytest.fixture(scope="module")
def ensemble_run(trained_ensemble):
    return trained_ensemble


def test_members_table(ensemble_run):
    _, results, run = ensemble_run
    assert [results[m].status for m in MEMBERS] == ["done", "done", "done", "failed", "failed"]
    # DivergedError, in its worker: its message alone (was "WorkerGroupError: minseg.train.loop.DivergedError: ...")
    assert results["diverges"].error.startswith("member diverges: loss became nan at epoch 1, step ")
    assert "lower the learning rate or enable grad_clip_norm" in results["diverges"].error
    assert results["typo"].error.startswith("not started:") and "widht" in results["typo"].error
    table = json.loads((run / "members.json").read_text())["members"]
    assert [row["member"] for row in table] == MEMBERS
    csv_lines = (run / "members.csv").read_text().splitlines()
    assert csv_lines[0].startswith("member,fold,model,status") and len(csv_lines) == 6
    for name in FINISHED:
        assert results[name].epochs == 3 and results[name].best_epoch in (1, 2, 3)
    # three tiny epochs teach the STN Res-UNet and the VGG U-Net nothing (each labels every validation pixel one
    # class: a rare one, background); the Half U-Net learns (learning_problem)
    for name in ("resunet", "vgg"):
        assert "its predictions on validation say (almost) nothing about the true classes" in results[name].warning
    assert results["halfunet"].warning is None
    # it is in members.json / members.csv and under the member's row of the printed table (learned_nothing also
    # logs it: train.member.learned_nothing)
    assert [row["warning"] for row in table] == [results[m].warning for m in MEMBERS]
    from minseg.train.ensemble import format_members_table

    printed = format_members_table([results[m] for m in MEMBERS]).splitlines()
    rows = [i for i, line in enumerate(printed) if line.startswith(("resunet ", "vgg "))]
    assert all(printed[i + 1].strip().startswith("warning: its predictions on validation") for i in rows)
    assert csv_lines[0].endswith(",error,warning")


def test_members_ran_concurrently(ensemble_run):
    _, results, _ = ensemble_run
    done = [results[n] for n in FINISHED]
    assert max(r.started_at for r in done) < min(r.finished_at for r in done)


def test_loss_decreases_and_curves_saved(ensemble_run):
    _, results, run = ensemble_run
    for name in FINISHED:
        history = load_checkpoint_state(run, name)["history"]
        losses = [row["train_loss"] for row in history]
        assert min(losses[1:]) < losses[0], f"{name}: {losses}"
        assert all("val_loss" in row and "miou" in row for row in history)
        # the loss of a model that gives every class the same probability, beside each loss (learning_problem)
        assert all(row["val_loss_uniform"] > 0 and row["train_loss_uniform"] > 0 for row in history)
        # a flagged member's chosen checkpoint scores no better than labelling every pixel the commonest class
        metrics = json.loads(open(os.path.join(results[name].best_checkpoint, "metrics.json")).read())
        support = [n for n in metrics["support"] if n]
        commonest = max(support) / sum(support) / len(support)  # its IoU, over the classes validation shows
        assert (metrics["miou"] <= commonest + 0.01) == (results[name].warning is not None), (name, metrics["miou"])
        assert (run / "members" / name / "history.csv").exists()
        assert (run / "members" / name / "curves.png").stat().st_size > 1000


def test_a_data_parallel_member_scores_and_trains_on_every_tile(ensemble_run):
    """The VGG U-Net on two workers is scored on the same validation pixels as the one-worker Res-UNet (not twice
    them, not a share), and trains on every tile each epoch. The fixture's counts (16 training, 18 validation tiles)
    divide by two: the odd counts Ray Train's equal split cut short are tests/train/test_ingest.py's."""
    _, results, run = ensemble_run

    def support(name):
        return sum(json.loads(open(os.path.join(results[name].best_checkpoint, "metrics.json")).read())["support"])

    assert support("vgg") == support("resunet") > 0
    tiles = {name: {row["train_tiles"] for row in load_checkpoint_state(run, name)["history"]}
             for name in ("vgg", "resunet")}
    (one,) = tiles["resunet"]
    assert tiles["vgg"] == {one + one % 2}  # an odd count would give its first tile twice


def load_checkpoint_state(run, member):
    from minseg.io.storage import Storage

    return load_checkpoint(Storage(), str(run), member).state


def test_best_and_last_checkpoints(ensemble_run):
    config, results, run = ensemble_run
    from minseg.io.storage import Storage
    from minseg.models import build_model

    storage = Storage()
    for name in FINISHED:
        last = read_pointer(storage, str(run), name, "last")
        best = read_pointer(storage, str(run), name, "best")
        assert last["epoch"] == 3 and best["uri"] == results[name].best_checkpoint
        for pointer in (last, best):
            folder = pointer["uri"]
            for part in ("model.pt", "state.json", "member.json", "classes.json", "metrics.json"):
                assert os.path.exists(os.path.join(folder, part)), f"{folder}/{part}"
        member = json.loads(open(os.path.join(best["uri"], "member.json")).read())
        if name == "halfunet":  # bagged: its sample of the 4 training images is recorded
            assert sum(member["bagging_sample"].values()) == 4 and member["bagging"]["replacement"] is True
        else:
            assert "bagging_sample" not in member and member["bagging"] is None
        assert "class_repeat_factors" not in member  # no data.oversampling
        model = build_model(member["model"], num_classes=9, **member["model_options"])
        state = torch.load(os.path.join(best["uri"], "model.pt"), weights_only=True)
        model.load_state_dict(state)
        metrics = json.loads(open(os.path.join(best["uri"], "metrics.json")).read())
        assert len(metrics["normalization"]["mean"]) == 3 and len(metrics["iou"]) == 9
        # every key an epoch records is one a checkpoint_metric may name (train.ensemble.EPOCH_METRICS + scores)
        from minseg.enums import SCORE_METRICS
        from minseg.train.ensemble import EPOCH_METRICS, UNIFORM_LOSSES

        state = json.loads(open(os.path.join(last["uri"], "state.json")).read())
        recorded = {k for row in state["history"] for k in row} - {"init"} - set(UNIFORM_LOSSES)
        assert recorded <= set(EPOCH_METRICS) | set(SCORE_METRICS)
        # only the checkpoints the pointers name are kept
        kept = sorted(p.name for p in (run / "members" / name / "checkpoints").iterdir() if p.is_dir())
        assert kept == sorted({last["dir"], best["dir"]})
    classes = json.loads((run / "data" / "classes.json").read_text())
    assert [c["name"] for c in classes["classes"]][:2] == ["background", "pyrite"]
    assert (run / "data" / "dataset_stats.json").exists() and (run / "data" / "quarantine.csv").exists()


def test_rerun_needs_resume_and_skips_finished(ensemble_run):
    config, results, run = ensemble_run
    before = json.loads((run / "members.json").read_text())["members"]
    with pytest.raises(ValueError, match="already has checkpoints for .*pass --resume"):
        train_ensemble(config, ["halfunet"])
    stats = run / "data" / "dataset_stats.json"
    prepared_at = stats.stat().st_mtime_ns
    again = train_ensemble(config, ["halfunet"], resume=True)
    assert again[0].status == "done" and again[0].finished_at == results["halfunet"].finished_at
    assert stats.stat().st_mtime_ns == prepared_at  # nothing left to train: the data was not prepared again
    # training a subset keeps the other members' rows as they were: evaluation reads the table
    assert json.loads((run / "members.json").read_text())["members"] == before
    assert [row["member"] for row in before] == MEMBERS and len((run / "members.csv").read_text().splitlines()) == 6
    # a member taken out of the config leaves the table (its checkpoints stay); put back, it is listed again
    fewer = config.model_copy(deep=True)
    fewer.training.members = [m for m in fewer.training.members if m.name != "typo"]
    train_ensemble(fewer, ["halfunet"], resume=True)
    assert [row["member"] for row in json.loads((run / "members.json").read_text())["members"]] == MEMBERS[:-1]
    train_ensemble(config, ["typo"], resume=True)  # refused before starting, as the first time
    assert json.loads((run / "members.json").read_text())["members"] == before


def test_a_copied_run_reads_its_own_checkpoints_and_damaged_records_are_named(ensemble_run, tmp_path):
    """Records hold the absolute URIs of where a run was written: a copy (cluster storage to a laptop, another
    name) evaluated, analysed or resumed the original's weights, or broke when it moved. Readers now find each
    checkpoint under the run they are given. A damaged record is an error naming the file, not a traceback."""
    import shutil

    from minseg.analysis.kernels import _from_run
    from minseg.ensemble.evaluate import discover_members
    from minseg.errors import InputError

    config, _, run = ensemble_run
    copy = tmp_path / "ens"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("ray"))
    storage = Storage()
    recorded = json.loads((copy / "members.json").read_text())["members"]
    assert all(row["best_checkpoint"].startswith(str(run)) for row in recorded if row["status"] == "done")
    for name in FINISHED:
        assert read_pointer(storage, str(copy), name, "best")["uri"].startswith(f"{copy}/members/{name}/")
    refs = discover_members(storage, str(copy), None)
    assert sorted(r.name for r in refs) == sorted(FINISHED)
    assert all(r.checkpoint.startswith(f"{copy}/members/{r.name}/checkpoints/epoch-") for r in refs)
    assert all(m.checkpoint.startswith(f"{copy}/members/") for m in _from_run(str(copy), storage))

    last = read_pointer(storage, str(copy), "halfunet")["uri"]
    (tmp_path / "ens" / last[len(str(copy)) + 1:] / "model.pt").write_bytes(b"")  # a full disk, a killed copy
    with pytest.raises(InputError, match=r"halfunet/checkpoints/epoch-\d+/model.pt: not a readable checkpoint file "
                                         r"\(EOFError.*0 bytes\)"):
        load_checkpoint(storage, str(copy), "halfunet")
    moved = config.model_copy(deep=True)
    moved.run.output_uri = str(tmp_path)
    # cut short, or written over by another command's record (a select --out once did): readers name the file,
    # and train --resume, which their message points to, rebuilds the table from each trial's result.json
    for damaged, problem in (('{"members": [', "not valid JSON"), ('{"a": 1}', "not a members table"),
                             ("[]", "not a members table"), ('{"members": [{"x": 1}]}', "not a members table"),
                             ('{"members": [{"member": "halfunet", "status": "done"}]}', "not a members table"),
                             ('{"members": [{"member": "halfunet", "model": "half_unet", "status": "weird"}]}',
                              "not a members table")):
        (copy / "members.json").write_text(damaged)
        with pytest.raises(InputError, match=rf"ens/members.json: {problem}"):
            discover_members(storage, str(copy), None)
        with pytest.raises(InputError, match=rf"ens/members.json: {problem}"):
            _from_run(str(copy), storage)
        (again,) = train_ensemble(moved, ["halfunet"], resume=True)  # finished: nothing trained
        assert again.status == "done"
        rebuilt = json.loads((copy / "members.json").read_text())["members"]
        assert {row["member"] for row in rebuilt if row["status"] == "done"} == set(FINISHED)


def test_fold_numbers_survive_the_members_table_round_trip(tmp_path):
    """members.json numbers folds from 1 (as the console table and the fold<k> folders); its readers count from 0.
    They read the file's numbers as their own: a --members subset of a k-fold run shifted the kept rows a fold on
    every run, and analyze kernels read fold 1's row as fold 2's folder."""
    from minseg.enums import MemberStatus
    from minseg.io.runs import read_members_table
    from minseg.train.ensemble import MemberResult, _recorded_table, write_members_table

    rows = [MemberResult("m", "unet", MemberStatus.DONE, fold=fold) for fold in (0, 1)] + \
        [MemberResult("m", "unet", MemberStatus.FAILED)]
    write_members_table(rows, str(tmp_path), Storage())
    def written():
        return [row["fold"] for row in json.loads((tmp_path / "members.json").read_text())["members"]]

    assert written() == [1, 2, None]
    assert [row["fold"] for row in read_members_table(Storage(), str(tmp_path))] == [0, 1, None]
    for _ in range(2):  # what a subset run does with the rows it keeps
        write_members_table(_recorded_table(Storage(), str(tmp_path)), str(tmp_path), Storage())
        assert written() == [1, 2, None]


def test_a_checkpoint_metric_of_a_class_validation_lacks_is_refused(ensemble_run):
    """``checkpoint_metric: iou:<class>`` where the validation split has none of it: undefined while the member
    predicts none, 0 once it predicts a stray pixel; "best" would be the epoch that hallucinates it. Refused before
    training, as choosing an ensemble by such a key is."""
    from minseg.errors import InputError

    config, _, run = ensemble_run
    stats = json.loads((run / "data" / "dataset_stats.json").read_text())["stats"]["val"]
    absent = next(name for name, c in stats["classes"].items() if c["pixels"] == 0)
    picky = config.model_copy(deep=True)
    picky.training.members = [*picky.training.members, picky.training.members[2].model_copy(
        update={"name": "picky", "checkpoint_metric": f"iou:{absent}"})]
    with pytest.raises(InputError, match=rf"checkpoint_metric of picky: iou:{absent}: class '{absent}' has no true "
                                         r"pixels on the validation split, which chooses, so .* cannot tell the "
                                         r"epochs apart"):
        train_ensemble(picky, ["picky"])
    assert not (run / "members" / "picky").exists()


def test_resuming_members_trained_with_other_settings_is_refused(ensemble_run, tmp_path, capsys):
    """--resume keeps finished members and continues the others: one whose settings changed since its checkpoints
    were written would be kept (or continued) as if the config had trained it. How a member runs may change."""
    import yaml

    from minseg.cli import main
    from minseg.enums import LossName
    from minseg.errors import InputError

    config, results, run = ensemble_run
    table = (run / "members.json").read_text()

    def edited(name: str, **update):
        copy = config.model_copy(deep=True)
        copy.training.members = [m.model_copy(update=update) if m.name == name else m for m in copy.training.members]
        return copy

    halfunet = next(m for m in config.training.members if m.name == "halfunet")
    longer = [halfunet.stages[0], halfunet.stages[1].model_copy(update={"epochs": 4})]
    with pytest.raises(InputError, match=r"halfunet: stages\[1\]\.epochs: 2 -> 4 \(its checkpoints: "
                                         r"\S+/members/halfunet\)\. Put those settings back, .*delete a member's"):
        train_ensemble(edited("halfunet", stages=longer), ["halfunet"], resume=True)
    with pytest.raises(InputError, match=r"halfunet: loss\.name: \"ce_focal\" -> \"ce\"; bagging: "
                                         r"\{.*\} -> null \("):
        train_ensemble(edited("halfunet", loss=halfunet.loss.model_copy(update={"name": LossName.CE}), bagging=None),
                       ["halfunet"], resume=True)
    with pytest.raises(InputError, match=r"resunet: model_options\.stn: true -> null \("):  # an option taken out
        train_ensemble(edited("resunet", model_options={**TINY}), ["resunet"], resume=True)
    # what a member trains with counts, wherever it is set: the data's augmentation under the member's own keys
    jittered = config.model_copy(deep=True)
    jittered.data.augmentation = jittered.data.augmentation.model_copy(update={"exposure": 0.2})
    with pytest.raises(InputError, match=r"vgg: augmentation_used\.exposure: 0\.0 -> 0\.2 \("):
        train_ensemble(jittered, ["vgg"], resume=True)
    # the seed a member takes from run.seed is its own: every such member with checkpoints is named, from the CLI too
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    assert main(["train", "-c", str(path), "--resume", "--set", "run.seed=5"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(f"{name}: seed: 0 -> 5 (" in err for name in FINISHED), err
    # more workers and restarts on a resubmitted job: the finished member is kept, nothing trained
    moved = edited("halfunet", scaling=halfunet.scaling.model_copy(update={"workers": 2}), max_failures=3)
    (again,) = train_ensemble(moved, ["halfunet"], resume=True)
    assert again.finished_at == results["halfunet"].finished_at and (run / "members.json").read_text() == table


def test_resuming_members_on_another_split_is_refused(ensemble_run):
    """Every member has finished; --resume with other data settings (here the split's seed: other images in each
    part) would keep them as if trained on this split, some of whose validation and test images they trained on.
    The data is prepared (the finished run is not simply reused) and the members are refused, the run's data reports
    left as they were."""
    from minseg.errors import InputError

    config, _, run = ensemble_run
    splits = (run / "data" / "splits.json").read_text()
    reseeded = config.model_copy(deep=True)
    reseeded.data.split = reseeded.data.split.model_copy(update={"seed": 7})  # was run.seed, 0
    with pytest.raises(InputError, match=r"trained on other data than this run gives them \(changed since the run's "
                                         r"data was prepared: data.split.seed: (null|0) -> 7\): "
                                         r"\S+/members/resunet, \S+/members/vgg, "
                                         r"\S+/members/halfunet\. Write the run elsewhere"):
        train_ensemble(reseeded, list(FINISHED), resume=True)
    assert (run / "data" / "splits.json").read_text() == splits
    # a new member trained alone on the other split would have rewritten splits.json under the others
    extra = reseeded.training.members[2].model_copy(update={"name": "extra"})
    reseeded.training.members = [*reseeded.training.members, extra]
    with pytest.raises(InputError, match=r"members trained now would sit beside members of this run trained on "
                                         r"other data \(changed since the run's data was prepared: "
                                         r"data.split.seed: (null|0) -> 7\): \S+/members/resunet"):
        train_ensemble(reseeded, ["extra"])
    assert (run / "data" / "splits.json").read_text() == splits and not (run / "members" / "extra").exists()
    # data.classes reordered (the same images, the same split): class id 1 would be another mineral for the kept
    # members and a mix of both for a continued one
    swapped = config.model_copy(deep=True)
    specs = swapped.data.classes.classes
    swapped.data.classes.classes = [specs[0], specs[2], specs[1], *specs[3:]]
    with pytest.raises(InputError, match=rf"data.classes differs from the class map these members trained with "
                                         rf"\(class id 1 was '{specs[1].name}' \(mask codes \[1\]\) when it trained, "
                                         rf"'{specs[2].name}' \(mask codes \[2\]\) now\): \S+/members/resunet"):
        train_ensemble(swapped, list(FINISHED), resume=True)
    assert (run / "data" / "splits.json").read_text() == splits
    # members trained in parts (--members) left no record of the data settings until 2026-12-07: --resume with another
    # split then took every member as finished on it ("the data is not prepared again"); now the data is prepared
    # and the members refused, and a subset run keeps the record too
    (run / "data" / "selection.json").unlink()
    reseeded.training.members = reseeded.training.members[:-1]
    with pytest.raises(InputError, match=r"trained on other data than this run gives them"):
        train_ensemble(reseeded, list(FINISHED), resume=True)
    (kept,) = train_ensemble(config, ["vgg"], resume=True)  # the same settings: kept, the record written again
    assert kept.status == "done" and (run / "data" / "selection.json").exists()
    (kept,) = train_ensemble(config, ["vgg"], resume=True)  # the same settings: reused, nothing prepared again
    assert kept.status == "done"


def test_resuming_on_other_data_is_refused(ensemble_run):
    """A checkpoint records the tiles an epoch held and the fold it trained on; resuming it on data that gives
    another count (the data, tiling or data.oversampling changed) would break the learning-rate schedule, on
    another fold it would be scored on its own training images: both are refused."""
    import dataclasses

    from minseg.data.config import AugmentSettings
    from minseg.errors import InputError
    from minseg.io.storage import Storage
    from minseg.models import build_model
    from minseg.train.ensemble import TrialInputs, WorkerConfig
    from minseg.train.loop import Session, start_or_resume

    config, _, run = ensemble_run
    member = next(m for m in config.training.members if m.name == "halfunet")
    state = load_checkpoint_state(run, "halfunet")
    inputs = TrialInputs(task=Task.SEGMENTATION, num_classes=9, in_channels=3, ignore_index=255, classes={},
                         classes_names=[], normalization=state["normalization"], augmentation=AugmentSettings(),
                         train_tiles=state["train_tiles"], has_val=True, shuffle_buffer=None,
                         bagging_sample=state["bagging_sample"])
    session = Session(WorkerConfig(member, Storage(), str(run), inputs, 4, 0), 0, 1, torch.device("cpu"), 0,
                      build_model("half_unet", num_classes=9, width=0.25), None,
                      torch.zeros(3), torch.ones(3), AugmentSettings(), None, None, None, None, None)
    resumed, _ = start_or_resume(session)
    assert resumed["epochs_done"] == 3 and resumed["restarts"] == 1
    other = dataclasses.replace(inputs, train_tiles=inputs.train_tiles + 5)
    session.worker = WorkerConfig(member, Storage(), str(run), other, 4, 0)
    with pytest.raises(InputError, match=rf"trained on {inputs.train_tiles} tiles an epoch, this run gives "
                                         rf"{inputs.train_tiles + 5} .*data.oversampling changed"):
        start_or_resume(session)
    # a checkpoint of a run on all the data resumed as a k-fold trial (or on another fold): scores would be
    # reported on images it trained on
    other = dataclasses.replace(inputs, fold_signature="train=a,b;val=c;test=d")
    session.worker = WorkerConfig(member, Storage(), str(run), other, 4, 0)
    with pytest.raises(InputError, match="trained on another split of the folds .* Start a new run.name"):
        start_or_resume(session)
    # the member is bagged: the same tile count from another sample (its bagging or seed changed) is refused too
    assert sum(state["bagging_sample"].values()) == 4
    other = dataclasses.replace(inputs, bagging_sample={**state["bagging_sample"], "another/image": 1})
    session.worker = WorkerConfig(member, Storage(), str(run), other, 4, 0)
    with pytest.raises(InputError, match="trained on another sample of the training data .* Start a new run.name"):
        start_or_resume(session)
    # a changed bagging.fraction changes both: the error names the sample, not the tiling
    other = dataclasses.replace(inputs, bagging_sample={**state["bagging_sample"], "another/image": 1},
                                train_tiles=inputs.train_tiles + 3)
    session.worker = WorkerConfig(member, Storage(), str(run), other, 4, 0)
    with pytest.raises(InputError, match="trained on another sample of the training data"):
        start_or_resume(session)
    # the same sample expanded into an epoch another way (a minseg that built it otherwise, same tile count)
    other = dataclasses.replace(inputs, bagging_build="2099-01-01")
    session.worker = WorkerConfig(member, Storage(), str(run), other, 4, 0)
    with pytest.raises(InputError, match=r"built from its sample another way \(recorded: none, now: "
                                         r"2099-01-01.* Start a new run.name"):
        start_or_resume(session)
    # the same tile count from other class repeat factors (recorded: none, trained without oversampling)
    other = dataclasses.replace(inputs, class_repeat_factors={"background": 1.0, "pyrite": 2.5})
    session.worker = WorkerConfig(member, Storage(), str(run), other, 4, 0)
    with pytest.raises(InputError, match=r"class repeat factors None, this run gives \{'background'"):
        start_or_resume(session)


def test_learning_problem_judges_what_the_predictions_say_about_the_truth():
    """Validation: the best uncertainty coefficient (0: one class everywhere or guessing). A member that learned the
    common classes and misses the rare ones is not flagged, although under heavy class weights its loss is above
    that of uniform predictions. No validation: the lowest training loss against uniform predictions."""
    import numpy as np

    from minseg.metrics import uncertainty_coefficient
    from minseg.train.ensemble import learning_problem

    shares = np.array([0.8, 0.1, 0.05, 0.04, 0.01]) * 1e5
    constant = np.zeros((5, 5))
    constant[:, 0] = shares  # background everywhere
    two_of_five = np.diag(shares)
    two_of_five[2:, 2:] = 0
    two_of_five[2:, 0] = shares[2:]  # the rare classes called background
    assert uncertainty_coefficient(constant) == 0.0 and uncertainty_coefficient(two_of_five) > 0.4
    assert uncertainty_coefficient(np.outer(shares, np.full(5, 0.2))) < 1e-9  # guessing
    assert np.isnan(uncertainty_coefficient(np.diag([5.0, 0, 0])))  # one true class: nothing to tell

    def rows(values, key="uncertainty_coefficient", **extra):
        return [{"epoch": i + 1, key: value, **extra} for i, value in enumerate(values)]

    assert learning_problem(rows([0.0, uncertainty_coefficient(two_of_five)], val_loss=3.0, val_loss_uniform=1.6)) \
        is None
    problem = learning_problem(rows([0.0, 0.004, float("nan")], val_loss=9.0))
    assert "uncertainty coefficient at most 0.004 (epoch 2" in problem
    # no validation: the training losses are judged against uniform predictions
    assert "no validation split" in learning_problem(rows([3.0, 2.8], "train_loss", train_loss_uniform=1.5))
    assert learning_problem(rows([3.0, 1.0], "train_loss", train_loss_uniform=1.5)) is None
    assert learning_problem([{"epoch": 1, "val_loss": 9.0, "train_loss": 9.0}]) is None  # recorded before: not judged


def test_resources_that_can_never_fit_fail_up_front(synthetic_sections, tmp_path):
    config = training_config(synthetic_sections, tmp_path, "big", [
        {"name": "greedy", "model": "unet", "model_options": {"width": 0.125}, "scaling": {"workers": 3, "cpus_per_worker": 1},
         "stages": [{"epochs": 1, "batch_size": 3}]}])
    started = time.monotonic()
    with pytest.raises(ResourceError, match="member 'greedy' needs 3 CPUs .* could never start"):
        train_ensemble(config)
    assert not (tmp_path / "big" / "data").exists()  # refused before touching the data
    assert time.monotonic() - started < 60


def test_a_member_is_running_from_its_workers_start_not_its_submission(minseg_events):
    """The driver's counts and progress bar follow what runs post to the board (loop.announce_start): a submitted
    trial is queued until its worker group starts (on a cluster short of GPUs it waits), a resumed member's
    finished epochs fill the bar, a Ray Train restart is a warning, and a trial that failed before starting was never
    running."""
    import logging

    from minseg.enums import MemberStatus
    from minseg.train.ensemble import MemberResult, _MemberProgress

    trials = [{"member": {"name": name, "stages": [{"epochs": 3}, {"epochs": 2}]}, "fold": None}
              for name in ("a", "b", "c")]
    progress = _MemberProgress(trials)

    progress.posted(1, {"started": True, "epochs_done": 2})  # b resumes at epoch 3 of 5
    progress.posted(1, {"epoch": 3, "train_loss": 0.5})
    progress.posted(0, {"started": True, "epochs_done": 0})
    progress.posted(0, {"started": True, "epochs_done": 1})  # its worker group restarted after a checkpoint
    progress.ended(2, MemberResult(member="c", model="unet", status=MemberStatus.FAILED, error="not started: x"))
    progress.ended(1, MemberResult(member="b", model="unet", status=MemberStatus.DONE))
    progress.progress.close()
    assert [(r.getMessage(), r.fields) for r in minseg_events if r.name == "minseg.train.ensemble"] == [
        ("train.member.started", {"member": "b", "running": 1, "queued": 2, "done": 0, "from_epoch": 2}),
        ("train.epoch", {"member": "b", "epoch": 3, "of": 5, "train_loss": 0.5}),
        ("train.member.started", {"member": "a", "running": 2, "queued": 1, "done": 0}),
        ("train.member.restarted", {"member": "a", "running": 2, "queued": 1, "done": 0, "from_epoch": 1}),
        ("train.member.failed", {"member": "c", "running": 2, "queued": 0, "done": 1, "reason": "not started: x"}),
        ("train.member.done", {"member": "b", "running": 1, "queued": 0, "done": 2}),
    ]
    (restarted,) = [r for r in minseg_events if r.getMessage() == "train.member.restarted"]
    assert restarted.levelno == logging.WARNING
    assert progress.progress.done == 3  # b's two finished epochs and its third


def test_killed_worker_resumes_from_checkpoint_and_ends_as_a_run_never_stopped(synthetic_sections, tmp_path,
                                                                               minseg_events):
    """SIGKILL the training worker after its first checkpoint: Ray restarts it, it resumes, and it ends with the
    weights of the same member trained in one go (its tiles cached in item order, every epoch's draws from the
    epoch's seed); the driver says it restarted and from which epoch."""
    import ray

    member = {"name": "survivor", "model": "half_unet", "model_options": {"width": 0.25}, "max_failures": 2,
              "stages": [{"epochs": 4, "batch_size": 4}]}
    (whole,) = train_ensemble(training_config(synthetic_sections, tmp_path, "whole", [member]))
    assert whole.status == "done", whole.error
    minseg_events.clear()  # the run above's lines
    training = BackgroundTraining(training_config(synthetic_sections, tmp_path, "kill", [member]), "survivor")
    training.wait_for_checkpoint()
    killed = training.kill_workers()
    (row,) = training.join(600)
    assert killed
    assert row.status == "done", row.error
    said = [(r.getMessage(), r.fields.get("from_epoch")) for r in minseg_events
            if r.name == "minseg.train.ensemble" and r.getMessage().startswith("train.member.")]
    assert said[0] == ("train.member.started", None) and said[-1][0] == "train.member.done"
    assert [event for event, _ in said[1:-1]] == ["train.member.restarted"] * len(said[1:-1]) and said[1:-1]
    assert all(epoch >= 1 for _, epoch in said[1:-1])  # from its checkpoint
    state = load_checkpoint_state(tmp_path / "kill", "survivor")
    assert state["restarts"] >= 1
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]  # resumed, not restarted from scratch
    assert ray.is_initialized()
    assert_same_weights(tmp_path / "whole", tmp_path / "kill", "survivor")


@pytest.mark.slow  # ~70 s; worker kill + resume is also covered by the two tests around it
def test_resubmitted_run_resumes_a_member_that_failed_partway(synthetic_sections, tmp_path):
    """No restarts allowed: the killed member fails after its first checkpoint; --resume finishes it."""
    member = {"name": "patient", "model": "half_unet", "model_options": {"width": 0.25}, "max_failures": 0,
              "stages": [{"epochs": 3, "batch_size": 4}]}
    config = training_config(synthetic_sections, tmp_path, "resub", [member])
    training = BackgroundTraining(config, "patient")
    training.wait_for_checkpoint()
    training.kill_workers()
    (first,) = training.join(600)
    assert first.status == "failed" and 1 <= first.epochs < 3 and first.last_checkpoint
    error = tmp_path / "resub" / "members" / "patient" / "error.txt"  # the failure's whole traceback
    assert error.read_text().startswith("Traceback")
    (second,) = train_ensemble(config, resume=True)
    assert second.status == "done" and second.epochs == 3 and second.restarts == 1
    assert not error.exists()  # finished: no earlier failure's traceback left looking current
    history = load_checkpoint_state(tmp_path / "resub", "patient")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_a_member_streamed_twice_with_one_seed_ends_with_the_same_weights(synthetic_sections, tmp_path):
    """One config and seed, trained twice at once, tiles not cached (each trainer tiles again every epoch, as data
    too big for the object store, in its own Ray Data execution): bit-identical weights, whatever order Ray's
    tiling tasks finished in (Ray Train's ingest keeps the blocks' order)."""
    member = {"model": "unet", "model_options": {"width": 0.125}, "seed": 3, "stages": [{"epochs": 1, "batch_size": 4}]}
    members = [{"name": "m", **member}, {"name": "twin", **member}]
    config = training_config(synthetic_sections, tmp_path, "twice", members,
                             data={"oversampling": {"threshold": 0.6, "max_repeat": 3}, "cache": False})
    rows = train_ensemble(config)
    assert [r.status for r in rows] == ["done", "done"], [r.error for r in rows]
    assert_same_weights(tmp_path / "twice", tmp_path / "twice", "m", "twin")
    # the class repeat factors it trained with are in its record (the rarest class of the sections repeated)
    factors = json.loads(open(os.path.join(rows[0].best_checkpoint, "member.json")).read())["class_repeat_factors"]
    assert len(factors) == 9 and all(f >= 1 for f in factors.values()) and max(factors.values()) > 1
    # the results are minseg's files; Ray's run state (ray/) keeps no CSV / JSON / TensorBoard copies of them
    assert (tmp_path / "twice" / "ray").is_dir()
    copies = [p for p in (tmp_path / "twice" / "ray").rglob("*")
                 if p.name in ("progress.csv", "result.json") or p.name.startswith("events.out.tfevents")]
    assert not copies, copies


def assert_same_weights(run, other, member: str, other_member: str | None = None) -> None:
    first, second = (load_checkpoint(Storage(), str(r), m).model
                     for r, m in ((run, member), (other, other_member or member)))
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert first.keys() == second.keys() and not different, \
        f"{len(different)} of {len(first)} tensors differ, e.g. {different[:3]}"


def test_a_run_folder_among_the_data_or_another_commands_outputs_is_refused(tmp_path):
    """run.output_uri at the dataset folder wrote data/, members/ and ray/ among images/ and masks/ (read as data by
    the next run); a folder of another command (a measure run) was trained into. Both refused before anything is
    written; the data folder is untouched."""
    from minseg.errors import InputError

    data = tmp_path / "sections"
    (data / "images").mkdir(parents=True)
    members = [{"name": "a", "model": "half_unet", "model_options": {"width": 0.125}}]
    inside = training_config(data, data, "run", members)  # <data>/run: inside the data source
    with pytest.raises(InputError, match=r"^run.output_uri: \S+/sections/run lies in data.sources\[0\] \("):
        train_ensemble(inside)
    assert sorted(p.name for p in data.iterdir()) == ["images"]
    measured = tmp_path / "out" / "m"
    measured.mkdir(parents=True)
    (measured / "measure_summary.json").write_text("{}")
    with pytest.raises(InputError, match=r"^run.output_uri: \S+/m holds the outputs of minseg measure"):
        train_ensemble(training_config(data, tmp_path / "out", "m", members))
    assert sorted(p.name for p in measured.iterdir()) == ["measure_summary.json"]


def test_resume_into_a_folder_with_no_earlier_run_says_so(tmp_path, minseg_events):
    """``--resume`` with a mistyped run.name or --out trained from the start without a word (the user expects the
    earlier run continued). Said as a warning; the run goes on (here it stops at its missing data source)."""
    from minseg.errors import InputError

    members = [{"name": "a", "model": "half_unet", "model_options": {"width": 0.125}}]
    config = training_config(tmp_path / "nowhere", tmp_path / "out", "typo", members)
    with pytest.raises(InputError, match=r"data.sources\[0\].uri: .*nowhere"):
        train_ensemble(config, resume=True)
    (warned,) = [r for r in minseg_events if r.getMessage() == "train.nothing_to_resume"]
    assert warned.fields["run"] == str(tmp_path / "out" / "typo") and "from the beginning" in warned.fields["hint"]


def test_a_resubmitted_run_is_not_reused_after_the_bit_depth_changed():
    """``train --resume`` with every member finished reuses the run without preparing the data only while the data
    settings that decide its pixels are unchanged: data.bit_depth is one of them (its digest at the default is the
    one recorded before bit depths existed)."""
    import hashlib

    from minseg.config.base import validate_config
    from minseg.data.config import DataSettings
    from minseg.train.ensemble import _data_selection

    data = validate_config({"sources": [{"uri": "/data/sections"}]}, DataSettings)
    document = data.model_dump(mode="json", include={"sources", "classes", "split", "tiling", "limits"})
    assert _data_selection(data) == (hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16],
                                     document)
    assert _data_selection(data.model_copy(update={"bit_depth": 12}))[0] != _data_selection(data)[0]


def test_an_archive_rewritten_in_place_is_noticed_by_resume_and_evaluate(synthetic_sections, tmp_path, caplog):
    """An archive rewritten under its own name (one image's pixels changed, the same names and sizes): --resume
    kept the finished member and trained the others on the new pictures, and with every member finished reused the
    run without a look ("the data is not prepared again"): the ids and tile counts, all the signature held, agree.
    The run now records each image's content and each source's version; the file put back is accepted again."""
    import logging
    import zipfile

    import numpy as np
    from PIL import Image

    from minseg.errors import InputError
    from minseg.ensemble.evaluate import prepare_evaluation_data

    def pack(flip: bool) -> None:
        with zipfile.ZipFile(tmp_path / "sections.zip", "w") as archive:
            for path in sorted(synthetic_sections.rglob("*")):
                if path.is_file():
                    data = path.read_bytes()
                    if flip and path.name.startswith("section_00000") and path.parent.name == "images":
                        buffer = io.BytesIO()
                        Image.fromarray(np.asarray(Image.open(path))[:, ::-1]).save(buffer, format=Image.open(
                            path).format)
                        data = buffer.getvalue()
                    archive.writestr(str(path.relative_to(synthetic_sections)), data)

    pack(flip=False)
    member = {"model": "half_unet", "model_options": {"width": 0.25}, "stages": [{"epochs": 1, "batch_size": 4}]}
    both = training_config(tmp_path / "sections.zip", tmp_path, "zipped", [{"name": "a", **member},
                                                                          {"name": "b", **member}])
    alone = both.model_copy(deep=True)
    alone.training.members = alone.training.members[:1]
    (first,) = train_ensemble(both, ["a"])
    assert first.status == "done"
    run = tmp_path / "zipped"
    assert len(json.loads((run / "data" / "contents.json").read_text())) == 8
    pack(flip=True)
    changed = r"1 image\(s\) have other pixels or masks under the same names since the run's data was prepared: " \
              r"sections/section_00000\): \S+/members/a\. Put the files back"
    with pytest.raises(InputError, match=changed):  # every member finished: prepared again, not reused
        train_ensemble(alone, resume=True)
    with pytest.raises(InputError, match=changed):  # one member to train beside the kept one
        train_ensemble(both, ["b"], resume=True)
    assert not (run / "members" / "b").exists()
    logging.getLogger("minseg").addHandler(caplog.handler)
    try:  # evaluate says so (a corrected test mask is a reason to evaluate again, not to refuse)
        with pytest.raises(InputError, match=r"the test split is empty"):
            prepare_evaluation_data(alone, Storage(), str(run))
    finally:
        logging.getLogger("minseg").removeHandler(caplog.handler)
    warned = next(r.fields for r in caplog.records if r.getMessage() == "ensemble.images_changed")
    assert warned["images"] == 1 and {k: warned.get(k) for k in ("train", "val")} in (
        {"train": "sections/section_00000", "val": None}, {"train": None, "val": "sections/section_00000"})
    pack(flip=False)  # the same pictures, a new file (another date): prepared again and kept
    (kept,) = train_ensemble(alone, resume=True)
    assert kept.status == "done" and kept.finished_at == first.finished_at


def test_a_lost_progress_board_costs_the_console_its_epoch_lines_not_the_run(synthetic_sections, tmp_path, caplog):
    """The actor the members post their epochs to, killed (a node's memory monitor did, under another job's load):
    the driver's next look at it raised Ray's OutOfMemoryError as a traceback, exit 1, and cancelled the members.
    Now said once, and the members finish."""
    import logging

    from tests.support.processes import kill_processes_titled

    member = {"name": "steady", "model": "half_unet", "model_options": {"width": 0.25},
              "stages": [{"epochs": 3, "batch_size": 4}]}
    training = BackgroundTraining(training_config(synthetic_sections, tmp_path, "board", [member]), "steady")
    logging.getLogger("minseg").addHandler(caplog.handler)  # whether or not an earlier main() stopped propagation
    try:
        training.wait_for_checkpoint()
        assert kill_processes_titled("ray::EpochBoard")
        (row,) = training.join(600)
    finally:
        logging.getLogger("minseg").removeHandler(caplog.handler)
    assert row.status == "done" and row.epochs == 3
    lost = [r.fields for r in {id(r): r for r in caplog.records}.values() if r.getMessage() == "train.board_lost"]
    assert len(lost) == 1 and "members train on" in lost[0]["hint"]


def test_a_source_s_version_changes_with_a_same_size_edit_of_one_of_its_files(tmp_path):
    """The all-finished shortcut is taken only while each source looks as it did: a folder's listing gave names and
    sizes only, so an image edited to the same size (an uncompressed TIFF) kept its version and the run was reused
    without a look at its pictures. A file's time (S3: its ETag) is part of it now; a copy with the same contents
    is looked at again (its pictures' digests then decide)."""
    from minseg.data.config import SourceSettings
    from minseg.train.ensemble import source_versions

    folder = tmp_path / "sections"
    (folder / "images").mkdir(parents=True)
    image = folder / "images" / "a.tif"
    image.write_bytes(b"\x00" * 64)
    sources = [SourceSettings(uri=str(folder)), SourceSettings(uri=str(tmp_path / "missing.zip"))]
    before = source_versions(sources, Storage())
    assert before == source_versions(sources, Storage()) and before[1]  # unreadable: a digest of nothing
    image.write_bytes(b"\x01" * 64)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    after = source_versions(sources, Storage())
    assert after[0] != before[0] and after[1] == before[1]
