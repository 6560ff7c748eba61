"""Whole-slide synthetic sections: a tiled, pyramidal BigTIFF and its matching mask,
streamed tile by tile (a 40000 x 40000 slide never exists in memory)."""

from __future__ import annotations

import time

from minseg.synth.config import SlideSynth
from minseg.enums import TiffCompression
from minseg.io.storage import Storage
from minseg.io.tiff import PyramidSpec, write_pyramids
from minseg.logs import Progress, get_logger, log_event
from minseg.synth.minerals import class_map_document
from minseg.synth.sections import SectionRenderer

log = get_logger("synth.slide")


def write_synthetic_slide(
    image_uri: str,
    mask_uri: str,
    settings: SlideSynth,
    seed: int = 0,
    storage: Storage | None = None,
) -> dict:
    """Render a slide and its label mask to two pyramidal BigTIFFs; returns a summary."""
    storage = storage or Storage()
    renderer = SectionRenderer(seed=seed, grain_scale=settings.grain_scale)
    tile = settings.tile
    description = {"generator": "minseg.synth.slide", "seed": seed, "grain_scale": settings.grain_scale}
    image_spec = PyramidSpec(
        settings.height, settings.width, channels=3, tile=tile, levels=settings.levels,
        compression=settings.compression, reduce="mean", metadata=description,
    )
    mask_compression = TiffCompression.ZSTD if settings.compression is TiffCompression.JPEG else settings.compression
    mask_spec = PyramidSpec(
        settings.height, settings.width, channels=1, tile=tile, levels=settings.levels,
        compression=mask_compression, reduce="nearest", metadata={**description, **class_map_document()},
    )

    def tile_source(row: int, col: int):
        y0, x0 = row * tile, col * tile
        height, width = min(tile, settings.height - y0), min(tile, settings.width - x0)
        return renderer.render(y0, x0, height, width)

    started = time.monotonic()
    with storage.staged_output(image_uri, ".tif") as image_path, storage.staged_output(mask_uri, ".tif") as mask_path:
        with Progress(image_spec.tile_rows * image_spec.tile_cols, "synth slide", unit="tiles") as progress:
            write_pyramids([(image_path, image_spec), (mask_path, mask_spec)], tile_source, on_tile=progress.advance)
    summary = {
        "image": image_uri,
        "mask": mask_uri,
        "height": settings.height,
        "width": settings.width,
        "tile": tile,
        "levels": image_spec.levels,
        "compression": str(settings.compression),
        "seconds": round(time.monotonic() - started, 2),
    }
    log_event(log, "synth.slide.done", **summary)
    return summary


