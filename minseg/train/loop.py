"""The per-worker training loop of one ensemble member (runs inside Ray Train).

Read it top to bottom: set up -> start (pretrained weights) or resume -> for each stage
(freeze or not; a fresh optimizer per stage, or one for the whole run) -> for each epoch:
train, validate every N epochs, checkpoint, report. Every worker calls
``ray.train.report`` the same number of times.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from minseg.errors import InputError, RunError
from minseg.data.augment import augment_batch
from minseg.device import autocast_dtype
from minseg.data.config import AugmentSettings
from minseg.enums import ClassWeighting, LossName, OptimizerName, ScheduleName, ScheduleSpan, Task
from minseg.logs import configure_logging, get_logger, log_event
from minseg.losses import MainOutputLoss, build_loss
from minseg.metrics import ConfusionMatrix, metric_value
from minseg.models import build_model, load_pretrained
from minseg.models.pretrained import WeightLoadReport, choose_normalization
from minseg.train.checkpoint import CheckpointWriter, load_checkpoint, write_state
from minseg.train.config import MemberSettings, OptimizerSettings, ScheduleSettings

log = get_logger("train")


class DivergedError(RunError):
    """The loss became NaN or infinite."""


# ------------------------------------------------------------------ helpers


def loss_readback_every(device: torch.device) -> int:
    """Training steps whose losses are read back at once (``LossWindow``): 16 on a GPU, every step on CPU."""
    return 16 if device.type == "cuda" else 1


class LossWindow:
    """Training losses read back to the host ``every`` steps at once, each checked for NaN / inf and summed
    weighted by its batch size. A read-back waits for the device: on a GPU, one per step keeps the host from
    queueing the next steps' work (16 there); on CPU it costs nothing, so ``every`` is 1 and a diverged loss
    is refused before its step is taken. Later steps of a diverged window change only the weights in memory:
    the epoch's checkpoint is never written."""

    def __init__(self, member: str, epoch: int, every: int):
        self.member, self.epoch, self.every = member, epoch, every
        self.total, self._pending = 0.0, []

    def add(self, loss: torch.Tensor, tiles: int, step: int) -> None:
        """Raises DivergedError: a loss of this window is not finite (naming its step)."""
        self._pending.append((loss.detach(), tiles, step))
        if len(self._pending) >= self.every:
            self.settle()

    def settle(self) -> None:
        if not self._pending:
            return
        values = torch.stack([loss.float() for loss, _, _ in self._pending]).tolist()
        for value, (_, tiles, step) in zip(values, self._pending):
            if not math.isfinite(value):
                raise DivergedError(f"member {self.member}: loss became {value} at epoch {self.epoch}, step {step}; "
                                    "lower the learning rate or enable grad_clip_norm")
            self.total += value * tiles
        self._pending = []


