"""Applying trained members to images: tiling, blending of probabilities, test-time augmentation."""
