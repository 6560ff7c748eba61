"""What a trial trains on (``ImageSource.member_data``): the split's tiles, repeated under ``data.oversampling``."""

import json
import logging

import numpy as np
import pytest

from minseg.data.pipeline import prepare_data
from minseg.data.sampling import tile_repeats
from minseg.enums import Task
from minseg.io.storage import Storage
from minseg.train.ensemble import ImageSource
from tests.train.conftest import training_config


def test_oversampling_sets_the_epoch_of_the_training_split_only(synthetic_sections, tmp_path, caplog):
    member = [{"name": "m", "model": "unet"}]
    plain = training_config(synthetic_sections, tmp_path, "plain", member)
    config = training_config(synthetic_sections, tmp_path, "over", member,
                             data={"oversampling": {"threshold": 0.6, "max_repeat": 3}})
    storage = Storage()
    prepared = prepare_data(config.data, Task.SEGMENTATION, 0, storage, str(tmp_path / "work"), 0.25)

    datasets, inputs = ImageSource(prepared, plain.data).member_data(None, plain, storage)
    assert inputs.train_tiles == prepared.tile_count("train") == datasets["train"].count()

    datasets, inputs = ImageSource(prepared, config.data).member_data(None, config, storage)
    training = prepared.tile_classes_of(prepared.splits["train"])
    repeats, factors = tile_repeats(training, prepared.classmap.num_classes, config.data.oversampling, config.run.seed)
    assert factors.max() > 1  # some class of the synthetic sections is in under 60 % of the tiles
    assert inputs.train_tiles == sum(sum(r) for r in repeats.values()) > prepared.tile_count("train")
    assert datasets["train"].count() == inputs.train_tiles  # the steps per epoch match the stream
    assert set(datasets["train"].columns()) == {"image", "mask"}  # the copy counts are spent
    assert datasets["val"].count() == prepared.tile_count("val")  # validation is never repeated
    assert inputs.class_counts == ImageSource(prepared, plain.data).class_counts()  # weights: true pixel counts
    assert inputs.class_repeat_factors == dict(zip(prepared.classmap.names, np.round(factors, 4).tolist()))

    with caplog.at_level(logging.INFO, logger="minseg.train.ensemble"):  # the driver says what an epoch holds
        ImageSource(prepared, config.data).report_oversampling(config.run.seed)
    (fields,) = [r.fields for r in caplog.records if r.getMessage() == "data.oversampling"]
    assert fields["tiles"] == prepared.tile_count("train") and fields["tiles_per_epoch"] == inputs.train_tiles
    assert max(fields["class_repeat_factors"].values()) == pytest.approx(factors.max(), abs=0.01)


