"""Element screening by AUC and Z_AUC against deposit presence (MFAF paper, Eq. 1-3).

Two levels (``screening.level``):

- ``samples`` (the paper, §3.1: before interpolation): positives are the samples within
  ``sample_radius_m`` of a training deposit, negatives the other samples with a value;
  samples near held-out deposits are neither (they would be negatives that are not).
- ``grid``: positives are the grid cells holding a training deposit, negatives every other
  cell where the interpolated element has a value (thousands of them: Z grows with the
  cell count, so more elements pass than on the samples).

Raster layers marked ``screen: true`` (e.g. element grids interpolated elsewhere) are
screened on the grid whatever the level and compete with the elements for
``max_elements``. When known barren sites are given they are the only negatives (cells
holding one, or samples within ``sample_radius_m`` of one).

An element is kept when its Z_AUC reaches the critical value (2.58: the two-sided 99 %
value of the standard normal, i.e. one-sided 99.5 %; one-sided 99 % is 2.33), strongest
first, at most ``max_elements``.
"""

from __future__ import annotations


import numpy as np

from minseg.geo.config import ScreeningSettings
from minseg.metrics import auc_z_score, roc_auc


def grid_rows(grids: dict[str, np.ndarray], deposit_cells: np.ndarray, negative_cells: np.ndarray | None = None,
              level: str = "grid", known_cells: np.ndarray | None = None) -> list[dict]:
    """Grid level, undecided rows (see ``decide``). ``deposit_cells``: (n, 2) row, col of the training deposits;
    ``negative_cells``: (m, 2) known barren cells, the only negatives when given (else every other cell but the
    ``known_cells``: deposits the trial knows without training on them, no negatives, as at sample level; a fold's
    held-out deposits are not among them and stay negatives, as a blind screening must treat them)."""
    if not grids:
        return []
    shape = next(iter(grids.values())).shape
    at_deposit = _cell_mask(shape, deposit_cells)
    if negative_cells is not None:
        usable = (at_deposit | _cell_mask(shape, negative_cells)).ravel()
    else:
        usable = None if known_cells is None or not len(known_cells) else \
            (at_deposit | ~_cell_mask(shape, known_cells)).ravel()
    values = {element: (grid.ravel(), at_deposit.ravel()) if usable is None
              else (grid.ravel()[usable], at_deposit.ravel()[usable]) for element, grid in grids.items()}
    return score_rows(values, level)


def _cell_mask(shape: tuple[int, int], cells) -> np.ndarray:
    cells = np.asarray(cells, np.int64).reshape(-1, 2)
    mask = np.zeros(shape, bool)
    mask[cells[:, 0], cells[:, 1]] = True
    return mask


def screen_elements(grids: dict[str, np.ndarray], deposit_cells: np.ndarray, settings: ScreeningSettings,
                    negative_cells: np.ndarray | None = None) -> list[dict]:
    """Grid level, decided: one row per element (auc, z_auc, positives, negatives, level, kept, reason)."""
    return decide(grid_rows(grids, deposit_cells, negative_cells), settings)


def sample_rows(values: dict[str, np.ndarray], sample_xy: np.ndarray, training_xy: np.ndarray,
                known_xy: np.ndarray, radius: float, barren_xy: np.ndarray | None = None) -> list[dict]:
    """Sample level (the paper), undecided rows. ``values[element]``: (n,) per sample, NaN where unusable;
    ``sample_xy`` (n, 2), ``training_xy`` / ``known_xy`` / ``barren_xy`` (m, 2) site coordinates in the same
    CRS (metres). Positives: samples within ``radius`` of a training deposit; negatives: the others, except those
    near a ``known_xy`` deposit, one the trial knows but does not train on (outside the study area, or on its
    training side without a window of its own: samples near it would be negatives that are not; a fold's held-out
    deposits are not among them, a blind screening cannot know them) — or, with ``barren_xy``, only those near a
    barren site."""
    from scipy.spatial import cKDTree

    sample_xy = np.asarray(sample_xy, np.float64).reshape(-1, 2)

    def near(points) -> np.ndarray:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        if not len(points) or not len(sample_xy):
            return np.zeros(len(sample_xy), bool)
        distance, _ = cKDTree(points).query(sample_xy, k=1)
        return distance <= radius

    positive = near(training_xy)
    usable = ~(near(known_xy) & ~positive) if barren_xy is None else positive | near(barren_xy)
    return score_rows({element: (v[usable], positive[usable]) for element, v in values.items()}, "samples")


def screen_samples(values: dict[str, np.ndarray], sample_xy: np.ndarray, training_xy: np.ndarray,
                   known_xy: np.ndarray, settings: ScreeningSettings,
                   barren_xy: np.ndarray | None = None) -> list[dict]:
    """Sample level, decided (``sample_rows`` then ``decide``)."""
    return decide(sample_rows(values, sample_xy, training_xy, known_xy, settings.sample_radius_m, barren_xy),
                  settings)


def score_rows(values: dict[str, tuple[np.ndarray, np.ndarray]], level: str) -> list[dict]:
    """Rows from (values, is-positive) per element or layer: AUC and Z_AUC (Eq. 1-3); ``level`` says where they
    were measured (samples, grid, raster)."""
    rows = []
    for element, (value, at_deposit) in values.items():
        valid = np.isfinite(value)
        positive = at_deposit & valid
        positives, negatives = int(positive.sum()), int((valid & ~positive).sum())
        row = {"element": element, "auc": None, "z_auc": None, "rank_z": None, "positives": positives,
               "negatives": negatives, "level": level}
        if positives and negatives:
            auc = roc_auc(value[valid], positive[valid])
            z = auc_z_score(auc, positives, negatives)
            row.update(auc=round(auc, 4), z_auc=round(z, 3),
                       rank_z=round(rank_test_z(value[positive], value[valid & ~positive]), 3))
        rows.append(row)
    return rows


