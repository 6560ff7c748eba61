"""From sources to Ray Datasets, streaming.

1. List every source once on the driver (folders, prefixes, archives) and turn its
   layout into items (metadata and refs only).
2. Assign splits by source image.
3. Scan pass (Ray Data tasks, fractional CPUs): decode and validate every item,
   count class pixels and particles, channel sums for normalisation, tiles kept.
   Bad items go to the quarantine report; if nothing is usable, the job fails with it.
   With ``split.stratify: classes`` the scan comes first: the split is made from the usable
   items' class pixels.
4. Per split, a lazy Ray Dataset that decodes, rescales and tiles images as the
   training workers pull batches: nothing is ever held whole in memory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from minseg.data.classmap import ClassMap
from minseg.data.config import DataSettings, LimitSettings, SourceSettings, TilingSettings
from minseg.data.containers import Container, Rejected, open_container, read_ref
from minseg.data.geometry import classification_input, coco_polygon_mask, rasterize_polygons, resize_pair
from minseg.data.sampling import class_tile_counts
from minseg.errors import InputError
from minseg.io.images import (BIT_DEPTH, DARK, DecodeError, decode_channels, decode_image, decode_mask, image_maxima,
                              mask_palette)
from minseg.data.layouts import IMAGE_SUFFIXES, LayoutItems, decode_coco_rle, detect_layout, get_layout
from minseg.data.splits import SPLITS, assign_splits, twin_scenes, unmatched_list_entries
from minseg.data.tiling import extract_tile, mean_fill, owned_spans, score_once, tile_grid, tile_starts
from minseg.enums import DatasetLayout, MaskEncoding, SplitGroup, SplitStratify, Task
from minseg.io.storage import (AccessDeniedError, BucketNotFoundError, ObjectNotFoundError, Storage, StorageError,
                               join_uri, parse_uri)
from minseg.logs import get_logger, log_event

log = get_logger("data")


class DataError(InputError):
    """No usable data; ``quarantine`` lists every rejected file and why."""

    def __init__(self, message: str, quarantine: list[Rejected]):
        self.quarantine = quarantine
        lines = "\n".join(f"  {r.file}: {r.reason}" for r in quarantine[:20])
        more = f"\n  ... and {len(quarantine) - 20} more" if len(quarantine) > 20 else ""
        super().__init__(f"{message}\n{lines}{more}" if quarantine else message)


@dataclass
class PreparedData:
    task: Task
    classmap: ClassMap
    splits: dict[str, list[dict]]
    quarantine: list[Rejected]
    stats: dict
    normalization: dict[str, list[float]]
    tiling: TilingSettings
    limits: LimitSettings
    folds: list["Fold"] | None = None  # noqa: F821 (data.splits.Fold)
    extra: dict = field(default_factory=dict)
    # item id -> the class ids each kept tile shows, in tile-grid order (rare-class oversampling); kept beside the
    # items, which travel to every read task and evaluation actor
    tile_classes: dict[str, list[list[int]]] = field(default_factory=dict)
    bit_depth: int = BIT_DEPTH  # data.bit_depth: what the images' pixels were decoded as
    image_bit_depths: tuple = ()  # data.image_bit_depths: the bits each image was decoded with
    # item id -> a digest of its decoded pixels and labels (``scan_item``'s ``content``): an image replaced under its
    # own name (an archive rewritten in place) gives the same ids and tile counts, not the same contents
    contents: dict[str, str] = field(default_factory=dict)

    def content_changes(self, recorded: dict[str, str]) -> list[str]:
        """Item ids, sorted, that ``recorded`` (an earlier ``contents.json``) and this data both hold with other
        pixels or labels."""
        return sorted(i for i, digest in self.contents.items() if recorded.get(i, digest) != digest)

    def tile_count(self, split: str) -> int:
        return int(sum(item["tiles"] for item in self.splits.get(split, [])))

    def data_signature(self, fold: int | None = None) -> str:
        """A short digest of what a trial trains, chooses and tests on: the fold's parts, or the images of each
        split (train / val / test) and their tile counts. Checkpoints record it; resuming or evaluating members
        recorded on other data is refused."""
        if fold is not None:
            signature = self.folds[fold].signature()
        else:
            parts = [sorted((i["item_id"], i["tiles"]) for i in self.splits[name]) for name in ("train", "val", "test")]
            signature = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
        depths = {bits for *_, bits in self.image_bit_depths} or {self.bit_depth}
        if depths == {BIT_DEPTH}:  # as recorded before bit depths existed
            return signature
        # other pixels from the same files: a member trained on one reading is not continued or kept on another;
        # one bit depth for every image is recorded as data.bit_depth alone was, however the config gives it
        reading = f"bit_depth={depths.pop()}" if len(depths) == 1 else \
            f"images={json.dumps([list(entry) for entry in self.image_bit_depths])}"
        return hashlib.sha256(f"{signature}/{reading}".encode()).hexdigest()[:16]

    def tile_classes_of(self, items: list[dict]) -> dict[str, list[list[int]]]:
        """``tile_classes`` of these items only (e.g. a trial's training items), by item id."""
        return {item["item_id"]: self.tile_classes[item["item_id"]] for item in items}


# --------------------------------------------------------------------- loading


def _polygon_codes(item: dict, height: int, width: int) -> np.ndarray:
    """(H, W) int32 class codes of an item's objects, painted in the order the annotation file lists them (a later
    object over an earlier one, polygon or RLE alike); unannotated pixels 0."""
    if item.get("polygon_rule") != "coco":  # Labelme: polygons only, filled as Labelme fills them
        return rasterize_polygons(height, width, [(c, r) for c, r in item["polygons"] if not isinstance(r, dict)])
    codes = np.zeros((height, width), np.int32)
    for code, shape in item["polygons"]:
        codes[_rle_mask(shape, height, width) if isinstance(shape, dict) else
              coco_polygon_mask(height, width, shape)] = code
    return codes


def _rle_mask(rle: dict, height: int, width: int) -> np.ndarray:
    size = rle.get("size") or [height, width]
    if list(size) != [height, width]:
        raise DecodeError(f"RLE size {size} does not match the image {height}x{width}")
    try:
        return decode_coco_rle(rle["rle"], height, width).astype(bool)
    except (ValueError, IndexError) as exc:
        raise DecodeError(f"invalid COCO RLE segmentation ({exc})") from None


def decode_scene(item: dict, limits: LimitSettings, storage: Storage, bit_depth: int = BIT_DEPTH) -> np.ndarray:
    """An item's input image, (H, W, C) uint8: its one picture as RGB, or its declared ``channels`` (the images of
    one scene, each decoded by its mode) stacked in order; samples of more than 8 bits scaled from ``bit_depth``
    bits (``data.bit_depth``), or from an image's own (``channels[].bit_depth``). Raises DecodeError naming the
    image that does not fit (unreadable, another size than the scene's first image, another number of bands, a
    sample above its bit depth)."""
    channels = item.get("channels")
    if not channels:
        return decode_image(read_ref(item["image"], storage), item["image_name"], limits.max_image_pixels,
                            bit_depth=bit_depth)
    stack = []
    for channel in channels:
        try:
            array = decode_channels(read_ref(channel["ref"], storage), channel["name"], limits.max_image_pixels,
                                    channel["mode"], channel["bands"],
                                    bit_depth=channel.get("bit_depth") or bit_depth)
        except DecodeError as exc:
            raise DecodeError(f"{channel['name']}: {exc}") from None
        if stack and array.shape[:2] != stack[0].shape[:2]:
            raise DecodeError(f"{channel['name']} is {array.shape[1]}x{array.shape[0]} but {channels[0]['name']} is "
                              f"{stack[0].shape[1]}x{stack[0].shape[0]}: the images of a scene must be aligned")
        stack.append(array)
    return stack[0] if len(stack) == 1 else np.concatenate(stack, axis=2)


def load_example(item: dict, classmap: ClassMap, limits: LimitSettings, storage: Storage,
                 scale: float = 1.0, with_codes: bool = False, instance_areas: list | None = None,
                 bit_depth: int = BIT_DEPTH):
    """Decode, validate and rescale one item: (image uint8 (H, W, C), class-id mask uint8 (H, W) or None); with
    ``with_codes``, also the class ids and the image at full resolution (before ``scale``).

    ``instance_areas``: for instance-mask items, (class code, object area in px at full resolution) of each object
    is appended to it; ``bit_depth``: as ``decode_scene``. Raises DecodeError with the reason when the item cannot
    be used.
    """
    image = decode_scene(item, limits, storage, bit_depth)
    height, width = image.shape[:2]
    ids = None
    if item.get("mask") is not None:
        rgb = classmap.mask_encoding is MaskEncoding.COLORS
        data = read_ref(item["mask"], storage)
        try:
            codes = decode_mask(data, item["mask_name"], limits.max_image_pixels, rgb=rgb)
        except DecodeError as exc:  # the item is named by its image: say that the mask is at fault
            raise DecodeError(f"its mask {item['mask_name']}: {exc}") from None
        if codes.shape[:2] != (height, width):
            swapped = codes.shape[:2] == (width, height)  # e.g. a phone photo's EXIF Orientation, applied on reading
            raise DecodeError(f"its mask {item['mask_name']} is {codes.shape[1]}x{codes.shape[0]} but the image is "
                              f"{width}x{height}"
                              + (" (its sides swapped: is the image rotated by an EXIF Orientation, which minseg "
                                 "applies as viewers do? draw the mask on the image as shown, or save the image "
                                 "without the rotation)" if swapped else ""))
        palette = None if rgb else mask_palette(data, item["mask_name"])
        if palette is not None and (problem := classmap.palette_problem(codes, palette)):
            raise DecodeError(f"its mask {item['mask_name']}: {problem}")
    elif item.get("instances") is not None:
        codes = _merged_instances(item, height, width, limits, storage, instance_areas)
    elif item.get("polygons") is not None:
        if item.get("size") and tuple(item["size"]) != (height, width):
            h, w = item["size"]
            raise DecodeError(f"annotation says {w}x{h} but the image is {width}x{height}")
        codes = _polygon_codes(item, height, width)
    else:
        codes = None
    if codes is not None:
        ids, unknown = classmap.map_codes(codes)
        if unknown:
            grey = codes.ndim == 3 and bool((codes[..., 0] == codes[..., 1]).all()
                                            and (codes[..., 1] == codes[..., 2]).all())
            problem = classmap.describe_unknown(unknown, grey=grey)
            raise DecodeError(f"its mask {item['mask_name']}: {problem}" if item.get("mask") is not None else problem)
    full_ids, full_image = ids, image
    image, ids = resize_pair(image, ids, scale)
    return (image, ids, full_ids, full_image) if with_codes else (image, ids)


def _merged_instances(item: dict, height: int, width: int, limits: LimitSettings, storage: Storage,
                      areas: list | None = None) -> np.ndarray:
    """An instance folder's class-code mask: each object's binary mask (non-zero = the object) painted with its
    class code over the background code, in name order (an overlap goes to the later object). Each object's own
    (code, area) goes to ``areas`` when given: the true objects, before any overlap or merge."""
    top = max([item["background_code"], *item["instance_codes"]])
    codes = np.full((height, width), item["background_code"], np.uint8 if top < 256 else np.int32)
    for ref, name, code in zip(item["instances"], item["instance_names"], item["instance_codes"]):
        try:
            mask = decode_mask(read_ref(ref, storage), name, limits.max_image_pixels)
        except DecodeError as exc:
            raise DecodeError(f"object mask {name}: one channel expected, non-zero where the object is ({exc})") \
                from None
        if mask.shape[:2] != (height, width):
            raise DecodeError(f"object mask {name} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                              f"{width}x{height}")
        if len(np.unique(mask[mask > 0])) > 1:  # a class or label image, not one object: would turn one class
            raise DecodeError(f"object mask {name} holds several non-zero values ({np.unique(mask[mask > 0])[:5]}"
                              "...): an object mask marks one object (use the paired layout for class masks)")
        codes[mask > 0] = code
        if areas is not None:
            areas.append((code, int(np.count_nonzero(mask))))
    return codes


def _particles(ids: np.ndarray, num_classes: int) -> list[int]:
    from scipy import ndimage

    present = np.bincount(ids.ravel(), minlength=256)
    return [int(ndimage.label(ids == c)[1]) if present[c] else 0 for c in range(num_classes)]


def scan_item(item: dict, classmap: ClassMap, data: DataSettings, task: Task, storage: Storage) -> dict:
    """Validate one item and measure it; never raises (errors become the row's 'error')."""
    row = {"item_id": item["item_id"], "error": None, "tiles": 0, "tile_classes": [], "height": 0, "width": 0,
           "pixels": [0] * classmap.num_classes, "particles": [0] * classmap.num_classes,
           "instances": [0] * classmap.num_classes, "instance_areas": [[] for _ in range(classmap.num_classes)],
           "channel_sum": [0.0] * data.in_channels, "channel_sq": [0.0] * data.in_channels, "channel_n": 0,
           "digest": None, "content": None, "brightest": 0, "dark_image": None, "dark_bits": data.bit_depth}
    try:
        if task is Task.CLASSIFICATION:
            image = decode_scene(item, data.limits, storage, data.bit_depth)
            small = classification_input(image, data.tiling.size)  # the statistics of what training reads
            row["tiles"] = 1
            row["tile_classes"] = [[int(item["label"])]]
            row["pixels"][item["label"]] = 1
            pixels = small.reshape(-1, small.shape[-1]).astype(np.float64)
        else:
            areas: list[tuple[int, int]] = []
            image, ids, full_ids, full_image = load_example(item, classmap, data.limits, storage, data.tiling.scale,
                                                            with_codes=True, instance_areas=areas,
                                                            bit_depth=data.bit_depth)
            row["pixels"] = np.bincount(full_ids.ravel(), minlength=256)[: classmap.num_classes].tolist()
            row["particles"] = _particles(full_ids, classmap.num_classes)
            for code, area in areas:  # true objects, to check particle counts and sizes against
                row["instances"][classmap.code_to_id()[code]] += 1
                row["instance_areas"][classmap.code_to_id()[code]].append(area)
            tile = data.tiling.size
            for y, x in tile_grid(ids.shape[0], ids.shape[1], tile, data.tiling.step):
                block = ids[y : y + tile, x : x + tile]
                if not data.tiling.drop_all_ignore or (block != classmap.ignore_index).any():
                    # the classes each kept tile shows (at the working scale), for rare-class oversampling
                    counts = np.bincount(block.ravel(), minlength=256)[: classmap.num_classes]
                    row["tile_classes"].append(np.flatnonzero(counts).tolist())
            row["tiles"] = len(row["tile_classes"])
            pixels = image.reshape(-1, image.shape[-1]).astype(np.float64)
        row["height"], row["width"] = int(image.shape[0]), int(image.shape[1])
        # the pixels, whatever the file's name or format: one picture under two names would leak across splits
        if image.size and image.min() != image.max():  # blank frames are alike without being one picture
            row["digest"] = hashlib.blake2b(np.ascontiguousarray(image), digest_size=16).hexdigest()
        # the pictures as decoded, before any resampling (another tiling.scale is a setting, said as such; another
        # resampling library version is not a changed picture)
        if task is Task.CLASSIFICATION:
            content = hashlib.blake2b(np.ascontiguousarray(image), digest_size=16)
            content.update(str(int(item["label"])).encode())
        else:
            content = hashlib.blake2b(np.ascontiguousarray(full_image), digest_size=16)
            content.update(np.ascontiguousarray(full_ids) if full_ids is not None else b"")
        row["content"] = content.hexdigest()
        # the darkest image of a scene counts: a 12-bit camera's frames beside a 16-bit detector's bright ones
        row["brightest"], row["dark_image"], row["dark_bits"] = _darkest_image(image, item, data)
        row["channel_sum"] = pixels.sum(0).tolist()
        row["channel_sq"] = (pixels**2).sum(0).tolist()
        row["channel_n"] = int(pixels.shape[0])
        if row["tiles"] == 0:
            row["error"] = "every tile is all-ignore"
    except (DecodeError, StorageError, OSError) as exc:  # bad input; anything else is a bug and surfaces
        row["error"] = str(exc)
    return row


def tile_rows(item: dict, classmap: ClassMap, data: DataSettings, storage: Storage,
              repeats: list[int] | None = None, fill=0, scored: bool = False) -> list[dict]:
    """Training rows for one item: fixed-size tiles (segmentation) or one resized image (classification).

    ``fill``: what an image smaller than a tile is padded with (``tiling.mean_fill`` of the normalisation mean, as
    inference pads; its mask is padded with ``ignore_index``). ``scored``: tiles of a validation or test split,
    whose masks keep only the pixels each tile owns (``tiling.owned_spans``): overlapping tiles then count every
    pixel of the image once in the metrics and the validation loss (the interior of a tile overlapped on four
    sides was counted four times, its borders once).

    ``repeats``: copies of each kept tile per epoch, in tile-grid order (rare-class oversampling,
    ``data/sampling.py``): each row then carries its count as ``copies`` (int64) for ``expand_copies``, which runs
    after caching so the object store holds each tile once.
    """
    try:
        if item.get("label") is not None:
            image = decode_scene(item, data.limits, storage, data.bit_depth)
            row = {"image": classification_input(image, data.tiling.size), "label": np.int64(item["label"])}
            return [row if repeats is None else {**row, "copies": np.int64(repeats[0] if repeats else 1)}]
        image, ids = load_example(item, classmap, data.limits, storage, data.tiling.scale, bit_depth=data.bit_depth)
    except (DecodeError, StorageError, OSError) as exc:
        # scanned fine a moment ago: the file changed underneath us; keep going, say so
        log_event(log, "data.item.skipped", item=item["item_id"], reason=str(exc))
        return []
    tile = data.tiling.size
    rows: list[dict] = []
    kept = 0
    # tile_grid's order (rows, then columns), each start beside the span it owns when scored
    row_starts, col_starts = (tile_starts(length, tile, data.tiling.step) for length in ids.shape[:2])
    grid = [((y, rows), (x, cols)) for y, rows in zip(row_starts, owned_spans(row_starts, tile, ids.shape[0]))
            for x, cols in zip(col_starts, owned_spans(col_starts, tile, ids.shape[1]))]
    for (y, owned_rows), (x, owned_cols) in grid:
        mask = extract_tile(ids, y, x, tile, classmap.ignore_index)
        if scored:
            mask = score_once(mask, y, x, owned_rows, owned_cols, classmap.ignore_index)
        if data.tiling.drop_all_ignore and not (mask != classmap.ignore_index).any():
            continue
        row = {"image": extract_tile(image, y, x, tile, fill), "mask": mask}
        if repeats is not None:  # a tile the scan did not see (the file changed since): once
            row["copies"] = np.int64(repeats[kept] if kept < len(repeats) else 1)
        kept += 1
        rows.append(row)
    return rows


def expand_copies(row: dict) -> list[dict]:
    """A tile row with its ``copies`` count (``tile_rows`` with repeats) as that many rows, without the count;
    each copy is augmented on its own later in the training stream."""
    copies = int(row.pop("copies"))
    return [row] * copies


# ----------------------------------------------------------------- preparing


def _resolve_classmap(data: DataSettings, task: Task, folder_names: tuple[str, ...] | None) -> ClassMap:
    if data.classes is not None:
        return ClassMap.from_settings(data.classes)
    if task is Task.CLASSIFICATION and folder_names:
        return ClassMap.from_names(list(folder_names))
    raise InputError(CLASSES_REQUIRED)


CLASSES_REQUIRED = ("data.classes is required for segmentation sources: each class's name and the mask codes it is "
                    "drawn with, in id order, e.g. classes: {classes: [{name: resin, codes: [0]}, {name: pyrite, "
                    "codes: [1]}]} (minseg synth writes its classes beside the sections, in classes.json: its "
                    "'classes' list, ids left out, is this key's)")


def wrong_layout_message(source, index: int, entry, detected: bool, task: Task) -> str:
    """One line: the layout a source has (detected or set) trains another task; the layouts that train ``task``
    (what each looks like) and the keys that choose one."""
    from minseg.data.layouts import list_layouts

    def shown(candidate) -> str:
        hint = candidate.hint.format(images_dir=source.images_dir, masks_dir=source.masks_dir)
        return f"{candidate.layout} ({hint})" if hint else str(candidate.layout)

    fitting = [shown(e) for e in list_layouts() if e.task is task]
    how = "was detected as" if detected else "is set to"
    keys = f"set data.sources[{index}].layout to one of them"
    if task is Task.SEGMENTATION:
        keys += (f", and data.sources[{index}].images_dir / masks_dir (now {source.images_dir!r} / "
                 f"{source.masks_dir!r}) to the folders holding the images and the masks, image_pattern / "
                 "mask_pattern when their names differ by more than the extension")
    return (f"{source.uri} {how} layout {shown(entry)}, which trains {entry.task} models, not this {task} model; "
            f"layouts for {task}: {', '.join(fitting)}; {keys}")


def _list_items(data: DataSettings, storage: Storage, staging_uri: str, task: Task):
    items, rejected, folder_names = [], [], None
    classmap = ClassMap.from_settings(data.classes) if data.classes is not None else None
    for index, source in enumerate(data.sources):
        # a given name whole (`lab.2024`); a base name without its extensions (`lumen.tar.gz`: `lumen`)
        prefix = source.name or (os.path.basename(parse_uri(source.uri).path.rstrip("/")) or "source").split(".")[0]
        try:  # a staging folder per source: two `data.tar.gz` in two folders are staged apart
            container = open_container(source.uri, data.limits, storage, join_uri(staging_uri, f"{index + 1}-{prefix}"))
        except (ObjectNotFoundError, BucketNotFoundError, AccessDeniedError) as exc:
            # a mistyped path, bucket or key: the others alone would train a run that looks complete
            raise InputError(f"data.sources[{index}].uri: {exc}") from None
        except (StorageError, ValueError) as exc:  # damaged: the other sources are used, said, not only reported
            rejected.append(Rejected(source.uri, f"source unreadable: {exc}"))
            log_event(log, "data.source_unreadable", logging.WARNING, source=f"data.sources[{index}]", uri=source.uri,
                      reason=str(exc), hint="none of its images is used; the run goes on with the other sources, if "
                                            "any")
            continue
        # a hidden image the globs leave out is no file of this source (hidden masks stay reported: globs choose images)
        left_out = {id(r) for name, r in container.hidden_images.items()
                    if f"/{source.masks_dir}/" not in f"/{name}" and not source.selects(name)}
        rejected.extend(r for r in container.rejected if id(r) not in left_out)
        layout = source.layout
        groups = source.channel_groups
        if layout is DatasetLayout.AUTO and len(groups) > 1:  # several images per scene: the paired layout
            layout = DatasetLayout.PAIRED
        if layout is DatasetLayout.AUTO:
            try:
                layout = detect_layout(container, groups[0].images_dir or source.images_dir, source.masks_dir,
                                       storage)
            except ValueError as exc:
                rejected.append(Rejected(source.uri, str(exc)))
                continue
        entry = get_layout(layout)
        if entry.task is not task:  # before reading it: the error says which layouts and keys would fit
            raise InputError(wrong_layout_message(source, index, entry, detected=source.layout is DatasetLayout.AUTO,
                                                  task=task))
        if source.channels is not None and task is not Task.SEGMENTATION:
            raise InputError(f"data.sources[{index}].channels: declared image channels are read for segmentation; "
                             f"{task} models read RGB images (leave channels out)")
        listed = entry.read(container, prefix, source, storage, classmap)
        listed_items, listed_rejected = listed.items, listed.rejected
        if source.include is not None or source.exclude:
            listed_items = _selected(listed, source, index, container)
        if source.channels is not None and len(groups) == 1:  # single images read another way (e.g. grey)
            for item in listed_items:
                item.setdefault("channels", [groups[0].entry(item["image"], item["image_name"])])
        if listed.class_names is not None:
            folder_names = listed.class_names
        log_event(log, "data.source.listed", source=source.uri, layout=str(layout), items=len(listed_items),
                  rejected=len(listed_rejected))
        found, ambiguous = _unique_items(listed_items)  # within one source: quarantined, never one dropped
        items.extend(found)
        rejected.extend(listed_rejected + ambiguous)
    seen: dict[str, str] = {}
    for item in items:
        if item["item_id"] in seen:
            raise InputError(f"item id {item['item_id']!r} comes from two sources ({seen[item['item_id']]} and "
                             f"{item['where']}); give the sources distinct 'name's")
        seen[item["item_id"]] = item["where"]
    return items, rejected, folder_names


def _selected(listed: LayoutItems, source: SourceSettings, index: int, container: Container) -> list[dict]:
    """The items a source's ``include`` / ``exclude`` globs keep. The layout readers choose before they pair or
    check anything (left-out images are neither items nor rejected); this checks the outcome, and keeps the
    selection for a registered reader that does not choose itself.

    Raises:
        InputError: the globs keep no image of the source (none listed, none quarantined), naming the keys and a
            few of the images they leave out.
    """
    kept, left_out = [], list(listed.left_out)
    for item in listed.items:  # each glob test once
        if source.selects(item["image_name"]):
            kept.append(item)
        else:
            left_out.append(item["image_name"])
    # an image the globs keep that was quarantined makes the general "no usable items" the right message (a mask
    # left without its image, or an image they leave out, does not)
    if not kept and left_out and not any(r.file.lower().endswith(IMAGE_SUFFIXES)
                                         and source.selects(container.member_of(r.file)) for r in listed.rejected):
        given = " and ".join(f"{key} {value}" for key, value in (("include", source.include),
                                                                 ("exclude", source.exclude)) if value)
        shown = ", ".join(sorted(left_out)[:5])
        raise InputError(f"data.sources[{index}]: {given} leave none of its {len(left_out)} images ({shown}"
                         f"{', ...' if len(left_out) > 5 else ''}); a glob matches the last parts of an image's path, "
                         "case-sensitively, e.g. 'a*.jpg' or 'site1/*'")
    log_event(log, "data.source.selected", source=source.uri, kept=len(kept), left_out=len(left_out))
    return kept


def _unique_items(items: list[dict]) -> tuple[list[dict], list[Rejected]]:
    """Items of one source whose ids are unique; the others (e.g. ``a.jpg`` and ``a.png``, or two
    annotation files naming one image) are all quarantined, each naming the others."""
    by_id: dict[str, list[dict]] = {}
    for item in items:
        by_id.setdefault(item["item_id"], []).append(item)
    unique, rejected = [], []
    for item_id, group in by_id.items():
        if len(group) == 1:
            unique.append(group[0])
            continue
        for item in group:
            twins = [o["where"] for o in group if o is not item]
            if all(where == item["where"] for where in twins):  # one image, annotated twice
                reason = (f"item {item_id!r} is listed {len(group)} times by the source's annotation files (two "
                          "images[] entries of one file, or two files such as a backup copy beside the export); "
                          "keep one")
            else:
                reason = f"item {item_id!r} is ambiguous: {', '.join(twins)} gives the same item; keep one"
            rejected.append(Rejected(item["where"], reason))
    return unique, rejected


def _read_lists(lists: dict[str, str], storage: Storage) -> dict[str, set[str]]:
    result = {}
    for split, uri in lists.items():
        try:
            text = storage.read_text(uri)
        except StorageError as exc:
            raise InputError(f"data.split.lists.{split}: {exc}") from None
        text = text.removeprefix("\ufeff")  # Notepad's byte-order mark: not part of the first name
        result[split] = {line.strip() for line in text.splitlines() if line.strip()}
    return result


def prepare_data(data: DataSettings, task: Task, seed: int, storage: Storage, work_uri: str,
                 task_cpus: float = 0.5) -> PreparedData:
    """List, split and scan the sources (see module doc)."""
    items, quarantine, folder_names = _list_items(data, storage, join_uri(work_uri, "staging"), task)
    classmap = _resolve_classmap(data, task, folder_names)
    split_seed = data.split.seed if data.split.seed is not None else seed
    lists = _read_lists(data.split.lists, storage) if data.split.lists else None
    if lists:
        selecting = any(source.include is not None or source.exclude for source in data.sources)
        for split, names in lists.items():
            for name in unmatched_list_entries(items, names):
                quarantine.append(Rejected(data.split.lists[split], f"{split} list names {name!r}, which no source has"
                                           + (" (or data.sources[].include / exclude leave out)" if selecting else "")))
    twins = twin_scenes(item["source_id"] for item in items)
    if twins and data.split.group_by is SplitGroup.IMAGE:  # a leak unless they are different scenes: say so
        example = next(iter(twins.values()))
        log_event(log, "data.split.twin_scenes", logging.WARNING, scenes=len(twins), example=", ".join(example),
                  hint="images of one name in several sources may land in different splits; set "
                       "data.split.group_by: scene if they show one scene (e.g. PPL and XPL)")
    if data.split.stratify is SplitStratify.NONE:
        assignment = assign_splits(items, data.split, split_seed, lists)
        unlisted = sorted(item["item_id"] for item in items if item["source_id"] not in assignment)
        if unlisted:  # the lists are the whole truth; a subset on purpose, or a list that lacks names: said
            log_event(log, "data.split.unlisted", logging.WARNING, images=len(unlisted), example=unlisted[0],
                      hint="no data.split.lists list names them: they are not used")
        items = [{**item, "split": assignment[item["source_id"]]} for item in items if item["source_id"] in assignment]
        if not items:
            raise DataError("no usable items in any source", quarantine)
        by_id = _scan(items, classmap, data, task, storage, task_cpus)
    else:  # stratified on what the images show: scan first, split the usable ones
        if not items:
            raise DataError("no usable items in any source", quarantine)
        by_id = _scan(items, classmap, data, task, storage, task_cpus)
        usable = [item for item in items if not by_id[item["item_id"]]["error"]]
        assignment = assign_splits(usable, data.split, split_seed, lists,
                                   _pixels_by_source(usable, by_id))
        items = [{**item, "split": assignment.get(item["source_id"])} for item in items]
    good = _usable_by_split(items, by_id, quarantine)
    if not good["train"]:
        raise DataError("no usable training items; every candidate was rejected", quarantine)

    _warn_duplicates_across_splits(good, by_id)
    _warn_dark(good, by_id, data.bit_depth)
    stats = _split_stats(items, by_id, classmap, good)
    for split in ("val", "test"):
        if good[split]:
            _warn_classes_missing(split, classes_missing(stats, split), data.split.stratify)
        elif data.split.lists is not None and (split in data.split.lists or split == "test"):
            log_event(log, "data.split.empty", logging.WARNING, split=split, quarantined=len(quarantine),
                      hint=(f"its list names no usable image ({data.split.lists[split]})" if split in data.split.lists
                            else "data.split.lists gives no test list") + ": " + _EMPTY[split])
        elif data.split.lists is None and getattr(data.split, split) > 0 and not (split == "val" and data.split.folds):
            log_event(log, "data.split.empty", logging.WARNING, split=split, ratio=getattr(data.split, split),
                      usable=sum(len(v) for v in good.values()), quarantined=len(quarantine),
                      hint="no usable image went to it (too few images for the ratios, the layout's own splits, or "
                           f"its images quarantined): {_EMPTY[split]}; add images, change data.split, or name them in "
                           "data.split.lists")
    _warn_quarantined(quarantine, sum(len(v) for v in good.values()))
    _warn_classes_untrained("train", classes_untrained(stats), data.split.stratify)
    absent = classes_absent(stats)
    if absent:  # configured, never seen: a misspelt class folder or code, or a class map meant for other data
        log_event(log, "data.classes_absent", logging.WARNING, classes=",".join(absent),
                  hint="no usable image of any split shows them (no pixels, or no images in their folder): the "
                       "members learn never to predict them. Check data.classes (names of class folders, mask "
                       "codes, COCO categories) against the data and data/quarantine.csv")
    normalization = data.normalization or _measure_normalization(good["train"], by_id)
    folds = None
    if data.split.folds:
        from minseg.data.splits import kfold_assignments

        pool = sorted({i["source_id"] for split in ("train", "val") for i in good[split]})
        pixels = _pixels_by_source(good["train"] + good["val"], by_id)
        folds = kfold_assignments(pool, data.split.folds, split_seed, data.split.fold_val, data.split.group_by,
                                  data.split.stratify, pixels)
        for fold in folds:
            trained = np.sum([pixels[s] for s in fold.train], axis=0)
            for part, sources in (("val", fold.val), ("test", fold.test)):
                shown = np.sum([pixels[s] for s in sources], axis=0)
                _warn_classes_missing(f"fold {fold.index + 1} {part}", [classmap.names[c] for c in
                                      np.flatnonzero((trained > 0) & (shown == 0))], data.split.stratify)
            scored = np.sum([pixels[s] for s in fold.val | fold.test], axis=0)
            _warn_classes_untrained(f"fold {fold.index + 1} train", [classmap.names[c] for c in
                                    np.flatnonzero((trained == 0) & (scored > 0))], data.split.stratify)
    prepared = PreparedData(task, classmap, good, quarantine, stats, normalization, data.tiling, data.limits, folds,
                            tile_classes={i["item_id"]: by_id[i["item_id"]]["tile_classes"]
                                          for split in good.values() for i in split}, bit_depth=data.bit_depth,
                            image_bit_depths=data.image_bit_depths,
                            contents={i["item_id"]: by_id[i["item_id"]]["content"] for split in good.values()
                                      for i in split})
    log_event(log, "data.prepared", **{f"{s}_items": len(good[s]) for s in SPLITS},
              train_tiles=prepared.tile_count("train"), quarantined=len(quarantine))
    return prepared


_EMPTY = {"val": "members keep their last epoch", "test": "minseg evaluate needs test images"}


def _warn_quarantined(quarantine: list, used: int) -> None:
    """Files left out are said on the console (how many, their share, one example); each reason is in the report
    (``data/quarantine.csv``): training and scoring on fewer images than given is never silent."""
    if quarantine:
        first = quarantine[0]
        log_event(log, "data.quarantined", logging.WARNING, files=len(quarantine),
                  share=f"{len(quarantine) / max(len(quarantine) + used, 1):.0%}",
                  example=f"{first.file}: {first.reason}", report="data/quarantine.csv")


def _darkest_image(image: np.ndarray, item: dict, data: DataSettings) -> tuple[int, str | None, int]:
    """(brightest value, 0..255, of the darkest image of the scene; its name when the scene has several images;
    the bit depth it was read with) of ``item`` decoded (H, W, C)."""
    groups = data.channel_groups if item.get("channels") else ()
    maxima = image_maxima(image, [group.count for group in groups])
    darkest = int(np.argmin(maxima))
    channel = item["channels"][darkest] if groups else {}
    return (maxima[darkest], groups[darkest].name if len(groups) > 1 else None,
            channel.get("bit_depth") or data.bit_depth)


def _warn_dark(good: dict[str, list[dict]], by_id: dict[str, dict], bit_depth: int) -> None:
    """``data.images_dark``: usable images (or images of a scene) whose brightest decoded value is at most
    ``DARK`` of 255."""
    dark = sorted(i["item_id"] for split in good.values() for i in split if by_id[i["item_id"]]["brightest"] <= DARK)
    if dark:  # 16-bit samples are scaled by 2**bit_depth - 1: a 12-bit camera's 4096 levels become 17 at 16 bits
        image, bits = by_id[dark[0]].get("dark_image"), by_id[dark[0]].get("dark_bits", bit_depth)
        log_event(log, "data.images_dark", logging.WARNING, images=len(dark),
                  example=f"{dark[0]} ({image})" if image else dark[0], brightest=DARK,
                  bit_depth=bits,
                  hint=f"their brightest pixel is at most {DARK} of 255 after decoding. 10- or 12-bit camera frames "
                       f"stored in 16-bit samples and read as {bits}-bit (most grey levels lost)? Set "
                       "data.bit_depth to the camera's bit depth (e.g. 12), or data.sources[].channels[].bit_depth "
                       "for one image of a scene. 8-bit pictures this dark: blank or underexposed?")


def recorded_contents(storage: Storage, uri: str) -> dict[str, str]:
    """A run's ``contents.json`` (``write_data_reports``): {} when there is none (runs prepared before 2026-12-07)
    or it cannot be read (warned: the pictures are then not compared)."""
    import json

    try:
        document = storage.read_json(uri)
    except ObjectNotFoundError:
        return {}
    except (StorageError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        document = f"not readable ({exc})"
    if not isinstance(document, dict):
        log_event(log, "data.contents_unreadable", logging.WARNING, record=uri, reason=str(document)[:200],
                  hint="the pictures are not compared with the ones the members were trained on")
        return {}
    return document


def first_ids(ids: list[str], separator: str = ", ", count: int = 5) -> str:
    """The first ``count`` of ``ids`` joined by ``separator``, "..." after them when there are more (messages)."""
    return separator.join(ids[:count]) + (f"{separator}..." if len(ids) > count else "")


def item_changes(before: Iterable[str], now: Iterable[str], added: str = "added", gone: str = "gone") -> str | None:
    """``added 2: d, e; gone 1: b`` (at most five ids each) for item ids in ``now`` and not ``before`` and the other
    way round, or None when they are the same set."""
    before, now = set(before), set(now)
    said = "; ".join(f"{label} {len(ids)}: {first_ids(ids)}"
                     for label, ids in ((added, sorted(now - before)), (gone, sorted(before - now))) if ids)
    return said or None


def _warn_duplicates_across_splits(good: dict[str, list[dict]], by_id: dict[str, dict]) -> None:
    """One picture (the same pixels) under two names in two splits: a member trains on a validation or test image,
    and its scores there flatter it. Said once: how many images repeat one of an earlier split, the first ten."""
    seen: dict[str, tuple[str, str]] = {}  # digest -> (split, item id) of its first image
    pairs = []
    for split in SPLITS:
        for item in good[split]:
            digest = by_id[item["item_id"]].get("digest")
            if digest is None:
                continue
            first = seen.setdefault(digest, (split, item["item_id"]))
            if first[0] != split:
                pairs.append((first, (split, item["item_id"])))
    if pairs:
        shown = "; ".join(f"{a} ({split_a}) = {b} ({split_b})" for (split_a, a), (split_b, b) in pairs[:10])
        log_event(log, "data.split.duplicate_images", logging.WARNING, images=len(pairs),
                  copies=shown + ("; ..." if len(pairs) > 10 else ""),
                  hint="the same pixels under two names are in two splits: a member trains on what it is scored "
                       "on; remove the copies, or name each pair in one split with data.split.lists")


def _warn_classes_missing(split: str, missing: list[str], stratify: SplitStratify) -> None:
    """Scored there, a trained class the split lacks counts IoU 0 for any stray pixel: say so, with the remedy."""
    if missing:
        log_event(log, "data.split.classes_missing", logging.WARNING, split=split, classes=",".join(missing),
                  hint="no image of this split shows them: "
                  + ("set data.split.stratify: classes" if stratify is SplitStratify.NONE
                     else "too few images show them to give every split one") + ", or name the images in "
                  "data.split.lists")


def _warn_classes_untrained(split: str, untrained: list[str], stratify: SplitStratify) -> None:
    """A class shown only outside the training split is never learnt: its IoU is 0 wherever it is scored."""
    if untrained:
        log_event(log, "data.split.classes_untrained", logging.WARNING, split=split, classes=",".join(untrained),
                  hint="only validation or test images show them, so the model never learns them: "
                  + ("set data.split.stratify: classes, " if stratify is SplitStratify.NONE else "")
                  + "add images that show them, or name a training image for each in data.split.lists")


def _pixels_by_source(items: list[dict], by_id: dict[str, dict]) -> dict[str, np.ndarray]:
    """source_id -> labelled pixels per class, summed over its items (what stratified splits balance)."""
    pixels: dict[str, np.ndarray] = {}
    for item in items:
        counts = np.asarray(by_id[item["item_id"]]["pixels"], np.int64)
        pixels[item["source_id"]] = pixels.get(item["source_id"], 0) + counts
    return pixels


def _scan(items: list[dict], classmap: ClassMap, data: DataSettings, task: Task, storage: Storage,
          task_cpus: float) -> dict[str, dict]:
    """Every item opened once (a Ray task each): ``scan_item``'s rows by item id."""
    import ray

    scanned = (
        ray.data.from_items(items, override_num_blocks=min(len(items), 200))
        .map(lambda item: scan_item(item, classmap, data, task, storage), num_cpus=task_cpus)
        .take_all()
    )
    return {row["item_id"]: row for row in scanned}


def _usable_by_split(items: list[dict], by_id: dict[str, dict], quarantine: list[Rejected]) -> dict[str, list[dict]]:
    """Usable items per split with size, tile count and labelled pixels per class; an item that cannot be used goes
    to ``quarantine`` with why (items without a split are left out)."""
    good: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for item in items:
        row = by_id[item["item_id"]]
        if row["error"]:
            quarantine.append(Rejected(item["where"], row["error"]))
        elif item["split"] is not None:
            good[item["split"]].append({**item, "tiles": row["tiles"], "height": row["height"], "width": row["width"],
                                        "pixels": row["pixels"]})
    return good


def prepare_scoring_data(data: DataSettings, split: str | None, seed: int, storage: Storage, work_uri: str,
                         normalization: dict[str, list[float]], task_cpus: float = 0.5) -> PreparedData:
    """A labelled set to score a trained ensemble on, every scored item in the ``test`` split.

    ``split`` None: every usable item of the sources (a new, external test set; ``data.split`` is not used);
    ``train`` / ``val`` / ``test``: that split of ``data.split`` (e.g. the test split of another dataset's
    recipe). ``normalization`` is the ensemble's (recorded in the result, never measured here).

    Raises:
        DataError: no usable labelled item (the quarantine says why each was refused).
        InputError: no class map, a layout for another task.
    """
    if split is not None:
        prepared = prepare_data(data, Task.SEGMENTATION, seed, storage, work_uri, task_cpus)
        chosen = prepared.splits[split]
        if not chosen:
            raise DataError(f"the {split} split of the data is empty: nothing to score", prepared.quarantine)
        return PreparedData(Task.SEGMENTATION, prepared.classmap, {"train": [], "val": [], "test": chosen},
                            prepared.quarantine, {"test": prepared.stats[split]}, normalization, data.tiling,
                            data.limits, bit_depth=data.bit_depth, image_bit_depths=data.image_bit_depths,
                            contents={i["item_id"]: prepared.contents[i["item_id"]] for i in chosen})
    items, quarantine, folder_names = _list_items(data, storage, join_uri(work_uri, "staging"), Task.SEGMENTATION)
    classmap = _resolve_classmap(data, Task.SEGMENTATION, folder_names)
    for item in items:
        item["split"] = "test"
    by_id = _scan(items, classmap, data, Task.SEGMENTATION, storage, task_cpus) if items else {}
    good = _usable_by_split(items, by_id, quarantine)
    if not good["test"]:
        raise DataError("no usable labelled items in any source", quarantine)
    _warn_dark(good, by_id, data.bit_depth)
    stats = _split_stats(items, by_id, classmap, good)
    prepared = PreparedData(Task.SEGMENTATION, classmap, good, quarantine, {"test": stats["test"]}, normalization,
                            data.tiling, data.limits, bit_depth=data.bit_depth,
                            image_bit_depths=data.image_bit_depths,
                            contents={i["item_id"]: by_id[i["item_id"]]["content"] for i in good["test"]})
    _warn_quarantined(quarantine, len(good["test"]))
    log_event(log, "data.prepared_for_scoring", items=len(good["test"]), quarantined=len(quarantine))
    return prepared


def _instance_sizes(areas: list[int]) -> dict:
    """The true objects' sizes (px at full resolution): area percentiles and the median equivalent circle diameter,
    to check grain / particle statistics against; nothing when the layout has no instances."""
    if not areas:
        return {}
    values = np.asarray(areas, np.float64)
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"instance_area_px": {"p10": round(float(p10), 1), "median": round(float(p50), 1),
                                 "p90": round(float(p90), 1), "mean": round(float(values.mean()), 1)},
            "instance_ecd_px_median": round(float(np.median(2 * np.sqrt(values / np.pi))), 2)}


def _split_stats(items, by_id, classmap: ClassMap, good) -> dict:
    stats = {}
    for split in SPLITS:
        rows = [by_id[i["item_id"]] for i in good[split]]
        pixels = np.sum([r["pixels"] for r in rows], axis=0) if rows else np.zeros(classmap.num_classes)
        particles = np.sum([r["particles"] for r in rows], axis=0) if rows else np.zeros(classmap.num_classes)
        instances = np.sum([r["instances"] for r in rows], axis=0) if rows else np.zeros(classmap.num_classes)
        # kept tiles (images, classification) showing each class
        tiles = class_tile_counts([c for r in rows for c in r["tile_classes"]], classmap.num_classes)
        total = pixels.sum()
        stats[split] = {
            "images": len(rows),
            "tiles": int(sum(r["tiles"] for r in rows)),
            "classes": {
                name: {
                    "pixel_share": round(float(pixels[c] / total), 6) if total else 0.0,
                    "pixels": int(pixels[c]),
                    "particles": int(particles[c]),
                    "tiles": int(tiles[c]),
                    # instance-mask layouts: the true objects (touching ones merge into one particle); 0 elsewhere
                    "instances": int(instances[c]),
                    **_instance_sizes([area for r in rows for area in r["instance_areas"][c]]),
                }
                for c, name in enumerate(classmap.names)
            },
        }
    return stats


def classes_missing(stats: dict, split: str) -> list[str]:
    """Classes with training pixels but none in ``split`` (``PreparedData.stats``: split -> classes -> pixels):
    there, any stray pixel a candidate predicts of them scores IoU 0 and pulls its mIoU down by 1 / classes."""
    trained = stats.get("train", {}).get("classes", {})
    return [name for name, counts in stats.get(split, {}).get("classes", {}).items()
            if not counts["pixels"] and trained.get(name, {}).get("pixels")]


def classes_absent(stats: dict) -> list[str]:
    """Configured classes with no pixels (classification: no images) in any split (``PreparedData.stats``)."""
    splits = [stats.get(split, {}).get("classes", {}) for split in SPLITS]
    names = dict.fromkeys(name for classes in splits for name in classes)
    return [name for name in names if not any(classes.get(name, {}).get("pixels") for classes in splits)]


def classes_untrained(stats: dict) -> list[str]:
    """Classes with pixels in validation or test but none in training (``PreparedData.stats``)."""
    trained = stats.get("train", {}).get("classes", {})
    return [name for name in trained if not trained[name]["pixels"]
            and any(stats.get(split, {}).get("classes", {}).get(name, {}).get("pixels") for split in ("val", "test"))]


def _measure_normalization(train_items, by_id) -> dict[str, list[float]]:
    rows = [by_id[i["item_id"]] for i in train_items]
    n = sum(r["channel_n"] for r in rows)
    total = np.sum([r["channel_sum"] for r in rows], axis=0)
    squares = np.sum([r["channel_sq"] for r in rows], axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 1e-6))
    return {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}


def split_dataset(prepared: PreparedData, data: DataSettings, split: str, storage: Storage,
                  task_cpus: float = 0.5, source_ids: set[str] | None = None, exclude: set[str] | None = None,
                  repeats: dict[str, list[int]] | None = None):
    """A lazy Ray Dataset of training rows for one split (optionally restricted to some sources).

    ``repeats``: item id -> copies of each kept tile (``data.sampling.tile_repeats``), for a training split
    with rare-class oversampling; None: each tile once.
    """
    import ray

    items = [i for i in prepared.splits[split] if (source_ids is None or i["source_id"] in source_ids)
             and (exclude is None or i["source_id"] not in exclude)]
    if not items:
        return None
    classmap = prepared.classmap
    items = [{**i, "repeats": repeats.get(i["item_id"], []) if repeats is not None else None} for i in items]
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 200))
    # tiles in item order, not in the order Ray's tasks finish: with the seeded shuffle, a member's batches (and so
    # its weights) are the same in every run of one config and seed
    dataset.context.execution_options.preserve_order = True
    fill = mean_fill(prepared.normalization["mean"]) if prepared.normalization else 0
    scored = split != "train"  # validation / test: each pixel once in the metrics
    dataset = dataset.flat_map(lambda item: tile_rows(item, classmap, data, storage, item["repeats"], fill, scored),
                               num_cpus=task_cpus)
    cache = _should_cache(data, prepared, sum(i["tiles"] for i in items))
    if repeats is None:
        return dataset.materialize() if cache else dataset
    if cache and _fits_object_store(data, prepared, sum(sum(i["repeats"]) for i in items)):
        # the copies stored too: every epoch streams stored blocks (a flat_map run each epoch costs ~10x the time)
        return dataset.flat_map(expand_copies, num_cpus=task_cpus).materialize()
    return (dataset.materialize() if cache else dataset).flat_map(expand_copies, num_cpus=task_cpus)