def test_bagging_draws_each_member_its_own_sample_of_source_images(synthetic_sections, tmp_path):
    members = [{"name": f"m{i}", "model": "unet", "seed": i, "bagging": {}} for i in range(4)]
    members.append({"name": "half", "model": "unet", "bagging": {"fraction": 0.5, "replacement": False}})
    config = training_config(synthetic_sections, tmp_path, "bag", members,
                             data={"oversampling": {"threshold": 0.6, "max_repeat": 3}})
    storage = Storage()
    prepared = prepare_data(config.data, Task.SEGMENTATION, 0, storage, str(tmp_path / "work"), 0.25)
    source = ImageSource(prepared, config.data)
    training = prepared.splits["train"]
    by_source = {i["source_id"]: i for i in training}
    samples = {m.name: source.bagging_sample(m, None, config.run.seed) for m in config.training.members}

    for member in config.training.members[:4]:  # bootstrap: as many draws as images, repeats allowed
        sample = samples[member.name]
        assert sum(sample.values()) == len(training) and set(sample) <= set(by_source)
        assert source.bagging_sample(member, None, config.run.seed) == sample  # a resumed trial draws the same
        shown = {c for s in sample for c, n in enumerate(by_source[s]["pixels"]) if n}
        assert shown == {c for i in training for c, n in enumerate(i["pixels"]) if n}  # every class kept
    assert len({tuple(sorted(s.items())) for s in samples.values()}) > 2  # members draw apart
    assert sorted(samples["half"].values()) == [1] * (len(training) // 2)  # a subsample: half, once each

    _, split_factors = tile_repeats(prepared.tile_classes_of(training), prepared.classmap.num_classes,
                                    config.data.oversampling, config.run.seed)
    differs = 0
    for name in ("m0", "half"):  # the sample's tiles, each as often as drawn, on top of the sample's oversampling
        sample = samples[name]
        drawn = [by_source[s] for s in sample]
        repeats, factors = tile_repeats(prepared.tile_classes_of(drawn), prepared.classmap.num_classes,
                                        config.data.oversampling, config.run.seed,
                                        times={by_source[s]["item_id"]: n for s, n in sample.items()})
        datasets, inputs = source.member_data(None, config, storage, sample)
        expected = sum(n * sum(repeats[by_source[s]["item_id"]]) for s, n in sample.items())
        assert inputs.train_tiles == expected == datasets["train"].count()
        # r_c from the member's own sample, as its class weights: recorded by class name (member.json)
        assert inputs.class_repeat_factors == dict(zip(prepared.classmap.names, np.round(factors, 4).tolist()))
        differs += not np.allclose(factors, split_factors)
        assert inputs.bagging_sample == samples[name]
        assert inputs.class_counts == [sum(n * by_source[s]["pixels"][c] for s, n in samples[name].items())
                                       for c in range(prepared.classmap.num_classes)]
        assert datasets["val"].count() == prepared.tile_count("val")  # validation is the split's, not sampled
    assert differs  # the samples' class shares are not the split's: the test tells the two apart


def test_a_bagged_k_fold_trial_draws_from_its_fold_s_training_part_only(synthetic_sections, tmp_path):
    members = [{"name": "m", "model": "unet", "seed": 3, "bagging": {}}]
    config = training_config(synthetic_sections, tmp_path, "kfold", members,
                             data={"split": {"train": 0.8, "val": 0.0, "test": 0.2, "folds": 2}})
    storage = Storage()
    prepared = prepare_data(config.data, Task.SEGMENTATION, 0, storage, str(tmp_path / "work"), 0.25)
    source = ImageSource(prepared, config.data)
    member = config.training.members[0]
    assert source.trial_folds() == [0, 1]
    samples = [source.bagging_sample(member, fold, config.run.seed) for fold in (0, 1)]
    for fold, sample in enumerate(samples):
        part = prepared.folds[fold]
        assert set(sample) <= set(part.train) and sum(sample.values()) == len(part.train)  # never val / test
        datasets, inputs = source.member_data(fold, config, storage, sample)
        tiles = {i["source_id"]: i["tiles"] for s in ("train", "val") for i in prepared.splits[s]}
        assert inputs.train_tiles == sum(n * tiles[s] for s, n in sample.items()) == datasets["train"].count()
        assert datasets["test"].count() == sum(tiles[s] for s in part.test)  # the fold's test part, whole
        assert inputs.fold_signature == part.signature() and inputs.bagging_sample == sample
    assert source.bagging_sample(member, 0, config.run.seed) == samples[0]  # a resumed fold draws the same


def test_members_on_the_one_split_share_one_decoded_validation_split(synthetic_sections, tmp_path, ray_session):
    from minseg.train.ensemble import _shared_data

    members = [{"name": f"m{i}", "model": "unet", "seed": i, "bagging": {}} for i in range(2)]
    members += [{"name": f"full{i}", "model": "unet", "seed": i} for i in range(2)]
    config = training_config(synthetic_sections, tmp_path, "share", members)
    storage = Storage()
    prepared = prepare_data(config.data, Task.SEGMENTATION, 0, storage, str(tmp_path / "work"), 0.25)
    source = ImageSource(prepared, config.data)
    samples = [source.bagging_sample(m, None, config.run.seed) for m in config.training.members[:2]]
    trials = [{"fold": None, "sample": sample} for sample in samples]

    shared = _shared_data(source, trials, config, storage)  # bagged members only: validation alone, decoded once
    val = shared.shared_datasets(config, storage)["val"]
    assert val.count() == prepared.tile_count("val") and shared._data is None
    bagged = [shared.member_data(None, config, storage, sample) for sample in samples]
    assert all(datasets["val"] is val for datasets, _ in bagged)
    assert [inputs.bagging_sample for _, inputs in bagged] == samples  # each its own training sample

    shared = _shared_data(source, trials + [{"fold": None}, {"fold": None}], config, storage)
    val = shared.shared_datasets(config, storage)["val"]
    full, _ = shared.member_data(None, config, storage)  # two members on all the data: theirs decoded once too
    assert full["val"] is val and shared.member_data(None, config, storage)[0]["train"] is full["train"]
    assert shared.member_data(None, config, storage, samples[0])[0]["val"] is val
    assert _shared_data(source, trials[:1], config, storage) is source  # one trial: nothing to share


def test_a_draw_that_leaves_out_a_class_is_repaired_and_one_too_small_is_refused_with_the_class_named():
    import numpy as np

    from minseg.errors import InputError
    from minseg.train.bagging import bagging_counts
    from minseg.train.config import BaggingSettings

    shows = [{0, 1}] * 9 + [{0, 2}]  # only the last image shows class 2
    counts = bagging_counts(shows, BaggingSettings(), 0)
    plain = np.bincount(np.random.default_rng(0).choice(10, size=10, replace=True), minlength=10)
    assert plain[9] == 0 and counts.sum() == 10 and counts[9] == 1  # seed 0's draw misses it: one slot repaired
    assert (counts - plain).clip(max=0).sum() == -1  # ... and only one
    covering = bagging_counts(shows, BaggingSettings(), 1)
    assert (covering == np.bincount(np.random.default_rng(1).choice(10, size=10, replace=True), minlength=10)).all()
    assert covering[9] >= 1  # a draw that shows every class is kept as drawn
    with pytest.raises(InputError, match=r"draw of 1 of the 10 training units \(bagging.fraction 0.1\) leaves out "
                                         r"pyrite, and no slot .* showing it .*; raise bagging.fraction"):
        bagging_counts(shows, BaggingSettings(fraction=0.1, replacement=False), 1, ["bg", "ccp", "pyrite"])
    # the newcomer that shows the most classes still left out, and the slot its classes make good: from {2}, {1}
    # drawn, class 3 comes in with {2, 3} in place of {2} (the lone {3} has no slot it can take)
    several, checked = [{1}, {2}, {3}, {2, 3}, {1}], 0
    for seed in range(100):
        plain = set(np.random.default_rng(seed).choice(5, size=2, replace=False).tolist())
        if 1 in plain and plain & {0, 4}:  # {2} and a {1} drawn
            counts = bagging_counts(several, BaggingSettings(fraction=0.4, replacement=False), seed)
            assert set(np.flatnonzero(counts).tolist()) == plain - {1} | {3}
            checked += 1
    assert checked >= 10
    assert (bagging_counts(shows, BaggingSettings(fraction=0.5, replacement=False), 3) <= 1).all()


@pytest.mark.parametrize("units, rare, settings", [(40, 10, {}), (20, 7, {"fraction": 0.5, "replacement": False})])
def test_rare_classes_in_single_images_never_stop_a_member(units, rare, settings):
    """Each rare class in one image: drawing again until a sample shows them all failed for 48 % / 88 % of member
    seeds in these two cases; the repair always succeeds, and changes the sample no more than it must."""
    import numpy as np

    from minseg.train.bagging import bagging_counts
    from minseg.train.config import BaggingSettings

    shows = [{0, 1, 2 + i} for i in range(rare)] + [{0, 1}] * (units - rare)
    bagging = BaggingSettings(**settings)
    samples = np.array([bagging_counts(shows, bagging, [seed, 7]) for seed in range(300)])
    assert (samples[:, :rare] >= 1).all() and (samples.sum(axis=1) == round(bagging.fraction * units)).all()
    if bagging.replacement:  # redrawing would condition on every rare image: ~1.58 copies each; repair: ~1.37
        assert samples[:, :rare].mean() < 1.45
    else:
        assert (samples <= 1).all()


def test_bagged_prospectivity_members_draw_real_windows_and_balance_their_own_sample(ray_session):
    import numpy as np

    from minseg.geo.config import BalanceSettings
    from minseg.geo.prospect import WindowSource
    from minseg.train.config import MemberSettings

    labels = np.array([0] * 30 + [1] * 10)
    windows = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1) * np.ones((1, 2, 3, 3), np.float32)
    # the trial as prepare_trials leaves it: the 40 real windows, then what balancing added (here 20 stand-ins, 100+)
    balanced_x = np.concatenate([windows, 100 + windows[:20]])
    balanced_y = np.concatenate([labels, np.ones(20, labels.dtype)])
    trial = type("Trial", (), {"train_x": balanced_x, "train_y": balanced_y, "channels": ["a", "b"],
                               "real_windows": 40, "signature": "s"})
    source = WindowSource({None: trial}, "dihedral", BalanceSettings(smote=False, noise_variance=0.01, noise_copies=1))
    member = MemberSettings(name="m", model="mfaf", stages=[{"epochs": 1}], seed=5, bagging={"fraction": 0.5})
    sample = source.bagging_sample(member, None, 0)
    assert sum(sample.values()) == 20 and {labels[int(i)] for i in sample} == {0, 1}
    assert all(int(i) < 40 for i in sample)  # never a window balancing made
    datasets, inputs = source.member_data(None, None, None, sample)
    rows = datasets["train"].take_all()
    positives = sum(n for i, n in sample.items() if labels[int(i)] == 1)
    assert len(rows) == inputs.train_tiles == 20 + positives and inputs.bagging_sample == sample
    drawn = sorted(int(round(float(r["image"][0, 0, 0]))) for r in rows)  # each window's index (noise: 0.1 sd)
    expected = [int(i) for i, n in sample.items() for _ in range(n * (2 if labels[int(i)] == 1 else 1))]
    assert drawn == sorted(expected)  # the drawn windows as often as drawn, plus a noise copy of each positive
    assert inputs.class_counts == [20 - positives, 2 * positives]
    again, _ = source.member_data(None, None, None, sample)  # a resumed trial balances alike
    assert [r["image"].tolist() for r in again["train"].take_all()] == [r["image"].tolist() for r in rows]
    full, unbagged = source.member_data(None, None, None, None)
    assert unbagged.train_tiles == 60 and unbagged.class_counts == [30, 30]  # unbagged: the balanced trial as is


