"""The prospectivity job: samples + evidence → screened stack → spatial-CV MFAF ensembles → maps and targets.

Data flows one way:

1. sample tables (Ray Data, optional) → clean samples; deposits (points or raster cells),
   barren sites (optional) and lines read; the target grid;
2. IDW of every usable element (Ray tasks over grid blocks); rasters (globs expanded) and
   distance-to-line layers on the grid;
3. windows (positives on deposits, negatives on a lattice or on the barren cells) →
   spatial folds (blocks larger than a window; training windows touching a test window
   dropped);
4. per fold, from its training side only: screening (AUC / Z_AUC) of the elements and of
   the raster layers marked ``screen``, normalisation
   statistics, SMOTE + noise; plus one "final" set from all deposits;
5. every member x every fold (and the final set) trained concurrently (a Ray Train run per
   trial, the training job's machinery);
6. each fold's ensemble maps the whole region (actor pool) and scores its test windows:
   prediction-rate curve, captures, window metrics; the final ensemble makes the published
   prospectivity and uncertainty GeoTIFFs, the success-rate curve and the ranked targets.

``summary.json`` is written last: a run is complete exactly when it exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from minseg.config.base import JobProblem
from minseg.config.schema import MinsegConfig, RunSettings
from minseg.data.classmap import ClassMap
from minseg.data.config import AugmentSettings
from minseg.enums import EvidenceKind, MemberStatus, ScreeningLevel, Task
from minseg.errors import InputError
from minseg.geo.config import (PROSPECT_FOLDERS, BalanceSettings, CellLayer, GridSettings, ProspectInputError,
                               ProspectRunError, ProspectSettings, ScreeningSettings)
from minseg.geo.crs import parse_crs
from minseg.geo.grid import target_grid, world_to_cell
from minseg.geo.idw import interpolate
from minseg.ensemble.runtime import MemberRef
from minseg.geo.predict import predict_map
from minseg.geo.rasters import (distance_to_lines, encode_categorical, expand_rasters, raster_geometry,
                                read_raster_on_grid)
from minseg.geo.samples import comma_hint, read_samples
from minseg.geo.screening import decide, format_table, grid_rows, sample_rows, weakly_kept
from minseg.geo.targets import (AreaRanks, area_ranks, capture, find_targets, plot_curves, plot_map, rate_curve,
                                targets_geojson, window_metrics)
from minseg.geo.vectors import Points, read_lines, read_sites
from minseg.geo.windows import (EvidenceStack, balance_windows, extract, footprint_mask, make_windows, spatial_folds,
                                thin_folds)
from minseg.io.geotiff import GridGeometry, write_geotiff
from minseg.io.runs import read_pointer, relocate_records, relocated
from minseg.io.storage import (REDO, Storage, absolute_uri, join_uri, refuse_other_command_outputs,
                               staging_folder)
from minseg.io.tables import csv_text
from minseg.logs import get_logger, log_event
from minseg.preflight import job_paths
from minseg.runtime import check_actor_pool, init_ray, task_options
from minseg.train.bagging import bagging_counts, bagging_seed
from minseg.train.config import MemberSettings
from minseg.train.ensemble import BAGGING_BUILD, MemberResult, TrialInputs

log = get_logger("geo.prospect")

CLASS_NAMES = ["no-ore", "ore"]
FINAL = None  # the trial key of the ensemble trained on every deposit


def output_uri(config: MinsegConfig) -> str:
    settings = config.prospect
    return absolute_uri(settings.output_uri) if settings.output_uri else join_uri(config.run.uri, "prospect",
                                                                                   settings.name)


@dataclass
class TrialData:
    """What one trial (a CV fold, or the final run) trains on and predicts with."""

    channels: list[str]
    padded: np.ndarray  # (rows + size, cols + size, C) normalised stack
    train_x: np.ndarray
    train_y: np.ndarray
    test_centres: np.ndarray
    test_labels: np.ndarray
    test_deposits: list[int]  # indices into the in-study deposit cells
    screening: list[dict]
    real_windows: int  # train_x[:real_windows] are the windows before balancing (SMOTE and noise copies follow)
    balance: dict = field(default_factory=dict)
    signature: str = ""  # what the trial trains on (``trial_signature``); checkpoints record it, --resume compares


class WindowSource:
    """Training data for ``fit_members``: balanced evidence windows per trial.

    A bagged member (``training.members[].bagging``) draws from a trial's real windows, before balancing, and its
    sample is balanced on its own (SMOTE fitted to its distinct windows, noise copies of its positives): drawn from
    the balanced windows, a deposit left out of the sample would still train through its noise copy and the SMOTE
    windows interpolated from it.
    """

    task = Task.CLASSIFICATION
    num_classes = 2
    class_names = list(CLASS_NAMES)

    def __init__(self, trials: dict, augmentation: str, balancing: BalanceSettings):
        # only what training needs travels to the trials (not the padded stacks kept for prediction)
        self.trials = {fold: (data.train_x, data.train_y, len(data.channels), data.real_windows)
                       for fold, data in trials.items()}
        self.signatures = {fold: data.signature for fold, data in trials.items()}
        self.augmentation, self.balancing = augmentation, balancing
        self.in_channels = max(channels for _, _, channels, _ in self.trials.values())
        self.tile_size = None  # prospect.windows.size is checked against each member before any input is read

    def trial_folds(self) -> list[int | None]:
        return [fold for fold in self.trials if fold is not None] + [FINAL]

    def member_data(self, fold: int | None, config: MinsegConfig, storage: Storage,
                    sample: dict[str, int] | None = None, shared: dict | None = None) -> tuple[dict, TrialInputs]:
        """(datasets, inputs) of one trial; ``sample``: window index (as text) -> times drawn (a bagged member)."""
        import ray

        train_x, train_y, channels, real = self.trials[fold]
        report = None
        if sample is not None:  # each drawn real window as often as drawn, the sample balanced on its own
            times = np.zeros(real, np.int64)
            for index, n in sample.items():
                times[int(index)] = n
            rng = np.random.default_rng(zlib.crc32(json.dumps(sample, sort_keys=True).encode()))  # resumes alike
            train_x, train_y, report = balance_windows(train_x[:real], train_y[:real], self.balancing, rng, times)
        rows = [{"image": x, "label": int(y)} for x, y in zip(train_x, train_y)]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 64, 64)))
        inputs = TrialInputs(
            task=Task.CLASSIFICATION, num_classes=2, in_channels=channels, ignore_index=255,
            classes=ClassMap.from_names(CLASS_NAMES).to_document(), classes_names=CLASS_NAMES,
            normalization={"mean": [0.0] * channels, "std": [1.0] * channels},  # windows come standardised
            augmentation=AugmentSettings(mode=self.augmentation),
            train_tiles=len(rows), has_val=False,  # no model selection on test windows: the last epoch is used
            shuffle_buffer=min(len(rows), 1024),
            class_counts=_window_counts(train_y),
            bagging_sample=sample, bagging_balance=report,
            bagging_build=self.bagging_build(sample is not None),
            data_signature=self.signatures[fold],
        )
        return {"train": dataset}, inputs

    def data_signature(self, fold: int | None) -> str:
        return self.signatures[fold]

    def bagging_build(self, bagged: bool) -> str | None:
        return BAGGING_BUILD if bagged and self.balancing.smote else None

    def shared_datasets(self, config: MinsegConfig, storage: Storage) -> dict:
        """Nothing: windows have no validation split (the last epoch is used), and each trial is one fold."""
        return {}

    def class_counts(self, fold: int | None = None) -> list[int]:
        """Training windows per class (barren, deposit) in the trial, after balancing."""
        return _window_counts(self.trials[fold][1])

    def bagging_sample(self, member: MemberSettings, fold: int | None, run_seed: int) -> dict[str, int]:
        """Real training windows (not SMOTE or noise copies) drawn for a bagged member on one trial: window index
        (as text, into the trial's windows before balancing) -> times drawn."""
        _, labels, _, real = self.trials[fold]
        counts = bagging_counts([{int(y)} for y in labels[:real]], member.bagging, bagging_seed(member, run_seed, fold),
                                CLASS_NAMES, "training windows")
        return {str(index): int(n) for index, n in enumerate(counts) if n}


def trial_signature(channels: list[str], stats: dict[str, list[float]], windows, size: int,
                    balance: BalanceSettings, seed: int) -> str:
    """A digest of what a trial's members train on: the channels (screening may keep other elements), their
    standardisation statistics (other samples or evidence values; 6 significant digits, so that a resume on another
    machine's arithmetic still matches), the training windows' centres, labels and size (other deposits, grid or
    folds), and how they were balanced (``prospect.balance``, and the seed its SMOTE and noise draw from: other
    windows added to the real ones; at their defaults, left out, so digests stay those recorded before them)."""
    document = {"channels": channels, "size": size, "mean": [f"{v:.6g}" for v in stats["mean"]],
                "std": [f"{v:.6g}" for v in stats["std"]]}
    if balance != BalanceSettings():
        document["balance"] = balance.model_dump(mode="json")
    if seed != RunSettings().seed:
        document["seed"] = seed
    digest = hashlib.sha256(json.dumps(document).encode())
    for column in (windows.rows, windows.cols, windows.labels):
        digest.update(np.ascontiguousarray(column, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def _window_counts(labels: np.ndarray) -> list[int]:
    """Windows per class (barren, deposit)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=2).tolist()


# ------------------------------------------------------------------ building the evidence


def _warn_thin_elements(samples, neighbours: int) -> None:
    """Warnings for elements the table barely informs: no usable value (left out of screening and evidence: an
    empty column, every cell a missing marker), fewer usable samples than the IDW's ``neighbours`` (a near-constant
    surface), or values written below 0 read as 'not detected' (``nonpositive_censored``: a lost sign reads the same).
    Each also in ``inputs/samples.json``."""
    report = samples.report["elements"]
    unusable = [element for element, counts in report.items() if not counts["usable"]]
    if unusable:
        log_event(log, "prospect.elements_unusable", logging.WARNING, elements=",".join(unusable),
                  reason="no usable value in any sample (every cell empty, a missing marker or bad)",
                  hint="left out of screening and of the evidence layers; see inputs/samples.json")
    sparse = {element: counts["usable"] for element, counts in report.items() if 0 < counts["usable"] < neighbours}
    if sparse:
        log_event(log, "prospect.elements_sparse", logging.WARNING,
                  elements=",".join(f"{element}:{count}" for element, count in sparse.items()),
                  reason=f"fewer usable samples than prospect.idw.neighbours ({neighbours})",
                  hint="their interpolated layers are nearly constant, from these few samples alone")
    negative = {element: counts["negative_censored"] for element, counts in report.items()
                if counts.get("negative_censored")}
    if negative:
        log_event(log, "prospect.negative_values", logging.WARNING,
                  elements=",".join(f"{element}:{count}" for element, count in negative.items()),
                  reason="values below 0 read as 'not detected' with an unknown limit "
                         "(prospect.samples.nonpositive_censored)",
                  hint="if -X means '<X', set prospect.samples.negative_is_limit: true; if the sign is a typing "
                       "error, correct the table")


def _element_grids(samples, geometry: GridGeometry, settings: ProspectSettings, task_cpus: float) -> dict:
    if samples is None:  # raster evidence only
        return {}
    usable = {e: v for e, v in samples.values.items() if np.isfinite(v).any()}
    if not usable:
        raise ProspectInputError("prospect.samples: no element has a usable value")
    return interpolate(samples.x, samples.y, usable, geometry, settings.idw, task_cpus)


def _layer_channels(settings: ProspectSettings, rasters, geometry: GridGeometry, working, storage: Storage,
                    study_hint, task_cpus: float) -> tuple[list[tuple[str, np.ndarray]], set[str], dict]:
    channels, categorical, reports = [], set(), {}
    for index, raster in rasters:  # (config index, layer): a glob's layers name their entry
        values, report = read_raster_on_grid(raster, index, geometry, working, storage, study_hint,
                                             settings.grid.min_layer_coverage)
        if raster.kind is EvidenceKind.CATEGORICAL:
            encoded, extra = encode_categorical(values, raster, study_hint)
            report.update(extra)
            for name, channel in encoded:
                channels.append((name, np.nan_to_num(channel, nan=0.0)))  # no mapped unit: every one-hot 0
                categorical.add(name)
        else:
            channels.append((raster.name, values.astype(np.float32)))
        reports[raster.name] = report
    for index, layer in enumerate(settings.lines):
        lines = read_lines(layer, working, storage, f"prospect.lines[{index}]")
        _refuse_lines_off_grid(lines, geometry, layer, f"prospect.lines[{index}]")
        distance = distance_to_lines(lines, geometry, layer, settings.idw.block, task_cpus)
        channels.append((layer.name, distance))
        reports[layer.name] = {"file": layer.uri, "lines": len(lines), "max_distance_m": float(np.nanmax(distance))}
    return channels, categorical, reports


def _refuse_lines_off_grid(lines: list[np.ndarray], geometry: GridGeometry, layer, key: str) -> None:
    """A line layer whose nearest line lies farther from the grid than the grid is wide (its diagonal) is in another
    CRS or place than it says: its distances (hundreds of km everywhere) would be evidence of nothing. A regional
    fault just beside the study area passes. Rasters off the grid are refused too (``read_raster_on_grid``)."""
    import shapely

    xmin, ymin, xmax, ymax = geometry.bounds
    diagonal = float(np.hypot(xmax - xmin, ymax - ymin))
    nearest = float(shapely.distance([shapely.LineString(line) for line in lines],
                                     shapely.box(xmin, ymin, xmax, ymax)).min())
    if nearest > diagonal:
        found = np.concatenate(lines)
        raise ProspectInputError(
            f"{key}: {layer.uri}: its nearest line lies {nearest / 1000:.0f} km from the target grid, farther than the "
            f"grid is wide ({diagonal / 1000:.0f} km; grid {xmin:.0f}, {ymin:.0f}, {xmax:.0f}, {ymax:.0f}; the lines "
            f"span {found[:, 0].min():.0f}, {found[:, 1].min():.0f}, {found[:, 0].max():.0f}, {found[:, 1].max():.0f} "
            f"in the grid's CRS): check its CRS ({key}.crs)")


def _check_names(settings: ProspectSettings, rasters: list) -> None:
    """Every evidence channel has its own name, whatever its case (each names a file, ``evidence/<name>.tif``: one
    file where names ignore case, as on macOS and Windows): sample elements, rasters (globs expanded) and lines.

    Raises ProspectInputError naming each clash and where both come from."""
    sources: dict[str, list[str]] = {}
    spellings: dict[str, list[str]] = {}

    def add(name: str, where: str) -> None:
        sources.setdefault(name.casefold(), []).append(where)
        spellings.setdefault(name.casefold(), []).append(name)

    for element in (settings.samples.elements if settings.samples else {}):
        add(element, "prospect.samples.elements")
    for index, raster in rasters:
        add(raster.name, f"prospect.rasters[{index}] ({raster.uri})")
    for index, layer in enumerate(settings.lines):
        add(layer.name, f"prospect.lines[{index}]")
    clashes = {" / ".join(dict.fromkeys(spellings[key])): where for key, where in sources.items() if len(where) > 1}
    if clashes:
        text = "; ".join(f"{name}: {' and '.join(where)}" for name, where in sorted(clashes.items()))
        raise ProspectInputError(f"evidence names must be unique across samples, rasters and lines: {text}; rename "
                                 "one (a raster's name, or its file for a glob)")


def member_problems(settings: ProspectSettings, configured: int | None = None) -> list[JobProblem]:
    """What refuses the configured members before any input is read (``minseg prospect`` stops on them;
    ``minseg config validate`` says them): a classification learner each, no augmentation of its own (windows are
    augmented by ``prospect.augmentation``), windows no smaller than its smallest input, then what training's
    preflight says of its model options, loss (class weights of the two classes) and checkpoint metric (classes
    no-ore / ore): ``check_members_without_data``, built on the meta device; a pretrained weights file is matched
    when training starts, once the channels are known. One problem per key and reason (a problem members share,
    once); [] when there is none. ``configured``: how many members the config lists, when ``settings`` holds only
    those that validated (``job_checks.invalid_config_problems``)."""
    from minseg.models import get_entry
    from minseg.train.ensemble import check_members_without_data

    problems, learners, too_small = [], [], {}
    for index, member in enumerate(settings.training.members):
        key = f"prospect.training.members[{index}]"
        try:
            entry = get_entry(member.model)
        except ValueError as exc:
            problems.append(JobProblem(f"{key}.model", str(exc)))
            continue
        if entry.task is not Task.CLASSIFICATION:
            problems.append(JobProblem(f"{key}.model", f"{member.model!r} is a {entry.task} learner; prospectivity "
                                                       "needs a classification learner (e.g. mfaf)"))
            continue
        learners.append(member)
        if member.augmentation is not None:
            problems.append(JobProblem(f"{key}.augmentation", "map windows are augmented by prospect.augmentation "
                                                              "(a mode), for every member"))
        if settings.windows.size < entry.input_spec.min_size:
            too_small.setdefault(entry.input_spec.min_size, []).append(member)
    for minimum, members in sorted(too_small.items()):
        named = ", ".join(f"{m.name!r} ({m.model})" for m in members)
        problems.append(JobProblem("prospect.windows.size", f"{settings.windows.size} is below the "
                                   f"{minimum}x{minimum} that member{'s' if len(members) > 1 else ''} {named} "
                                   f"need{'' if len(members) > 1 else 's'}"))
    if not learners:
        return problems
    # training's own check of a run's members, of the classification learners: its problems, under this key
    members = settings.training.model_copy(update={"members": learners})
    return problems + [replace(problem, key=f"prospect.{problem.key}" if problem.key else "")
                       for problem in check_members_without_data(
                           MinsegConfig.model_construct(training=members), warn=False,
                           configured=configured or len(settings.training.members), class_names=CLASS_NAMES)]


def _check_members(settings: ProspectSettings) -> None:
    """``member_problems``, raised.

    Raises:
        ProspectInputError: every problem, one per line."""
    problems = [str(problem) for problem in member_problems(settings)]
    if problems:
        raise ProspectInputError("\n  ".join(problems) if len(problems) == 1 else
                                 "the configured members cannot map these windows:\n  " + "\n  ".join(problems))


# ------------------------------------------------------------------ the phases


@dataclass
class Inputs:
    """Phase 1: clean samples (None: raster evidence only), the target grid, deposits (and barren sites) on it."""

    samples: Any
    geometry: GridGeometry
    deposits: Points
    d_rows: np.ndarray
    d_cols: np.ndarray
    inside: np.ndarray  # deposit on the grid
    outside: list[dict]
    rasters: list  # (config index, evidence raster), globs expanded
    barren: Points | None = None


@dataclass
class Evidence:
    """Phase 2: interpolated elements and layers on the grid, the study area, deposit cells in it."""

    grids: dict[str, np.ndarray]
    layers: list[tuple[str, np.ndarray]]
    layer_reports: dict
    stack: EvidenceStack
    study: np.ndarray
    in_study: np.ndarray  # per deposit
    deposit_cells: np.ndarray  # (n, 2) rows/cols of in-study deposits
    unique_cells: np.ndarray  # two deposits in one cell make one positive window
    deposit_xy: np.ndarray  # (n, 2) coordinates of the in-study deposits (rows of deposit_cells)
    all_deposit_xy: np.ndarray  # (m, 2) every deposit read, in the study area or not
    screened: dict[str, np.ndarray] = field(default_factory=dict)  # raster layers screened like elements
    barren_cells: np.ndarray | None = None  # (k, 2) unique in-study barren cells: the negatives, when given
    barren_xy: np.ndarray | None = None  # (k', 2) every barren site read (sample-level screening)
    barren_site_cells: np.ndarray | None = None  # (k', 2) their grid cells, -1 outside the grid


@dataclass
class TrialMaps:
    """Phase 6: what the fold ensembles scored (held-out ranks, window scores) and the final maps."""

    fold_ranks: list[AreaRanks]
    test_scores: list[np.ndarray]
    test_labels: list[np.ndarray]
    fold_rows: list[dict]
    member_rows: list[dict]  # prediction.member_scores: each member alone on each fold's held-out windows
    probability: np.ndarray
    uncertainty: np.ndarray
    final_members: int


@dataclass
class ProspectResult:
    """What ``map_prospectivity`` produced; ``document`` is ``summary.json`` as written (last: a run is
    complete exactly when it exists)."""

    name: str
    output: str
    metrics: dict
    kept_elements: list[str]
    channels: list[str]
    targets: int
    members: list[MemberResult]
    document: dict


def _one_per_cell(points: Points, geometry: GridGeometry) -> Points:
    """Sites from a raster's cells: those falling in one target cell count once (the first)."""
    rows, cols, inside = world_to_cell(geometry, points.x, points.y)
    key = np.where(inside, rows * geometry.cols + cols, -1 - np.arange(len(points)))
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(points), bool)
    keep[first] = True
    kept = points.subset(keep)
    kept.report["grid_cells"] = int((keep & inside).sum())
    return kept


def _refuse_stray_samples(samples, grid: GridSettings) -> None:
    """A grid taken from the samples' bounds: refuse samples far from every other one (a coordinate typed wrong, a
    0 / 0 placeholder, one row in another CRS), which would stretch the grid over country where nothing was sampled
    and interpolate evidence (and targets) there.

    Raises:
        ProspectInputError: a sample whose nearest other sample lies farther away than the survey is wide without
            it (the diagonal of the box holding every other sample). Surveys of several areas, or dense grids beside
            sparse regional samples, pass: their samples have neighbours within that width."""
    from scipy.spatial import cKDTree

    points = np.unique(np.column_stack([samples.x, samples.y]), axis=0)
    if len(points) < 5:
        return
    nearest = cKDTree(points).query(points, k=2)[0][:, 1]
    # each sample against the box of all the others (leave-one-out: the stray itself must not widen it)
    order = np.sort(points, axis=0)
    low = np.where(points == order[0], order[1], order[0])
    high = np.where(points == order[-1], order[-2], order[-1])
    widths = np.hypot(*(high - low).T)
    far = nearest > widths
    if not far.any():
        return
    width = float(np.median(widths))
    at = {(x, y): str(i) for i, x, y in zip(samples.ids, samples.x, samples.y)}
    named = [f"{at[(x, y)]} ({x:.0f}, {y:.0f})" for x, y in points[far][:10]]
    keep = points[~far]
    raise ProspectInputError(
        f"prospect.grid: no extent is given, so the grid would span the samples' bounds (plus buffer_m), but "
        f"{int(far.sum())} sample(s) lie farther from every other one than the survey is wide ({width:.0f} m): "
        f"{', '.join(named)}. They would stretch the grid over ground nobody sampled. Fix their coordinates or set "
        f"prospect.grid.extent (the other samples span E {keep[:, 0].min():.0f}-{keep[:, 0].max():.0f}, "
        f"N {keep[:, 1].min():.0f}-{keep[:, 1].max():.0f})")


def _samples_on_grid(samples, geometry: GridGeometry, storage: Storage, out: str) -> None:
    """Samples off the grid still inform interpolation near its edges; they are counted (``samples.json``
    ``outside_grid``) and listed (``inputs/samples_outside_grid.csv``).

    Raises:
        ProspectInputError: no sample on the grid (another CRS than declared, x and y swapped, another area)."""
    _, _, inside = world_to_cell(geometry, samples.x, samples.y)
    samples.report["outside_grid"] = int((~inside).sum())
    if not inside.any():
        x0, y0, x1, y1 = geometry.bounds
        raise ProspectInputError(
            f"prospect.samples: none of the {len(samples)} samples lies on the grid (EPSG:{geometry.epsg}, E "
            f"{x0:.0f}-{x1:.0f}, N {y0:.0f}-{y1:.0f}): they span E {samples.x.min():.0f}-{samples.x.max():.0f}, "
            f"N {samples.y.min():.0f}-{samples.y.max():.0f} once projected. Check the CRS the table records or "
            "prospect.samples.crs gives, which columns hold x and y (swapped?), and prospect.grid")
    if (~inside).any():
        rows = [{"sample": str(i), "x": float(x), "y": float(y)}
                for i, x, y, ok in zip(samples.ids, samples.x, samples.y, inside) if not ok]
        log_event(log, "prospect.samples_outside_grid", count=len(rows), of=len(samples),
                  ids=",".join(r["sample"] for r in rows[:20]))
        storage.write_text(join_uri(out, "inputs", "samples_outside_grid.csv"), csv_text(rows, ["sample", "x", "y"]))


def read_inputs(settings: ProspectSettings, working, storage: Storage, out: str, cpus: float,
                output: str | None = None) -> Inputs:
    """Sample tables (Ray Data) when given, the target grid (extent, reference raster or the samples' bounds), the
    deposits and barren sites (points or raster cells), the evidence rasters (globs expanded)."""
    samples, bounds = None, None
    if settings.samples is not None:
        samples = read_samples(settings.samples, working, storage, cpus, output=output)
        if settings.grid.extent is None and settings.grid.reference is None:
            _refuse_stray_samples(samples, settings.grid)
        if samples.problems:
            storage.write_text(join_uri(out, "inputs", "sample_problems.csv"),
                               csv_text(samples.problems, ["file", "row", "sample", "column", "value", "reason"]))
        log_event(log, "prospect.samples", logging.WARNING if samples.problems else logging.INFO, samples=len(samples),
                  problems=len(samples.problems), dropped=samples.report["rows_dropped"],
                  **({"hint": "each listed in inputs/sample_problems.csv" + comma_hint(samples.problems)}
                     if samples.problems else {}))
        _warn_thin_elements(samples, settings.idw.neighbours)
        bounds = (samples.x.min(), samples.y.min(), samples.x.max(), samples.y.max())
    rasters = expand_rasters(settings.rasters, storage, output)
    _check_names(settings, rasters)
    reference = raster_geometry(settings.grid.reference, storage, settings.grid.crs) if settings.grid.reference else None
    geometry = target_grid(settings.grid, bounds, reference)
    if samples is not None:
        _samples_on_grid(samples, geometry, storage, out)
        storage.write_json(join_uri(out, "inputs", "samples.json"), samples.report)
    deposits = read_sites(settings.deposits, working, storage, "prospect.deposits")
    if isinstance(settings.deposits, CellLayer):
        deposits = _one_per_cell(deposits, geometry)
    barren = None
    if settings.barren is not None:
        barren = read_sites(settings.barren, working, storage, "prospect.barren")
    d_rows, d_cols, inside = world_to_cell(geometry, deposits.x, deposits.y)
    outside = [{"deposit": str(i), "x": float(x), "y": float(y)}
               for i, x, y, ok in zip(deposits.ids, deposits.x, deposits.y, inside) if not ok]
    if outside:
        log_event(log, "prospect.deposits_outside_grid", count=len(outside),
                  ids=",".join(o["deposit"] for o in outside[:20]))
        storage.write_text(join_uri(out, "inputs", "deposits_outside_grid.csv"), csv_text(outside, ["deposit", "x", "y"]))
    return Inputs(samples, geometry, deposits, d_rows, d_cols, inside, outside, rasters, barren)


def build_evidence(settings: ProspectSettings, inputs: Inputs, working, storage: Storage, out: str,
                   cpus: float) -> Evidence:
    """IDW of every usable element, rasters and distance-to-line layers on the grid; the study area."""
    geometry = inputs.geometry
    grids = _element_grids(inputs.samples, geometry, settings, cpus)
    # without samples the study area is the grid (extent or reference), narrowed by where the layers have values
    study = (np.logical_and.reduce([np.isfinite(g) for g in grids.values()]) if grids
             else np.ones((geometry.rows, geometry.cols), bool))
    for element, grid in grids.items():
        write_geotiff(join_uri(out, "evidence", f"{element}.tif"), grid, geometry, nodata=float("nan"),
                      description=json.dumps({"element": element, "log10": settings.idw.log_transform}), storage=storage)
    layers, categorical, layer_reports = _layer_channels(settings, inputs.rasters, geometry, working, storage,
                                                         study.copy(), cpus)
    for name, channel in layers:
        study &= np.isfinite(channel) | (name in categorical)
    if not study.any():
        raise ProspectInputError("no cell of the target grid has a value in every evidence layer; check the "
                                 "layers' extents and CRSs (summary in the prospect.layer_resampled log lines)")
    names = list(grids) + [n for n, _ in layers]
    data = np.stack([grids[e] for e in grids] + [c for _, c in layers]).astype(np.float32)
    stack = EvidenceStack(names, data, study, categorical)
    screened_names = {r.name for _, r in inputs.rasters if r.screen}
    screened = {name: channel for name, channel in layers if name in screened_names}
    inside, d_rows, d_cols = inputs.inside, inputs.d_rows, inputs.d_cols
    in_study = inside.copy()
    in_study[inside] = study[d_rows[inside], d_cols[inside]]
    deposit_cells = np.column_stack([d_rows[in_study], d_cols[in_study]])
    cells = len(np.unique(deposit_cells, axis=0))  # several deposits in one cell make one positive window
    if cells < settings.cv.folds:  # said here: the folds would only say "too few blocks hold deposits"
        filtered = inputs.deposits.report.get("filtered_out")
        raise ProspectInputError(
            f"prospect.deposits: {len(inside)} deposit(s) read"
            f"{f' ({filtered} more left out by prospect.deposits.where)' if filtered else ''}, {int(inside.sum())} "
            f"on the grid, {int(in_study.sum())} in the study area (cells with a value in every evidence layer), in "
            f"{cells} cell(s); the {settings.cv.folds} spatial folds (prospect.cv.folds) need a deposit cell each. "
            "Check the deposits' CRS and where filter, the grid extent"
            f"{' (deposits off it: inputs/deposits_outside_grid.csv)' if inputs.outside else ''} and the layers' "
            "coverage")
    deposit_xy = np.column_stack([np.asarray(inputs.deposits.x)[in_study], np.asarray(inputs.deposits.y)[in_study]])
    every = np.column_stack([np.asarray(inputs.deposits.x, np.float64), np.asarray(inputs.deposits.y, np.float64)])
    barren_cells = barren_xy = site_cells = None
    if inputs.barren is not None:
        barren_cells, barren_xy, site_cells = _barren_cells(inputs.barren, geometry, study, deposit_cells)
    return Evidence(grids, layers, layer_reports, stack, study, in_study, deposit_cells,
                    np.unique(deposit_cells, axis=0), deposit_xy, every, screened, barren_cells, barren_xy,
                    site_cells)


def _barren_cells(barren: Points, geometry: GridGeometry, study: np.ndarray,
                  deposit_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique in-study barren cells that hold no deposit, every barren site's coordinates, their cells with -1
    outside the grid); what was left out is logged."""
    rows, cols, inside = world_to_cell(geometry, barren.x, barren.y)
    cells = np.unique(np.column_stack([rows[inside], cols[inside]]).astype(np.int64).reshape(-1, 2), axis=0)
    usable = study[cells[:, 0], cells[:, 1]]
    on_deposit = np.zeros(study.shape, bool)
    on_deposit[tuple(np.asarray(deposit_cells, np.int64).reshape(-1, 2).T)] = True
    conflicting = usable & on_deposit[cells[:, 0], cells[:, 1]]
    kept = cells[usable & ~conflicting]
    log_event(log, "prospect.barren", sites=len(barren), outside_grid=int((~inside).sum()), cells=len(cells),
              outside_study=int((~usable).sum()), on_a_deposit_cell=int(conflicting.sum()), negatives=len(kept))
    if not len(kept):
        raise ProspectInputError("prospect.barren: no barren site lies in the study area away from the deposits; "
                                 "check its extent and CRS, or leave barren out (negatives then come from a lattice)")
    site_cells = np.where(inside[:, None], np.column_stack([rows, cols]), -1).astype(np.int64)
    return kept, np.column_stack([barren.x, barren.y]).astype(np.float64), site_cells


def screen(settings: ScreeningSettings, evidence: Evidence, samples, training_cells: np.ndarray,
           negative_cells: np.ndarray | None, held_out: np.ndarray | None = None,
           test_cells: np.ndarray | None = None) -> list[dict]:
    """Element (and screened-layer) screening of one trial, on its training deposits only: elements at
    ``screening.level``, raster layers marked ``screen`` on the grid; one decision over all of them.
    ``negative_cells``: the trial's barren cells (training side), the only negatives when given; ``held_out``:
    (rows, cols) bool, the cells under the trial's test windows (barren sites there are no negatives);
    ``test_cells``: (k, 2) the cells of the deposits the trial is tested on (samples near them stay negatives: it
    cannot know them; a deposit merely near a test window, without one of its own, it knows)."""
    training = {tuple(c) for c in np.asarray(training_cells).reshape(-1, 2).tolist()}
    is_training = np.array([tuple(c) in training for c in evidence.deposit_cells.tolist()], bool)
    tests = {tuple(c) for c in np.asarray(test_cells if test_cells is not None else []).reshape(-1, 2).tolist()}
    tested = np.array([tuple(c) in tests for c in evidence.deposit_cells.tolist()], bool)
    # in-study deposits the trial knows without training on them: no negatives at either level
    known_cells = evidence.deposit_cells[~is_training & ~tested] if len(evidence.deposit_cells) else None
    if settings.level is ScreeningLevel.GRID or samples is None:
        rows = grid_rows(evidence.grids, training_cells, negative_cells, known_cells=known_cells)
    else:
        values = {element: samples.values[element] for element in evidence.grids}
        training_xy = evidence.deposit_xy[is_training]
        in_study = {tuple(p) for p in evidence.deposit_xy.tolist()}
        # samples near a deposit the trial knows (on its training side, or outside the study area) are no
        # negatives; those near its held-out deposits stay negatives: a blind screening cannot know where they are
        others = np.array(evidence.deposit_xy[~is_training & ~tested].tolist()
                          + [p for p in evidence.all_deposit_xy.tolist() if tuple(p) not in in_study],
                          np.float64).reshape(-1, 2)
        barren_xy = evidence.barren_xy
        if barren_xy is not None and held_out is not None:
            cells = evidence.barren_site_cells
            inside = cells[:, 0] >= 0
            under_test = np.zeros(len(cells), bool)
            under_test[inside] = held_out[cells[inside, 0], cells[inside, 1]]
            barren_xy = barren_xy[~under_test]
        rows = sample_rows(values, np.column_stack([samples.x, samples.y]), training_xy, others,
                           settings.sample_radius_m, barren_xy)
    rows += grid_rows(evidence.screened, training_cells, negative_cells, level="raster", known_cells=known_cells)
    return decide(rows, settings)


def prepare_trials(settings: ProspectSettings, evidence: Evidence, samples, storage: Storage, out: str, seed: int):
    """Windows and spatial folds; per fold (and the final run on every deposit), from its training side
    only: element screening, normalisation statistics, windows, SMOTE + noise (drawn from ``seed``: ``run.seed``).
    Returns (windows, folds, trials)."""
    rng = np.random.default_rng(seed)
    size, study, unique_cells = settings.windows.size, evidence.study, evidence.unique_cells
    block = settings.cv.block_cells or 2 * size
    windows = make_windows(study, unique_cells, size, settings.windows.stride, block, settings.windows.buffer,
                           settings.windows.max_negatives, rng, evidence.barren_cells)
    folds = spatial_folds(windows, settings.cv.folds, size, study.shape, block)
    trials: dict[int | None, TrialData] = {}
    for fold in folds + [FINAL]:
        train = windows if fold is None else fold.train
        test_centres = (np.zeros((0, 2), np.int64) if fold is None
                        else np.column_stack([fold.test.rows, fold.test.cols]))
        train_cells = np.unique(train.deposit[train.labels == 1])
        test_deposits = [] if fold is None else sorted(set(fold.test.deposit[fold.test.labels == 1].tolist()))
        held_out = footprint_mask(study.shape, test_centres[:, 0], test_centres[:, 1], size)
        training_cells = study & ~held_out
        barren = evidence.barren_cells
        if barren is not None:  # the held-out side's barren cells are no training negatives for screening
            barren = barren[training_cells[barren[:, 0], barren[:, 1]]]
        screening = screen(settings.screening, evidence, samples, unique_cells[train_cells], barren, held_out,
                           unique_cells[test_deposits])
        kept = [r["element"] for r in screening if r["kept"]]
        if not kept and screening:
            log_event(log, "prospect.no_element_kept", fold=None if fold is None else fold.index + 1)
        channels = kept + [n for n, _ in evidence.layers if n not in evidence.screened]
        if not channels:
            raise ProspectInputError("no evidence channel left: nothing passed screening and no unscreened raster or "
                                     "line layer is configured (lower prospect.screening.critical_z or add layers)")
        subset = evidence.stack.subset(channels)
        stats = subset.statistics(training_cells)
        padded = subset.normalised(stats, size // 2)
        train_x = extract(padded, train, size)
        train_y = train.labels
        if fold is not None and train_y.sum() == 0:
            raise ProspectInputError(
                f"prospect.cv: fold {fold.index + 1} has no training deposit left once windows overlapping its test "
                "windows are dropped; use fewer folds (prospect.cv.folds) or smaller windows")
        real_windows = len(train_y)  # balance() appends: the first real_windows stay the real ones
        train_x, train_y, report = balance_windows(train_x, train_y, settings.balance, rng)
        trials[None if fold is None else fold.index] = TrialData(
            channels=channels, padded=padded, train_x=train_x, train_y=train_y, test_centres=test_centres,
            test_labels=np.zeros(0, np.int64) if fold is None else fold.test.labels, test_deposits=test_deposits,
            screening=screening, real_windows=real_windows, balance=report,
            signature=trial_signature(channels, stats, train, size, settings.balance, seed))
        key = "final" if fold is None else f"fold{fold.index + 1}"
        storage.write_text(join_uri(out, "screening" if fold is None else f"cv/{key}/screening", "screening.csv"),
                           csv_text(screening, ["element", "auc", "z_auc", "rank_z", "positives", "negatives", "level",
                                                "kept", "weak", "reason"]))
        if weak := weakly_kept(screening):
            log_event(log, "prospect.screening_weak", logging.WARNING, trial=key,
                      kept_with_positives=",".join(f"{r['element']}:{r['positives']}" for r in weak),
                      hint=f"Z_AUC passed {settings.screening.critical_z} where the rank test does not: Eq. 3 "
                           "overstates Z with few positives (rank_z in screening.csv)")
        log_event(log, "prospect.trial_ready", trial=key, channels=len(channels), train_windows=len(train_x),
                  positives=int(train_y.sum()), test_windows=len(test_centres), test_deposits=len(test_deposits))
    return windows, folds, trials


def train_trials(config: MinsegConfig, trials: dict, storage: Storage, models_uri: str, resume: str | None,
                 published: str | None = None) -> list[MemberResult]:
    """Every member x every fold (and the final set) as concurrent trials of the training machinery, into
    ``models_uri``. ``resume``: where the members a ``--resume`` continues are (``resumed_models``; copied into
    ``models_uri`` when elsewhere), None for a fresh run. ``published``: the models of the finished run this one
    replaces (a staged run): a resumed rerun takes its finished trials that it lacks and that fit."""
    from minseg.train.ensemble import fit_members, refuse_other_data, take_finished_members, trial_concurrency

    settings = config.prospect
    members = settings.training.members
    # every member trains on each fold and on the final set
    concurrency = trial_concurrency(settings.training, members, config.ray.task_cpus, trials_per_member=len(trials))
    source = WindowSource(trials, str(settings.augmentation), settings.balance)
    if resume:  # nor does a resumed one: members recorded on other evidence or windows are refused
        refuse_other_data(storage, resume, members, source)
        if resume != models_uri:  # the finished run's, which stay as they are until this run is complete
            storage.copy_files(resume, models_uri, skip=("ray",))  # Ray Train's own folder: made per run
        elif published is not None:  # a rerun stopped beside a finished run: that run's trials it lacks, if they fit
            taken = take_finished_members(storage, published, models_uri, members, source, config.run.seed,
                                          AugmentSettings(mode=settings.augmentation))
            if taken:
                log_event(log, "prospect.finished_members_taken", trials=",".join(taken), source=published)
    else:  # a fresh run never continues checkpoints trained on other data
        storage.delete_prefix(models_uri.rstrip("/") + "/")
    training_config = config.model_copy(update={"run": config.run.model_copy(update={"name": f"{config.run.name}-prospect"})})
    return fit_members(training_config, members, source, models_uri, concurrency, resume is not None)


def trial_members(settings: ProspectSettings, results: list[MemberResult], storage: Storage, run_uri: str,
                  key: int | None, channels: int) -> list[MemberRef]:
    """The members of one trial's ensemble that trained (their last checkpoints)."""
    members = []
    for member in settings.training.members:
        pointer = read_pointer(storage, run_uri, member.name, "last")
        ok = any(r.member == member.name and r.status is MemberStatus.DONE and r.fold == key for r in results)
        if pointer is not None and ok:
            members.append(MemberRef(member.name, member.model, pointer["uri"],
                                     {**member.model_options, "in_channels": channels}))
    return members


def map_trials(config: MinsegConfig, trials: dict, results: list[MemberResult], evidence: Evidence,
               geometry: GridGeometry, storage: Storage, models_uri: str, out: str) -> TrialMaps:
    """Each fold's ensemble maps the region and scores its held-out windows; the final ensemble makes the maps."""
    settings = config.prospect
    size, study, unique_cells = settings.windows.size, evidence.study, evidence.unique_cells
    options = task_options(config.storage)
    fold_ranks, test_scores, test_labels, fold_rows, member_rows = [], [], [], [], []
    final = None
    for key, trial in trials.items():
        run_uri = models_uri if key is None else join_uri(models_uri, f"fold{key + 1}")
        members = trial_members(settings, results, storage, run_uri, key, len(trial.channels))
        label = "final" if key is None else f"fold{key + 1}"
        if not members:
            raise ProspectRunError(f"no member of the {label} ensemble trained; see {models_uri}/members.csv")
        extra = {"test": trial.test_centres} if len(trial.test_centres) else None
        probability, uncertainty, extras = predict_map(members, trial.padded, size, study, settings.prediction,
                                                       storage, extra, options)
        if key is None:
            final = (probability, uncertainty, len(members))
            continue
        ranks = area_ranks(probability, study, unique_cells[trial.test_deposits])
        fold_ranks.append(ranks)
        scores = extras["test"].mean if extras else np.zeros(0)
        test_scores.append(scores)
        test_labels.append(trial.test_labels)
        fold_rows.append({"fold": key + 1, "test_deposits": len(trial.test_deposits), "members": len(members),
                          "channels": len(trial.channels), **capture(ranks, settings.targets.capture_percents),
                          "prediction_rate_auc": rate_curve(ranks)["auc"],
                          **{f"window_{k}": v for k, v in window_metrics(scores, trial.test_labels).items()
                             if k in ("accuracy", "auc", "recall", "f1")}})
        write_geotiff(join_uri(out, "cv", label, "prospectivity.tif"), probability, geometry, nodata=float("nan"),
                      storage=storage)
        if settings.prediction.member_scores and len(trial.test_centres):
            for index, member in enumerate(members):  # each member's own P(ore), from the ensemble's pass
                alone = extras["test"].members[:, index]
                member_rows.append({"fold": key + 1, "member": member.name,
                                    **{k: v for k, v in window_metrics(alone, trial.test_labels).items()
                                       if k in ("accuracy", "auc", "recall", "f1")}})
    if member_rows:
        storage.write_text(join_uri(out, "cv", "member_scores.csv"),
                           csv_text(member_rows, ["fold", "member", "accuracy", "auc", "recall", "f1"]))
    return TrialMaps(fold_ranks, test_scores, test_labels, fold_rows, member_rows, *final)


def rate_metrics(settings: ProspectSettings, maps: TrialMaps, evidence: Evidence) -> tuple[dict, dict]:
    """(curves, metrics): success rate of the final map on every deposit, prediction rate of the held-out folds."""
    # one rank per deposit cell in both curves (several deposits in one cell are one place on the map, and one
    # positive window in the folds the prediction rate pools)
    all_ranks = area_ranks(maps.probability, evidence.study, evidence.unique_cells)
    held_out = AreaRanks.concat(maps.fold_ranks)
    success, prediction = "success rate (training: all deposits, final map)", "prediction rate (held-out folds)"
    curves = {success: rate_curve(all_ranks), prediction: rate_curve(held_out)}
    capture_percents = settings.targets.capture_percents
    metrics = {
        "prediction_rate": {"auc": curves[prediction]["auc"], "deposits": len(held_out),
                            **capture(held_out, capture_percents)},
        "success_rate": {"auc": curves[success]["auc"], "deposits": len(all_ranks),
                         **capture(all_ranks, capture_percents)},
        "windows": (window_metrics(np.concatenate(maps.test_scores), np.concatenate(maps.test_labels))
                    if maps.test_scores else None),
        "folds": maps.fold_rows,
    }
    if maps.member_rows:  # mean over folds per member, the ablation table
        by_member = {}
        for row in maps.member_rows:
            by_member.setdefault(row["member"], []).append(row)
        metrics["members"] = {name: {k: float(np.nanmean([r[k] for r in rows])) for k in ("accuracy", "auc", "recall", "f1")}
                              | {"folds": len(rows)} for name, rows in by_member.items()}
    return curves, metrics


def publish_maps(settings: ProspectSettings, maps: TrialMaps, trials: dict, inputs: Inputs, evidence: Evidence,
                 curves: dict, metrics: dict, storage: Storage, out: str) -> list[dict]:
    """Prospectivity and uncertainty GeoTIFFs, ranked targets (CSV + GeoJSON), rate curves, map figure;
    returns the target rows."""
    geometry, study = inputs.geometry, evidence.study
    description = json.dumps({"generator": "minseg prospect", "value": "P(ore) of the final ensemble (mean of "
                              f"{maps.final_members} members)", "channels": trials[FINAL].channels})
    write_geotiff(join_uri(out, "prospectivity.tif"), maps.probability, geometry, nodata=float("nan"),
                  description=description, storage=storage)
    write_geotiff(join_uri(out, "uncertainty.tif"), maps.uncertainty, geometry, nodata=float("nan"),
                  description=json.dumps({"value": "standard deviation of the members' P(ore)"}), storage=storage)
    inside = inputs.inside
    on_grid = {"ids": inputs.deposits.ids[inside], "rows": inputs.d_rows[inside], "cols": inputs.d_cols[inside]}
    target_rows, regions = find_targets(maps.probability, study, geometry, on_grid, settings.targets)
    columns = ["target_id", "cells", "area_km2", "max_score", "mean_score", "centroid_x", "centroid_y",
               "known_deposits", "deposit_ids"]
    storage.write_text(join_uri(out, "targets.csv"), csv_text(target_rows, columns))
    storage.write_text(join_uri(out, "targets.geojson"), targets_geojson(target_rows, regions, geometry))
    curve_rows = [{"curve": name, "area_percent": a, "deposits_percent": d}
                  for name, c in curves.items() for a, d in zip(c["area_percent"], c["deposits_percent"])]
    storage.write_text(join_uri(out, "rate_curves.csv"), csv_text(curve_rows, ["curve", "area_percent", "deposits_percent"]))
    storage.write_bytes(join_uri(out, "rate_curves.png"), plot_curves(curves))
    storage.write_bytes(join_uri(out, "prospectivity.png"), plot_map(maps.probability, maps.uncertainty, study, geometry,
                                                                     on_grid, f"{settings.name}: prospectivity"))
    storage.write_json(join_uri(out, "metrics.json"), metrics)
    return target_rows


# ------------------------------------------------------------------ the job


# the folders a run writes whose files depend on its inputs (an element, a fold, an optional report a run may not
# write again); the maps, curves, targets and metrics beside them are rewritten by every run
_OUTPUT_FOLDERS = PROSPECT_FOLDERS
_OWNED = (*_OUTPUT_FOLDERS, "models")  # what a run replaces whole; nothing else of the folder is touched


_MARKER = ".minseg-prospect"  # written into every prospectivity output folder: its per-input folders are minseg's


def _finish_replacement(storage: Storage, out: str) -> None:
    """A complete run whose replacement of the earlier outputs was cut short (killed while its files were moved
    into ``out``; meanwhile ``out`` has no ``summary.json``): moved into place now."""
    staged = staging_folder(out, "prospect")
    if not storage.exists(join_uri(staged, "summary.json")):
        return
    if storage.finish_replacement(staged, out, "summary.json", ("summary.json",), _OWNED):
        log_event(log, "prospect.redo_moved", output=out)
    storage.remove_empty_folder(join_uri(out, REDO))


def publish_run(storage: Storage, out: str) -> None:
    """The complete run in the staging folder (``staging_folder(out, "prospect")``) replaces the finished one in
    ``out``: its files are put in place, ``summary.json`` last (it leaves first); the earlier run's files under
    ``inputs/``, ``evidence/``, ``screening/``, ``cv/`` and ``models/`` that this run did not write are deleted;
    nothing else in ``out`` is touched (``Storage.publish_staged``). Resumable: the staging folder stays whole
    until the end."""
    storage.publish_staged(out, "prospect", ("summary.json",), _OWNED)


def refuse_foreign_outputs(storage: Storage, out: str, source: str = "prospect.output_uri") -> None:
    """Raise ProspectInputError, naming ``source`` (the flag or key that gave ``out``), when ``out`` holds
    ``inputs/``, ``evidence/``, ``screening/`` or ``cv/`` but was not written by the job (someone's own
    ``inputs/``): they are neither deleted nor written into."""
    if not (storage.exists(join_uri(out, _MARKER)) or storage.exists(join_uri(out, "summary.json"))):
        taken = [f for f in _OUTPUT_FOLDERS if storage.holds_files(join_uri(out, f))]
        if taken:
            raise ProspectInputError(f"{source}: {out} holds {', '.join(f + '/' for f in taken)} that minseg did not "
                                     "write; choose another output folder")


def working_folder(storage: Storage, out: str, source: str = "prospect.output_uri") -> str:
    """Which folder a run into ``out`` writes: ``out`` itself, or its staging folder when ``out`` holds a finished
    run (kept until this one is complete). Removes nothing; finishes a replacement an earlier run left cut short.

    Raises:
        ProspectInputError: ``out`` holds ``inputs/``, ``evidence/``, ``screening/`` or ``cv/`` but was not written
            by the job (someone's own ``inputs/``): they are neither deleted nor written into."""
    refuse_foreign_outputs(storage, out, source)
    _finish_replacement(storage, out)
    return staging_folder(out, "prospect") if storage.exists(join_uri(out, "summary.json")) else out


def resumed_models(storage: Storage, out: str, work: str) -> str:
    """The members a ``--resume`` continues: the staging folder's (a run that replaces a finished one, stopped),
    else those of ``out``, copied into the staging folder by ``train_trials`` once they are found fit to resume."""
    models = join_uri(work, "models")
    if work != out and not any(True for _ in storage.list(models + "/")):
        return join_uri(out, "models")
    return models


def _clear_outputs(storage: Storage, out: str, work: str, resume: bool) -> None:
    """Make ``work`` (``working_folder``) ready for this run. In ``out`` itself (no finished run there): an
    unfinished run's per-input folders (``_OUTPUT_FOLDERS``: a file this run has no cause to write, such as
    ``deposits_outside_grid.csv``, an element or a fold no longer configured, would otherwise look like its own),
    only in a folder minseg's prospectivity job wrote (its marker), and a stopped replacement's staging folder. In
    the staging folder: everything but, for a ``--resume``, its ``models/``. The marker is written; ``models/``
    stays for ``--resume`` (``train_trials`` deletes it otherwise)."""
    ours = work != out or storage.exists(join_uri(out, _MARKER))
    if work == out:
        storage.delete_prefix(staging_folder(out, "prospect") + "/")
    elif not resume:
        storage.delete_prefix(work + "/")
    storage.delete(join_uri(work, "summary.json"))
    removed = sum(storage.delete_prefix(join_uri(work, folder) + "/") for folder in _OUTPUT_FOLDERS) if ours else 0
    if removed:
        log_event(log, "prospect.unfinished_outputs_removed", output=work, files=removed)
    storage.write_text(join_uri(out, _MARKER), "written by minseg prospect: its inputs/, evidence/, screening/, cv/ "
                                               "and models/ are replaced by every run into this folder\n")


def map_prospectivity(config: MinsegConfig, resume: bool = False,
                      output_source: str = "prospect.output_uri") -> ProspectResult:
    """The prospectivity job (module doc), phase by phase; ``summary.json`` is written last. ``output_source``:
    what gave the output folder (``--out`` from the CLI), named when that folder is refused.

    Raises:
        ProspectInputError: an input that cannot be used (exit 2).
        ProspectRunError: no member of an ensemble trained (exit 1).
    """
    settings = config.prospect
    if settings is None:
        raise ProspectInputError("the prospect job needs a 'prospect' config section")
    _check_members(settings)  # before any input is read: the windows must fit every member, its options the model
    started = time.monotonic()
    storage = Storage(config.storage)
    out = output_uri(config)
    refuse_other_command_outputs(out, "prospect", output_source, storage)  # before anything is cleared
    work = working_folder(storage, out, output_source)  # a finished run there stays as it is until this one is complete
    if work != out:
        log_event(log, "prospect.staged", output=out, staging=work)
    try:
        resume_from = resumed_models(storage, out, work) if resume else None  # _clear_outputs keeps it
        if resume_from:  # before anything is read or removed: members trained otherwise would be kept or continued
            from minseg.train.ensemble import refuse_changed_members

            refuse_changed_members(storage, resume_from, settings.training.members,
                                   [*range(settings.cv.folds), FINAL], config.run.seed,
                                   AugmentSettings(mode=settings.augmentation))
        _clear_outputs(storage, out, work, resume)
        return _run_phases(config, storage, out, work, resume_from, started)
    except BaseException as exc:
        if work != out:
            _say_rerun_failed(storage, out, work, refused=isinstance(exc, InputError))
        raise


def _say_rerun_failed(storage: Storage, out: str, work: str, refused: bool) -> None:
    """The warning of a run staged beside a finished one (``work``) that failed: what ``out`` holds now.
    ``refused``: stopped by bad input or a refused ``--resume`` (no hint to resume)."""
    try:
        complete = storage.exists(join_uri(work, "summary.json"))
        trained = not refused and any(True for _ in storage.list(join_uri(work, "models") + "/"))
    except Exception:  # the storage failing: said by the error itself
        complete, trained = False, False
    if complete:  # failed while put in place
        log_event(log, "prospect.redo_cut_short", logging.WARNING, output=out, staging=work,
                  hint="this run is complete but not all in place: the next run into the folder puts it there first")
    else:
        log_event(log, "prospect.redo_failed", logging.WARNING, output=out, staging=work,
                  kept="the finished run's outputs, as they were" + ("; --resume continues this run's members, "
                                                                      "and takes the finished run's that fit"
                                                                      if trained else ""))


def _run_phases(config: MinsegConfig, storage: Storage, out: str, work: str, resume_from: str | None,
                started: float) -> ProspectResult:
    """``map_prospectivity``'s phases, written into ``work`` (``out`` or its staging folder, published at the end);
    ``resume_from``: the models a ``--resume`` continues (``resumed_models``), None for a fresh run."""
    settings = config.prospect
    models_uri = join_uri(work, "models")
    init_ray(config.ray, job_paths([settings], [out]))
    prediction = settings.prediction  # its actor pool runs after hours of training: checked now
    check_actor_pool("prospect.prediction", prediction.actors, prediction.cpus_per_actor, prediction.gpus_per_actor)
    cpus = config.ray.task_cpus
    working = parse_crs(settings.grid.crs, "prospect.grid.crs")

    inputs = read_inputs(settings, working, storage, work, cpus, output=out)  # out: an earlier run's outputs
    evidence = build_evidence(settings, inputs, working, storage, work, cpus)
    windows, folds, trials = prepare_trials(settings, evidence, inputs.samples, storage, work, config.run.seed)
    thin_rows = thin_folds(windows, folds)  # said now, recorded in the summary
    for row in thin_rows:
        log_event(log, "prospect.cv_thin_fold", logging.WARNING, **row)
    print("Element screening (all deposits in the study area):")
    print(format_table(trials[FINAL].screening))
    results = train_trials(config, trials, storage, models_uri, resume_from,
                           join_uri(out, "models") if work != out else None)
    maps = map_trials(config, trials, results, evidence, inputs.geometry, storage, models_uri, work)
    curves, metrics = rate_metrics(settings, maps, evidence)
    target_rows = publish_maps(settings, maps, trials, inputs, evidence, curves, metrics, storage, work)

    geometry, deposits = inputs.geometry, inputs.deposits
    not_in_study = [str(i) for i, ins, ok in zip(deposits.ids, evidence.in_study, inputs.inside) if ok and not ins]
    kept = [r["element"] for r in trials[FINAL].screening if r["kept"]]
    thin = {row["fold"]: row["sides"] for row in thin_rows}
    document = {
        "name": settings.name, "output": out, "grid": {"rows": geometry.rows, "cols": geometry.cols,
                                                        "cell_m": geometry.pixel_width, "epsg": geometry.epsg,
                                                        "transform": list(geometry.transform)},
        "samples": len(inputs.samples) if inputs.samples is not None else 0,
        "sample_problems": len(inputs.samples.problems) if inputs.samples is not None else 0,
        "samples_outside_grid": inputs.samples.report["outside_grid"] if inputs.samples is not None else 0,
        "deposits": {"read": len(deposits), "source": deposits.report.get("file"),
                     "raster_cells": deposits.report.get("marked_cells"), "on_grid": int(inputs.inside.sum()),
                     "without_coordinates": deposits.report.get("without_coordinates", []),
                     "repeated_ids": deposits.report.get("repeated_ids", []),
                     "in_study_area": int(evidence.in_study.sum()),
                     "cells": len(evidence.unique_cells),  # what the rate curves count: several in one cell once
                     "outside_grid": [o["deposit"] for o in inputs.outside], "outside_study_area": not_in_study},
        "barren": (None if inputs.barren is None else
                   {"read": len(inputs.barren), "source": inputs.barren.report.get("file"),
                    "negative_cells": len(evidence.barren_cells)}),
        "study_cells": int(evidence.study.sum()),
        "windows": {"total": len(windows), "positives": int(windows.labels.sum())},
        "folds": [{"fold": f.index + 1, "train_windows": len(f.train),
                   "train_deposit_windows": int(f.train.labels.sum()), "test_windows": len(f.test),
                   "dropped_for_overlap": f.dropped_for_overlap,
                   "balance": trials[f.index].balance, "thin": f.index + 1 in thin,
                   "thin_sides": thin.get(f.index + 1, [])} for f in folds],
        "kept_elements": kept, "channels": trials[FINAL].channels, "layers": evidence.layer_reports,
        "metrics": metrics, "targets": len(target_rows),
        "members": [{"member": r.member, "fold": None if r.fold is None else r.fold + 1,  # 1.., as cv/fold<k>
                     "status": str(r.status), "error": r.error} for r in results],
        "seconds": round(time.monotonic() - started, 1),
    }
    if work != out:  # what it records names where it is published
        relocate_records(storage, models_uri, work, out)
        results = [MemberResult(**relocated(asdict(r), work, out)) for r in results]
    storage.write_json(join_uri(work, "summary.json"), document)
    if work != out:  # complete: it replaces the finished run
        publish_run(storage, out)
    log_event(log, "prospect.done", output=out, seconds=document["seconds"], targets=len(target_rows))
    return ProspectResult(settings.name, out, metrics, kept, trials[FINAL].channels, len(target_rows), results,
                          document)
