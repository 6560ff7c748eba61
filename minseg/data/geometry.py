"""Label geometry for training items: rasterised polygons, image + mask rescaling."""

from __future__ import annotations

import numpy as np


def rasterize_polygons(height: int, width: int, shapes: list[tuple[int, list[list[float]]]], background: int = 0,
                       scale: float = 1.0) -> np.ndarray:
    """Fill polygons (code, [ring, ...] with flat [x0, y0, x1, y1, ...] rings) into an int32 mask, in order, as
    Pillow fills them (Labelme's own rule: the outline's pixels included)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("I", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for code, rings in shapes:
        for ring in rings:
            points = [(float(ring[i]) * scale, float(ring[i + 1]) * scale) for i in range(0, len(ring) - 1, 2)]
            if len(points) >= 3:
                draw.polygon(points, fill=int(code))
    return np.array(canvas, dtype=np.int32)  # a writable copy: RLE masks are painted on top


def coco_polygon_mask(height: int, width: int, rings: list[list[float]]) -> np.ndarray:
    """(H, W) bool: one COCO object's polygons (flat [x0, y0, ...] rings in pixel-edge coordinates; rings of fewer
    than 3 points skipped) filled as the COCO API fills them (pycocotools' ``frPyObjects`` / ``decode``): a pixel is
    inside when its centre is. Pillow's fill, which Labelme uses (``rasterize_polygons``), also paints every pixel
    the outline touches: a 3 x 3 px square from (1, 1) to (4, 4) became 4 x 4, small particles grew most, and
    polygons disagreed with the RLE masks beside them."""
    from pycocotools import mask as coco_mask

    usable = [[float(v) for v in ring] for ring in rings if len(ring) >= 6]
    if not usable:
        return np.zeros((height, width), bool)
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(usable, height, width))).astype(bool)


def resize_image(image: np.ndarray, size: tuple[int, int], resample, box=None) -> np.ndarray:
    """An (H, W) or (H, W, C) uint8 image resized by Pillow to ``size`` (width, height), from ``box`` (sub-pixel,
    in source pixels) when given; C other than 3 (grey, a scene's stacked channels) plane by plane."""
    from PIL import Image

    if image.ndim == 3 and image.shape[2] != 3:
        return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize(size, resample, box))
                         for c in range(image.shape[2])], axis=2)
    return np.asarray(Image.fromarray(image).resize(size, resample, box))


def classification_input(image: np.ndarray, size: int) -> np.ndarray:
    """What a classifier sees of an (H, W, C) uint8 image, any C: the whole image squashed to (size, size, C),
    bilinear. Training, evaluation and the normalisation statistics all read this, so the statistics describe the
    very pixels the model is fed."""
    from PIL import Image

    return resize_image(image, (size, size), Image.Resampling.BILINEAR)


def resize_pair(image: np.ndarray, mask: np.ndarray | None, scale: float):
    """Rescale an image (area/bilinear; (H, W, C) any C) and its mask (nearest)."""
    if scale == 1.0:
        return image, mask
    from PIL import Image

    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    image = resize_image(image, size, resample)
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return image, mask
