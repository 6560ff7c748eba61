"""Ranked target areas, success- and prediction-rate curves, window metrics and the plots.

A deposit's *area rank* on a map is the share of the study area scoring at least as high as the deposit's cell:
what a threshold at its score keeps. The rate curve gives, for each share of the area (highest scores first), the
share of deposits inside it (cells tied with a deposit's all come in with it); its AUC is the area under the curve
joined by straight lines across ties, ``1 - mean(mid rank)`` with the mid rank halfway between the share scoring
higher and the share scoring at least as high (a constant map: 0.5, as the ROC's AUC with tied scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minseg.geo.config import TargetSettings
from minseg.geo.grid import affine
from minseg.io.geotiff import GridGeometry
from minseg.io.storage import json_text
from minseg.metrics import roc_auc


@dataclass(frozen=True)
class AreaRanks:
    """Deposits' area ranks on one map, float64 (n,) in [0, 1]: ``at_least``, the share of the study area scoring
    at least as high as each deposit's cell; ``above``, strictly higher. A deposit whose cell the map leaves
    unscored (NaN) counts as found last (1, 1), never as captured at once."""

    at_least: np.ndarray
    above: np.ndarray

    def __len__(self) -> int:
        return len(self.at_least)

    @property
    def mid(self) -> np.ndarray:
        """Halfway between: ties shared evenly (what the curve's AUC averages)."""
        return (self.at_least + self.above) / 2.0

    @staticmethod
    def concat(parts: list["AreaRanks"]) -> "AreaRanks":
        """The ranks of several maps pooled (the prediction rate over folds)."""
        return AreaRanks(np.concatenate([np.zeros(0)] + [p.at_least for p in parts]),
                         np.concatenate([np.zeros(0)] + [p.above for p in parts]))


NO_RANKS = AreaRanks(np.zeros(0), np.zeros(0))


def area_ranks(score: np.ndarray, study: np.ndarray, cells: np.ndarray) -> AreaRanks:
    """Area ranks of each (row, col) of ``cells`` (n, 2) on ``score`` (H, W) over the ``study`` cells."""
    values = np.sort(score[study & np.isfinite(score)])
    cells = np.asarray(cells, np.int64).reshape(-1, 2)
    if len(cells) == 0:
        return NO_RANKS
    if values.size == 0:  # a map scoring no study cell finds every deposit last
        return AreaRanks(np.ones(len(cells)), np.ones(len(cells)))
    at_cells = score[cells[:, 0], cells[:, 1]]
    scored = np.isfinite(at_cells)
    at_least = np.where(scored, values.size - np.searchsorted(values, at_cells, side="left"), values.size)
    above = np.where(scored, values.size - np.searchsorted(values, at_cells, side="right"), values.size)
    return AreaRanks(at_least / values.size, above / values.size)


def rate_curve(ranks: AreaRanks, points: int = 101) -> dict:
    """Cumulative % of deposits vs % of area (a deposit counts from its ``at_least`` share on), the AUC
    (``1 - mean(mid)``) and how many deposits."""
    area = np.linspace(0.0, 100.0, points)
    captured = [float((ranks.at_least * 100.0 <= a + 1e-9).mean() * 100.0) if len(ranks) else 0.0 for a in area]
    return {"area_percent": area.tolist(), "deposits_percent": captured,
            "auc": float(1.0 - ranks.mid.mean()) if len(ranks) else None, "deposits": len(ranks)}


def capture(ranks: AreaRanks, percents: list[float]) -> dict[str, float | None]:
    """% of deposits inside the top ``p`` % of the area (a threshold: tied cells only if all fit), per ``p``."""
    return {f"top_{p:g}_percent": (float((ranks.at_least * 100.0 <= p + 1e-9).mean() * 100.0) if len(ranks)
                                   else None) for p in percents}


def window_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """The paper's Table 3 on windows: accuracy, AUC, recall, precision, F1."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    tp, fp = int((predicted & labels).sum()), int((predicted & ~labels).sum())
    fn, tn = int((~predicted & labels).sum()), int((~predicted & ~labels).sum())
    recall = tp / (tp + fn) if tp + fn else None
    precision = tp / (tp + fp) if tp + fp else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    auc = roc_auc(scores, labels) if labels.any() and (~labels).any() else None
    return {"windows": int(labels.size), "positives": int(labels.sum()), "accuracy": (tp + tn) / max(1, labels.size),
            "auc": auc, "recall": recall, "precision": precision, "f1": f1, "threshold": threshold,
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def find_targets(score: np.ndarray, study: np.ndarray, geometry: GridGeometry, deposits: dict,
                 settings: TargetSettings) -> tuple[list[dict], np.ndarray]:
    """Connected regions (8-neighbour) in the top ``top_percent`` of the study area, ranked by max then mean
    score. ``deposits``: {"ids", "rows", "cols"} of known deposits on the grid. Returns (rows, region ids)."""
    from scipy import ndimage

    valid = study & np.isfinite(score)
    values = np.sort(score[valid])[::-1]
    budget = int(np.ceil(values.size * settings.top_percent / 100.0))
    selected = np.zeros_like(valid)
    if budget:
        threshold = values[budget - 1]
        # cells tied at the threshold join only if they all fit: never more than top_percent of the area
        at_least = valid & (score >= threshold)
        selected = at_least if at_least.sum() <= budget else valid & (score > threshold)
    labelled, count = ndimage.label(selected, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    regions = []
    xs, ys = geometry.pixel_centres()
    deposit_region = labelled[deposits["rows"], deposits["cols"]] if len(deposits["ids"]) else np.zeros(0, np.int64)
    for region in range(1, count + 1):
        if sizes[region] < settings.min_cells:
            continue
        rows, cols = np.nonzero(labelled == region)
        values = score[rows, cols]
        inside = [str(i) for i, r in zip(deposits["ids"], deposit_region) if r == region]
        regions.append({"region": region, "cells": int(sizes[region]),
                        "area_km2": round(sizes[region] * geometry.pixel_width * geometry.pixel_height / 1e6, 4),
                        "max_score": round(float(values.max()), 5), "mean_score": round(float(values.mean()), 5),
                        "centroid_x": round(float(xs[cols].mean()), 2), "centroid_y": round(float(ys[rows].mean()), 2),
                        "known_deposits": len(inside), "deposit_ids": ";".join(inside)})
    regions.sort(key=lambda r: (-r["max_score"], -r["mean_score"]))
    renumbered = np.zeros_like(labelled)
    for rank, row in enumerate(regions, start=1):
        renumbered[labelled == row.pop("region")] = rank
        row["target_id"] = rank
    ordered = [{"target_id": r["target_id"], **{k: v for k, v in r.items() if k != "target_id"}} for r in regions]
    return ordered, renumbered


def targets_geojson(rows: list[dict], regions: np.ndarray, geometry: GridGeometry) -> str:
    """Target polygons (cell outlines merged per region) with their table row as properties."""
    from rasterio.features import shapes

    transform = affine(geometry)
    by_id = {r["target_id"]: r for r in rows}
    polygons: dict[int, list] = {}
    for shape, value in shapes(regions.astype(np.int32), mask=regions > 0, transform=transform):
        polygons.setdefault(int(value), []).append(shape["coordinates"])
    features = []
    for target_id in sorted(polygons):
        parts = polygons[target_id]
        geometry_json = ({"type": "Polygon", "coordinates": parts[0]} if len(parts) == 1
                         else {"type": "MultiPolygon", "coordinates": parts})
        features.append({"type": "Feature", "properties": by_id[target_id], "geometry": geometry_json})
    crs = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{geometry.epsg}"}}
    return json_text({"type": "FeatureCollection", "crs": crs, "features": features}, indent=None)


def plot_map(score: np.ndarray, uncertainty: np.ndarray, study: np.ndarray, geometry: GridGeometry,
             deposits: dict, title: str) -> bytes:
    """PNG: prospectivity and uncertainty side by side, known deposits overlaid."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xmin, ymin, xmax, ymax = geometry.bounds
    extent = (xmin / 1000, xmax / 1000, ymin / 1000, ymax / 1000)
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    for axis, values, name, cmap in ((axes[0], score, "prospectivity (P ore)", "viridis"),
                                     (axes[1], uncertainty, "uncertainty (member std)", "magma")):
        shown = np.where(study, values, np.nan)
        image = axis.imshow(shown, extent=extent, cmap=cmap, interpolation="nearest")
        figure.colorbar(image, ax=axis, shrink=0.8)
        if len(deposits["ids"]):
            xs, ys = geometry.pixel_centres()
            axis.scatter(xs[deposits["cols"]] / 1000, ys[deposits["rows"]] / 1000, s=28, facecolors="none",
                         edgecolors="red", linewidths=1.2, label="known deposits")
            axis.legend(loc="lower right", fontsize=8)
        axis.set_title(name)
        axis.set_xlabel("easting (km)")
        axis.set_ylabel("northing (km)")
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def plot_curves(curves: dict[str, dict]) -> bytes:
    """PNG: rate curves (% deposits vs % area) with the random-map diagonal."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.6, 5.2))
    axis.plot([0, 100], [0, 100], color="grey", linestyle="--", label="random map")
    for name, curve in curves.items():
        if curve["deposits"]:
            auc = f", AUC {curve['auc']:.3f}" if curve["auc"] is not None else ""
            axis.step(curve["area_percent"], curve["deposits_percent"], where="post",
                      label=f"{name} ({curve['deposits']} deposit cells{auc})")
    axis.set_xlabel("% of study area (highest prospectivity first)")
    axis.set_ylabel("% of deposits captured")
    axis.set_xlim(0, 100)
    axis.set_ylim(0, 101)
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
