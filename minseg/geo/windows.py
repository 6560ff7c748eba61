"""Evidence stack, labelled windows, spatial cross-validation folds and training-fold balancing.

Order matters for honest numbers: folds are cut (by spatial blocks larger than a window)
before anything is fitted; a training window whose footprint touches any test window's
footprint is dropped, so no pixel is shared between training and test windows; screening,
normalisation statistics, SMOTE and noise all see the training fold only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minseg.geo.config import BalanceSettings, ProspectInputError


@dataclass
class EvidenceStack:
    """(C, rows, cols) float32 evidence, NaN where a layer has no value; ``study`` marks the cells that count."""

    names: list[str]
    data: np.ndarray
    study: np.ndarray
    categorical: set[str] = field(default_factory=set)  # one-hot channels: 0/1, not standardised

    def subset(self, names: list[str]) -> "EvidenceStack":
        index = [self.names.index(n) for n in names]
        return EvidenceStack(list(names), self.data[index], self.study, self.categorical & set(names))

    def statistics(self, mask: np.ndarray) -> dict[str, list[float]]:
        """Mean and standard deviation of each channel over ``mask`` (training cells only)."""
        means, stds = [], []
        for name, channel in zip(self.names, self.data):
            values = channel[mask & np.isfinite(channel)]
            if name in self.categorical or values.size == 0:
                means.append(0.0)
                stds.append(1.0)
                continue
            means.append(float(values.mean()))
            stds.append(float(values.std()) or 1.0)
        return {"mean": means, "std": stds}

    def normalised(self, stats: dict[str, list[float]], pad: int) -> np.ndarray:
        """(rows + 2 pad, cols + 2 pad, C) float32, standardised, NaN and the border filled with 0 (the mean)."""
        mean = np.asarray(stats["mean"], np.float32)[:, None, None]
        std = np.asarray(stats["std"], np.float32)[:, None, None]
        values = np.nan_to_num((self.data - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
        values = np.pad(values, ((0, 0), (pad, pad), (pad, pad)))
        return np.ascontiguousarray(values.transpose(1, 2, 0))


def window_at(padded: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    """The (size, size, C) window centred on grid cell (row, col) of a stack padded by ``size // 2``."""
    return padded[row : row + size, col : col + size]


def footprint(row: int, col: int, size: int) -> tuple[int, int, int, int]:
    """Grid rows/cols [r0, r1) x [c0, c1) a window centred on (row, col) covers (may leave the grid)."""
    top, left = row - size // 2, col - size // 2
    return top, top + size, left, left + size


def footprint_mask(shape: tuple[int, int], rows, cols, size: int, margin: int = 0) -> np.ndarray:
    """Cells covered by windows centred on (rows, cols), on the grid grown by ``margin`` on every side."""
    covered = np.zeros((shape[0] + 2 * margin, shape[1] + 2 * margin), bool)
    for r, c in zip(rows, cols):
        r0, r1, c0, c1 = (v + margin for v in footprint(int(r), int(c), size))
        covered[max(0, r0) : max(0, r1), max(0, c0) : max(0, c1)] = True
    return covered


@dataclass
class Windows:
    rows: np.ndarray
    cols: np.ndarray
    labels: np.ndarray  # 1 = ore
    blocks: np.ndarray  # spatial block id of the centre
    deposit: np.ndarray  # index of the deposit a positive window is centred on, -1 for negatives

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index) -> "Windows":
        return Windows(self.rows[index], self.cols[index], self.labels[index], self.blocks[index], self.deposit[index])