def rank_test_z(positives: np.ndarray, negatives: np.ndarray) -> float:
    """The Mann-Whitney rank test of the same AUC (scipy), as a signed normal z: the one-sided p of the positives
    ranking above the negatives, as the z it is the upper tail of (negative when they rank below); 0 when every
    value is tied. Exact for untied values whose U lies within 10,000 pairs of its bound (the far tails, where the
    normal approximation fails with few positives, and where the exact distribution is quick: its cost grows with
    that distance), else the normal approximation with tie correction. Unlike Eq. 3's plug-in standard error, its
    null distribution holds with few positives (1 above all 1000 negatives: z 3.1, where Eq. 3 gives Z_AUC 22), so
    ``decide`` uses it to flag Z_AUC that rest on few positives."""
    from scipy.stats import mannwhitneyu, norm

    pooled = np.concatenate([positives, negatives])
    if pooled.min() == pooled.max():
        return 0.0
    pairs = len(positives) * len(negatives)
    approximate = mannwhitneyu(positives, negatives, alternative="greater", method="asymptotic")
    tail = min(approximate.statistic, pairs - approximate.statistic)
    exact = tail <= 10_000 and len(np.unique(pooled)) == len(pooled)
    above = (mannwhitneyu(positives, negatives, alternative="greater", method="exact").pvalue if exact
             else approximate.pvalue)
    if above <= 0.5:
        return float(norm.isf(max(above, 1e-300)))  # a p of 0 (underflowed) stays a finite z
    # ranking below: the lower tail's own p (an exact distribution's upper tail is 1 at its bottom, not a z)
    below = mannwhitneyu(positives, negatives, alternative="less", method="exact" if exact else "asymptotic").pvalue
    return -float(norm.isf(max(below, 1e-300)))


def decide(rows: list[dict], settings: ScreeningSettings) -> list[dict]:
    """The keep decision over every candidate together (elements and screened layers compete for
    ``max_elements``): significant by Z_AUC, strongest first; ``always`` kept. A row kept where its rank test
    (``rank_z``) falls short of ``critical_z`` is ``weak``, with a caveat in its reason."""
    significant = [r for r in rows if r["z_auc"] is not None and
                   (r["z_auc"] >= settings.critical_z or (settings.two_sided and r["z_auc"] <= -settings.critical_z))]
    significant.sort(key=lambda r: -abs(r["z_auc"]))
    chosen = {r["element"] for r in significant[: settings.max_elements or len(significant)]}
    score = "|Z_AUC|" if settings.two_sided else "Z_AUC"
    for row in rows:
        row["weak"] = False  # kept on Eq. 3's Z where the rank test falls short (set below)
        if row["element"] in settings.always and row["negatives"] > 0:
            row.update(kept=True, reason="always kept (config)")
        elif row["z_auc"] is None:
            row.update(kept=False, reason="no values at all" if row["positives"] + row["negatives"] == 0
                       else "no values at deposits" if row["positives"] == 0 else "no values away from deposits")
        elif row["element"] in chosen:
            caveat = _weak_evidence(row, settings)
            row.update(kept=True, weak=bool(caveat), reason=f"{score} >= {settings.critical_z}{caveat}")
        elif row in significant:
            row.update(kept=False, reason=f"significant, but beyond max_elements={settings.max_elements}")
        else:
            row.update(kept=False, reason=f"{score} < {settings.critical_z}")
    return rows


def _weak_evidence(row: dict, settings: ScreeningSettings) -> str:
    """For a kept row: a caveat when the rank test of its AUC (``rank_z``) falls short of ``critical_z`` where Eq.
    3 passes it (few positives: Eq. 3's plug-in standard error is anti-conservative), else nothing. The paper's
    rule still decides; the caveat says how little evidence it had."""
    rank_z = row.get("rank_z")
    if rank_z is None or (abs(rank_z) if settings.two_sided else rank_z) >= settings.critical_z:
        return ""
    return (f"; weak: the rank test gives z {rank_z:.2f} with {row['positives']} positive"
            f"{'' if row['positives'] == 1 else 's'}")


def weakly_kept(rows: list[dict]) -> list[dict]:
    """Kept rows whose rank test fell short of ``critical_z`` (``weak``; ``_weak_evidence``'s caveat in their
    reason)."""
    return [r for r in rows if r.get("weak")]


def format_table(rows: list[dict]) -> str:
    """The screening table as aligned text, for the log and the terminal."""
    width = max([10] + [len(r["element"]) + 2 for r in rows])
    lines = [f"{'element':<{width}}{'AUC':>8}{'Z_AUC':>9}{'positives':>10}{'negatives':>10}  {'level':<8}kept  reason"]
    for r in rows:
        auc = f"{r['auc']:.3f}" if r["auc"] is not None else "-"
        z = f"{r['z_auc']:.2f}" if r["z_auc"] is not None else "-"
        lines.append(f"{r['element']:<{width}}{auc:>8}{z:>9}{r['positives']:>10}{r['negatives']:>10}  "
                     f"{r.get('level', ''):<8}"
                     f"{'yes' if r['kept'] else 'no ':<4}  "
                     f"{r['reason']}")
    return "\n".join(lines)
