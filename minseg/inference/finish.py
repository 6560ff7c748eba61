"""A slide's outputs around its blocks: prepared before the first block, finished after the last.

``prepare_slide`` (driver) creates the empty OME-Zarr and ``.minseg/plan.json``, or, when an
interrupted run of the same ensemble and block plan left them, resumes: blocks whose record
exists are not redone. ``finish_slide`` (a Ray task) merges the block records (the slide's
mineralogy: ``mineralogy.json``, the per-object tables and plots; uncertainty), builds the
pyramid levels no single block could write, renders the preview, exports TIFFs when asked, marks
the zarr complete and writes ``summary.json`` last; then the records are removed. A slide with
finished outputs is redone in its redo folder (``SlidePlan.replaces``), which takes the finished
folder's place only once complete.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from minseg.enums import OutputFormat, PreviewFormat
from minseg.inference.blocks import RECORDS, UNKNOWN, Block, BlockRecord, block_levels, record_uri, slide_blocks
from minseg.inference.config import SegmentSettings
from minseg.inference.outputs import LABELS, SUMMARY, UNCERTAINTY, ZARR, PreviewCanvas, class_colours, \
    palette_colormap, read_summary
from minseg.inference.plan import SlidePlan
from minseg.io.images import BIT_DEPTH
from minseg.io.ngff import PyramidLayout, SegmentationArrays, create_segmentation
from minseg.io.storage import ObjectNotFoundError, Storage, join_uri
from minseg.logs import get_logger, log_event
from minseg.mineralogy.plots import write_plots
from minseg.mineralogy.slide import DOCUMENT, GRAINS_TABLE, PARTICLES_TABLE, SlideMineralogy, staged_tables

log = get_logger("segment")

def layout_of(plan: SlidePlan, settings: SegmentSettings) -> PyramidLayout:
    return PyramidLayout(plan.height, plan.width, settings.output_tile)

BEGUN = f"{RECORDS}/plan.json"  # a slide folder's record until its summary is written: names its source
#: what leaves a slide folder first and enters it last when a redo replaces it (``Storage.replace_folder``): the
#: zarr's root metadata (its ``minseg.status``: complete) and ``summary.json``, the marker of a finished slide
REPLACED_LAST = (f"{ZARR}/zarr.json", SUMMARY)

#: bumped when the fused tile scores change for the same ensemble and slide (``plan_key``)
SCORES_VERSION = 2


def plan_key(plan: SlidePlan, settings: SegmentSettings, ensemble_digest: str) -> dict:
    """What must match for an interrupted slide's blocks (chunks and records) to be reused."""
    return {"ensemble_digest": ensemble_digest, "source": plan.uri, "level": plan.level,
            # the very same source file: a file replaced in place is never resumed into
            "source_shape": [plan.source_height, plan.source_width], "source_identity": list(plan.identity),
            "shape": [plan.height, plan.width], "block": settings.block, "chunk": settings.output_tile,
            "include_image": settings.include_image, "compression": str(settings.compression),
            "uncertainty": str(plan.uncertainty), "record_version": RECORD_VERSION,
            # how tile scores are made: 2 since the vote tie-break under 1e-4 and the 8-view dihedral TTA (a slide
            # interrupted before starts again rather than mixing blocks of both)
            "scores": SCORES_VERSION,
            # what the block records were computed with
            "preview_stride": plan.preview_stride, "mineralogy": plan.measure.key(),
            # the pixels read: absent at the default, as records written before bit depths existed
            **({"bit_depth": plan.read_bit_depth} if plan.read_bit_depth != BIT_DEPTH else {})}


#: the layout of ``.minseg/blocks/*.npz``; records of another layout are never mixed in (2: inner grains as
#: a (class, area) histogram; 3: boundary counts; 4: particles; 5: object geometry and table rows)
RECORD_VERSION = 5


