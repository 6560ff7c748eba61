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
import math
import os
import re
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from minseg.config.schema import MinsegConfig
from minseg.data.tiling import extract_tile
from minseg.enums import Blend, FusionMode, Uncertainty
from minseg.ensemble.evaluate import evaluation_uri
from minseg.ensemble.manifest import EnsembleManifest, load_manifest
from minseg.inference.config import SegmentSettings
from minseg.inference.outputs import SlideOutputs, preview_sample, preview_stride, read_summary
from minseg.inference.sliding import TileGrid, mean_fill
from minseg.inference.stitch import Stitcher
from minseg.io.slides import SLIDE_SUFFIXES, Slide, SlideCache, SlideError
from minseg.io.storage import (ObjectNotFoundError, Storage, absolute_uri, glob_uris, has_glob, is_s3, join_uri,
                                 parse_uri)
from minseg.io.tables import csv_text
from minseg.logs import Progress, get_logger, log_event
from minseg.runtime import init_ray, task_options

log = get_logger("segment")


class SegmentInputError(ValueError):
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
    tile: int
    overlap: int
    blend: str
    preview_stride: int
    pixel_size_um: float | None
    uncertainty: str

    @cached_property
    def grid(self) -> TileGrid:
        return TileGrid(self.height, self.width, self.tile, self.overlap, Blend(self.blend))


def plan_slide(uri: str, slide_id: str, manifest: EnsembleManifest, settings: SegmentSettings, storage: Storage,
               output_uri: str) -> SlidePlan:
    with Slide(uri, storage) as slide:
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
        tile=manifest.tiling.tile, overlap=manifest.tiling.overlap, blend=str(manifest.tiling.blend),
        preview_stride=preview_stride(height, width, settings.preview_max_side),
        pixel_size_um=pixel_size, uncertainty=str(resolve_uncertainty(settings.uncertainty, manifest.fusion.mode)),
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


def read_tile(slide: Slide, plan: dict, y: int, x: int, fill: np.ndarray) -> np.ndarray:
    """The (tile, tile, 3) uint8 tile at processed (y, x); beyond the slide's edge, ``fill``."""
    tile = plan["tile"]
    height, width = min(tile, plan["height"] - y), min(tile, plan["width"] - x)
    if plan["factor_y"] == 1.0 and plan["factor_x"] == 1.0:
        region = slide.read_region(y, x, height, width, plan["read_level"])
    else:
        from PIL import Image

        read_h, read_w = slide.level_shape(plan["read_level"])
        fy, fx = plan["factor_y"], plan["factor_x"]
        top, bottom, left, right = y * fy, (y + height) * fy, x * fx, (x + width) * fx
        iy0, ix0 = max(0, math.floor(top) - 2), max(0, math.floor(left) - 2)
        iy1, ix1 = min(read_h, math.ceil(bottom) + 2), min(read_w, math.ceil(right) + 2)
        crop = slide.read_region(iy0, ix0, iy1 - iy0, ix1 - ix0, plan["read_level"])
        resample = Image.Resampling.BOX if min(fy, fx) > 1 else Image.Resampling.BILINEAR
        region = np.asarray(Image.fromarray(crop).resize(
            (width, height), resample, box=(left - ix0, top - iy0, right - ix0, bottom - iy0)))
    return extract_tile(region, 0, 0, tile, fill)


def read_tiles(batch: dict, plans: dict, storage: dict, fill: list[int]) -> dict:
    """Ray Data task: the tiles of one or more runs; a failure becomes an error row, not an exception."""
    from minseg.config.schema import StorageSettings

    store = Storage(StorageSettings.model_validate(storage))
    fill_value = np.asarray(fill, np.uint8)
    rows: dict[str, list] = {k: [] for k in ("slide", "row", "col", "image", "thumb", "thumb_shape", "error")}
    for slide_id, tiles in zip(batch["slide"], batch["tiles"]):
        plan = plans[slide_id]
        tile = plan["tile"]
        for row, col, y, x in json.loads(tiles):
            image, error = np.zeros((tile, tile, 3), np.uint8), ""
            try:
                image = read_tile(_SLIDES.get(plan["uri"], store), plan, y, x, fill_value)
            except (SlideError, OSError) as exc:
                error = str(exc)
            thumb = preview_sample(image, y, x, plan["preview_stride"])
            rows["slide"].append(slide_id)
            rows["row"].append(row)
            rows["col"].append(col)
            rows["image"].append(image)
            rows["thumb"].append(thumb.tobytes())
            rows["thumb_shape"].append(np.asarray(thumb.shape, np.int32))
            rows["error"].append(error)
    return {k: np.stack(v) if k in ("image", "thumb_shape") else np.asarray(v, dtype=object if k == "thumb" else None)
            for k, v in rows.items()}


