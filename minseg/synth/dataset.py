"""Synthetic training sets of polished-section photos with masks, rendered on Ray Data.

Layout (the paired-folder layout of LumenStone): ``images/<stem>.<ext>``,
``masks/<stem>.png`` (uint8 class ids), ``classes.json`` (names, colours, codes) and
``dataset.json`` (per-class pixel share and particle counts).
"""

from __future__ import annotations

import io

import numpy as np

from minseg.synth.config import SectionsSynth
from minseg.enums import ImageFormat
from minseg.errors import InputError
from minseg.io.storage import Storage, join_uri
from minseg.logs import Progress, get_logger, log_event
from minseg.synth.minerals import CLASS_NAMES, class_map_document
from minseg.synth.sections import render_section

log = get_logger("synth.dataset")


def item_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, index]).generate_state(1)[0])


def encode_image(image: np.ndarray, image_format: ImageFormat) -> bytes:
    buffer = io.BytesIO()
    if image_format is ImageFormat.TIFF:
        import tifffile

        tifffile.imwrite(buffer, image, compression="zlib", photometric="rgb" if image.ndim == 3 else "minisblack")
    else:
        from PIL import Image

        options = {"quality": 95} if image_format is ImageFormat.JPEG else {}
        Image.fromarray(image).save(buffer, format="JPEG" if image_format is ImageFormat.JPEG else "PNG", **options)
    return buffer.getvalue()


def render_item(index: int, output_uri: str, settings: SectionsSynth, seed: int, storage: Storage) -> dict:
    """Render and write one image/mask pair; returns its class statistics."""
    from scipy import ndimage

    image, mask = render_section(item_seed(seed, index), settings.height, settings.width, settings.grain_scale)
    stem = f"section_{index:05d}"
    image_format = ImageFormat(settings.image_format)
    storage.write_bytes(join_uri(output_uri, "images", f"{stem}.{image_format.value}"), encode_image(image, image_format))
    storage.write_bytes(join_uri(output_uri, "masks", f"{stem}.png"), encode_image(mask, ImageFormat.PNG))
    pixels = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
    particles = [int(ndimage.label(mask == c)[1]) if pixels[c] else 0 for c in range(len(CLASS_NAMES))]
    return {"stem": stem, "pixels": pixels.tolist(), "particles": particles}


def write_section_dataset(
    output_uri: str,
    settings: SectionsSynth,
    seed: int = 0,
    storage: Storage | None = None,
    task_cpus: float = 0.5,
) -> dict:
    """Render ``settings.count`` pairs as Ray Data tasks and write the dataset's metadata; the ``images/`` and
    ``masks/`` of an earlier dataset in ``output_uri`` are removed first."""
    import ray

    storage = storage or Storage()
    # an earlier, larger dataset's pairs beyond this count would be trained on as if they were this one's; only a
    # folder synth wrote (its dataset.json) is cleared, never someone's own images
    held = [f for f in ("images", "masks") if any(True for _ in storage.list(join_uri(output_uri, f) + "/"))]
    if held and not storage.exists(join_uri(output_uri, "dataset.json")):
        raise InputError(f"synth: {output_uri} already holds {' and '.join(f + '/' for f in held)} that synth did not "
                         "write (no dataset.json): choose another --out")
    # the record first: a run cut short leaves its folders recognised as synth's (rewritten by the next run)
    storage.write_json(join_uri(output_uri, "dataset.json"), {"status": "incomplete"})
    removed = sum(storage.delete_prefix(join_uri(output_uri, folder) + "/") for folder in held)
    if removed:
        log_event(log, "synth.sections.previous_removed", output=output_uri, files=removed)
    rendered = ray.data.range(settings.count, override_num_blocks=min(settings.count, 64)).map(
        lambda row: render_item(int(row["id"]), output_uri, settings, seed, storage),
        num_cpus=task_cpus,
    )
    rows = []
    with Progress(settings.count, "synth sections", unit="images") as progress:
        for row in rendered.iter_rows():
            rows.append(row)
            progress.advance()
    rows.sort(key=lambda row: row["stem"])
    pixels = np.sum([row["pixels"] for row in rows], axis=0)
    particles = np.sum([row["particles"] for row in rows], axis=0)
    summary = {
        "images": len(rows),
        "size": [settings.height, settings.width],
        "seed": seed,
        "classes": {
            name: {"pixel_share": round(float(pixels[c] / pixels.sum()), 5), "particles": int(particles[c])}
            for c, name in enumerate(CLASS_NAMES)
        },
    }
    storage.write_json(join_uri(output_uri, "classes.json"), class_map_document())
    storage.write_json(join_uri(output_uri, "dataset.json"), summary)
    log_event(log, "synth.sections.done", images=len(rows), output=output_uri)
    return summary