def prepare_slide(plan: SlidePlan, settings: SegmentSettings, storage: Storage, classes: list[dict],
                  ensemble_digest: str, attributes: dict) -> tuple[list[Block], int]:
    """The blocks still to do, and how many were found done by an interrupted run (then resumed).

    A slide folder from another ensemble, level, block plan or source (another file, or the file since replaced) is
    removed first (no mixed outputs).
    """
    key = plan_key(plan, settings, ensemble_digest)
    blocks = slide_blocks(plan.height, plan.width, settings.block)
    plan_uri = join_uri(plan.output_uri, BEGUN)
    try:
        previous = json.loads(storage.read_text(plan_uri))
    except (ObjectNotFoundError, ValueError):
        previous = None
    if previous == key:
        recorded = {info.uri for info in storage.list(join_uri(plan.output_uri, RECORDS, "blocks") + "/")}
        todo = [b for b in blocks if record_uri(plan.output_uri, b) not in recorded]
        return todo, len(blocks) - len(todo)
    # the record names the source first, then the rest goes: a run stopped while emptying the folder (on S3 an
    # earlier run's thousands of chunks) leaves it the slide's, never files no record names (``folders.FolderOwners``)
    storage.write_json(plan_uri, {"source": plan.uri})
    storage.delete_prefix(plan.output_uri.rstrip("/") + "/", keep=(BEGUN,))
    colours = class_colours(classes)
    create_segmentation(join_uri(plan.output_uri, ZARR), storage, layout_of(plan, settings),
                        [c["name"] for c in classes], colours, plan.pixel_size_um, settings.include_image,
                        settings.compression, attributes)
    storage.write_json(plan_uri, key)  # after the zarr exists: resumable from here on
    return blocks, 0

def build_coarse_levels(arrays: SegmentationArrays, layout: PyramidLayout, first: int) -> None:
    """Levels ``first``.. from the level above, in bands of one chunk row (never a whole level in memory)."""
    from minseg.io.tiff import halve

    groups = [(arrays.LABELS, "nearest"), (arrays.UNCERTAINTY, "mean")] + ([("", "mean")] if arrays.has_image else [])
    for level in range(first, layout.levels):
        source_h, source_w = layout.level_shape(level - 1)
        height, _ = layout.level_shape(level)
        for top in range(0, height, layout.chunk):
            bottom = min(height, top + layout.chunk)
            for group, mode in groups:
                band = arrays.read(group, level - 1, 2 * top, min(source_h, 2 * bottom), 0, source_w)
                arrays.write(group, level, top, 0, halve(band, mode))

def export_tiffs(arrays: SegmentationArrays, plan: SlidePlan, settings: SegmentSettings, classes: list[dict],
                 storage: Storage, metadata: dict) -> None:
    """labels.tif and uncertainty.tif (pyramidal BigTIFF, palette + class names) from the zarr's level 0,
    one band of tiles at a time."""
    from minseg.io.tiff import PyramidSink, PyramidSpec

    tile = settings.output_tile
    colours = class_colours(classes)
    label_meta = {**metadata, "classes": [{"id": i, "name": c["name"], "color": [int(v) for v in colours[i]]}
                                          for i, c in enumerate(classes)]}
    with storage.staged_output(join_uri(plan.output_uri, LABELS), ".tif") as labels_path, \
            storage.staged_output(join_uri(plan.output_uri, UNCERTAINTY), ".tif") as uncertainty_path:
        sink = PyramidSink([
            (labels_path, PyramidSpec(plan.height, plan.width, 1, tile=tile, compression=settings.tiff_compression,
                                      reduce="nearest", metadata=label_meta, colormap=palette_colormap(colours),
                                      pixel_size_um=plan.pixel_size_um)),
            (uncertainty_path, PyramidSpec(plan.height, plan.width, 1, tile=tile,
                                           compression=settings.tiff_compression, reduce="mean",
                                           metadata={**metadata, "uncertainty": str(plan.uncertainty),
                                                     "values": "0..255 = none..maximal"},
                                           pixel_size_um=plan.pixel_size_um)),
        ])
        try:
            for top in range(0, plan.height, tile):
                bottom = min(plan.height, top + tile)
                labels = arrays.read(arrays.LABELS, 0, top, bottom, 0, plan.width)
                uncertainty = arrays.read(arrays.UNCERTAINTY, 0, top, bottom, 0, plan.width)
                for left in range(0, plan.width, tile):
                    sink.put_tile([labels[:, left : left + tile], uncertainty[:, left : left + tile]])
        except BaseException:
            sink.abort()
            raise
        sink.close()

