"""Evaluate members, rank them, build RUEL-k in every fusion mode, select one, write its manifest.

Passes over the data (Ray Data actor pool; each actor holds every member, loaded once):

1. the ranking split (validation by default): member metrics, and a pixel sample of
   member probabilities for fitting learned weights (on every image of the split, and per image
   without it: ``cross_fit_learned_weights``);
2. the ranking split and the test split: every member, and every RUEL-k x fusion mode built
   from the ranking, with time per image (TPI) measured the same way for all of them. The
   selection compares the ranking split's scores (learned candidates scored there with each
   image's out-of-fold weights); the test split's are what is reported
   (it never chooses, unless the data has no validation split or ``rank_on: test``).

Full images are tiled with overlap and their probabilities blended (never resized).
Confusion matrices are accumulated per image and merged on the driver.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from minseg.config.base import JobProblem
from minseg.config.schema import MinsegConfig
from minseg.data.classmap import ClassMap, checkpoint_class_difference, class_map_difference
from minseg.data.config import DataSettings
from minseg.data.pipeline import (PreparedData, classes_missing, first_ids, item_changes, load_example,
                                  prepare_data, recorded_contents)
from minseg.data.splits import split_groups
from minseg.enums import FusionMode, MemberCheckpoint, MemberStatus, SplitStratify, Task
from minseg.ensemble.config import EvaluationSettings, Tiling
from minseg.ensemble.manifest import file_sha256, write_manifest
from minseg.ensemble.runtime import (Columns, EnsembleRuntime, Fusion, MemberRef, check_member_files,
                                     check_members_fit)
from minseg.ensemble.selection import (
    MEMBER_PREFIX,
    BudgetUnmetError,
    Candidate,
    build_manifest,
    candidate_ensembles,
    cross_fit_learned_weights,
    ensemble_sizes,
    fit_learned_weights,
    rank_members,
    refuse_key_of_absent_class,
    select,
)
from minseg.ensemble.voting import fuse
from minseg.errors import InputError
from minseg.io.runs import read_members_table, recorded_checkpoint
from minseg.io.storage import (ObjectNotFoundError, Storage, join_uri, refuse_other_command_outputs,
                               staging_folder)
from minseg.logs import Progress, get_logger, log_event
from minseg.metrics import ConfusionMatrix, metric_key_problem, metric_value, metrics_from_confusion
from minseg.preflight import job_paths
from minseg.runtime import actor_errors, check_actor_pool, init_ray

log = get_logger("ensemble")


# ------------------------------------------------------------------ the actor pool


@dataclass
class PassSpec:
    """What every evaluation actor needs for one pass, typed (it pickles to the actors as is)."""

    members: list[MemberRef]
    classmap: ClassMap
    data: DataSettings
    storage: Storage
    tiling: Tiling
    normalization: dict[str, list[float]]
    settings: EvaluationSettings
    candidates: list[Candidate] = field(default_factory=list)
    sample_per_image: int = 0
    preview_ids: tuple[str, ...] = ()
    # candidate key -> item id -> learned weights fitted without that image (validation images only)
    held_out_weights: dict[str, dict[str, list]] = field(default_factory=dict)
    section: str = "evaluation"  # the config section whose actors / cpus_per_actor / gpus_per_actor these are


@dataclass
class ImageScores(Columns):
    """Per test image (one row each): confusion matrices of every member then every candidate
    ensemble (K, C, C), member and fusion seconds, a pixel sample for learned weights, a preview."""

    OBJECT_COLUMNS = ("item_id", "member_seconds", "fusion_seconds", "sample", "preview")

    item_id: list
    confusion: np.ndarray
    member_seconds: list
    fusion_seconds: list
    sample: list
    preview: list


class EnsembleEvaluator:
    """Ray Data actor: holds every member (one ``EnsembleRuntime``); per image, predicts, fuses and counts."""

    def __init__(self, spec: PassSpec):
        self.spec = spec
        self.runtime = EnsembleRuntime(spec.members, spec.classmap.num_classes, spec.storage,
                                       gpus=spec.settings.gpus_per_actor, precision=spec.settings.precision,
                                       mean=spec.normalization["mean"], std=spec.normalization["std"],
                                       tta=spec.settings.tta)
        self.fusions = [Fusion.candidate(c.mode, c.weights) for c in spec.candidates]
        self.held_out = {key: {item: Fusion.candidate(FusionMode.LEARNED, w).learned_weights
                               for item, w in weights.items()} for key, weights in spec.held_out_weights.items()}

    def __call__(self, batch: dict) -> dict:
        spec, classmap = self.spec, self.spec.classmap
        num_classes, ignore = classmap.num_classes, classmap.ignore_index
        rows = ImageScores([], [], [], [], [], [])
        for text in batch["item"]:
            item = json.loads(text)
            image, truth = load_example(item, classmap, spec.data.limits, spec.storage, spec.data.tiling.scale,
                                        bit_depth=spec.data.bit_depth)
            prediction = self.runtime.predict_image(image, spec.tiling, spec.settings.batch_size)
            probs_t = prediction.probabilities[:, 0]  # (M, C, H, W)
            target = torch.from_numpy(truth.astype(np.int64))
            matrices = [ConfusionMatrix(num_classes, ignore).update(probs_t[m : m + 1], target[None]).matrix
                        for m in range(len(self.runtime.members))]
            fusion_seconds, fused_labels = [], {}
            for candidate, fusion in zip(spec.candidates, self.fusions):
                started = time.perf_counter()
                members = probs_t[[self.runtime.index[n] for n in candidate.members]]
                weights = self.held_out.get(candidate.key, {}).get(item["item_id"], fusion.learned_weights)
                labels, _ = fuse(members, fusion.mode, weights)
                fusion_seconds.append(time.perf_counter() - started)
                matrices.append(ConfusionMatrix(num_classes, ignore).update(labels[None], target[None]).matrix)
                fused_labels[candidate.key] = labels
            probs = probs_t.numpy()
            rows.item_id.append(item["item_id"])
            rows.confusion.append(torch.stack(matrices).numpy())
            rows.member_seconds.append(np.array(prediction.seconds))
            rows.fusion_seconds.append(np.array(fusion_seconds or [0.0]))
            rows.sample.append(self._sample(item["item_id"], probs, truth))
            rows.preview.append(self._preview(item["item_id"], image, truth, probs_t, fused_labels))
        rows.confusion = np.stack(rows.confusion)
        return rows.to_batch()

    def _sample(self, item_id: str, probs: np.ndarray, truth: np.ndarray):
        """Seeded random pixels (member probabilities + truth) for fitting learned weights."""
        count = self.spec.sample_per_image
        if not count:
            return None
        valid = np.flatnonzero(truth.ravel() != self.spec.classmap.ignore_index)
        rng = np.random.default_rng(zlib.crc32(item_id.encode()))  # stable across processes, unlike hash()
        chosen = rng.choice(valid, size=min(count, valid.size), replace=False) if valid.size else valid
        flat = probs.reshape(probs.shape[0], probs.shape[1], -1)[:, :, chosen]
        return {"probs": flat.astype(np.float16), "truth": truth.ravel()[chosen].astype(np.uint8)}

    def _preview(self, item_id, image, truth, probs, fused):
        if item_id not in self.spec.preview_ids:
            return None
        # every candidate's labels: which one is selected is known only after this pass
        labels = {f"{MEMBER_PREFIX}{name}": probs[i].argmax(0).numpy().astype(np.uint8)
                  for name, i in self.runtime.index.items()}
        labels.update({key: value.numpy().astype(np.uint8) for key, value in fused.items()})
        return {"item_id": item_id, "image": image, "truth": truth, "labels": labels}


def run_pass(items: list[dict], spec: PassSpec, label: str = "evaluate") -> ImageScores:
    """One pass of the actor pool over ``items``: one row per image, in any order (a progress bar named
    ``label`` on a terminal).

    Callers check first, before preparing data, that the cluster can hold an actor (``runtime.check_actor_pool``)
    and that every member's ``model.pt`` is there (``check_member_files``, or the manifest's verification).

    Raises:
        MemberLoadError: an actor cannot load a member (damaged weights, model / options that do not fit them):
            one message naming the member and the file, not Ray's traceback.
    """
    import ray

    settings = spec.settings
    dataset = ray.data.from_items([{"item": json.dumps(item)} for item in items])
    results = dataset.map_batches(
        EnsembleEvaluator,
        fn_constructor_kwargs={"spec": spec},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=settings.actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
    )
    # rows, not numpy batches: a block whose previews (or samples) are all None would come back as NaNs
    rows = []
    with Progress(len(items), label, unit="images") as progress, actor_errors(f"{spec.section} actors"):
        for row in results.iter_rows():
            rows.append(row)
            progress.advance()
    return ImageScores.from_rows(rows)


def metrics_for(rows: ImageScores, index: int, class_names) -> dict:
    matrix = rows.confusion[:, index].sum(axis=0)
    metrics = metrics_from_confusion(matrix, class_names)
    metrics["confusion"] = matrix.tolist()
    return metrics


# ------------------------------------------------------------------ the phases


def discover_members(storage: Storage, run_uri: str, names: list[str] | None,
                     data: DataSettings | None = None,
                     checkpoint: MemberCheckpoint = MemberCheckpoint.BEST,
                     configured: list[str] | None = None) -> list[MemberRef]:
    """Finished segmentation members of a training run at their ``checkpoint`` (``best``: the one training kept
    on validation, its last epoch when it had none; ``last``: the final epoch), checked for one class map and,
    given the ``data`` they will be evaluated on, for the input channels they were trained on (``check_channels``).
    ``configured``: the members the config names; those the run never trained (``--members`` subsets) are warned
    about when every finished member is evaluated.

    Raises:
        InputError: no members table, a member asked for that did not finish, members trained on different
            class maps or other channels than the data gives, or members that are not segmentation learners.
    """
    from minseg.models import get_entry

    table = read_members_table(storage, run_uri)
    if table is None:
        if any(any(True for _ in storage.list(join_uri(run_uri, *part, "members") + "/"))  # checkpoints, no table
               for part in ((), ("fold1",))):
            raise InputError(f"{run_uri}: no members.json: its training was stopped before the members table was "
                             "written (interrupted, or still running); 'minseg train --resume' with the same config "
                             "finishes it")
        raise InputError(f"{run_uri}: no members.json (is this a training run? run 'minseg train' first)")
    done = {row["member"]: row for row in table if row["status"] == MemberStatus.DONE and row.get("fold") is None}
    unfinished = {row["member"]: str(row["status"]) for row in table
                  if row.get("fold") is None and row["member"] not in done}
    if unfinished and names is None:  # an ensemble of the others: said, or it looks like the configured one
        log_event(log, "ensemble.members_not_finished", logging.WARNING,
                  members=", ".join(f"{m} ({s})" for m, s in unfinished.items()),
                  hint="evaluated without them (their error: members.csv); train them again with 'minseg train "
                       "--resume' to include them")
    folds = {row.get("fold") for row in table} - {None}
    if folds and not done:
        raise InputError(f"{run_uri} is a {len(folds)}-fold cross-validation run: each member was trained once per "
                         "fold and scored on that fold's test part by training (members.csv test column, members.json "
                         "cross_validation: mean ± sd); there is no one model per member to rank and fuse. Evaluate "
                         "ensembles on a run without data.split.folds")
    untrained = [name for name in configured or () if name not in done and name not in unfinished]
    if untrained and names is None:
        log_event(log, "ensemble.members_not_trained", logging.WARNING, members=", ".join(untrained),
                  hint="the config names them but the run has not trained them (trained in parts with --members?): "
                       "evaluated without them; 'minseg train --members ...' trains them into this run")
    wanted = names or list(done)
    missing = [n for n in wanted if n not in done]
    if missing:
        raise InputError(f"members not finished in {run_uri}: {', '.join(missing)} (finished: {', '.join(done)})")
    members, classes = [], None
    # the config's class map when there is one: the member that differs is named, with how (not the first one read)
    reference = ClassMap.from_settings(data.classes) if data is not None and data.classes is not None else None
    checkpoint = MemberCheckpoint(checkpoint)
    for name in wanted:
        uri = recorded_checkpoint(storage, run_uri, done[name], checkpoint)  # under run_uri: a copied run's own
        if not uri:
            raise InputError(f"member {name!r} of {run_uri}: no {checkpoint.value} checkpoint under "
                             f"{join_uri(run_uri, 'members', name, 'checkpoints')} (no last.json / best.json there: "
                             "a run copied without its checkpoints?)")
        member = storage.read_json(join_uri(uri, "member.json"))
        document = storage.read_json(join_uri(uri, "classes.json"))
        if reference is not None and (difference := class_map_difference(document, reference)):
            raise InputError(f"member {name!r} ({uri}) was trained with another class map than data.classes gives "
                             f"now: {difference}; evaluation would score each class against another's pixels. Keep "
                             "data.classes as it was when the members trained")
        if reference is None and classes is not None and document != classes[1]:
            difference = class_map_difference(document, ClassMap.from_document(classes[1]))
            raise InputError(f"members {classes[0]!r} and {name!r} ({uri}) were trained on different class maps"
                             + (f" ({name!r} against {classes[0]!r}: {difference})" if difference else ""))
        classes = classes or (name, document)
        if data is not None:
            check_channels(name, member, data)
        members.append(MemberRef(name, member["model"], uri, member["model_options"],
                                 _member_normalization(storage, uri)))
    if not members:
        raise InputError(f"{run_uri}: no finished members to evaluate")
    if any(get_entry(m.model).task is not Task.SEGMENTATION for m in members):
        raise InputError("ensemble evaluation covers segmentation members; training scores each classifier's best "
                         "checkpoint on the test split (members.csv test column; data.split.test above 0)")
    return members


def check_channels(name: str, member: dict, data: DataSettings) -> None:
    """The data gives member ``name`` (its ``member.json``) the input it was trained on: as many channels, from
    the same images of a scene in the same order (members without a record read RGB).

    Raises:
        InputError: naming the member, what it reads and what the data gives.
    """
    from minseg.data.config import ImageChannels, channel_signature, describe_channels

    recorded = member.get("channels")
    groups = [ImageChannels.model_validate(g) for g in recorded] if recorded else [ImageChannels(name="image")]
    count = member["model_options"].get("in_channels", 3)
    if (recorded and channel_signature(groups) != channel_signature(data.channel_groups)) \
            or count != data.in_channels:
        trained = describe_channels(groups) if recorded else f"{count} channel(s)"
        raise InputError(f"member {name!r} was trained on {trained} per scene, the data gives "
                         f"{describe_channels(data.channel_groups)}: declare the same data.sources[].channels "
                         "(names, modes, order) as in training")


def _member_normalization(storage: Storage, checkpoint: str) -> dict | None:
    """The statistics a member was trained with (``metrics.json``; pretrained members may differ from the data's)."""
    try:
        return json.loads(storage.read_text(join_uri(checkpoint, "metrics.json"))).get("normalization")
    except (ObjectNotFoundError, ValueError):  # older checkpoints, or an unreadable record: the data's
        return None


def prepare_evaluation_data(config: MinsegConfig, storage: Storage, run_uri: str) -> PreparedData:
    """The data the members were trained on, re-listed and re-split, checked to give the same splits."""
    prepared = prepare_data(config.data, Task.SEGMENTATION, config.run.seed, storage, join_uri(run_uri, "data"),
                            config.ray.task_cpus)
    _check_same_splits(storage, run_uri, prepared)
    if not prepared.splits["test"]:
        raise InputError("the test split is empty: nothing to evaluate the ensemble on")
    return prepared


@dataclass
class Ranking:
    """Members ranked on the ranking split, with the learned fusion weights fitted there (per k) and, per k and
    ranking-split image, the weights fitted without that image (what scores the learned candidates there)."""

    split: str
    order: list[str]
    metrics: dict[str, dict]
    learned: dict[int, list]
    pool: list[str]  # the voters, in rank order: what RUEL-k ensembles are built from
    held_out: dict[int, dict[str, list]] = field(default_factory=dict)


def rank_on_validation(members: list[MemberRef], prepared: PreparedData, spec: PassSpec) -> Ranking:
    """Pass 1: member metrics on the ranking split (validation, or test when there is none), and
    learned fusion weights fitted on a pixel sample of it: on every image (what test and the manifest use) and,
    per image, on the other folds' images (what scores the learned candidates on this split), folds made of the
    groups the split was chosen by (``data.split.group_by``)."""
    settings = spec.settings
    split = settings.rank_on if prepared.splits[settings.rank_on] else "test"
    names = list(prepared.classmap.names)
    wants_learned = FusionMode.LEARNED in settings.modes and split != "test"
    sample = max(1, settings.weight_fit_pixels // max(1, len(prepared.splits[split])))
    spec.sample_per_image = sample if wants_learned else 0
    # a per-class key whose class the split lacks ranks nothing (the stats count its pixels): before the pass
    # (select checks again from the scores, where stats are not at hand)
    pixels = prepared.stats.get(split, {}).get("classes", {})
    refuse_key_of_absent_class(settings.rank_key, names, [pixels[n]["pixels"] for n in names]
                               if all(n in pixels for n in names) else None, split)
    rows = run_pass(prepared.splits[split], spec, f"rank members ({split})")
    metrics = {m.name: metrics_for(rows, i, names) for i, m in enumerate(members)}
    order = rank_members(metrics, settings.rank_key)
    log_event(log, "ensemble.ranked", split=split, key=settings.rank_key, order=",".join(order))
    pool = [name for name in order if settings.voters is None or name in settings.voters]
    learned, held_out = {}, {}
    if wants_learned:
        positions = [next(i for i, m in enumerate(members) if m.name == name) for name in pool]
        samples = {item: {"probs": s["probs"][positions], "truth": s["truth"]}
                   for item, s in zip(rows.item_id, rows.sample) if s is not None}
        fit = dict(num_classes=len(names), key=settings.rank_key, class_names=names,
                   per_class=settings.learned_per_class, ignore_index=prepared.classmap.ignore_index)
        group_of = split_groups({i["source_id"] for i in prepared.splits[split]}, spec.data.split.group_by)
        groups = {i["item_id"]: group_of[i["source_id"]] for i in prepared.splits[split]}
        for k in ensemble_sizes(settings, len(pool)):
            learned[k] = fit_learned_weights(list(samples.values()), k, **fit)
            held_out[k] = cross_fit_learned_weights(samples, k, folds=settings.weight_fit_folds, groups=groups, **fit)
        if learned and not any(held_out.values()):
            log_event(log, "ensemble.learned_not_cross_fitted", logging.WARNING, split=split, images=len(samples),
                      hint="one image (or scene): learned candidates are scored on the pixels their weights were "
                           "fitted to, which favours them in the selection; give the split more images")
    return Ranking(split, order, metrics, learned, pool, held_out)


def score_candidates(members: list[MemberRef], prepared: PreparedData, spec: PassSpec, ensembles: list[Candidate],
                     selection_split: str = "test") -> tuple[list[Candidate], list[dict]]:
    """Pass 2: every member and every candidate ensemble on the test split (what is reported, with time per
    image) and on ``selection_split`` (what ``select`` chooses by: validation, so that the test split never
    chooses), with each image's confusion matrix on the split that chooses (``Candidate.selection_confusions``);
    returns the scored candidates (members first) and the preview images (test images)."""
    names = list(prepared.classmap.names)
    spec.candidates, spec.sample_per_image = ensembles, 0
    test = prepared.splits["test"]
    spec.preview_ids = tuple(i["item_id"] for i in test[: spec.settings.overlays])
    choosing = prepared.splits[selection_split] if selection_split != "test" else []
    test_ids = {i["item_id"] for i in test}
    _check_held_out(spec.held_out_weights, {i["item_id"] for i in choosing}, test_ids)
    label = "score ensembles (test)" if not choosing else f"score ensembles ({selection_split} + test)"
    rows = run_pass(test + choosing, spec, label)
    previews = [preview for preview in rows.preview if preview is not None]
    on_test = [item in test_ids for item in rows.item_id]
    test_rows = rows.subset(on_test)
    scored = scored_candidates(test_rows, members, ensembles, names)
    on_selection = rows.subset([not t for t in on_test]) if choosing else test_rows
    chosen_on = scored_candidates(on_selection, members, ensembles, names) if choosing else scored
    # rows come back in any order; one_se resamples them with selection_groups, in item-id order
    order = sorted(range(len(on_selection.item_id)), key=lambda i: on_selection.item_id[i])
    for index, (candidate, chosen) in enumerate(zip(scored, chosen_on)):
        if choosing:
            candidate.selection_metrics = chosen.metrics
        candidate.selection_confusions = on_selection.confusion[order, index].astype(np.int64).tolist()
    return scored, previews


def selection_groups(prepared: PreparedData, split: str, data: DataSettings) -> list[str]:
    """Per image of the split that chooses, in item-id order (that of ``Candidate.selection_confusions``), the
    group its split was chosen by (its source image, or its scene: ``data.split.group_by``): what the one_se
    rule's bootstrap draws whole."""
    items = sorted(prepared.splits[split], key=lambda i: i["item_id"])
    group_of = split_groups({i["source_id"] for i in items}, data.split.group_by)
    return [group_of[i["source_id"]] for i in items]


def _check_held_out(held_out: dict[str, dict[str, list]], choosing: set[str], test: set[str]) -> None:
    """Out-of-fold weights cover every image that chooses and none of the test split (else the learned candidates
    would silently be scored in-sample, or tested with weights that are not the manifest's)."""
    for key, weights in held_out.items():
        if set(weights) != choosing or set(weights) & test:
            raise RuntimeError(f"{key}: out-of-fold weights for {len(weights)} images, the selection split has "
                               f"{len(choosing)} ({len(set(weights) & test)} of them test images)")


def scored_candidates(rows: ImageScores, members: list[MemberRef], ensembles: list[Candidate],
                      class_names: list[str]) -> list[Candidate]:
    """Every member alone (first, as ``member:<name>``) then each of ``ensembles`` (in the pass's order, as new
    candidates: the inputs are left as they are), with metrics from the summed confusion matrices and time per image
    (TPI: its members' + its fusion's)."""
    member_tpi = np.mean(np.stack(rows.member_seconds), axis=0)
    fusion_tpi = np.mean(np.stack(rows.fusion_seconds), axis=0)
    position = {m.name: i for i, m in enumerate(members)}
    scored = [Candidate(f"{MEMBER_PREFIX}{m.name}", [m.name], None, [1], metrics_for(rows, i, class_names),
                        float(member_tpi[i])) for i, m in enumerate(members)]
    for j, candidate in enumerate(ensembles):
        tpi = float(sum(member_tpi[position[n]] for n in candidate.members) + fusion_tpi[j])
        scored.append(replace(candidate, metrics=metrics_for(rows, len(members) + j, class_names), tpi=tpi))
    return scored


@dataclass
class EvaluationResult:
    """What ``evaluate_ensemble`` produced: the selected candidate among all, where the manifest is,
    and the evaluation document as written to ``evaluation.json``."""

    output_uri: str
    manifest_uri: str
    selected: Candidate
    candidates: list[Candidate]
    ranking: list[str]
    rank_split: str
    rank_key: str
    document: dict


def rank_key_problem(config: MinsegConfig, names: list[str] | None = None) -> JobProblem | None:
    """Why ``evaluation.rank_key`` names no class of ``data.classes`` (its form is checked when the config is read),
    as ``evaluate`` refuses it before any work and ``config validate`` says it; None when it does, or when the
    config lists no classes. ``names``: the class names to check against instead (the demo's synthetic ones)."""
    if names is None and config.data is not None and config.data.classes is not None:
        names = [c.name for c in config.data.classes.classes]
    if config.evaluation is None or names is None:
        return None
    problem = metric_key_problem(config.evaluation.rank_key, names)
    return JobProblem("evaluation.rank_key", problem) if problem else None


def evaluate_ensemble(config: MinsegConfig) -> EvaluationResult:
    """The evaluation job (module doc): discover → prepare data → rank → build candidates → score on test →
    select → publish (evaluation.json, manifest.json, reports).

    Raises:
        InputError: no data section, no finished members, changed splits, an empty test split, ``k_min`` /
            ``k_max`` that build no ensemble from two or more voters (``selection.ensemble_sizes``), a per-class
            ``rank_key`` whose class the ranking split lacks, a member that cannot be loaded (``MemberLoadError``).
        BudgetUnmetError: no candidate fits ``selection.tpi_budget_s``, known only once every candidate is timed:
            the evaluation (scores, reports, ``evaluation.json``) is published without a manifest, an earlier
            evaluation's manifest deleted with it; ``minseg select`` chooses from it without predicting again.
        ResourceError: an actor pool the cluster could never hold (``evaluation.cpus_per_actor`` / ``gpus_per_actor``).
    """
    from minseg.ensemble.reports import (EVALUATION_DOCUMENTS, finish_publication, print_reports,
                                         publish_outputs, write_reports)

    if config.data is None:
        raise InputError("evaluation needs the 'data' section the members were trained with")
    if other := config.data.bit_depths_unlike_first():
        log_event(log, "evaluate.bit_depths_differ", logging.WARNING, images="; ".join(other),
                  hint="the manifest records how sources[0] reads each image: slides of the other camera need "
                       "segment.bit_depth (--bit-depth)")
    settings = config.evaluation or EvaluationSettings()
    if problem := rank_key_problem(config):  # before minutes of prediction
        raise InputError(str(problem))
    storage = Storage(config.storage)
    run_uri = settings.evaluated_run(config.run.uri)
    out = settings.output_uri(config.run.uri)
    refuse_other_command_outputs(out, "evaluate", "evaluation.name", storage)
    if finish_publication(storage, out, "evaluate", EVALUATION_DOCUMENTS):
        log_event(log, "evaluate.earlier_outputs_put_in_place", output=out,
                  hint="the last evaluation into this folder was complete but cut short while put in place")
    own_run = config.training is not None and settings.run_uri is None  # not evaluation.run_uri's other run
    members = discover_members(storage, run_uri, settings.members, config.data, settings.checkpoint,
                               [m.name for m in config.training.members] if own_run else None)
    for key, names in (("voters", settings.voters), ("baselines", settings.baselines)):  # a typo: not ignored
        if unknown := sorted(set(names or []) - {m.name for m in members}):
            raise InputError(f"evaluation.{key} names member(s) not evaluated: {', '.join(unknown)}; "
                             f"evaluated: {', '.join(m.name for m in members)}")
    if not settings.modes:
        log_event(log, "ensemble.no_fusion_modes", logging.WARNING,
                  hint="evaluation.modes is empty: no RUEL-k ensemble is built, the candidates are single members "
                       "and the manifest is the best member's")
    voters = len(settings.voters) if settings.voters else len(members)
    if not ensemble_sizes(settings, voters, len(members)):  # refused above one voter: before any pass
        log_event(log, "ensemble.nothing_to_fuse", logging.WARNING, voters=voters,
                  hint="one voter builds no RUEL-k ensemble: the candidates are single members and the manifest is "
                       "the best member's; evaluate two or more members to fuse")
    init_ray(config.ray, job_paths([config.data, run_uri], [out]))
    check_actor_pool("evaluation", 1, settings.cpus_per_actor, settings.gpus_per_actor)  # before preparing data
    check_member_files(members, storage)
    # the weights about to be scored, hashed before they are (a member retrained meanwhile is not recorded as
    # scored): evaluation.json and the manifest record these; select compares a member's file with them
    hashes = {m.name: file_sha256(storage, m.weights_uri) for m in members}
    _warn_identical_members(members, hashes)
    prepared = prepare_evaluation_data(config, storage, run_uri)
    _refuse_members_of_other_data(storage, members, prepared)
    check_members_fit(members, prepared.classmap.num_classes, storage)  # one line, not every actor's traceback
    spec = PassSpec(members, prepared.classmap, config.data, storage, settings.tiling(config.data.tiling),
                    prepared.normalization, settings)

    ranking = rank_on_validation(members, prepared, spec)
    ensembles = candidate_ensembles(ranking.pool, settings, ranking.learned)
    spec.held_out_weights = {c.key: ranking.held_out[len(c.members)] for c in ensembles
                             if c.mode is FusionMode.LEARNED and ranking.held_out.get(len(c.members))}
    candidates, previews = score_candidates(members, prepared, spec, ensembles, ranking.split)
    if ranking.split == "test":
        why = ("evaluation.rank_on is test" if settings.rank_on == "test" else "the data has no validation split")
        log_event(log, "ensemble.selected_on_test", logging.WARNING,
                  hint=f"{why}: the candidates are chosen on the test split, so its scores are optimistic; rank "
                       "and choose on validation (rank_on: val, data.split.val > 0)")
    for split, what in {ranking.split: "the choice leans on stray pixels", "test": "the reported test mIoU counts "
                        "a 0 for each of them whatever else the candidate does"}.items():
        missing = classes_missing(prepared.stats, split)
        if missing:  # IoU 0 for a stray prediction of an absent class
            log_event(log, "ensemble.classes_missing_from_split", logging.WARNING, split=split,
                      classes=",".join(missing), hint=f"a candidate predicting any pixel of these classes scores IoU "
                      f"0 for them on {split}: {what}; give the split images with every class ("
                      + ("data.split.stratify: classes, or " if spec.data.split.stratify is SplitStratify.NONE
                         else "") + "data.split.lists)")
    groups = selection_groups(prepared, ranking.split, config.data)
    try:
        chosen, unmet = select(candidates, settings.rank_key, settings.selection, groups, ranking.split), None
    except BudgetUnmetError as exc:  # the scores are kept: minseg select chooses again from them
        chosen, unmet = None, exc
    else:
        log_event(log, "ensemble.selected", choice=chosen.key, rule=str(settings.selection.rule),
                  key=settings.rank_key, on=ranking.split,
                  value=round(metric_value(chosen.choosing_metrics, settings.rank_key), 4),
                  test=round(metric_value(chosen.metrics, settings.rank_key), 4), tpi=round(chosen.tpi, 4))

    document = evaluation_document(run_uri, settings, ranking, members, candidates, chosen, spec, prepared, groups,
                                   hashes, str(unmet) if unmet else None)
    staged = staging_folder(out, "evaluate")  # an earlier evaluation in out stays whole until this one is complete
    storage.delete_prefix(staged + "/")
    manifest = build_manifest(document, chosen.key, storage, settings.name, hashes=hashes) if chosen else None
    tables = write_reports(document, prepared, previews, staged, storage, settings)
    if manifest is not None:  # none unselected: the earlier evaluation's manifest leaves with it (publish_outputs)
        write_manifest(manifest, join_uri(staged, "manifest.json"), storage)
    storage.write_json(join_uri(staged, "evaluation.json"), document)  # the marker: the staged outputs are complete
    publish_outputs(storage, out, "evaluate", EVALUATION_DOCUMENTS)
    manifest_uri = join_uri(out, "manifest.json")
    if unmet is not None:
        print_reports(tables, f"no ensemble selected -> {out} (no manifest)")
        raise BudgetUnmetError(f"{unmet}: the evaluation is written to {out} without a manifest; choose from its "
                               f"scores without predicting again: minseg select {out} --tpi-budget SECONDS (or "
                               f"--rule best) --out {manifest_uri}, the manifest segment and score read there")
    print_reports(tables, f"selected {chosen.key} -> {manifest_uri}")
    log_event(log, "ensemble.done", output=out, selected=chosen.key)
    return EvaluationResult(out, manifest_uri, chosen, candidates, ranking.order, ranking.split, settings.rank_key,
                            document)


def evaluation_document(run_uri: str, settings: EvaluationSettings, ranking: Ranking, members: list[MemberRef],
                        candidates: list[Candidate], chosen: Candidate | None, spec: PassSpec,
                        prepared: PreparedData, groups: list[str], hashes: dict[str, str],
                        unselected: str | None = None) -> dict:
    """``evaluation.json``: everything ``minseg select`` needs to choose again without predicting; ``hashes``: the
    sha256 of each member's weights as scored; ``chosen`` None: no candidate was selected, for the reason
    ``unselected`` (recorded: no candidate fits the TPI budget)."""
    return {
        "run": run_uri,
        "rank_key": settings.rank_key,
        "rank_split": ranking.split,
        "member_checkpoint": str(settings.checkpoint),
        "selection_split": ranking.split,  # candidates' selection_metrics; their metrics are the test split's
        "selection_groups": groups,  # per image of selection_confusions: what one_se resamples whole
        "ranking": ranking.order,
        "voters": ranking.pool,
        "rank_metrics": {n: {k: v for k, v in m.items() if k != "confusion"} for n, m in ranking.metrics.items()},
        # the weights scored: select refuses to put a member retrained since into a manifest under these scores
        "members": {m.name: {"model": m.model, "checkpoint": m.checkpoint, "model_options": dict(m.model_options),
                             "normalization": m.normalization, "sha256": hashes[m.name]} for m in members},
        "candidates": [c.to_document() for c in candidates],
        # learned candidates' selection_metrics: each image of the selection split scored with weights fitted
        # without it (k -> item id -> weights); absent k: scored with their own weights (one image)
        "learned_held_out_weights": {str(k): weights for k, weights in ranking.held_out.items() if weights},
        "selected": chosen.key if chosen else None,
        **({"unselected": unselected} if unselected else {}),  # why none is (select chooses from the scores)
        "selection": settings.selection.model_dump(mode="json"),
        "tiling": spec.tiling.model_dump(mode="json"),
        "tta": str(settings.tta),
        "classes": prepared.classmap.to_document(),
        "normalization": prepared.normalization,
        "channels": ([group.model_dump(mode="json") for group in spec.data.channel_groups]
                     if spec.data.sources[0].channels else None),
        "bit_depth": spec.data.bit_depth,  # the manifest's: segment reads slides as these images were read
        "test_items": [i["item_id"] for i in prepared.splits["test"]],
    }


def _warn_identical_members(members: list[MemberRef], hashes: dict[str, str]) -> None:
    """Members with the same weights file (same sha256) and model vote alike: an ensemble of them is one member
    counted several times (a copied checkpoint, or members configured alike down to the seed). Warned, not refused:
    the evaluation still ranks and scores them."""
    alike: dict[tuple, list[str]] = {}
    for member in members:
        alike.setdefault((hashes[member.name], member.model, repr(sorted(dict(member.model_options).items()))),
                         []).append(member.name)
    for names in (names for names in alike.values() if len(names) > 1):
        log_event(log, "ensemble.identical_members", logging.WARNING, members=",".join(names),
                  hint="their weights are the same file: they predict alike, and an ensemble of them counts one "
                       "member's vote several times; give each its own seed or recipe (training.members[].seed), "
                       "or evaluate one of them (evaluation.members)")


def _refuse_members_of_other_data(storage: Storage, members: list[MemberRef], prepared: PreparedData) -> None:
    """Raise InputError naming members whose checkpoints record other data than the splits evaluated now (a member
    trained alone, ``--members``, before the data or split changed: it may have trained on test images).
    ``data/splits.json`` says only what the latest training saw. Checkpoints before 2026-12-05 record none. Also
    refused: members whose recorded class map (``classes.json``) reads masks into other class ids than
    ``data.classes`` now (reordered, renamed or recoded: each class would be scored against another's pixels)."""
    recoded = [(member, difference) for member in members
               if (difference := checkpoint_class_difference(storage, member.checkpoint, prepared.classmap))]
    if recoded:
        raise InputError(f"{', '.join(f'member {m.name} ({m.checkpoint})' for m, _ in recoded)} trained with another "
                         f"class map than data.classes gives now: {recoded[0][1]}; evaluation would score each class "
                         "against another's pixels. Keep data.classes as it was when the members trained")
    current, stale = prepared.data_signature(), []
    for member in members:
        try:
            recorded = storage.read_json(join_uri(member.checkpoint, "state.json")).get("data_signature")
        except ObjectNotFoundError:  # a checkpoint without a state (a bare export): nothing recorded
            continue
        if recorded is not None and recorded != current:
            stale.append(f"{member.name} ({member.checkpoint})")
    if stale:
        raise InputError(f"evaluation would rank and fuse members trained on other data than these splits (the "
                         f"data or the split changed since they trained, or the bit depth images are read with: "
                         f"data.bit_depth, channels[].bit_depth): {', '.join(stale)}. Train them again "
                         "(delete their folders and train with --resume) or leave them out (evaluation.members)")


def _check_same_splits(storage: Storage, run_uri: str, prepared: PreparedData) -> None:
    try:
        saved = json.loads(storage.read_text(join_uri(run_uri, "data", "splits.json")))
    except ObjectNotFoundError:
        return
    for split in ("train", "val", "test"):
        now = [i["item_id"] for i in prepared.splits[split]]
        if split in saved and (said := item_changes(saved[split], now, "now in it, not at training",
                                                    "at training, not now")):
            raise InputError(f"the {split} split differs from the one the members were trained with "
                             f"({join_uri(run_uri, 'data', 'splits.json')}: {said}); the data or the split settings "
                             "changed: evaluate with the data they were trained on")
    # pictures or masks replaced under their own names (runs prepared before 2026-12-07 record none): said, not
    # refused, as each split keeps its images (a corrected test mask is scored as corrected; a training image
    # edited since means the members learnt from its earlier version)
    contents = join_uri(run_uri, "data", "contents.json")
    if (recorded := recorded_contents(storage, contents)) and (changed := prepared.content_changes(recorded)):
        where = {i["item_id"]: split for split in ("train", "val", "test") for i in prepared.splits[split]}
        log_event(log, "ensemble.images_changed", logging.WARNING, images=len(changed), record=contents,
                  **{split: first_ids(ids, ",")
                     for split in ("train", "val", "test") if (ids := [i for i in changed if where[i] == split])},
                  hint="other pixels or masks under the same names than when the members were trained: the "
                       "scores are on the pictures as they are now")
