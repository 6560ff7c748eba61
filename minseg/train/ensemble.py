"""Train every member of an ensemble concurrently: one Ray Train run (DDP) per member and fold,
each launched from a Ray task, throttled to what the cluster can hold. One member failing never
stops the others; the job ends with a members table (CSV + JSON + printed).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Protocol

import numpy as np

from minseg.config.base import JobProblem
from minseg.config.schema import MinsegConfig
from minseg.data.classmap import ClassMap, checkpoint_class_difference
from minseg.data.config import AugmentSettings
from minseg.data.containers import is_archive
from minseg.data.pipeline import (CLASSES_REQUIRED, PreparedData, first_ids, item_changes, prepare_data,
                                  recorded_contents, split_dataset, write_data_reports)
from minseg.data.splits import SPLITS
from minseg.data.sampling import tile_repeats
from minseg.enums import ClassWeighting, MemberStatus, PadMode, Task
from minseg.errors import InputError, MinsegError
from minseg.io.images import BIT_DEPTH
from minseg.io.storage import (Storage, StorageError, is_s3, join_uri, parse_uri, refuse_other_command_outputs,
                               refuse_output_among_inputs)
from minseg.io.tables import csv_text
from minseg.logs import EpochBoard, get_logger, log_event, redact
from minseg.metrics import metric_value
from minseg.models import WeightLoadReport, build_model, get_entry
from minseg.preflight import job_paths
from minseg.runtime import ResourceError, describe_nodes, fits_one_node, init_ray, live_nodes
from minseg.train.bagging import bagging_counts, bagging_seed
from minseg.io.runs import member_uri, read_members_table, read_pointer, trial_uri
from minseg.train.checkpoint import load_checkpoint
from minseg.train.config import MemberSettings, TrainingSettings

log = get_logger("train.ensemble")


@dataclass
class MemberResult:
    member: str
    model: str
    status: MemberStatus
    fold: int | None = None
    metric: str = ""
    best_value: float | None = None  # of ``metric`` on validation (what chose the checkpoint)
    test_value: float | None = None  # k-fold trials: ``metric`` of that checkpoint on the fold's test part
    best_epoch: int | None = None
    epochs: int = 0
    restarts: int = 0
    wall_seconds: float = 0.0
    started_at: float | None = None  # unix time, for overlap / throughput analysis
    finished_at: float | None = None
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None
    init: str | None = None  # pretrained weights: what loaded (WeightLoadReport.short)
    error: str | None = None
    warning: str | None = None  # a finished member that learned nothing (``learning_problem``)

    def __post_init__(self):
        self.status = MemberStatus(self.status)  # a results file read back holds the string


# ------------------------------------------------------------ up-front checks


def member_task(member: MemberSettings) -> Task:
    return get_entry(member.model).task


# what an epoch's metrics hold besides the validation scores (``loop.train_epoch``, ``loop.evaluate``)
EPOCH_METRICS = ("val_loss", "train_loss", "lr", "epoch", "stage", "train_tiles", "tiles_per_s", "data_wait_fraction",
                 "seconds")
# recorded beside the losses, judged after training (``learning_problem``), never a checkpoint metric
UNIFORM_LOSSES = ("train_loss_uniform", "val_loss_uniform")


def preflight(member: MemberSettings, num_classes: int, in_channels: int, storage: Storage | None = None,
              weights_cache: dict | None = None, class_counts: list[int] | None = None,
              class_names: list[str] | None = None, tile_size: int | None = None) -> str | None:
    """Build the member's model and loss without data (meta device) and match its pretrained weights
    to it (names and shapes only: a wrong file is refused before any worker starts); check its
    ``checkpoint_metric`` names a metric of these classes and that its model takes tiles of ``tile_size`` pixels
    (``data.tiling.size``: its smallest input and, with ``pad_mode: strict``, its size multiple; None: not
    checked); the error text, or None.

    ``weights_cache``: state dicts already read, by URI (members often share one file). ``class_counts``: the
    training data's counts per class (``TrainingSource.class_counts``), for class weights computed from them.
    """
    import torch

    from minseg.errors import MinsegError
    from minseg.losses import build_loss
    from minseg.metrics import metric_key_problem
    from minseg.models.pretrained import choose_normalization, plan_weights, read_state_dict

    if class_names is not None:
        problem = metric_key_problem(member.checkpoint_metric, class_names, EPOCH_METRICS)
        if problem:
            return f"checkpoint_metric: {problem}"
    try:
        with torch.device("meta"):
            model = build_model(member.model, num_classes=num_classes, in_channels=in_channels, **member.model_options)
        if tile_size is not None and tile_size < model.min_size:
            return (f"model {member.model} needs inputs of at least {model.min_size} x {model.min_size} pixels, and "
                    f"data.tiling.size gives tiles of {tile_size}: raise data.tiling.size")
        if tile_size is not None and model.pad_mode is PadMode.STRICT and tile_size % model.size_multiple:
            return (f"model {member.model} with pad_mode strict needs inputs whose sides are multiples of "
                    f"{model.size_multiple} pixels, and data.tiling.size gives tiles of {tile_size}: make it a "
                    f"multiple of {model.size_multiple}, or drop pad_mode strict to pad and crop")
        build_loss(member.loss.name, num_classes=num_classes, class_weights=member.class_weights(class_counts),
                   focal_alpha=member.loss.focal_alpha, beta=member.loss.beta)
        if member.init is not None:
            init, cache = member.init, weights_cache if weights_cache is not None else {}
            if init.uri not in cache:
                cache[init.uri] = read_state_dict(init.uri, storage)
            plan = plan_weights(model, cache[init.uri], init.uri, part=init.part, layout=init.layout,
                                prefix=init.prefix, min_encoder_share=init.min_encoder_share)
            unknown = {"mean": [0.0] * in_channels, "std": [1.0] * in_channels}  # the data's: measured later
            choose_normalization(init.normalization, plan.report.layout, init.uri, in_channels, unknown, storage,
                                 reads_image=model.encoder_reads_input)
    except (ValueError, MinsegError) as exc:  # a message for the user: the exception's name says nothing more
        return str(exc)
    except (TypeError, OverflowError, RuntimeError) as exc:  # a value of the wrong type or size reached a layer:
        # its name helps to place it; torch's own text, its first line (C++ frames follow)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return f"{type(exc).__name__}: {first}"
    return None


def check_members_without_data(config: MinsegConfig, storage: Storage | None = None, warn: bool = True,
                               configured: int | None = None,
                               class_names: list[str] | None = None) -> list[JobProblem]:
    """What ``preflight`` can say about every configured member before any data is read (``minseg config validate``):
    models and options built on the meta device, losses, checkpoint metrics and class-weight counts against
    ``data.classes`` (when the config lists them); a local pretrained weights file not found here is a warning (it may
    sit on the cluster's shared filesystem). One problem per reason, naming the members it is about (every member when
    they all share it, as a value from ``training.defaults``); [] when there is none. Class weights computed from the
    data, and weights on object storage, are checked when training. ``warn``: log a missing local weights file (False:
    checked again for another purpose, already said). ``configured``: how many members the config lists, when
    ``config`` holds only some of them (``job_checks.invalid_config_problems``): a problem is then never said of "all"
    members. ``class_names``: the classes when the task fixes them, not ``data.classes`` (prospectivity's no-ore /
    ore)."""
    from minseg.data.classmap import ClassMap

    if config.training is None:
        return []
    storage = storage or Storage(config.storage)
    data = config.data
    names = (class_names if class_names is not None else
             list(ClassMap.from_settings(data.classes).names) if data is not None and data.classes else None)
    said: dict[str, list[str]] = {}  # problem -> the members it is about
    tasks = {}
    for member in config.training.members:
        try:
            entry = get_entry(member.model)
        except InputError as exc:
            said.setdefault(str(exc), []).append(member.name)
            continue
        tasks[member.name] = entry.task
        num_classes = len(names) if names is not None else entry.input_spec.num_classes or 2
        in_channels = data.in_channels if data is not None and entry.task is Task.SEGMENTATION else 3
        weights = member.loss.class_weights  # a list is checked against data.classes; computed ones need the data
        unchecked = member.model_copy(update={
            "init": None,  # the file is only looked for here: training reads and matches it
            "loss": member.loss.model_copy(update={
                "class_weights": weights if names is not None and not isinstance(weights, ClassWeighting) else None})})
        problem = preflight(unchecked, num_classes, in_channels, class_names=names,
                            tile_size=data.tiling.size if data is not None else None)
        # a local file is looked for, a warning only: the path may be the cluster's shared filesystem; object
        # storage is left to the cluster, which holds the credentials
        if warn and problem is None and member.init is not None and not is_s3(member.init.uri) \
                and not storage.exists(member.init.uri):
            log_event(log, "config.init_not_here", logging.WARNING, member=member.name, uri=member.init.uri,
                      hint="no such file on this machine; training refuses the member if the nodes lack it too")
        if problem:
            said.setdefault(problem, []).append(member.name)
    # a value several members share (mostly from training.defaults) is one problem, said once
    everyone = len(config.training.members) if configured in (None, len(config.training.members)) else -1
    problems = [JobProblem("training.members", problem, tuple(dict.fromkeys(members)),  # a name given twice: once
                           everyone if len(members) == everyone > 1 else 0)
                for problem, members in said.items()]
    mixed = mixed_tasks(tasks)
    if mixed:
        problems.append(JobProblem("training.members", mixed))
    elif data is not None and data.classes is None and "synth" not in config.model_fields_set \
            and Task.SEGMENTATION in tasks.values():
        # as train refuses it; a classifier's classes may be its folders, the demo's (synth:) are the generator's
        problems.append(JobProblem("", CLASSES_REQUIRED))
    return problems


def mixed_tasks(tasks: dict[str, Task]) -> str | None:
    """Why members of several tasks cannot train in one run (member -> its model's task), or None."""
    if len(set(tasks.values())) < 2:
        return None
    by_task = defaultdict(list)
    for name, task in tasks.items():
        by_task[task.value].append(name)
    listed = "; ".join(f"{task}: {', '.join(names)}" for task, names in by_task.items())
    return (f"all members of one run must share a task (their data is prepared once for it), these do not: {listed}; "
            "train them in runs of their own")


def plan_concurrency(members: list[MemberSettings], cpus: float, gpus: float, data_cpus: float,
                     requested: int | None, trials_per_member: int = 1, nodes: list[dict] | None = None) -> int:
    """How many trials can run at once (largest first); refuses members that could never start.

    ``cpus`` / ``gpus``: the cluster's; ``data_cpus``: what its data tasks keep; ``nodes``: each live node's
    resources (``runtime.live_nodes``), where one worker of a member must fit (Ray Train places each worker on one
    node: 2 GPUs a worker never start on nodes of 1 GPU each, however many there are). ``trials_per_member``: k for
    k-fold cross-validation (each fold is a trial of every member; prospectivity adds the final run), so one
    member's folds run side by side when the cluster holds them.

    Raises:
        ResourceError: a member whose workers the cluster could never hold, naming it and its scaling keys.
    """
    budget_cpu = cpus - data_cpus
    for m in members:
        need_cpu = m.scaling.workers * m.scaling.cpus_per_worker
        need_gpu = m.scaling.workers * m.scaling.gpus_per_worker
        if need_cpu > budget_cpu + 1e-9 or need_gpu > gpus + 1e-9:
            raise ResourceError(
                f"member {m.name!r} needs {need_cpu:g} CPUs ({m.scaling.workers} workers x {m.scaling.cpus_per_worker:g}) "
                f"and {need_gpu:g} GPUs, plus {data_cpus:g} CPUs for its data tasks; the cluster has {cpus:g} CPUs and "
                f"{gpus:g} GPUs, so it could never start. Lower training.members[].scaling or add nodes "
                "(set training.check_resources: false on autoscaling clusters that start empty)."
            )
        if nodes is not None and not fits_one_node(nodes, m.scaling.cpus_per_worker, m.scaling.gpus_per_worker):
            raise ResourceError(
                f"member {m.name!r}: one worker of training.members[].scaling.cpus_per_worker "
                f"{m.scaling.cpus_per_worker:g} CPUs and gpus_per_worker {m.scaling.gpus_per_worker:g} GPUs must fit "
                f"on one node; the cluster has {describe_nodes(nodes)}, so it could never start (Ray would wait "
                "forever). Use more workers of fewer CPUs / GPUs each, or bigger nodes (set "
                "training.check_resources: false on autoscaling clusters that start empty)."
            )
    trials = [m for m in members for _ in range(trials_per_member)]
    cpu_needs = sorted((m.scaling.workers * m.scaling.cpus_per_worker for m in trials), reverse=True)
    gpu_needs = sorted((m.scaling.workers * m.scaling.gpus_per_worker for m in trials), reverse=True)
    fit = 0
    while (fit < len(trials) and sum(cpu_needs[: fit + 1]) <= budget_cpu + 1e-9
           and sum(gpu_needs[: fit + 1]) <= gpus + 1e-9):
        fit += 1
    fit = max(1, fit)
    return min(fit, requested) if requested else fit


def trial_concurrency(training: TrainingSettings, members: list[MemberSettings], data_cpus: float,
                      trials_per_member: int) -> int:
    """Trials at once on the running cluster: ``plan_concurrency`` (which also refuses members that could never
    start), or, with ``check_resources: false`` (autoscaling clusters that start empty), ``max_concurrent`` or
    every trial."""
    import ray

    if not training.check_resources:
        return training.max_concurrent or len(members) * trials_per_member
    resources = ray.cluster_resources()
    return plan_concurrency(members, resources.get("CPU", 0), resources.get("GPU", 0), data_cpus,
                            training.max_concurrent, trials_per_member=trials_per_member, nodes=live_nodes())


# ------------------------------------------------------------- the trial


def _ray_storage(storage: Storage, run_uri: str) -> tuple[str, object | None]:
    """Where Ray keeps its own run state: beside our outputs, on the same store."""
    if parse_uri(run_uri).is_s3:
        filesystem, path = storage.pyarrow_filesystem(join_uri(run_uri, "ray"))
        return path, filesystem
    return parse_uri(join_uri(run_uri, "ray")).path, None


@dataclass
class TrialInputs:
    """What the workers of one trial need besides its datasets (``train/loop.py`` reads these fields)."""

    task: Task
    num_classes: int
    in_channels: int
    ignore_index: int
    classes: dict  # the class map document (checkpoints carry it)
    classes_names: list[str]
    normalization: dict[str, list[float]]
    augmentation: Any  # data.config.AugmentSettings
    train_tiles: int
    has_val: bool
    shuffle_buffer: int | None
    channels: list[dict] | None = None  # the images of a scene (data.sources[].channels) when declared
    has_test: bool = False  # k-fold trials: the fold's test part, scored once with the best checkpoint
    fold_signature: str | None = None  # k-fold trials: which sources train / choose / test (resume must match)
    class_counts: list[int] | None = None  # per class in the trial's training data: labelled pixels, or images /
    # windows for classification (what class weights computed from the data use)
    bagging_sample: dict[str, int] | None = None  # a bagged member's sample: unit -> times drawn (member.json)
    class_repeat_factors: dict[str, float] | None = None  # data.oversampling's r_c for this trial's training data,
    # by class name (a bagged member's: its sample's); None without oversampling (member.json)
    bagging_build: str | None = None  # BAGGING_BUILD where a bagged member's epoch depends on how minseg expands its
    # sample (oversampling factors, SMOTE); a checkpoint built another way is not resumed
    bagging_balance: dict | None = None  # a bagged prospectivity member's balancing report (member.json)
    data_signature: str | None = None  # ``TrainingSource.data_signature``: what the trial trains, chooses and tests
    # on; a checkpoint recorded on other data is neither continued nor kept by --resume


BAGGING_BUILD = "2026-12-05"  # a bagged member's oversampling factors from its sample, SMOTE on its distinct windows


class TrainingSource(Protocol):
    """Where a training run's data comes from: image datasets (``ImageSource``) or prospectivity
    windows (``geo.prospect.WindowSource``). ``fit_members`` trains every member on every trial fold."""

    task: Task
    num_classes: int
    class_names: list[str]
    in_channels: int
    tile_size: int | None  # the side of a training input in pixels, checked against each model (None: not here)

    def trial_folds(self) -> list[int | None]:
        """Fold indices to train a trial on; None: one trial on all the data, outputs in the run itself."""

    def member_data(self, fold: int | None, config: MinsegConfig, storage: Storage,
                    sample: dict[str, int] | None = None, shared: dict | None = None) -> tuple[dict, TrialInputs]:
        """(Ray Datasets by name: 'train' and optionally 'val', the trial's inputs); ``sample``: a bagged member's
        training units and the times each is drawn (``bagging_sample``), None: all of them once; ``shared``: the
        datasets ``shared_datasets`` prepared for every member of the run (used as they are)."""

    def shared_datasets(self, config: MinsegConfig, storage: Storage) -> dict:
        """Datasets every member's trial on the one split (no folds) uses alike, prepared once on the driver and
        passed to ``member_data`` as ``shared`` (image data: the validation split); {} when there are none."""

    def class_counts(self, fold: int | None = None) -> list[int] | None:
        """Per class in a trial fold's training data (pixels, images or windows); None if the source cannot say."""

    def bagging_sample(self, member: MemberSettings, fold: int | None, run_seed: int) -> dict[str, int]:
        """A bagged member's sample of a trial's training units (``train.bagging``): unit id -> times drawn (only
        units drawn at least once). Raises InputError when no sample shows every class."""

    def data_signature(self, fold: int | None) -> str:
        """A short digest of what the trial trains, chooses checkpoints and tests on (recorded in each checkpoint's
        state): ``--resume`` refuses to continue or keep a member whose checkpoints carry another one."""

    def bagging_build(self, bagged: bool) -> str | None:
        """:data:`BAGGING_BUILD` where a (``bagged``) member's epoch depends on how minseg expands its sample
        (oversampling factors, SMOTE), else None: recorded in each checkpoint's state; a trial built another way is
        neither continued by ``--resume`` nor taken from a finished run (``take_finished_members``)."""


class ImageSource:
    """Training data from image datasets (``prepare_data``): the split, or k folds by source image."""

    def __init__(self, prepared: PreparedData, data):
        self.prepared, self.data = prepared, data
        self.task, self.num_classes = prepared.task, prepared.classmap.num_classes
        self.class_names = list(prepared.classmap.names)
        self.in_channels = data.in_channels if prepared.task is Task.SEGMENTATION else 3
        self.tile_size = data.tiling.size

    def trial_folds(self) -> list[int | None]:
        return list(range(len(self.prepared.folds))) if self.prepared.folds else [None]

    def member_data(self, fold: int | None, config: MinsegConfig, storage: Storage,
                    sample: dict[str, int] | None = None, shared: dict | None = None) -> tuple[dict, TrialInputs]:
        """(datasets, inputs) of one trial; ``sample``: source id -> times drawn (a bagged member); ``shared``:
        ``shared_datasets`` (the validation split decoded once for every member)."""
        prepared, data, cpus = self.prepared, self.data, config.ray.task_cpus
        training = self._training_items(fold)
        drawn, times = None, None
        if sample is not None:  # a bagged member: its units, counted as often as drawn (oversampling, class weights)
            drawn = set(sample)
            training = [i for i in training if i["source_id"] in drawn]
            times = {i["item_id"]: sample[i["source_id"]] for i in training}
        repeats, factors = self.repeats_for(training, config.run.seed, times=times)
        if times is not None and (repeats is not None or any(n > 1 for n in times.values())):
            repeats = {i["item_id"]: [n * times[i["item_id"]] for n in  # drawn n times: each tile n times an epoch
                                      (repeats[i["item_id"]] if repeats is not None else [1] * i["tiles"])]
                       for i in training}
        if fold is None:
            train = split_dataset(prepared, data, "train", storage, cpus, source_ids=drawn, repeats=repeats)
            val = shared["val"] if shared and "val" in shared else split_dataset(prepared, data, "val", storage, cpus)
            # a segmentation run's test split belongs to ensemble evaluation; a classifier's best checkpoint is scored
            # on it by training (ensemble evaluation covers segmentation members only), as a fold's test part is
            test = (split_dataset(prepared, data, "test", storage, cpus)
                    if prepared.task is Task.CLASSIFICATION and prepared.splits["test"] else None)
            val_tiles = prepared.tile_count("val")
        else:  # the fold's test part is never trained on nor used to choose a checkpoint: it is what is reported
            part = prepared.folds[fold]
            pool = prepared.splits["train"] + prepared.splits["val"]
            prepared = replace(prepared, splits={**prepared.splits, "train": pool, "val": pool, "test": pool})
            train = split_dataset(prepared, data, "train", storage, cpus,
                                  source_ids=set(part.train) if drawn is None else drawn, repeats=repeats)
            val = split_dataset(prepared, data, "val", storage, cpus, source_ids=set(part.val))
            test = split_dataset(prepared, data, "test", storage, cpus, source_ids=set(part.test))
            val_tiles = sum(i["tiles"] for i in pool if i["source_id"] in part.val)
        datasets = {"train": train} if val is None else {"train": train, "val": val}
        if test is not None:
            datasets["test"] = test
        inputs = TrialInputs(
            task=prepared.task, num_classes=prepared.classmap.num_classes, in_channels=self.in_channels,
            ignore_index=prepared.classmap.ignore_index, classes=prepared.classmap.to_document(),
            classes_names=list(prepared.classmap.names), normalization=prepared.normalization,
            augmentation=data.augmentation,
            train_tiles=sum(sum(repeats[i["item_id"]]) if repeats else i["tiles"] for i in training),
            has_val=val is not None and val_tiles > 0,
            shuffle_buffer=data.shuffle_buffer, has_test="test" in datasets,
            channels=([group.model_dump(mode="json") for group in data.channel_groups]
                      if data.sources[0].channels else None),
            fold_signature=None if fold is None else prepared.folds[fold].signature(),
            data_signature=self.data_signature(fold),
            class_counts=_class_counts(training, None if times is None else [times[i["item_id"]] for i in training]),
            bagging_sample=sample,
            class_repeat_factors=None if factors is None else dict(zip(prepared.classmap.names,
                                                                       np.round(factors, 4).tolist())),
            bagging_build=self.bagging_build(times is not None),
        )
        return datasets, inputs

    def data_signature(self, fold: int | None) -> str:
        return self.prepared.data_signature(fold)

    def shared_datasets(self, config: MinsegConfig, storage: Storage) -> dict:
        """The validation split, decoded (and cached) once for the members that train on the one split."""
        return {"val": split_dataset(self.prepared, self.data, "val", storage, config.ray.task_cpus)}

    def bagging_sample(self, member: MemberSettings, fold: int | None, run_seed: int) -> dict[str, int]:
        """Source images drawn for a bagged member on one trial (``train.bagging``): source id -> times drawn."""
        shows: dict[str, set[int]] = {}
        for item in self._training_items(fold):
            shows.setdefault(item["source_id"], set()).update(np.flatnonzero(item["pixels"]).tolist())
        sources = sorted(shows)
        counts = bagging_counts([shows[s] for s in sources], member.bagging, bagging_seed(member, run_seed, fold),
                                self.prepared.classmap.names, "training source images")
        return {source: int(n) for source, n in zip(sources, counts) if n}

    def bagging_build(self, bagged: bool) -> str | None:
        return BAGGING_BUILD if bagged and self.data.oversampling is not None else None

    def repeats_for(self, training: list[dict], seed: int, fold: int | None = None, report: bool = False,
                    times: dict[str, int] | None = None) -> tuple[dict[str, list[int]] | None, np.ndarray | None]:
        """(copies of each training tile per epoch under ``data.oversampling``, the class repeat factors); (None,
        None) without oversampling. ``times``: item id -> draws of a bagged member's sample (the factors count each
        drawn item that often; ``tile_repeats``). ``report`` logs the factors and the tiles an epoch holds before
        and after."""
        if self.data.oversampling is None:
            return None, None
        repeats, factors = tile_repeats(self.prepared.tile_classes_of(training), self.num_classes,
                                        self.data.oversampling, seed, times)
        if report:
            log_event(log, "data.oversampling", **({} if fold is None else {"fold": fold + 1}),
                      tiles=sum(i["tiles"] for i in training),
                      tiles_per_epoch=sum(sum(r) for r in repeats.values()),
                      class_repeat_factors={name: round(float(f), 2)
                                            for name, f in zip(self.prepared.classmap.names, factors)})
        return repeats, factors

    def report_oversampling(self, seed: int) -> None:
        """Log each trial fold's oversampling on the driver, where the user reads the run (trials log elsewhere)."""
        for fold in self.trial_folds():
            self.repeats_for(self._training_items(fold), seed, fold, report=True)

    def _training_items(self, fold: int | None) -> list[dict]:
        """A trial's training items: the train split, or the fold's training part of train + val."""
        if fold is None:
            return self.prepared.splits["train"]
        train = set(self.prepared.folds[fold].train)
        return [i for s in ("train", "val") for i in self.prepared.splits[s] if i["source_id"] in train]

    def class_counts(self, fold: int | None = None) -> list[int] | None:
        """Per class in a trial's training data: labelled pixels at full resolution, or images for
        classification."""
        return _class_counts(self._training_items(fold))


def _class_counts(items: list[dict], times: list[int] | None = None) -> list[int] | None:
    """Labelled pixels (or images) per class over scanned items (``prepare_data``'s ``pixels``), each item counted
    ``times`` over (a bagged member's draws; None: once)."""
    if not items:
        return None
    times = times or [1] * len(items)
    return np.sum([np.asarray(item["pixels"], np.int64) * n for item, n in zip(items, times)], axis=0).tolist()


@dataclass
class WorkerConfig:
    """Everything a training worker needs, typed (it travels pickled in Ray Train's loop config)."""

    member: MemberSettings
    storage: Storage
    run_uri: str
    inputs: TrialInputs
    eval_batch_size: int
    seed: int
    board: Any = None  # the run's logs.EpochBoard actor: rank 0 posts when its worker group has started
    trial: int = 0  # the trial's index on the board


def run_member(trial: dict, index: int, source: TrainingSource, config: MinsegConfig, board) -> MemberResult:
    """One trial, as a Ray task: build and fit its member's TorchTrainer, record the outcome (``result.json``) and
    return it. A member that fails is a result (``status`` failed, ``error`` why), not an exception; each epoch's
    metrics reach the driver through ``board`` (a ``logs.EpochBoard`` actor)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    member = MemberSettings.model_validate(trial["member"])
    fold = trial.get("fold")
    storage = Storage(config.storage)
    run_uri = trial["run_uri"]
    datasets, inputs = source.member_data(fold, config, storage, trial.get("sample"))
    worker_config = {"worker": WorkerConfig(
        member=member, storage=storage, run_uri=run_uri, inputs=inputs,
        eval_batch_size=max(s.batch_size for s in member.stages) // member.scaling.workers, seed=config.run.seed,
        board=board, trial=index,
    )}
    resources = {"CPU": member.scaling.cpus_per_worker}
    if member.scaling.gpus_per_worker:
        resources["GPU"] = member.scaling.gpus_per_worker
    storage_path, filesystem = _ray_storage(storage, run_uri)
    trainer = TorchTrainer(
        _train_worker_entry,
        train_loop_config=worker_config,
        scaling_config=ray.train.ScalingConfig(num_workers=member.scaling.workers,
                                               use_gpu=member.scaling.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"{config.run.name}-{member.name}",
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=member.max_failures),
            callbacks=[_epoch_reporter(board, index)],
        ),
        datasets=_member_datasets(datasets, inputs.train_tiles, member.scaling.workers),
        dataset_config=_ordered_ingest(member.scaling.workers),
    )
    started = time.time()
    error = None
    try:
        trainer.fit()
    except Exception as exc:  # reported in the members table; the other members go on
        error = _root_cause(exc)
        _write_traceback(storage, run_uri, member.name, "".join(traceback.format_exception(exc)))
    result = summarize_member(storage, run_uri, member, error, time.time() - started, fold)
    result.started_at, result.finished_at = started, time.time()
    return _record_result(storage, run_uri, result)


def _record_result(storage: Storage, run_uri: str, result: MemberResult) -> MemberResult:
    """``result`` as the trial's ``result.json`` (what ``_previous_result`` reads back); returned."""
    storage.write_json(join_uri(member_uri(run_uri, result.member), "result.json"), asdict(result))
    return result


def _write_traceback(storage: Storage, run_uri: str, member: str, text: str) -> None:
    """A failed member's whole traceback, credentials redacted, as ``members/<member>/error.txt`` (the members
    table gives its last line); a store that refuses it costs a warning, not the member's result."""
    uri = join_uri(member_uri(run_uri, member), "error.txt")
    try:
        storage.write_text(uri, redact(text))
    except (MinsegError, OSError) as exc:
        log_event(log, "train.member.traceback_not_written", logging.WARNING, member=member, uri=uri, reason=str(exc))


def _epoch_reporter(board, trial: int):
    """A Ray Train callback, run by the member's controller: each report's metrics (rank 0's, every rank reports
    the same epoch) posted to ``board`` under the trial's index, before the run goes on."""
    import ray
    from ray.train import UserCallback

    class EpochReporter(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            try:  # posted before the run ends: its last epoch is drained before the member is reported done
                ray.get(board.post.remote(trial, metrics[0]))
            except ray.exceptions.RayError:  # a lost board costs the console its epoch lines, not the member
                pass

    return EpochReporter()


def _ordered_ingest(workers: int):
    """Ray Train's ingest options (the driver's DataContext's, as Train's default) with block order kept: a
    member then reads its tiles in one order in every run, cached or tiled every epoch (Train's ingest replaces a
    dataset's own execution options, so the order set in ``split_dataset`` does not reach it by itself).

    A member on one worker reads its datasets whole: splitting them would start a coordinator actor per dataset
    (train, validation, and test in k-fold trials) for every member, a process each for nothing to split. On
    several, training tiles are split equally and validation / test tiles whole (``minseg.train.ingest``)."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    if workers > 1:
        from minseg.train.ingest import MemberIngest

        return MemberIngest(options)
    return ray.train.DataConfig(datasets_to_split=[], execution_options=options)


def _member_datasets(datasets: dict, train_tiles: int, workers: int) -> dict:
    """The datasets a member's workers read: on several workers, the training tiles made to split equally with none
    left out (``minseg.train.ingest.equal_shares``)."""
    if workers <= 1:
        return datasets
    from minseg.train.ingest import equal_shares

    return {**datasets, "train": equal_shares(datasets["train"], train_tiles, workers)}


def _train_worker_entry(config: dict) -> None:
    from minseg.train.loop import train_worker

    train_worker(config)


def _root_cause(exc: BaseException) -> str:
    """The members table's error: the innermost exception's last line. minseg's own errors (raised in a worker,
    they arrive wrapped in Ray's: ``WorkerGroupError: minseg.train.loop.DivergedError: ...``) are their message
    alone, written for the user; others keep their type, which helps to place them."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    text = str(seen).strip().splitlines()
    line = text[-1] if text else ""
    own = re.match(r"^minseg(?:\.\w+)*\.[A-Z]\w*: (.+)$", line)  # a worker's minseg error, named by Ray
    if own or isinstance(seen, MinsegError):
        return (own.group(1) if own else line)[:2000]
    return f"{type(seen).__name__}: {line}"[:2000]


def learning_problem(history: list[dict]) -> str | None:
    """Why a member's history shows it learned nothing, or None.

    With validation: its predictions never said anything about the true classes there, the best validation
    ``uncertainty_coefficient`` (Theil's U, ``metrics.uncertainty_coefficient``: 0 for one class predicted
    everywhere or predictions independent of the truth) below ``NO_INFORMATION``. That catches a learning rate
    that blew the weights up and labels unrelated to their images, and not a member that learned some classes and
    misses the rare ones (its loss can be above that of uniform predictions under heavy class weights; its U is
    well above 0). Without validation: its lowest epoch training loss no lower than the same loss of a model that
    gives every class the same probability (``train_loss_uniform``). Epochs recorded before these were (older
    checkpoints) are not judged.
    """
    scored = [row for row in history if _finite(row.get("uncertainty_coefficient"))]
    if scored:
        best = max(scored, key=lambda row: row["uncertainty_coefficient"])
        if best["uncertainty_coefficient"] >= NO_INFORMATION:
            return None
        return (f"its predictions on validation say (almost) nothing about the true classes: uncertainty coefficient "
                f"at most {best['uncertainty_coefficient']:.3g} (epoch {best['epoch']}; 0 = one class everywhere or "
                f"guessing, 1 = always right). Look for a learning rate too high for the model (optimizer.lr), labels "
                "that do not match their images, or too few epochs (history.csv, curves.png)")
    if any("val_loss" in row for row in history):
        return None  # validated before the coefficient was recorded: not judged
    rows = [row for row in history if _finite(row.get("train_loss")) and _finite(row.get("train_loss_uniform"))]
    if rows:
        lowest = min(rows, key=lambda row: row["train_loss"])
        if lowest["train_loss"] < lowest["train_loss_uniform"]:
            return None
        return (f"its training loss never went below that of a model giving every class the same probability (lowest "
                f"{lowest['train_loss']:.4g} at epoch {lowest['epoch']}, against {lowest['train_loss_uniform']:.4g}) "
                "and it has no validation split to judge it on. Look for a learning rate too high for the model "
                "(optimizer.lr), labels that do not match their images, or too few epochs (history.csv, curves.png)")
    return None


# below it, a member's best validation predictions hold under 1 % of the information about the true classes
NO_INFORMATION = 0.01


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarize_member(storage: Storage, run_uri: str, member: MemberSettings, error: str | None,
                     wall_seconds: float, fold: int | None = None) -> MemberResult:
    last = read_pointer(storage, run_uri, member.name, "last")
    best = read_pointer(storage, run_uri, member.name, "best")
    checkpoint = load_checkpoint(storage, run_uri, member.name) if last else None
    state = checkpoint.state if checkpoint else {}
    init = WeightLoadReport.from_document(state["init"]).short() if state.get("init") else None
    test = state.get("test_metrics")
    problem = learning_problem(state.get("history", [])) if not error else None
    return MemberResult(
        member=member.name, model=member.model, status=MemberStatus.FAILED if error else MemberStatus.DONE, fold=fold,
        metric=member.checkpoint_metric, best_value=state.get("best_value"), best_epoch=state.get("best_epoch"),
        test_value=metric_value(test, member.checkpoint_metric) if test else None,
        epochs=state.get("epochs_done", 0), restarts=state.get("restarts", 0), wall_seconds=round(wall_seconds, 1),
        best_checkpoint=best["uri"] if best else None, last_checkpoint=last["uri"] if last else None, init=init,
        error=error, warning=problem,
    )


# ------------------------------------------------------------ orchestration


class _MemberProgress:
    """On the driver: members queued / running / done, one line per epoch of every member (from the metrics each
    run posts to the board), and a progress bar over all their epochs. A trial is running from when its worker
    group starts (it posts so, ``loop.announce_start``), not when it is submitted: on a cluster short of GPUs the
    submitted rest wait, queued."""

    def __init__(self, trials: list[dict]):
        from minseg.logs import Progress

        self.trials = trials
        self.total, self.finished = len(trials), 0
        self.started: set[int] = set()  # trials whose worker group started and that have not ended
        self.progress = Progress(sum(self._epochs(t) for t in trials), "train", unit="epochs")

    @staticmethod
    def _epochs(trial: dict) -> int:
        return sum(stage["epochs"] for stage in trial["member"]["stages"])

    @staticmethod
    def _name(trial: dict) -> str:
        fold = trial.get("fold")
        return trial["member"]["name"] + ("" if fold is None else f" (fold {fold + 1})")

    def _log(self, event: str, index: int, level: int = logging.INFO, **more) -> None:
        running = len(self.started)
        log_event(log, event, level, member=self._name(self.trials[index]), running=running,
                  queued=self.total - running - self.finished, done=self.finished, **more)

    def posted(self, index: int, metrics: dict) -> None:
        """What a run posted to the board: its start (``loop.announce_start``) or an epoch's metrics."""
        trial = self.trials[index]
        if metrics.get("started"):
            done = metrics.get("epochs_done", 0)
            if index in self.started:  # Ray Train restarted its worker group (train.max_failures)
                self._log("train.member.restarted", index, logging.WARNING, from_epoch=done)
                return
            self.started.add(index)
            self._log("train.member.started", index, **({"from_epoch": done} if done else {}))
            self.progress.advance(done)  # a resumed member's finished epochs
            return
        if "epoch" not in metrics:
            return
        shown = {k: round(metrics[k], 4) for k in ("train_loss", "val_loss", "miou", "accuracy") if k in metrics}
        log_event(log, "train.epoch", member=self._name(trial), epoch=metrics["epoch"], of=self._epochs(trial),
                  **shown)
        self.progress.advance()

    def ended(self, index: int, result: MemberResult) -> None:
        self.started.discard(index)  # a trial that failed before its workers started was never running
        self.finished += 1
        if result.status is MemberStatus.DONE:
            self._log("train.member.done", index)
        else:
            self._log("train.member.failed", index, reason=result.error)


def _run_trials(trials: list[dict], source: TrainingSource, config: MinsegConfig, concurrency: int,
                storage: Storage) -> list[MemberResult]:
    """Every trial as a Ray task (``run_member``: one TorchTrainer.fit), at most ``concurrency`` at once, in
    ``trials``' order; their results in that order. A task that fails before recording its member's outcome (its
    data unreadable, its worker killed, its node lost) gives a failed result naming why, the task's traceback in the
    member's ``error.txt``; each epoch is logged as the runs post it. On an error or Ctrl-C here, the trials still
    running are cancelled before it propagates (their checkpoints are whole: ``--resume`` continues them).

    Plain tasks, not Tune trials: a trial actor and a result queue actor per member cost more CPU than the
    smallest members' training, and minseg keeps every result itself (``result.json``, the members table)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's node (a lost board would fail every run reporting to it); in minseg.logs: imports little
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    board = ray.remote(num_cpus=0)(EpochBoard).options(scheduling_strategy=here).remote()
    # no retries, as Tune's trials had none: a member's own failures are Ray Train's (max_failures restarts)
    fit = ray.remote(run_member).options(num_cpus=0.001, max_retries=0)
    shared = ray.put(source)  # the one source every trial reads, sent to the store once
    progress = _MemberProgress(trials)
    results: list[MemberResult | None] = [None] * len(trials)
    waiting, running, lost = list(range(len(trials))), {}, []
    try:
        while waiting or running:
            while waiting and len(running) < concurrency:
                index = waiting.pop(0)
                _clear_outcome(storage, trials[index])  # a redone trial's earlier result is not its result
                running[fit.remote(trials[index], index, shared, config, board)] = index
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for index, metrics in _drained(board, lost):
                progress.posted(index, metrics)
            for ref in done:
                index = running.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except Exception as exc:  # the task itself failed: what it recorded, if anything, else why
                    results[index] = _collect(storage, trials[index], exc)
                progress.ended(index, results[index])
    except BaseException:
        progress.progress.close(failed=True)
        for ref in running:  # Ctrl-C in a notebook, an error here: no run left training unseen
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.kill(board)
    progress.progress.close()
    return results


def _drained(board, lost: list) -> list:
    """What the trials posted to ``board`` since the last call; [] once the board is lost (``lost`` then holds
    why; its node's memory monitor killed it, say): the console loses its epoch lines, the members train on (a
    lost board costs them their posts only, ``_epoch_reporter``)."""
    import ray

    if lost:
        return []
    try:
        return ray.get(board.drain.remote())
    except ray.exceptions.RayError as exc:
        lost.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        log_event(log, "train.board_lost", logging.WARNING, reason=lost[0],
                  hint="the console shows no more epoch lines; the members train on and their results are kept")
        return []


def _clear_outcome(storage: Storage, trial: dict) -> None:
    """Remove a trial's recorded outcome (``result.json``, ``error.txt``) before it runs again."""
    folder = member_uri(trial["run_uri"], trial["member"]["name"])
    for name in ("result.json", "error.txt"):
        storage.delete(join_uri(folder, name))


def train_ensemble(config: MinsegConfig, member_names: list[str] | None = None, resume: bool = False) -> list[MemberResult]:
    """The training job: data -> members concurrently -> members table. Returns the rows."""
    if config.data is None or config.training is None:
        raise InputError("training needs the 'data' and 'training' config sections")
    storage = Storage(config.storage)
    run_uri = config.run.uri
    members = config.training.select(member_names)
    mixed = mixed_tasks({m.name: member_task(m) for m in members})
    if mixed:
        raise InputError(mixed)
    task = member_task(members[0])
    if task is Task.SEGMENTATION and config.data.classes is None:  # said before Ray starts, not after listing
        raise InputError(CLASSES_REQUIRED)
    refuse_other_command_outputs(run_uri, "train", "run.output_uri", storage)
    refuse_output_among_inputs(run_uri, [(f"data.sources[{i}]", s.uri) for i, s in enumerate(config.data.sources)],
                               "run.output_uri")

    existing = [m.name for m in members if read_pointer(storage, run_uri, m.name) is not None]
    if existing and not resume:
        raise InputError(f"run {run_uri} already has checkpoints for {', '.join(existing)}; pass --resume to continue "
                         "them, or choose another run.name")
    if resume and not existing and not storage.holds_files(run_uri):  # a mistyped run.name or --out, likely
        log_event(log, "train.nothing_to_resume", logging.WARNING, run=run_uri,
                  hint="no earlier run there: training starts from the beginning")
    folds = config.data.split.folds
    trial_folds = list(range(folds)) if folds else [None]
    if resume:
        refuse_changed_members(storage, run_uri, members, trial_folds, config.run.seed, config.data.augmentation)
    finished = _all_finished(storage, run_uri, members, trial_folds) if resume else None
    selection_uri, (selection, settings) = join_uri(run_uri, "data", "selection.json"), _data_selection(config.data)
    recorded = storage.read_json(selection_uri) if storage.exists(selection_uri) else None
    versions = source_versions(config.data.sources, storage) if resume else None
    if finished is not None and (recorded is None or recorded.get("signature") != selection
                                 or recorded.get("versions") != versions):
        # the data settings or a source's files changed (an archive rewritten in place), or no run recorded them
        # (members trained in parts by --members before the record was kept for those): prepare the data, and
        # refuse members trained on other parts or other pictures
        finished = None
    if finished is not None:  # e.g. a second `minseg demo`: minutes of decoding for nothing to train
        log_event(log, "train.reused", run=run_uri, members=",".join(m.name for m in members),
                  hint="every member has finished: nothing to train, the data is not prepared again")
        previous = _recorded_table(storage, run_uri, configured=[m.name for m in config.training.members])
        _update_members_table(storage, run_uri, previous, finished, fold_summary=bool(folds))
        return finished
    init_ray(config.ray, job_paths([config.data, config.training], [run_uri]))
    concurrency = trial_concurrency(config.training, members, config.ray.task_cpus, trials_per_member=folds or 1)

    prepared = prepare_data(config.data, task, config.run.seed, storage, join_uri(run_uri, "data"), config.ray.task_cpus)
    source = ImageSource(prepared, config.data)
    if not prepared.folds:  # k folds validate on each fold's own part
        refuse_absent_class_metrics(members, list(prepared.classmap.names), prepared.stats.get("val"))
    # before the data reports are rewritten (a refused run leaves the folder as it was): every configured member,
    # as a --members subset trained now would share the run (and its data/splits.json) with the others
    contents_uri = join_uri(run_uri, "data", "contents.json")
    refuse_other_data(storage, run_uri, config.training.members, source, resume, prepared.classmap,
                      lambda: _data_changes(storage, run_uri, (recorded or {}).get("settings"), settings, prepared),
                      prepared.content_changes(recorded_contents(storage, contents_uri)))
    reports = write_data_reports(prepared, join_uri(run_uri, "data"), storage)
    log_event(log, "train.data.reports", **{k.replace(".", "_"): v for k, v in reports.items()})
    # every configured member's checkpoints were checked against this data just now (a --members subset's too):
    # for a resubmission's shortcut, and to name what changed when its data differs
    storage.write_json(selection_uri, {"signature": selection, "settings": settings,
                                       "versions": versions or source_versions(config.data.sources, storage)},
                       indent=None)
    source.report_oversampling(config.run.seed)
    return fit_members(config, members, source, run_uri, concurrency, resume,
                       configured=[m.name for m in config.training.members])


def fit_members(config: MinsegConfig, members: list[MemberSettings], source: TrainingSource, run_uri: str,
                concurrency: int, resume: bool = False, configured: list[str] | None = None) -> list[MemberResult]:
    """Every member x every trial fold of ``source`` as concurrent trials (``_run_trials``); the members table.

    ``source`` gives the task, classes and channels, ``trial_folds()`` (fold indices, None for a run
    on all the data, whose outputs go to ``run_uri`` itself) and ``member_data(fold, config, storage)``.
    ``configured``: every member the run's config names, when ``members`` is a subset of it: the table keeps
    their earlier rows and drops rows of members no longer named (None: keep every earlier row). With ``resume``,
    finished trials are kept: callers first refuse checkpoints recorded on other data (``refuse_other_data``).
    """
    storage = Storage(config.storage)
    results: list[MemberResult] = []
    # the table so far, read before hours of training: a --members subset keeps the other configured members' rows
    previous = _recorded_table(storage, run_uri, configured)
    folds = source.trial_folds()
    trials, weights_cache = [], {}  # state dicts read once per distinct init file, dropped before training
    for member in members:
        pending = []
        for fold in folds:
            trial_run = trial_uri(run_uri, fold)
            done = _previous_result(storage, trial_run, member.name) if resume else None
            if done is not None and done.status is MemberStatus.DONE:  # resubmitted: finished trials are kept
                results.append(done)
                continue
            pending.append({"member": member.model_dump(mode="json"), "fold": fold, "run_uri": trial_run})
        problem = (preflight(member, source.num_classes, source.in_channels, storage, weights_cache,
                             source.class_counts(pending[0]["fold"]), source.class_names, source.tile_size)
                   if pending else None)
        if member.bagging is not None and not problem:  # drawn here: the driver logs it, a bad draw stops early
            try:
                for trial in pending:
                    trial["sample"] = source.bagging_sample(member, trial["fold"], config.run.seed)
                    log_event(log, "train.member.bagging", member=member.name,
                              **({} if trial["fold"] is None else {"fold": trial["fold"] + 1}),
                              drawn=sum(trial["sample"].values()), distinct=len(trial["sample"]))
            except InputError as exc:
                problem = str(exc)
        if problem:
            results.append(MemberResult(member.name, member.model, MemberStatus.FAILED, metric=member.checkpoint_metric,
                                        error=f"not started: {problem}"))
            log_event(log, "train.member.rejected", member=member.name, reason=problem)
            continue
        trials += pending
    weights_cache.clear()

    training = {t["member"]["name"] for t in trials}  # a k-fold member with some folds done is still training
    kept = sorted({r.member for r in results if r.status is MemberStatus.DONE} - training)
    if kept and trials:  # --resume: say what is not trained again, beside what is
        log_event(log, "train.kept", members=",".join(kept),
                  hint="finished earlier: kept as they are (a new run.name trains them afresh)")
    if trials:
        runnable = {t["member"]["name"] for t in trials}
        log_event(log, "train.start", run=run_uri, members=len(runnable), trials=len(trials), concurrent=concurrency)
        results += _run_trials(trials, _shared_data(source, trials, config, storage), config, concurrency, storage)
    results.sort(key=lambda r: ([m.name for m in members].index(r.member), r.fold if r.fold is not None else -1))
    _update_members_table(storage, run_uri, previous, results, fold_summary=any(f is not None for f in folds))
    for result in results:
        write_curves(storage, trial_uri(run_uri, result.fold), result.member)
        if result.warning:
            log_event(log, "train.member.learned_nothing", level=logging.WARNING, member=result.member,
                      **({} if result.fold is None else {"fold": result.fold + 1}), reason=result.warning)
    return results


class _SharedTrialData:
    """A training source whose one split (no folds) is prepared once on the driver and handed to every member's
    trial: the validation tiles are decoded (and cached) once for the ensemble instead of once per member, and so are
    the training tiles of the members that train on all of them (a bagged member's sample is its own)."""

    def __init__(self, source: TrainingSource, shared: dict, data: tuple[dict, TrialInputs] | None):
        self.task, self.num_classes, self.in_channels = source.task, source.num_classes, source.in_channels
        self._source, self._shared, self._data = source, shared, data

    def trial_folds(self) -> list[int | None]:
        return self._source.trial_folds()

    def member_data(self, fold: int | None, config: MinsegConfig, storage: Storage,
                    sample: dict[str, int] | None = None, shared: dict | None = None) -> tuple[dict, TrialInputs]:
        if sample is None and self._data is not None:
            return self._data
        return self._source.member_data(fold, config, storage, sample, self._shared)

    def shared_datasets(self, config: MinsegConfig, storage: Storage) -> dict:
        return self._shared

    def class_counts(self, fold: int | None = None) -> list[int] | None:
        return self._source.class_counts(fold)

    def data_signature(self, fold: int | None) -> str:
        return self._source.data_signature(fold)

    def bagging_sample(self, member: MemberSettings, fold: int | None, run_seed: int) -> dict[str, int]:
        return self._source.bagging_sample(member, fold, run_seed)

    def bagging_build(self, bagged: bool) -> str | None:
        return self._source.bagging_build(bagged)


def _shared_data(source: TrainingSource, trials: list[dict], config: MinsegConfig, storage: Storage):
    """``source`` with what several trials on the one split use alike prepared once (``shared_datasets``, and all
    the training data when two or more members train on it); k-fold trials each prepare their own fold (holding every
    fold's tiles at once could overflow the object store)."""
    if len(trials) < 2 or any(t["fold"] is not None for t in trials):
        return source
    shared = source.shared_datasets(config, storage)
    unsampled = sum(t.get("sample") is None for t in trials)
    return _SharedTrialData(source, shared, source.member_data(None, config, storage, shared=shared)
                            if unsampled >= 2 else None)


def _recorded_table(storage: Storage, run_uri: str, configured: list[str] | None = None) -> list[MemberResult]:
    """The rows of the run's members table so far (none for a new run); with ``configured``, only the rows of
    those members (a member taken out of the config leaves the table)."""
    known = {f.name for f in fields(MemberResult)}
    try:
        table = read_members_table(storage, run_uri) or []
    except InputError as exc:  # damaged or written over: every trial's own record (result.json) rebuilds it
        table = _results_recorded(storage, run_uri)
        log_event(log, "train.members_table_rebuilt", logging.WARNING, reason=str(exc), rows=len(table),
                  hint="from each member's result.json")
    rows = [MemberResult(**{k: v for k, v in row.items() if k in known}) for row in table]
    return [r for r in rows if configured is None or r.member in configured]


def _results_recorded(storage: Storage, run_uri: str) -> list[dict]:
    """Every trial's ``result.json`` under the run (``members/<m>/``, ``fold<k>/members/<m>/``), as members-table
    rows; one that cannot be read is left out (that member trains again if resumed). Lists the whole run: only
    for a table that needs rebuilding."""
    base = run_uri.rstrip("/") + "/"
    rows = []
    for info in storage.list(base):
        if re.fullmatch(r"(fold\d+/)?members/[^/]+/result\.json", info.uri[len(base):]):
            try:
                rows.append(storage.read_json(info.uri))
            except InputError:
                continue
    return rows


def _update_members_table(storage: Storage, run_uri: str, previous: list[MemberResult], results: list[MemberResult],
                          fold_summary: bool) -> None:
    """The members table: ``previous`` rows (already filtered to the configured members) with the rows of the
    members in ``results`` replaced by those, in the table's order, new members last."""
    trained = list(dict.fromkeys(r.member for r in results))
    order = list(dict.fromkeys([r.member for r in previous] + trained))
    table = sorted([r for r in previous if r.member not in trained] + results,
                   key=lambda r: (order.index(r.member), r.fold if r.fold is not None else -1))
    write_members_table(table, run_uri, storage, fold_summary=fold_summary)


# what a member's settings say about how it runs, not what it learns: a resubmitted job may change them (the weights
# a member started from are in its checkpoints: init.uri may move, e.g. to object storage)
_RUN_SETTINGS = ("scaling", "max_failures", "precision", "validate_every")
_MOVABLE = ("init.uri",)


def changed_settings(recorded: dict, member: MemberSettings, run_seed: int, augmentation: AugmentSettings) -> list[str]:
    """The member's settings that differ from ``recorded`` (the ``member.json`` of its checkpoint), as
    ``"key: recorded -> now"`` with dotted keys (``stages[0].epochs: 32 -> 40``). The seed and augmentation compared
    are the ones it trains with (its own or ``run_seed``; ``augmentation``, the data's, with its own keys over it).
    How it runs (``scaling``, ``max_failures``, ``precision``, ``validate_every``) and where its initial weights lie
    (``init.uri``) may change; keys the record lacks (settings newer than the minseg that wrote it; the seed and
    augmentation used, recorded since 2026-12-04) are not compared."""
    now = member.model_dump(mode="json", exclude=set(_RUN_SETTINGS))
    now["seed"] = member.training_seed(run_seed)
    now["augmentation_used"] = member.training_augmentation(augmentation).model_dump(mode="json")
    differences: list[str] = []

    def compare(before: Any, after: Any, key: str) -> None:
        if isinstance(before, dict) and isinstance(after, dict):
            names = list(after)  # the record adds keys of its own (channels, bagging_sample, class_weights_used)
            if key == "model_options":  # free-form: an option taken out counts (in_channels is the data's)
                names += [name for name in before if name not in after and name != "in_channels"]
            for name in names:
                if name in before or key == "model_options":
                    compare(before.get(name), after.get(name), f"{key}.{name}" if key else name)
        elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            for index, (b, a) in enumerate(zip(before, after)):
                compare(b, a, f"{key}[{index}]")
        elif before != after and key not in _MOVABLE and not (key == "seed" and before is None):
            differences.append(f"{key}: {json.dumps(before)} -> {json.dumps(after)}")

    compare(recorded, now, "")
    if recorded.get("checkpoint_mode") == "max" and str(recorded.get("checkpoint_metric", "")).endswith("loss"):
        # checkpoint_mode defaulted to max for every metric before 2026-12-05: such a member's best.json names its
        # worst epoch, and no setting can both match the record and be accepted now
        differences = [d + " (before 2026-12-05 a loss kept its worst epoch as best: train the member again)"
                       if d.startswith("checkpoint_mode:") else d for d in differences]
    return differences


def refuse_changed_members(storage: Storage, run_uri: str, members: list[MemberSettings],
                           trial_folds: list[int | None], run_seed: int, augmentation: AugmentSettings) -> None:
    """Before a ``--resume``: raise ``InputError`` naming every member whose checkpoints (finished or not, on any
    trial fold) were trained with other settings than the config gives it now (``changed_settings``), and the
    folders to delete to train it again. Resuming would continue a member under another loss, schedule or seed, and
    keep a finished one as if this config had trained it."""
    problems = []
    for member in members:
        changed, folders = None, []
        for fold in trial_folds:
            trial = trial_uri(run_uri, fold)
            pointer = read_pointer(storage, trial, member.name)
            if pointer is None:
                continue
            folders.append(member_uri(trial, member.name))
            if changed is None:  # every trial was trained from the one member config
                changed = changed_settings(storage.read_json(join_uri(pointer["uri"], "member.json")),
                                           member, run_seed, augmentation)
        if changed:
            problems.append(f"{member.name}: {'; '.join(changed)} (its checkpoints: {', '.join(folders)})")
    if problems:
        raise InputError(
            f"{run_uri}: --resume would keep or continue members trained with other settings than the config gives "
            f"them now (recorded -> config): {' | '.join(problems)}. Put those settings back, write the run elsewhere "
            "(another run.name or output), or delete a member's checkpoint folders to train it again")


def source_versions(sources, storage: Storage) -> list[str]:
    """Per data source, a digest that changes when its files do, read without opening them: an archive's size and
    modification time (S3: its ETag), a folder's listing (names, sizes, times or ETags). A resubmission whose members all
    finished is reused without preparing the data only while these agree (``contents.json`` then says whether the
    pictures really changed). An unreadable source gives "" (preparing the data says why)."""
    versions = []
    for source in sources:
        try:
            facts = storage.version(source.uri) if is_archive(source.uri) else \
                [(info.uri, info.size, info.version) for info in storage.list(source.uri.rstrip("/") + "/")]
        except StorageError:
            facts = ""
        versions.append(hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16])
    return versions


def _data_selection(data) -> tuple[str, dict]:
    """A digest of the data settings that decide which images (and tiles) each part holds, and those settings: a
    resubmitted run whose members all finished is reused without preparing the data only while it is unchanged."""
    document = data.model_dump(mode="json", include={"sources", "classes", "split", "tiling", "limits"})
    if data.bit_depth != BIT_DEPTH:  # other pixels from the same files; at the default, digests as before
        document["bit_depth"] = data.bit_depth
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16], document