class Brightest:
    """A slide's brightest input values, 0..255, gathered from its block records (``BlockRecord.brightest``):
    ``overall`` over every image, ``per_image`` for each image of its scene. Either is None once a record cannot
    say it: one written before they were kept (``UNKNOWN``), or, for ``per_image``, one value over a scene's images
    (a run before they were told apart)."""

    def __init__(self, images: int):
        self.images = images
        self.overall: int | None = 0
        self.per_image: list[int] | None = [0] * images

    def add(self, values: tuple[int, ...]) -> None:
        if self.overall is not None:
            self.overall = None if values == UNKNOWN else max(self.overall, *values)
        if self.per_image is not None:
            self.per_image = list(map(max, self.per_image, values)) if len(values) == self.images else None


def finish_slide(plan: SlidePlan, settings: SegmentSettings, storage: Storage, classes: list[dict],
                 summary: dict, metadata: dict) -> dict:
    """Merge the block records and publish the slide (module doc); returns its summary.

    ``summary`` holds the run's facts (ensemble, timings so far); statistics and files are added. Records are
    read one at a time: their whole objects go straight to the per-object tables, only what crosses blocks stays.

    Raises:
        ObjectNotFoundError: a block record is missing (the slide is not finished).
    """
    done = finished_by_this_run(plan, storage, summary)
    if done is not None:
        return done
    started = time.monotonic()
    names = [c["name"] for c in classes]
    layout = layout_of(plan, settings)
    blocks = slide_blocks(plan.height, plan.width, settings.block)
    arrays = SegmentationArrays(join_uri(plan.output_uri, ZARR), storage)
    build_coarse_levels(arrays, layout, block_levels(settings.block, settings.output_tile, layout.levels))
    if OutputFormat.TIFF in settings.formats:
        export_tiffs(arrays, plan, settings, classes, storage, metadata)

    spec = plan.measure
    preview = PreviewCanvas(plan.height, plan.width, settings.preview_max_side)
    windows = uncertainty_sum = 0
    block_seconds = 0.0
    readings = plan.readings()
    brightest = Brightest(len(readings))
    with staged_tables(spec, plan.height, plan.width, storage, plan.output_uri) as tables:
        measured = SlideMineralogy(spec, plan.height, plan.width, tables)
        for block in blocks:  # one record in memory at a time
            record = BlockRecord.from_bytes(storage.read_bytes(record_uri(plan.output_uri, block)))
            measured.add(record.mineralogy)
            preview.add(record.block.top, record.block.left, record.preview_image, record.preview_labels)
            windows += record.windows
            uncertainty_sum += record.uncertainty_sum
            block_seconds += record.seconds
            brightest.add(record.brightest)
        mineralogy = measured.finish()
    mineralogy["colours"] = class_colours(classes).tolist()
    files = {"zarr": ZARR, "summary": SUMMARY, "mineralogy": DOCUMENT}
    if mineralogy["tables"]:
        files.update(grains=GRAINS_TABLE, **({"particles": PARTICLES_TABLE} if spec.has_particles else {}))
    if spec.settings.plots:
        title = plan.slide_id
        for name in write_plots(mineralogy, storage, plan.output_uri, title):
            files[name.rsplit(".", 1)[0]] = name
    storage.write_json(join_uri(plan.output_uri, DOCUMENT), mineralogy, indent=1)

    counts = np.asarray(mineralogy["tally"]["class_pixels"], np.int64)
    total = max(1, int(counts.sum()))
    area = [100.0 * c / total for c in counts]
    preview_name = f"preview.{PreviewFormat(settings.preview_format).value}"
    image = preview.render(class_colours(classes), names, area, settings.preview_alpha)
    with storage.staged_output(join_uri(plan.output_uri, preview_name), f".{preview_name}") as path:
        # zlib level 2: a 2048² preview encodes ~4x faster than at the default 6 (0.33 s vs 1.4 s), ~13 % more bytes
        image.save(path, format="PNG" if settings.preview_format is PreviewFormat.PNG else "JPEG", quality=90,
                   compress_level=2)
    files["preview"] = preview_name
    if OutputFormat.TIFF in settings.formats:
        files.update(labels=LABELS, uncertainty=UNCERTAINTY)
    summary = {
        **summary,
        "blocks": len(blocks), "block": settings.block,
        # windows predicted over windows in the slide's grid: the price of blending where we predict
        "recompute": round(windows / max(1, len(plan.grid)), 4),
        "block_seconds": round(block_seconds, 2),
        # the headline of mineralogy.json (which also has liberation by size fraction and the raw tallies)
        **{key: mineralogy[key] for key in HEADLINE},
        "mean_uncertainty": round(uncertainty_sum / total / 255.0, 5),
        "brightest": brightest.overall,  # the input's brightest value, 0..255 (segment.slide_dark when at most DARK)
        "measured_with": spec.key(),  # a re-run with other mineralogy settings says these numbers are not its
        "files": files,
    }
    if len(readings) > 1:  # one image of a scene read nearly black is said too (``segment.warn_if_dark``)
        summary["images"] = {
            image.name: {"brightest": None if brightest.per_image is None else brightest.per_image[index],
                         "stored_bits": image.stored_bits, "bit_depth": image.read_bits, "file": image.uri}
            for index, image in enumerate(readings)}
        summary["scene_files"] = len(plan.channels)  # 1: one multi-band file holds every image's channels
    summary["finish_seconds"] = round(time.monotonic() - started, 2)
    summary["wall_seconds"] = round(summary.get("wall_seconds", 0.0) + summary["finish_seconds"], 2)
    summary["active_seconds"] = round(summary.get("active_seconds", 0.0) + summary["finish_seconds"], 2)
    arrays.mark("complete", summary=SUMMARY)
    storage.write_json(join_uri(plan.output_uri, SUMMARY), summary)
    storage.delete_prefix(join_uri(plan.output_uri, RECORDS) + "/")  # the summary is the proof now
    if plan.replaces:  # a redo, finished: its outputs take the place of the earlier run's
        storage.replace_folder(plan.output_uri, plan.replaces, REPLACED_LAST)
    log_event(log, "segment.slide_done", slide=plan.slide_id, active_seconds=summary["active_seconds"],
              wall_seconds=summary["wall_seconds"], output=plan.replaces or plan.output_uri)
    return summary


