import pytest

from tests.train.conftest import TINY, training_config


@pytest.fixture(scope="session")
def trained_run(synthetic_sections, tmp_path_factory):
    """Three tiny members trained on synthetic sections, with a held-out test split."""
    from minseg.train.ensemble import train_ensemble

    output = tmp_path_factory.mktemp("ensemble-run")
    members = [
        {"name": "resunet", "model": "res_unet", "model_options": TINY, "loss": {"name": "ce_dice"}},
        {"name": "vgg", "model": "vgg16_unet", "model_options": TINY},
        {"name": "halfunet", "model": "half_unet", "model_options": {"width": 0.25}},
    ]
    config = training_config(synthetic_sections, output, "ens", members)
    config.data.split = config.data.split.model_copy(update={"train": 0.5, "val": 0.25, "test": 0.25})
    config.training.members = [m.model_copy(update={"stages": m.stages[1:]}) for m in config.training.members]
    results = train_ensemble(config)
    assert all(r.status == "done" for r in results), [r.error for r in results]
    return config
