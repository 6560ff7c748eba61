"""Score a selected ensemble on a labelled set it was not trained or selected on (``minseg score``).

The ensemble is applied exactly as ``segment`` applies it: the manifest's members, fusion mode
and weights, TTA, tiling, scale and normalisation. Every member is scored alone on the same
pass (the fusion needs their probabilities anyway), so the report compares the ensemble with
its best member on the new set, as the evaluation report does on the training run's test split:

1. the data (the config's ``data`` section; its ``classes`` default to the manifest's): every
   labelled item (``score.split: all``) or one split of ``data.split``; unusable items are
   quarantined (``data/quarantine.csv``) and the others scored;
2. one pass of the evaluation actor pool (``evaluate.run_pass``): a confusion matrix per image
   for every member and for the ensemble;
3. ``score.json`` (metrics, per-class IoU, confusion matrices, and the metrics the manifest
   recorded at selection beside them), the evaluation report's tables and figures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass


from minseg.config.schema import MinsegConfig
from minseg.data.config import ClassMapSettings, DataSettings, channel_signature, describe_channels
from minseg.data.pipeline import prepare_scoring_data, write_data_reports
from minseg.enums import ScoreSplit
from minseg.ensemble.config import EvaluationSettings, ScoreSettings
from minseg.ensemble.evaluate import PassSpec, run_pass, scored_candidates
from minseg.ensemble.manifest import EnsembleManifest, load_manifest
from minseg.ensemble.runtime import MemberRef
from minseg.ensemble.selection import MEMBER_PREFIX, Candidate, rank_members
from minseg.errors import InputError
from minseg.io.images import depth_record, describe_depth
from minseg.io.storage import Storage, join_uri, refuse_other_command_outputs, staging_folder
from minseg.logs import get_logger, log_event
from minseg.metrics import metric_value
from minseg.preflight import job_paths
from minseg.runtime import check_actor_pool, init_ray

log = get_logger("ensemble.score")


@dataclass
class ScoreResult:
    """What ``score_ensemble`` produced; ``document`` is ``score.json`` as written (last)."""

    output: str
    selected: Candidate
    best_member: Candidate
    images: int
    quarantined: int
    document: dict


def scoring_data(data: DataSettings | None, manifest: EnsembleManifest, where: str) -> DataSettings:
    """The data section to score with: its classes the manifest's (given or checked), its scale the manifest's,
    its ``bit_depth`` the manifest's unless the data section sets one; its scene images, when it declares none,
    the manifest's; each image read with the bits of the manifest's image of that name unless the data section
    gives the image its own, or sets ``bit_depth`` for them all.

    Raises:
        InputError: no data section; classes named differently from the ensemble's.
    """
    if data is None:
        raise InputError("score needs a labelled set: a 'data' section with sources (or --data FOLDER)")
    names = [c["name"] for c in manifest.classes["classes"]]
    if data.classes is None:
        classes = ClassMapSettings.model_validate({
            "classes": [{"name": c["name"], "codes": c["codes"], "color": c["color"]}
                        for c in manifest.classes["classes"]],
            "ignore_index": manifest.classes["ignore_index"],
            "ignore_codes": manifest.classes.get("ignore_codes", []),
            "ignore_colors": manifest.classes.get("ignore_colors", []),
            "mask_encoding": manifest.classes.get("mask_encoding", "codes")})
    else:
        given = [c.name for c in data.classes.classes]
        if given != names:
            raise InputError(f"data.classes names {given} differ from the ensemble's classes {names} ({where}): the "
                             "ensemble predicts its own classes; list the same names in the same order (their mask "
                             "codes may differ), or leave data.classes out to use the manifest's")
        classes = data.classes
    own_depth = "bit_depth" in data.model_fields_set
    if manifest.channels and all(source.channels is None for source in data.sources):
        # the images of a scene as the ensemble was trained on them (folders, name patterns), unless declared;
        # their bit depths follow from the one rule below
        channels = [group.model_copy(update={"bit_depth": None}) for group in manifest.channels]
        data = data.model_copy(update={"sources": [source.model_copy(update={"channels": channels})
                                                   for source in data.sources]})
    trained = {group.name: group.bit_depth for group in manifest.channel_groups if group.bit_depth}
    if trained and not own_depth:
        # an image without a bit depth of its own reads as the ensemble's image of that name was; a data.bit_depth
        # given here is these images' camera, for every image
        data = data.model_copy(update={"sources": [source.model_copy(update={"channels": [
            group.model_copy(update={"bit_depth": group.bit_depth or trained.get(group.name)})
            for group in source.channels]}) if source.channels else source for source in data.sources]})
    if channel_signature(data.channel_groups) != channel_signature(manifest.channel_groups):
        raise InputError(f"the data gives {describe_channels(data.channel_groups)} per scene but the ensemble reads "
                         f"{describe_channels(manifest.channel_groups)} ({where}): declare the same "
                         "data.sources[].channels (names, modes, order)")
    if data.tiling.scale != manifest.tiling.scale:  # images are seen at the scale the members were selected at
        log_event(log, "score.scale_from_manifest", data_scale=data.tiling.scale, manifest_scale=manifest.tiling.scale)
    tiling = data.tiling.model_copy(update={"scale": manifest.tiling.scale})
    # 16-bit samples read as the ensemble's training images were (the same camera), unless data.bit_depth says
    # what these images' camera records
    bit_depth = data.bit_depth if own_depth else manifest.bit_depth
    data = data.model_copy(update={"classes": classes, "tiling": tiling, "bit_depth": bit_depth})
    trained = depth_record({group.name: group.bits(manifest.bit_depth) for group in manifest.channel_groups})
    if (read := depth_record({group.name: group.bits(bit_depth) for group in data.channel_groups})) != trained:
        # another camera, or a data.bit_depth written out by `minseg config show` that nobody meant
        log_event(log, "score.bit_depth_differs", logging.WARNING, read=describe_depth(read),
                  ensemble=describe_depth(trained),
                  hint=f"16-bit samples of these images are read as {describe_depth(read)}, the ensemble's training "
                       f"images' were read as {describe_depth(trained)} (8-bit samples read alike at any): right for "
                       "another camera; to read them as the ensemble's, leave data.bit_depth out (and "
                       "channels[].bit_depth)")
    return data


def ensemble_candidate(manifest: EnsembleManifest) -> Candidate:
    """The manifest's selection as a candidate: its recorded key (``ruel3-wv``, ``member:x``), members in rank
    order, fusion mode and weights."""
    names = [m.name for m in manifest.members]
    key = manifest.selection.get("candidate") or (f"{MEMBER_PREFIX}{names[0]}" if len(names) == 1
                                                   else f"{manifest.fusion.mode.value}-{len(names)}")
    mode = None if key.startswith(MEMBER_PREFIX) else manifest.fusion.mode
    return Candidate(key, names, mode, list(manifest.fusion.weights))


def score_ensemble(config: MinsegConfig) -> ScoreResult:
    """The score job (module doc).

    Raises:
        InputError: no manifest or data, a manifest that does not load (missing or changed checkpoints), classes
            that differ, no usable labelled item; a member the actors cannot load (``MemberLoadError``).
        ResourceError: an actor pool the cluster could never hold (``score.cpus_per_actor`` / ``gpus_per_actor``).
    """
    from minseg.ensemble.reports import (SCORE_DOCUMENTS, best_member_of, finish_publication, print_reports,
                                         publish_outputs, write_reports)

    started = time.monotonic()
    settings = config.score or ScoreSettings()
    if not settings.manifest:
        raise InputError("score needs the ensemble's manifest: score.manifest in the config, or --manifest URI")
    storage = Storage(config.storage)
    out = settings.output(config.run.uri)
    refuse_other_command_outputs(out, "score", "score.output_uri", storage)  # Python callers too
    if finish_publication(storage, out, "score", SCORE_DOCUMENTS):
        log_event(log, "score.earlier_outputs_put_in_place", output=out,
                  hint="the last scoring into this folder was complete but cut short while put in place")
    staged = staging_folder(out, "score")  # an earlier scoring in out stays whole until this one is complete
    manifest = load_manifest(settings.manifest, storage)  # checkpoints' hashes and class maps checked
    data = scoring_data(config.data, manifest, settings.manifest)
    init_ray(config.ray, job_paths([data, settings.manifest], [out]))
    check_actor_pool("score", 1, settings.cpus_per_actor, settings.gpus_per_actor)  # before preparing data
    split = None if settings.split is ScoreSplit.ALL else str(settings.split)
    prepared = prepare_scoring_data(data, split, config.run.seed, storage, join_uri(out, "data"),
                                    manifest.normalization, config.ray.task_cpus)
    storage.delete_prefix(staged + "/")
    write_data_reports(prepared, join_uri(staged, "data"), storage)

    members = [MemberRef.of(m) for m in manifest.members]
    selected = ensemble_candidate(manifest)
    fused = [] if selected.is_member else [selected]
    pass_settings = EvaluationSettings(tta=manifest.fusion.tta, actors=settings.actors,
                                       cpus_per_actor=settings.cpus_per_actor, gpus_per_actor=settings.gpus_per_actor,
                                       precision=settings.precision, batch_size=settings.batch_size,
                                       overlays=settings.overlays)
    items = prepared.splits["test"]
    previews = tuple(i["item_id"] for i in items[: settings.overlays])
    spec = PassSpec(members, prepared.classmap, data, storage, manifest.tiling, manifest.normalization,
                    pass_settings, candidates=fused, preview_ids=previews, section="score")
    rows = run_pass(items, spec, "score ensemble")

    scored = scored_candidates(rows, members, fused, list(prepared.classmap.names))
    selected = scored[-1] if fused else scored[0]
    order = rank_members({c.members[0]: c.metrics for c in scored if c.is_member}, "miou")
    document = {
        "manifest": settings.manifest, "ensemble": manifest.name, "digest": manifest.digest(),
        "run": manifest.source_run, "data": [s.uri for s in data.sources], "split": str(settings.split),
        "images": len(items), "quarantined": len(prepared.quarantine),
        "rank_key": "miou", "rank_split": "scored", "ranking": order, "voters": order,
        "rank_metrics": {},
        "members": {m.name: {"model": m.model, "checkpoint": m.checkpoint, "model_options": dict(m.model_options),
                             "normalization": m.normalization} for m in manifest.members},
        "candidates": [c.to_document() for c in scored], "selected": selected.key,
        "at_selection": {k: v for k, v in manifest.metrics.items() if k in ("miou", "mPA", "mean_f1", "iou")},
        "tiling": manifest.tiling.model_dump(mode="json"), "tta": str(manifest.fusion.tta),
        "classes": manifest.classes, "normalization": manifest.normalization,
        # the scene's images as read here (each one's bit depth included), like evaluation.json's
        "channels": [group.model_dump(mode="json") for group in data.channel_groups] if data.sources[0].channels
        else None,
        "bit_depth": data.bit_depth,  # how these images' 16-bit samples were read (the manifest's unless set)
        "test_items": [i["item_id"] for i in items],
    }
    # the report's best member: the best scored here that is no baseline (reports.best_member_of)
    best_key = best_member_of(document, pass_settings.baselines)["key"]
    best = next(c for c in scored if c.key == best_key)
    gain = metric_value(selected.metrics, "miou") - metric_value(best.metrics, "miou")
    footer = (f"{selected.key} on {len(items)} image(s) of {', '.join(document['data'])}: mIoU "
              f"{metric_value(selected.metrics, 'miou'):.4f} (best member {best.key.removeprefix(MEMBER_PREFIX)}: "
              f"{metric_value(best.metrics, 'miou'):.4f}, {gain * 100:+.1f} points)")
    if document["at_selection"].get("miou") is not None:  # null: undefined, as recorded in the manifest
        footer += f"; at selection, on its run's test split: {document['at_selection']['miou']:.4f}"
    tables = write_reports(document, prepared, [p for p in rows.preview if p is not None], staged, storage,
                           pass_settings, stats_split="test", stats_label="scored")
    document["seconds"] = round(time.monotonic() - started, 1)
    storage.write_json(join_uri(staged, "score.json"), document)
    publish_outputs(storage, out, "score", SCORE_DOCUMENTS)
    print_reports(tables, footer)
    log_event(log, "score.done", output=out, selected=selected.key, images=len(items),
              miou=round(metric_value(selected.metrics, "miou"), 4))
    return ScoreResult(out, selected, best, len(items), len(prepared.quarantine), document)
