"""Pretrained encoder vs from scratch on the real LumenStone sections (issue #14's measurement).

ImageNet weights cannot be downloaded here, so the stand-in is an encoder trained on another
domain: a tiny Res-UNet trained on minseg's synthetic ore sections. Then, on LumenStone with the
CPU recipe (configs/lumenstone_tiny.yaml: 1/8 scale, 128-px tiles, 12 epochs), three members
that differ only in how they start:

- ``scratch-frozen``: random init, 3 epochs with the (random) encoder frozen, then 9 unfrozen
  (what configs/ruel_paper.yaml did before pretrained weights existed);
- ``scratch``: random init, 12 epochs all trainable;
- ``pretrained``: encoder from the synthetic-sections member (``init``, minseg layout),
  3 epochs frozen then 9 unfrozen, one cosine schedule over both stages;
- ``warm-start``: the same, from the encoder of the ``scratch`` member once trained (an
  in-domain encoder; it saw the training split only, never the test split).

Validation mIoU per validated epoch (the curves) and the test mIoU of each member (from
``minseg evaluate``) go to bench/results/pretrained_init.csv.

    python bench/pretrained_init.py            # ~20 min on 2 cores; needs ../shared/data/lumenstone
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import emit, per_class_iou  # noqa: E402

TINY = {"width": 0.125, "depth": "tiny"}


def train_source(out: str) -> str:
    """A tiny Res-UNet on synthetic sections; returns its best model.pt."""
    from minseg.config import MinsegConfig, load_config
    from minseg.demo import run_synth, train_on_synthetic_sections

    config = load_config(ROOT / "configs" / "demo.yaml", MinsegConfig)
    config.synth.slide = config.synth.survey = None
    config.synth.sections = config.synth.sections.model_copy(update={"count": 24})
    config.run.name = "source"
    config.training = config.training.model_validate({
        "defaults": {"stages": [{"epochs": 12, "batch_size": 8}], "optimizer": {"lr": 0.002},
                     "scaling": {"workers": 1, "cpus_per_worker": 0.5}, "validate_every": 3},
        "members": [{"name": "synthetic-source", "model": "res_unet", "model_options": TINY,
                     "loss": {"name": "ce_dice"}}],
    })
    run_synth(config, out)
    (row,) = train_on_synthetic_sections(config, out)
    if row.status != "done":
        raise SystemExit(f"source member failed: {row.error}")
    return f"{row.best_checkpoint}/model.pt"


def train_lumenstone(out: str, source_weights: str, resume: bool):
    from minseg.config import MinsegConfig, load_config
    from minseg.ensemble.evaluate import evaluate_ensemble
    from minseg.train.ensemble import train_ensemble

    config = load_config(ROOT / "configs" / "lumenstone_tiny.yaml", MinsegConfig)
    config.run.output_uri, config.run.name = out, "lumenstone-init"
    recipe = config.training.defaults
    frozen_first = recipe["stages"]
    all_trainable = [{"epochs": sum(s["epochs"] for s in frozen_first), "batch_size": frozen_first[0]["batch_size"]}]
    common = {"model": "res_unet", "model_options": TINY, "loss": {"name": "ce_dice"}, "seed": 0}
    one_schedule = {**recipe.get("schedule", {}), "span": "run"}
    members = [
        {"name": "scratch-frozen", **common},
        {"name": "scratch", **common, "stages": all_trainable},
        {"name": "pretrained", **common, "init": {"uri": source_weights, "layout": "minseg"}, "schedule": one_schedule},
    ]
    config.training = config.training.model_validate({"defaults": recipe, "members": members})
    rows = train_ensemble(config, resume=resume)
    scratch = next(r for r in rows if r.member == "scratch")
    members.append({"name": "warm-start", **common, "init": {"uri": f"{scratch.best_checkpoint}/model.pt",
                                                             "layout": "minseg"}, "schedule": one_schedule})
    config.training = config.training.model_validate({"defaults": recipe, "members": members})
    rows = train_ensemble(config, resume=True)
    config.evaluation = config.evaluation.model_copy(update={"k_min": 2})
    evaluation = evaluate_ensemble(config)
    return config, rows, evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/minseg-bench-pretrained")
    parser.add_argument("--csv", default=str(ROOT / "bench" / "results" / "pretrained_init.csv"))
    parser.add_argument("--source", help="skip the source training: this model.pt instead")
    parser.add_argument("--resume", action="store_true", help="keep members a previous run finished")
    args = parser.parse_args()
    if not (ROOT.parent / "shared" / "data" / "lumenstone").exists():
        raise SystemExit("needs ../shared/data/lumenstone")

    from minseg.io.storage import Storage
    from minseg.train.checkpoint import load_checkpoint

    source = args.source or train_source(f"{args.out}/source")
    config, rows, evaluation = train_lumenstone(args.out, source, args.resume)
    storage = Storage()
    members = {c.key.split(":", 1)[1]: c for c in evaluation.candidates if c.key.startswith("member:")}
    for row in rows:
        state = load_checkpoint(storage, config.run.uri, row.member).state
        curve = [(h["epoch"], round(h["miou"], 4)) for h in state["history"] if h.get("miou") is not None]
        candidate = members.get(row.member)
        test = candidate.metrics if candidate else {}
        emit({
            "date": time.strftime("%Y-%m-%d"), "member": row.member, "status": row.status.value,
            "init": row.init or "random", "epochs": row.epochs,
            "val_miou_curve": " ".join(f"{e}:{v}" for e, v in curve),
            "best_val_miou": round(row.best_value, 4) if row.best_value is not None else "",
            "test_miou": round(test.get("miou", float("nan")), 4) if test else "",
            "test_iou_per_class": per_class_iou(test) if test else "",
            "member_wall_seconds": round(row.wall_seconds),
        }, args.csv)


if __name__ == "__main__":
    main()