def block_ids(rows: np.ndarray, cols: np.ndarray, block: int, grid_cols: int) -> np.ndarray:
    return (rows // block) * (-(-grid_cols // block)) + cols // block


def make_windows(study: np.ndarray, deposit_cells: np.ndarray, size: int, stride: int, block: int,
                 negative_buffer: int, max_negatives: int | None, rng: np.random.Generator,
                 negative_cells: np.ndarray | None = None) -> Windows:
    """Positives centred on each deposit cell; negatives on a lattice, away from every deposit given — or, when
    ``negative_cells`` (known barren cells) are given, centred on those (in the study area, not on a deposit
    cell; no buffer: the user's barren call is trusted).

    ``deposit_cells``: (n, 2) grid row/col of the deposits that may label windows (inside the grid).
    """
    rows, cols = study.shape
    if negative_cells is not None:
        candidates = np.asarray(negative_cells, np.int64).reshape(-1, 2)
        lattice_r, lattice_c = candidates[:, 0], candidates[:, 1]
        keep = study[lattice_r, lattice_c]
        if len(deposit_cells):
            on_deposit = np.zeros(study.shape, bool)
            on_deposit[tuple(np.asarray(deposit_cells, np.int64).reshape(-1, 2).T)] = True
            keep &= ~on_deposit[lattice_r, lattice_c]
    else:
        offset = stride // 2
        lattice_r, lattice_c = np.meshgrid(np.arange(offset, rows, stride), np.arange(offset, cols, stride),
                                           indexing="ij")
        lattice_r, lattice_c = lattice_r.ravel(), lattice_c.ravel()
        keep = study[lattice_r, lattice_c]
        if len(deposit_cells):
            near = np.zeros(len(lattice_r), bool)
            for dr, dc in deposit_cells:
                near |= (np.abs(lattice_r - dr) <= negative_buffer) & (np.abs(lattice_c - dc) <= negative_buffer)
            keep &= ~near
    neg_r, neg_c = lattice_r[keep], lattice_c[keep]
    if max_negatives is not None and len(neg_r) > max_negatives:
        chosen = np.sort(rng.choice(len(neg_r), max_negatives, replace=False))
        neg_r, neg_c = neg_r[chosen], neg_c[chosen]
    deposit_cells = np.asarray(deposit_cells, np.int64).reshape(-1, 2)
    pos_r, pos_c = deposit_cells[:, 0], deposit_cells[:, 1]
    all_r = np.concatenate([pos_r, neg_r]).astype(np.int64)
    all_c = np.concatenate([pos_c, neg_c]).astype(np.int64)
    labels = np.concatenate([np.ones(len(pos_r), np.int64), np.zeros(len(neg_r), np.int64)])
    deposit = np.concatenate([np.arange(len(pos_r)), np.full(len(neg_r), -1)]).astype(np.int64)
    return Windows(all_r, all_c, labels, block_ids(all_r, all_c, block, cols), deposit)


@dataclass
class Fold:
    index: int
    train: Windows
    test: Windows
    dropped_for_overlap: int


def spatial_folds(windows: Windows, folds: int, size: int, grid_shape: tuple[int, int], block: int) -> list[Fold]:
    """Contiguous fold regions, then per fold: test = windows centred in its blocks; train = the rest,
    minus any window overlapping a test window.

    Blocks are walked in a snake order (row by row, alternating direction) and cut into ``folds``
    runs holding about the same number of deposits (stratified), so each fold is one compact band
    of the region: scattered blocks would lose most training windows to the overlap rule.
    """
    if folds < 2:
        raise ProspectInputError("prospect.cv.folds must be at least 2")
    block_rows, block_cols = -(-grid_shape[0] // block), -(-grid_shape[1] // block)
    snake = [r * block_cols + (c if r % 2 == 0 else block_cols - 1 - c)
             for r in range(block_rows) for c in range(block_cols)]
    positives = np.bincount(windows.blocks[windows.labels == 1], minlength=block_rows * block_cols)
    holding = int((positives > 0).sum())
    if holding < folds:
        raise ProspectInputError(
            f"prospect.cv: only {holding} spatial block(s) hold deposits, fewer than folds={folds}; "
            "lower cv.folds or cv.block_cells")
    order = [b for b in snake if positives[b]]  # blocks holding deposits, in snake order
    cumulative = np.cumsum(positives[order])
    starts = [0]
    for f in range(1, folds):  # fold f starts after the block where f/folds of the deposits are reached
        share = int(np.searchsorted(cumulative, cumulative[-1] * f / folds, side="left")) + 1
        starts.append(min(max(share, starts[-1] + 1), len(order) - (folds - f)))
    fold_of_block = {b: int(np.searchsorted(starts, i, side="right")) - 1 for i, b in enumerate(order)}
    assignment, current = {}, 0
    for b in snake:  # blocks without deposits join the band they lie in
        current = fold_of_block.get(b, current)
        assignment[b] = current
    fold_of = np.array([assignment[b] for b in windows.blocks])
    result = []
    for k in range(folds):
        test = windows.take(np.flatnonzero(fold_of == k))
        covered = footprint_mask(grid_shape, test.rows, test.cols, size, margin=size)  # footprints leave the grid
        integral = np.pad(covered.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        candidates = np.flatnonzero(fold_of != k)
        clear = []
        for i in candidates:
            r0, r1, c0, c1 = footprint(windows.rows[i], windows.cols[i], size)
            r0, r1, c0, c1 = r0 + size, r1 + size, c0 + size, c1 + size
            if integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0] == 0:
                clear.append(i)
        train = windows.take(np.asarray(clear, np.int64))
        result.append(Fold(k, train, test, len(candidates) - len(clear)))
    return result


def extract(padded: np.ndarray, windows: Windows, size: int) -> np.ndarray:
    """(n, size, size, C) float32 windows."""
    return np.stack([window_at(padded, r, c, size) for r, c in zip(windows.rows, windows.cols)]) if len(windows) \
        else np.zeros((0, size, size, padded.shape[-1]), np.float32)


def balance_windows(train_x: np.ndarray, train_y: np.ndarray, settings: BalanceSettings,
                    rng: np.random.Generator, times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``balance`` under ``prospect.balance`` (SMOTE only when ``smote`` is on; a no-op when both are off)."""
    return balance(train_x, train_y, settings.positive_ratio if settings.smote else 0.0, settings.noise_variance,
                   settings.noise_copies, rng, times)


def balance(train_x: np.ndarray, train_y: np.ndarray, positive_ratio: float, noise_variance: float,
            noise_copies: int, rng: np.random.Generator,
            times: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """SMOTE (imbalanced-learn) on the training windows, then Gaussian-noise copies of every positive.

    Only the arrays passed in are ever seen: callers pass the training fold. SMOTE interpolates
    between a positive window and one of its k nearest positive neighbours, so every synthetic
    window lies on a segment between two training positives.

    Args:
        train_x: windows, float32 (N, H, W, C); train_y: labels (N,), 1 = deposit.
        positive_ratio: positives per negative wanted after SMOTE (0: no SMOTE).
        noise_variance, noise_copies: Gaussian-noise copies of every positive (after SMOTE).
        rng: draws SMOTE's seed and the noise.
        times: (N,) ints >= 0, how many times each window is in the training data (a bagged member's bootstrap
            draws; None: once each). Counts use them and the windows come out repeated, but SMOTE is fitted to the
            distinct windows: a positive's neighbours are other positives, never its own copies (a window
            interpolated towards its copy would be that copy again), and each distinct positive seeds synthetic
            windows alike, however often drawn. With fewer than two distinct positives no SMOTE window is made.

    Returns:
        (windows: the real ones (repeated by ``times``) first, then SMOTE's, then the noise copies; labels; report
        with ``positives`` / ``negatives`` counted with ``times``, and the ``smote`` and ``noise`` windows added).
    """
    if times is not None:
        kept = times > 0
        train_x, train_y, times = train_x[kept], train_y[kept], times[kept]
    weights = np.ones(len(train_y), np.int64) if times is None else np.asarray(times, np.int64)
    positives, negatives = int(weights[train_y == 1].sum()), int(weights[train_y == 0].sum())
    distinct = int((train_y == 1).sum())
    report = {"positives": positives, "negatives": negatives, "smote": 0, "noise": 0}
    target = int(round(negatives * positive_ratio))
    x, y = train_x, train_y
    if times is not None:
        x, y = np.repeat(train_x, weights, axis=0), np.repeat(train_y, weights)
    if distinct >= 2 and target > positives:
        from imblearn.over_sampling import SMOTE

        flat = train_x.reshape(len(train_x), -1)
        smote = SMOTE(sampling_strategy={1: distinct + target - positives}, k_neighbors=min(5, distinct - 1),
                      random_state=int(rng.integers(2**31)))
        resampled_x, resampled_y = smote.fit_resample(flat, train_y)
        synthetic = resampled_x[len(flat):].reshape((-1,) + train_x.shape[1:]).astype(np.float32)
        x = np.concatenate([x, synthetic])
        y = np.concatenate([y, resampled_y[len(flat):]])
        report["smote"] = len(synthetic)
    if noise_copies and noise_variance > 0:
        positive = x[y == 1]
        copies = [positive + rng.normal(0.0, np.sqrt(noise_variance), positive.shape).astype(np.float32)
                  for _ in range(noise_copies)]
        if copies:
            x = np.concatenate([x, *copies])
            y = np.concatenate([y, np.ones(sum(len(c) for c in copies), y.dtype)])
            report["noise"] = sum(len(c) for c in copies)
    return x.astype(np.float32, copy=False), y, report


THIN_FOLD = 1 / 3  # of an even split's side (real surveys: 0.54 on the GTK till, fold 1 of 4)


def thin_folds(windows: Windows, folds: list[Fold]) -> list[dict]:
    """Folds whose training side keeps under a third of what an even split would (k-1 of k parts of the windows, or
    of the deposits' windows), or whose held-out side does (1 of k parts): the spatial bands and the overlap rule can
    leave a fold a handful of training windows (a region whose deposits cluster at one end), and a band small in area
    holds few test windows, whose accuracy and AUC then rest on a few negatives. Either way the fold's held-out score
    says little about the method. Returned for a warning and the summary (``folds[].thin``, ``folds[].thin_sides``),
    not refused: the final maps train on every window."""
    k = len(folds)
    total, positives = len(windows), int(windows.labels.sum())
    thin = []
    for fold in folds:
        row, sides = {"fold": fold.index + 1}, []
        for side, key, part, share in (("training", "train", fold.train, (k - 1) / k),
                                       ("held-out", "test", fold.test, 1 / k)):
            kept, deposits = len(part), int(part.labels.sum())
            row |= {f"{key}_windows": kept, f"{key}_deposit_windows": deposits,
                    f"even_split_{key}_windows": round(total * share),
                    f"even_split_{key}_deposit_windows": round(positives * share)}
            if kept < THIN_FOLD * total * share or deposits < THIN_FOLD * positives * share:
                sides.append(side)
        if sides:
            thin.append({**row, "sides": sides, "advice": "its CV score says little: fewer folds (prospect.cv.folds) "
                                                           "or other blocks (prospect.cv.block_cells)"})
    return thin
