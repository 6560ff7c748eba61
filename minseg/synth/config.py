"""The ``synth`` config section: what the synthetic-data generators make."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from minseg.config.base import PositiveInt, Seed, StrictModel, TiffTileSize
from minseg.io.crs import GridCrsText, grid_scale_problem
from minseg.enums import ImageFormat, TiffCompression



# bounds a mistyped size meets before hours of rendering and a full disk: a whole-slide scan is at most ~200 000
# pixels a side, a section photograph ~20 000, a lithology raster of 10^8 cells is a country at 100 m
MAX_SLIDE_SIDE = 200_000
MAX_SECTION_SIDE = 20_000
MAX_SURVEY_CELLS = 100_000_000


class SectionsSynth(StrictModel):
    count: int = Field(8, gt=0, le=100_000)
    height: int = Field(512, gt=0, le=MAX_SECTION_SIDE)
    width: int = Field(512, gt=0, le=MAX_SECTION_SIDE)
    image_format: ImageFormat = ImageFormat.PNG
    grain_scale: float = Field(1.0, gt=0, description="multiplies every grain radius")


class SlideSynth(StrictModel):
    height: int = Field(8000, gt=0, le=MAX_SLIDE_SIDE)
    width: int = Field(8000, gt=0, le=MAX_SLIDE_SIDE)
    tile: TiffTileSize = 512
    compression: TiffCompression = TiffCompression.JPEG
    levels: PositiveInt | None = Field(None, description="pyramid levels; default until the top fits one tile; at "
                                       "most until the short side is 1 pixel")
    grain_scale: float = Field(1.0, gt=0)

    @field_validator("levels")
    @classmethod
    def _levels_fit(cls, levels: int | None, info: ValidationInfo) -> int | None:
        height, width = info.data.get("height"), info.data.get("width")
        if levels is None or height is None or width is None:
            return levels
        from minseg.io.tiff import max_pyramid_levels

        most = max_pyramid_levels(height, width)
        if levels > most:
            raise ValueError(f"a {height} x {width} slide has at most {most} pyramid levels (each halves both sides, "
                             "down to 1 pixel on the short side)")
        return levels


class SurveySynth(StrictModel):
    n_samples: PositiveInt = 2000
    width_m: float = Field(60_000.0, gt=0)
    height_m: float = Field(60_000.0, gt=0)
    cell_m: float = Field(250.0, gt=0, description="pixel size of the lithology raster")
    origin_x: float = 350_000.0
    origin_y: float = 7_450_000.0
    crs: GridCrsText = "EPSG:3067"
    n_deposits: PositiveInt = 12
    n_faults: PositiveInt = 25
    n_rock_units: int = Field(6, ge=1, le=255, description="rock units of the lithology raster (uint8, 0 is nodata)")
    censored_share: float = Field(0.3, ge=0, le=1, description="share of an element's lowest values reported as <DL")
    missing_share: float = Field(0.01, ge=0, le=1)

    @model_validator(mode="after")
    def _raster_size(self) -> "SurveySynth":
        cells = (self.width_m / self.cell_m) * (self.height_m / self.cell_m)
        if cells > MAX_SURVEY_CELLS:
            raise ValueError(f"a {self.width_m:g} x {self.height_m:g} m survey at cell_m {self.cell_m:g} is a "
                             f"lithology raster of {cells:.3g} cells, above {MAX_SURVEY_CELLS:.0e}: a larger cell_m "
                             "or a smaller area")
        return self

    @model_validator(mode="after")
    def _ground_metres(self) -> "SurveySynth":
        """The survey's metres must be ground metres at its centre, as ``prospect`` requires of its grid (a Web
        Mercator survey far from the equator would be written, then refused by the job it exists for)."""
        centre = (self.origin_x + self.width_m / 2, self.origin_y + self.height_m / 2)
        if problem := grid_scale_problem(self.crs, *centre):
            raise ValueError(f"crs {self.crs}: {problem}")
        return self


class SynthSettings(StrictModel):
    seed: Seed = 0
    sections: SectionsSynth | None = SectionsSynth()
    slide: SlideSynth | None = None
    survey: SurveySynth | None = Field(default_factory=SurveySynth)  # built when used: its CRS check runs PROJ

    @model_validator(mode="after")
    def _something_to_make(self) -> "SynthSettings":
        if self.sections is None and self.slide is None and self.survey is None:
            raise ValueError("nothing to synthesise: set at least one of sections, slide, survey")
        return self
