"""The ``evaluation`` config section: which members, how to rank, fuse and select."""

from __future__ import annotations

from pydantic import Field, model_validator

from minseg.config.base import StrictModel
from minseg.enums import TTA, Blend, FusionMode


class SelectionSettings(StrictModel):
    rule: str = Field("best", pattern="^(best|tpi_budget)$", description="best by key, or best under a TPI budget")
    tpi_budget_s: float | None = Field(None, gt=0, description="seconds per image (rule: tpi_budget)")

    @model_validator(mode="after")
    def _budget(self) -> "SelectionSettings":
        if self.rule == "tpi_budget" and self.tpi_budget_s is None:
            raise ValueError("rule 'tpi_budget' needs tpi_budget_s")
        return self


class EvaluationSettings(StrictModel):
    run_uri: str | None = Field(None, description="training run to evaluate (default: run.output_uri/run.name)")
    members: list[str] | None = Field(None, description="default: every member that finished")
    baselines: list[str] | None = Field(None, description="members reported as baselines (default: vgg16_unet ones)")
    rank_key: str = Field("miou", description="e.g. miou, iou:gangue (the paper), f1:pyrite, mean_f1")
    rank_on: str = Field("val", pattern="^(val|test)$", description="split the ranking (and learned weights) come from")
    k_min: int = Field(3, ge=1)
    k_max: int | None = Field(None, ge=1)
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
    batch_size: int = Field(8, ge=1, description="tiles per forward pass")
    overlays: int = Field(3, ge=0, description="test images drawn as image / truth / best member / ensemble")
    weight_fit_pixels: int = Field(200_000, ge=1000, description="validation pixels sampled to fit learned weights")
    name: str = Field("ensemble", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

    @model_validator(mode="after")
    def _overlap_fits(self) -> "EvaluationSettings":
        if self.tile is not None and self.overlap is not None and self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than the tile ({self.tile})")
        return self

    def tiling(self, training_tile: int) -> tuple[int, int]:
        """(tile, overlap) used for inference."""
        tile = self.tile or training_tile
        return tile, self.overlap if self.overlap is not None else tile // 4