def _data_changes(storage: Storage, run_uri: str, recorded: dict | None, settings: dict,
                  prepared: PreparedData) -> list[str]:
    """What differs from the data the run's members were prepared from: its settings (``_settings_changes``) and
    the images added to or gone from its ``data/splits.json``. Read only to explain a refusal."""
    saved_uri = join_uri(run_uri, "data", "splits.json")
    saved = storage.read_json(saved_uri) if storage.exists(saved_uri) else {}
    moved = item_changes([i for split in SPLITS for i in saved.get(split, [])],
                         [i["item_id"] for split in SPLITS for i in prepared.splits[split]], "images added", "gone")
    return _settings_changes(recorded, settings) + ([moved] if moved else [])


def _settings_changes(recorded: dict | None, current: dict, prefix: str = "data") -> list[str]:
    """``data.tiling.size: 32 -> 48``-style lines for every setting that differs between two ``_data_selection``
    documents (a recorded one from before 2026-12-06 holds none: nothing to say)."""
    if recorded is None:
        return []
    changes = []
    for key in sorted(set(recorded) | set(current)):
        before, now = recorded.get(key), current.get(key)
        if isinstance(before, dict) and isinstance(now, dict):
            changes += _settings_changes(before, now, f"{prefix}.{key}")
        elif before != now:
            changes.append(f"{prefix}.{key}: {json.dumps(before)} -> {json.dumps(now)}")
    return changes


