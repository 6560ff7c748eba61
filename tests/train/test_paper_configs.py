"""The papers' recipes as shipped in configs/, run at tiny size on CPU with the real data."""

from pathlib import Path

from minseg.config import MinsegConfig, load_config
from minseg.train.ensemble import train_ensemble

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_microplastic_recipe_on_the_coco_export(ray_session, shared_data, tmp_path):
    """5-fold CV, weighted BCE, Adam eps 1e-7, 0.96 every 800 steps; tiny members, one epoch."""
    config = load_config(CONFIGS / "microplastic_paper.yaml", MinsegConfig, overrides={
        "data.sources": f"[{{uri: {shared_data / 'microplastic-coco'}}}]",
        "data.tiling": "{size: 64, overlap: 16, scale: 0.125}",
        "run.output_uri": str(tmp_path),
        "data.split.folds": "2",  # the recipe's 5 folds take 2.5 min on 2 cores; the fold machinery is the same
        "training.defaults.stages": "[{epochs: 1, batch_size: 8}]",
        "training.defaults.scaling": "{workers: 1, cpus_per_worker: 0.25}",
        "training.members": "[{name: quarter-multiresunet, model: quarter_multiresunet, model_options: {width: 0.5}}]",
    })
    recipe = load_config(CONFIGS / "microplastic_paper.yaml", MinsegConfig)
    assert recipe.data.split.folds == 5 and recipe.data.split.fold_val == 0.1
    member = config.training.members[0]
    assert member.optimizer.eps == 1e-7 and (member.schedule.step_steps, member.schedule.gamma) == (800, 0.96)
    rows = train_ensemble(config)
    assert [r.fold for r in rows] == [0, 1] and all(r.status == "done" for r in rows), rows
    assert all(r.metric == "recall_weighted_f1" and r.test_value is not None for r in rows)
    members = (tmp_path / "microplastic-paper" / "members.json").read_text()
    assert '"folds": 2' in members
