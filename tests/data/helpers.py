"""Small on-disk datasets built by the tests themselves."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from minseg.synth.sections import render_section


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_paired(root: Path, count: int = 4, size: int = 64, seed: int = 0) -> Path:
    for i in range(count):
        image, mask = render_section(seed + i, size, size)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        (root / "images" / f"s{i}.jpg").write_bytes(jpg_bytes(image))
        (root / "masks" / f"s{i}.png").write_bytes(png_bytes(mask))
    return root


def write_class_folders(root: Path) -> Path:
    """Two classes of 32 x 32 JPEG sections, six each, in folders named by class (``bright``, ``dark`` at a third
    of the brightness): the classification layout."""
    for label, seed in (("bright", 0), ("dark", 50)):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(6):
            image, _ = render_section(seed + i, 32, 32)
            (folder / f"{i}.jpg").write_bytes(jpg_bytes(image if label == "bright" else image // 3))
    return root


def write_voc(root: Path, count: int = 4, size: int = 64) -> Path:
    """VOC layout with palette masks, 255 borders and ImageSets lists."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i in range(count):
        image, mask = render_section(100 + i, size, size)
        mask = mask.copy()
        mask[0, :] = 255  # VOC's "void" border code
        (root / "JPEGImages" / f"2007_{i:06d}.jpg").write_bytes(jpg_bytes(image))
        palette_mask = Image.fromarray(mask, mode="L").convert("P")
        palette_mask.putpalette([c for i in range(256) for c in (i, 255 - i, (i * 7) % 256)])
        buffer = io.BytesIO()
        palette_mask.save(buffer, format="PNG")
        (root / "SegmentationClass" / f"2007_{i:06d}.png").write_bytes(buffer.getvalue())
    (root / "JPEGImages" / "2007_999999.jpg").write_bytes(jpg_bytes(image))  # no mask: not a segmentation item
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(f"2007_{i:06d}" for i in range(count - 1)))
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(f"2007_{count - 1:06d}\n")
    return root


def encode_rle(mask: np.ndarray) -> tuple[list[int], str]:
    """COCO RLE counts (column-major runs starting with zeros) and their compressed string."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    text = ""
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            text += chr(c + 48)
    return counts, text


def write_coco(root: Path, size: int = 48) -> tuple[Path, dict]:
    """Two images: one with a polygon + an uncompressed RLE, one with a compressed RLE."""
    (root / "train").mkdir(parents=True)
    blob = np.zeros((size, size), np.uint8)
    blob[30:40, 5:15] = 1
    counts, compressed = encode_rle(blob)
    images = []
    for i in range(2):
        image, _ = render_section(200 + i, size, size)
        (root / "train" / f"img{i}.jpg").write_bytes(jpg_bytes(image))
        images.append({"id": i, "file_name": f"img{i}.jpg", "height": size, "width": size})
    annotations = [
        {"id": 1, "image_id": 0, "category_id": 1, "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]], "iscrowd": 0},
        {"id": 2, "image_id": 0, "category_id": 2, "segmentation": {"counts": counts, "size": [size, size]}, "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 1, "segmentation": {"counts": compressed, "size": [size, size]}, "iscrowd": 1},
    ]
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": 0, "name": "objects"}, {"id": 1, "name": "plastic"}, {"id": 2, "name": "fibre"}]}
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(document))
    return root, {"polygon": (10, 10, 30, 20), "rle": blob}


def write_labelme(root: Path, size: int = 40) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    image, _ = render_section(300, size, size)
    (root / "a.png").write_bytes(png_bytes(image))
    shapes = [{"label": "pyrite", "points": [[5, 5], [20, 5], [20, 15], [5, 15]], "shape_type": "polygon"},
              {"label": "galena", "points": [[25, 25], [35, 35]], "shape_type": "rectangle"}]
    (root / "a.json").write_text(json.dumps({"imagePath": "a.png", "imageHeight": size, "imageWidth": size, "shapes": shapes}))
    return root
