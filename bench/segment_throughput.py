"""Segmentation throughput on one synthetic slide, three ways, measured in this one run:

1. the Ray pipeline (``segment_slides``: tile-read tasks -> ensemble actor pool -> stitching -> outputs);
2. the same work in one plain process (same reader, predictor, stitcher and writers, no Ray): Ray's overhead;
3. MONAI's ``sliding_window_inference`` with the same model, tile, overlap and gaussian blending on the
   slide loaded whole into memory (prediction and argmax only: no reading, no outputs), if MONAI is installed
   (``pip install -e '.[bench]'``; it needs no torchvision).

    python bench/segment_throughput.py [--size 4096] [--tile 256] [--overlap 64] [--actors 2] \
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
from _common import emit, untrained_ensemble  # noqa: E402

MEMBERS = [("halfunet", "half_unet", {"width": 0.25})]


def ray_pipeline(manifest: str, slide: str, out: str, args) -> float:
    from minseg.config.schema import MinsegConfig
    from minseg.inference.config import SegmentSettings
    from minseg.inference.segment import segment_slides

    config = MinsegConfig()
    config.segment = SegmentSettings(manifest_uri=manifest, slides=[slide], output_uri=out, actors=args.actors,
                                     cpus_per_actor=max(0.25, (args.cpus - 0.5) / args.actors),
                                     batch_size=args.batch_size, force=True)
    started = time.perf_counter()
    result = segment_slides(config)
    assert result.done, result.failed
    return time.perf_counter() - started


def single_process(manifest_uri: str, slide: str, out: str, args) -> float:
    """The pipeline's own pieces, called in a loop in this process."""
    from minseg.ensemble.manifest import load_manifest
    from minseg.enums import Precision
    from minseg.inference.config import SegmentSettings
    from minseg.inference.outputs import SlideOutputs
    from minseg.inference.segment import EnsemblePredictor, plan_slide, read_tiles, tile_chunks
    from minseg.ensemble.sliding import mean_fill
    from minseg.inference.stitch import Stitcher
    from minseg.io.storage import Storage

    storage = Storage()
    manifest = load_manifest(manifest_uri, storage)
    settings = SegmentSettings(batch_size=args.batch_size)
    started = time.perf_counter()
    plan = plan_slide(slide, "slide", manifest, settings, storage, out)
    predictor = EnsemblePredictor(manifest, storage, args.batch_size, Precision.FP32, 0)
    outputs = SlideOutputs(plan, manifest.classes, settings, os.path.join(out, ".staging"), {})
    stitcher = Stitcher(plan.grid, manifest.num_classes, plan.uncertainty,
                        settings.output_tile, outputs.add_tile)
    fill = mean_fill(manifest.normalization["mean"]).tolist()
    chunks = tile_chunks(plan, args.batch_size)
    for chunk in chunks:
        tiles = read_tiles({"slide": [chunk["slide"]], "tiles": [chunk["tiles"]]}, {"slide": plan}, storage, fill)
        scored = predictor(tiles)
        for i in range(len(scored["row"])):
            stitcher.add(int(scored["row"][i]), int(scored["col"][i]), scored["scores"][i])
    assert stitcher.complete
    outputs.finish({}, storage, os.path.join(out, "slide"))
    return time.perf_counter() - started


def monai_window(manifest_uri: str, slide: str, args) -> float | None:
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

    manifest = load_manifest(manifest_uri)
    model = load_member_models(manifest, Storage())[0]
    with Slide(slide) as source:
        image = source.read_region(0, 0, *source.info.levels[0])
    started = time.perf_counter()
    inputs = normalise(image[None], manifest.normalization["mean"], manifest.normalization["std"], "cpu")
    with torch.no_grad():
        probabilities = sliding_window_inference(
            inputs, roi_size=(args.tile, args.tile), sw_batch_size=args.batch_size,
            predictor=lambda x: torch.softmax(model(x), dim=1), overlap=args.overlap / args.tile, mode="gaussian")
        probabilities.argmax(dim=1)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--csv")
    args = parser.parse_args()

    from minseg.synth.config import SlideSynth
    from minseg.ensemble.sliding import TileGrid
    from minseg.runtime import init_ray
    from minseg.synth.slide import write_synthetic_slide

    work = tempfile.mkdtemp(prefix="minseg-bench-")
    slide = os.path.join(work, "slide.tif")
    write_synthetic_slide(slide, os.path.join(work, "mask.tif"), SlideSynth(height=args.size, width=args.size))
    manifest = untrained_ensemble(os.path.join(work, "ensemble"), MEMBERS, args.tile, args.overlap)
    tiles = len(TileGrid(args.size, args.size, args.tile, args.overlap))
    init_ray()

    ray_s = ray_pipeline(manifest, slide, os.path.join(work, "ray"), args)
    loop_s = single_process(manifest, slide, os.path.join(work, "loop"), args)
    monai_s = monai_window(manifest, slide, args)
    mpix = args.size**2 / 1e6
    row = {"date": time.strftime("%Y-%m-%d"), "size": args.size, "tile": args.tile, "overlap": args.overlap,
           "tiles": tiles, "model": MEMBERS[0][1], "actors": args.actors, "cpus": args.cpus,
           "ray_tiles_s": round(tiles / ray_s, 2), "loop_tiles_s": round(tiles / loop_s, 2),
           "monai_tiles_s": round(tiles / monai_s, 2) if monai_s else "",
           "ray_mpix_s": round(mpix / ray_s, 3), "loop_mpix_s": round(mpix / loop_s, 3),
           "monai_mpix_s": round(mpix / monai_s, 3) if monai_s else "",
           "ray_vs_loop": round(loop_s / ray_s, 2), "ray_vs_monai": round(monai_s / ray_s, 2) if monai_s else ""}
    emit(row, args.csv)
    print(f"# {tiles} tiles of {args.tile} px: Ray pipeline {row['ray_tiles_s']} tiles/s, one process "
          f"{row['loop_tiles_s']} tiles/s (Ray/loop {row['ray_vs_loop']}x)"
          + (f", MONAI sliding_window_inference {row['monai_tiles_s']} tiles/s (Ray/MONAI {row['ray_vs_monai']}x)"
             if monai_s else ""))


if __name__ == "__main__":
    main()
