"""Training throughput: one member alone vs N members concurrently, on this machine.

Runs the real training job (Ray Train) twice on synthetic sections: once with
one member, once with N copies of it. Prints per-member and aggregate tiles/s, their
ratios, and the share of step time spent waiting for data, measured in this one run:

    python bench/train_throughput.py                 # N = 3, tiny Res-UNet, 64-px tiles
    python bench/train_throughput.py --cache true --csv bench/results/train_throughput.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit  # noqa: E402


def run(data_uri: str, output: str, name: str, members: int, epochs: int, tile: int, cache, *,
        model: str = "res_unet", model_options: dict | None = None, batch_size: int = 8,
        cpus_per_worker: float = 0.25, gpus_per_worker: float = 0.0, task_cpus: float = 0.25) -> list[dict]:
    """Train ``members`` copies of one member concurrently; per member, its steady-epoch tiles/s and
    data-wait share (``gpus_per_worker`` < 1 packs several members onto one GPU)."""
    from minseg.config import MinsegConfig, validate_config
    from minseg.io.storage import Storage
    from minseg.synth.minerals import CLASS_NAMES
    from minseg.train.checkpoint import load_checkpoint
    from minseg.train.ensemble import train_ensemble

    config = validate_config({
        "run": {"name": name, "output_uri": output},
        "ray": {"task_cpus": task_cpus},
        "data": {"sources": [{"uri": data_uri}], "tiling": {"size": tile}, "cache": cache,
                 "classes": {"classes": [{"name": n, "codes": [i]} for i, n in enumerate(CLASS_NAMES)]},
                 "split": {"train": 0.9, "val": 0.1, "test": 0.0}},
        "training": {"defaults": {"model": model,
                                  "model_options": {"width": 0.125, "depth": "tiny"} if model_options is None
                                  else model_options,
                                  "stages": [{"epochs": epochs, "batch_size": batch_size}], "validate_every": epochs,
                                  "scaling": {"cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker},
                                  "max_failures": 0},
                     "members": [{"name": f"m{i}"} for i in range(members)]},
    }, MinsegConfig)
    results = train_ensemble(config)
    rows = []
    for result in results:
        history = load_checkpoint(Storage(), f"{output}/{name}", result.member).state["history"]
        steady = history[1:] or history  # the first epoch pays worker and pipeline start-up
        rows.append({
            "member": result.member,
            "tiles_per_s": float(np.mean([h["tiles_per_s"] for h in steady])),
            "data_wait_fraction": float(np.mean([h["data_wait_fraction"] for h in steady])),
            "wall_s": result.wall_seconds,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--cache", choices=["true", "false", "auto"], default="false",
                        help="data.cache: decode once into the object store, or every epoch (default false: the worst case)")
    parser.add_argument("--csv", help="append the summary row to this CSV")
    args = parser.parse_args()
    os.environ.setdefault("MINSEG_LOG_LEVEL", "WARNING")

    import ray

    from minseg.synth.config import SectionsSynth
    from minseg.synth.dataset import write_section_dataset

    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="minseg-bench-") as tmp:
        write_section_dataset(f"{tmp}/data", SectionsSynth(count=args.images, height=256, width=256), seed=3,
                              task_cpus=0.25)
        cache = {"true": True, "false": False}.get(args.cache, "auto")
        alone = run(f"{tmp}/data", f"{tmp}/runs", "alone", 1, args.epochs, args.tile, cache)
        together = run(f"{tmp}/data", f"{tmp}/runs", "together", args.members, args.epochs, args.tile, cache)
    single = alone[0]["tiles_per_s"]
    per_member = float(np.mean([r["tiles_per_s"] for r in together]))
    aggregate = float(np.sum([r["tiles_per_s"] for r in together]))
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": int(ray.cluster_resources().get("CPU", 0)),
        "members": args.members,
        "cache": args.cache,
        "single_tiles_per_s": round(single, 2),
        "concurrent_per_member_tiles_per_s": round(per_member, 2),
        "concurrent_aggregate_tiles_per_s": round(aggregate, 2),
        "aggregate_over_single": round(aggregate / single, 3),
        "per_member_over_single": round(per_member / single, 3),
        "data_wait_single": round(alone[0]["data_wait_fraction"], 3),
        "data_wait_concurrent": round(float(np.mean([r["data_wait_fraction"] for r in together])), 3),
    }
    emit(summary, args.csv)
    print(f"# {args.members} members together train {summary['aggregate_over_single']}x the tiles/s of one alone "
          f"({summary['per_member_over_single']}x each); data wait {summary['data_wait_single']:.0%} alone, "
          f"{summary['data_wait_concurrent']:.0%} together")


if __name__ == "__main__":
    main()
