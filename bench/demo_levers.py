"""What each lever of the demo's recipe does, one at a time (issue #20's measurement).

The demo's members (configs/demo.yaml: a quarter-wide Half U-Net, 64-px crops, 7 epochs) differ
from the first tiny recipe by their losses and by class weights computed from the training data.
This bench trains one member per variant on the demo's own synthetic sections, all concurrently
with the same seed, and scores each on the run's test split with ``minseg evaluate`` (members
ranked and ensembles chosen on validation; the test split reports):

- ``ce``: plain cross-entropy, no class weights;
- ``ce-dice``: CE + Dice, no class weights;
- ``ce-sqrt``: CE with ``inverse_sqrt_frequency`` weights;
- ``ce-dice-sqrt``: CE + Dice with ``inverse_sqrt_frequency`` weights (the demo's first member);
- ``ce-dice-median``: CE + Dice with ``median_frequency`` weights.

Test mIoU and per-class IoU of each go to bench/results/demo_levers.csv.

    python bench/demo_levers.py            # ~18 min on 2 cores (five members share the 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import emit, per_class_iou  # noqa: E402

VARIANTS = {
    "ce": {"name": "ce"},
    "ce-dice": {"name": "ce_dice"},
    "ce-sqrt": {"name": "ce", "class_weights": "inverse_sqrt_frequency"},
    "ce-dice-sqrt": {"name": "ce_dice", "class_weights": "inverse_sqrt_frequency"},
    "ce-dice-median": {"name": "ce_dice", "class_weights": "median_frequency"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/minseg-bench-demo-levers")
    parser.add_argument("--csv", default=str(ROOT / "bench" / "results" / "demo_levers.csv"))
    parser.add_argument("--reuse", action="store_true", help="keep the members a previous run of this bench trained")
    args = parser.parse_args()

    from minseg.config import MinsegConfig, load_config
    from minseg.demo import run_synth, train_on_synthetic_sections
    from minseg.ensemble.evaluate import evaluate_ensemble

    config = load_config(ROOT / "configs" / "demo.yaml", MinsegConfig)
    config.synth.slide = config.synth.survey = None
    config.run.name = "levers"
    defaults = config.training.defaults
    members = [{"name": name, "loss": loss, "seed": 0} for name, loss in VARIANTS.items()]
    # the demo's defaults, with no class weights unless the variant names them
    config.training = config.training.model_validate({"defaults": {**defaults, "loss": {}}, "members": members})
    config.evaluation = config.evaluation.model_validate(
        {**config.evaluation.model_dump(mode="json"), "modes": ["soft"], "k_min": 5, "overlays": 0})
    started = time.monotonic()
    run_synth(config, args.out)
    rows = train_on_synthetic_sections(config, args.out, fresh=not args.reuse)
    evaluation = evaluate_ensemble(config)
    scored = {c.key.split(":", 1)[1]: c for c in evaluation.candidates if c.is_member}
    for row in rows:
        test = scored[row.member].metrics if row.member in scored else {}
        emit({
            "date": time.strftime("%Y-%m-%d"), "member": row.member, "loss": json.dumps(VARIANTS[row.member]),
            "status": row.status.value, "epochs": row.epochs,
            "best_val_miou": round(row.best_value, 4) if row.best_value is not None else "",
            "test_miou": round(test["miou"], 4) if test else "",
            "test_iou_per_class": per_class_iou(test) if test else "",
            "member_wall_seconds": round(row.wall_seconds), "bench_seconds": round(time.monotonic() - started),
        }, args.csv)


if __name__ == "__main__":
    main()
