"""Element screening by AUC and Z_AUC against deposit presence (MFAF paper, Eq. 1-3).

Two levels (``screening.level``):

- ``samples`` (the paper, §3.1: before interpolation): positives are the samples within
  ``sample_radius_m`` of a training deposit, negatives the other samples with a value;
  samples near held-out deposits are neither (they would be negatives that are not).
- ``grid``: positives are the grid cells holding a training deposit, negatives every other
  cell where the interpolated element has a value (thousands of them: Z grows with the
  cell count, so more elements pass than on the samples).

An element is kept when its Z_AUC reaches the critical value (2.58: the two-sided 99 %
value of the standard normal, i.e. one-sided 99.5 %; one-sided 99 % is 2.33), strongest
first, at most ``max_elements``.
"""

from __future__ import annotations

import math

import numpy as np

from minseg.geo.config import ScreeningSettings
from minseg.metrics import auc_z_score, roc_auc


def screen_elements(grids: dict[str, np.ndarray], deposit_cells: np.ndarray,
                    settings: ScreeningSettings) -> list[dict]:
    """Grid level. One row per element: auc, z_auc, positives, negatives, kept, reason.
    ``deposit_cells``: (n, 2) row, col of the training deposits."""
    cells = np.unique(np.asarray(deposit_cells, np.int64).reshape(-1, 2), axis=0)
    at_deposit = np.zeros(next(iter(grids.values())).shape, bool) if grids else None
    if grids and len(cells):
        at_deposit[cells[:, 0], cells[:, 1]] = True
    values = {element: (grid.ravel(), at_deposit.ravel()) for element, grid in grids.items()}
    return _screen(values, settings)


def screen_samples(values: dict[str, np.ndarray], sample_xy: np.ndarray, training_xy: np.ndarray,
                   held_out_xy: np.ndarray, settings: ScreeningSettings) -> list[dict]:
    """Sample level (the paper). ``values[element]``: (n,) per sample, NaN where unusable; ``sample_xy``
    (n, 2), ``training_xy`` / ``held_out_xy`` (m, 2) deposit coordinates in the same CRS (metres)."""
    from scipy.spatial import cKDTree

    sample_xy = np.asarray(sample_xy, np.float64).reshape(-1, 2)
    radius = settings.sample_radius_m

    def near(points) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        if not len(points) or not len(sample_xy):
            return np.zeros(len(sample_xy), bool)
        distance, _ = cKDTree(points).query(sample_xy, k=1)
        return distance <= radius

    positive = near(training_xy)
    usable = ~(near(held_out_xy) & ~positive)
    return _screen({element: (v[usable], positive[usable]) for element, v in values.items()}, settings)


def _screen(values: dict[str, tuple[np.ndarray, np.ndarray]], settings: ScreeningSettings) -> list[dict]:
    """Rows from (values, is-positive) per element: AUC, Z_AUC (Eq. 1-3) and the keep decision."""
    rows = []
    for element, (value, at_deposit) in values.items():
        valid = np.isfinite(value)
        positive = at_deposit & valid
        positives, negatives = int(positive.sum()), int((valid & ~positive).sum())
        row = {"element": element, "auc": None, "z_auc": None, "positives": positives, "negatives": negatives}
        if positives and negatives:
            auc = roc_auc(value[valid], positive[valid])
            z = auc_z_score(auc, positives, negatives)
            row.update(auc=round(auc, 4), z_auc=round(z, 3) if math.isfinite(z) else z)
        rows.append(row)
    significant = [r for r in rows if r["z_auc"] is not None and
                   (r["z_auc"] >= settings.critical_z or (settings.two_sided and r["z_auc"] <= -settings.critical_z))]
    significant.sort(key=lambda r: -abs(r["z_auc"]))
    chosen = {r["element"] for r in significant[: settings.max_elements or len(significant)]}
    score = "|Z_AUC|" if settings.two_sided else "Z_AUC"
    for row in rows:
        if row["element"] in settings.always and row["negatives"] > 0:
            row.update(kept=True, reason="always kept (config)")
        elif row["z_auc"] is None:
            row.update(kept=False, reason="no values at all" if row["positives"] + row["negatives"] == 0
                       else "no values at deposits" if row["positives"] == 0 else "no values away from deposits")
        elif row["element"] in chosen:
            row.update(kept=True, reason=f"{score} >= {settings.critical_z}")
        elif row in significant:
            row.update(kept=False, reason=f"significant, but beyond max_elements={settings.max_elements}")
        else:
            row.update(kept=False, reason=f"{score} < {settings.critical_z}")
    return rows


def format_table(rows: list[dict]) -> str:
    """The screening table as aligned text, for the log and the terminal."""
    lines = [f"{'element':<10}{'AUC':>8}{'Z_AUC':>9}{'positives':>10}{'negatives':>10}  kept  reason"]
    for r in rows:
        auc = f"{r['auc']:.3f}" if r["auc"] is not None else "-"
        z = f"{r['z_auc']:.2f}" if r["z_auc"] is not None else "-"
        lines.append(f"{r['element']:<10}{auc:>8}{z:>9}{r['positives']:>10}{r['negatives']:>10}  "
                     f"{'yes' if r['kept'] else 'no ':<4}  "
                     f"{r['reason']}")
    return "\n".join(lines)
