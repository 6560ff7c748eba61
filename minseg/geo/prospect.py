"""The prospectivity job: samples + evidence → screened stack → spatial-CV MFAF ensembles → maps and targets.

Data flows one way:

1. sample tables (Ray Data) → clean samples; deposits and lines read; the target grid;
2. IDW of every usable element (Ray tasks over grid blocks); rasters and distance-to-line
   layers on the grid;
3. windows (positives on deposits, negatives on a lattice) → spatial folds (blocks larger
   than a window; training windows touching a test window dropped);
4. per fold, from its training side only: element screening (AUC / Z_AUC), normalisation
   statistics, SMOTE + noise; plus one "final" set from all deposits;
5. every member x every fold (and the final set) trained concurrently (Ray Train inside
   Tune trials, the training job's machinery);
6. each fold's ensemble maps the whole region (actor pool) and scores its test windows:
   prediction-rate curve, captures, window metrics; the final ensemble makes the published
   prospectivity and uncertainty GeoTIFFs, the success-rate curve and the ranked targets.

``summary.json`` is written last: a run is complete exactly when it exists.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from minseg.config.schema import MinsegConfig
from minseg.data.classmap import ClassMap
from minseg.data.config import AugmentSettings
from minseg.enums import EvidenceKind, Task
from minseg.geo.config import ProspectInputError, ProspectRunError, ProspectSettings
from minseg.geo.crs import parse_crs
from minseg.geo.grid import target_grid, world_to_cell
from minseg.geo.idw import interpolate
from minseg.geo.predict import predict_map
from minseg.geo.rasters import distance_to_lines, encode_categorical, raster_geometry, read_raster_on_grid
from minseg.geo.samples import read_samples
from minseg.geo.screening import format_table, screen_elements
from minseg.geo.targets import (area_ranks, capture, find_targets, plot_curves, plot_map, rate_curve, targets_geojson,
                                window_metrics)
from minseg.geo.vectors import read_lines, read_points
from minseg.geo.windows import EvidenceStack, balance, extract, footprint_mask, make_windows, spatial_folds
from minseg.io.geotiff import GridGeometry, write_geotiff
from minseg.io.storage import Storage, join_uri
from minseg.io.tables import csv_text
from minseg.logs import get_logger, log_event
from minseg.runtime import init_ray, task_options
from minseg.train.checkpoint import read_pointer

log = get_logger("geo.prospect")

CLASS_NAMES = ["no-ore", "ore"]
FINAL = None  # the trial key of the ensemble trained on every deposit


def output_uri(config: MinsegConfig) -> str:
    settings = config.prospect
    return settings.output_uri or join_uri(config.run.uri, "prospect", settings.name)


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
    balance: dict = field(default_factory=dict)


class WindowSource:
    """Training data for ``fit_members``: balanced evidence windows per trial."""

    task = Task.CLASSIFICATION
    num_classes = 2

    def __init__(self, trials: dict, augmentation: str):
        # only what training needs travels to the trials (not the padded stacks kept for prediction)
        self.trials = {fold: (data.train_x, data.train_y, len(data.channels)) for fold, data in trials.items()}
        self.augmentation = augmentation
        self.in_channels = max(channels for _, _, channels in self.trials.values())

    def trial_folds(self) -> list[int | None]:
        return [fold for fold in self.trials if fold is not None] + [FINAL]

    def member_data(self, fold: int | None, config: MinsegConfig, storage: Storage) -> tuple[dict, dict]:
        import ray

        train_x, train_y, channels = self.trials[fold]
        rows = [{"image": x, "label": int(y)} for x, y in zip(train_x, train_y)]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 64, 64)))
        fields = {
            "task": str(Task.CLASSIFICATION), "num_classes": 2, "in_channels": channels, "ignore_index": 255,
            "classes": ClassMap.from_names(CLASS_NAMES).to_document(), "classes_names": CLASS_NAMES,
            "normalization": {"mean": [0.0] * channels, "std": [1.0] * channels},  # windows come standardised
            "augmentation": AugmentSettings(mode=self.augmentation).model_dump(mode="json"),
            "train_tiles": len(rows), "has_val": False,  # no model selection on test windows: the last epoch is used
            "shuffle_buffer": min(len(rows), 1024),
        }
        return {"train": dataset}, fields


# ------------------------------------------------------------------ building the evidence


def _element_grids(samples, geometry: GridGeometry, settings: ProspectSettings, task_cpus: float) -> dict:
    usable = {e: v for e, v in samples.values.items() if np.isfinite(v).any()}
    if not usable:
        raise ProspectInputError("prospect.samples: no element has a usable value")
    return interpolate(samples.x, samples.y, usable, geometry, settings.idw, task_cpus)


def _layer_channels(settings: ProspectSettings, geometry: GridGeometry, working, storage: Storage, study_hint,
                    task_cpus: float) -> tuple[list[tuple[str, np.ndarray]], set[str], dict]:
    channels, categorical, reports = [], set(), {}
    for index, raster in enumerate(settings.rasters):
        values, report = read_raster_on_grid(raster, index, geometry, working, storage)
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
        distance = distance_to_lines(lines, geometry, layer, settings.idw.block, task_cpus)
        channels.append((layer.name, distance))
        reports[layer.name] = {"file": layer.uri, "lines": len(lines), "max_distance_m": float(np.nanmax(distance))}
    return channels, categorical, reports


def _check_members(settings: ProspectSettings) -> None:
    """Classification learners that take the windows, or an error naming the member, before any work."""
    from minseg.models import get_entry

    for index, member in enumerate(settings.training.members):
        try:
            entry = get_entry(member.model)
        except ValueError as exc:
            raise ProspectInputError(f"prospect.training.members[{index}].model: {exc}") from None
        if entry.task is not Task.CLASSIFICATION:
            raise ProspectInputError(f"prospect.training.members[{index}].model: {member.model!r} is a "
                                     f"{entry.task} learner; prospectivity needs a classification learner (e.g. mfaf)")
        minimum = getattr(entry.builder, "min_size", 1)
        if settings.windows.size < minimum:
            raise ProspectInputError(f"prospect.windows.size {settings.windows.size} is below the "
                                     f"{minimum}x{minimum} that member {member.name!r} ({member.model}) needs")


# ------------------------------------------------------------------ the job


def map_prospectivity(config: MinsegConfig, resume: bool = False) -> dict:
    settings = config.prospect
    if settings is None:
        raise ProspectInputError("the prospect job needs a 'prospect' config section")
    started = time.monotonic()
    storage = Storage(config.storage)
    out = output_uri(config)
    if storage.exists(join_uri(out, "summary.json")):  # a failed re-run must not leave the old run looking complete
        storage.delete(join_uri(out, "summary.json"))
    init_ray(config.ray)
    import ray

    cpus = config.ray.task_cpus
    working = parse_crs(settings.grid.crs, "prospect.grid.crs")
    rng = np.random.default_rng(config.run.seed)

    # 1. inputs ----------------------------------------------------------------------------
    samples = read_samples(settings.samples, working, storage, config.storage, cpus)
    storage.write_text(join_uri(out, "inputs", "samples.json"), json.dumps(samples.report, indent=2))
    if samples.problems:
        storage.write_text(join_uri(out, "inputs", "sample_problems.csv"),
                           csv_text(samples.problems, ["file", "row", "sample", "column", "value", "reason"]))
    log_event(log, "prospect.samples", samples=len(samples), problems=len(samples.problems),
              dropped=samples.report["rows_dropped"])
    reference = raster_geometry(settings.grid.reference, storage, settings.grid.crs) if settings.grid.reference else None
    geometry = target_grid(settings.grid, (samples.x.min(), samples.y.min(), samples.x.max(), samples.y.max()),
                           reference)
    deposits = read_points(settings.deposits, working, storage)
    d_rows, d_cols, inside = world_to_cell(geometry, deposits.x, deposits.y)
    outside = [{"deposit": str(i), "x": float(x), "y": float(y)}
               for i, x, y, ok in zip(deposits.ids, deposits.x, deposits.y, inside) if not ok]
    if outside:
        log_event(log, "prospect.deposits_outside_grid", count=len(outside),
                  ids=",".join(o["deposit"] for o in outside[:20]))
        storage.write_text(join_uri(out, "inputs", "deposits_outside_grid.csv"), csv_text(outside, ["deposit", "x", "y"]))

    # 2. evidence on the grid ------------------------------------------------------------------
    grids = _element_grids(samples, geometry, settings, cpus)
    study = np.logical_and.reduce([np.isfinite(g) for g in grids.values()])
    for element, grid in grids.items():
        write_geotiff(join_uri(out, "evidence", f"{element}.tif"), grid, geometry, nodata=float("nan"),
                      description=json.dumps({"element": element, "log10": settings.idw.log_transform}), storage=storage)
    layers, categorical, layer_reports = _layer_channels(settings, geometry, working, storage, study, cpus)
    for name, channel in layers:
        study &= np.isfinite(channel) | (name in categorical)
    names = list(grids) + [n for n, _ in layers]
    data = np.stack([grids[e] for e in grids] + [c for _, c in layers]).astype(np.float32)
    stack = EvidenceStack(names, data, study, categorical)

    in_study = inside.copy()
    in_study[inside] = study[d_rows[inside], d_cols[inside]]
    deposit_cells = np.column_stack([d_rows[in_study], d_cols[in_study]])
    unique_cells = np.unique(deposit_cells, axis=0)  # two deposits in one cell make one positive window
    not_in_study = [str(i) for i, ins, ok in zip(deposits.ids, in_study, inside) if ok and not ins]

    # 3. windows and folds -----------------------------------------------------------------------
    size = settings.windows.size
    _check_members(settings)
    block = settings.cv.block_cells or 2 * size
    windows = make_windows(study, unique_cells, size, settings.windows.stride, block, settings.windows.buffer,
                           settings.windows.max_negatives, rng)
    folds = spatial_folds(windows, settings.cv.folds, size, study.shape, block)

    # 4. per-trial screening, statistics, windows, balancing -------------------------------------
    trials: dict[int | None, TrialData] = {}
    for fold in folds + [FINAL]:
        train = windows if fold is None else fold.train
        test_centres = (np.zeros((0, 2), np.int64) if fold is None
                        else np.column_stack([fold.test.rows, fold.test.cols]))
        train_cells = np.unique(train.deposit[train.labels == 1])
        screening = screen_elements(grids, unique_cells[train_cells], settings.screening)
        kept = [r["element"] for r in screening if r["kept"]]
        if not kept:
            log_event(log, "prospect.no_element_kept", fold=None if fold is None else fold.index + 1)
        channels = kept + [n for n, _ in layers]
        if not channels:
            raise ProspectInputError("no evidence channel left: no element passed screening and no raster or line "
                                     "layer is configured (lower prospect.screening.critical_z or add layers)")
        subset = stack.subset(channels)
        training_cells = study & ~footprint_mask(study.shape, test_centres[:, 0], test_centres[:, 1], size)
        stats = subset.statistics(training_cells)
        padded = subset.normalised(stats, size // 2)
        train_x = extract(padded, train, size)
        train_y = train.labels
        if fold is not None and train_y.sum() == 0:
            raise ProspectInputError(
                f"prospect.cv: fold {fold.index + 1} has no training deposit left once windows overlapping its test "
                "windows are dropped; use fewer folds (prospect.cv.folds) or smaller windows")
        train_x, train_y, report = balance(  # a no-op when both are off
            train_x, train_y, settings.balance.positive_ratio if settings.balance.smote else 0.0,
            settings.balance.noise_variance, settings.balance.noise_copies, rng)
        test_deposits = [] if fold is None else sorted(set(fold.test.deposit[fold.test.labels == 1].tolist()))
        trials[None if fold is None else fold.index] = TrialData(
            channels=channels, padded=padded, train_x=train_x, train_y=train_y, test_centres=test_centres,
            test_labels=np.zeros(0, np.int64) if fold is None else fold.test.labels, test_deposits=test_deposits,
            screening=screening, balance=report)
        key = "final" if fold is None else f"fold{fold.index + 1}"
        storage.write_text(join_uri(out, "screening" if fold is None else f"cv/{key}/screening", "screening.csv"),
                           csv_text(screening, ["element", "auc", "z_auc", "positives", "negatives", "kept", "reason"]))
        log_event(log, "prospect.trial_ready", trial=key, channels=len(channels), train_windows=len(train_x),
                  positives=int(train_y.sum()), test_windows=len(test_centres), test_deposits=len(test_deposits))
    print("Element screening (all deposits in the study area):")
    print(format_table(trials[FINAL].screening))

    # 5. training --------------------------------------------------------------------------------
    from minseg.train.ensemble import fit_members, plan_concurrency

    members = settings.training.members
    models_uri = join_uri(out, "models")
    resources = ray.cluster_resources()
    concurrency = (plan_concurrency(members, resources.get("CPU", 0), resources.get("GPU", 0), cpus,
                                    settings.training.max_concurrent)
                   if settings.training.check_resources else settings.training.max_concurrent or len(members))
    if not resume:  # a fresh run never continues checkpoints trained on other data
        storage.delete_prefix(models_uri.rstrip("/") + "/")
    source = WindowSource(trials, str(settings.augmentation))
    training_config = config.model_copy(update={"run": config.run.model_copy(update={"name": f"{config.run.name}-prospect"})})
    results = fit_members(training_config, members, source, models_uri, concurrency, resume)

    # 6. maps, curves, metrics -------------------------------------------------------------------------
    storage_settings = config.storage
    options = task_options(config.storage)
    fold_ranks, test_scores, test_labels, fold_rows = [], [], [], []
    final_maps = None
    for key, trial in trials.items():
        run_uri = models_uri if key is None else join_uri(models_uri, f"fold{key + 1}")
        members_spec = []
        for member in members:
            pointer = read_pointer(storage, run_uri, member.name, "last")
            ok = any(r.member == member.name and r.status == "done" and r.fold == key for r in results)
            if pointer is not None and ok:
                members_spec.append({"model": member.model, "checkpoint": pointer["uri"],
                                     "model_options": {**member.model_options, "in_channels": len(trial.channels)}})
        label = "final" if key is None else f"fold{key + 1}"
        if not members_spec:
            raise ProspectRunError(f"no member of the {label} ensemble trained; see {models_uri}/members.csv")
        extra = {"test": trial.test_centres} if len(trial.test_centres) else None
        probability, uncertainty, extras = predict_map(members_spec, trial.padded, size, study, settings.prediction,
                                                       storage_settings, extra, options)
        if key is None:
            final_maps = (probability, uncertainty, len(members_spec))
            continue
        ranks = area_ranks(probability, study, unique_cells[trial.test_deposits])
        fold_ranks.append(ranks)
        scores = extras["test"][0] if extras else np.zeros(0)
        test_scores.append(scores)
        test_labels.append(trial.test_labels)
        fold_rows.append({"fold": key + 1, "test_deposits": len(trial.test_deposits), "members": len(members_spec),
                          "channels": len(trial.channels), **capture(ranks, settings.targets.capture_percents),
                          "prediction_rate_auc": rate_curve(ranks)["auc"],
                          **{f"window_{k}": v for k, v in window_metrics(scores, trial.test_labels).items()
                             if k in ("accuracy", "auc", "recall", "f1")}})
        write_geotiff(join_uri(out, "cv", label, "prospectivity.tif"), probability, geometry, nodata=float("nan"),
                      storage=storage)

    probability, uncertainty, member_count = final_maps
    all_ranks = area_ranks(probability, study, deposit_cells) if len(deposit_cells) else np.zeros(0)
    held_out = np.concatenate(fold_ranks) if fold_ranks else np.zeros(0)
    curves = {"success rate (training: all deposits, final map)": rate_curve(all_ranks),
              "prediction rate (held-out folds)": rate_curve(held_out)}
    metrics = {
        "prediction_rate": {"auc": curves["prediction rate (held-out folds)"]["auc"], "deposits": int(held_out.size),
                            **capture(held_out, settings.targets.capture_percents)},
        "success_rate": {"auc": curves["success rate (training: all deposits, final map)"]["auc"],
                         "deposits": int(all_ranks.size), **capture(all_ranks, settings.targets.capture_percents)},
        "windows": window_metrics(np.concatenate(test_scores), np.concatenate(test_labels)) if test_scores else None,
        "folds": fold_rows,
    }

    # 7. outputs ----------------------------------------------------------------------------------
    description = json.dumps({"generator": "minseg prospect", "value": "P(ore) of the final ensemble (mean of "
                              f"{member_count} members)", "channels": trials[FINAL].channels})
    write_geotiff(join_uri(out, "prospectivity.tif"), probability, geometry, nodata=float("nan"),
                  description=description, storage=storage)
    write_geotiff(join_uri(out, "uncertainty.tif"), uncertainty, geometry, nodata=float("nan"),
                  description=json.dumps({"value": "standard deviation of the members' P(ore)"}), storage=storage)
    on_grid = {"ids": deposits.ids[inside], "rows": d_rows[inside], "cols": d_cols[inside]}
    target_rows, regions = find_targets(probability, study, geometry, on_grid, settings.targets)
    columns = ["target_id", "cells", "area_km2", "max_score", "mean_score", "centroid_x", "centroid_y",
               "known_deposits", "deposit_ids"]
    storage.write_text(join_uri(out, "targets.csv"), csv_text(target_rows, columns))
    storage.write_text(join_uri(out, "targets.geojson"), targets_geojson(target_rows, regions, geometry))
    curve_rows = [{"curve": name, "area_percent": a, "deposits_percent": d}
                  for name, c in curves.items() for a, d in zip(c["area_percent"], c["deposits_percent"])]
    storage.write_text(join_uri(out, "rate_curves.csv"), csv_text(curve_rows, ["curve", "area_percent", "deposits_percent"]))
    storage.write_bytes(join_uri(out, "rate_curves.png"), plot_curves(curves))
    storage.write_bytes(join_uri(out, "prospectivity.png"),
                        plot_map(probability, uncertainty, study, geometry, on_grid, f"{settings.name}: prospectivity"))
    storage.write_text(join_uri(out, "metrics.json"), json.dumps(metrics, indent=2, default=float))
    summary = {
        "name": settings.name, "output": out, "grid": {"rows": geometry.rows, "cols": geometry.cols,
                                                        "cell_m": geometry.pixel_width, "epsg": geometry.epsg,
                                                        "transform": list(geometry.transform)},
        "samples": len(samples), "sample_problems": len(samples.problems),
        "deposits": {"read": len(deposits), "on_grid": int(inside.sum()), "in_study_area": int(in_study.sum()),
                     "outside_grid": [o["deposit"] for o in outside], "outside_study_area": not_in_study},
        "study_cells": int(study.sum()), "windows": {"total": len(windows), "positives": int(windows.labels.sum())},
        "folds": [{"fold": f.index + 1, "train_windows": len(f.train), "test_windows": len(f.test),
                   "dropped_for_overlap": f.dropped_for_overlap, "balance": trials[f.index].balance} for f in folds],
        "kept_elements": [r["element"] for r in trials[FINAL].screening if r["kept"]],
        "channels": trials[FINAL].channels, "layers": layer_reports, "metrics": metrics,
        "targets": len(target_rows), "members": [{"member": r.member, "fold": r.fold, "status": r.status,
                                                   "error": r.error} for r in results],
        "seconds": round(time.monotonic() - started, 1),
    }
    storage.write_text(join_uri(out, "summary.json"), json.dumps(summary, indent=2, default=float))
    log_event(log, "prospect.done", output=out, seconds=summary["seconds"], targets=len(target_rows))
    return summary
