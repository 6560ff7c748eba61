"""One slide's outputs: label and uncertainty pyramids, preview, statistics, published atomically.

Everything is written into a local staging folder while tiles stream in. Publishing
is all-or-nothing: locally the folder is renamed into place; on S3 every file is
uploaded (multipart when large) and ``summary.json`` goes last, so a slide counts as
done exactly when its summary exists.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid

import numpy as np

from minseg.data.classmap import default_color
from minseg.enums import PreviewFormat
from minseg.inference.grains import GrainCounter, grain_statistics
from minseg.io.storage import Storage, join_uri, parse_uri, process_umask
from minseg.io.tiff import PyramidSink, PyramidSpec

LABELS, UNCERTAINTY, SUMMARY = "labels.tif", "uncertainty.tif", "summary.json"


def class_colours(classes: list[dict]) -> np.ndarray:
    """(C, 3) uint8: the class map's colours, the class maps' default palette where it has none."""
    colours = [entry.get("color") or default_color(index) for index, entry in enumerate(classes)]
    return np.asarray(colours, np.uint8).reshape(-1, 3)


def palette_colormap(colours: np.ndarray) -> np.ndarray:
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, : len(colours)] = colours.T.astype(np.uint16) * 257
    return colormap


def preview_stride(height: int, width: int, max_side: int) -> int:
    """Every how many pixels the preview samples the slide, so that it fits ``max_side``."""
    return max(1, math.ceil(max(height, width) / max_side))


def preview_sample(tile: np.ndarray, y: int, x: int, stride: int) -> np.ndarray:
    """The pixels of a tile at (y, x) that fall on the preview's grid (global multiples of ``stride``)."""
    return np.ascontiguousarray(tile[(-y) % stride :: stride, (-x) % stride :: stride])


