"""Bulk whole-slide segmentation: slides → blocks read, predicted, blended and written on the cluster → storage.

1. Slides are resolved (URIs, globs, a list file), opened once on the driver to plan
   their tile grid (``plan``), and skipped when complete outputs for the same ensemble
   exist. Each slide's OME-Zarr is created empty, or an interrupted run's is resumed
   block by block (``finish.prepare_slide``).
2. The blocks of all slides share one Ray Data pipeline: CPU tasks read each block's
   windows (only the TIFF tiles or strips they touch), a pool of actors, each holding
   the whole ensemble, predicts, fuses and blends them into the finished block and
   writes its chunks and a small record straight to storage (``blocks``). Per-tile
   scores never leave the worker; the driver receives a few numbers per block.
3. When a slide's last block is in, a task merges its records (the slide's mineralogy:
   grains and particles joined across block edges, ``mineralogy.slide``), builds the
   coarse pyramid levels, preview and optional TIFF export, and writes ``summary.json``
   last (``finish.finish_slide``). A slide
   that fails (unreadable, corrupt tile) goes to the failure manifest and leaves no
   outputs; the others carry on. Output is bit-identical for any block size, actor
   count and completion order (tests/inference/test_segment.py).
4. The run's tables (``slides.csv`` / ``.parquet``, ``failures.json``) and the batch's
   mineralogy report (``mineralogy/``: the slides' tallies summed) are written last, staged and put in
   place together with ``run_summary.json`` (``outputs.publish_run_tables``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from minseg.config.schema import MinsegConfig
from minseg.enums import OutputFormat, SlideStatus
from minseg.ensemble.config import EvaluationSettings
from minseg.ensemble.manifest import EnsembleManifest, load_manifest
from minseg.ensemble.runtime import EnsembleRuntime, Fusion
from minseg.ensemble.voting import blend_dtype
from minseg.data.tiling import mean_fill
from minseg.inference.blocks import (Block, BlockDone, BlockInput, block_from_json, block_to_json,
                                     read_blocks, segment_block, unpack)
from minseg.inference.config import SegmentSettings
from minseg.inference.finish import BEGUN, REPLACED_LAST, discard_slide, finish_slide, prepare_slide
from minseg.inference.folders import (FolderOwners, FolderTaken, folder_ids, folder_stem, hashed_id,
                                      input_in_item_folders, item_folder, matched_in_output,
                                      outside_output)
from minseg.inference.outputs import (SLIDE_COLUMNS, SUMMARY, ZARR, finish_run_tables, missing_outputs,
                                      publish_run_tables, read_earlier_json, read_summary, stage_batch_report,
                                      start_run_tables, write_slide_tables)
from minseg.inference.plan import SegmentInputError, SlidePlan, plan_slide, scene_bit_depths
from minseg.io.images import BIT_DEPTH, DARK, depth_applies, describe_depth
from minseg.io.ngff import SegmentationArrays
from minseg.io.slides import SLIDE_SUFFIXES, ChannelSource, SlideError
from minseg.io.storage import (COMMAND_MARKERS, REDO, ObjectNotFoundError, Storage, StorageError, absolute_uri,
                               glob_uris, has_glob, is_s3, join_uri, parse_uri, redo_folder,
                               refuse_other_command_outputs)
from minseg.mineralogy.config import MineralogySettings
from minseg.mineralogy.report import FOLDER, headline
from minseg.mineralogy.slide import DOCUMENT
from minseg.logs import Progress, get_logger, log_event
from minseg.preflight import job_paths
from minseg.runtime import actor_errors, check_actor_pool, init_ray, task_options

log = get_logger("segment")


# -- which slides -------------------------------------------------------------


def resolve_scenes(settings: SegmentSettings, manifest: EnsembleManifest, storage: Storage, output: str,
                   owner: FolderOwners | None = None) -> dict[str, tuple[ChannelSource, ...]]:
    """What to segment, in the order given: each slide URI (globs expanded) and each of ``segment.scenes``, with the
    images the ensemble reads from it (empty: the slide itself, RGB).

    A slide for an ensemble reading several images per scene is one multi-band image holding all their channels in
    order (a 6-sample TIFF for PPL + XPL); a scene names each image by its channel name.

    Each image's file is read with its bit depth (``scene_bit_depths``); the one file of a multi-band slide has
    one (``plan_slide``).

    Raises:
        SegmentInputError: nothing to segment; a scene naming other channels than the ensemble's; a
            ``segment.bit_depth`` naming another image.
    """
    groups = manifest.channel_groups
    names = [group.name for group in groups]
    depths = scene_bit_depths(manifest, settings.bit_depth)
    sources: dict[str, tuple[ChannelSource, ...]] = {}
    if settings.slides or settings.slide_list or not settings.scenes:
        for uri in resolve_slides(settings, storage, output, owner):
            if manifest.channels is None:
                sources[uri] = ()
            elif len(groups) == 1:
                sources[uri] = (ChannelSource(uri, str(groups[0].mode), groups[0].bands, depths[names[0]]),)
            else:  # one file of every image's channels: one bit depth for its samples (``plan_slide``)
                sources[uri] = (ChannelSource(uri, "bands", manifest.in_channels),)
    for index, scene in enumerate(settings.scenes):
        if manifest.channels is None:
            raise SegmentInputError(f"segment.scenes[{index}]: this ensemble reads one RGB image per slide; give "
                                    "segment.slides")
        missing, extra = [n for n in names if n not in scene], sorted(set(scene) - set(names))
        if missing or extra:
            raise SegmentInputError(f"segment.scenes[{index}]: the ensemble reads {', '.join(names)} per scene"
                                    + (f"; missing {', '.join(missing)}" if missing else "")
                                    + (f"; unknown {', '.join(extra)}" if extra else ""))
        uris = {n: scene[n] if is_s3(scene[n]) else absolute_uri(scene[n]) for n in names}
        if uris[names[0]] in sources:  # outputs are named after the first image: one scene each
            raise SegmentInputError(f"segment.scenes[{index}]: {uris[names[0]]} is given twice (as a slide or the "
                                    f"{names[0]} image of another scene)")
        sources[uris[names[0]]] = tuple(ChannelSource(uris[g.name], str(g.mode), g.bands, depths[g.name])
                                        for g in groups)
    return sources


def resolve_slides(settings: SegmentSettings, storage: Storage, output: str,
                   owner: FolderOwners | None = None) -> list[str]:
    """Slide URIs in the order given: literal entries kept (checked when planned), globs expanded (less what lies
    in ``output``: ``folders.outside_output``, with the run's ``owner`` of its folders when given).

    Raises:
        SegmentInputError: a glob that matches no slide (a mistyped pattern, not a smaller batch: the run would
            carry on with the rest and look complete), or no slide at all."""
    entries = list(settings.slides)
    if settings.slide_list:
        entries += read_slide_list(settings.slide_list, storage)
    uris: list[str] = []
    for entry in entries:
        if not has_glob(entry):
            uris.append(entry if is_s3(entry) else absolute_uri(entry))
            continue
        found = glob_uris(entry, storage, SLIDE_SUFFIXES)
        matches = outside_output(found, output, entry, "segment.glob_output_left_out", log, storage, SEGMENT_RECORDS,
                                 COMMAND_MARKERS["segment"], owner)
        if not matches:
            raise SegmentInputError(f"segment.slides: {entry!r} matched no slides{matched_in_output(found, output)} "
                                    f"(files ending in {', '.join(SLIDE_SUFFIXES)}); check the pattern or leave it out")
        uris += matches
    unique = same_files_once(list(dict.fromkeys(uris)), "segment")
    if not unique:
        raise SegmentInputError("segment: no slides given (set segment.slides or segment.slide_list; globs matched nothing)")
    return unique


def same_files_once(uris: list[str], command: str) -> list[str]:
    """``uris`` with each local file once: a name that is a link to another given (``link.png`` -> ``s.png``) is
    left out, warned (``<command>.same_file_twice``), where it was a second slide and counted twice in the batch
    report's totals. S3 keys are names of their own."""
    seen: dict[tuple[int, int], str] = {}
    kept, twice = [], []
    for uri in uris:
        if not is_s3(uri):
            try:
                status = os.stat(parse_uri(uri).path)
            except (OSError, ValueError):  # missing or unreadable: a failure of its own later
                kept.append(uri)
                continue
            if (first := seen.setdefault((status.st_dev, status.st_ino), uri)) != uri:
                twice.append(f"{uri} (= {first})")
                continue
        kept.append(uri)
    if twice:
        log_event(log, f"{command}.same_file_twice", logging.WARNING, files="; ".join(twice),
                  hint="one file under two names (a link): taken once, under its first name")
    return kept


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


#: a slide folder's records, (file, key naming the source): a finished slide's, a begun one's, then the OME-Zarr's
#: attributes (a summary deleted or damaged by hand leaves the slide its own folder, redone there)
SEGMENT_RECORDS = ((SUMMARY, "uri"), (BEGUN, "source"), (f"{ZARR}/zarr.json", "attributes.minseg.source"))


def slide_ids(uris: list[str]) -> dict[str, str]:
    """A folder name per slide: its file name without the extension (``folder_ids``). Which folder a slide finally
    gets also depends on what earlier runs left in the output (``plan_slides``: a folder holds one source's
    outputs, ever)."""
    return folder_ids({uri: folder_stem(uri) for uri in uris})


def source_change(previous: dict, plan: SlidePlan) -> str | None:
    """Why a finished slide's outputs are not of the source ``plan`` reads (another file, another size, the file
    replaced since), or None when they are."""
    if previous.get("uri") != plan.uri:
        return f"the outputs are of {previous.get('uri')}"
    if previous.get("source_shape") != [plan.source_height, plan.source_width]:
        shape = previous.get("source_shape") or ["?", "?"]
        return (f"the slide is {plan.source_width}x{plan.source_height} now, the outputs are of a "
                f"{shape[1]}x{shape[0]} slide")
    # outputs of a minseg before 2026-12-05 record no file version: the same URI and size are taken as the same
    # file (redoing every slide of a survey after an upgrade would cost hours of GPU time for nothing)
    if "source_identity" in previous and previous["source_identity"] != list(plan.identity):
        return "the file changed since (size or modification time)"
    if (read := previous.get("bit_depth", BIT_DEPTH)) != plan.read_bit_depth:
        return (f"the outputs read its samples as {describe_depth(read)}, now {describe_depth(plan.read_bit_depth)} "
                "(segment.bit_depth or the ensemble's)")
    return None


# -- the ensemble actors -------------------------------------------------------


class BlockSegmenter:
    """Ray Data actor: the whole ensemble (an ``EnsembleRuntime``), loaded once; per ``BlockInput`` row,
    the block predicted, blended, written and recorded (``blocks.segment_block``); returns ``BlockDone``.

    On CPU, torch uses ``threads_per_actor`` threads (default: the actor's CPU share rounded up). On CUDA,
    windows go through pinned host memory, scores come back as fp16 (votes as float32), and with
    ``gpu_memory_gib`` the batch size is the largest whose measured peak memory fits
    (``EnsembleRuntime.batch_size_for``).
    """

    def __init__(self, manifest: EnsembleManifest, storage: Storage, settings: SegmentSettings,
                 plans: dict[str, SlidePlan]):
        import torch

        if not settings.gpus_per_actor:
            torch.set_num_threads(settings.threads_per_actor or max(1, math.ceil(settings.cpus_per_actor)))
        self.manifest, self.storage, self.settings, self.plans = manifest, storage, settings, plans
        # hashes were checked when the driver loaded the manifest
        self.runtime = EnsembleRuntime.from_manifest(manifest, storage, gpus=settings.gpus_per_actor,
                                                     precision=settings.precision, compile=settings.compile)
        self.fusion = Fusion.of(manifest.fusion)
        self.batch_size = settings.batch_size
        if settings.gpu_memory_gib:
            self.batch_size = self.runtime.batch_size_for(int(settings.gpu_memory_gib * 2**30), manifest.tiling.tile,
                                                          self.fusion, cap=settings.batch_size)
        self.arrays: dict[str, SegmentationArrays] = {}
        self.layouts: dict[str, int] = {}
        self.context_lost = False  # a CUDA error other than out-of-memory: every later kernel would fail
        import ray

        # the Ray node this actor runs on (run_summary.json: blocks_per_node); none outside Ray (benchmarks)
        self.node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """(n, tile, tile, channels) uint8 -> (n, C, tile, tile) fused scores (``voting.blend_dtype``: float16
        probabilities, float32 vote scores)."""
        import torch

        count, tile = len(windows), windows.shape[1]
        dtype = blend_dtype(self.fusion.mode)
        # cast where the scores are (the device), so fp16 probabilities cross to the host at half the bytes
        on_device = torch.float16 if dtype is np.float16 else torch.float32
        scores = np.empty((count, self.manifest.num_classes, tile, tile), dtype)
        for start in range(0, count, self.batch_size):
            chunk = windows[start : start + self.batch_size]
            # always the same batch shape: a window's result must not depend on its batch-mates
            padded = np.zeros((self.batch_size,) + windows.shape[1:], np.uint8)
            padded[: len(chunk)] = chunk
            fused = self.runtime.predict_images(padded).fused_scores(self.fusion)  # (B, C, t, t)
            scores[start : start + len(chunk)] = fused[: len(chunk)].to(on_device).cpu().numpy()
        return scores

    def _arrays(self, plan: SlidePlan) -> SegmentationArrays:
        if plan.slide_id not in self.arrays:
            if len(self.arrays) >= 8:  # a few slides in flight per actor; opening again is cheap
                self.arrays.pop(next(iter(self.arrays)))
            self.arrays[plan.slide_id] = SegmentationArrays(join_uri(plan.output_uri, ZARR), self.storage)
        return self.arrays[plan.slide_id]

    def __call__(self, batch: dict) -> dict:
        if self.context_lost:  # Ray Data restarts the actor and gives this batch to it (max_restarts -1)
            log.warning("a CUDA error left this actor's GPU context unusable: exiting to be restarted")
            os._exit(1)
        inputs = BlockInput.from_batch(batch)
        out = BlockDone([], [], [], [], [], [], [])
        for slide_id, text, payload, error in zip(inputs.slide, inputs.block, inputs.payload, inputs.error):
            plan, block = self.plans[str(slide_id)], block_from_json(str(text))
            windows, seconds, error = 0, 0.0, str(error)
            if not error and self.context_lost:  # every kernel would fail: said as such, the slide redone next run
                error = (f"block {block.name}: not run: a CUDA error on an earlier block of its batch left the "
                         "actor's GPU context unusable; the same command redoes this slide")
            if not error:
                try:
                    data = unpack(payload)
                    windows = len(data["windows"])
                    record = segment_block(self.predict, plan, block, data["windows"], data["rows"], data["cols"],
                                           data["image"], self._arrays(plan), self.storage, self.settings,
                                           self.batch_size, data["brightest"])
                    seconds = record.seconds
                except Exception as exc:  # e.g. out of memory, a storage error: this slide fails, the job goes on
                    log.debug("block %s of %s failed", block.name, plan.slide_id, exc_info=True)
                    error, lost = block_error(block.name, exc, self.batch_size)
                    self.context_lost = self.context_lost or lost
            out.slide.append(str(slide_id))
            out.block.append(str(text))
            out.windows.append(windows)
            out.score_bytes.append(windows * self.manifest.num_classes * plan.tile * plan.tile * 4)  # as float32
            out.seconds.append(seconds)
            out.error.append(error)
            out.node.append(self.node)
        return out.to_batch()


def block_error(block: str, exc: Exception, batch_size: int) -> tuple[str, bool]:
    """A failed block's reason (its slide fails with it) and whether the actor's GPU context is lost.

    Out of GPU memory frees the cached memory (the actor's next blocks start clean) and says which settings
    lower the need; any other CUDA error (``torch.AcceleratorError``: an illegal access, an ECC error) leaves the
    process's context unusable: the rest of its batch (``segment.blocks_per_task`` blocks) is not run, failing
    those slides too (a rerun redoes them), and the actor exits before its next batch, which Ray Data gives to a
    restarted actor. A GPU broken for good fails that actor's start, and the job stops with Ray's error."""
    import torch

    reason = f"block {block}: {type(exc).__name__}: {exc}"
    if isinstance(exc, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
        return (f"{reason} (out of GPU memory at segment.batch_size {batch_size}: lower it, set "
                "segment.gpu_memory_gib to fit the batch to a budget, or give each actor a larger "
                "segment.gpus_per_actor (fewer actors sharing a GPU); the same command redoes the slide)"), False
    return reason, isinstance(exc, torch.AcceleratorError)


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
    blocks: int = 0  # blocks sent to the workers in this run
    windows: int = 0  # tile windows they predicted (halos counted each time)
    score_bytes: int = 0  # float32 fused scores those windows made; they never left the workers
    driver_bytes: int = 0  # what the driver received from the block pipeline
    # pipeline start -> the first block's prediction began (actors starting, the first block read): paid once
    # per run, whatever the batch's size; ~10 s on 2 busy cores (actors importing torch, Ray Data starting)
    startup_seconds: float | None = None
    blocks_per_node: dict[str, int] = field(default_factory=dict)  # Ray node id -> blocks segmented there
    report_error: str | None = None  # why the batch report could not be built (the tables are in place without it)

    @property
    def recompute(self) -> float | None:
        """Windows predicted per window of the slides' grids (1.0 = no halo recomputed)."""
        tiles = sum(s["tiles"] for s in self.done)
        return round(self.windows / tiles, 4) if tiles and self.windows else None

    def to_document(self) -> dict:
        return {
            "output": self.output, "manifest": self.manifest, "ensemble_digest": self.ensemble_digest,
            "wall_seconds": round(self.seconds, 1),  # the whole run: planning, reading, predicting, publishing
            "blocks": self.blocks, "windows": self.windows, "recompute": self.recompute,
            "score_bytes": self.score_bytes, "driver_bytes": self.driver_bytes,
            "startup_seconds": None if self.startup_seconds is None else round(self.startup_seconds, 2),
            "blocks_per_node": self.blocks_per_node,
            "done": [{"slide": s["slide"], "uri": s["uri"], "active_seconds": s["active_seconds"],
                      "wall_seconds": s["wall_seconds"], "tiles": s["tiles"]} for s in self.done],
            "skipped": [s.to_document() for s in self.skipped],
            "failed": [f.to_document() for f in self.failed],
            **({"report_error": self.report_error} if self.report_error else {}),
        }


def manifest_uri_of(config: MinsegConfig) -> str:
    """``segment.manifest_uri``, or the manifest of this config's evaluation."""
    settings = config.segment or SegmentSettings()
    if settings.manifest_uri:
        return absolute_uri(settings.manifest_uri)
    return join_uri((config.evaluation or EvaluationSettings()).output_uri(config.run.uri), "manifest.json")


def plan_slides(sources: dict[str, tuple[ChannelSource, ...]], manifest: EnsembleManifest, settings: SegmentSettings,
                storage: Storage, output_uri: str, result: SegmentResult,
                mineralogy: MineralogySettings, owner: FolderOwners) -> dict[str, SlidePlan]:
    """Open every slide once to plan its grid; unreadable ones go to ``result.failed``, finished ones
    (same source file, unchanged; same ensemble, same level; no ``force``) to ``result.skipped``. A slide folder
    holds one source's outputs: a slide whose folder holds another's (same file name, earlier run) gets the hashed
    name (``hashed_id``), and fails when that is taken too. ``settings.plan_threads`` slides at
    a time: on object storage each is a few ranged GETs of its header, and a survey has thousands. ``owner``: the
    run's ``FolderOwners`` of the output (made once the replacements an earlier run left are finished)."""
    uris = list(sources)
    ids = slide_ids(uris)

    def folder_for(uri: str) -> str:
        hashed = hashed_id(uri)
        try:
            return item_folder(uri, ids[uri], (folder_stem(uri), hashed), hashed, owner, "segment.renamed", log)
        except FolderTaken as exc:
            raise SlideError(f"{uri}: {exc.where(output_uri)}; segment it into another output (--out)") from None

    def summary_in(folder: str) -> dict | None:  # read once: the owner's lookup read it
        try:
            document = owner.document(join_uri(folder, SUMMARY))
        except StorageError:  # unreadable now: not a finished slide
            return None
        return document if isinstance(document, dict) else None

    def plan_one(uri: str) -> SlidePlan | SlideOutcome:
        slide_id = ids[uri]
        try:
            slide_id = folder_for(uri)
            plan = plan_slide(uri, slide_id, manifest, settings, storage, output_uri, mineralogy, sources[uri])
        except SlideError as exc:
            reason = str(exc)
            if summary_in(join_uri(output_uri, slide_id)) is not None:
                reason += f" (the outputs an earlier run left in {slide_id}/ are no longer listed as complete)"
            return SlideOutcome(slide_id, uri, reason)
        previous = summary_in(plan.output_uri)
        if previous is None:
            with contextlib.suppress(StorageError, SlideError):  # records read for the owner: no new request
                if owner(plan.slide_id) == uri and owner.document(join_uri(plan.output_uri, BEGUN)) is None:
                    # finished once (its zarr names it, no run begun there): its summary deleted or damaged by hand
                    log_event(log, "segment.redo", logging.WARNING, slide=slide_id, uri=uri,
                              reason="its summary.json is missing or not readable (done again in its folder)")
            return plan
        # a redo works in the redo folder: the finished outputs stay until it is finished, and stay if it fails
        redo = replace(plan, output_uri=redo_folder(plan.output_uri), replaces=plan.output_uri)
        if not settings.force and previous.get("ensemble_digest") == result.ensemble_digest \
                and previous.get("level") == plan.level \
                and set(map(str, settings.formats)) <= set(previous.get("formats", [])):
            changed = source_change(previous, plan)
            if not changed:
                try:
                    gone = missing_outputs(storage, plan.output_uri, previous, OutputFormat.TIFF in settings.formats)
                except StorageError as exc:  # this slide's, not the batch's: the others go on
                    return SlideOutcome(slide_id, uri, f"its finished outputs in {slide_id}/ could not be checked "
                                                       f"({exc}); run again")
                if gone:
                    changed = f"outputs listed in its summary.json are gone: {', '.join(gone[:3])}" + (
                        f" and {len(gone) - 3} more" if len(gone) > 3 else "")
            if changed:  # redone: never a skip of another source's outputs
                log_event(log, "segment.redo", logging.WARNING, slide=slide_id, uri=uri, reason=changed,
                          hint="its finished outputs stay until the redo is finished (and if it fails)")
                return redo
            reason = "outputs exist for this ensemble (--force redoes)"
            if previous.get("measured_with") != plan.measure.key():
                reason = ("outputs exist for this ensemble, measured with other mineralogy settings (--force redoes "
                          "the slide; `minseg measure` on its labels re-measures it alone)")
                log_event(log, "segment.skipped_other_mineralogy", logging.WARNING, slide=slide_id)
            return SlideOutcome(slide_id, uri, reason, previous)
        return redo

    plans: dict[str, SlidePlan] = {}
    taken: dict[str, str] = {}  # folder -> the source it holds in this run
    for outcome in thread_map(plan_one, uris, settings.plan_threads):  # in the order given
        slide_id = outcome.slide_id if isinstance(outcome, SlidePlan) else outcome.slide
        if taken.setdefault(slide_id, outcome.uri) != outcome.uri:  # two sources, one folder: never mixed
            outcome = SlideOutcome(slide_id, outcome.uri, f"{outcome.uri}: its output folder {slide_id}/ is that of "
                                   f"{taken[slide_id]} in this run; rename the file or segment it into another output")
        if isinstance(outcome, SlidePlan):
            plans[outcome.slide_id] = outcome
        elif outcome.summary is not None:
            result.skipped.append(outcome)
        else:
            result.failed.append(outcome)
            log_event(log, "segment.slide_failed", logging.WARNING, slide=outcome.slide, reason=outcome.reason)
    # redo folders an interrupted run left for slides of this run not redone now (skipped, failed, or with no
    # finished outputs left to replace); a redo now resumes in its own, other slides' wait for their next run
    redone = {plan.slide_id for plan in plans.values() if plan.replaces}
    for slide_id in sorted(set(storage.redo_folders(output_uri)) & set(taken) - redone):
        storage.delete_prefix(join_uri(output_uri, REDO, slide_id) + "/")
    return plans


def thread_map(function, items: list, threads: int) -> list:
    """``function`` over ``items`` on a thread pool, results in the items' order (I/O-bound driver work).

    Our own rather than ``tqdm.contrib.concurrent.thread_map`` or a bare ``Executor.map``: on the first
    error (or Ctrl-C) those still run every item already submitted, i.e. thousands of slide header reads
    and metadata writes before the error reaches the user; this cancels the ones not started.
    """
    if threads <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="minseg-plan")
    try:
        return list(pool.map(function, items))
    finally:  # on an error or Ctrl-C, the slides not yet started are not planned or prepared
        pool.shutdown(wait=True, cancel_futures=True)


def block_dataset(items: list[dict], plans: dict[str, SlidePlan], manifest: EnsembleManifest,
                  settings: SegmentSettings, storage: Storage, options: dict):
    """The lazy Ray Dataset of ``BlockDone`` rows: block reads (CPU tasks) → ensemble actor pool."""
    import ray

    fill = mean_fill(manifest.normalization["mean"]).tolist()
    per_task = settings.blocks_per_task  # Ray Data pays ~1-15 ms of driver CPU per task: group on big clusters
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(math.ceil(len(items) / per_task), 2000)))
    inputs = dataset.map_batches(read_blocks, batch_size=per_task, num_cpus=settings.read_cpus, **options,
                                 fn_kwargs={"plans": plans, "storage": storage, "fill": fill,
                                            "output_tile": settings.output_tile})
    done = inputs.map_batches(
        BlockSegmenter,
        fn_constructor_kwargs={"manifest": manifest, "storage": storage, "settings": settings, "plans": plans},
        batch_size=per_task,
        compute=ray.data.ActorPoolStrategy(size=settings.actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
        **options,
    )
    done.context.execution_options.preserve_order = False  # blocks are independent: first done, first counted
    return done


def segment_slides(config: MinsegConfig) -> SegmentResult:
    """The segmentation job (module doc): resolve slides → plan (skip finished) → prepare or resume each
    slide's outputs → blocks read, predicted, blended and written on the cluster → each slide finished by
    a task once its blocks are in → run tables. Also written as ``run_summary.json``.

    Raises:
        SegmentInputError: no slides, or a slide list that cannot be used.
        ManifestError: the manifest cannot be used (missing checkpoint, changed weights, ...).
        ResourceError: the cluster could never hold the actor pool (``segment.actors`` x ``cpus_per_actor`` /
            ``gpus_per_actor``, plus ``read_cpus`` for block reads).
    """
    settings = config.segment or SegmentSettings()
    storage = Storage(config.storage)
    manifest_uri = manifest_uri_of(config)
    manifest = load_manifest(manifest_uri, storage)
    try:
        config.mineralogy.check_class_names([c["name"] for c in manifest.classes["classes"]])
    except ValueError as exc:
        raise SegmentInputError(str(exc)) from None
    output_uri = settings.output(config.run.uri)
    refuse_other_command_outputs(output_uri, "segment", "segment.output_uri", storage)  # Python callers too
    if finish_run_tables(storage, output_uri, "segment"):  # an earlier run's, cut short while put in place
        log_event(log, "segment.earlier_tables_put_in_place", output=output_uri)
    started = time.monotonic()
    result = SegmentResult(output_uri, manifest_uri, manifest.digest(), 0.0)
    # redos an earlier run finished but did not finish moving into place (killed, a failed request): moved now
    for moved in storage.finish_replacements(output_uri, SUMMARY, REPLACED_LAST):
        log_event(log, "segment.redo_moved", slide=moved, output=join_uri(output_uri, moved))
    owner = FolderOwners(storage, output_uri, SEGMENT_RECORDS)  # the output's folders: listed and read once a run
    sources = resolve_scenes(settings, manifest, storage, output_uri, owner)
    plans = plan_slides(sources, manifest, settings, storage, output_uri, result, config.mineralogy, owner)
    # a slide folder is emptied before it is written (a redo replaces it whole): it must not hold any slide's image
    inside = input_in_item_folders([*sources, *(c.uri for channels in sources.values() for c in channels)],
                                   output_uri, list(plans), "a slide this run segments", owner)
    if inside:
        raise SegmentInputError(f"segment: {inside}")
    log_event(log, "segment.planned", slides=len(plans) + len(result.skipped) + len(result.failed), to_do=len(plans),
              skipped=len(result.skipped), failed=len(result.failed), tiles=sum(len(p.grid) for p in plans.values()),
              manifest=manifest_uri, output=output_uri)
    if plans:
        init_ray(config.ray, job_paths([settings, manifest_uri], [output_uri]))
        # before any slide's outputs are prepared: a pool the cluster cannot hold would wait forever
        check_actor_pool("segment", settings.actors, settings.cpus_per_actor, settings.gpus_per_actor,
                         extra_cpus=settings.read_cpus)
        try:
            BlockRun(plans, manifest, manifest_uri, settings, storage, task_options(config.storage), result).run()
        except Exception:  # the pipeline itself broke: say what finished and what did not, then fail
            result.seconds = time.monotonic() - started
            try:
                _write_run_summary(result, storage, settings.plan_threads)
            except Exception as exc:  # noqa: BLE001 (the pipeline's own error is the one to raise)
                log_event(log, "segment.tables_not_written", logging.WARNING, reason=f"{type(exc).__name__}: {exc}")
            raise
    result.seconds = time.monotonic() - started
    _write_run_summary(result, storage, settings.plan_threads)  # last: it removes the emptied redo folder too
    log_event(log, "segment.done", output=output_uri, done=len(result.done), skipped=len(result.skipped),
              failed=len(result.failed), recompute=result.recompute)
    return result


class BlockRun:
    """The driver's side of one run: it only plans, counts small ``BlockDone`` rows and starts finishing
    tasks; its memory is a set of block names per unfinished slide, whatever the slides' sizes."""

    def __init__(self, plans: dict[str, SlidePlan], manifest: EnsembleManifest, manifest_uri: str,
                 settings: SegmentSettings, storage: Storage, options: dict, result: SegmentResult):
        self.plans, self.manifest, self.settings, self.storage = plans, manifest, settings, storage
        self.options, self.result = options, result
        self.classes = manifest.classes["classes"]
        self.run_info = {"manifest": manifest_uri, "ensemble_digest": result.ensemble_digest,
                         "ensemble": manifest.name, "fusion": str(manifest.fusion.mode),
                         "members": [m.name for m in manifest.members]}
        self.remaining: dict[str, set[str]] = {}
        self.first_done: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.finishing: dict = {}  # ObjectRef -> slide id
        self.finish_task = None  # the remote finishing function, made once per run
        self.started = time.monotonic()

    def metadata(self, plan: SlidePlan) -> dict:
        return {"generator": "minseg segment", "source": plan.uri, "level": plan.level,
                "scale": self.manifest.tiling.scale, "pixel_size_um": plan.pixel_size_um, **self.run_info}

    def run(self) -> None:
        def prepare(plan: SlidePlan):  # a few small metadata writes (or a listing, to resume) per slide
            try:
                return prepare_slide(plan, self.settings, self.storage, self.classes, self.result.ensemble_digest,
                                     self.metadata(plan))
            except Exception as exc:  # a storage or zarr error fails this slide (failures.json), not the run
                return exc

        items = []
        for (slide_id, plan), prepared in zip(self.plans.items(),
                                              thread_map(prepare, list(self.plans.values()), self.settings.plan_threads)):
            if isinstance(prepared, Exception):
                self.fail(slide_id, f"cannot prepare its outputs: {type(prepared).__name__}: {prepared}")
                continue
            todo, resumed = prepared
            if resumed:
                log_event(log, "segment.resumed", slide=slide_id, blocks_done=resumed, blocks_to_do=len(todo))
            self.remaining[slide_id] = {b.name for b in todo}
            items += [{"slide": slide_id, "block": block_to_json(b)} for b in todo]
        for slide_id in [s for s, names in self.remaining.items() if not names]:
            self.finish(slide_id)
        self.result.blocks = len(items)
        if items:
            done = block_dataset(items, self.plans, self.manifest, self.settings, self.storage, self.options)
            with Progress(len(items), "segment", unit="blocks") as progress, \
                    actor_errors("segment (reading blocks or in the actors)"):
                for batch in done.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                    self.result.driver_bytes += len(pickle.dumps(batch))  # what crossed over, object columns too
                    rows = BlockDone.from_batch(batch)
                    for slide_id, text, windows, score_bytes, seconds, error, node in zip(
                            rows.slide, rows.block, rows.windows, rows.score_bytes, rows.seconds, rows.error,
                            rows.node):
                        progress.advance()
                        node = str(node)
                        self.result.blocks_per_node[node] = self.result.blocks_per_node.get(node, 0) + 1
                        if self.result.startup_seconds is None and not error:
                            self.result.startup_seconds = max(0.0, time.monotonic() - self.started - float(seconds))
                        self.block_done(str(slide_id), block_from_json(str(text)), int(windows), int(score_bytes),
                                        str(error))
                    self.collect(timeout=0)
        for slide_id, names in list(self.remaining.items()):  # blocks that never came back
            if names and slide_id not in self.failed:
                self.fail(slide_id, f"{len(names)} blocks never came back")
        self.collect(timeout=None)
        for slide_id in self.failed:  # only now: blocks of a failed slide may have been in flight until the end
            discard_slide(self.plans[slide_id], self.storage)

    def block_done(self, slide_id: str, block: Block, windows: int, score_bytes: int, error: str) -> None:
        if slide_id in self.failed:
            return
        if error:
            self.fail(slide_id, error)
            return
        names = self.remaining.get(slide_id)
        if names is None or block.name not in names:  # a retried task delivered a block twice
            return
        names.discard(block.name)
        self.first_done.setdefault(slide_id, time.monotonic())
        self.result.windows += windows
        self.result.score_bytes += score_bytes
        if not names:
            self.finish(slide_id)

    def finish(self, slide_id: str) -> None:
        import ray

        plan = self.plans[slide_id]
        now = time.monotonic()
        summary = {
            "slide": plan.slide_id, "uri": plan.uri, "status": str(SlideStatus.DONE), "format": plan.format,
            "level": plan.level, "source_shape": [plan.source_height, plan.source_width],
            "source_identity": list(plan.identity), "bit_depth": plan.read_bit_depth, "stored_bits": plan.stored_bits,
            "shape": [plan.height, plan.width], "read_level": plan.read_level, "pixel_size_um": plan.pixel_size_um,
            "tiles": len(plan.grid), "tile": plan.tile, "overlap": plan.overlap, "uncertainty": str(plan.uncertainty),
            "formats": [str(f) for f in self.settings.formats],
            # two clocks, named for what they measure (docs/segmentation.md); finishing adds its own time
            "active_seconds": round(now - self.first_done.get(slide_id, now), 2),  # first block done -> published
            "wall_seconds": round(now - self.started, 2),  # pipeline start -> published
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **self.run_info,
        }
        if self.finish_task is None:
            self.finish_task = ray.remote(finish_slide).options(num_cpus=self.settings.read_cpus, max_retries=2,
                                                                **self.options)
        self.finishing[self.finish_task.remote(plan, self.settings, self.storage, self.classes, summary,
                                   self.metadata(plan))] = slide_id

    def collect(self, timeout: float | None) -> None:
        """Record finished slides (all of them when ``timeout`` is None)."""
        import ray

        while self.finishing:
            ready, _ = ray.wait(list(self.finishing), num_returns=1, timeout=timeout)
            if not ready:
                return
            slide_id = self.finishing.pop(ready[0])
            try:
                summary = ray.get(ready[0])
                self.result.done.append(summary)
                warn_if_dark(summary)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                self.fail(slide_id, f"finishing failed: {type(cause).__name__}: {cause}")
            self.remaining.pop(slide_id, None)

    def fail(self, slide_id: str, reason: str) -> None:
        if slide_id in self.failed:
            return
        plan = self.plans[slide_id]
        if plan.replaces and read_summary(self.storage, plan.replaces) is not None:
            reason += f" (the outputs an earlier run finished in {plan.slide_id}/ are kept as they were)"
        elif plan.replaces and read_summary(self.storage, plan.output_uri) is not None:
            reason += (f" (its redo finished but was not moved into {plan.slide_id}/: the next run into this output "
                       "moves it)")
        self.failed[slide_id] = reason
        self.result.failed.append(SlideOutcome(slide_id, plan.uri, reason))
        log_event(log, "segment.slide_failed", logging.WARNING, slide=slide_id, reason=reason)


def warn_if_dark(summary: dict) -> None:
    """``segment.slide_dark`` when a segmented slide's brightest input value, or that of one image of its scene, is
    at most ``DARK`` of 255: a 10- or 12-bit camera's 16-bit frames read as 16-bit (the ensemble sees a black
    picture and labels it anyway), or an 8-bit picture that dark (blank, underexposed), which no bit depth
    changes."""
    brightest = summary.get("brightest")
    if brightest is None:
        return
    bits = summary.get("bit_depth", BIT_DEPTH)
    if brightest <= DARK:
        dark, stored, what, flag = brightest, summary.get("stored_bits", 16), "its brightest pixel", "--bit-depth"
    else:
        scene = summary.get("images") or {}
        images = [(name, image) for name, image in scene.items()
                  if image.get("brightest") is not None and image["brightest"] <= DARK]
        if not images:
            return
        name, image = images[0]
        dark, stored, bits = image["brightest"], image["stored_bits"], image.get("bit_depth", bits)
        what, flag = f"the brightest pixel of its {name} image", f"--bit-depth {name}=BITS"
        if summary.get("scene_files") == 1:  # one file: one bit depth for its samples
            flag = f"{flag}, giving each image's file as a scene with --scene"
    if depth_applies(stored):
        hint = (f"{what} is {dark} of 255 as read ({describe_depth(bits)} samples): a 10- or 12-bit camera's "
                "frames stored in 16 bits? Its labels are of a nearly black picture; segment it again with "
                f"segment.bit_depth ({flag}) set to the camera's (read another way, it is redone)")
    else:
        hint = (f"{what} is {dark} of 255 in {stored}-bit samples: a blank or underexposed picture, or the wrong "
                "file? Its labels are of a nearly black picture")
    log_event(log, "segment.slide_dark", logging.WARNING, slide=summary["slide"], brightest=dark,
              bit_depth=bits, hint=hint)


def _table_row(summary: dict, status: SlideStatus) -> dict:
    row = dict(zip(SLIDE_COLUMNS, (
        summary["slide"], summary["uri"], str(status), summary["shape"][0], summary["shape"][1], summary["tiles"],
        summary.get("active_seconds", summary.get("seconds")), summary.get("wall_seconds"),
        summary["ensemble_digest"], summary.get("mean_uncertainty"), summary.get("brightest")), strict=True))
    row.update(headline(summary))  # the summary repeats mineralogy.json's headline keys
    return row


def _write_run_summary(result: SegmentResult, storage: Storage, threads: int = 16) -> None:
    """The batch tables of everything under the output, merged with what earlier runs wrote there:
    ``slides.csv`` / ``.parquet`` (a row per slide done or skipped: this run's rows replace that slide's
    older row, other slides' rows stay, read again from their ``summary.json``: ``threads`` at a time),
    ``failures.json`` (slides with no complete outputs), the batch report (``mineralogy/``), ``run_summary.json``
    (this run, and the merged slide list). Written whole into the staging folder, then put in place together
    (``publish_run_tables``): a run stopped meanwhile never leaves one run's summary beside another's tables."""
    out = result.output
    staged = start_run_tables(storage, out, "segment")
    rows = [_table_row(s, SlideStatus.DONE) for s in result.done] + \
        [_table_row(s.summary, SlideStatus.SKIPPED) for s in result.skipped]
    this_run = {row["slide"] for row in rows}
    failed_now = {f.slide for f in result.failed}
    earlier = read_earlier_json(storage, join_uri(out, "run_summary.json"))
    # a slide that failed now is a failure in every table (its earlier outputs are left where they are, but no
    # longer counted as complete: the failure says why)
    before = {row["slide"]: row for row in (earlier or {}).get("slides", []) if isinstance(row, dict)
              and isinstance(row.get("slide"), str) and row["slide"] not in this_run and row["slide"] not in failed_now
              and row.get("status") in (str(SlideStatus.DONE), str(SlideStatus.SKIPPED))}
    kept = _kept_rows(before, out, storage, threads)
    merged = sorted(kept + rows, key=lambda row: row["slide"])
    owned = ["failures.json"]
    if merged or earlier is not None:
        write_slide_tables(merged, storage, staged)
        owned += ["slides.csv", "slides.parquet"]
    complete = {row["slide"] for row in merged}
    old_failures = [f for f in (read_earlier_json(storage, join_uri(out, "failures.json")) or [])
                    if isinstance(f, dict) and f.get("slide") not in failed_now and f.get("slide") not in complete]
    failures = old_failures + [f.to_document() for f in result.failed]
    storage.write_json(join_uri(staged, "failures.json"), failures)
    # the batch's mineralogy over every complete slide under the output, this run's and earlier: rewritten when a
    # slide was done, one counted before failed now (it leaves the report as it leaves the tables; with no complete
    # slide left, the earlier report is deleted), an earlier slide's outputs changed or went, or it is missing;
    # else the earlier report stays
    dropped = {row.get("slide") for row in (earlier or {}).get("slides", []) if isinstance(row, dict)} & failed_now
    changed = [row for row in kept if row != before[row["slide"]]] or len(kept) < len(before)
    if result.done or dropped or changed or (merged and not storage.exists(join_uri(out, FOLDER, DOCUMENT))):
        def documents() -> dict[str, dict]:
            read = thread_map(lambda row: read_earlier_json(storage, join_uri(out, row["slide"], DOCUMENT)), merged,
                              threads)
            return {row["slide"]: document for row, document in zip(merged, read) if document}

        result.report_error = stage_batch_report(storage, staged, documents, os.path.basename(out.rstrip("/")),
                                                 "segment")
        owned.append(FOLDER)
    publish_run_tables(storage, out, "segment", {**result.to_document(), "slides": merged, "failed_slides": failures},
                       owned)


def _kept_rows(before: dict[str, dict], out: str, storage: Storage, threads: int) -> list[dict]:
    """The table rows of the slides an earlier run listed and this one did not touch, from each slide's own
    ``summary.json`` (``threads`` reads at a time): a slide whose outputs were replaced since (a run stopped
    before its tables were put in place) is not listed as it was; one whose summary is gone or damaged is dropped
    (logged ``segment.rows_dropped``); one that cannot be read now (a failed request) keeps its earlier row."""
    def row_of(slide: str) -> dict | None:
        try:
            summary = json.loads(storage.read_text(join_uri(out, slide, SUMMARY)))
        except ObjectNotFoundError:
            return None
        except StorageError:  # not known to be gone: as the earlier run listed it
            return before[slide]
        except ValueError:  # not JSON: no complete slide
            return None
        if not isinstance(summary, dict) or summary.get("slide") != slide:  # not this folder's (moved by hand)
            return None if not isinstance(summary, dict) else before[slide]
        try:
            return _table_row(summary, SlideStatus(before[slide]["status"]))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError):  # edited by hand: not a complete slide
            return None

    names = sorted(before)
    rows = dict(zip(names, thread_map(row_of, names, threads)))
    dropped = [slide for slide, row in rows.items() if row is None]
    if dropped:
        log_event(log, "segment.rows_dropped", logging.WARNING, slides=",".join(dropped),
                  reason="no readable summary.json in their folders any more: no longer counted as complete")
    return [row for row in rows.values() if row is not None]

