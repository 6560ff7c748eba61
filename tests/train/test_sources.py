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
