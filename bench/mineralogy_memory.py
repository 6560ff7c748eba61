"""Peak memory of measuring a slide's mineralogy: a 40000 x 40000 label map vs a 10000 x 10000 one.

Each label map is measured by a fresh ``minseg measure`` process (one Ray task per map); the task's peak
private memory (RssAnon, sampled from /proc every 0.25 s) is the per-slide state: one block of labels and its
labelling, plus the objects crossing blocks and the distinct object areas. It should stay nearly flat while
the pixels grow 16x (target ratio <= 1.25), and the per-object tables stream to parquet. The label maps are
tiled class-id TIFFs built from a few random blob tiles repeated in a scrambled order: grains and particles
of all sizes, many crossing block seams (a 40000² map holds millions of objects).

    python bench/mineralogy_memory.py [--sizes 10000 40000] [--csv bench/results/mineralogy_memory.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, peak_memory  # noqa: E402

CLASSES = ["resin", "pyrite", "chalcopyrite", "sphalerite", "gangue"]


def repeated_label_map(path: str, size: int, tile: int = 512, distinct: int = 16, seed: int = 0) -> None:
    """A size x size tiled class-id TIFF (class names in its metadata, as segment's labels.tif) from a few
    smooth random blob tiles (resin where the field is low), repeated in a scrambled order."""
    from scipy import ndimage

    from minseg.io.tiff import PyramidSpec, write_pyramids

    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(distinct):
        fields = ndimage.gaussian_filter(rng.random((len(CLASSES), tile, tile)), sigma=(0, 4, 4), mode="wrap")
        tiles.append(fields.argmax(0).astype(np.uint8))
    metadata = {"classes": [{"id": i, "name": n} for i, n in enumerate(CLASSES)], "pixel_size_um": 1.0}
    spec = PyramidSpec(size, size, tile=tile, reduce="nearest", metadata=metadata, levels=1)
    write_pyramids([(path, spec)], lambda row, col: (tiles[(row * 7 + col * 13) % distinct],))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs=2, default=[10000, 40000])
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--csv")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="minseg-bench-mineralogy-")
    results = {}
    try:
        for size in args.sizes:
            labels = os.path.join(work, f"map{size}.tif")
            started = time.perf_counter()
            repeated_label_map(labels, size)
            print(f"# wrote a {size}^2 label map in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            out = os.path.join(work, f"out{size}")
            command = [sys.executable, "-m", "minseg", "measure", labels, "--out", out,
                       "--set", f"measure.block={args.block}", "--set", "measure.cpus_per_task=1"]
            results[size] = peak_memory(command, {"task_private": b"ray::_measure_task"})
            document = json.loads(open(os.path.join(out, f"map{size}", "mineralogy.json")).read())
            results[size]["rows"] = document["tables"]["rows"]
            print(f"# {size}^2: task private peak {results[size]['task_private']:.0f} MiB, "
                  f"{results[size]['rows']} table rows, {results[size]['seconds']:.0f} s", file=sys.stderr)
            os.unlink(labels)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = args.sizes
    row = {"date": time.strftime("%Y-%m-%d"), "small": small, "large": large, "block": args.block,
           "task_private_small_mib": round(results[small]["task_private"]),
           "task_private_large_mib": round(results[large]["task_private"]),
           "task_private_ratio": round(results[large]["task_private"] / results[small]["task_private"], 3),
           "grains_small": results[small]["rows"]["grains"], "grains_large": results[large]["rows"]["grains"],
           "particles_small": results[small]["rows"]["particles"],
           "particles_large": results[large]["rows"]["particles"],
           "seconds_small": round(results[small]["seconds"]), "seconds_large": round(results[large]["seconds"]),
           "area_ratio": round((large / small) ** 2, 1)}
    emit(row, args.csv)
    print(f"# {large}^2 / {small}^2 ({row['area_ratio']}x the pixels): measuring task's private peak ratio "
          f"{row['task_private_ratio']} (target <= 1.25)")


if __name__ == "__main__":
    main()
