"""Dataset layouts -> items. An item is a plain dict (it travels through Ray Data):

``item_id``, ``source_id`` (what splits group by), ``where`` (for reports), ``image`` /
``image_name`` (ref + file name), and one of ``mask`` / ``mask_name``, ``polygons`` +
``size`` (COCO / Labelme, codes per polygon; unannotated pixels are code 0), or
``label`` (class folders). ``layout_split`` carries a split the layout itself names
(VOC ImageSets lists, COCO train/valid/test folders).
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict

from minseg.data.containers import Container, Rejected, read_ref
from minseg.enums import DatasetLayout
from minseg.io.storage import Storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES) and not posixpath.basename(path).startswith(".")


def _find_root(members: list[str], *folders: str) -> str | None:
    """The prefix under which all ``folders`` exist (``""`` or ``"some/dir/"``)."""
    roots = defaultdict(set)
    for name in members:
        parts = name.split("/")
        for depth in range(len(parts) - 1):
            if parts[depth] in folders:
                roots["/".join(parts[:depth]) + ("/" if depth else "")].add(parts[depth])
    candidates = sorted((r for r, found in roots.items() if set(folders) <= found), key=len)
    return candidates[0] if candidates else None


def detect_layout(container: Container, images_dir: str = "images", masks_dir: str = "masks",
                  storage: Storage | None = None) -> DatasetLayout:
    members = list(container.members)
    if _find_root(members, "JPEGImages", "SegmentationClass") is not None:
        return DatasetLayout.VOC
    if _find_root(members, images_dir, masks_dir) is not None:
        return DatasetLayout.PAIRED
    jsons = [m for m in members if m.lower().endswith(".json")]
    if any("coco" in m.lower() or posixpath.basename(m).startswith("instances") for m in jsons):
        return DatasetLayout.COCO
    images = [m for m in members if _is_image(m)]
    if jsons and storage is not None:
        sample = json.loads(read_ref(container.members[jsons[0]], storage))
        if isinstance(sample, dict) and "images" in sample and "annotations" in sample:
            return DatasetLayout.COCO
        if isinstance(sample, dict) and "shapes" in sample:
            return DatasetLayout.LABELME
    parents = {posixpath.dirname(m) for m in images}
    if images and len(parents) >= 2 and all(posixpath.dirname(m) for m in images):
        return DatasetLayout.CLASS_FOLDERS
    raise ValueError(
        f"{container.uri}: cannot recognise the dataset layout (looked for VOC JPEGImages/ + SegmentationClass/, "
        f"{images_dir}/ + {masks_dir}/, COCO or Labelme JSON, and one folder per class); set 'layout' explicitly"
    )


def _item(container: Container, name_prefix: str, image: str, **extra) -> dict:
    stem = _stem(image)
    return {
        "item_id": f"{name_prefix}/{extra.pop('item_key', stem)}",
        "source_id": f"{name_prefix}/{extra.pop('source_key', stem)}",
        "where": container.describe(image),
        "image": container.members[image],
        "image_name": image,
        "mask": None,
        "mask_name": None,
        "polygons": None,
        "size": None,
        "label": None,
        "layout_split": None,
        **extra,
    }


def paired_items(container: Container, prefix: str, images_dir: str, masks_dir: str) -> tuple[list[dict], list[Rejected]]:
    root = _find_root(list(container.members), images_dir, masks_dir)
    if root is None:
        raise ValueError(f"{container.uri}: no {images_dir}/ and {masks_dir}/ folders")
    images = {_stem(m): m for m in container.members if m.startswith(f"{root}{images_dir}/") and _is_image(m)}
    masks = {_stem(m): m for m in container.members
             if m.startswith(f"{root}{masks_dir}/") and m.lower().endswith(MASK_SUFFIXES)}
    items, rejected = [], []
    for stem in sorted(images):
        if stem in masks:
            items.append(_item(container, prefix, images[stem], mask=container.members[masks[stem]], mask_name=masks[stem]))
        else:
            rejected.append(Rejected(container.describe(images[stem]), f"no mask {masks_dir}/{stem}.* for this image"))
    for stem in sorted(set(masks) - set(images)):
        rejected.append(Rejected(container.describe(masks[stem]), f"mask without an image {images_dir}/{stem}.*"))
    return items, rejected


def voc_items(container: Container, prefix: str, storage: Storage) -> tuple[list[dict], list[Rejected]]:
    root = _find_root(list(container.members), "JPEGImages", "SegmentationClass")
    images = {_stem(m): m for m in container.members if m.startswith(f"{root}JPEGImages/") and _is_image(m)}
    masks = {_stem(m): m for m in container.members if m.startswith(f"{root}SegmentationClass/")
             and m.lower().endswith(MASK_SUFFIXES)}
    listed: dict[str, str] = {}
    for name in container.members:
        if name.startswith(f"{root}ImageSets/Segmentation/") and name.endswith(".txt"):
            split = _SPLIT_ALIASES.get(_stem(name))
            if split:
                for line in read_ref(container.members[name], storage).decode().split():
                    listed[line.strip()] = split
    items, rejected = [], []
    for stem in sorted(masks):
        if stem not in images:
            rejected.append(Rejected(container.describe(masks[stem]), f"mask without an image JPEGImages/{stem}.jpg"))
            continue
        items.append(_item(container, prefix, images[stem], mask=container.members[masks[stem]],
                           mask_name=masks[stem], layout_split=listed.get(stem)))
    for stem in sorted(set(listed) - set(masks)):
        rejected.append(Rejected(f"{container.uri}!{root}ImageSets/Segmentation", f"lists {stem!r}, which has no mask"))
    return items, rejected


def _folder_split(path: str) -> str | None:
    for part in reversed(posixpath.dirname(path).split("/")):
        if part.lower() in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[part.lower()]
    return None


def decode_coco_rle(counts, height: int, width: int):
    """COCO RLE (list of run lengths, or the compressed string form) -> uint8 mask."""
    import numpy as np

    if isinstance(counts, str):
        runs, position = [], 0
        while position < len(counts):
            value, shift, more = 0, 0, True
            while more:
                char = ord(counts[position]) - 48
                value |= (char & 0x1F) << (5 * shift)
                more = bool(char & 0x20)
                position += 1
                shift += 1
                if not more and (char & 0x10):
                    value |= -1 << (5 * shift)
            if len(runs) > 2:
                value += runs[-2]
            runs.append(value)
        counts = runs
    flat = np.zeros(height * width, dtype=np.uint8)
    position, value = 0, 0
    for run in counts:
        flat[position : position + run] = value
        position += run
        value = 1 - value
    return flat.reshape((width, height)).T  # column-major


def coco_items(container: Container, prefix: str, storage: Storage) -> tuple[list[dict], list[Rejected]]:
    items, rejected = [], []
    annotation_files = [m for m in container.members if m.lower().endswith(".json")]
    for json_name in sorted(annotation_files):
        try:
            document = json.loads(read_ref(container.members[json_name], storage))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            rejected.append(Rejected(container.describe(json_name), f"not valid JSON ({exc})"))
            continue
        if not isinstance(document, dict) or "images" not in document or "annotations" not in document:
            continue
        folder = posixpath.dirname(json_name)
        by_image = defaultdict(list)
        for annotation in document["annotations"]:
            by_image[annotation.get("image_id")].append(annotation)
        for entry in document["images"]:
            image = posixpath.normpath(posixpath.join(folder, entry["file_name"]))
            where = container.describe(image)
            if image not in container.members:
                rejected.append(Rejected(where, f"listed in {json_name} but missing"))
                continue
            shapes, problem = [], None
            for annotation in by_image.get(entry["id"], []):
                segmentation = annotation.get("segmentation")
                code = int(annotation["category_id"])
                if isinstance(segmentation, list):
                    shapes.append((code, [list(map(float, ring)) for ring in segmentation]))
                elif isinstance(segmentation, dict) and "counts" in segmentation:
                    shapes.append((code, {"rle": segmentation["counts"], "size": segmentation.get("size")}))
                else:
                    problem = f"annotation {annotation.get('id')} has no polygon or RLE segmentation"
            if problem:
                rejected.append(Rejected(where, problem))
                continue
            items.append(_item(
                container, prefix, image,
                item_key=posixpath.join(posixpath.basename(folder), _stem(image)) if folder else _stem(image),
                source_key=_stem(image),
                polygons=shapes, size=[int(entry["height"]), int(entry["width"])],
                layout_split=_folder_split(image),
            ))
    if not items and not rejected:
        raise ValueError(f"{container.uri}: no COCO annotation file with images and annotations")
    return items, rejected


def labelme_items(container: Container, prefix: str, storage: Storage, classmap) -> tuple[list[dict], list[Rejected]]:
    names = classmap.names
    items, rejected = [], []
    images = {posixpath.splitext(m)[0]: m for m in container.members if _is_image(m)}
    for json_name in sorted(m for m in container.members if m.lower().endswith(".json")):
        where = container.describe(json_name)
        try:
            document = json.loads(read_ref(container.members[json_name], storage))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            rejected.append(Rejected(where, f"not valid JSON ({exc})"))
            continue
        folder = posixpath.dirname(json_name)
        image = posixpath.normpath(posixpath.join(folder, document.get("imagePath") or "")) if document.get("imagePath") else None
        image = image if image in container.members else images.get(posixpath.splitext(json_name)[0])
        if image is None:
            rejected.append(Rejected(where, "its image (imagePath) is missing"))
            continue
        shapes, problem = [], None
        for shape in document.get("shapes", []):
            label, kind, points = shape.get("label"), shape.get("shape_type", "polygon"), shape.get("points", [])
            if label not in names:
                problem = f"unknown label {label!r} (classes: {', '.join(names)})"
                break
            if kind == "rectangle" and len(points) == 2:
                (x0, y0), (x1, y1) = points
                points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
            elif kind != "polygon":
                problem = f"shape type {kind!r} is not supported (polygon, rectangle)"
                break
            shapes.append((classmap.codes[names.index(label)][0], [[c for point in points for c in point]]))
        if problem:
            rejected.append(Rejected(where, problem))
            continue
        size = [int(document["imageHeight"]), int(document["imageWidth"])] if "imageHeight" in document else None
        items.append(_item(container, prefix, image, polygons=shapes, size=size))
    return items, rejected


def class_folder_items(container: Container, prefix: str, names: tuple[str, ...] | None) -> tuple[list[dict], list[Rejected], tuple[str, ...]]:
    images = [m for m in container.members if _is_image(m)]
    folders = sorted({posixpath.basename(posixpath.dirname(m)) for m in images})
    names = names or tuple(folders)
    items, rejected = [], []
    for image in sorted(images):
        folder = posixpath.basename(posixpath.dirname(image))
        if folder not in names:
            rejected.append(Rejected(container.describe(image), f"folder {folder!r} is not a configured class"))
            continue
        items.append(_item(container, prefix, image, item_key=f"{folder}/{_stem(image)}",
                           source_key=f"{folder}/{_stem(image)}", label=names.index(folder)))
    for m in container.members:
        if not _is_image(m):
            rejected.append(Rejected(container.describe(m), "not an image"))
    return items, rejected, names