class EnsemblePredictor:
    """Ray Data actor: the whole ensemble, loaded once; per batch, blendable fused scores per tile."""

    def __init__(self, manifest: dict, storage: dict, batch_size: int, precision: str, gpus: float):
        import torch

        from minseg.config.schema import StorageSettings
        from minseg.enums import Precision
        from minseg.ensemble.manifest import load_member_models
        from minseg.train.loop import autocast_dtype

        self.manifest = EnsembleManifest.model_validate(manifest)
        self.device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
        store = Storage(StorageSettings.model_validate(storage))
        self.models = load_member_models(self.manifest, store, self.device)  # hashes were checked on the driver
        if self.device.type == "cuda":
            self.models = [m.to(memory_format=torch.channels_last) for m in self.models]
        self.autocast = autocast_dtype(Precision(precision), self.device)
        self.batch_size = batch_size
        fusion = self.manifest.fusion
        self.learned = torch.tensor(fusion.weights, dtype=torch.float32) if fusion.mode is FusionMode.LEARNED else None

    def __call__(self, batch: dict) -> dict:
        import torch

        from minseg.ensemble.voting import fusion_scores
        from minseg.inference.sliding import normalise, tile_probabilities

        images, errors = batch["image"], [str(e) for e in batch["error"]]
        count, tile = len(errors), images.shape[1]
        num_classes = len(self.manifest.classes["classes"])
        scores = np.zeros((count, num_classes, tile, tile), np.float16)
        good = [i for i, e in enumerate(errors) if not e]
        mean, std = self.manifest.normalization["mean"], self.manifest.normalization["std"]
        try:
            for start in range(0, len(good), self.batch_size):
                chunk = good[start : start + self.batch_size]
                # always the same batch shape: a tile's result must not depend on its batch-mates
                padded = np.zeros((self.batch_size, tile, tile, 3), np.uint8)
                padded[: len(chunk)] = images[chunk]
                inputs = normalise(padded, mean, std, self.device)
                probs = torch.stack([tile_probabilities(m, inputs, self.manifest.fusion.tta, self.autocast)
                                     for m in self.models])  # (M, N, C, t, t)
                fused = fusion_scores(probs.transpose(1, 2), self.manifest.fusion.mode, self.learned)  # (C, N, t, t)
                scores[chunk] = fused.transpose(0, 1)[: len(chunk)].cpu().numpy().astype(np.float16)
        except Exception as exc:  # e.g. out of memory: these tiles' slides fail, the job goes on
            for i in good:
                errors[i] = f"inference failed: {type(exc).__name__}: {exc}"
        out = {k: batch[k] for k in ("slide", "row", "col", "thumb", "thumb_shape")}
        out.update(scores=scores, error=np.asarray(errors))
        return out


# -- the job ------------------------------------------------------------------


@dataclass
class SlideState:
    plan: SlidePlan
    stitcher: Stitcher | None = None
    outputs: SlideOutputs | None = None
    started: float = 0.0