def refuse_absent_class_metrics(members: list[MemberSettings], class_names: list[str],
                                validation: dict | None) -> None:
    """Refuse members whose ``checkpoint_metric`` is a per-class score (``iou:pyrite``) of a class the validation
    split has no pixels (or images) of: undefined while the member predicts none of it, 0 once it predicts a stray
    pixel, so "best" would be the epoch that hallucinates the class; the check selection makes of its key
    (``ensemble.selection.refuse_key_of_absent_class``). ``validation``: the split's statistics
    (``PreparedData.stats["val"]``).

    Raises:
        InputError: naming the members, the key, the class and the classes the split holds.
    """
    from minseg.ensemble.selection import refuse_key_of_absent_class

    counts = (validation or {}).get("classes", {})
    if not (validation or {}).get("images") or not all(name in counts for name in class_names):
        return
    by_key: dict[str, list[str]] = {}
    for member in members:
        by_key.setdefault(member.checkpoint_metric, []).append(member.name)
    for key, names in by_key.items():
        refuse_key_of_absent_class(key, class_names, [counts[name]["pixels"] for name in class_names], "validation",
                                   setting=f"checkpoint_metric of {', '.join(names)}:", choosing="epochs")


def refuse_other_data(storage: Storage, run_uri: str, members: list[MemberSettings], source: TrainingSource,
                      resume: bool = True, classmap: ClassMap | None = None,
                      explain: Callable[[], list[str]] | None = None, changed_images: list[str] = ()) -> None:
    """Before training: raise ``InputError`` naming every checkpoint folder of ``members`` (finished or not)
    recorded on other data than ``source`` gives its trial now (``TrainingSource.data_signature``: other images or
    parts; for prospectivity, other channels, windows or standardisation), or (``classmap`` given) under another
    class map (``data.classes`` reordered, renamed or recoded: the same ids would be other minerals). Kept by a
    ``--resume``, a finished member would be reported as if it had trained on this data (and may have trained on
    what is now its test part); continued, one would mix both; beside a ``--members`` subset trained now on other
    data, the run would hold members of two splits, none of which evaluation could use (it checks the same record:
    ``ensemble.evaluate``). Checkpoints written before 2026-12-05 record no signature and are not checked.
    ``explain``: what changed (``_data_changes``), asked only when refusing and named in the message.
    ``changed_images``: item ids whose pixels or labels differ from the run's record (``content_changes``): every
    checkpoint folder of ``members`` is refused then (the ids and tile counts, all the signature holds, agree)."""
    stale, recoded, trained = [], [], []
    for fold in source.trial_folds():
        trial, current = trial_uri(run_uri, fold), None
        for member in members:
            pointer = read_pointer(storage, trial, member.name)
            if pointer is None:
                continue
            trained.append(member_uri(trial, member.name))
            if classmap is not None and (difference := checkpoint_class_difference(storage, pointer["uri"], classmap)):
                recoded.append((member_uri(trial, member.name), difference))
            recorded = storage.read_json(join_uri(pointer["uri"], "state.json")).get("data_signature")
            current = current or source.data_signature(fold)
            if recorded is not None and recorded != current:
                stale.append(member_uri(trial, member.name))
    if recoded:
        folders, difference = ", ".join(uri for uri, _ in recoded), recoded[0][1]
        raise InputError(f"{run_uri}: data.classes differs from the class map these members trained with "
                         f"({difference}): {folders}. Keep data.classes as it was for this run, or train into "
                         "another run.name")
    doing = ("--resume would keep or continue members trained on other data than this run gives them" if resume
             else "members trained now would sit beside members of this run trained on other data")
    if stale:
        changes = explain() if explain else []
        what = (f"changed since the run's data was prepared: {'; '.join(changes)}" if changes else
                "the inputs, the split, the evidence or the bit depth images are read with changed")
        raise InputError(f"{run_uri}: {doing} ({what}): {', '.join(stale)}. Write the run elsewhere (another "
                         "run.name or output), or delete those folders to train them again")
    if changed_images and trained:  # after the settings: another bit depth changes every picture as decoded
        raise InputError(f"{run_uri}: {doing} ({len(changed_images)} image(s) have other pixels or masks under the "
                         f"same names since the run's data was prepared: {first_ids(changed_images)}): "
                         f"{', '.join(trained)}. Put the "
                         "files back, write the run elsewhere (another run.name or output), or delete those folders "
                         "to train them again")


