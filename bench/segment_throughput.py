"""Segmentation throughput on a batch of synthetic slides, three ways, measured in this one run:

1. the Ray block pipeline (``segment_slides``: block-read tasks -> ensemble actors that blend and write
   OME-Zarr chunks -> a finishing task per slide); the driver's received bytes per tile are reported;
2. the same work in one plain process: each slide as one block (no halo recomputed), the same reader,
   predictor, region stitcher, zarr writes and finishing step, torch using every core; no Ray;
3. MONAI's ``sliding_window_inference`` with the same model, tile, overlap and gaussian blending on each
   slide loaded whole into memory (prediction and argmax only: no reading, no outputs), if MONAI is installed
   (``pip install -e '.[bench]'``; it needs no torchvision).

All three include their start-up (loading the model; for Ray, starting the actors, ~5-9 s on 2 busy
cores). ``--slides 1`` shows a single slide's latency, where that start-up weighs most; a batch shows the
throughput a survey run gets (slides finish while the next ones' blocks are predicted).

    python bench/segment_throughput.py [--slides 4] [--size 4096] [--tile 256] [--overlap 64] [--actors 2] \
        [--csv bench/results/segment_throughput.csv]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, synthetic_slides, untrained_ensemble  # noqa: E402

MEMBERS = [("halfunet", "half_unet", {"width": 0.25})]


def ray_pipeline(manifest: str, slides: list[str], out: str, args) -> tuple[float, object]:
    from minseg.config.schema import MinsegConfig
    from minseg.inference.config import SegmentSettings
    from minseg.inference.segment import segment_slides

    config = MinsegConfig()
    config.segment = SegmentSettings(manifest_uri=manifest, slides=slides, output_uri=out, actors=args.actors,
                                     cpus_per_actor=max(0.25, (args.cpus - 0.5) / args.actors),
                                     batch_size=args.batch_size, block=args.block, force=True)
    started = time.perf_counter()
    result = segment_slides(config)
    assert result.done, result.failed
    return time.perf_counter() - started, result


def single_process(manifest_uri: str, slides: list[str], out: str, args) -> float:
    """The pipeline's own pieces, in this process, each whole slide as one block (nothing recomputed)."""
    from minseg.ensemble.manifest import load_manifest
    from minseg.data.tiling import mean_fill
    from minseg.inference.blocks import read_block, segment_block, slide_blocks, unpack
    from minseg.inference.config import SegmentSettings
    from minseg.inference.finish import finish_slide, prepare_slide
    from minseg.inference.outputs import ZARR
    from minseg.inference.plan import plan_slide
    from minseg.inference.segment import BlockSegmenter
    from minseg.io.ngff import SegmentationArrays
    from minseg.io.storage import Storage, join_uri

    storage = Storage()
    manifest = load_manifest(manifest_uri, storage)
    whole = -(-args.size // 512) * 512
    settings = SegmentSettings(batch_size=args.batch_size, block=whole, threads_per_actor=args.cpus)
    started = time.perf_counter()
    classes = manifest.classes["classes"]
    plans = {f"slide{i}": plan_slide(slide, f"slide{i}", manifest, settings, storage, out)
             for i, slide in enumerate(slides)}
    segmenter = BlockSegmenter(manifest, storage, settings, plans)
    for plan in plans.values():
        (block,), _ = prepare_slide(plan, settings, storage, classes, manifest.digest(), {})
        data = unpack(read_block(plan, block, storage, mean_fill(manifest.normalization["mean"]),
                                 settings.output_tile))
        arrays = SegmentationArrays(join_uri(plan.output_uri, ZARR), storage)
        segment_block(segmenter.predict, plan, block, data["windows"], data["rows"], data["cols"], data["image"],
                      arrays, storage, settings, segmenter.batch_size, int(data["brightest"]))
        finish_slide(plan, settings, storage, classes, {}, {})
        assert len(slide_blocks(plan.height, plan.width, settings.block)) == 1
    return time.perf_counter() - started


def monai_window(manifest_uri: str, slides: list[str], args) -> float | None:
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        print("# MONAI is not installed (pip install -e '.[bench]'): skipping the MONAI comparison", file=sys.stderr)
        return None
    from minseg.ensemble.manifest import load_manifest
    from minseg.ensemble.runtime import load_member_models
    from minseg.io.slides import Slide
    from minseg.io.storage import Storage
    from minseg.ensemble.sliding import normalise

    started = time.perf_counter()
    manifest = load_manifest(manifest_uri)
    model = load_member_models(manifest, Storage())[0]  # the same model, BatchNorm folded as in the pipeline
    for slide in slides:
        with Slide(slide) as source:
            image = source.read_region(0, 0, *source.info.levels[0])
        inputs = normalise(image[None], manifest.normalization["mean"], manifest.normalization["std"], "cpu")
        with torch.no_grad():
            probabilities = sliding_window_inference(
                inputs, roi_size=(args.tile, args.tile), sw_batch_size=args.batch_size,
                predictor=lambda x: torch.softmax(model(x), dim=1), overlap=args.overlap / args.tile,
                mode="gaussian")
            probabilities.argmax(dim=1)
    return time.perf_counter() - started


def main() -> None:
    from minseg.inference.config import SegmentSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=4, help="slides in the batch (the same slide, copied)")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block", type=int, default=SegmentSettings().block, help="segment.block")
    parser.add_argument("--csv")
    args = parser.parse_args()
    from minseg.ensemble.sliding import TileGrid
    from minseg.runtime import init_ray

    work = tempfile.mkdtemp(prefix="minseg-bench-")
    slides = synthetic_slides(os.path.join(work, "slides"), args.slides, args.size)
    manifest = untrained_ensemble(os.path.join(work, "ensemble"), MEMBERS, args.tile, args.overlap)
    tiles = len(TileGrid(args.size, args.size, args.tile, args.overlap)) * args.slides
    init_ray()

    ray_s, result = ray_pipeline(manifest, slides, os.path.join(work, "ray"), args)
    loop_s = single_process(manifest, slides, os.path.join(work, "loop"), args)
    monai_s = monai_window(manifest, slides, args)
    mpix = args.slides * args.size**2 / 1e6
    row = {"date": time.strftime("%Y-%m-%d"), "slides": args.slides, "size": args.size, "tile": args.tile,
           "overlap": args.overlap,
           "tiles": tiles, "model": MEMBERS[0][1], "actors": args.actors, "cpus": args.cpus,
           "pipeline": "blocks", "block": args.block, "recompute": result.recompute,
           "driver_bytes_per_tile": round(result.driver_bytes / tiles, 1),
           "score_bytes_per_tile": round(result.score_bytes / max(1, result.windows), 1),
           "driver_share_of_scores": round(result.driver_bytes / max(1, result.score_bytes), 6),
           "ray_tiles_s": round(tiles / ray_s, 2), "loop_tiles_s": round(tiles / loop_s, 2),
           "monai_tiles_s": round(tiles / monai_s, 2) if monai_s else "",
           "ray_mpix_s": round(mpix / ray_s, 3), "loop_mpix_s": round(mpix / loop_s, 3),
           "monai_mpix_s": round(mpix / monai_s, 3) if monai_s else "",
           "ray_vs_loop": round(loop_s / ray_s, 2), "ray_vs_monai": round(monai_s / ray_s, 2) if monai_s else "",
           # the same without the pipeline's one-off start (actors importing torch, the first block read)
           "ray_startup_s": round(result.startup_seconds, 2),
           "ray_vs_loop_after_startup": round(loop_s / (ray_s - result.startup_seconds), 2)}
    emit(row, args.csv)
    print(f"# driver received {row['driver_bytes_per_tile']} B per tile "
          f"({100 * row['driver_share_of_scores']:.4f} % of the score bytes); halo recompute {row['recompute']}x")
    print(f"# {args.slides} slides, {tiles} tiles of {args.tile} px: Ray pipeline {row['ray_tiles_s']} tiles/s, one process "
          f"{row['loop_tiles_s']} tiles/s (Ray/loop {row['ray_vs_loop']}x; {row['ray_vs_loop_after_startup']}x after "
          f"the pipeline's {row['ray_startup_s']} s start-up)"
          + (f", MONAI sliding_window_inference {row['monai_tiles_s']} tiles/s (Ray/MONAI {row['ray_vs_monai']}x)"
             if monai_s else ""))


if __name__ == "__main__":
    main()
