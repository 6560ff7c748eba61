"""Windows, spatial folds (no train/test overlap), training-only statistics and balancing."""

import numpy as np
import pytest

from minseg.geo.config import ProspectInputError
from minseg.geo.windows import EvidenceStack, Fold, balance, footprint, make_windows, spatial_folds, thin_folds


def _footprints_overlap(a, b, size):
    ar0, ar1, ac0, ac1 = footprint(a[0], a[1], size)
    br0, br1, bc0, bc1 = footprint(b[0], b[1], size)
    return ar0 < br1 and br0 < ar1 and ac0 < bc1 and bc0 < ac1


def _distance_to_segments(window, points):
    """The largest-coordinate distance from ``window`` (flat) to the nearest segment between two distinct ``points``
    (rows): 0 where SMOTE could have made it."""
    best = np.inf
    for i in range(len(points)):
        for j in range(len(points)):
            if i != j:
                direction = points[j] - points[i]
                lam = np.clip((window - points[i]) @ direction / (direction @ direction), 0, 1)
                best = min(best, np.abs(points[i] + lam * direction - window).max())
    return best


@pytest.mark.parametrize("seed", range(6))
def test_no_training_window_overlaps_a_test_window(seed):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(60, 120, 2)
    study = np.ones((rows, cols), bool)
    study[: rng.integers(0, 20), :] = False  # an irregular study area
    deposits = np.column_stack([rng.integers(0, rows, 14), rng.integers(0, cols, 14)])
    deposits = deposits[study[deposits[:, 0], deposits[:, 1]]]
    size, folds_wanted = int(rng.choice([8, 12, 16])), 3
    windows = make_windows(study, deposits, size, stride=4, block=2 * size, negative_buffer=size // 2,
                           max_negatives=400, rng=rng)
    try:
        folds = spatial_folds(windows, folds_wanted, size, study.shape, 2 * size)
    except ProspectInputError:
        pytest.skip("too few deposit blocks for this draw")
    tested = np.zeros(len(windows), int)
    for fold in folds:
        test = list(zip(fold.test.rows, fold.test.cols))
        train = list(zip(fold.train.rows, fold.train.cols))
        assert not any(_footprints_overlap(t, s, size) for t in test for s in train), "a shared pixel"
        assert set(fold.test.blocks.tolist()).isdisjoint(fold.train.blocks.tolist())
        assert len(fold.train) + len(fold.test) + fold.dropped_for_overlap == len(windows)
        # folds are compact bands, so the overlap rule costs only a margin along their borders
        assert fold.dropped_for_overlap < 0.5 * (len(windows) - len(fold.test))
        for r, c in test:
            tested[np.flatnonzero((windows.rows == r) & (windows.cols == c))] += 1
    assert (tested >= 1).all(), "every window is a test window in some fold"
    positives = [int(f.test.labels.sum()) for f in folds]
    assert min(positives) >= 1, "stratified: every fold tests some deposits"


def test_positives_sit_on_deposits_and_negatives_keep_away():
    study = np.ones((50, 50), bool)
    deposits = np.array([[10, 10], [40, 30]])
    windows = make_windows(study, deposits, 8, 2, 16, negative_buffer=5, max_negatives=None,
                           rng=np.random.default_rng(0))
    assert windows.labels[:2].tolist() == [1, 1] and windows.rows[:2].tolist() == [10, 40]
    negatives = windows.take(windows.labels == 0)
    for r, c in deposits:
        assert (np.maximum(np.abs(negatives.rows - r), np.abs(negatives.cols - c)) > 5).all()


def test_too_few_deposit_blocks_for_the_folds():
    study = np.ones((40, 40), bool)
    windows = make_windows(study, np.array([[5, 5]]), 8, 4, 16, 4, None, np.random.default_rng(0))
    with pytest.raises(ProspectInputError, match="fewer than folds=3"):
        spatial_folds(windows, 3, 8, study.shape, 16)


def test_a_fold_left_a_handful_of_training_or_test_windows_is_called_thin():
    """Deposits clustered along the top of the region: the first band, holding half of them, is a sliver of the region
    (a handful of test windows: its accuracy and AUC rest on a few negatives), and the fold that tests the empty rest
    trains on that sliver's few windows; a spread of deposits gives no thin fold."""
    study = np.ones((64, 64), bool)
    clustered = np.array([[2, 4], [3, 20], [2, 40], [4, 58], [10, 10], [12, 50]])
    windows = make_windows(study, clustered, 8, 4, 16, 4, None, np.random.default_rng(0))
    folds = spatial_folds(windows, 2, 8, study.shape, 16)
    first, second = thin_folds(windows, folds)
    even = round(len(windows) / 2)
    assert first["fold"] == 1 and first["sides"] == ["held-out"] and first["test_windows"] == len(folds[0].test)
    assert first["test_windows"] < even / 3 and first["even_split_test_windows"] == even
    assert second["fold"] == 2 and second["sides"] == ["training"] and second["train_windows"] == len(folds[1].train)
    assert second["train_windows"] < even / 3 and second["even_split_train_windows"] == even
    assert "prospect.cv.folds" in second["advice"]
    spread = np.array([[5, 5], [5, 50], [30, 30], [50, 10], [55, 55], [20, 45]])
    windows = make_windows(study, spread, 8, 4, 16, 4, None, np.random.default_rng(0))
    assert thin_folds(windows, spatial_folds(windows, 2, 8, study.shape, 16)) == []
    # three folds: one whose held-out side alone is cut to a few windows (its training side untouched)
    folds = spatial_folds(windows, 3, 8, study.shape, 16)
    assert thin_folds(windows, folds) == []
    few = folds[2].test.take(np.arange(len(folds[2].test)) < 6)
    folds[2] = Fold(folds[2].index, folds[2].train, few, folds[2].dropped_for_overlap)
    (thin,) = thin_folds(windows, folds)
    assert thin["fold"] == 3 and thin["sides"] == ["held-out"] and thin["test_windows"] == 6
    assert thin["even_split_test_windows"] == round(len(windows) / 3)