def learning_rate(schedule: ScheduleSettings, base_lr: float, step: int, total_steps: int, epoch: int) -> float:
    """The learning rate at ``step`` of ``total_steps`` (``epoch``: epochs done, for ``step``).

    cosine: lr_min + (lr - lr_min) (1 + cos(pi t / T)) / 2 per step after a linear warm-up
    (SGDR without restarts; the Res-UNet paper's 1e-4 -> 1e-6); step: lr x gamma^floor(epoch /
    step_epochs) (MFAF: 0.6 every 30 epochs), or every ``step_steps`` optimizer steps (the
    microplastic paper: 0.96 every 800). Cosine steps count within a stage, or over the whole
    run with ``schedule.span: run``; ``epoch`` always counts over the whole run.
    """
    if schedule.name is ScheduleName.CONSTANT:
        return base_lr
    if schedule.name is ScheduleName.STEP:
        if schedule.step_steps:
            return base_lr * schedule.gamma ** (step // schedule.step_steps)
        return base_lr * schedule.gamma ** (epoch // schedule.step_epochs)
    if step < schedule.warmup_steps:
        return base_lr * (step + 1) / schedule.warmup_steps
    progress = min(1.0, (step - schedule.warmup_steps) / max(1, total_steps - schedule.warmup_steps))
    return schedule.min_lr + (base_lr - schedule.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(settings: OptimizerSettings, parameters, lr: float, trainable_only: bool = True) -> torch.optim.Optimizer:
    """The member's optimizer over its trainable parameters (or all: frozen ones get no gradient, so the
    optimizer skips them until they are unfrozen, their state starting then)."""
    parameters = [p for p in parameters if p.requires_grad or not trainable_only]
    if settings.name is OptimizerName.SGD:
        return torch.optim.SGD(parameters, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.name is OptimizerName.ADAMW:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=settings.weight_decay, eps=settings.eps)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=settings.weight_decay, eps=settings.eps)


def to_model_input(batch: dict, mean: torch.Tensor, std: torch.Tensor, device, task: Task):
    """uint8 NHWC images -> normalised float NCHW (channels_last) on device; targets as long."""
    images = batch["image"].to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    images = ((images - mean) / std).contiguous(memory_format=torch.channels_last)
    key = "mask" if task is Task.SEGMENTATION else "label"
    return images, batch[key].to(device, non_blocking=True).long()


def _feeding(device) -> dict:
    """``iter_torch_batches`` options: on CUDA, batches staged in pinned memory a few ahead, so the copies to the
    GPU overlap its work; on CPU, Ray Data's defaults (nothing to overlap)."""
    return {"pin_memory": True, "prefetch_batches": 4} if device.type == "cuda" else {}


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _all_reduce_sum(values: list[float], device) -> list[float]:
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def uniform_logits(output):
    """Zero logits shaped as ``output`` (a tensor, or tuples / lists of them: a model's auxiliary outputs): the
    prediction of a model that knows nothing, every class equally likely (softmax) or p = 0.5 (a sigmoid)."""
    if isinstance(output, (tuple, list)):
        return type(output)(uniform_logits(part) for part in output)
    return torch.zeros_like(output, dtype=torch.float32)


# ------------------------------------------------------------------- the loop


@dataclass
class Session:
    """One worker's set-up: what every phase below reads."""

    worker: "WorkerConfig"  # noqa: F821  (minseg.train.ensemble.WorkerConfig; imported lazily: train.ensemble imports us)
    rank: int
    world: int
    device: torch.device
    seed: int
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    augmentation: AugmentSettings
    train_shard: object
    val_shard: object | None
    test_shard: object | None
    amp_dtype: torch.dtype | None
    scaler: object | None
    class_weights: list[float] | None = None  # the loss's, as configured or computed from the training data
    checkpoints: CheckpointWriter = field(default_factory=CheckpointWriter)  # rank 0's, in the background

    @property
    def member(self) -> MemberSettings:
        return self.worker.member

    @property
    def inputs(self):
        return self.worker.inputs


def build_member_model(member: MemberSettings, inputs, world: int) -> torch.nn.Module:
    """The member's model for ``inputs`` (classes, channels), its BatchNorm layers synchronised across the ``world``
    workers when ``scaling.sync_batchnorm`` asks (same parameter and buffer names: checkpoints load either way)."""
    model = build_model(member.model, num_classes=inputs.num_classes, in_channels=inputs.in_channels,
                        **member.model_options)
    if member.scaling.sync_batchnorm and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def set_up(worker) -> Session:
    """Phase 1: seeds, model, loss, normalisation, dataset shards, mixed precision."""
    import ray.train
    import ray.train.torch

    member, inputs = worker.member, worker.inputs
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    seed = member.training_seed(worker.seed) + 1000 * rank
    torch.manual_seed(seed)
    model = build_member_model(member, inputs, world)
    class_weights = member.class_weights(inputs.class_counts)
    loss_fn = build_loss(member.loss.name, num_classes=inputs.num_classes, class_weights=class_weights,
                         ignore_index=inputs.ignore_index, dice_weight=member.loss.dice_weight,
                         focal_weight=member.loss.focal_weight, focal_gamma=member.loss.focal_gamma,
                         focal_alpha=member.loss.focal_alpha, beta=member.loss.beta).to(device)
    if member.loss.name is not LossName.SELF_DISTILLATION:  # a model's auxiliary outputs are self-distillation's
        loss_fn = MainOutputLoss(loss_fn)
    amp_dtype = autocast_dtype(member.precision, device)
    return Session(
        worker=worker, rank=rank, world=world, device=device, seed=seed, model=model, loss_fn=loss_fn,
        mean=torch.empty(0), std=torch.empty(0),  # set by start_or_resume: they may follow pretrained weights
        augmentation=member.training_augmentation(inputs.augmentation),
        train_shard=ray.train.get_dataset_shard("train"),
        val_shard=ray.train.get_dataset_shard("val") if inputs.has_val else None,
        test_shard=ray.train.get_dataset_shard("test") if inputs.has_test else None, amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None, class_weights=class_weights,
    )


def start_or_resume(session: Session) -> tuple[dict, dict | None]:
    """Phase 2: (state, optimizer state) from the member's last checkpoint; or a fresh state, the
    model initialised from ``member.init`` (its load report kept in the state) and normalised the
    way those weights expect. Sets the session's normalisation either way."""
    state = {"stage": 0, "epoch_in_stage": 0, "epochs_done": 0, "step": 0, "best_value": None, "best_epoch": None,
             "history": [], "restarts": 0, "init": None, "normalization": session.inputs.normalization,
             "fold_signature": session.inputs.fold_signature, "train_tiles": session.inputs.train_tiles,
             "bagging_sample": session.inputs.bagging_sample, "bagging_build": session.inputs.bagging_build,
             "class_repeat_factors": session.inputs.class_repeat_factors,
             "data_signature": session.inputs.data_signature}
    optimizer_state = None
    worker, member = session.worker, session.member
    resumed = load_checkpoint(worker.storage, worker.run_uri, member.name)
    if resumed is not None:
        if resumed.state.get("fold_signature") != session.inputs.fold_signature:
            raise InputError(
                f"member {member.name}: its checkpoints in {worker.run_uri} were trained on another split of the "
                "folds (the data, data.split.seed, folds or fold_val changed, or the run predates test folds); "
                "resuming would report scores on images it trained on. Start a new run.name")
        # a changed sample changes the tile count too: say what changed first
        if resumed.state.get("bagging_sample") != session.inputs.bagging_sample:
            raise InputError(
                f"member {member.name}: its checkpoints in {worker.run_uri} were trained on another sample of the "
                "training data (its bagging settings or seed changed, or a minseg before 2026-12-04 drew it): resuming "
                "would mix two samples. Start a new run.name")
        # the same sample expanded into an epoch another way (same tile count, other tiles or windows)
        if resumed.state.get("bagging_build") != session.inputs.bagging_build:
            built = resumed.state.get("bagging_build", "before 2026-12-05")  # recorded since 2026-12-05
            raise InputError(
                f"member {member.name}: its checkpoints in {worker.run_uri} were trained on an epoch built from its "
                f"sample another way (recorded: {built or 'none'}, now: {session.inputs.bagging_build or 'none'}; "
                "before 2026-12-05 minseg took data.oversampling's factors from the whole split and let SMOTE pair "
                "a window with its own bootstrap copy): resuming would mix the two. Start a new run.name")
        recorded = resumed.state.get("train_tiles")  # absent from checkpoints written before it was recorded
        if recorded is not None and recorded != session.inputs.train_tiles:
            raise InputError(
                f"member {member.name}: its checkpoints in {worker.run_uri} were trained on {recorded} tiles an epoch, "
                f"this run gives {session.inputs.train_tiles} (the data, tiling or data.oversampling changed): the "
                "learning-rate schedule and the epochs would no longer match. Start a new run.name")
        factors = resumed.state.get("class_repeat_factors", session.inputs.class_repeat_factors)  # since 2026-12-05
        if factors != session.inputs.class_repeat_factors:
            raise InputError(
                f"member {member.name}: its checkpoints in {worker.run_uri} were trained with the class repeat "
                f"factors {factors}, this run gives {session.inputs.class_repeat_factors} (the data or "
                "data.oversampling changed): resuming would mix two samplings. Start a new run.name")
        session.model.load_state_dict(resumed.model)
        state = {**state, **resumed.state}
        state["restarts"] = state.get("restarts", 0) + 1
        optimizer_state = resumed.optimizer
        if session.rank == 0:
            log_event(log, "train.resumed", member=member.name, checkpoint=resumed.uri,
                      epochs_done=state["epochs_done"])
    elif member.init is not None:
        init = member.init
        report = load_pretrained(session.model, init.uri, part=init.part, layout=init.layout, prefix=init.prefix,
                                 min_encoder_share=init.min_encoder_share, storage=worker.storage)
        stats, how = choose_normalization(init.normalization, report.layout, init.uri, session.inputs.in_channels,
                                          session.inputs.normalization, worker.storage,
                                          reads_image=session.model.encoder_reads_input)
        report.normalization = how
        state["init"], state["normalization"] = report.to_document(), stats
        if session.rank == 0:
            log_event(log, "train.initialised", member=member.name, report=report.summary(), normalization=how)
    device = session.device
    session.mean = torch.tensor(state["normalization"]["mean"], device=device).view(1, -1, 1, 1)
    session.std = torch.tensor(state["normalization"]["std"], device=device).view(1, -1, 1, 1)
    session.model.to(device)
    if device.type == "cuda":  # NHWC convolutions (tensor cores); the inputs come channels_last too
        session.model.to(memory_format=torch.channels_last)
    return state, optimizer_state


_BATCH_NORM_OF_ONE = "Expected more than 1 value per channel when training"  # torch's BatchNorm, batch of one


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a worker whose seed is ``seed`` (uint32). Mixed (NumPy's SeedSequence), not added:
    ``seed + epoch`` would give the member seeded 1 the draws of the member seeded 0 one epoch later."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_epoch(session: Session, ddp_model, optimizer, state: dict, base_lr: float, stage_step: int,
                total_steps: int, per_worker_batch: int) -> dict:
    """Phase 3a: one pass over the training shard; returns loss / throughput metrics merged over workers."""
    member, task = session.member, session.inputs.task
    started = time.monotonic()
    ddp_model.train()
    # every random draw of the epoch from the epoch's own seed: a member resumed from a checkpoint (a restarted worker,
    # a resubmitted run) shuffles, augments and drops out as the run that never stopped
    seed = epoch_seed(session.seed, state["epochs_done"])
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    losses = LossWindow(member.name, state["epochs_done"] + 1, loss_readback_every(session.device))
    loss_count, waited, lr, skipped = 0, 0.0, base_lr, 0
    # the same loss for a model that gives every class the same probability (zero logits): it depends on the
    # targets only, so it is measured in the member's first epoch and kept (an extra loss a step costs ~5 %)
    uniform_known = state.get("train_loss_uniform")
    uniform_sum = torch.zeros((), dtype=torch.float64, device=session.device)  # summed where computed: no sync
    fetch_started = time.monotonic()
    for batch in session.train_shard.iter_torch_batches(
            batch_size=per_worker_batch, local_shuffle_buffer_size=session.inputs.shuffle_buffer or None,
            local_shuffle_seed=seed, **_feeding(session.device)):
        waited += time.monotonic() - fetch_started
        images, target = to_model_input(batch, session.mean, session.std, session.device, task)
        if task is Task.SEGMENTATION:
            images, target = augment_batch(images, target, session.augmentation, generator,
                                           session.inputs.ignore_index, session.mean, session.std)
        else:
            images, _ = augment_batch(images, None, session.augmentation, generator,
                                      mean=session.mean, std=session.std)
        lr = learning_rate(member.schedule, base_lr, stage_step, total_steps, state["epochs_done"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            with torch.autocast(session.device.type, dtype=session.amp_dtype, enabled=session.amp_dtype is not None):
                output = ddp_model(images)
                loss = session.loss_fn(output, target)
        except ValueError as exc:
            if images.shape[0] != 1 or not str(exc).startswith(_BATCH_NORM_OF_ONE):
                raise
            # a batch of one tile (an epoch's last, short one) through a BatchNorm layer on a 1x1 map (MFAF's on
            # 16-cell windows): no batch statistics from one value. The tile is in the next epoch's shuffle; every
            # worker of a data-parallel member gets as many rows, so all of them skip it
            skipped += 1
            fetch_started = time.monotonic()
            continue
        losses.add(loss, images.shape[0], stage_step)
        optimizer.zero_grad(set_to_none=True)
        scaler = session.scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if member.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(session.model.parameters(), member.grad_clip_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if uniform_known is None:
            with torch.no_grad():
                uniform_sum += session.loss_fn(uniform_logits(output), target).double() * images.shape[0]
        loss_count += images.shape[0]
        stage_step += 1
        state["step"] += 1
        fetch_started = time.monotonic()
    losses.settle()
    if skipped and not loss_count:
        raise InputError(f"member {member.name}: no training batch holds more than one tile (window), and its model "
                         "normalises a 1x1 map with BatchNorm, which needs two or more: add training data, a larger "
                         "batch or fewer workers")
    train_time = time.monotonic() - started
    loss_sum, uniform_sum, loss_count, waited_sum, time_sum = _all_reduce_sum(
        [losses.total, float(uniform_sum), loss_count, waited, train_time], session.device)
    world = session.world
    state["train_loss_uniform"] = uniform_sum / max(1, loss_count) if uniform_known is None else uniform_known
    return {"lr": lr, "train_loss": loss_sum / max(1, loss_count),
            "train_loss_uniform": state["train_loss_uniform"], "train_tiles": int(loss_count),
            "tiles_per_s": loss_count / max(1e-9, time_sum / world),
            "data_wait_fraction": waited_sum / max(1e-9, time_sum)}


def record_epoch(session: Session, model_state_source, optimizer, state: dict, metrics: dict, validated: bool,
                 drop_optimizer: bool) -> None:
    """Phase 3c: best-so-far bookkeeping, history, checkpoint (rank 0), and the report every worker makes."""
    import ray.train

    member, worker = session.member, session.worker
    is_best = False
    if validated:
        value = metric_value(metrics, member.checkpoint_metric)  # val_loss is a key of the metrics too
        best = state["best_value"]
        better = best is None or (value > best if member.checkpoint_mode == "max" else value < best)
        if better and not (isinstance(value, float) and math.isnan(value)):
            state["best_value"], state["best_epoch"], is_best = value, state["epochs_done"], True
    row = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    if state.get("init") and not state["history"]:  # where the member started, in its history
        row["init"] = WeightLoadReport.from_document(state["init"]).short()
    state["history"].append(row)
    if session.rank == 0:  # written while the next epoch trains (copied first: training changes them in place)
        inputs = session.inputs
        session.checkpoints.submit(
            worker.storage, worker.run_uri, member.name, f"epoch-{state['epochs_done']:04d}",
            model_state_source.state_dict(), None if drop_optimizer else optimizer.state_dict(), state,
            _member_document(session), inputs.classes,
            {**metrics, "normalization": state["normalization"]}, is_best,
        )
        log_event(log, "train.epoch", member=member.name, epoch=state["epochs_done"], of=member.total_epochs,
                  loss=round(metrics["train_loss"], 4),
                  **{k: round(metrics[k], 4) for k in ("val_loss", "miou", "accuracy") if k in metrics})
    ray.train.report({k: v for k, v in row.items() if isinstance(v, (int, float))})


def steps_per_epoch(session: Session, batch_size: int) -> int:
    """Optimiser steps a worker takes an epoch: its share of the tiles (split equally, the count made to divide by
    repeating a few: ``minseg.train.ingest.equal_shares``) in batches of ``batch_size // world``."""
    share = math.ceil(session.inputs.train_tiles / session.world)
    return max(1, math.ceil(share / (batch_size // session.world)))


def announce_start(session: Session, state: dict) -> None:
    """Rank 0 tells the driver's board that this member's worker group holds its resources and starts (or, after
    a Ray Train restart, starts again) at ``state["epochs_done"]``: a trial waiting for GPUs is queued, not
    running. Posted and awaited before the first epoch is reported, so the driver sees the start first."""
    board = session.worker.board
    if session.rank != 0 or board is None:
        return
    import ray

    try:
        ray.get(board.post.remote(session.worker.trial, {"started": True, "epochs_done": state["epochs_done"]}))
    except ray.exceptions.RayError:  # a lost board costs the console a line, not the member
        pass


def train_worker(config: dict) -> None:
    """The loop of one member on one Ray Train worker: set up → start or resume → per stage (freeze or
    not; optimizer per stage, or one for the run) → per epoch: train, validate every N epochs, record.

    ``config["worker"]`` is a ``train.ensemble.WorkerConfig``. Every worker reports the same number of times.
    """
    import ray.train.torch

    configure_logging()
    session = set_up(config["worker"])
    state, optimizer_state = start_or_resume(session)
    announce_start(session, state)
    member, model = session.member, session.model
    whole_run = member.schedule.span is ScheduleSpan.RUN
    stage_steps = [steps_per_epoch(session, stage.batch_size) * stage.epochs for stage in member.stages]
    optimizer = None
    if whole_run:  # one optimizer: parameters frozen now get no gradient until their stage unfreezes them
        optimizer = make_optimizer(member.optimizer, model.parameters(), member.optimizer.lr, trainable_only=False)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
    for stage_index in range(state["stage"], len(member.stages)):
        stage = member.stages[stage_index]
        if stage.freeze_encoder:
            model.freeze_encoder()
        elif model.encoder is not None:
            model.unfreeze_encoder()
        ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)  # after freezing: DDP sees the trainable set
        per_epoch = steps_per_epoch(session, stage.batch_size)
        if whole_run:
            base_lr, first_step, total_steps = member.optimizer.lr, sum(stage_steps[:stage_index]), sum(stage_steps)
        else:
            base_lr, first_step, total_steps = stage.lr or member.optimizer.lr, 0, stage_steps[stage_index]
            optimizer = make_optimizer(member.optimizer, model.parameters(), base_lr)
            if optimizer_state is not None and state["stage"] == stage_index:
                optimizer.load_state_dict(optimizer_state)
            optimizer_state = None
        per_worker_batch = stage.batch_size // session.world

        for epoch_in_stage in range(state["epoch_in_stage"] if state["stage"] == stage_index else 0, stage.epochs):
            started = time.monotonic()
            trained = train_epoch(session, ddp_model, optimizer, state, base_lr, first_step + epoch_in_stage * per_epoch,
                                  total_steps, per_worker_batch)
            state["epochs_done"] += 1
            state["epoch_in_stage"] = epoch_in_stage + 1
            state["stage"] = stage_index
            metrics = {"epoch": state["epochs_done"], "stage": stage_index + 1, **trained}
            validate = session.val_shard is not None and (
                state["epochs_done"] % member.validate_every == 0 or state["epochs_done"] == member.total_epochs
            )
            if validate:
                metrics.update(evaluate(session.model, session, session.worker.eval_batch_size))
            metrics["seconds"] = time.monotonic() - started
            finished_stage = state["epoch_in_stage"] == stage.epochs
            if finished_stage:
                state["stage"], state["epoch_in_stage"] = stage_index + 1, 0
            # a per-stage optimizer starts afresh with the next stage, and nothing follows the last one:
            # the optimizer state is not worth keeping then
            last_stage = stage_index == len(member.stages) - 1
            record_epoch(session, model, optimizer, state, metrics, validate,
                         finished_stage and (not whole_run or last_stage))
    session.checkpoints.wait()  # the member is done when its last checkpoint is
    if session.test_shard is not None and state.get("test_metrics") is None:
        score_best_on_test(session, state)


def score_best_on_test(session: Session, state: dict) -> None:
    """Phase 4 (k-fold trials; classifiers, on the test split): the checkpoint chosen on validation, scored once on
    the fold's test part (the test split);
    the metrics go into the member's state (``test_metrics``), rewritten in its last checkpoint."""
    import torch.distributed as dist

    worker, member = session.worker, session.member
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # rank 0 may still be writing the last checkpoint (and pruning old ones)
    best = load_checkpoint(worker.storage, worker.run_uri, member.name, "best") or \
        load_checkpoint(worker.storage, worker.run_uri, member.name, "last")
    session.model.load_state_dict(best.model)
    metrics = evaluate(session.model, session, worker.eval_batch_size, session.test_shard)
    state["test_metrics"] = {k: v for k, v in metrics.items()}
    if session.rank == 0:
        write_state(worker.storage, worker.run_uri, member.name, state)
        log_event(log, "train.tested", member=member.name, checkpoint=best.uri,
                  **{k: round(metrics[k], 4) for k in ("miou", "accuracy", "val_loss") if k in metrics})


def _buffers_of_rank_0(model: torch.nn.Module) -> None:
    """Every worker's BatchNorm running statistics made rank 0's, the ones its checkpoint holds: each worker updated
    its own at its last training step, and DDP, which broadcasts rank 0's at its next forward, is not what evaluates
    (every worker calls this together, before their shares of the tiles make them part)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def evaluate(model, session: Session, batch_size: int, shard=None) -> dict:
    """Phase 3b: validation loss and confusion-matrix metrics, merged across workers (``shard``:
    another split than validation, e.g. a fold's test part; the loss keeps the name ``val_loss``).

    ``model`` is the plain module, never its DDP wrapper: workers hold unequal shares of these tiles
    (``minseg.train.ingest``: none dropped), so nothing may wait on the others until the sums at the end."""
    _buffers_of_rank_0(model)
    model.eval()
    inputs, device, task = session.inputs, session.device, session.inputs.task
    matrix = ConfusionMatrix(inputs.num_classes, inputs.ignore_index if task is Task.SEGMENTATION else None,
                             device=device)
    loss_sum, uniform_sum, count = 0.0, 0.0, 0
    for batch in (shard or session.val_shard).iter_torch_batches(batch_size=batch_size, **_feeding(device)):
        images, target = to_model_input(batch, session.mean, session.std, device, task)
        with torch.autocast(device.type, dtype=session.amp_dtype, enabled=session.amp_dtype is not None):
            logits = model(images)
        logits = logits[0] if isinstance(logits, tuple) else logits
        loss_sum += float(session.loss_fn(logits.float(), target)) * images.shape[0]
        uniform_sum += float(session.loss_fn(uniform_logits(logits.float()), target)) * images.shape[0]
        count += images.shape[0]
        matrix.update(logits, target)
    loss_sum, uniform_sum, count = _all_reduce_sum([loss_sum, uniform_sum, count], device)
    matrix.all_reduce()
    metrics = matrix.compute(inputs.classes_names, background=0 if task is Task.SEGMENTATION else None)
    metrics["val_loss"] = loss_sum / max(1, count)
    metrics["val_loss_uniform"] = uniform_sum / max(1, count)
    return {k: (v if not isinstance(v, float) or not np.isnan(v) else float("nan")) for k, v in metrics.items()}


def _member_document(session: Session) -> dict:
    """``member.json``: the member's resolved config (its seed the run's when it names none; the augmentation it
    trained with, the data's with its own keys over it, as ``augmentation_used``), its model options
    completed with the number of input channels it was built for (what evaluation and inference build it with), and
    the images of a scene they come from when the data declares them (``channels``; evaluation checks its data
    against them)."""
    member, inputs, class_weights = session.member, session.inputs, session.class_weights
    document = member.model_dump(mode="json")
    # what it trained with: --resume compares them (train.ensemble.changed_settings)
    document["seed"] = member.training_seed(session.worker.seed)
    document["augmentation_used"] = session.augmentation.model_dump(mode="json")
    document["model_options"] = {**document["model_options"], "in_channels": inputs.in_channels}
    document["channels"] = inputs.channels
    if inputs.bagging_sample is not None:  # which units this member trained on, and how often
        document["bagging_sample"] = inputs.bagging_sample
    if inputs.class_repeat_factors is not None:  # how its rare-class tiles were repeated (a bagged member: its own)
        document["class_repeat_factors"] = inputs.class_repeat_factors
    if inputs.bagging_balance is not None:  # a bagged prospectivity member's own SMOTE and noise windows
        document["bagging_balance"] = inputs.bagging_balance
    if isinstance(member.loss.class_weights, ClassWeighting):  # the weights the training data gave
        document["loss"]["class_weights_used"] = class_weights
    return document