def take_finished_members(storage: Storage, source_uri: str, run_uri: str, members: list[MemberSettings],
                          source: TrainingSource, run_seed: int, augmentation: AugmentSettings) -> list[str]:
    """Copy into ``run_uri`` the finished member trials of the run at ``source_uri`` that ``run_uri`` has no
    checkpoint of, where they fit this run: trained with the settings the config gives the member now
    (``changed_settings``) on the data ``source`` gives the trial (``data_signature``), a bagged member's sample
    expanded into epochs as now (``bagging_build``). Those that do not fit are
    left (trained again), not refused: ``run_uri``'s own checkpoints are what a ``--resume`` continues (the
    prospectivity job resuming a rerun stopped beside its finished run). Returns ``member`` / ``fold<k>/member``
    of each trial copied (locally hard links; S3 server-side)."""
    taken = []
    for fold in source.trial_folds():
        trial, published = trial_uri(run_uri, fold), trial_uri(source_uri, fold)
        for member in members:
            try:
                if read_pointer(storage, trial, member.name) is not None:
                    continue  # this run's own: continued or kept
                done = _previous_result(storage, published, member.name)
                pointer = read_pointer(storage, published, member.name)
                if done is None or done.status is not MemberStatus.DONE or pointer is None:
                    continue
                recorded = storage.read_json(join_uri(pointer["uri"], "member.json"))
                state = storage.read_json(join_uri(pointer["uri"], "state.json"))
                signature, build = state.get("data_signature"), state.get("bagging_build")
            except (InputError, TypeError, ValueError, AttributeError):  # a damaged record: not taken, trained again
                continue
            if (changed_settings(recorded, member, run_seed, augmentation) or signature != source.data_signature(fold)
                    or build != source.bagging_build(member.bagging is not None)):  # its sample expanded another way
                continue
            storage.delete_prefix(member_uri(trial, member.name) + "/")  # a failed try's error.txt, say
            storage.copy_files(member_uri(published, member.name), member_uri(trial, member.name))
            taken.append(member.name if fold is None else f"fold{fold + 1}/{member.name}")
    return taken