def test_a_member_whose_sample_cannot_show_every_class_is_not_started_and_the_table_says_why(synthetic_sections,
                                                                                              tmp_path):
    from minseg.enums import MemberStatus
    from minseg.train.ensemble import fit_members

    members = [{"name": "one-photo", "model": "unet", "bagging": {"fraction": 0.1, "replacement": False}}]
    config = training_config(synthetic_sections, tmp_path, "thin", members)
    storage = Storage()
    prepared = prepare_data(config.data, Task.SEGMENTATION, 0, storage, str(tmp_path / "work"), 0.25)
    training = prepared.splits["train"]
    photographs = len({i["source_id"] for i in training})  # bagging draws source images
    shown = [{c for c, n in enumerate(i["pixels"]) if n} for i in training]
    assert round(0.1 * photographs) == 1 and all(s != set().union(*shown) for s in shown)  # one photo: never all

    (result,) = fit_members(config, config.training.members, ImageSource(prepared, config.data),
                            str(tmp_path / "thin"), concurrency=1)
    assert result.status is MemberStatus.FAILED
    assert result.error.startswith(f"not started: bagging: the draw of 1 of the {photographs} training source images")
    assert "raise bagging.fraction" in result.error
    (row,) = json.loads((tmp_path / "thin" / "members.json").read_text())["members"]
    assert row["member"] == "one-photo" and row["status"] == "failed" and row["error"] == result.error