#: the mineralogy keys a slide's summary.json repeats from its mineralogy.json
HEADLINE = ("modal_mineralogy", "densities_missing", "association", "particles", "liberation", "grains")


def finished_by_this_run(plan: SlidePlan, storage: Storage, summary: dict) -> dict | None:
    """The summary of a slide this very run finished already (a retried ``finish_slide``: its first try died after
    the block records were gone), its redo moved into place now if that was cut short; None otherwise."""
    def ours(document: dict | None) -> bool:
        return document is not None and all(document.get(k) == summary.get(k)
                                            for k in ("created", "ensemble_digest", "uri"))

    done = read_summary(storage, plan.replaces or plan.output_uri)
    if ours(done):
        return done
    if plan.replaces and ours(staged := read_summary(storage, plan.output_uri)):
        storage.replace_folder(plan.output_uri, plan.replaces, REPLACED_LAST)
        return staged
    return None


def discard_slide(plan: SlidePlan, storage: Storage) -> None:
    """A failed slide leaves nothing behind (no partial output looks complete, none looks resumable); a failed redo
    leaves the earlier run's finished outputs (``plan.replaces``) as they were. A redo finished but not moved into
    place (its replacement failed half-way, the earlier outputs partly gone) is kept: the next run into the output
    moves it (``Storage.finish_replacements``)."""
    try:
        finished_not_moved = plan.replaces and read_summary(storage, plan.replaces) is None \
            and read_summary(storage, plan.output_uri) is not None
        if not finished_not_moved:
            # locally, the emptied folders go too; the record last (a stop half-way leaves the folder the slide's)
            storage.delete_prefix(plan.output_uri.rstrip("/") + "/", last=(BEGUN,))
    except OSError:
        log_event(log, "segment.discard_failed", logging.WARNING, slide=plan.slide_id, output=plan.output_uri)
