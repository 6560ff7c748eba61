"""Element screening by AUC and Z_AUC against deposit presence (MFAF paper, Eq. 1-3).

Positives are the grid cells holding a (training) deposit, negatives every other cell where
the element has a value. An element is kept when its Z_AUC reaches the critical value
(2.58: 99 % one-sided), strongest first, at most ``max_elements``.
"""

from __future__ import annotations

import math

import numpy as np

from minseg.geo.config import ScreeningSettings
from minseg.metrics import auc_z_score, roc_auc


def screen_elements(grids: dict[str, np.ndarray], deposit_cells: np.ndarray,
                    settings: ScreeningSettings) -> list[dict]:
    """One row per element: auc, z_auc, positives, negatives, kept, reason. ``deposit_cells``: (n, 2) row, col."""
    cells = np.unique(np.asarray(deposit_cells, np.int64).reshape(-1, 2), axis=0)
    at_deposit = np.zeros(next(iter(grids.values())).shape, bool) if grids else None
    if grids and len(cells):
        at_deposit[cells[:, 0], cells[:, 1]] = True
    rows = []
    for element, grid in grids.items():
        valid = np.isfinite(grid)
        positive = at_deposit & valid
        positives, negatives = int(positive.sum()), int((valid & ~positive).sum())
        row = {"element": element, "auc": None, "z_auc": None, "positives": positives, "negatives": negatives}
        if positives and negatives:
            auc = roc_auc(grid[valid], positive[valid])
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
                       else "no values at deposits")
        elif row["element"] in chosen:
            row.update(kept=True, reason=f"{score} >= {settings.critical_z}")
        elif row in significant:
            row.update(kept=False, reason=f"significant, but beyond max_elements={settings.max_elements}")
        else:
            row.update(kept=False, reason=f"{score} < {settings.critical_z}")
    return rows


def format_table(rows: list[dict]) -> str:
    """The screening table as aligned text, for the log and the terminal."""
    lines = [f"{'element':<10}{'AUC':>8}{'Z_AUC':>9}{'deposits':>10}  kept  reason"]
    for r in rows:
        auc = f"{r['auc']:.3f}" if r["auc"] is not None else "-"
        z = f"{r['z_auc']:.2f}" if r["z_auc"] is not None else "-"
        lines.append(f"{r['element']:<10}{auc:>8}{z:>9}{r['positives']:>10}  {'yes' if r['kept'] else 'no ':<4}  "
                     f"{r['reason']}")
    return "\n".join(lines)