class VanishingSource(ImageSource):
    """A source whose data is gone by the time a trial reads it (a bucket emptied mid-run)."""

    def member_data(self, *args, **kwargs):
        raise FileNotFoundError("s3://survey-bucket/tiles/: the bucket is empty")


def test_a_trial_that_fails_before_training_is_a_failed_row_with_its_traceback(synthetic_sections, tmp_path):
    """The trial's task fails before Ray Train starts: a failed row naming why, the task's traceback in the
    member's error.txt; an earlier run's result.json and error.txt of the member are not taken for this run's."""
    from minseg.enums import MemberStatus
    from minseg.train.ensemble import fit_members

    members = [{"name": "m", "model": "half_unet", "model_options": {"width": 0.25},
                "stages": [{"epochs": 1, "batch_size": 4}]}]
    config = training_config(synthetic_sections, tmp_path, "gone", members)
    prepared = prepare_data(config.data, Task.SEGMENTATION, 0, Storage(), str(tmp_path / "work"), 0.25)
    folder = tmp_path / "gone" / "members" / "m"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"member": "m", "model": "half_unet", "status": "failed",
                                                    "error": "an earlier run's", "started_at": 1.0}))
    (folder / "error.txt").write_text("an earlier run's traceback")
    (result,) = fit_members(config, config.training.members, VanishingSource(prepared, config.data),
                            str(tmp_path / "gone"), concurrency=1)
    assert result.status is MemberStatus.FAILED and result.error == \
        "FileNotFoundError: s3://survey-bucket/tiles/: the bucket is empty", result.error
    recorded = json.loads((folder / "result.json").read_text())
    assert recorded["error"] == result.error and recorded["started_at"] != 1.0
    traceback = (folder / "error.txt").read_text()
    assert "in member_data" in traceback and traceback.rstrip().endswith("the bucket is empty")
    assert "\x1b[" not in traceback  # Ray's terminal colours left out


