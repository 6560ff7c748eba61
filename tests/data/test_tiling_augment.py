import numpy as np
import torch

from minseg.data.augment import augment_batch
from minseg.data.config import AugmentSettings
from minseg.data.tiling import extract_tile, tile_grid, tile_starts


def test_tile_starts_snap_to_the_edge():
    assert tile_starts(100, 32, 32) == [0, 32, 64, 68]
    assert tile_starts(96, 32, 32) == [0, 32, 64]
    assert tile_starts(100, 32, 22) == [0, 22, 44, 66, 68]  # the microplastic paper's overlap style
    assert tile_starts(20, 32, 32) == [0]
    assert len(tile_grid(100, 64, 32, 32)) == 4 * 2


def test_small_image_is_padded_with_fill():
    image = np.ones((10, 12, 3), np.uint8)
    tile = extract_tile(image, 0, 0, 16, 0)
    assert tile.shape == (16, 16, 3) and tile[:10, :12].all() and not tile[10:].any()
    mask = extract_tile(np.zeros((10, 12), np.uint8), 0, 0, 16, 255)
    assert (mask[10:] == 255).all() and (mask[:10, :12] == 0).all()


def paired_batch(n=6, size=8):
    torch.manual_seed(0)
    masks = torch.randint(0, 5, (n, size, size))
    images = torch.stack([masks.float(), masks.float() * 2, -masks.float()], 1)  # image encodes its mask
    return images, masks


def test_dihedral_keeps_images_and_masks_aligned_and_is_seeded():
    images, masks = paired_batch()
    settings = AugmentSettings(mode="dihedral")
    out_images, out_masks = augment_batch(images, masks, settings, torch.Generator().manual_seed(1))
    assert torch.equal(out_images[:, 0], out_masks.float())
    assert not torch.equal(out_masks, masks)
    again = augment_batch(images, masks, settings, torch.Generator().manual_seed(1))
    assert torch.equal(again[1], out_masks)
    views = {tuple(out_masks[i].flatten().tolist()) for i in range(6)}
    candidates = [masks[0], masks[0].flip(-1), masks[0].flip(-2)] + [torch.rot90(masks[0], k, (0, 1)) for k in (1, 2, 3)]
    assert all(any(torch.equal(out_masks[i], c) for c in
                   [masks[i], masks[i].flip(-1), masks[i].flip(-2)] + [torch.rot90(masks[i], k, (0, 1)) for k in (1, 2, 3)])
               for i in range(6))
    assert len(views) > 1 and len(candidates) == 6


def test_shift_rotate_fills_mean_and_ignore():
    images, masks = paired_batch(4, 32)
    images = images + 5  # non-zero everywhere, so zero-fill is visible
    settings = AugmentSettings(mode="shift_rotate", shift=0.2, rotate_degrees=45)
    out_images, out_masks = augment_batch(images, masks, settings, torch.Generator().manual_seed(3), ignore_index=255)
    outside = out_masks == 255
    assert outside.any()
    filled = out_images[:, 0][outside]
    # uncovered pixels take the mean (0 after normalisation); only the boundary band blends bilinearly
    assert (filled.abs() < 1e-5).float().mean() > 0.8
    assert filled.abs().mean() < 0.2 * out_images[:, 0][~outside].abs().mean()
    inside = ~outside
    assert set(out_masks[inside].unique().tolist()) <= set(range(5))


def test_photometric_jitter_scales_raw_intensities_by_bounded_gains():
    """exposure / colour: each tile's raw intensities (x * std + mean) are multiplied by one brightness gain in
    [1 - exposure, 1 + exposure] times a gain per channel in [1 - colour, 1 + colour]; masks and geometry are
    untouched, draws are seeded and differ between tiles; without the statistics it is refused."""
    import pytest

    torch.manual_seed(0)
    raw = torch.rand(16, 3, 8, 8) * 200 + 20
    mean, std = torch.tensor([110.0, 100.0, 90.0]), torch.tensor([60.0, 55.0, 50.0])
    images = (raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    masks = torch.randint(0, 4, (16, 8, 8))

    def gains(settings, seed=2):
        out, out_masks = augment_batch(images, masks, settings, torch.Generator().manual_seed(seed), mean=mean,
                                       std=std)
        assert torch.equal(out_masks, masks)
        ratio = (out * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)) / raw
        per_tile = ratio.mean(dim=(2, 3))  # (tiles, channels): one gain per tile and channel
        assert torch.allclose(ratio, per_tile[..., None, None].expand_as(ratio), atol=1e-4)
        return per_tile

    exposure = gains(AugmentSettings(mode="none", exposure=0.25))
    assert torch.allclose(exposure, exposure[:, :1].expand_as(exposure), atol=1e-4)  # same gain on every channel
    assert exposure.min() >= 0.75 - 1e-4 and exposure.max() <= 1.25 + 1e-4 and exposure[:, 0].std() > 0.05
    both = gains(AugmentSettings(mode="none", exposure=0.2, colour=0.1))
    assert both.min() >= 0.8 * 0.9 - 1e-4 and both.max() <= 1.2 * 1.1 + 1e-4
    assert (both.max(dim=1).values / both.min(dim=1).values).max() > 1.02  # channels drawn apart
    assert torch.equal(both, gains(AugmentSettings(mode="none", exposure=0.2, colour=0.1)))
    assert not torch.equal(both, gains(AugmentSettings(mode="none", exposure=0.2, colour=0.1), seed=3))
    plain = augment_batch(images, masks, AugmentSettings(mode="none"), torch.Generator().manual_seed(2))
    assert plain[0] is images  # off by default: nothing drawn, nothing changed
    with pytest.raises(ValueError, match="needs the normalisation mean and std"):
        augment_batch(images, masks, AugmentSettings(exposure=0.1), torch.Generator())


def test_scored_tiles_count_every_pixel_once():
    """Validation and test tiles overlap (tiling.step): their metrics counted a tile's interior up to four times
    and the image's border once. Each tile now scores the pixels nearer its centre than any other's."""
    from minseg.data.tiling import owned_spans, score_once

    for length, tile, step in [(100, 32, 24), (64, 64, 48), (20, 32, 24), (1364, 256, 156), (97, 32, 32)]:
        starts = tile_starts(length, tile, step)
        spans = owned_spans(starts, tile, length)
        assert spans[0][0] == 0 and spans[-1][1] == max(length, tile)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # a partition of the axis
        assert all(s <= lo < hi <= s + tile for s, (lo, hi) in zip(starts, spans))  # inside its own tile
    # tiles further apart than a tile (stride > size): each owns itself whole, the gaps nobody
    assert owned_spans(tile_starts(400, 100, 150), 100, 400) == [(0, 100), (150, 250), (300, 400)]
    ids = np.random.default_rng(0).integers(0, 3, (100, 90)).astype(np.uint8)
    rows, cols = tile_starts(100, 32, 24), tile_starts(90, 32, 24)
    row_spans, col_spans = owned_spans(rows, 32, 100), owned_spans(cols, 32, 90)
    counted = np.zeros((100, 90), int)
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            mask = score_once(extract_tile(ids, y, x, 32, 255), y, x, row_spans[i], col_spans[j], 255)
            kept = mask != 255
            counted[y : y + 32, x : x + 32] += kept
            assert (mask[kept] == ids[y : y + 32, x : x + 32][kept]).all()
    assert (counted == 1).all()
