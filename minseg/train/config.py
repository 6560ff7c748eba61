"""The ``training`` config section: ensemble members and how each one trains.

``training.defaults`` is merged (deeply) into every member before validation, so a
member lists only what makes it different; errors name ``training.members[i].key``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from pydantic import Field, field_validator, model_validator

from minseg.errors import InputError
from minseg.config.base import Name, Seed, StrictModel
from minseg.io.config import Uri
from minseg.data.config import AugmentSettings
from minseg.enums import (
    PER_CLASS_METRICS, SCORE_METRICS, ClassWeighting, InitNormalization, InitPart, LossName, OptimizerName,
    Precision, ScheduleName, ScheduleSpan, WEIGHT_SUFFIXES, WeightFormat, WeightLayout)


class StageSettings(StrictModel):
    epochs: int = Field(ge=1)
    batch_size: int = Field(16, ge=1, description="global batch (split across the member's workers)")
    freeze_encoder: bool = False
    lr: float | None = Field(None, gt=0, description="default: optimizer.lr")


class OptimizerSettings(StrictModel):
    name: OptimizerName = OptimizerName.ADAM
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    eps: float = Field(1e-8, gt=0, description="Adam/AdamW only (the microplastic paper, Keras: 1e-7)")


class ScheduleSettings(StrictModel):
    name: ScheduleName = ScheduleName.COSINE
    min_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(0, ge=0)
    step_epochs: int = Field(30, ge=1)
    step_steps: int | None = Field(None, ge=1, description="step schedule: decay every this many optimizer steps "
                                                           "instead of every step_epochs (the microplastic paper: 800)")
    gamma: float = Field(0.6, gt=0, le=1)
    span: ScheduleSpan = Field(
        ScheduleSpan.STAGE,
        description="stage: each stage restarts the schedule with a fresh optimizer; run: one schedule over all "
                    "epochs of all stages, one optimizer whose newly trainable parameters join at unfreezing",
    )


class LossSettings(StrictModel):
    name: LossName = LossName.CE
    class_weights: list[float] | ClassWeighting | None = Field(
        None, description="one weight per class, or computed from the training split's class pixel counts: "
                          "inverse_sqrt_frequency | median_frequency (minseg.losses.balanced_class_weights)")
    dice_weight: float = Field(1.0, ge=0)
    focal_weight: float = Field(1.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)
    focal_alpha: float | list[float] | None = None
    beta: float = Field(0.4, ge=0, le=1, description="self-distillation weight (MFAF)")

    @field_validator("class_weights", mode="before")
    @classmethod
    def _weights_or_weighting(cls, value):
        """One message for a wrong value (not one per branch of the union)."""
        if value is None or isinstance(value, ClassWeighting):
            return value
        if isinstance(value, str):
            if value not in ClassWeighting.choices():
                raise ValueError(f"{value!r} is not a weighting; give {' or '.join(ClassWeighting.choices())}, or "
                                 "a list of one non-negative weight per class")
            return ClassWeighting(value)
        if isinstance(value, (list, tuple)):
            if not value or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in value):
                raise ValueError("a list of class weights needs one non-negative number per class, got "
                                 f"{list(value)!r}")
            if not any(w > 0 for w in value):  # every pixel weighs 0: the loss is 0 and nothing is learned
                raise ValueError(f"class weights {list(value)!r} are all 0: the loss would be 0 and the member "
                                 "would learn nothing; give at least one class a weight above 0")
            return [float(w) for w in value]
        raise ValueError(f"expected a list of one weight per class or {' or '.join(ClassWeighting.choices())}, got "
                         f"{value!r}")


class ScalingSettings(StrictModel):
    workers: int = Field(1, ge=1, description="data-parallel (DDP) workers for this member")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0, description="at most 1; fractional allowed (several members per GPU)")
    sync_batchnorm: bool = Field(False, description="BatchNorm statistics over every worker's batch (SyncBatchNorm; "
                                                    "GPUs only): with many workers each normalises a few tiles")

    @field_validator("gpus_per_worker")
    @classmethod
    def _at_most_one(cls, value: float) -> float:
        if value > 1:  # the loop trains on ray.train.torch.get_device(): the first of a worker's GPUs
            raise ValueError(f"{value:g}: a worker trains on one GPU, the others would sit idle; for more GPUs per "
                             "member give workers: N (data-parallel) with gpus_per_worker: 1")
        return value

    @model_validator(mode="after")
    def _one_gpu_per_rank(self) -> "ScalingSettings":
        # NCCL refuses two ranks of one process group on one GPU ("Duplicate GPU detected"), and Ray packs
        # fractional shares of one placement group onto the same GPU
        if self.workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ValueError(f"gpus_per_worker {self.gpus_per_worker:g} with {self.workers} workers: the data-parallel "
                             "workers of one member need a GPU each (Ray could place two on one GPU, which NCCL "
                             "refuses); give gpus_per_worker: 1, or workers: 1 to share GPUs between members")
        if self.sync_batchnorm and not self.gpus_per_worker:  # torch's SyncBatchNorm refuses CPU tensors
            raise ValueError("sync_batchnorm needs GPU workers (gpus_per_worker: 1): torch synchronises BatchNorm "
                             "statistics between GPUs only")
        return self


class BaggingSettings(StrictModel):
    """Each member trained on its own sample of the training data (bagging: Breiman, "Bagging predictors",
    Machine Learning 24, 1996), drawn by the member's seed; units are source images (windows for prospectivity)."""

    fraction: float = Field(1.0, gt=0, le=1, description="units drawn, as a share of the training units")
    replacement: bool = Field(True, description="true: a bootstrap sample (a unit drawn twice trains twice an "
                                                "epoch); false: a subsample without repeats")


