"""The papers' recipes as shipped in configs/, run at tiny size on CPU with the real data."""

import json
from pathlib import Path

from minseg.config import MinsegConfig, load_config
from minseg.train.ensemble import train_ensemble

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_microplastic_recipe_on_the_coco_export(ray_session, shared_data, tmp_path):
    """The recipe's data, learner, loss, optimizer and checkpoint metric on the real export: tiny member, one epoch.

    Its k folds are left off here (one trial, not k): the fold machinery, data-agnostic, is checked on synthetic
    photographs by tests/train/test_tasks.py::test_binary_kfold_with_weighted_bce."""
    config = load_config(CONFIGS / "microplastic_paper.yaml", MinsegConfig, overrides={
        "data.sources": f"[{{uri: {shared_data / 'microplastic-coco'}}}]",
        "data.tiling": "{size: 64, overlap: 16, scale: 0.125}",
        "run.output_uri": str(tmp_path),
        "data.split.folds": "null",
        "training.defaults.stages": "[{epochs: 1, batch_size: 8}]",
        "training.defaults.scaling": "{workers: 1, cpus_per_worker: 0.25}",
        "training.members": "[{name: quarter-multiresunet, model: quarter_multiresunet, model_options: {width: 0.5}}]",
    })
    recipe = load_config(CONFIGS / "microplastic_paper.yaml", MinsegConfig)
    assert recipe.data.split.folds == 5 and recipe.data.split.fold_val == 0.1
    member = config.training.members[0]
    assert member.loss.name == "weighted_bce" and member.optimizer.eps == 1e-7
    assert (member.schedule.step_steps, member.schedule.gamma) == (800, 0.96)
    (row,) = train_ensemble(config)
    assert row.status == "done" and row.metric == "recall_weighted_f1", row
    assert 0.0 <= row.best_value <= 1.0
    # the COCO export as read: its own test folder is the test split, polygons rasterised into particles
    data = tmp_path / "microplastic-paper" / "data"
    splits = json.loads((data / "splits.json").read_text())
    assert len(splits["test"]) == 7 and len(splits["train"]) + len(splits["val"]) == 31
    assert json.loads((data / "quarantine.json").read_text()) == []
    plastic = json.loads((data / "dataset_stats.json").read_text())["stats"]["train"]["classes"]["microplastic"]
    assert 0.01 < plastic["pixel_share"] < 0.3 and plastic["particles"] > 50  # counted at full resolution