def test_a_bagged_prospectivity_trial_balances_its_own_draws(ray_session):
    """Windows: a bagged member's real windows each as often as drawn, SMOTE between its distinct positives (no
    synthetic window is a drawn positive again), the report and how the epoch was built recorded."""
    from types import SimpleNamespace

    from minseg.geo.config import BalanceSettings
    from minseg.geo.prospect import WindowSource
    from minseg.train.ensemble import BAGGING_BUILD

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (5, 4, 4, 2)), rng.normal(3, 1, (20, 4, 4, 2))]).astype(np.float32)
    y = np.array([1] * 5 + [0] * 20)
    trial = SimpleNamespace(train_x=x, train_y=y, channels=["Au", "As"], real_windows=25, signature="s")
    source = WindowSource({None: trial}, "none", BalanceSettings(noise_copies=0))
    sample = {"0": 3, "1": 3, "2": 2, **{str(i): 2 for i in range(5, 25)}}  # positives 3 and 4 left out
    datasets, inputs = source.member_data(None, None, None, sample)
    assert inputs.data_signature == "s"  # the trial's: a resume compares it
    rows = datasets["train"].take_all()
    images = np.stack([r["image"] for r in rows]).reshape(len(rows), -1)
    labels = np.array([r["label"] for r in rows])
    assert inputs.bagging_balance == {"positives": 8, "negatives": 40, "smote": 32, "noise": 0}
    assert len(rows) == inputs.train_tiles == 80 and labels.sum() == 40
    assert inputs.bagging_build == BAGGING_BUILD and inputs.bagging_sample == sample
    positives = images[labels == 1]
    copies = np.abs(positives[:, None] - x[:5].reshape(5, -1)[None]).max(-1) < 1e-6  # (40, 5): equal to a real one
    assert copies.sum(0).tolist() == [3, 3, 2, 0, 0]  # the draws only: no SMOTE window repeats a drawn positive
    _, unbagged = source.member_data(None, None, None)
    assert unbagged.bagging_balance is None and unbagged.bagging_build is None and unbagged.train_tiles == 25
