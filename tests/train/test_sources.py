"""What a trial trains on (``ImageSource.member_data``): the split's tiles, repeated under ``data.oversampling``."""

import logging

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

    repeats, _ = tile_repeats(prepared.tile_classes_of(training), prepared.classmap.num_classes,
                              config.data.oversampling, config.run.seed)
    for name in ("m0", "half"):  # the sample's tiles, each as often as drawn, on top of the oversampling
        datasets, inputs = source.member_data(None, config, storage, samples[name])
        expected = sum(n * sum(repeats[by_source[s]["item_id"]]) for s, n in samples[name].items())
        assert inputs.train_tiles == expected == datasets["train"].count()
        assert inputs.bagging_sample == samples[name]
        assert inputs.class_counts == [sum(n * by_source[s]["pixels"][c] for s, n in samples[name].items())
                                       for c in range(prepared.classmap.num_classes)]
        assert datasets["val"].count() == prepared.tile_count("val")  # validation is the split's, not sampled


def test_a_sample_that_cannot_show_every_class_is_refused_with_the_class_named():
    from minseg.errors import InputError
    from minseg.train.bagging import bagging_counts
    from minseg.train.config import BaggingSettings

    shows = [{0, 1}] * 9 + [{0, 2}]  # only the last image shows class 2
    counts = bagging_counts(shows, BaggingSettings(), 0)
    assert counts.sum() == 10 and counts[9] >= 1  # redrawn until the image with class 2 is in
    with pytest.raises(InputError, match=r"left out: pyrite\); raise bagging.fraction"):
        bagging_counts(shows, BaggingSettings(fraction=0.1, replacement=False), 1, ["bg", "ccp", "pyrite"])
    assert (bagging_counts(shows, BaggingSettings(fraction=0.5, replacement=False), 3) <= 1).all()


def test_bagged_prospectivity_members_draw_windows(ray_session):
    import numpy as np

    from minseg.geo.prospect import WindowSource
    from minseg.train.config import MemberSettings

    labels = np.array([0] * 30 + [1] * 10)
    windows = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1) * np.ones((1, 2, 3, 3), np.float32)
    source = WindowSource({None: type("Trial", (), {"train_x": windows, "train_y": labels, "channels": ["a", "b"]})},
                          "dihedral")
    member = MemberSettings(name="m", model="mfaf", stages=[{"epochs": 1}], seed=5, bagging={"fraction": 0.5})
    sample = source.bagging_sample(member, None, 0)
    assert sum(sample.values()) == 20 and {labels[int(i)] for i in sample} == {0, 1}
    datasets, inputs = source.member_data(None, None, None, sample)
    rows = datasets["train"].take_all()
    assert len(rows) == inputs.train_tiles == 20 and inputs.bagging_sample == sample
    drawn = sorted(int(r["image"][0, 0, 0]) for r in rows)  # each window's index, as often as drawn
    assert drawn == sorted(int(i) for i, n in sample.items() for _ in range(n))
    assert inputs.class_counts == [sum(n for i, n in sample.items() if labels[int(i)] == c) for c in (0, 1)]
