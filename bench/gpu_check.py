"""One short check of minseg on a CUDA machine; prints one CSV row (and appends it with --csv).

Measured in this one run, all on the first GPU:

1. ``infer_*``: RUEL-5 (five full-size Res-UNet members, the paper's learners) fused on 512² tiles
   through ``EnsembleRuntime`` as the segmentation actors run it (bf16 autocast, channels_last, uint8
   windows copied to the GPU each batch; fused scores left on the GPU, as in
   ``bench/ensemble_runtime.py``), without and with ``torch.compile``; tiles/s after warm-up, and
   the warm-up time (compilation: slow for five ResNet50 U-Nets; ``--skip train`` first if time is short).
2. ``segment_*``: the whole block pipeline (``segment_slides``) on a synthetic slide with that ensemble:
   one actor holding the GPU, then two actors sharing it (``gpus_per_actor: 0.5``); end-to-end tiles/s.
3. ``train_*``: the real training job (Ray Train) on synthetic sections: one full-size Res-UNet member
   alone (``gpus_per_worker: 1``), then the fourteen members of ``configs/ruel_paper.yaml`` packed on
   this one GPU (``gpus_per_worker: 1/14``): tiles/s per member and together, and the share of step time
   spent waiting for data.

Each part can be skipped (``--skip``) to stay within a few minutes of device time; ``--smoke`` runs
every part at toy sizes on the CPU, to check the script before a GPU is lent:

    python bench/gpu_check.py --csv bench/results/gpu_check.csv
    python bench/gpu_check.py --smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, repeated_tile_slide, untrained_ensemble  # noqa: E402

PARTS = ("infer", "segment", "train")


def ensemble_tiles_per_s(manifest_uri: str, gpus: float, batch: int, tile: int, iters: int,
                         compile: bool) -> tuple[float, float]:
    """(tiles/s after warm-up, seconds of the two warm-up batches: compilation included)."""
    from ensemble_runtime import inference_rate

    from minseg.ensemble.manifest import load_manifest
    from minseg.ensemble.runtime import EnsembleRuntime, Fusion
    from minseg.io.storage import Storage

    manifest = load_manifest(manifest_uri)
    runtime = EnsembleRuntime.from_manifest(manifest, Storage(), gpus=gpus, compile=compile)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (batch, tile, tile, 3), dtype=np.uint8) for _ in range(2 + iters)]
    started = time.perf_counter()
    inference_rate(runtime, Fusion.of(manifest.fusion), batches[:2], warmup=1)  # compile, autotune, allocator
    first = time.perf_counter() - started
    rate, _ = inference_rate(runtime, Fusion.of(manifest.fusion), batches, warmup=2)
    return rate, first


def segment_tiles_per_s(manifest_uri: str, slide: str, out: str, actors: int, gpus: float, batch: int,
                        cpus: float) -> float:
    from minseg.config.schema import MinsegConfig
    from minseg.inference.config import SegmentSettings
    from minseg.inference.segment import segment_slides

    config = MinsegConfig()
    config.segment = SegmentSettings(manifest_uri=manifest_uri, slides=[slide], output_uri=out, actors=actors,
                                     gpus_per_actor=gpus, cpus_per_actor=cpus, batch_size=batch, force=True)
    started = time.perf_counter()
    result = segment_slides(config)
    seconds = time.perf_counter() - started
    assert result.done, result.failed
    return sum(s["tiles"] for s in result.done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: check the script itself")
    parser.add_argument("--skip", action="append", default=[], choices=PARTS)
    parser.add_argument("--iters", type=int, default=16, help="timed inference batches per variant")
    parser.add_argument("--batch", type=int, default=32, help="inference windows per forward pass")
    parser.add_argument("--slide", type=int, default=16384, help="side of the segmented synthetic slide")
    parser.add_argument("--train-members", type=int, default=14)
    parser.add_argument("--train-batch", type=int, default=16)
    parser.add_argument("--csv")
    args = parser.parse_args()
    os.environ.setdefault("MINSEG_LOG_LEVEL", "WARNING")

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("# no CUDA device: nothing measured (use --smoke to check the script on the CPU)", file=sys.stderr)
        sys.exit(1)
    full = {"stn": False, "activation": "leaky_relu"}  # the paper's Res-UNet: ResNet50 encoder, full width
    options = {"width": 0.125, "depth": "tiny"} if args.smoke else full
    tile = 64 if args.smoke else 512
    gpus = 1.0 if cuda else 0.0
    iters = 2 if args.smoke else args.iters
    batch = 4 if args.smoke else args.batch
    row = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0) if cuda else "cpu (smoke)",
           "torch": torch.__version__, "tile": tile, "members": 5, "batch": batch}
    work = tempfile.mkdtemp(prefix="minseg-gpu-check-")
    members = [(f"learner{i:02d}", "res_unet", options) for i in range(1, 6)]
    manifest = untrained_ensemble(os.path.join(work, "ruel5"), members, tile, tile // 8)

    if "infer" not in args.skip:
        eager, _ = ensemble_tiles_per_s(manifest, gpus, batch, tile, iters, compile=False)
        row["infer_tiles_s"] = round(eager, 1)
        if cuda:  # inductor needs a C compiler on the CPU; on the GPU it is the configuration worth knowing
            compiled, first = ensemble_tiles_per_s(manifest, gpus, batch, tile, iters, compile=True)
            row.update(infer_compiled_tiles_s=round(compiled, 1), compile_s=round(first, 1),
                       compile_speedup=round(compiled / eager, 2))
        print(f"# RUEL-5 fused: {row['infer_tiles_s']} tiles/s", file=sys.stderr)

    if "segment" not in args.skip or "train" not in args.skip:
        from minseg.runtime import init_ray

        init_ray()
    if "segment" not in args.skip:
        side = 1024 if args.smoke else args.slide
        slide = os.path.join(work, "slide.tif")
        repeated_tile_slide(slide, side)
        cpus = 0.5 if args.smoke else 2.0
        row["slide"] = side
        row["segment_1actor_tiles_s"] = round(
            segment_tiles_per_s(manifest, slide, os.path.join(work, "seg1"), 1, gpus, batch, cpus), 1)
        row["segment_2actors_half_gpu_tiles_s"] = round(
            segment_tiles_per_s(manifest, slide, os.path.join(work, "seg2"), 2, gpus / 2, batch, cpus), 1)
        print(f"# pipeline: {row['segment_1actor_tiles_s']} tiles/s with one actor, "
              f"{row['segment_2actors_half_gpu_tiles_s']} with two on half a GPU each", file=sys.stderr)

    if "train" not in args.skip:
        from train_throughput import run

        from minseg.synth.config import SectionsSynth
        from minseg.synth.dataset import write_section_dataset

        count = 4 if args.smoke else 64
        write_section_dataset(f"{work}/sections", SectionsSynth(count=count, height=tile * 2, width=tile * 2),
                              seed=3, task_cpus=0.25)
        packed = args.train_members if not args.smoke else 2
        common = dict(model="res_unet", model_options=options, batch_size=4 if args.smoke else args.train_batch,
                      cpus_per_worker=0.25 if args.smoke else 0.5, task_cpus=0.25)  # CPUs left for data
        alone = run(f"{work}/sections", f"{work}/runs", "alone", 1, 2, tile, True, gpus_per_worker=gpus, **common)
        together = run(f"{work}/sections", f"{work}/runs", "packed", packed, 2, tile, True,
                       gpus_per_worker=gpus / packed, **common)
        per_member = [r["tiles_per_s"] for r in together]
        row.update(train_members=packed, train_batch=common["batch_size"],
                   train_alone_tiles_s=round(alone[0]["tiles_per_s"], 1),
                   train_packed_total_tiles_s=round(float(np.sum(per_member)), 1),
                   train_packed_min_member_tiles_s=round(float(np.min(per_member)), 1),
                   train_packed_over_alone=round(float(np.sum(per_member)) / alone[0]["tiles_per_s"], 2),
                   data_wait_alone=round(alone[0]["data_wait_fraction"], 3),
                   data_wait_packed=round(float(np.mean([r["data_wait_fraction"] for r in together])), 3),
                   train_packed_wall_s=round(max(r["wall_s"] for r in together), 1))
        print(f"# training: one member {row['train_alone_tiles_s']} tiles/s; {packed} packed on one GPU "
              f"{row['train_packed_total_tiles_s']} tiles/s together; data wait {row['data_wait_alone']:.0%} / "
              f"{row['data_wait_packed']:.0%}", file=sys.stderr)
    emit(row, args.csv)


if __name__ == "__main__":
    main()
