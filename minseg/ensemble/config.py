"""The ``evaluation`` config section: which members, how to rank, fuse and select."""

from __future__ import annotations

from pydantic import ConfigDict, Field, field_validator, model_validator

from minseg.config.base import Name, StrictModel
from minseg.data.config import TilingSettings
from minseg.enums import (TTA, Blend, FusionMode, MemberCheckpoint, Precision, ScoreSplit, SelectionRule,
                          metric_key_problem)
from minseg.io.config import Uri
from minseg.io.storage import absolute_uri, join_uri, output_folder


# on a GPU, the metrics that rank members and select the ensemble (and its time per image) come from the numerics
# segment runs: segment.precision's default is auto too
PRECISION = "autocast on GPUs (auto: bf16 where the GPU runs it natively, else fp16); CPUs run fp32"


class Tiling(StrictModel):
    """How an ensemble sees images: tile side and overlap (px), how overlapping tiles blend,
    and the scale images are resampled by first. Chosen at evaluation, recorded in the
    manifest, applied unchanged by segmentation: one value from config to stitcher."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile: int = Field(ge=16)
    overlap: int = Field(ge=0)
    blend: Blend = Blend.GAUSSIAN
    scale: float = Field(1.0, gt=0, le=4, description="images resampled by this first, as in training (data.tiling."
                         "scale, at most 4)")

    @model_validator(mode="after")
    def _overlap_fits(self) -> "Tiling":
        if self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than the tile ({self.tile})")
        return self

    def grid(self, height: int, width: int):
        """The ``sliding.TileGrid`` over a (height, width) image at this tiling."""
        from minseg.ensemble.sliding import TileGrid

        return TileGrid(height, width, self.tile, self.overlap, self.blend)


class SelectionSettings(StrictModel):
    rule: SelectionRule = Field(SelectionRule.BEST, description="best by key, best under a TPI budget, or one_se: "
                                "the most members among the candidates within one standard error of the best")
    tpi_budget_s: float | None = Field(None, gt=0, description="seconds per image (rule: tpi_budget)")
    bootstrap_draws: int = Field(1000, ge=100, description="image resamples of the selection split that estimate "
                                 "the standard errors (rule: one_se)")

    @model_validator(mode="after")
    def _budget(self) -> "SelectionSettings":
        if self.rule is SelectionRule.TPI_BUDGET and self.tpi_budget_s is None:
            raise ValueError("rule 'tpi_budget' needs tpi_budget_s")
        return self


class EvaluationSettings(StrictModel):
    run_uri: Uri | None = Field(None, description="training run to evaluate (default: run.output_uri/run.name)")
    members: list[str] | None = Field(None, description="default: every member that finished")
    baselines: list[str] | None = Field(None, description="members reported as baselines (default: vgg16_unet ones)")
    voters: list[str] | None = Field(
        None, min_length=1, description="members RUEL-k ensembles are built from (default: every evaluated member); the others "
                          "are scored and reported as single members, e.g. the paper's baselines b0/b1")
    checkpoint: MemberCheckpoint = Field(
        MemberCheckpoint.BEST, description="each member's best checkpoint (chosen on validation by the training's "
        "checkpoint_metric) or its last epoch (validation then ranks and selects on images that chose nothing)")
    rank_key: str = Field("miou", description="e.g. miou, iou:gangue (the paper), f1:pyrite, mean_f1")

    rank_on: str = Field("val", pattern="^(val|test)$", description="split the ranking (and learned weights) come from")
    k_min: int = Field(3, ge=1, description="smallest RUEL-k built (a plurality vote of two can only tie; 2 for soft "
                       "or learned fusion of two)")
    k_max: int | None = Field(None, ge=1, description="largest RUEL-k built (default: every voter)")
    modes: list[FusionMode] = Field(default_factory=lambda: list(FusionMode))
    learned_per_class: bool = False
    tta: TTA = TTA.NONE
    tile: int | None = Field(None, ge=16, description="inference tile in px (default: the training tile); fully "
                             "convolutional members can predict bigger tiles than they trained on, much faster")
    overlap: int | None = Field(None, ge=0, description="tile overlap in px (default: a quarter tile)")
    blend: Blend = Blend.GAUSSIAN
    selection: SelectionSettings = SelectionSettings()
    actors: int = Field(1, ge=1, description="inference actors (each holds every member)")
    cpus_per_actor: float = Field(0.5, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    precision: Precision = Field(Precision.AUTO, description=PRECISION)
    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    overlays: int = Field(3, ge=0, description="test images drawn as image / truth / best member / ensemble")
    weight_fit_pixels: int = Field(200_000, ge=1000, description="validation pixels sampled to fit learned weights")
    weight_fit_folds: int = Field(5, ge=2, description="learned candidates are scored on validation image by image "
                                  "with weights fitted on the other images' folds (cross-fitting), not on their own")
    name: Name = "ensemble"

    @field_validator("members", "baselines", "voters", "modes")
    @classmethod
    def _once_each(cls, value):
        """A name or mode listed twice would build a candidate twice (two ``RUEL-2-PV``): refused when read."""
        if value is not None and (twice := sorted({str(v) for v in value if value.count(v) > 1})):
            raise ValueError(f"lists {', '.join(twice)} more than once")
        return value

    @field_validator("rank_key")
    @classmethod
    def _a_metric(cls, key: str) -> str:
        # the class of a per-class key is checked against data.classes when the job starts (evaluate_ensemble)
        problem = metric_key_problem(key, [key.partition(":")[2]])
        if problem:
            raise ValueError(problem)
        return key

    @model_validator(mode="after")
    def _overlap_fits(self) -> "EvaluationSettings":
        if self.tile is not None and self.overlap is not None and self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than the tile ({self.tile})")
        return self

    @model_validator(mode="after")
    def _k_range(self) -> "EvaluationSettings":
        if self.k_max is not None and self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) is below k_min ({self.k_min}): no RUEL-k ensemble to build")
        return self

    def tiling(self, training: TilingSettings) -> Tiling:
        """The inference tiling: this section's tile / overlap / blend, defaulting to the training tile and a
        quarter-tile overlap; images rescaled as in training."""
        tile = self.tile or training.size
        return Tiling(tile=tile, overlap=self.overlap if self.overlap is not None else tile // 4, blend=self.blend,
                      scale=training.scale)

    def evaluated_run(self, run_uri: str) -> str:
        """The training run evaluated: ``run_uri`` (this config's run) unless ``evaluation.run_uri`` names another."""
        return absolute_uri(self.run_uri) if self.run_uri else run_uri

    def output_uri(self, run_uri: str) -> str:
        """Where an evaluation writes its reports and ``manifest.json``: ``<evaluated run>/evaluation/<name>``."""
        return join_uri(self.evaluated_run(run_uri), "evaluation", self.name)


class ScoreSettings(StrictModel):
    """``minseg score``: a selected ensemble (its manifest) on a labelled set, with the manifest's members, fusion,
    TTA, tiling, scale and normalisation unchanged; the data comes from the config's ``data`` section (its
    ``classes`` default to the manifest's)."""

    manifest: Uri | None = Field(None, description="ensemble manifest (path or s3://), from evaluate or select")
    split: ScoreSplit = Field(ScoreSplit.ALL, description="all: every labelled item of the data (an external test "
                              "set; data.split is not used); train / val / test: that split of data.split")
    name: Name = "score"
    output_uri: Uri | None = Field(None, description="default: <run.output_uri>/<run.name>/score/<name>")
    actors: int = Field(1, ge=1, description="inference actors (each holds every member)")
    cpus_per_actor: float = Field(0.5, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    precision: Precision = Field(Precision.AUTO, description=PRECISION)
    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    overlays: int = Field(3, ge=0, description="images drawn as image / truth / best member / ensemble")

    def output(self, run_uri: str) -> str:
        return output_folder(self.output_uri, run_uri, "score", self.name)