class PreviewCanvas:
    """The slide and its labels every ``stride`` pixels, for an overlay of at most ``max_side``."""

    def __init__(self, height: int, width: int, max_side: int):
        self.stride = preview_stride(height, width, max_side)
        self.height, self.width = height, width
        shape = (math.ceil(height / self.stride), math.ceil(width / self.stride))
        self.image = np.zeros(shape + (3,), np.uint8)
        self.labels = np.zeros(shape, np.uint8)

    def add_thumbnail(self, y: int, x: int, thumbnail: np.ndarray) -> None:
        """Place ``preview_sample(tile, y, x, stride)`` of a tile at (y, x)."""
        row, col = -(-y // self.stride), -(-x // self.stride)  # the first grid point at or after (y, x)
        rows = min(thumbnail.shape[0], self.image.shape[0] - row)
        cols = min(thumbnail.shape[1], self.image.shape[1] - col)
        if rows > 0 and cols > 0:
            self.image[row : row + rows, col : col + cols] = thumbnail[:rows, :cols]

    def add_labels(self, top: int, left: int, labels: np.ndarray) -> None:
        picked = preview_sample(labels, top, left, self.stride)
        row, col = -(-top // self.stride), -(-left // self.stride)
        self.labels[row : row + picked.shape[0], col : col + picked.shape[1]] = picked

    def render(self, colours: np.ndarray, names: list[str], area_percent: list[float], alpha: float):
        """An RGB PIL image: the overlay with a legend (class colour, name, area %) on the right."""
        from PIL import Image, ImageDraw, ImageFont

        opacity = np.uint16(round(alpha * 255))  # integer blending: a 2048^2 preview in float64 would take 100 MB
        overlay = (self.image * (255 - opacity) + colours[self.labels] * opacity + 127) // 255
        overlay = overlay.astype(np.uint8)
        size = max(12, min(40, overlay.shape[0] // 45))
        font = ImageFont.load_default(size=size)
        line = int(size * 1.5)
        legend_width = 3 * size + max(int(font.getlength(f"{n}  {p:5.1f} %")) for n, p in zip(names, area_percent)) + 10
        height = max(overlay.shape[0], line * (len(names) + 2))
        canvas = Image.new("RGB", (overlay.shape[1] + legend_width, height), (255, 255, 255))
        canvas.paste(Image.fromarray(overlay), (0, 0))
        draw = ImageDraw.Draw(canvas)
        left = overlay.shape[1] + 10
        draw.text((left, 6), "class  area", fill=(0, 0, 0), font=font)
        for index, (name, percent) in enumerate(zip(names, area_percent)):
            top = 6 + line * (index + 1)
            draw.rectangle([left, top + 2, left + size, top + size + 2], fill=tuple(int(v) for v in colours[index]),
                           outline=(0, 0, 0))
            draw.text((left + 2 * size, top), f"{name}  {percent:5.1f} %", fill=(0, 0, 0), font=font)
        return canvas


class SlideOutputs:
    """Consumes finished output tiles of one slide; ``finish`` publishes, ``discard`` leaves nothing."""

    def __init__(self, plan, classes: dict, settings, staging_root: str, metadata: dict):
        self.plan, self.settings = plan, settings
        self.class_docs = classes["classes"]
        self.names = [c["name"] for c in self.class_docs]
        self.colours = class_colours(self.class_docs)
        os.makedirs(staging_root, exist_ok=True)
        self.staging = tempfile.mkdtemp(prefix=f".{plan.slide_id}.", suffix=".partial", dir=staging_root)
        os.chmod(self.staging, 0o777 & ~process_umask())  # mkdtemp makes 0700; the published folder follows the umask
        height, width = plan.height, plan.width
        tile = settings.output_tile
        label_meta = {**metadata, "classes": [{"id": i, "name": n, "color": [int(v) for v in self.colours[i]]}
                                              for i, n in enumerate(self.names)]}
        self.sink = PyramidSink([
            (os.path.join(self.staging, LABELS), PyramidSpec(
                height, width, 1, tile=tile, compression=settings.compression, reduce="nearest",
                metadata=label_meta, colormap=palette_colormap(self.colours))),
            (os.path.join(self.staging, UNCERTAINTY), PyramidSpec(
                height, width, 1, tile=tile, compression=settings.compression, reduce="mean",
                metadata={**metadata, "uncertainty": plan.uncertainty, "scale": "0..255 = none..maximal"})),
        ])
        self.grains = GrainCounter(len(self.names), width, settings.connectivity)
        self.preview = PreviewCanvas(height, width, settings.preview_max_side)
        self.uncertainty_sum = 0

    def add_tile(self, top: int, left: int, labels: np.ndarray, uncertainty: np.ndarray) -> None:
        """One finished output tile; tiles come in row-major order."""
        self.sink.put_tile([labels, uncertainty])
        self.uncertainty_sum += int(uncertainty.sum(dtype=np.int64))
        self.grains.add_tile(top, left, labels)
        self.preview.add_labels(top, left, labels)

    def finish(self, summary: dict, storage: Storage, target_uri: str) -> dict:
        """Close the pyramids, write preview + summary, publish all of it; returns the summary."""
        self.sink.close()
        counts = self.grains.class_pixels
        total = max(1, int(counts.sum()))
        area = [100.0 * c / total for c in counts]
        preview_name = f"preview.{PreviewFormat(self.settings.preview_format).value}"
        image = self.preview.render(self.colours, self.names, area, self.settings.preview_alpha)
        image.save(os.path.join(self.staging, preview_name), quality=90)
        areas = self.grains.grain_areas()
        pixel_size = self.plan.pixel_size_um
        summary.update(
            modal_mineralogy={n: {"pixels": int(c), "area_percent": round(a, 4)}
                              for n, c, a in zip(self.names, counts, area)},
            grains={n: grain_statistics(areas[i], self.settings.min_grain_px, pixel_size)
                    for i, n in enumerate(self.names)},
            mean_uncertainty=round(self.uncertainty_sum / total / 255.0, 5),
            files={"labels": LABELS, "uncertainty": UNCERTAINTY, "preview": preview_name, "summary": SUMMARY},
        )
        with open(os.path.join(self.staging, SUMMARY), "w") as handle:
            json.dump(summary, handle, indent=2)
        publish_folder(self.staging, storage, target_uri, order=[LABELS, UNCERTAINTY, preview_name, SUMMARY])
        return summary

    def discard(self) -> None:
        self.sink.abort()
        shutil.rmtree(self.staging, ignore_errors=True)


def publish_folder(folder: str, storage: Storage, target_uri: str, order: list[str]) -> None:
    """Move a finished staging folder to ``target_uri``: a rename locally, uploads (last file last) on S3."""
    location = parse_uri(target_uri)
    try:
        if location.is_s3:
            storage.delete_prefix(target_uri.rstrip("/") + "/")  # stale outputs of an older ensemble
            for name in order:
                storage.upload_file(os.path.join(folder, name), join_uri(target_uri, name))
            return
        target = location.path
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        old = None
        if os.path.exists(target):
            old = f"{target}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(folder, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(folder)


def read_summary(storage: Storage, slide_uri: str) -> dict | None:
    try:
        return json.loads(storage.read_text(join_uri(slide_uri, SUMMARY)))
    except (OSError, ValueError):  # missing, unreadable or not JSON: not a finished slide
        return None