def _all_finished(storage: Storage, run_uri: str, members: list[MemberSettings],
                  trial_folds: list[int | None]) -> list[MemberResult] | None:
    """Every trial's recorded result when all of them finished (a resumed run with nothing left to do), else None."""
    results = []
    for member in members:
        for fold in trial_folds:
            done = _previous_result(storage, trial_uri(run_uri, fold), member.name)
            if done is None or done.status is not MemberStatus.DONE:
                return None
            results.append(done)
    return results


def _previous_result(storage: Storage, run_uri: str, member: str) -> MemberResult | None:
    uri = join_uri(member_uri(run_uri, member), "result.json")
    if not storage.exists(uri):
        return None
    return MemberResult(**storage.read_json(uri))


def _collect(storage: Storage, trial: dict, error: BaseException) -> MemberResult:
    """The result of a trial whose task failed (``error``): what it recorded, if it got that far (its earlier
    runs' records were cleared when it was submitted), else a failed row saying why, with whatever checkpoints it
    left, the task's traceback (Ray's error text carries the remote one) in ``error.txt``."""
    member = MemberSettings.model_validate(trial["member"])
    recorded = _previous_result(storage, trial["run_uri"], member.name)
    if recorded is not None:
        return recorded
    _write_traceback(storage, trial["run_uri"], member.name, re.sub(r"\x1b\[[0-9;]*m", "", str(error)))  # no colours
    cause = getattr(error, "cause", None) or error  # a RayTaskError's own exception, as raised in the task
    failed = summarize_member(storage, trial["run_uri"], member, _root_cause(cause), 0.0, trial.get("fold"))
    return _record_result(storage, trial["run_uri"], failed)


