"""Peak memory of the segmentation job: a 40000 x 40000 slide vs a 10000 x 10000 one (target ratio <= 1.25).

Each slide is segmented by a fresh ``minseg segment`` process (the driver: with the block pipeline
it only plans and counts block-done rows; the actors blend and write, a task finishes each slide).
Sampled from /proc every 0.25 s: the driver's peak private memory (RssAnon: what the job itself
holds) and its peak RSS (VmHWM, which also counts the Ray object-store pages it mapped while reading
results), the largest inference actor's private peak, and the slide-finishing task's private peak.
A cheap untrained member keeps the run short: memory, not accuracy, is measured (its noisy labels
make a great many tiny grains: a worst case for the grain merge). Slides are fast
repeated-tile synthetic BigTIFFs.

    python bench/segment_memory.py [--sizes 10000 40000] [--csv bench/results/segment_memory.csv]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, peak_memory, repeated_tile_slide, untrained_ensemble  # noqa: E402

MEMBERS = [("tiny", "half_unet", {"width": 0.0625})]


def segment(slide: str, manifest: str, out: str, args) -> dict:
    command = [sys.executable, "-m", "minseg", "segment", slide, "--manifest", manifest, "--out", out,
               "--actors", str(args.actors), "--set", f"segment.batch_size={args.batch_size}",
               "--set", f"segment.cpus_per_actor={args.cpus_per_actor}"]
    if args.object_store_mib:
        command += ["--set", f"ray.object_store_mib={args.object_store_mib}"]
    return peak_memory(command, {"actor_private": b"ray::MapWorker(MapBatches(BlockSegmenter",
                                 "finish_private": b"ray::finish_slide"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[10000, 40000])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--object-store-mib", type=int, help="cap the local object store (RSS counts its pages)")
    parser.add_argument("--csv")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="minseg-bench-memory-")
    manifest = untrained_ensemble(os.path.join(work, "ensemble"), MEMBERS, args.tile, args.overlap)
    results = {}
    for size in args.sizes:
        slide = os.path.join(work, f"slide{size}.tif")
        started = time.perf_counter()
        repeated_tile_slide(slide, size)
        print(f"# wrote a {size}^2 slide in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        results[size] = segment(slide, manifest, os.path.join(work, f"out{size}"), args)
        print(f"# {size}^2: driver private peak {results[size]['private']:.0f} MiB (RSS peak "
              f"{results[size]['hwm']:.0f} MiB), largest actor private {results[size]['actor_private']:.0f} MiB, "
              f"finishing task private {results[size]['finish_private']:.0f} MiB, "
              f"{results[size]['seconds']:.0f} s", file=sys.stderr)
        os.unlink(slide)
    small, large = args.sizes
    row = {"date": time.strftime("%Y-%m-%d"), "small": small, "large": large, "tile": args.tile,
           "object_store_mib": args.object_store_mib or "default",
           "driver_private_small_mib": round(results[small]["private"]),
           "driver_private_large_mib": round(results[large]["private"]),
           "driver_private_ratio": round(results[large]["private"] / results[small]["private"], 3),
           "driver_rss_small_mib": round(results[small]["hwm"]), "driver_rss_large_mib": round(results[large]["hwm"]),
           "driver_rss_ratio": round(results[large]["hwm"] / results[small]["hwm"], 3),
           "actor_private_small_mib": round(results[small]["actor_private"]),
           "actor_private_large_mib": round(results[large]["actor_private"]),
           "finish_private_small_mib": round(results[small]["finish_private"]),
           "finish_private_large_mib": round(results[large]["finish_private"]),
           "seconds_small": round(results[small]["seconds"]), "seconds_large": round(results[large]["seconds"]),
           "area_ratio": round((large / small) ** 2, 1)}
    emit(row, args.csv)
    print(f"# {large}^2 / {small}^2 ({row['area_ratio']}x the pixels): driver private peak ratio "
          f"{row['driver_private_ratio']} (target <= 1.25), driver RSS peak ratio {row['driver_rss_ratio']}")


if __name__ == "__main__":
    main()
