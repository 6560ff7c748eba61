"""Bulk whole-slide segmentation: slides → Ray Data tile reads → ensemble actor pool → stitching → storage.

1. Slides are resolved (URIs, globs, a list file), opened once on the driver to plan
   their tile grid, and skipped when complete outputs for the same ensemble exist.
2. Ray Data reads runs of neighbouring tiles (CPU tasks with fractional CPUs; only
   the TIFF tiles or strips a tile touches are read), then a pool of actors, each
   holding the whole ensemble (loaded once), predicts every member, fuses them as
   the manifest says, and returns blendable (C, tile, tile) scores keyed by
   (slide, row, col). Ray Data does not keep order; nothing here relies on it.
3. The driver stitches each slide as its tiles arrive (``stitch.Stitcher``: bounded
   by a row of tiles, not the slide) and streams finished output tiles into the label
   and uncertainty pyramids, the grain counter and the preview, then publishes the
   slide atomically. A slide that fails (unreadable, corrupt tile) goes to the
   failure manifest and leaves no outputs; the others carry on.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from minseg.config.schema import MinsegConfig
from minseg.data.tiling import extract_tile
from minseg.enums import FusionMode, Precision, SlideStatus, Uncertainty
from minseg.ensemble.config import EvaluationSettings, Tiling
from minseg.ensemble.manifest import EnsembleManifest, load_manifest
from minseg.ensemble.runtime import Columns, EnsembleRuntime, Fusion
from minseg.ensemble.sliding import TileGrid, mean_fill
from minseg.errors import InputError
from minseg.inference.config import SegmentSettings
from minseg.inference.outputs import SlideOutputs, preview_sample, preview_stride, read_summary
from minseg.inference.stitch import Stitcher
from minseg.io.slides import SLIDE_SUFFIXES, Slide, SlideCache, SlideError, SlideLimits
from minseg.io.storage import (ObjectNotFoundError, Storage, absolute_uri, glob_uris, has_glob, is_s3, join_uri,
                                 parse_uri)
from minseg.io.tables import csv_text
from minseg.logs import Progress, get_logger, log_event
from minseg.runtime import init_ray, task_options

log = get_logger("segment")


class SegmentInputError(InputError):
    """No slides, or a slide list that cannot be used; the message names the key or file."""


# -- which slides -------------------------------------------------------------


def resolve_slides(settings: SegmentSettings, storage: Storage) -> list[str]:
    """Slide URIs in the order given: literal entries kept (checked when planned), globs expanded."""
    entries = list(settings.slides)
    if settings.slide_list:
        entries += read_slide_list(settings.slide_list, storage)
    uris: list[str] = []
    for entry in entries:
        if not has_glob(entry):
            uris.append(entry if is_s3(entry) else absolute_uri(entry))
            continue
        matches = glob_uris(entry, storage, SLIDE_SUFFIXES)
        if not matches:
            log_event(log, "segment.glob_empty", pattern=entry)
        uris += matches
    unique = list(dict.fromkeys(uris))
    if not unique:
        raise SegmentInputError("segment: no slides given (set segment.slides or segment.slide_list; globs matched nothing)")
    return unique


def read_slide_list(uri: str, storage: Storage) -> list[str]:
    """One URI per line (# comments allowed), or a CSV with a 'uri' column. Relative
    local paths are taken relative to the list's folder."""
    try:
        text = storage.read_text(uri)
    except ObjectNotFoundError:
        raise SegmentInputError(f"segment.slide_list: {uri}: no such file") from None
    lines = [line.strip() for line in text.splitlines()]
    header = next((line for line in lines if line and not line.startswith("#")), "")
    if "," in header or header.lower() == "uri":
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or "uri" not in rows[0]:
            raise SegmentInputError(f"segment.slide_list: {uri}: a CSV slide list needs a 'uri' column")
        entries = [row["uri"].strip() for row in rows if (row.get("uri") or "").strip()]
    else:
        entries = [line for line in lines if line and not line.startswith("#")]
    base = uri.rsplit("/", 1)[0] if is_s3(uri) else os.path.dirname(absolute_uri(uri))
    return [e if is_s3(e) or os.path.isabs(e) or e.startswith("file://") else join_uri(base, e) for e in entries]


def slide_ids(uris: list[str]) -> dict[str, str]:
    """A folder name per slide: its file name without the extension; a hash suffix where names collide."""
    stems = {}
    for uri in uris:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        stem = name.rsplit(".", 1)[0] if "." in name else name
        stems[uri] = re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "slide"
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {uri: stem if counts[stem] == 1 else f"{stem}-{zlib.crc32(uri.encode()):08x}" for uri, stem in stems.items()}


# -- planning -----------------------------------------------------------------


@dataclass
class SlidePlan:
    slide_id: str
    uri: str
    output_uri: str
    format: str
    level: int  # the level the user asked for
    read_level: int  # the level pixels are read from (coarser when the manifest's scale allows)
    source_height: int
    source_width: int
    height: int  # processed (= output) size
    width: int
    factor_y: float  # read-level pixels per processed pixel
    factor_x: float
    tiling: Tiling  # the manifest's, unchanged
    preview_stride: int
    pixel_size_um: float | None
    uncertainty: Uncertainty
    limits: SlideLimits = SlideLimits()

    @property
    def tile(self) -> int:
        return self.tiling.tile

    @property
    def overlap(self) -> int:
        return self.tiling.overlap

    @cached_property
    def grid(self) -> TileGrid:
        return self.tiling.grid(self.height, self.width)


def plan_slide(uri: str, slide_id: str, manifest: EnsembleManifest, settings: SegmentSettings, storage: Storage,
               output_uri: str) -> SlidePlan:
    with Slide(uri, storage, limits=settings.limits.limits()) as slide:
        source_h, source_w = slide.level_shape(settings.level)
        scale = manifest.tiling.scale
        height, width = max(1, round(source_h * scale)), max(1, round(source_w * scale))
        read_level = settings.level
        for level in range(settings.level, len(slide.info.levels)):  # the coarsest level still fine enough
            level_h, level_w = slide.info.levels[level]
            if level_h >= height and level_w >= width:
                read_level = level
        read_h, read_w = slide.info.levels[read_level]
        base_size = slide.info.pixel_size_um
        level0_h = slide.info.levels[0][0]
    if settings.pixel_size_um:
        pixel_size = settings.pixel_size_um
    elif base_size:
        pixel_size = base_size * level0_h / source_h / scale
    else:
        pixel_size = None
    return SlidePlan(
        slide_id=slide_id, uri=uri, output_uri=join_uri(output_uri, slide_id), format=slide.info.format,
        level=settings.level, read_level=read_level, source_height=source_h, source_width=source_w,
        height=height, width=width, factor_y=read_h / height, factor_x=read_w / width,
        tiling=manifest.tiling, preview_stride=preview_stride(height, width, settings.preview_max_side),
        pixel_size_um=pixel_size, uncertainty=resolve_uncertainty(settings.uncertainty, manifest.fusion.mode),
        limits=settings.limits.limits(),
    )


def resolve_uncertainty(kind: Uncertainty, mode: FusionMode) -> Uncertainty:
    if kind is not Uncertainty.AUTO:
        return kind
    return Uncertainty.DISAGREEMENT if FusionMode(mode) in (FusionMode.PV, FusionMode.WV) else Uncertainty.ENTROPY


def tile_chunks(plan: SlidePlan, per_read: int) -> list[dict]:
    """Runs of neighbouring tiles (row-major), one read task each."""
    grid = plan.grid
    tiles = [[row, col, y, x] for row, y in enumerate(grid.ys) for col, x in enumerate(grid.xs)]
    return [{"slide": plan.slide_id, "tiles": json.dumps(tiles[i : i + per_read])}
            for i in range(0, len(tiles), per_read)]


# -- Ray Data stages ----------------------------------------------------------

_SLIDES = SlideCache()  # per worker process


def read_tile(slide: Slide, plan: SlidePlan, y: int, x: int, fill: np.ndarray) -> np.ndarray:
    """The (tile, tile, 3) uint8 tile at processed (y, x); beyond the slide's edge, ``fill``."""
    tile = plan.tile
    height, width = min(tile, plan.height - y), min(tile, plan.width - x)
    if plan.factor_y == 1.0 and plan.factor_x == 1.0:
        region = slide.read_region(y, x, height, width, plan.read_level)
    else:
        from PIL import Image

        read_h, read_w = slide.level_shape(plan.read_level)
        fy, fx = plan.factor_y, plan.factor_x
        top, bottom, left, right = y * fy, (y + height) * fy, x * fx, (x + width) * fx
        iy0, ix0 = max(0, math.floor(top) - 2), max(0, math.floor(left) - 2)
        iy1, ix1 = min(read_h, math.ceil(bottom) + 2), min(read_w, math.ceil(right) + 2)
        crop = slide.read_region(iy0, ix0, iy1 - iy0, ix1 - ix0, plan.read_level)
        resample = Image.Resampling.BOX if min(fy, fx) > 1 else Image.Resampling.BILINEAR
        region = np.asarray(Image.fromarray(crop).resize(
            (width, height), resample, box=(left - ix0, top - iy0, right - ix0, bottom - iy0)))
    return extract_tile(region, 0, 0, tile, fill)


@dataclass
class TileBatch(Columns):
    """Tiles read from slides, from the read tasks to the actor pool: slide id, tile row and column in
    the slide's grid, (tile, tile, 3) uint8 pixels, preview samples (raw bytes: their size varies at the
    slide's edge) with their shapes, and the error that kept a tile from being read ('' when none)."""

    OBJECT_COLUMNS = ("thumb",)

    slide: list
    row: list
    col: list
    image: np.ndarray
    thumb: list
    thumb_shape: np.ndarray
    error: list


@dataclass
class ScoredTiles(Columns):
    """What the actor pool returns per tile: the read fields, and (C, tile, tile) float16 fused scores
    that blend across overlaps (``EnsemblePrediction.fused_scores``)."""

    OBJECT_COLUMNS = ("thumb",)

    slide: list
    row: list
    col: list
    scores: np.ndarray
    thumb: list
    thumb_shape: np.ndarray
    error: list


def read_tiles(batch: dict, plans: dict[str, SlidePlan], storage: Storage, fill: list[int]) -> dict:
    """Ray Data task: the tiles of one or more runs (a ``TileBatch``); a failure becomes an error row."""
    fill_value = np.asarray(fill, np.uint8)
    out = TileBatch([], [], [], [], [], [], [])
    for slide_id, tiles in zip(batch["slide"], batch["tiles"]):
        plan = plans[slide_id]
        tile = plan.tile
        for row, col, y, x in json.loads(tiles):
            image, error = np.zeros((tile, tile, 3), np.uint8), ""
            try:
                image = read_tile(_SLIDES.get(plan.uri, storage, plan.limits), plan, y, x, fill_value)
            except (SlideError, OSError) as exc:
                error = str(exc)
            thumb = preview_sample(image, y, x, plan.preview_stride)
            out.slide.append(slide_id)
            out.row.append(row)
            out.col.append(col)
            out.image.append(image)
            out.thumb.append(thumb.tobytes())
            out.thumb_shape.append(np.asarray(thumb.shape, np.int32))
            out.error.append(error)
    out.image, out.thumb_shape = np.stack(out.image), np.stack(out.thumb_shape)
    return out.to_batch()


class EnsemblePredictor:
    """Ray Data actor: the whole ensemble (an ``EnsembleRuntime``), loaded once; per batch of tiles
    (a ``TileBatch``), blendable fused scores (a ``ScoredTiles``)."""

    def __init__(self, manifest: EnsembleManifest, storage: Storage, batch_size: int, precision: Precision,
                 gpus: float):
        self.manifest = manifest
        # hashes were checked when the driver loaded the manifest
        self.runtime = EnsembleRuntime.from_manifest(manifest, storage, gpus=gpus, precision=precision)
        self.fusion = Fusion.of(manifest.fusion)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        tiles = TileBatch.from_batch(batch)
        errors = [str(e) for e in tiles.error]
        count, tile = len(errors), tiles.image.shape[1]
        scores = np.zeros((count, self.manifest.num_classes, tile, tile), np.float16)
        good = [i for i, e in enumerate(errors) if not e]
        try:
            for start in range(0, len(good), self.batch_size):
                chunk = good[start : start + self.batch_size]
                # always the same batch shape: a tile's result must not depend on its batch-mates
                padded = np.zeros((self.batch_size, tile, tile, 3), np.uint8)
                padded[: len(chunk)] = tiles.image[chunk]
                fused = self.runtime.predict_images(padded).fused_scores(self.fusion)  # (N, C, t, t)
                scores[chunk] = fused[: len(chunk)].cpu().numpy().astype(np.float16)
        except Exception as exc:  # e.g. out of memory: these tiles' slides fail, the job goes on
            for i in good:
                errors[i] = f"inference failed: {type(exc).__name__}: {exc}"
        return ScoredTiles(tiles.slide, tiles.row, tiles.col, scores, tiles.thumb, tiles.thumb_shape,
                           errors).to_batch()


# -- the job ------------------------------------------------------------------


@dataclass
class SlideOutcome:
    """A slide that was not segmented in this run: skipped (complete outputs for the same ensemble exist;
    ``summary`` is theirs) or failed (``reason`` says why; it left no outputs)."""

    slide: str
    uri: str
    reason: str
    summary: dict | None = None

    def to_document(self) -> dict:
        return {"slide": self.slide, "uri": self.uri, "reason": self.reason}


@dataclass
class SegmentResult:
    """What ``segment_slides`` did: per-slide summaries of the slides done (as in their ``summary.json``),
    the ones skipped and failed, and where everything went (``run_summary.json`` holds the same)."""

    output: str
    manifest: str
    ensemble_digest: str
    seconds: float
    done: list[dict] = field(default_factory=list)
    skipped: list[SlideOutcome] = field(default_factory=list)
    failed: list[SlideOutcome] = field(default_factory=list)

    def to_document(self) -> dict:
        return {
            "output": self.output, "manifest": self.manifest, "ensemble_digest": self.ensemble_digest,
            "wall_seconds": round(self.seconds, 1),  # the whole run: planning, reading, predicting, publishing
            "done": [{"slide": s["slide"], "uri": s["uri"], "active_seconds": s["active_seconds"],
                      "wall_seconds": s["wall_seconds"], "tiles": s["tiles"]} for s in self.done],
            "skipped": [s.to_document() for s in self.skipped],
            "failed": [f.to_document() for f in self.failed],
        }


@dataclass
class SlideState:
    plan: SlidePlan
    stitcher: Stitcher | None = None
    outputs: SlideOutputs | None = None
    started: float = 0.0  # its first predicted tile reached the driver
    run_started: float = 0.0  # the pipeline started (the slide's tiles queue behind other slides' from then)


def manifest_uri_of(config: MinsegConfig) -> str:
    """``segment.manifest_uri``, or the manifest of this config's evaluation."""
    settings = config.segment or SegmentSettings()
    if settings.manifest_uri:
        return absolute_uri(settings.manifest_uri)
    return join_uri((config.evaluation or EvaluationSettings()).output_uri(config.run.uri), "manifest.json")


def plan_slides(uris: list[str], manifest: EnsembleManifest, settings: SegmentSettings, storage: Storage,
                output_uri: str, result: SegmentResult) -> dict[str, SlidePlan]:
    """Open every slide once to plan its grid; unreadable ones go to ``result.failed``, finished ones
    (same ensemble, same level, no ``force``) to ``result.skipped``."""
    ids = slide_ids(uris)
    plans: dict[str, SlidePlan] = {}
    for uri in uris:
        slide_id = ids[uri]
        try:
            plan = plan_slide(uri, slide_id, manifest, settings, storage, output_uri)
        except SlideError as exc:
            result.failed.append(SlideOutcome(slide_id, uri, str(exc)))
            log_event(log, "segment.slide_failed", logging.WARNING, slide=slide_id, reason=str(exc))
            continue
        previous = read_summary(storage, plan.output_uri)
        if previous and not settings.force and previous.get("ensemble_digest") == result.ensemble_digest \
                and previous.get("level") == plan.level:
            result.skipped.append(SlideOutcome(slide_id, uri, "outputs exist for this ensemble (--force redoes)",
                                               previous))
            continue
        plans[slide_id] = plan
    return plans


def scored_tiles(plans: dict[str, SlidePlan], manifest: EnsembleManifest, settings: SegmentSettings,
                 storage: Storage, options: dict):
    """The lazy Ray Dataset of ``ScoredTiles``: read tasks → ensemble actor pool."""
    import ray

    chunks = [chunk for plan in plans.values() for chunk in tile_chunks(plan, settings.tiles_per_read)]
    fill = mean_fill(manifest.normalization["mean"]).tolist()
    dataset = ray.data.from_items(chunks, override_num_blocks=max(1, min(len(chunks), 2000)))
    tiles = dataset.map_batches(read_tiles, batch_size=1, num_cpus=settings.read_cpus, **options,
                                fn_kwargs={"plans": plans, "storage": storage, "fill": fill})
    scored = tiles.map_batches(
        EnsemblePredictor,
        fn_constructor_kwargs={"manifest": manifest, "storage": storage, "batch_size": settings.batch_size,
                               "precision": settings.precision, "gpus": settings.gpus_per_actor},
        batch_size=settings.batch_size,
        compute=ray.data.ActorPoolStrategy(size=settings.actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
        **options,
    )
    # correctness never depends on order (see stitch.py), but memory does: in order, output tiles
    # finish one after another instead of piling up behind a straggler
    scored.context.execution_options.preserve_order = True
    return scored


def segment_slides(config: MinsegConfig) -> SegmentResult:
    """The segmentation job (module doc): resolve slides → plan (skip finished) → read tiles and predict
    on the actor pool → stitch and publish each slide → run tables. Also written as ``run_summary.json``.

    Raises:
        SegmentInputError: no slides, or a slide list that cannot be used.
        ManifestError: the manifest cannot be used (missing checkpoint, changed weights, ...).
    """
    settings = config.segment or SegmentSettings()
    storage = Storage(config.storage)
    manifest_uri = manifest_uri_of(config)
    manifest = load_manifest(manifest_uri, storage)
    output_uri = absolute_uri(settings.output_uri) if settings.output_uri else \
        join_uri(config.run.uri, "segment", settings.name)
    started = time.monotonic()
    result = SegmentResult(output_uri, manifest_uri, manifest.digest(), 0.0)
    plans = plan_slides(resolve_slides(settings, storage), manifest, settings, storage, output_uri, result)
    log_event(log, "segment.planned", slides=len(plans) + len(result.skipped) + len(result.failed), to_do=len(plans),
              skipped=len(result.skipped), failed=len(result.failed), tiles=sum(len(p.grid) for p in plans.values()),
              manifest=manifest_uri, output=output_uri)

    if plans:
        init_ray(config.ray)
        staging_root = os.path.join(parse_uri(output_uri).path, ".staging") if not is_s3(output_uri) \
            else tempfile.mkdtemp(prefix="minseg-segment-")
        scored = scored_tiles(plans, manifest, settings, storage, task_options(config.storage))
        run_info = {"manifest": manifest_uri, "ensemble_digest": result.ensemble_digest, "ensemble": manifest.name,
                    "fusion": str(manifest.fusion.mode), "members": [m.name for m in manifest.members]}
        try:
            _consume(scored, plans, manifest, settings, storage, staging_root, run_info, result)
        except Exception:  # the pipeline itself broke: say what finished and what did not, then fail
            result.seconds = time.monotonic() - started
            _write_run_summary(result, storage)
            raise
        finally:
            with contextlib.suppress(OSError):  # only when empty: a concurrent run may be staging there
                os.rmdir(staging_root)
    result.seconds = time.monotonic() - started
    _write_run_summary(result, storage)
    log_event(log, "segment.done", output=output_uri, done=len(result.done), skipped=len(result.skipped),
              failed=len(result.failed))
    return result


def _consume(scored, plans: dict[str, SlidePlan], manifest: EnsembleManifest, settings: SegmentSettings,
             storage: Storage, staging_root: str, run_info: dict, result: SegmentResult) -> None:
    """Stitch tiles as they arrive (any order), publish slides as they complete."""
    pipeline_started = time.monotonic()
    states = {slide_id: SlideState(plan, run_started=pipeline_started) for slide_id, plan in plans.items()}
    total = sum(len(p.grid) for p in plans.values())

    def fail(state: SlideState, reason: str) -> None:
        if state.outputs is not None:
            state.outputs.discard()
        states.pop(state.plan.slide_id, None)
        result.failed.append(SlideOutcome(state.plan.slide_id, state.plan.uri, reason))
        log_event(log, "segment.slide_failed", logging.WARNING, slide=state.plan.slide_id, reason=reason)

    try:
        with Progress(total, "segment", unit="tiles") as progress:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                tiles = ScoredTiles.from_batch(batch)
                for i, slide_id in enumerate(tiles.slide):
                    progress.advance()
                    state = states.get(str(slide_id))
                    if state is None:  # already failed (or a duplicate of a finished slide's tile)
                        continue
                    if tiles.error[i]:
                        fail(state, str(tiles.error[i]))
                        continue
                    try:
                        _add_tile(state, tiles, i, manifest, settings, staging_root, run_info)
                        if state.stitcher.complete:
                            result.done.append(_finish(state, storage, run_info))
                            del states[state.plan.slide_id]
                    except Exception as exc:  # a writer or a summary failed: this slide only
                        log.debug("slide %s failed", state.plan.slide_id, exc_info=True)
                        fail(state, f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        for state in list(states.values()):
            fail(state, f"the segmentation pipeline stopped: {type(exc).__name__}: {exc}")
        raise
    for state in list(states.values()):  # tiles that never came back
        fail(state, f"only {state.stitcher.tiles_done if state.stitcher else 0} of {len(state.plan.grid)} "
                    "tiles came back")


def _add_tile(state: SlideState, tiles: ScoredTiles, i: int, manifest: EnsembleManifest, settings: SegmentSettings,
              staging_root: str, run_info: dict) -> None:
    plan = state.plan
    if state.stitcher is None:
        state.started = time.monotonic()
        metadata = {"generator": "minseg segment", "source": plan.uri, "level": plan.level,
                    "scale": manifest.tiling.scale, "pixel_size_um": plan.pixel_size_um, **run_info}
        state.outputs = SlideOutputs(plan, manifest.classes, settings, staging_root, metadata)
        state.stitcher = Stitcher(plan.grid, manifest.num_classes, plan.uncertainty, settings.output_tile,
                                  state.outputs.add_tile)
    row, col = int(tiles.row[i]), int(tiles.col[i])
    grid = state.stitcher.grid
    thumb = np.frombuffer(tiles.thumb[i], np.uint8).reshape(tuple(tiles.thumb_shape[i]))
    state.outputs.preview.add_thumbnail(grid.ys[row], grid.xs[col], thumb)
    state.stitcher.add(row, col, tiles.scores[i])


def _finish(state: SlideState, storage: Storage, run_info: dict) -> dict:
    plan = state.plan
    summary = {
        "slide": plan.slide_id, "uri": plan.uri, "status": str(SlideStatus.DONE), "format": plan.format,
        "level": plan.level, "source_shape": [plan.source_height, plan.source_width],
        "shape": [plan.height, plan.width], "read_level": plan.read_level, "pixel_size_um": plan.pixel_size_um,
        "tiles": len(plan.grid), "tile": plan.tile, "overlap": plan.overlap, "uncertainty": str(plan.uncertainty),
        # two clocks, named for what they measure (docs/segmentation.md)
        "active_seconds": round(time.monotonic() - state.started, 2),  # first tile back -> published
        "wall_seconds": round(time.monotonic() - state.run_started, 2),  # pipeline start -> published
        "stitch_peak_mib": round(state.stitcher.peak_bytes / 2**20, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **run_info,
    }
    summary = state.outputs.finish(summary, storage, plan.output_uri)
    log_event(log, "segment.slide_done", slide=plan.slide_id, active_seconds=summary["active_seconds"],
              wall_seconds=summary["wall_seconds"], output=plan.output_uri)
    return summary


def _table_row(summary: dict, status: SlideStatus) -> dict:
    row = {"slide": summary["slide"], "uri": summary["uri"], "status": str(status),
           "height": summary["shape"][0], "width": summary["shape"][1], "tiles": summary["tiles"],
           "active_seconds": summary.get("active_seconds", summary.get("seconds")),
           "wall_seconds": summary.get("wall_seconds"), "ensemble_digest": summary["ensemble_digest"],
           "mean_uncertainty": summary.get("mean_uncertainty")}
    for name, entry in summary["modal_mineralogy"].items():
        row[f"area_pct:{name}"] = entry["area_percent"]
    for name, entry in summary["grains"].items():
        row[f"grains:{name}"] = entry["count"]
        row[f"mean_grain_px:{name}"] = entry.get("mean_area_px")
    return row


def _write_run_summary(result: SegmentResult, storage: Storage) -> None:
    """The batch tables of everything under the output, merged with what earlier runs wrote there:
    ``slides.csv`` / ``.parquet`` (a row per slide done or skipped: this run's rows replace that slide's
    older row, other slides' rows stay), ``failures.json`` (slides with no complete outputs),
    ``run_summary.json`` (this run, and the merged slide list). Each file is one whole write."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = result.output
    rows = [_table_row(s, SlideStatus.DONE) for s in result.done] + \
        [_table_row(s.summary, SlideStatus.SKIPPED) for s in result.skipped]
    this_run = {row["slide"] for row in rows}
    earlier = _read_json(storage, join_uri(out, "run_summary.json"))
    # a slide that failed now keeps its earlier row: a failure never replaces complete outputs
    kept = [row for row in (earlier or {}).get("slides", []) if isinstance(row, dict) and row.get("slide")
            and row["slide"] not in this_run and row.get("status") in (str(SlideStatus.DONE), str(SlideStatus.SKIPPED))]
    merged = sorted(kept + rows, key=lambda row: row["slide"])
    if merged:
        storage.write_text(join_uri(out, "slides.csv"), csv_text(merged))
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(merged), buffer)
        storage.write_bytes(join_uri(out, "slides.parquet"), buffer.getvalue())
    complete = {row["slide"] for row in merged}
    failed_now = {f.slide for f in result.failed}
    old_failures = [f for f in (_read_json(storage, join_uri(out, "failures.json")) or [])
                    if isinstance(f, dict) and f.get("slide") not in failed_now and f.get("slide") not in complete]
    failures = old_failures + [f.to_document() for f in result.failed if f.slide not in complete]
    storage.write_text(join_uri(out, "failures.json"), json.dumps(failures, indent=2))
    document = {**result.to_document(), "slides": merged, "failed_slides": failures}
    storage.write_text(join_uri(out, "run_summary.json"), json.dumps(document, indent=2, default=float))


def _read_json(storage: Storage, uri: str):
    """A JSON document written by an earlier run, or None (absent or unreadable: rebuilt from this run)."""
    try:
        return json.loads(storage.read_text(uri))
    except (ObjectNotFoundError, ValueError):
        return None