def segment_slides(config: MinsegConfig) -> dict:
    """The segmentation job (module doc). Returns the run summary (also written to the output)."""
    import ray

    settings = config.segment or SegmentSettings()
    storage = Storage(config.storage)
    manifest_uri = absolute_uri(settings.manifest_uri) if settings.manifest_uri else \
        join_uri(evaluation_uri(config), "manifest.json")
    manifest = load_manifest(manifest_uri, storage)
    digest = manifest.digest()
    output_uri = absolute_uri(settings.output_uri) if settings.output_uri else \
        join_uri(config.run.uri, "segment", settings.name)
    started = time.monotonic()
    uris = resolve_slides(settings, storage)
    ids = slide_ids(uris)
    done, skipped, failed = [], [], []
    plans: dict[str, SlidePlan] = {}
    for uri in uris:
        slide_id = ids[uri]
        try:
            plan = plan_slide(uri, slide_id, manifest, settings, storage, output_uri)
        except SlideError as exc:
            failed.append({"slide": slide_id, "uri": uri, "reason": str(exc)})
            log_event(log, "segment.slide_failed", slide=slide_id, reason=str(exc))
            continue
        previous = read_summary(storage, plan.output_uri)
        if previous and not settings.force and previous.get("ensemble_digest") == digest \
                and previous.get("level") == plan.level:
            skipped.append({"slide": slide_id, "uri": uri, "reason": "outputs exist for this ensemble (--force redoes)",
                            "summary": previous})
            continue
        plans[slide_id] = plan
    log_event(log, "segment.planned", slides=len(uris), to_do=len(plans), skipped=len(skipped), failed=len(failed),
              tiles=sum(len(p.grid) for p in plans.values()), manifest=manifest_uri, output=output_uri)

    if plans:
        init_ray(config.ray)
        staging_root = os.path.join(parse_uri(output_uri).path, ".staging") if not is_s3(output_uri) \
            else tempfile.mkdtemp(prefix="minseg-segment-")
        chunks = [chunk for plan in plans.values() for chunk in tile_chunks(plan, settings.tiles_per_read)]
        fill = mean_fill(manifest.normalization["mean"]).tolist()
        dataset = ray.data.from_items(chunks, override_num_blocks=max(1, min(len(chunks), 2000)))
        tiles = dataset.map_batches(
            read_tiles, batch_size=1, num_cpus=settings.read_cpus, **task_options(config.storage),
            fn_kwargs={"plans": {k: asdict(p) for k, p in plans.items()},
                       "storage": config.storage.model_dump(mode="json"), "fill": fill},
        )
        scored = tiles.map_batches(
            EnsemblePredictor,
            fn_constructor_kwargs={"manifest": manifest.model_dump(mode="json"),
                                   "storage": config.storage.model_dump(mode="json"),
                                   "batch_size": settings.batch_size, "precision": str(settings.precision),
                                   "gpus": settings.gpus_per_actor},
            batch_size=settings.batch_size,
            compute=ray.data.ActorPoolStrategy(size=settings.actors),
            num_cpus=settings.cpus_per_actor,
            num_gpus=settings.gpus_per_actor or None,
            **task_options(config.storage),
        )
        # correctness never depends on order (see stitch.py), but memory does: in order, output tiles
        # finish one after another instead of piling up behind a straggler
        scored.context.execution_options.preserve_order = True
        run_info = {"manifest": manifest_uri, "ensemble_digest": digest, "ensemble": manifest.name,
                    "fusion": str(manifest.fusion.mode), "members": [m.name for m in manifest.members]}
        try:
            _consume(scored, plans, manifest, settings, storage, staging_root, run_info, done, failed)
        except Exception:  # the pipeline itself broke: say what finished and what did not, then fail
            _write_run_summary(output_uri, storage, done, skipped, failed, manifest_uri, digest,
                               time.monotonic() - started)
            raise
        finally:
            with contextlib.suppress(OSError):  # only when empty: a concurrent run may be staging there
                os.rmdir(staging_root)
    summary = _write_run_summary(output_uri, storage, done, skipped, failed, manifest_uri, digest,
                                 time.monotonic() - started)
    log_event(log, "segment.done", output=output_uri, done=len(done), skipped=len(skipped), failed=len(failed))
    return summary


def _consume(scored, plans: dict[str, SlidePlan], manifest: EnsembleManifest, settings: SegmentSettings,
             storage: Storage, staging_root: str, run_info: dict, done: list, failed: list) -> None:
    """Stitch tiles as they arrive (any order), publish slides as they complete."""
    states = {slide_id: SlideState(plan) for slide_id, plan in plans.items()}
    num_classes = len(manifest.classes["classes"])
    total = sum(len(p.grid) for p in plans.values())

    def fail(state: SlideState, reason: str) -> None:
        if state.outputs is not None:
            state.outputs.discard()
        states.pop(state.plan.slide_id, None)
        failed.append({"slide": state.plan.slide_id, "uri": state.plan.uri, "reason": reason})
        log_event(log, "segment.slide_failed", slide=state.plan.slide_id, reason=reason)

    try:
        with Progress(total, "segment", unit="tiles") as progress:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                for i, slide_id in enumerate(batch["slide"]):
                    progress.advance()
                    state = states.get(str(slide_id))
                    if state is None:  # already failed (or a duplicate of a finished slide's tile)
                        continue
                    if batch["error"][i]:
                        fail(state, str(batch["error"][i]))
                        continue
                    try:
                        _add_tile(state, batch, i, num_classes, manifest, settings, staging_root, run_info)
                        if state.stitcher.complete:
                            done.append(_finish(state, storage, run_info))
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