class InitSettings(StrictModel):
    """Pretrained weights a member starts from (``minseg.models.pretrained``)."""

    uri: Uri = Field(description="path or s3:// URI of a .pt/.pth/.bin/.ckpt or .safetensors file")
    part: InitPart = Field(InitPart.ENCODER, description="encoder, or the whole model where names and shapes fit")
    layout: WeightLayout = Field(WeightLayout.AUTO, description="the file's tensor names (auto: the best fit)")
    prefix: str = Field("", description="stripped from the file's names first, e.g. 'backbone.'")
    min_encoder_share: float = Field(0.9, ge=0, le=1, description="refuse the file below this share of encoder tensors")
    normalization: InitNormalization = Field(
        InitNormalization.AUTO, description="auto: the weights' statistics (ImageNet) for image channels, else the data's")

    @field_validator("uri")
    @classmethod
    def _known_format(cls, uri: str) -> str:
        if WeightFormat.of(uri) is None:
            raise ValueError(f"{uri!r}: weights must be {WEIGHT_SUFFIXES}")
        return uri


class MemberSettings(StrictModel):
    name: Name
    model: str
    model_options: dict[str, Any] = Field(default_factory=dict)
    loss: LossSettings = LossSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    stages: list[StageSettings] = Field(min_length=1)
    init: InitSettings | None = Field(None, description="pretrained weights to start from (default: random)")
    scaling: ScalingSettings = ScalingSettings()
    validate_every: int = Field(1, ge=1, description="epochs between validation passes")
    grad_clip_norm: float | None = Field(None, gt=0)
    precision: Precision = Precision.AUTO
    checkpoint_metric: str = Field("miou", description="e.g. miou, mean_f1, iou:gangue, accuracy, val_loss")
    checkpoint_mode: str = Field(None, pattern="^(max|min)$",  # type: ignore[assignment]  # set before validation
                                 description="max or min; default: min for a loss (val_loss), max for a score")
    max_failures: int = Field(1, ge=0, description="worker-failure restarts before the member fails")
    seed: Seed | None = None
    augmentation: AugmentSettings | None = Field(
        None, description="this member's training augmentation: the keys it sets replace data.augmentation's, for "
        "this member (members that see other views of the tiles may make less alike errors; measured on LumenStone "
        "Cu-Ni in docs/recipes/lumenstone-assemblages.md)")
    bagging: BaggingSettings | None = Field(
        None, description="train this member on its own random sample of the training images (or windows); "
                          "default: all of them")

    def training_seed(self, run_seed: int) -> int:
        """The seed this member trains with: its own, or the run's (``run.seed``) when it names none."""
        return self.seed if self.seed is not None else run_seed

    def training_augmentation(self, data: AugmentSettings) -> AugmentSettings:
        """The augmentation this member trains with: ``data`` (``data.augmentation``) with the keys this member's
        own ``augmentation`` sets replacing it (``{exposure: 0.2}`` keeps the data's mode)."""
        if self.augmentation is None:
            return data
        return data.model_copy(update={key: getattr(self.augmentation, key)
                                       for key in self.augmentation.model_fields_set})

    @field_validator("model_options")
    @classmethod
    def _no_input_channels(cls, options: dict[str, Any]) -> dict[str, Any]:
        if "in_channels" in options:  # one value from the data to every member, checkpoint and manifest
            raise ValueError("in_channels is set by the data, not per member: for images, declare the images of a "
                             "scene as data.sources[].channels (e.g. ppl + xpl: 6 channels; mode grey: 1); "
                             "prospectivity members read the evidence channels")
        # every other number of a config is refused infinite or NaN by its type; these reach the model as given
        for name, value in options.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"{name}: {value!r} is not a finite number")
        return options

    @model_validator(mode="before")
    @classmethod
    def _checkpoint_mode_follows_the_metric(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("checkpoint_mode") is None:
            metric = str(values.get("checkpoint_metric", "miou"))
            values = {**values, "checkpoint_mode": "min" if metric.endswith("loss") else "max"}
        return values

    @model_validator(mode="after")
    def _checkpoint_mode_fits_the_metric(self) -> "MemberSettings":
        metric, mode = self.checkpoint_metric, self.checkpoint_mode
        score = metric in SCORE_METRICS or metric.partition(":")[0] in PER_CLASS_METRICS and ":" in metric
        if (metric.endswith("loss") and mode == "max") or (score and mode == "min"):
            better = "falls" if mode == "max" else "rises"
            raise ValueError(f"checkpoint_mode {mode} would keep the worst epoch: {metric} {better} as the model "
                             "improves (leave checkpoint_mode out: min for a loss, max for a score)")
        return self

    @model_validator(mode="after")
    def _batches_split_evenly(self) -> "MemberSettings":
        for index, stage in enumerate(self.stages):
            if stage.batch_size % self.scaling.workers:
                raise ValueError(
                    f"stages[{index}].batch_size {stage.batch_size} must be divisible by scaling.workers "
                    f"{self.scaling.workers}"
                )
        if self.schedule.span is ScheduleSpan.RUN:
            staged = [i for i, stage in enumerate(self.stages) if stage.lr is not None]
            if staged:
                raise ValueError(f"stages[{staged[0]}].lr cannot be set with schedule.span 'run' (one schedule "
                                 "from optimizer.lr over all stages)")
        return self

    @property
    def total_epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def class_weights(self, class_counts: list[int] | None) -> list[float] | None:
        """The loss weights per class: as configured, or computed from the training data's counts per class
        (``loss.class_weights: inverse_sqrt_frequency | median_frequency``; ``minseg.losses.balanced_class_weights``).
        Raises InputError when they are asked for but the training source gives no counts."""
        weights = self.loss.class_weights
        if not isinstance(weights, ClassWeighting):
            return weights
        if class_counts is None:
            raise InputError(f"member {self.name!r}: loss.class_weights {weights} needs the training data's counts "
                             "per class, which this source does not give; list one weight per class instead")
        from minseg.losses import balanced_class_weights  # torch: only where a loss is built

        return balanced_class_weights(weights, class_counts)


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "model_options":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_member_defaults(values: Any) -> Any:
    """A training section's values with ``defaults`` merged into every member (a member's own values win); other
    values as they are (the schema says what is wrong with them)."""
    if isinstance(values, dict) and isinstance(values.get("members"), list):
        defaults = values.get("defaults") or {}
        if not isinstance(defaults, dict):
            return values
        values = dict(values)
        values["members"] = [
            _deep_merge(defaults, member) if isinstance(member, dict) else member for member in values["members"]
        ]
    return values


def repeated_member_names(names: list[str]) -> str | None:
    """Why these member names cannot name one run's members (a name given twice, or in two cases: each names a
    folder, one folder where file names ignore case, as on macOS and Windows), or None."""
    spellings: dict[str, list[str]] = {}
    for name in names:
        spellings.setdefault(name.casefold(), []).append(name)
    repeated = sorted(" / ".join(dict.fromkeys(group)) for group in spellings.values() if len(group) > 1)
    return (f"member names must be unique (whatever their case), repeated: {', '.join(repeated)}" if repeated
            else None)


class TrainingSettings(StrictModel):
    defaults: dict[str, Any] = Field(default_factory=dict, description="merged into every member")
    members: list[MemberSettings] = Field(min_length=1)
    max_concurrent: int | None = Field(None, ge=1, description="trials at once (a member per fold); default: as "
                                       "many as resources allow")
    check_resources: bool = Field(True, description="refuse members the cluster could never hold (off for autoscaling)")

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, values: Any) -> Any:
        return merge_member_defaults(values)

    @field_validator("members")
    @classmethod
    def _unique_names(cls, members: list[MemberSettings]) -> list[MemberSettings]:
        if problem := repeated_member_names([m.name for m in members]):
            raise ValueError(problem)
        return members

    def select(self, names: list[str] | None) -> list[MemberSettings]:
        if not names:
            return list(self.members)
        known = {m.name: m for m in self.members}
        missing = [n for n in names if n not in known]
        if missing:
            raise InputError(f"--members names unknown member(s) {', '.join(missing)}; known: {', '.join(known)}")
        return [known[n] for n in names]
