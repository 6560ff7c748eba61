"""The stitcher on its own: seam proof, any arrival order, edge tiles, small and thin images."""

import numpy as np
import pytest
import torch
from torch import nn

from minseg.enums import Uncertainty
from minseg.ensemble.sliding import TileGrid, normalise, tile_probabilities
from minseg.inference.stitch import Stitcher

MEAN, STD = [120.0, 110.0, 100.0], [60.0, 55.0, 50.0]


class ConvNet(nn.Module):
    """Fully convolutional, receptive field 5x5: away from a tile's edge a tile sees what the whole image sees."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, classes, 3, padding=1))

    def forward(self, x):
        return self.body(x) * 4  # sharper softmax: more decisive labels


def stitch(image, model, tile, overlap, order=None, classes=4, output_tile=32, uncertainty=Uncertainty.ENTROPY):
    """Run tiles of ``image`` through ``model`` and the stitcher, in ``order``; returns (labels, uncertainty, probs)."""
    height, width = image.shape[:2]
    grid = TileGrid(height, width, tile, overlap)
    padded = np.zeros((grid.padded_height, grid.padded_width, 3), np.uint8)
    padded[...] = np.round(MEAN).astype(np.uint8)
    padded[:height, :width] = image
    labels = np.full((height, width), 255, np.uint8)
    uncert = np.zeros((height, width), np.uint8)
    probs = np.full((classes, height, width), np.nan, np.float32)
    emitted = []

    def on_tile(top, left, tile_labels, tile_uncertainty):
        emitted.append((top, left))
        assert tile_labels.shape == (min(output_tile, height - top), min(output_tile, width - left))
        labels[top : top + tile_labels.shape[0], left : left + tile_labels.shape[1]] = tile_labels
        uncert[top : top + tile_labels.shape[0], left : left + tile_labels.shape[1]] = tile_uncertainty

    def on_scores(top, left, scores):
        probs[:, top : top + scores.shape[1], left : left + scores.shape[2]] = scores

    stitcher = Stitcher(grid, classes, uncertainty, output_tile, on_tile, on_scores)
    tiles = [(r, c) for r in range(grid.rows) for c in range(grid.cols)]
    for index in order if order is not None else range(len(tiles)):
        r, c = tiles[index]
        y, x = grid.ys[r], grid.xs[c]
        batch = normalise(padded[None, y : y + tile, x : x + tile], MEAN, STD, "cpu")
        scores = tile_probabilities(model, batch)[0].numpy().astype(np.float16)  # what actors send
        stitcher.add(r, c, scores)
    assert stitcher.complete and not stitcher.cells and not stitcher.outputs and stitcher.live_bytes == 0
    expected = [(top, left) for top in range(0, height, output_tile) for left in range(0, width, output_tile)]
    assert emitted == expected, "output tiles leave in row-major order, each once"
    return labels, uncert, probs


def whole_image(image, model):
    with torch.no_grad():
        return tile_probabilities(model, normalise(image[None], MEAN, STD, "cpu"))[0].numpy()


def test_stitched_equals_a_whole_image_pass_away_from_the_borders():
    rng = np.random.default_rng(1)
    image = (rng.random((150, 170, 3)) * 255).astype(np.uint8)
    model = ConvNet().eval()
    labels, _, probs = stitch(image, model, tile=64, overlap=16)
    whole = whole_image(image, model)
    # everywhere, borders included: tiles snapped to the image edge pad it as the whole pass does
    difference = np.abs(probs - whole)
    assert difference.max() < 1e-3, difference.max()  # the fp16 that actors send
    expected = whole.argmax(0)
    margin = np.sort(whole, axis=0)[-1] - np.sort(whole, axis=0)[-2]
    disagree = labels != expected
    assert np.all(margin[disagree] < 2e-3), "labels differ only at fp16 near-ties"
    assert disagree.mean() < 1e-3


def test_without_margins_a_tile_edge_would_leak_into_the_result():
    """The proof above is not vacuous: predicting tiles alone differs from the whole pass at their edges."""
    rng = np.random.default_rng(1)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    model = ConvNet().eval()
    whole = whole_image(image, model)
    corner = whole_image(np.ascontiguousarray(image[:32, :32]), model)
    assert np.abs(corner[:, 31, :] - whole[:, 31, :32]).max() > 0.05


def test_result_is_bit_identical_whatever_order_tiles_arrive_in():
    rng = np.random.default_rng(2)
    image = (rng.random((130, 100, 3)) * 255).astype(np.uint8)
    model = ConvNet().eval()
    grid = TileGrid(130, 100, 48, 12)
    reference = stitch(image, model, 48, 12)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(grid))
        labels, uncertainty, probs = stitch(image, model, 48, 12, order=order)
        assert np.array_equal(labels, reference[0]) and np.array_equal(uncertainty, reference[1])
        assert np.array_equal(probs, reference[2])
    reverse = stitch(image, model, 48, 12, order=list(range(len(grid)))[::-1])
    assert np.array_equal(reverse[0], reference[0])


@pytest.mark.parametrize("shape", [(20, 30), (1, 200), (200, 1), (64, 64), (65, 129), (7, 7)])
def test_edge_tiles_small_images_and_one_pixel_wide_slides(shape):
    rng = np.random.default_rng(3)
    image = (rng.random(shape + (3,)) * 255).astype(np.uint8)
    model = ConvNet().eval()
    labels, uncertainty, probs = stitch(image, model, tile=32, overlap=8, output_tile=16)
    assert labels.shape == shape and not np.isnan(probs).any()
    assert labels.max() < 4
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=3e-3)
    grid = TileGrid(*shape, 32, 8)
    assert grid.ys[-1] + 32 == grid.padded_height and grid.xs[-1] + 32 == grid.padded_width  # snapped to the edge
    if shape == (1, 200):
        whole = whole_image(np.pad(image, ((0, 31), (0, 0), (0, 0)), constant_values=0), model)
        assert whole.shape[1] == 32  # sanity: padded like the stitcher pads (with the mean, not zero)


def test_a_tile_delivered_twice_counts_once():
    grid = TileGrid(40, 40, 32, 8)
    tiles = []
    stitcher = Stitcher(grid, 2, Uncertainty.DISAGREEMENT, 16, lambda top, left, l, u: tiles.append(l.copy()))
    scores = np.zeros((2, 32, 32), np.float16)
    scores[0] = 1
    stitcher.add(0, 0, scores)
    stitcher.add(0, 0, scores)  # Ray Data retried the task that produced it
    assert stitcher.tiles_done == 1
    for r in range(grid.rows):
        for c in range(grid.cols):
            stitcher.add(r, c, scores)
    assert stitcher.complete and len(tiles) == 9 and all((t == 0).all() for t in tiles)


def test_voting_tie_break_survives_blending():
    """Two members disagree everywhere with equal weight: the better-ranked one (index 0) must win."""
    from minseg.ensemble.voting import blend_dtype, fuse, fusion_scores

    probs = torch.zeros(2, 3, 32, 32)
    probs[0, 2] = 1.0  # rank 0 says class 2
    probs[1, 1] = 1.0  # rank 1 says class 1
    scores = fusion_scores(probs, "pv")
    expected, _ = fuse(probs, "pv")
    assert (expected == 2).all()
    grid = TileGrid(48, 48, 32, 16)
    out = np.zeros((48, 48), np.uint8)
    stitcher = Stitcher(grid, 3, Uncertainty.DISAGREEMENT, 48,
                        lambda top, left, labels, u: out.__setitem__(np.s_[top : top + 48, left : left + 48], labels))
    for r in range(grid.rows):
        for c in range(grid.cols):
            stitcher.add(r, c, scores.numpy().astype(blend_dtype("pv")))
    assert (out == 2).all()


def test_blended_votes_are_decided_by_their_shares_and_the_disagreement_is_the_winners_share():
    """The tie-break was worth up to a vote: blended 0.497 / 0.503 vote shares went to the minority, and
    1 - max(score) read 0.083 or 0.167 for a 2-1 split of 3 members (0.333), depending on who dissented."""
    from minseg.ensemble.voting import fusion_scores

    def votes(*labels):  # 3 members, 3 classes, one pixel: each member certain of its class
        probs = torch.zeros(3, 3, 1, 1)
        for m, label in enumerate(labels):
            probs[m, label] = 1.0
        return fusion_scores(probs, "pv").numpy()[:, 0, 0]

    for split in [(0, 1, 1), (1, 0, 1), (1, 1, 0)]:  # the top-ranked member in the minority or the majority
        scores = votes(*split)
        assert scores.argmax() == 1 and 1 - scores.max() == pytest.approx(1 / 3, abs=1e-4)
    assert votes(2, 1, 0).argmax() == 2  # a three-way tie: the best-ranked member's class
    blended = 0.51 * votes(0, 1, 1) + 0.49 * votes(0, 0, 1)  # shares 0.497 (class 0) and 0.503 (class 1)
    assert blended.argmax() == 1


def test_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ValueError, match="overlap"):
        TileGrid(100, 100, 32, 32)


def test_tile_starts_spread_the_slack_evenly():
    from minseg.data.tiling import spread_starts, tile_starts

    for length, tile, step in [(10000, 512, 448), (150, 64, 48), (65, 64, 48), (200, 32, 24), (1, 32, 24),
                               (40000, 512, 448), (1000, 256, 256)]:
        starts = spread_starts(length, tile, step)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert len(starts) == len(tile_starts(length, tile, step))
        overlaps = [a + tile - b for a, b in zip(starts, starts[1:])]
        assert all(o >= tile - step for o in overlaps)
        assert not overlaps or max(overlaps) - min(overlaps) <= 1, "no sliver of a last tile"


@pytest.mark.parametrize("shape, tile, overlap, block", [((150, 170), 48, 12, 32), ((150, 170), 48, 12, 64),
                                                          ((20, 30), 32, 8, 16), ((97, 64), 32, 8, 48)])
def test_regions_of_any_size_tile_the_whole_image_result_bit_for_bit(shape, tile, overlap, block):
    """The block pipeline's promise: stitching each block from the tiles that weigh on it (any order)
    gives exactly the whole-image stitch, labels, uncertainty and blended scores."""
    rng = np.random.default_rng(sum(shape))
    image = (rng.random(shape + (3,)) * 255).astype(np.uint8)
    model = ConvNet().eval()
    reference = stitch(image, model, tile, overlap, output_tile=16)
    height, width = shape
    grid = TileGrid(height, width, tile, overlap)
    padded = np.full((grid.padded_height, grid.padded_width, 3), np.round(MEAN).astype(np.uint8), np.uint8)
    padded[:height, :width] = image
    labels = np.full(shape, 255, np.uint8)
    probs = np.full((4, height, width), np.nan, np.float32)
    for top in range(0, height, block):
        for left in range(0, width, block):
            region = (top, min(height, top + block), left, min(width, left + block))

            def on_tile(y, x, tile_labels, _):
                assert region[0] <= y < region[1] and region[2] <= x < region[3]
                labels[y : y + tile_labels.shape[0], x : x + tile_labels.shape[1]] = tile_labels

            def on_scores(y, x, scores):
                probs[:, y : y + scores.shape[1], x : x + scores.shape[2]] = scores

            stitcher = Stitcher(grid, 4, Uncertainty.ENTROPY, 16, on_tile, on_scores, region=region)
            needed = stitcher.region_tiles
            assert len(needed) < len(grid) or len(grid) == 1
            for r, c in reversed(needed):
                y, x = grid.ys[r], grid.xs[c]
                batch = normalise(padded[None, y : y + tile, x : x + tile], MEAN, STD, "cpu")
                stitcher.add(r, c, tile_probabilities(model, batch)[0].numpy().astype(np.float16))
            assert stitcher.complete and not stitcher.cells and not stitcher.outputs
    assert np.array_equal(labels, reference[0])
    assert np.array_equal(probs, reference[2], equal_nan=False)


def test_a_region_must_start_on_the_output_grid():
    with pytest.raises(ValueError, match="output grid"):
        Stitcher(TileGrid(100, 100, 32, 8), 2, Uncertainty.ENTROPY, 16, lambda *a: None, region=(8, 40, 0, 32))