def _add_tile(state: SlideState, batch: dict, i: int, num_classes: int, manifest: EnsembleManifest,
              settings: SegmentSettings, staging_root: str, run_info: dict) -> None:
    plan = state.plan
    if state.stitcher is None:
        state.started = time.monotonic()
        metadata = {"generator": "minseg segment", "source": plan.uri, "level": plan.level,
                    "scale": manifest.tiling.scale, "pixel_size_um": plan.pixel_size_um, **run_info}
        state.outputs = SlideOutputs(plan, manifest.classes, settings, staging_root, metadata)
        state.stitcher = Stitcher(plan.grid, num_classes, Uncertainty(plan.uncertainty), settings.output_tile,
                                  state.outputs.add_tile)
    row, col = int(batch["row"][i]), int(batch["col"][i])
    grid = state.stitcher.grid
    thumb = np.frombuffer(batch["thumb"][i], np.uint8).reshape(tuple(batch["thumb_shape"][i]))
    state.outputs.preview.add_thumbnail(grid.ys[row], grid.xs[col], thumb)
    state.stitcher.add(row, col, batch["scores"][i])


def _finish(state: SlideState, storage: Storage, run_info: dict) -> dict:
    plan = state.plan
    summary = {
        "slide": plan.slide_id, "uri": plan.uri, "status": "done", "format": plan.format, "level": plan.level,
        "source_shape": [plan.source_height, plan.source_width], "shape": [plan.height, plan.width],
        "read_level": plan.read_level, "pixel_size_um": plan.pixel_size_um, "tiles": len(plan.grid),
        "tile": plan.tile, "overlap": plan.overlap, "uncertainty": plan.uncertainty,
        "seconds": round(time.monotonic() - state.started, 2),
        "stitch_peak_mib": round(state.stitcher.peak_bytes / 2**20, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **run_info,
    }
    summary = state.outputs.finish(summary, storage, plan.output_uri)
    log_event(log, "segment.slide_done", slide=plan.slide_id, seconds=summary["seconds"], output=plan.output_uri)
    return summary


def _table_row(summary: dict, status: str) -> dict:
    row = {"slide": summary["slide"], "uri": summary["uri"], "status": status,
           "height": summary["shape"][0], "width": summary["shape"][1], "tiles": summary["tiles"],
           "seconds": summary["seconds"], "ensemble_digest": summary["ensemble_digest"],
           "mean_uncertainty": summary.get("mean_uncertainty")}
    for name, entry in summary["modal_mineralogy"].items():
        row[f"area_pct:{name}"] = entry["area_percent"]
    for name, entry in summary["grains"].items():
        row[f"grains:{name}"] = entry["count"]
        row[f"mean_grain_px:{name}"] = entry.get("mean_area_px")
    return row


def _write_run_summary(output_uri: str, storage: Storage, done: list, skipped: list, failed: list,
                       manifest_uri: str, digest: str, seconds: float) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_table_row(s, "done") for s in done] + [_table_row(s["summary"], "skipped") for s in skipped]
    if rows:
        storage.write_text(join_uri(output_uri, "slides.csv"), csv_text(rows))
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buffer)
        storage.write_bytes(join_uri(output_uri, "slides.parquet"), buffer.getvalue())
    storage.write_text(join_uri(output_uri, "failures.json"), json.dumps(failed, indent=2))
    summary = {
        "output": output_uri, "manifest": manifest_uri, "ensemble_digest": digest, "seconds": round(seconds, 1),
        "done": [{"slide": s["slide"], "uri": s["uri"], "seconds": s["seconds"], "tiles": s["tiles"]} for s in done],
        "skipped": [{k: v for k, v in s.items() if k != "summary"} for s in skipped],
        "failed": failed,
    }
    storage.write_text(join_uri(output_uri, "run_summary.json"), json.dumps(summary, indent=2))
    return summary
