"""The ``prospect`` config section: inputs (samples, deposits, evidence), the target grid, IDW, screening.

Every input names its columns and its CRS explicitly where the file cannot; everything is
brought onto one target grid (``grid``) in one working CRS.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from minseg.config.base import Name, StrictModel
from minseg.io.config import Uri
from minseg.io.crs import CrsText, GridCrsText
from minseg.enums import (
    Augmentation,
    BadValue,
    CategoricalEncoding,
    CensoredValue,
    DuplicateSites,
    EvidenceKind,
    Precision,
    Resampling,
    ScreeningLevel,
    UnknownLimit,
)
from minseg.errors import InputError, RunError
from minseg.io.storage import has_glob
from minseg.train.config import TrainingSettings


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (parsers put a row dump after it), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: what a prospect run writes in its output folder, beside its marker (``.minseg-prospect``): folders it replaces
#: whole, and the files at its top a glob over rasters or tables could match
PROSPECT_FOLDERS = ("inputs", "evidence", "screening", "cv")
PROSPECT_FILES = ("prospectivity.tif", "uncertainty.tif", "targets.csv", "rate_curves.csv")


def outside_prospect_output(matches: list[str], output: str | None, storage, pattern: str, key: str) -> list[str]:
    """A glob's ``matches`` less a prospect run's own outputs in ``output`` (when it holds the marker): its maps,
    evidence rasters and tables are never layers or samples of the next run of a pattern over a tree holding
    them (``data/**/*.tif`` with the output ``data/prospect`` took the last run's map as evidence). Said once
    (``prospect.glob_output_left_out``, naming ``key``)."""
    from minseg.io.storage import COMMAND_MARKERS, REDO, absolute_uri, join_uri
    from minseg.logs import get_logger, log_event

    if not output:
        return matches
    base = absolute_uri(output).rstrip("/") + "/"
    under = [uri for uri in matches if absolute_uri(uri).startswith(base)]
    if not under or not storage.exists(join_uri(output, COMMAND_MARKERS["prospect"])):
        return matches
    ours = {*PROSPECT_FOLDERS, "models", REDO}
    dropped = {uri for uri in under if (rest := absolute_uri(uri)[len(base):]).split("/", 1)[0] in ours
               or rest in PROSPECT_FILES}
    if dropped:
        log_event(get_logger("geo"), "prospect.glob_output_left_out", key=key, pattern=pattern, left_out=len(dropped),
                  output=output, reason="an earlier prospect run's outputs there are never its inputs")
    return [uri for uri in matches if uri not in dropped]


class ProspectInputError(InputError):
    """An input that cannot be used at all (missing file or column, unusable CRS): the job stops before work."""


class ProspectRunError(RunError):
    """The job ran but could not produce its maps (e.g. every member of an ensemble failed to train)."""


def _regular_expressions(where: dict[str, str]) -> dict[str, str]:
    for column, pattern in where.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{column}: {pattern!r} is not a regular expression ({exc})") from None
    return where


Where = Annotated[dict[str, str], AfterValidator(_regular_expressions)]
"""column -> a regular expression (case-insensitive, matched anywhere in the text) a feature's value must match."""


def _decimal_needs_separator(uri: str, delimiter: str | None, decimal: str) -> None:
    """Refuse a decimal comma in a file whose fields a comma separates: '1,5' would be two fields."""
    if decimal == "," and (delimiter or ("\t" if uri.lower().endswith((".tsv", ".tsv.gz")) else ",")) == ",":
        raise ValueError("decimal: ',' needs another field separator: set delimiter (';' as such files use)")


class SampleTable(StrictModel):
    """Geochemical samples: CSV / Parquet (x, y columns) or GeoPackage / shapefile / GeoJSON points."""

    uri: Uri = Field(description="file, glob or s3:// URI; several files are read as one table")
    layer: str | None = Field(None, description="layer of a GeoPackage (default: the first)")
    delimiter: str | None = Field(None, min_length=1, max_length=1, description="a CSV's field separator "
                                  "(';' where the decimal mark is a comma); default ',' (a tab for .tsv)")
    decimal: Literal[".", ","] = Field(".", description="a CSV's decimal mark: ',' reads '1,5' as 1.5 (values and "
                                       "coordinates; with delimiter ';' or a .tsv)")
    x: str | None = Field(None, description="x column; default: the point geometry")
    y: str | None = Field(None, description="y column; default: the point geometry")
    crs: CrsText | None = Field(None, description="CRS of x/y; required when the file records none (CSV, Parquet)")
    id: str | None = Field(None, description="sample id column, named in reports (default: the row number)")
    elements: dict[Name, str] = Field(description="element name (names its evidence file) -> its value column")
    flags: dict[str, str] = Field(default_factory=dict, description="element -> its qualifier column, e.g. "
                                  "Cu: Cu_511P_T ('<' marks a value below the detection limit)")
    censored_flags: list[str] = Field(["<"], description="qualifier values meaning 'below detection limit'; "
                                      "other qualifiers keep the value and are counted in the report")
    censored: CensoredValue = Field(CensoredValue.HALF_LIMIT, description="what a <DL value becomes")
    detection_limits: dict[str, float] = Field(
        default_factory=dict, description="element -> limit, for censored values that carry none (0 or empty)")
    unknown_limit: UnknownLimit = UnknownLimit.MIN_REPORTED
    nonpositive_censored: bool = Field(
        True, description="a value <= 0 is a lab's 'not detected' code: censored with an unknown limit "
                          "(false: reported as a bad value)")
    missing_markers: list[str] = Field(["", "na", "n/a", "nan", "null", "none", "-", "--"],
                                       description="cell texts meaning 'not analysed' (case-insensitive)")
    missing_values: list[float] = Field(default_factory=list, description="numbers a lab writes for 'not "
                                        "analysed' (e.g. -9999, -99): missing, each counted in the problems report")
    negative_is_limit: bool = Field(False, description="a negative value -X is the lab's way of writing '<X' "
                                    "(below the detection limit X); checked before nonpositive_censored")
    bad_values: BadValue = BadValue.MISSING
    duplicates: DuplicateSites = DuplicateSites.AVERAGE
    duplicate_tolerance_m: float = Field(0.0, ge=0, description="samples closer than this are one site")
    batch_rows: int = Field(65_536, ge=1, description="rows per Ray Data batch when cleaning")

    @model_validator(mode="after")
    def _columns(self):
        if (self.x is None) != (self.y is None):
            raise ValueError("give both x and y columns, or neither (point geometry)")
        _decimal_needs_separator(self.uri, self.delimiter, self.decimal)
        if not self.elements:
            raise ValueError("elements: name at least one element column")
        unknown = sorted(set(self.flags) - set(self.elements))
        if unknown:
            raise ValueError(f"flags for elements not in 'elements': {', '.join(unknown)}")
        unknown = sorted(set(self.detection_limits) - set(self.elements))
        if unknown:
            raise ValueError(f"detection_limits for elements not in 'elements': {', '.join(unknown)}")
        if any(limit <= 0 for limit in self.detection_limits.values()):
            raise ValueError("detection_limits must be positive")
        return self


class PointLayer(StrictModel):
    """Known deposits / occurrences: points in a vector file, or a CSV with x/y columns."""

    uri: Uri
    layer: str | None = None
    delimiter: str | None = Field(None, min_length=1, max_length=1, description="a CSV's field separator; default "
                                  "',' (a tab for .tsv)")
    decimal: Literal[".", ","] = Field(".", description="a CSV's decimal mark: ',' reads coordinates such as "
                                       "'380000,5' (with delimiter ';' or a .tsv)")
    x: str | None = None
    y: str | None = None
    crs: CrsText | None = Field(None, description="required when the file records none")
    id: str | None = Field(None, description="id column named in reports and target tables")
    where: Where = Field(default_factory=dict, description="column -> regular expression (case-insensitive) a "
                         "deposit must match, e.g. Commodity: 'Cu|Au'")

    @model_validator(mode="after")
    def _columns(self):
        if (self.x is None) != (self.y is None):
            raise ValueError("give both x and y columns, or neither (point geometry)")
        _decimal_needs_separator(self.uri, self.delimiter, self.decimal)
        return self


class CellLayer(StrictModel):
    """Known deposit (or barren) cells as a raster, e.g. a 0/1 GeoTIFF: every cell whose value is neither 0 nor
    nodata marks one. Each marked cell becomes a site at its centre, on any grid and CRS; sites falling in one
    cell of the target grid count once."""

    raster: Uri = Field(description="GeoTIFF (anything GDAL reads), local or s3://")
    band: int = Field(1, ge=1)
    crs: CrsText | None = Field(None, description="the raster's CRS when the file records none")
    nodata: float | None = Field(None, description="overrides the file's nodata value")


def _site_form(value: Any) -> str:
    """Points (a vector file or a CSV with x/y) unless the entry names a ``raster``."""
    if isinstance(value, dict):
        return "raster" if "raster" in value else "points"
    return "raster" if isinstance(value, CellLayer) else "points"


Sites = Annotated[Annotated[PointLayer, Tag("points")] | Annotated[CellLayer, Tag("raster")],
                  Discriminator(_site_form)]


class EvidenceRaster(StrictModel):
    """A gridded evidence layer (GeoTIFF, ESRI grid folder, anything GDAL reads); ``uri`` may be a glob of
    files, one layer each, named after the file (e.g. 40 interpolated element grids)."""

    uri: Uri
    name: Name | None = Field(None, description="required unless uri is a glob (the layers "
                             "are then named after their files)")
    kind: EvidenceKind = EvidenceKind.CONTINUOUS
    screen: bool = Field(False, description="screen this layer like an element (AUC / Z_AUC against the training "
                         "deposits on the grid; kept only if it passes, counted in max_elements): for element "
                         "grids. Off: the layer is always used (geology, distances)")
    crs: CrsText | None = Field(None, description="the raster's CRS when the file records none or one that "
                                "cannot be identified (e.g. an ArcInfo grid without a datum)")
    band: int = Field(1, ge=1)
    nodata: float | None = Field(None, description="overrides the file's nodata value")
    encoding: CategoricalEncoding = CategoricalEncoding.ONEHOT
    max_classes: int = Field(8, ge=1, description="one-hot: the most frequent classes in the study area; "
                                                 "the rest share an 'other' channel")
    resampling: Resampling | None = Field(None, description="default: nearest for categorical, bilinear else")

    @model_validator(mode="after")
    def _named(self):
        if self.name is None and not has_glob(self.uri):
            raise ValueError("name: required (only a glob uri names its layers after the files)")
        if self.name is not None and has_glob(self.uri):
            raise ValueError(f"name: a glob uri ({self.uri}) names its layers after the files; leave name out")
        if self.screen and self.kind is EvidenceKind.CATEGORICAL:
            raise ValueError("screen: only continuous layers are screened (a categorical layer is used as given)")
        return self


class LineLayer(StrictModel):
    """Lines (faults, contacts) turned into a distance raster."""

    uri: Uri
    name: Name = "fault_distance"
    layer: str | None = None
    crs: CrsText | None = None
    where: Where = Field(default_factory=dict, description="column -> regular expression (case-insensitive) a "
                         "line must match, e.g. Type: 'fault|shear'")
    max_distance_m: float | None = Field(None, gt=0, description="distances are clipped here (default: none)")


class GridSettings(StrictModel):
    """The target grid: everything is aligned to it. Nodes are pixel centres."""

    crs: GridCrsText = Field(description="working CRS, e.g. EPSG:3067; inputs in other CRSs are reprojected")
    cell_m: float | None = Field(None, gt=0, description="pixel size; default: the reference raster's")
    extent: tuple[float, float, float, float] | None = Field(
        None, description="xmin, ymin, xmax, ymax; default: the reference raster's, else the samples' bounds")
    reference: Uri | None = Field(None, description="a raster whose grid (or extent) to use")
    buffer_m: float | None = Field(None, ge=0, description="added around the samples' bounds when no extent is "
                                   "given; default half a cell (cells hold their top and left edges only: with 0 the "
                                   "southernmost samples fall on the grid's bottom edge, outside it)")
    min_layer_coverage: float = Field(0.5, ge=0, le=1, description="an evidence raster covering less of the study "
                                      "area than this share (after resampling onto the grid) is refused")
    max_cells: int = Field(50_000_000, ge=1, description="a larger grid is refused before anything is read: every "
                           "evidence layer takes 4-8 bytes a cell in memory (50 M cells: 200-400 MB a layer), and a "
                           "cell size typed in the wrong unit (1 for 1000) would exhaust the machine")

    @model_validator(mode="after")
    def _needs_cell(self):
        if self.cell_m is None and self.reference is None:
            raise ValueError("give cell_m, or a reference raster to take the pixel size from")
        if self.extent is not None:
            xmin, ymin, xmax, ymax = self.extent
            if not (xmax > xmin and ymax > ymin):
                raise ValueError(f"extent must be xmin, ymin, xmax, ymax with max > min, got {self.extent}")
            if self.cell_m is not None and (problem := self.size_problem(xmax - xmin, ymax - ymin, self.cell_m)):
                raise ValueError(problem)
        return self

    def size_problem(self, width_m: float, height_m: float, cell_m: float,
                     cell_height_m: float | None = None) -> str | None:
        """Why a grid over ``width_m`` x ``height_m`` in cells of ``cell_m`` (``cell_height_m`` tall, when not
        square) cannot be mapped, or None: one cell (a cell larger than the study area both ways), or more than
        ``max_cells``. A grid one cell wide (samples along a north-south traverse) is a map still."""
        rows, cols = grid_shape(width_m, height_m, cell_m, cell_height_m)
        if rows * cols == 1:
            return (f"cell_m: {cell_m:g} m gives a grid of {rows} x {cols} cells over {width_m:.0f} x {height_m:.0f} m: "
                    "a cell is larger than the study area")
        if rows * cols > self.max_cells:
            return (f"cell_m: {cell_m:g} m gives {rows} x {cols} = {rows * cols:,} cells over {width_m:.0f} x "
                    f"{height_m:.0f} m, more than max_cells ({self.max_cells:,}; each evidence layer would take "
                    f"{rows * cols * 8 / 2**30:.1f} GiB while it is built): give a larger cell_m or a smaller extent, "
                    "or raise max_cells")
        return None


def grid_shape(width_m: float, height_m: float, cell_m: float, cell_height_m: float | None = None) -> tuple[int, int]:
    """(rows, cols) of whole cells covering ``width_m`` x ``height_m`` (snapped outwards; at least one each)."""
    return (max(1, math.ceil(height_m / (cell_height_m or cell_m) - 1e-9)),
            max(1, math.ceil(width_m / cell_m - 1e-9)))


class IdwSettings(StrictModel):
    power: float = Field(2.0, gt=0)
    neighbours: int = Field(12, ge=1, description="k nearest samples (KD-tree)")
    radius_m: float | None = Field(None, gt=0, description="ignore samples farther than this; nodes with none "
                                                           "left are nodata")
    log_transform: bool = Field(True, description="interpolate log10 values (concentrations are lognormal)")
    block: int = Field(256, ge=16, description="grid block side per Ray task")


class ScreeningSettings(StrictModel):
    level: ScreeningLevel = Field(
        ScreeningLevel.GRID, description="samples: on the samples before interpolation (the MFAF paper), positives "
                                         "within sample_radius_m of a training deposit; grid: on the interpolated cells")
    sample_radius_m: float = Field(1000.0, gt=0, description="level samples: a sample this close to a training "
                                                             "deposit is a positive (metres of the working CRS)")
    critical_z: float = Field(2.58, gt=0, description="Z_AUC a kept element must reach (2.58: two-sided 99 %, "
                                                      "one-sided 99.5 %; one-sided 99 % is 2.33)")
    two_sided: bool = Field(False, description="also keep elements depleted around deposits (Z <= -critical)")
    max_elements: int | None = Field(8, ge=1, description="keep at most this many, by |Z_AUC| (paper: 8)")
    always: list[str] = Field(default_factory=list, description="elements kept whatever their Z_AUC")


class WindowSettings(StrictModel):
    size: int = Field(128, ge=8, description="window side in cells (paper: 128)")
    stride: int = Field(32, ge=1, description="lattice spacing of the negative windows")
    negative_buffer: int | None = Field(None, ge=0, description="no negative window centred within this many cells "
                                        "of a deposit (default: size // 2; at most size)")
    max_negatives: int | None = Field(2000, ge=1, description="a random subset of the lattice, to bound memory")

    @model_validator(mode="after")
    def _buffer(self):
        if self.negative_buffer is not None and self.negative_buffer > self.size:
            raise ValueError("negative_buffer must not exceed size (a larger buffer would use test deposits' "
                             "positions to pick training negatives)")
        return self

    @property
    def buffer(self) -> int:
        return self.size // 2 if self.negative_buffer is None else self.negative_buffer


class CrossValidationSettings(StrictModel):
    folds: int = Field(4, ge=2)
    block_cells: int | None = Field(None, ge=1, description="spatial block side (default: 2 x window size)")


class BalanceSettings(StrictModel):
    smote: bool = True
    positive_ratio: float = Field(1.0, gt=0, le=1, description="positives per negative after SMOTE")
    noise_variance: float = Field(0.01, ge=0, description="Gaussian noise of the extra copies (paper: 0.01)")
    noise_copies: int = Field(1, ge=0, description="noisy copies of every positive window")


class PredictionSettings(StrictModel):
    stride: int = Field(4, ge=1, description="one window per stride x stride cells of the map")
    tile: int = Field(64, ge=1, description="map cells per side of one actor task")
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    precision: Precision = Precision.AUTO
    member_scores: bool = Field(False, description="also score each member alone on every fold's held-out windows "
                                                   "(cv/member_scores.csv): to compare members, e.g. an ablation; read from "
                                                   "the fold ensemble's own pass, no extra one")


class TargetSettings(StrictModel):
    top_percent: float = Field(10.0, gt=0, le=100, description="share of the study area flagged as targets")
    min_cells: int = Field(4, ge=1, description="smaller connected regions are dropped")
    capture_percents: list[float] = Field([10.0, 20.0], description="report % of deposits in the top X % of area")


class ProspectSettings(StrictModel):
    name: Name = "prospectivity"
    output_uri: Uri | None = Field(None, description="default: <run.output_uri>/<run.name>/prospect/<name>")
    samples: SampleTable | None = Field(None, description="geochemical samples, interpolated by IDW; optional "
                                        "when rasters (e.g. element grids) carry the evidence")
    deposits: Sites = Field(description="known deposits: points, or a raster of deposit cells")
    barren: Sites | None = Field(None, description="known barren sites (points or a raster of cells): when given, "
                                 "they are the negatives (training windows and screening) instead of every other cell")
    rasters: list[EvidenceRaster] = Field(default_factory=list)
    lines: list[LineLayer] = Field(default_factory=list)
    grid: GridSettings
    idw: IdwSettings = IdwSettings()
    screening: ScreeningSettings = ScreeningSettings()
    windows: WindowSettings = WindowSettings()
    cv: CrossValidationSettings = CrossValidationSettings()
    balance: BalanceSettings = BalanceSettings()
    augmentation: Augmentation = Field(Augmentation.NONE, description="on-the-fly augmentation of training windows")
    training: TrainingSettings
    prediction: PredictionSettings = PredictionSettings()
    targets: TargetSettings = TargetSettings()

    @field_validator("rasters")
    @classmethod
    def _unique_names(cls, rasters):
        names = [r.name.casefold() for r in rasters if r.name is not None]  # each names a file: whatever the case
        duplicated = sorted({r.name for r in rasters if r.name is not None and names.count(r.name.casefold()) > 1})
        if duplicated:
            raise ValueError(f"evidence names must be unique: {', '.join(duplicated)}")
        return rasters

    @model_validator(mode="after")
    def _evidence(self):
        if self.samples is None:
            if not self.rasters and not self.lines:
                raise ValueError("no evidence: give samples, rasters or lines")
            if self.grid.extent is None and self.grid.reference is None:
                raise ValueError("grid: without samples the study area comes from grid.extent or grid.reference "
                                 "(e.g. reference: the uri of one of the rasters)")
            if self.screening.level is ScreeningLevel.SAMPLES:
                raise ValueError("screening.level 'samples' needs prospect.samples; rasters are screened on the "
                                 "grid (level: grid)")
        return self