def _should_cache(data: DataSettings, prepared: PreparedData, tiles: int) -> bool:
    return bool(data.cache) if data.cache != "auto" else _fits_object_store(data, prepared, tiles)


def _fits_object_store(data: DataSettings, prepared: PreparedData, tiles: int) -> bool:
    """Whether ``tiles`` tiles take under a quarter of the cluster's object store."""
    import ray

    # a tile's image (its input channels) and, for segmentation, its mask
    tile_bytes = data.tiling.size**2 * (3 if prepared.task is Task.CLASSIFICATION else data.in_channels + 1)
    store = ray.cluster_resources().get("object_store_memory", 0)
    return tiles * tile_bytes < store / 4


# ------------------------------------------------------------------- reports


def write_data_reports(prepared: PreparedData, output_uri: str, storage: Storage) -> dict[str, str]:
    """quarantine.csv / .json, dataset_stats.json / .csv, splits.json, classes.json and contents.json (item id ->
    its pixels' and labels' digest, ``PreparedData.contents``) under output_uri."""
    uris = {name: join_uri(output_uri, name) for name in
            ("quarantine.csv", "quarantine.json", "dataset_stats.json", "dataset_stats.csv", "splits.json",
             "classes.json", "contents.json")}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "reason"])
    writer.writerows([[r.file, r.reason] for r in prepared.quarantine])
    storage.write_text(uris["quarantine.csv"], buffer.getvalue())
    storage.write_json(uris["quarantine.json"], [asdict(r) for r in prepared.quarantine])
    document = {"stats": prepared.stats, "normalization": prepared.normalization}
    storage.write_json(uris["dataset_stats.json"], document)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "class", "pixel_share", "pixels", "particles", "tiles"])
    for split, values in prepared.stats.items():
        for name, cls in values["classes"].items():
            writer.writerow([split, name, cls["pixel_share"], cls["pixels"], cls["particles"], cls["tiles"]])
    storage.write_text(uris["dataset_stats.csv"], buffer.getvalue())
    splits = {split: [i["item_id"] for i in items] for split, items in prepared.splits.items()}
    if prepared.folds:
        splits["folds"] = [{"test": sorted(f.test), "val": sorted(f.val), "train": sorted(f.train)}
                           for f in prepared.folds]
    storage.write_json(uris["splits.json"], splits)
    storage.write_json(uris["classes.json"], prepared.classmap.to_document())
    storage.write_json(uris["contents.json"], prepared.contents, indent=None)
    return uris