# -------------------------------------------------------------------- reports


TABLE_COLUMNS = ["member", "fold", "model", "status", "metric", "best_value", "test_value", "best_epoch", "epochs",
                 "restarts",
                 "wall_seconds", "init", "best_checkpoint", "last_checkpoint", "error", "warning"]


def write_members_table(results: list[MemberResult], run_uri: str, storage: Storage, fold_summary: bool = False) -> str:
    # folds numbered from 1, as the console table, cv/fold<k> and models/fold<k> name them
    rows = [{**asdict(r), "fold": None if r.fold is None else r.fold + 1} for r in results]
    storage.write_text(join_uri(run_uri, "members.csv"), csv_text(rows, TABLE_COLUMNS, ignore_extra=True))
    document = {"members": rows}
    if fold_summary:
        document["cross_validation"] = cross_validation_summary(results)
    storage.write_json(join_uri(run_uri, "members.json"), document)
    text = format_members_table(results)
    if fold_summary:
        text += "\n" + "\n".join(
            f"{name}: {s['metric']} = {s['mean']:.4f} ± {s['sd']:.4f} on {s['folds']} test folds "
            "(checkpoints chosen on each fold's validation part)"
            for name, s in document["cross_validation"].items()
        )
    print(text)
    return text


def cross_validation_summary(results: list[MemberResult]) -> dict:
    """Per member: mean ± sd (ddof 1) over folds of the checkpoint metric on each fold's test part."""
    summary = {}
    for name in dict.fromkeys(r.member for r in results):
        values = [r.test_value for r in results if r.member == name and r.test_value is not None
                  and not math.isnan(r.test_value) and r.status is MemberStatus.DONE]  # NaN: nothing to score
        if values:
            summary[name] = {"metric": next(r.metric for r in results if r.member == name), "mean": float(np.mean(values)),
                             "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "folds": len(values)}
    return summary


def format_members_table(results: list[MemberResult]) -> str:
    name_w = max([16] + [len(r.member) + 1 for r in results])  # long names keep the columns aligned
    model_w = max([20] + [len(r.model) + 1 for r in results])
    metric_w = max([12] + [len(r.metric) + 1 for r in results])
    header = (f"{'member':<{name_w}}{'fold':>5} {'model':<{model_w}}{'status':<8}{'metric':<{metric_w}}{'best':>9}"
              f"{'test':>9}{'epoch':>7}{'epochs':>7}{'min':>7}  checkpoint / error")
    lines = [header, "-" * len(header)]
    for r in results:
        best = f"{r.best_value:.4f}" if isinstance(r.best_value, (int, float)) and not math.isnan(r.best_value) else "-"
        metric, epoch = ("last epoch", r.epochs) if _kept_last_epoch(r) else (r.metric, r.best_epoch or "-")
        tail = (r.best_checkpoint or r.last_checkpoint or "") if r.status is MemberStatus.DONE else (r.error or "")
        test = f"{r.test_value:.4f}" if isinstance(r.test_value, (int, float)) and not math.isnan(r.test_value) else "-"
        lines.append(f"{r.member:<{name_w}}{'' if r.fold is None else r.fold + 1:>5} {r.model:<{model_w}}"
                     f"{r.status.value:<8}{metric:<{metric_w}}"
                     f"{best:>9}{test:>9}{epoch:>7}{r.epochs:>7}{r.wall_seconds / 60:>7.1f}  {tail[:160]}")
        if r.init:
            lines.append(f"{'':<{name_w + 5}} initialised from {r.init}")
        if r.warning:
            lines.append(f"{'':<{name_w + 5}} warning: {r.warning}")
    if any(r.status is MemberStatus.DONE and r.best_value is not None for r in results):
        lines.append(SCORES_NOTE)
    if any(_kept_last_epoch(r) for r in results):
        lines.append("last epoch: no validation score to choose an epoch by (no validation split, or the metric "
                     "undefined every time); the last epoch's checkpoint is kept")
    return "\n".join(lines)


def _kept_last_epoch(r: MemberResult) -> bool:
    """A member trained without a validation score (prospect windows, val: 0) keeps its last epoch."""
    return r.status is MemberStatus.DONE and r.best_value is None and r.best_checkpoint is None


# two validation scores of one checkpoint, and rankings that may differ, puzzle users: say which is which
SCORES_NOTE = ("best: the metric on validation at the epoch kept, as training scores it (segmentation: on its tiles); "
               "minseg evaluate scores whole images\nand ranks members on those, so its numbers and order can "
               "differ. test: the kept checkpoint on the test split (classification, k-fold runs), else -")


def write_curves(storage: Storage, run_uri: str, member: str) -> None:
    """history.csv and curves.png (loss and validation metric per epoch) for one member."""
    checkpoint = load_checkpoint(storage, run_uri, member)
    if checkpoint is None:
        return
    base = member_uri(run_uri, member)
    if checkpoint.state.get("init"):
        storage.write_json(join_uri(base, "init_report.json"), checkpoint.state["init"])
    history = checkpoint.state.get("history", [])
    if not history:
        return
    columns = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    storage.write_text(join_uri(base, "history.csv"), csv_text(history, columns))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    validated = [row for row in history if "val_loss" in row]
    if validated:
        left.plot([r["epoch"] for r in validated], [r["val_loss"] for r in validated], marker="o", label="validation")
        for key in ("miou", "mean_f1", "accuracy"):
            if key in validated[0]:
                right.plot([r["epoch"] for r in validated], [r[key] for r in validated], marker="o", label=key)
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    uniform = [row[key] for key in UNIFORM_LOSSES[::-1] for row in history if isinstance(row.get(key), (int, float))]
    if uniform:  # the loss of uniform predictions: where a member that knows nothing starts
        left.axhline(uniform[0], color="grey", linestyle="--", linewidth=1, label="every class equally likely")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_title(f"{member}: loss")
    left.legend()
    right.set_xlabel("epoch")
    right.set_title("validation metrics")
    if validated:
        right.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    storage.write_bytes(join_uri(base, "curves.png"), buffer.getvalue())
