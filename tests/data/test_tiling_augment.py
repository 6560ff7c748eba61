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