def test_statistics_come_from_training_cells_only():
    data = np.ones((2, 10, 10), np.float32)
    data[0, :, 5:] = 1000.0  # the test side holds extreme values
    data[1] = np.arange(100, dtype=np.float32).reshape(10, 10)
    train = np.zeros((10, 10), bool)
    train[:, :5] = True
    stack = EvidenceStack(["a", "b"], data, np.ones((10, 10), bool), categorical={"b"})
    stats = stack.statistics(train)
    assert stats["mean"][0] == 1.0 and stats["std"][0] == 1.0  # constant on the training side: std -> 1
    assert stats["mean"][1] == 0.0 and stats["std"][1] == 1.0  # one-hot channels are not standardised
    padded = stack.normalised(stats, pad=2)
    assert padded.shape == (14, 14, 2) and padded[0, 0, 0] == 0.0


def test_smote_and_noise_only_use_the_training_positives():
    rng = np.random.default_rng(0)
    train_pos = rng.normal(0, 1, (6, 4, 4, 2)).astype(np.float32)
    train_neg = rng.normal(5, 1, (30, 4, 4, 2)).astype(np.float32)
    x = np.concatenate([train_pos, train_neg])
    y = np.array([1] * 6 + [0] * 30)
    balanced_x, balanced_y, report = balance(x, y, positive_ratio=1.0, noise_variance=0.0, noise_copies=0, rng=rng)
    assert report["smote"] == 24 and (balanced_y == 1).sum() == 30
    flat = train_pos.reshape(6, -1)
    for synthetic in balanced_x[36:].reshape(24, -1):  # each on a segment between two training positives
        assert _distance_to_segments(synthetic, flat) < 1e-4
    noisy_x, noisy_y, report = balance(x, y, 1.0, noise_variance=0.01, noise_copies=1, rng=rng)
    assert report["noise"] == 30 and len(noisy_x) == 36 + 24 + 30
    originals = noisy_x[:60][noisy_y[:60] == 1]  # the 30 positives (6 real + 24 SMOTE), copied with noise
    assert abs(np.std(noisy_x[60:] - originals) - np.sqrt(0.01)) < 0.01


def test_a_bootstrap_sample_is_balanced_with_smote_between_distinct_positives():
    """A bagged member's windows drawn with replacement: counts use the draws, SMOTE never pairs a window with its
    own copy (which would add that copy again, not a new window)."""
    rng = np.random.default_rng(1)
    pos = rng.normal(0, 1, (4, 4, 4, 2)).astype(np.float32)
    neg = rng.normal(5, 1, (10, 4, 4, 2)).astype(np.float32)
    x, y = np.concatenate([pos, neg]), np.array([1] * 4 + [0] * 10)
    times = np.array([3, 3, 2, 0] + [4] * 10)  # positive 3 left out; 8 positive and 40 negative draws
    balanced_x, balanced_y, report = balance(x, y, 1.0, 0.0, 0, np.random.default_rng(0), times)
    assert report == {"positives": 8, "negatives": 40, "smote": 32, "noise": 0}
    assert len(balanced_x) == 48 + 32 and (balanced_y == 1).sum() == 40
    assert np.array_equal(balanced_x[:48], np.repeat(x, times, axis=0))  # the draws first, in order
    flat, synthetic = pos[:3].reshape(3, -1), balanced_x[48:].reshape(32, -1)
    nearest = np.abs(synthetic[:, None] - flat[None]).max(-1).min(1)
    assert (nearest > 1e-3).all()  # none is a copy of a drawn positive
    left_out = pos[3].reshape(-1)  # and none lies towards the positive the sample left out
    for window in synthetic:
        assert _distance_to_segments(window, flat) < 1e-4 and np.abs(window - left_out).max() > 1e-3
    # one distinct positive drawn twice: nothing to interpolate between (as with one positive unbagged)
    one = np.array([2, 0, 0, 0] + [4] * 10)
    _, _, report = balance(x, y, 1.0, 0.0, 0, np.random.default_rng(0), one)
    assert report["smote"] == 0 and report["positives"] == 2
