"""Peak memory of writing a synthetic whole slide, streamed tile by tile.

Each size runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Prints
one CSV row per size and the ratio of peaks, measured in this one run:

    python bench/synth_slide_memory.py                      # 10000^2 and 40000^2
    python bench/synth_slide_memory.py --sizes 4000 8000    # quicker
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit  # noqa: E402

CHILD = """
import json, resource, sys, time
from minseg.synth.config import SlideSynth
from minseg.synth.slide import write_synthetic_slide
size, out = int(sys.argv[1]), sys.argv[2]
started = time.monotonic()
write_synthetic_slide(out + "/slide.tif", out + "/mask.tif", SlideSynth(height=size, width=size, tile=512, compression="jpeg"))
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.monotonic() - started}))
"""


def measure(size: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="minseg-bench-") as out:
        env = dict(os.environ, MINSEG_NO_PROGRESS="1", MINSEG_LOG_LEVEL="WARNING")
        result = subprocess.run([sys.executable, "-c", CHILD, str(size), out], capture_output=True, text=True, env=env)
        if result.returncode:
            raise SystemExit(result.stderr)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        files = {name: os.path.getsize(os.path.join(out, name)) for name in ("slide.tif", "mask.tif")}
    return {
        "size": f"{size}x{size}",
        "megapixels": round(size * size / 1e6, 1),
        "peak_rss_mib": round(row["peak_rss_mib"], 1),
        "seconds": round(row["seconds"], 1),
        "slide_mib": round(files["slide.tif"] / 2**20, 1),
        "mask_mib": round(files["mask.tif"] / 2**20, 1),
        "raw_rgb_mib": round(size * size * 3 / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000])
    parser.add_argument("--csv", help="also append rows to this CSV file")
    args = parser.parse_args()
    rows = []
    fields = ["size", "megapixels", "peak_rss_mib", "seconds", "slide_mib", "mask_mib", "raw_rgb_mib"]
    writer = csv.DictWriter(sys.stdout, fieldnames=fields)
    writer.writeheader()
    for size in args.sizes:
        row = measure(size)
        rows.append(row)
        writer.writerow(row)
        sys.stdout.flush()
    if len(rows) > 1:
        print(f"# peak RSS ratio {rows[-1]['size']} / {rows[0]['size']}: "
              f"{rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f} "
              f"for {rows[-1]['megapixels'] / rows[0]['megapixels']:.0f}x the pixels")
    for row in rows:  # the CSV's columns are compared, not assumed (emit rewrites it with their union)
        emit({**row, "date": time.strftime("%Y-%m-%d")}, args.csv, echo=False)  # printed above


if __name__ == "__main__":
    main()
