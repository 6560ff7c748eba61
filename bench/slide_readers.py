"""minseg's region reader vs tiffslide vs OpenSlide: same pixels? how fast per tile? which files open?

For every slide under ``../shared/data/slides`` and two made-up photometric cases
(MinIsWhite grey and a palette TIFF, tiled), at every pyramid level each reader opens,
it reads the same random regions with each reader and compares them with minseg's
(RGB uint8 as a viewer shows them; OpenSlide and tiffslide give RGBA, alpha dropped), then
times ``--regions`` random 512² reads at level 0 (a fresh reader per slide, warm cache
excluded by distinct regions).

    pip install tiffslide openslide-bin openslide-python
    python bench/slide_readers.py --csv bench/results/slide_readers.csv

Rows: slide, reader, opened (or the error), levels, identical_regions / compared, max_abs_diff,
ms_per_512_tile.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import emit  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "slides")


def made_up_slides(folder: str) -> list[str]:
    import tifffile

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (2048, 3072), dtype=np.uint8)
    white = os.path.join(folder, "miniswhite.tif")
    tifffile.imwrite(white, grey, tile=(256, 256), photometric="miniswhite", compression="zlib")
    colormap = (rng.integers(0, 65535, (3, 256))).astype(np.uint16)
    palette = os.path.join(folder, "palette.tif")
    tifffile.imwrite(palette, grey, tile=(256, 256), photometric="palette", colormap=colormap, compression="zlib")
    return [white, palette]


class Minseg:
    name = "minseg"

    def __init__(self, path):
        from minseg.io.slides import Slide

        self.slide = Slide(path)
        self.levels = list(self.slide.info.levels)

    def read(self, level, y, x, h, w):
        return self.slide.read_region(y, x, h, w, level)

    def close(self):
        self.slide.close()


class OpenSlideAPI:
    """tiffslide and OpenSlide share one API: level dimensions (w, h), level-0 locations, RGBA regions."""

    def __init__(self, name, opener, path):
        self.name, self.slide = name, opener(path)
        self.levels = [(h, w) for w, h in self.slide.level_dimensions]
        self.down = self.slide.level_downsamples

    def read(self, level, y, x, h, w):
        location = (int(round(x * self.down[level])), int(round(y * self.down[level])))
        return np.asarray(self.slide.read_region(location, level, (w, h)).convert("RGB"))

    def close(self):
        self.slide.close()


def tiffslide_reader(path):
    import tiffslide

    return OpenSlideAPI("tiffslide", tiffslide.TiffSlide, path)


def openslide_reader(path):
    import openslide

    return OpenSlideAPI("openslide", openslide.OpenSlide, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=40, help="timed 512² reads per slide and reader")
    parser.add_argument("--compare", type=int, default=6, help="random regions compared per level")
    parser.add_argument("--csv")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="minseg-readers-")
    slides = sorted(os.path.join(SHARED, n) for n in os.listdir(SHARED)) + made_up_slides(work)
    for path in slides:
        reference = Minseg(path)
        for name, kind in (("minseg", Minseg), ("tiffslide", tiffslide_reader), ("openslide", openslide_reader)):
            row = {"slide": os.path.basename(path), "reader": name}
            try:
                reader = kind(path)
            except Exception as exc:  # a reader that cannot open the file is a result, not a crash
                emit({**row, "opened": f"no: {type(exc).__name__}: {str(exc)[:80]}"}, args.csv)
                continue
            rng = np.random.default_rng(1)
            same = compared = 0
            worst = 0
            for level, (height, width) in enumerate(reference.levels):
                if level >= len(reader.levels) or reader.levels[level] != (height, width):
                    continue
                for _ in range(args.compare):
                    h, w = min(256, height), min(256, width)
                    y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                    ours, theirs = reference.read(level, y, x, h, w), reader.read(level, y, x, h, w)
                    difference = int(np.abs(ours.astype(int) - theirs.astype(int)).max())
                    same += difference == 0
                    compared += 1
                    worst = max(worst, difference)
            height, width = reader.levels[0]
            side = min(512, height, width)
            started = time.perf_counter()
            for _ in range(args.regions):
                y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                reader.read(0, y, x, side, side)
            per_tile = (time.perf_counter() - started) / args.regions * 1000
            reader.close()
            emit({**row, "opened": "yes", "levels": len(reader.levels), "identical_regions": same,
                  "compared": compared, "max_abs_diff": worst, "tile_px": side,
                  "ms_per_tile": round(per_tile, 2)}, args.csv)
        reference.close()


if __name__ == "__main__":
    main()
