"""Dataset layouts -> items, through a registry: one ``@register_layout`` per layout.

An item is a plain dict (it travels through Ray Data): ``item_id``, ``source_id`` (what
splits group by), ``where`` (for reports), ``image`` / ``image_name`` (ref + file name),
and one of ``mask`` / ``mask_name``, ``polygons`` + ``size`` (COCO / Labelme, codes per
polygon; unannotated pixels are code 0; ``polygon_rule`` says how they are filled: ``coco``, as
pycocotools does, else Labelme's Pillow fill), or ``label`` (class folders). ``layout_split``
carries a split the layout itself names (VOC ImageSets lists, COCO train/valid/test
folders). :func:`make_item` builds one with every key present.

A layout is registered with its reader (one signature for all, see :data:`LayoutReader`),
the predicate ``detect_layout`` tries for ``layout: auto`` (in ``priority`` order, lowest
first), the task it trains and a hint for the "cannot recognise" error. The
:class:`~minseg.enums.DatasetLayout` enum stays the validated config value; every
member but ``AUTO`` has exactly one reader (checked at import). A reader applies the
source's ``include`` / ``exclude`` globs (``source.selects``) to its images before it pairs,
keys or checks them, and lists what they leave out in ``LayoutItems.left_out``; the pipeline
keeps only selected items of a reader that does not.
"""

from __future__ import annotations

import difflib
import json
import logging
import posixpath
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

from minseg.errors import InputError
from minseg.data.config import scene_in
from minseg.data.containers import IMAGE_SUFFIXES, Container, MemberError, Rejected, read_ref
from minseg.enums import DatasetLayout, MaskEncoding, Task
from minseg.io.images import JPEG_SUFFIXES
from minseg.io.storage import Storage
from minseg.logs import get_logger, log_event

if TYPE_CHECKING:
    from minseg.data.classmap import ClassMap
    from minseg.data.config import SourceSettings

log = get_logger("data.layouts")

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
JPEG_MASK = ("JPEG masks are not accepted: JPEG's lossy compression changes the class codes (or colours) along "
             "every edge, so pixels would train on classes nobody drew; save masks as PNG or TIFF")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _without_extension(path: str) -> str:
    """``a/b.jpg`` -> ``a/b``; the double extensions of OME-TIFF (``b.ome.tiff``) go whole."""
    lower = path.lower()
    for double in (".ome.tiff", ".ome.tif"):
        if lower.endswith(double):
            return path[: -len(double)]
    return posixpath.splitext(path)[0]


def _stem(path: str) -> str:
    return _without_extension(posixpath.basename(path))


def _outside_root(container: Container, root: str, folders: tuple[str, ...]) -> list[Rejected]:
    """Files under another copy of the layout's folders (``siteB/images/`` beside ``siteA/images/``):
    reported, never silently left out."""
    rejected = []
    for name in sorted(container.members):
        if name.startswith(root) and name[len(root):].split("/", 1)[0] in folders:
            continue
        if any(part in folders for part in name.split("/")[:-1]):
            rejected.append(Rejected(container.describe(name), f"outside the layout's root "
                                     f"'{root or './'}' (one {'/ + '.join(folders)}/ pair per source: give each "
                                     "root as its own data.sources entry)"))
    return rejected


def _keyed(container: Container, names, base: str, what: str, key_of=None,
           unmatched: str = "") -> tuple[dict[str, str], list[Rejected], set[str]]:
    """Members under ``base`` keyed by their path below it without the extension (``siteA/001``), so
    files of one name in different subfolders stay apart; two files with one key (``001.jpg`` and
    ``001.png``) cannot be told apart and are both quarantined, never one silently dropped. ``key_of`` maps
    that path to the key (a name pattern's scene); a path it gives None for is rejected with ``unmatched``.
    Returns (key -> member, rejected, the ambiguous keys)."""
    keyed: dict[str, list[str]] = defaultdict(list)
    rejected = []
    for name in names:
        key = _key_below(name, base, key_of)
        if key is None:
            rejected.append(Rejected(container.describe(name), unmatched))
            continue
        keyed[key].append(name)
    unique = {}
    for key, found in keyed.items():
        if len(found) == 1:
            unique[key] = found[0]
            continue
        for name in sorted(found):
            others = ", ".join(posixpath.basename(o) for o in sorted(found) if o != name)
            rejected.append(Rejected(container.describe(name), f"{what} {key!r} is ambiguous: {others} has the "
                                                              "same name; keep one"))
    return unique, rejected, set(keyed) - set(unique)


def _unpaired_mask(container: Container, mask: str, key: str, ambiguous: set[str], image: str) -> Rejected:
    """A mask no image pairs with: its image's name is ambiguous (those images are quarantined as such, and the
    mask is not "without an image"), or there is none (``image``: where it was looked for)."""
    return Rejected(container.describe(mask), f"the mask of {key!r}, whose images of one name are ambiguous (each "
                    "quarantined): keep one image" if key in ambiguous else f"mask without an image {image}")


def _chosen(source: SourceSettings, images: list[str]) -> tuple[list[str], list[str]]:
    """``images`` split into those the source's ``include`` / ``exclude`` keep and those they leave out. Every
    reader chooses before it pairs, keys or checks anything, so a left-out file is never reported, never pairs and
    never makes a kept one ambiguous."""
    kept, left_out = [], []
    for m in images:
        (kept if source.selects(m) else left_out).append(m)
    return kept, left_out


def _key_below(name: str, base: str, key_of=None) -> str | None:
    """A member's key: its path below ``base`` without the extension, mapped by ``key_of`` (a name pattern's
    scene; None when the name does not fit) when given."""
    key = _without_extension(name[len(base):])
    return key if key_of is None else key_of(key)


def _jpeg_masks(container: Container, base: str, key_of=None, skipped: set | None = None) -> dict[str, str]:
    """JPEGs under a masks folder, by the key their image would have (they are never used as masks: ``JPEG_MASK``)."""
    found = {}
    for name in sorted(container.members):
        if name.startswith(base) and name.lower().endswith(JPEG_SUFFIXES) and not _stem(name).startswith("."):
            key = _key_below(name, base, key_of)
            if key is not None and key not in (skipped or ()):
                found.setdefault(key, name)
    return found


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


# ------------------------------------------------------------------ registry


@dataclass(frozen=True)
class LayoutItems:
    """What a layout reader found in one source.

    ``items``: item dicts (see the module doc); ``rejected``: files not used and why;
    ``class_names``: the class names the layout itself names (class folders), else None; ``left_out``: the images
    the source's ``include`` / ``exclude`` globs leave out (member names; neither items nor rejected).
    """

    items: list[dict] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    class_names: tuple[str, ...] | None = None
    left_out: list[str] = field(default_factory=list)


@dataclass
class LayoutProbe:
    """One listed source as detection predicates see it; JSON is read lazily, at most once.

    ``storage`` is None when the caller cannot read members: predicates that need file
    contents (``first_json``) then see None.
    """

    container: Container
    images_dir: str = "images"
    masks_dir: str = "masks"
    storage: Storage | None = None

    @cached_property
    def members(self) -> list[str]:
        return list(self.container.members)

    @cached_property
    def jsons(self) -> list[str]:
        return [m for m in self.members if m.lower().endswith(".json")]

    @cached_property
    def images(self) -> list[str]:
        return [m for m in self.members if _is_image(m)]

    @cached_property
    def first_json(self) -> Any:
        """The first JSON member, parsed (None without JSON members or storage).

        Raises ValueError (``json.JSONDecodeError``) when it is not valid JSON, InputError when the member is
        corrupt (a bad CRC, broken compressed data).
        """
        if not self.jsons or self.storage is None:
            return None
        try:
            data = read_ref(self.container.members[self.jsons[0]], self.storage)
        except MemberError as exc:
            raise InputError(f"{exc} (read to recognise the dataset layout)") from None
        return json.loads(data)


LayoutReader = Callable[[Container, str, "SourceSettings", Storage, "ClassMap | None"], LayoutItems]
"""``reader(container, prefix, source, storage, classmap) -> LayoutItems``: ``prefix`` starts
item ids, ``source`` is the source's settings (``images_dir``, ``masks_dir``), ``classmap``
is None when ``data.classes`` is not set. Raises ValueError when the source cannot be read
as this layout at all; single bad files go to ``rejected``."""


@dataclass(frozen=True)
class LayoutEntry:
    layout: DatasetLayout | str
    read: LayoutReader
    detect: Callable[[LayoutProbe], bool]
    task: Task
    hint: str  # what detection looks for; may use {images_dir} and {masks_dir}
    priority: int


_REGISTRY: dict[str, LayoutEntry] = {}


def register_layout(layout: DatasetLayout | str, *, detect: Callable[[LayoutProbe], bool], task: Task, hint: str,
                    priority: int = 100):
    """Decorator registering ``reader`` (a :data:`LayoutReader`) for ``layout``.

    ``detect(probe) -> bool`` says whether a source looks like this layout; predicates
    are tried from the lowest ``priority`` up (ties: registration order) and the first
    that says yes wins. Raises ValueError for ``auto`` and when ``layout`` is registered already.
    """
    key = str(layout)
    if key == DatasetLayout.AUTO.value:
        raise ValueError("'auto' means detection; it cannot have a reader")

    def decorate(reader: LayoutReader) -> LayoutReader:
        if key in _REGISTRY:
            raise ValueError(f"layout {key!r} is registered twice")
        _REGISTRY[key] = LayoutEntry(layout, reader, detect, Task(task), hint, priority)
        return reader

    return decorate


def unregister_layout(layout: DatasetLayout | str) -> None:
    """Remove a registered layout (tests and plug-ins that register one temporarily)."""
    _REGISTRY.pop(str(layout), None)


def list_layouts() -> list[LayoutEntry]:
    """Registered layouts in detection order."""
    order = {key: index for index, key in enumerate(_REGISTRY)}
    return sorted(_REGISTRY.values(), key=lambda e: (e.priority, order[str(e.layout)]))


def get_layout(layout: DatasetLayout | str) -> LayoutEntry:
    """The entry of a registered layout; ValueError naming the registered ones otherwise."""
    try:
        return _REGISTRY[str(layout)]
    except KeyError:
        raise ValueError(f"unknown layout {str(layout)!r}; registered layouts: {', '.join(_REGISTRY)}") from None


def detect_layout(container: Container, images_dir: str = "images", masks_dir: str = "masks",
                  storage: Storage | None = None) -> DatasetLayout | str:
    """The first registered layout whose predicate accepts ``container``.

    Without ``storage`` no member is read (JSON contents are not looked at). Raises
    ValueError naming what was looked for when no layout fits, or when the JSON a
    predicate reads is invalid.
    """
    probe = LayoutProbe(container, images_dir, masks_dir, storage)
    entries = list_layouts()
    for entry in entries:
        if entry.detect(probe):
            return entry.layout
    hints = [entry.hint.format(images_dir=images_dir, masks_dir=masks_dir) for entry in entries if entry.hint]
    looked_for = ", ".join(hints[:-1]) + f", and {hints[-1]}" if len(hints) > 1 else "".join(hints)
    raise InputError(f"{container.uri}: cannot recognise the dataset layout (looked for {looked_for}); "
                     "set 'layout' explicitly")


def member_path(folder: str, relative: str) -> str:
    """A path written in an annotation file, relative to that file's folder, as a container member name.

    Annotation tools on Windows write ``..\\images\\a.jpg``: backslashes are separators here too; the name is
    compared in Unicode NFC form, as member names are (``Container.add``: a Mac writes names decomposed).
    """
    relative = unicodedata.normalize("NFC", str(relative).replace("\\", "/"))
    return posixpath.normpath(posixpath.join(folder, relative)).lstrip("/")


def make_item(container: Container, name_prefix: str, image: str, **extra) -> dict:
    """An item dict for member ``image`` with every key present (see the module doc).

    ``item_key`` / ``source_key`` (default: the image's stem) follow ``name_prefix/`` in
    ``item_id`` / ``source_id``; other keyword arguments set item keys (``mask``, ``label``, ...).
    """
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


# ------------------------------------------------------------------- readers


def _looks_voc(probe: LayoutProbe) -> bool:
    return _find_root(probe.members, "JPEGImages", "SegmentationClass") is not None


@register_layout(DatasetLayout.VOC, detect=_looks_voc, task=Task.SEGMENTATION,
                 hint="VOC JPEGImages/ + SegmentationClass/", priority=10)
def read_voc(container: Container, prefix: str, source: SourceSettings, storage: Storage,
             classmap: ClassMap | None) -> LayoutItems:
    root = _find_root(list(container.members), "JPEGImages", "SegmentationClass")
    chosen, left_out = _chosen(source, [m for m in container.members
                                        if m.startswith(f"{root}JPEGImages/") and _is_image(m)])
    images, rejected, ambiguous = _keyed(container, chosen, f"{root}JPEGImages/", "image")
    # a left-out image's mask (or its two same-named masks) is not reported
    skipped = {_key_below(m, f"{root}JPEGImages/") for m in left_out} - set(images)
    base = f"{root}SegmentationClass/"
    masks, bad_masks, _ = _keyed(container, [m for m in container.members if m.startswith(base) and
                                             m.lower().endswith(MASK_SUFFIXES) and _key_below(m, base) not in skipped],
                                 base, "mask")
    rejected += bad_masks + _outside_root(container, root, ("JPEGImages", "SegmentationClass"))
    listed: dict[str, str] = {}
    for name in container.members:
        if name.startswith(f"{root}ImageSets/Segmentation/") and name.endswith(".txt"):
            split = _SPLIT_ALIASES.get(_stem(name))
            if split:
                try:
                    lines = read_ref(container.members[name], storage).decode().split()
                except (MemberError, UnicodeDecodeError) as exc:
                    rejected.append(Rejected(container.describe(name), f"split list not used: {exc}"))
                    continue
                for line in lines:
                    name_ = unicodedata.normalize("NFC", line.strip())  # as the image names it is compared with
                    if listed.get(name_, split) != split:  # in two lists: which split it is in is anyone's guess
                        raise InputError(f"{container.describe(name)}: {name_!r} is also listed for the "
                                          f"{listed[name_]} split; each image in one list")
                    listed[name_] = split
    jpegs = _jpeg_masks(container, base, skipped=skipped)
    rejected += [Rejected(container.describe(name), JPEG_MASK) for key, name in sorted(jpegs.items())]
    items = []  # VOC's segmentation set is its masks: JPEGImages also holds detection-only images
    for key in sorted(masks):
        if key not in images:
            rejected.append(_unpaired_mask(container, masks[key], key, ambiguous, f"JPEGImages/{key}.jpg"))
            continue
        items.append(make_item(container, prefix, images[key], item_key=key, source_key=key,
                               mask=container.members[masks[key]], mask_name=masks[key], layout_split=listed.get(key)))
    for stem in sorted(set(listed) - set(masks) - skipped):
        rejected.append(Rejected(f"{container.uri}!{root}ImageSets/Segmentation", f"lists {stem!r}, which has no mask"))
    return LayoutItems(items, rejected, left_out=left_out)


def _looks_paired(probe: LayoutProbe) -> bool:
    return _find_root(probe.members, probe.images_dir, probe.masks_dir) is not None


@register_layout(DatasetLayout.PAIRED, detect=_looks_paired, task=Task.SEGMENTATION,
                 hint="{images_dir}/ + {masks_dir}/", priority=20)
def read_paired(container: Container, prefix: str, source: SourceSettings, storage: Storage,
                classmap: ClassMap | None) -> LayoutItems:
    """Images and masks paired by scene; with ``source.channels``, one image per channel entry (its own folder
    and name pattern) and the mask, all of one scene, make an item; a scene missing any of them is quarantined,
    naming what it lacks."""
    masks_dir = source.masks_dir
    declared = source.channels is not None
    # one declared entry without its own folder / pattern reads the source's (e.g. grey images named by a pattern)
    groups = [(group, group.images_dir or source.images_dir,
               group.image_pattern if declared and group.image_pattern != "{scene}" else source.image_pattern)
              for group in source.channel_groups]
    folders = tuple(dict.fromkeys([folder for _, folder, _ in groups] + [masks_dir]))
    root = _find_root(list(container.members), *folders)
    if root is None:
        raise InputError(f"{container.uri}: no {'/, '.join(folders)}/ folders")
    # paired by the path below images/ and masks/, subfolders included (siteA/001 never meets siteB/001), and by
    # the scene each name holds (image_pattern / mask_pattern: '{scene}_paralelos' meets '{scene}_mascara')
    def scene_key(pattern: str):
        def key_of(path: str) -> str | None:
            folder, _, name = path.rpartition("/")
            scene = scene_in(name, pattern)
            return None if scene is None else f"{folder}/{scene}" if folder else scene
        return key_of

    def named(key: str, folder: str, pattern: str) -> str:
        below, _, scene = key.rpartition("/")
        return f"{folder}/{below + '/' if below else ''}{pattern.replace('{scene}', scene)}.*"

    rejected: list[Rejected] = []
    # an image goes to the channel entry whose pattern fits its name most specifically (PPL and XPL may share a
    # folder: '{scene}_xpl' claims s01_xpl before a bare '{scene}' would); a name no pattern fits is refused once
    claimed: list[list[str]] = [[] for _ in groups]
    for folder in dict.fromkeys(folder for _, folder, _ in groups):
        here = [i for i, (_, f, _) in enumerate(groups) if f == folder]
        for member in (m for m in container.members if m.startswith(f"{root}{folder}/") and _is_image(m)):
            name = _without_extension(member.rpartition("/")[2])
            fits = [i for i in here if scene_in(name, groups[i][2]) is not None]
            if fits:
                claimed[max(fits, key=lambda i: len(groups[i][2]))].append(member)
            elif not source.selects(member):  # left out: not reported
                continue
            else:
                patterns = " or ".join(repr(groups[i][2]) for i in here)
                rejected.append(Rejected(container.describe(member), f"the name does not match "
                                         f"{'channels[].' if declared else ''}image_pattern {patterns}"))
    # include / exclude choose scenes by the first entry's image, before two files of one name count as ambiguous
    # (s1.jpg + s1.png with include '*.jpg' is s1.jpg); a left-out scene's other images and mask are not reported
    claimed[0], left_out = _chosen(source, claimed[0])
    images = []  # per channel entry: scene key -> member
    skipped: set[str] = set()
    ambiguous: set[str] = set()  # scene keys of several same-named images (each quarantined as such)
    for index, ((group, folder, pattern), members) in enumerate(zip(groups, claimed)):
        what = f"{group.name} image" if declared else "image"
        base, key_of = f"{root}{folder}/", scene_key(pattern)
        members = [m for m in members if _key_below(m, base, key_of) not in skipped]
        keyed, bad, same_named = _keyed(container, members, base, what, key_of)
        images.append(keyed)
        rejected += bad
        ambiguous |= same_named
        if index == 0:  # a left-out scene's other images and mask are not reported
            skipped = {_key_below(m, base, key_of) for m in left_out} - set(keyed)
    base, key_of = f"{root}{masks_dir}/", scene_key(source.mask_pattern)
    masks, bad_masks, _ = _keyed(container, [m for m in container.members if m.startswith(base)
                                             and m.lower().endswith(MASK_SUFFIXES)
                                             and _key_below(m, base, key_of) not in skipped],
                                 base, "mask", key_of, f"the name does not match mask_pattern {source.mask_pattern!r}")
    rejected += bad_masks + _outside_root(container, root, folders)
    jpegs = _jpeg_masks(container, base, key_of, skipped)
    items = []
    scenes = sorted(set().union(*images))
    for key in scenes:
        present = [keyed.get(key) for keyed in images]
        lacking = [named(key, folder, pattern) for (group, folder, pattern), found in zip(groups, present)
                   if found is None]
        if key not in masks:
            lacking.append(named(key, masks_dir, source.mask_pattern))
        if lacking:
            first = next(found for found in present if found is not None)
            reason = f"scene {key!r} has no {', no '.join(lacking)}" if declared else \
                f"no mask {lacking[0]} for this image"
            if key not in masks and key in jpegs:  # said here, where it is missed, not as a row of its own
                reason += f": its mask {jpegs.pop(key).rpartition('/')[2]} is a JPEG. {JPEG_MASK}"
            rejected.append(Rejected(container.describe(first), reason))
            continue
        extra = {}
        if declared:
            extra["channels"] = [group.entry(container.members[found], found)
                                 for (group, _, _), found in zip(groups, present)]
        items.append(make_item(container, prefix, present[0], item_key=key, source_key=key,
                               mask=container.members[masks[key]], mask_name=masks[key], **extra))
    for key in sorted(set(masks) - set(scenes)):
        _, folder, pattern = groups[0]
        rejected.append(_unpaired_mask(container, masks[key], key, ambiguous, named(key, folder, pattern)))
    rejected += [Rejected(container.describe(name), JPEG_MASK) for _, name in sorted(jpegs.items())]
    return LayoutItems(items, rejected, left_out=left_out)


def _instance_roots(members, images_dir: str, masks_dir: str) -> dict[str, dict[str, list[str]]]:
    """Folders ``<root>`` holding ``<root>/{images_dir}/`` files and/or ``<root>/{masks_dir}/`` files (masks
    also one class subfolder deeper), with those files."""
    roots: dict[str, dict[str, list[str]]] = {}
    for name in members:
        parts = name.split("/")
        if len(parts) >= 2 and parts[-2] == images_dir and _is_image(name):
            roots.setdefault("/".join(parts[:-2]), {"images": [], "masks": []})["images"].append(name)
        for depth in (2, 3):
            if len(parts) >= depth and parts[-depth] == masks_dir and name.lower().endswith(MASK_SUFFIXES) \
                    and not parts[-1].startswith("."):
                roots.setdefault("/".join(parts[:-depth]), {"images": [], "masks": []})["masks"].append(name)
    return roots


def _looks_instances(probe: LayoutProbe) -> bool:
    """One image per folder with its objects' masks beside it: most folders with an image hold exactly one (a
    faulty folder or two are quarantined when read, not a reason to read the source as another layout), and
    there are several such folders or a folder with several objects."""
    roots = _instance_roots(probe.members, probe.images_dir, probe.masks_dir)
    with_images = {root: r for root, r in roots.items() if r["images"]}

    def object_folder(root: str, found: dict) -> bool:  # a paired folder names its mask like its image
        stems = {_stem(m) for m in found["masks"]}
        return root != "" and len(found["images"]) == 1 and _stem(found["images"][0]) not in stems
    single = [root for root, r in with_images.items() if object_folder(root, r)]
    return len(single) >= 2 and 2 * len(single) >= len(with_images)


@register_layout(DatasetLayout.INSTANCE_FOLDERS, detect=_looks_instances, task=Task.SEGMENTATION,
                 hint="<id>/{images_dir}/<id>.png + <id>/{masks_dir}/<object>.png", priority=15)
def read_instance_folders(container: Container, prefix: str, source: SourceSettings, storage: Storage,
                          classmap: ClassMap | None) -> LayoutItems:
    """One item per ``<id>/`` folder: its image, and its objects' binary masks merged into the class mask
    (``instance_class``, or the class a ``masks/<class>/`` subfolder names), instances kept for their count.
    Every file not used is quarantined with why (several images in a folder, masks without an image, a class
    folder that is no class)."""
    if classmap is None:
        raise InputError("instance-mask folders need data.classes (which class the objects are)")
    if classmap.mask_encoding is not MaskEncoding.CODES:
        raise InputError("instance-mask folders give class codes (each object mask says where one object is): "
                         "data.classes.mask_encoding must be codes")
    if 0 not in classmap.code_to_id():
        raise InputError("instance-mask folders need a class with code 0 in data.classes: the pixels no object "
                         "covers")
    images_dir, masks_dir = source.images_dir, source.masks_dir
    roots = _instance_roots(container.members, images_dir, masks_dir)
    used = {name for root in roots.values() for group in root.values() for name in group}
    rejected = [Rejected(container.describe(name), JPEG_MASK if name.lower().endswith(JPEG_SUFFIXES)
                         and masks_dir in name.split("/")[-3:-1] else f"not an image in an <id>/{images_dir}/ "
                         f"folder nor a mask ({', '.join(MASK_SUFFIXES)}) in an <id>/{masks_dir}/ folder")
                for name in sorted(container.members) if name not in used and _is_image(name)]
    items, left_out = [], []
    for root, found in sorted(roots.items()):
        where = root or "./"
        if found["images"]:  # a folder whose images are all left out is left out whole (its masks unreported)
            found["images"], dropped = _chosen(source, found["images"])
            left_out += dropped
            if dropped and not found["images"]:
                continue
        if len(found["images"]) != 1:
            reason = (f"no image in {where}/{images_dir}/ for these masks" if not found["images"] else
                      f"{where}/{images_dir}/ holds {len(found['images'])} images; one image per instance folder")
            rejected += [Rejected(container.describe(n), reason) for n in sorted(found["images"] + found["masks"])]
            continue
        if not found["masks"]:  # an unlabelled image (a test folder) is no all-background ground truth
            rejected.append(Rejected(container.describe(found["images"][0]), f"no object masks in {where}/"
                                     f"{masks_dir}/ (an image without annotation is not used for training)"))
            continue
        codes, kept = [], []
        for name in sorted(found["masks"]):
            below = name[len(f"{root}/" if root else ""):].split("/")
            klass = below[1] if len(below) == 3 else source.instance_class
            if klass is None:
                raise InputError(f"{container.uri}: {where}/{masks_dir}/ holds object masks but their class is not "
                                 "said: set the source's instance_class, or put them in masks/<class>/ folders")
            if klass not in classmap.names:
                rejected.append(Rejected(container.describe(name), f"class {klass!r} is not in data.classes "
                                                                   f"({', '.join(classmap.names)})"))
                continue
            codes.append(classmap.codes[classmap.names.index(klass)][0])
            kept.append(name)
        key = root or _stem(found["images"][0])
        items.append(make_item(container, prefix, found["images"][0], item_key=key, source_key=key,
                               instances=[container.members[n] for n in kept], instance_names=kept,
                               instance_codes=codes, background_code=0))
    return LayoutItems(items, rejected, left_out=left_out)


def _split_alias(name: str) -> str | None:
    """The split a folder or file name stands for: train / val / test, or None. A release year after the word is
    COCO's (train2017, val2017)."""
    return _SPLIT_ALIASES.get(re.sub(r"[-_]?(19|20)\d\d$", "", name.lower()))


def _folder_split(path: str) -> str | None:
    for part in reversed(posixpath.dirname(path).split("/")):
        if split := _split_alias(part):
            return split
    return None


def ring_problem(ring: list[float]) -> str | None:
    """What makes a flat ``[x0, y0, x1, y1, ...]`` polygon ring unpaintable, or None: fewer than three points (no
    area: it would paint nothing and leave its object as background) or an odd count of numbers (a point lost)."""
    if len(ring) % 2:
        return f"a polygon of {len(ring)} numbers, not x, y pairs"
    if len(ring) < 6:
        return f"a polygon of {len(ring) // 2} point(s): it needs 3 or more to enclose any pixel"
    return None


def ring_meets_image(ring: list[float], width: int, height: int) -> bool:
    """Whether a flat ``[x0, y0, ...]`` ring's bounding box overlaps the ``width`` x ``height`` image (pixel-edge
    coordinates): one wholly outside paints nothing."""
    xs, ys = ring[0::2], ring[1::2]
    return min(xs) < width and max(xs) > 0 and min(ys) < height and max(ys) > 0


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
    if sum(counts) != height * width or any(run < 0 for run in counts):
        raise ValueError(f"RLE runs add up to {sum(counts)} pixels, not the {height} x {width} = {height * width} of "
                         "its image (or a run is negative): a damaged or foreign mask")
    flat = np.zeros(height * width, dtype=np.uint8)
    position, value = 0, 0
    for run in counts:
        flat[position : position + run] = value
        position += run
        value = 1 - value
    return flat.reshape((width, height)).T  # column-major


def _looks_coco(probe: LayoutProbe) -> bool:
    # by name first: no member is read for the usual Roboflow / COCO file names
    if any("coco" in m.lower() or posixpath.basename(m).startswith("instances") for m in probe.jsons):
        return True
    sample = probe.first_json
    return isinstance(sample, dict) and "images" in sample and "annotations" in sample


def _category_zero(document: dict) -> str | None:
    """Why a COCO file cannot be used when an annotation has category id 0, else None.

    A category 0 no annotation uses is fine: Roboflow exports list their supercategory as id 0.
    """
    names = {c.get("id"): c.get("name") for c in document.get("categories", []) if isinstance(c, dict)}
    if not any(a.get("category_id") == 0 for a in document["annotations"] if isinstance(a, dict)):
        return None
    name = f" ({names[0]!r})" if names.get(0) else ""
    return (f"annotations of category id 0{name} collide with code 0, which minseg gives every pixel no "
            "annotation covers; renumber the categories from 1 (COCO's own convention)")


def _in_annotations_folder(json_name: str) -> bool:
    return posixpath.basename(posixpath.dirname(json_name)).lower() == "annotations"


def _coco_split_word(json_name: str) -> str:
    """The split word of an annotation file in ``annotations/``: ``instances_train2017.json`` -> ``train2017``."""
    return posixpath.splitext(posixpath.basename(json_name))[0].rsplit("_", 1)[-1]


def _coco_image(container: Container, json_name: str, file_name: str) -> tuple[str, str, list[str]]:
    """(the member an ``images[]`` entry's ``file_name`` names, the folder its item key is taken relative to, the
    paths tried). Exports keep the images beside the annotation file (``file_name`` relative to its folder). The
    COCO dataset's own layout keeps annotation files in ``annotations/`` and each split's images in a folder beside
    it (``annotations/instances_train2017.json`` -> ``train2017/``); other tools use ``images/<split>/``,
    ``images/`` or the folder holding ``annotations/`` itself. For an annotation file in a folder named
    ``annotations``, those are tried in that order after its own folder; the first that exists wins. None exists:
    the path beside the file (reported missing)."""
    folder = posixpath.dirname(json_name)
    beside = member_path(folder, file_name)
    if beside in container.members or not _in_annotations_folder(json_name):
        return beside, folder, [beside]
    parent, split = posixpath.dirname(folder), _coco_split_word(json_name)
    tried = [beside]
    for root in (posixpath.join(parent, split), posixpath.join(parent, "images", split),
                 posixpath.join(parent, "images"), parent):
        path = member_path(root, file_name)
        if path in container.members:
            return path, root, tried
        tried.append(path)
    return beside, folder, list(dict.fromkeys(tried))  # an absolute file_name is the same path from every root


def _not_object_annotations(json_name: str, document: dict, names: set[str]) -> str | None:
    """Why an annotation file listing images is not read for masks, or None. The COCO dataset's ``annotations/``
    holds captions (no objects: no annotation has a ``category_id``) and ``person_keypoints_<split>.json``, whose
    person masks repeat those of ``instances_<split>.json`` beside it (each image would be listed twice)."""
    annotations = document["annotations"]
    if isinstance(annotations, list) and annotations and not any(
            isinstance(a, dict) and "category_id" in a for a in annotations):
        return "no annotation has a category_id: not object annotations (image captions?)"
    base = posixpath.basename(json_name)
    if base.startswith("person_keypoints_"):
        twin = posixpath.join(posixpath.dirname(json_name), "instances_" + base.removeprefix("person_keypoints_"))
        if twin in names:
            return f"its person masks repeat those of {twin}"
    return None


@register_layout(DatasetLayout.COCO, detect=_looks_coco, task=Task.SEGMENTATION, hint="COCO or Labelme JSON", priority=30)
def read_coco(container: Container, prefix: str, source: SourceSettings, storage: Storage,
              classmap: ClassMap | None) -> LayoutItems:
    items, rejected, left_out, listed, unreadable, dropped = [], [], [], set(), [], []
    missing: dict[str, str] = {}  # image file name -> how an annotation file listed it, where it was looked for
    annotation_files = [m for m in container.members if m.lower().endswith(".json")]
    for json_name in sorted(annotation_files):
        try:
            document = json.loads(read_ref(container.members[json_name], storage))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            rejected.append(Rejected(container.describe(json_name), f"not valid JSON ({exc})"))
            unreadable.append(json_name)
            continue
        except MemberError as exc:
            rejected.append(Rejected(container.describe(json_name), str(exc)))
            unreadable.append(json_name)
            continue
        if not isinstance(document, dict) or "images" not in document or "annotations" not in document:
            continue
        if skipped := _not_object_annotations(json_name, document, set(annotation_files)):
            log_event(log, "data.coco_file_skipped", source=container.uri, file=json_name, reason=skipped)
            continue
        resolved: dict[str, tuple[str, str, list[str]]] = {}  # this listing pass's and the items' pass's

        def locate(file_name) -> tuple[str, str, list[str]]:
            """``_coco_image``'s answer, once per file name (a malformed one: its own error, every time)."""
            if not isinstance(file_name, str):
                return _coco_image(container, json_name, file_name)
            if file_name not in resolved:
                resolved[file_name] = _coco_image(container, json_name, file_name)
            return resolved[file_name]

        for entry in document["images"] if isinstance(document["images"], list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
                image, _, tried = locate(entry["file_name"])
                listed.add(image)
                if image not in container.members:
                    missing[posixpath.basename(image)] = (f"listed in {json_name} as {entry['file_name']!r}, looked "
                                                          f"for at {', '.join(tried)}")
        clash = _category_zero(document)
        if clash is not None:  # 0 fills every pixel no annotation covers: the category would swallow them
            rejected.append(Rejected(container.describe(json_name), clash))
            continue
        by_image = defaultdict(list)
        for annotation in document["annotations"]:
            by_image[annotation.get("image_id")].append(annotation)
        ids = {entry.get("id") for entry in document["images"] if isinstance(entry, dict)}
        orphans = [key for key in by_image if key not in ids]
        if orphans:  # their objects would be in no mask
            rejected.append(Rejected(container.describe(json_name), f"{sum(len(by_image[k]) for k in orphans)} "
                                     f"annotation(s) refer to image ids no images[] entry has ({orphans[0]!r}"
                                     f"{' and others' if len(orphans) > 1 else ''}): their objects are in no mask"))
        for entry in document["images"]:
            try:
                image, root, tried = locate(entry["file_name"])
                where = container.describe(image)
                if not source.selects(image):  # left out: listed or not, it is not reported
                    left_out.append(image)
                    continue
                if image not in container.members:
                    looked = f" (looked for at {', '.join(tried)})" if len(tried) > 1 else ""
                    rejected.append(Rejected(where, f"listed in {json_name} as {entry['file_name']!r} but "
                                                    f"missing{looked}"))
                    continue
                shapes, problem = [], None
                for annotation in by_image.get(entry["id"], []):
                    segmentation = annotation.get("segmentation")
                    code = annotation["category_id"]
                    if isinstance(code, float) and code.is_integer():  # 1.0, as pandas-based exporters write
                        code = int(code)
                    if isinstance(code, bool) or not isinstance(code, int):  # 2.7 would become class 2
                        raise ValueError(f"annotation {annotation.get('id')} has category_id {code!r}, not an "
                                         "integer")
                    if isinstance(segmentation, list) and segmentation:
                        rings = [list(map(float, ring)) for ring in segmentation]
                        problems = [ring_problem(r) for r in rings]
                        odd = next((p for r, p in zip(rings, problems) if len(r) % 2), None)
                        usable = [r for r, p in zip(rings, problems) if not p]
                        width, height = int(entry["width"]), int(entry["height"])
                        if odd or not usable:  # a point lost (damaged), or nothing of the object to paint
                            problem = f"annotation {annotation.get('id')}: {odd or problems[0]}"
                        elif not any(ring_meets_image(r, width, height) for r in usable):
                            problem = (f"annotation {annotation.get('id')}: its polygon lies wholly outside the "
                                       f"{width}x{height} image: it would paint nothing (coordinates of another "
                                       "image, or of the image before a resize?)")
                        elif len(usable) < len(rings):  # a sliver of no area beside the object's real parts
                            dropped.append(annotation.get("id"))
                        shapes.append((code, usable))
                    elif isinstance(segmentation, dict) and "counts" in segmentation:
                        shapes.append((code, {"rle": segmentation["counts"], "size": segmentation.get("size")}))
                    elif isinstance(segmentation, list):  # [] with a bbox: a detection export, nothing to paint
                        problem = (f"annotation {annotation.get('id')} has an empty segmentation (a bounding box "
                                   "only?): its object would be painted as background")
                    else:
                        problem = f"annotation {annotation.get('id')} has no polygon or RLE segmentation"
                if problem:
                    rejected.append(Rejected(where, problem))
                    continue
                key = posixpath.splitext(posixpath.relpath(image, root or "."))[0]  # subfolders kept
                items.append(make_item(
                    container, prefix, image,
                    item_key=posixpath.join(posixpath.basename(root), key) if root else key,
                    source_key=key,
                    polygons=shapes, size=[int(entry["height"]), int(entry["width"])], polygon_rule="coco",
                    layout_split=_folder_split(image) or (_split_alias(_coco_split_word(json_name))
                                                          if _in_annotations_folder(json_name) else None),
                ))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a malformed entry: that image only
                shown = entry.get("file_name") if isinstance(entry, dict) else None
                rejected.append(Rejected(container.describe(json_name), f"images[] entry {shown or entry!r:.80}: "
                                         f"malformed COCO ({type(exc).__name__}: {exc})"))
    if not items and not rejected and not left_out:
        raise InputError(f"{container.uri}: no COCO annotation file with images and annotations")
    if dropped:
        log_event(log, "data.coco_slivers_dropped", logging.WARNING, source=container.uri, annotations=len(dropped),
                  example=dropped[0], hint="polygon parts of fewer than 3 points (no area) left out; the rest of "
                  "each object is painted")
    for image in sorted(m for m in container.members if _is_image(m) and m not in listed and source.selects(m)):
        if posixpath.basename(image) in missing:  # e.g. images/ beside annotations/: paths are read from the JSON
            reason = (f"{missing[posixpath.basename(image)]}: an annotation file's file_name is read relative to its "
                      "own folder (for a file in annotations/, also from the split's folder or images/ beside it); "
                      "keep the images beside it (as COCO exports do) or write the path from there")
        else:
            reason = ("an image no " + ("readable " if unreadable else "") + "COCO annotation file lists: what it "
                      "shows is not known (add it to the export, or leave it out with exclude)"
                      + (f"; not read: {', '.join(unreadable)}" if unreadable else ""))
        rejected.append(Rejected(container.describe(image), reason))
    return LayoutItems(items, rejected, left_out=left_out)


def _looks_labelme(probe: LayoutProbe) -> bool:
    sample = probe.first_json
    return isinstance(sample, dict) and "shapes" in sample


@register_layout(DatasetLayout.LABELME, detect=_looks_labelme, task=Task.SEGMENTATION, hint="",  # said with COCO's
                 priority=40)
def read_labelme(container: Container, prefix: str, source: SourceSettings, storage: Storage,
                 classmap: ClassMap | None) -> LayoutItems:
    """Raises ValueError without a class map: Labelme labels are class names."""
    if classmap is None:
        raise InputError("Labelme sources need data.classes (labels are matched by class name)")
    names = classmap.names
    items, rejected, left_out = [], [], []
    images = {posixpath.splitext(m)[0]: m for m in container.members if _is_image(m)}
    for json_name in sorted(m for m in container.members if m.lower().endswith(".json")):
        where = container.describe(json_name)
        try:
            document = json.loads(read_ref(container.members[json_name], storage))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            rejected.append(Rejected(where, f"not valid JSON ({exc})"))
            continue
        except MemberError as exc:
            rejected.append(Rejected(where, str(exc)))
            continue
        if not isinstance(document, dict):
            rejected.append(Rejected(where, f"not a Labelme document (a JSON object with shapes; this is a "
                                            f"{type(document).__name__})"))
            continue
        try:
            folder = posixpath.dirname(json_name)
            listed = document.get("imagePath")
            resolved = member_path(folder, listed) if listed else None
            image = resolved if resolved in container.members else images.get(posixpath.splitext(json_name)[0])
            if image is None:
                shown = f"{listed!r}, resolved to {container.describe(resolved)}" if listed else "none given"
                rejected.append(Rejected(where, f"its image is missing (imagePath {shown}; no image named like the "
                                                "JSON beside it either)"))
                continue
            if not source.selects(image):  # left out: its annotation is not checked nor reported
                left_out.append(image)
                continue
            shapes, problem = [], None
            for shape in document.get("shapes", []):
                label, kind, points = shape.get("label"), shape.get("shape_type", "polygon"), shape.get("points", [])
                if label not in names:
                    problem = f"unknown label {label!r} (classes: {', '.join(names)})"
                    break
                if classmap.codes[names.index(label)][0] == 0:  # 0 fills every pixel no shape covers
                    problem = (f"label {label!r} has code 0, which minseg gives every pixel no shape covers; list the "
                               "background class first in data.classes (or give this class another code)")
                    break
                if kind == "rectangle" and len(points) == 2:
                    (x0, y0), (x1, y1) = points
                    points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
                elif kind == "rectangle":
                    problem = f"a rectangle needs 2 points, it has {len(points)}"
                elif kind != "polygon":
                    problem = f"shape type {kind!r} is not supported (polygon, rectangle)"
                    break
                ring = [float(c) for point in points for c in point]
                if kind == "polygon" and (unpaintable := ring_problem(ring)):
                    problem = f"a {label!r} polygon: {unpaintable}"
                    break
                shapes.append((classmap.codes[names.index(label)][0], [ring]))
            if problem:
                rejected.append(Rejected(where, problem))
                continue
            size = [int(document["imageHeight"]), int(document["imageWidth"])] if "imageHeight" in document else None
            key = posixpath.splitext(image)[0]  # the image's path in the source: subfolders kept
            items.append(make_item(container, prefix, image, item_key=key, source_key=key, polygons=shapes, size=size))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a malformed document: its image only
            rejected.append(Rejected(where, f"malformed Labelme ({type(exc).__name__}: {exc})"))
    return LayoutItems(items, rejected, left_out=left_out)


def _looks_class_folders(probe: LayoutProbe) -> bool:
    foldered = [m for m in probe.images if posixpath.dirname(m)]
    parents = {posixpath.dirname(m) for m in foldered}
    # a stray picture beside the class folders (a preview, a logo) does not hide the layout: it is quarantined
    stray = len(probe.images) - len(foldered)
    return len(parents) >= 2 and stray <= max(1, len(foldered) // 20)


@register_layout(DatasetLayout.CLASS_FOLDERS, detect=_looks_class_folders, task=Task.CLASSIFICATION,
                 hint="one folder per class", priority=50)
def read_class_folders(container: Container, prefix: str, source: SourceSettings, storage: Storage,
                       classmap: ClassMap | None) -> LayoutItems:
    """Classes are the configured names when a class map is given, else the folder names (sorted).

    An image's class is its folder's name; with configured classes, the nearest enclosing folder named as one
    (``Quartz/batch1/001.jpg`` is quartz: subfolders of a class folder are the class's). Images outside any folder,
    and in folders no configured class names, are quarantined; a whole folder left out so is logged as a warning
    with the configured name nearest to it (a misspelt class), and folders of one name under several parents
    without configured classes (``siteA/quartz``, ``siteB/quartz``, or ``Quartz/batch1``, ``Pyrite/batch1``) too.
    """
    # a class folder that include / exclude leave out entirely is no class (it would never be trained)
    images, left_out = _chosen(source, [m for m in container.members if _is_image(m)])
    configured = classmap.names if classmap is not None else None
    folder_of = {m: _class_folder(m, configured) for m in images if posixpath.dirname(m)}
    names = configured or tuple(sorted(set(folder_of.values())))
    if not configured:
        _warn_repeated_class_folders(container, [m for m in images if m in folder_of])
        _warn_names_differing_in_case(container, names)
    items, rejected, unconfigured = [], [], defaultdict(list)
    for image in sorted(images):
        if image not in folder_of:
            rejected.append(Rejected(container.describe(image), "an image outside any class folder (a class-folder "
                                     "source holds one folder of images per class)"))
            continue
        folder = folder_of[image]
        if folder not in names:
            rejected.append(Rejected(container.describe(image), f"folder {folder!r} is not a configured class"))
            unconfigured[posixpath.dirname(image)].append(image)
            continue
        key = posixpath.splitext(image)[0]  # the whole path: siteA/quartz/001 and siteB/quartz/001 stay apart
        items.append(make_item(container, prefix, image, item_key=key, source_key=key, label=names.index(folder),
                               layout_split=_folder_split(image)))  # an export's train / valid / test folders
    for m in container.members:
        if not _is_image(m):
            rejected.append(Rejected(container.describe(m), "not an image"))
    for folder, held in unconfigured.items():
        near = _nearest_class(held[0], names)  # a misspelt class folder may hold subfolders: every level is tried
        log_event(log, "data.class_folder_not_configured", logging.WARNING, source=container.uri,
                  folder=folder, images=len(held), hint=(f"did you mean {near!r}? " if near else "")
                  + "its images are quarantined: add the class to data.classes or rename the folder")
    return LayoutItems(items, rejected, names, left_out)


def _class_folder(image: str, configured: tuple[str, ...] | None) -> str:
    """The folder that names ``image``'s class: the nearest enclosing one a configured class names, else (or
    without configured classes) its own folder."""
    folders = posixpath.dirname(image).split("/")
    if configured:
        for folder in reversed(folders):
            if folder in configured:
                return folder
    return folders[-1]


def _nearest_class(image: str, names: tuple[str, ...]) -> str | None:
    """The configured class name nearest to any folder enclosing ``image`` (a misspelt class folder), if any."""
    matches = [(difflib.SequenceMatcher(None, folder, name).ratio(), name)
               for folder in posixpath.dirname(image).split("/") for name in names]
    best = max(matches, default=(0.0, None))
    return best[1] if best[0] >= 0.6 else None


def _warn_repeated_class_folders(container: Container, images: list[str]) -> None:
    """One folder name under several parents: several sites' class folders, or a class folder's subfolders
    (batches, samples) read as classes. Which one is meant cannot be told from the names: say so."""
    parents: dict[str, set[str]] = defaultdict(set)
    for image in images:
        folder = posixpath.dirname(image)
        # an export's split folders (train/quartz, valid/quartz) hold the same classes: not a repeat
        parent = [part for part in posixpath.dirname(folder).split("/") if part.lower() not in _SPLIT_ALIASES]
        parents[posixpath.basename(folder)].add("/".join(parent))
    repeated = {name: sorted(p) for name, p in parents.items() if len(p) > 1}
    if repeated:
        name, where = next(iter(sorted(repeated.items())))
        log_event(log, "data.class_folders_repeated", logging.WARNING, source=container.uri,
                  classes=",".join(sorted(repeated)), example=f"{name!r} in {', '.join(where[:3])}",
                  hint="each image's class is the folder it sits in, so images of one such name are one class "
                       "wherever they are (sites, surveys); if the classes are folders further up (these hold "
                       "batches or samples), list them in data.classes: an image then takes the nearest enclosing "
                       "folder named as a class. Listing the classes also confirms the first reading and silences "
                       "this")


def _warn_names_differing_in_case(container: Container, names: tuple[str, ...]) -> None:
    """Class folders whose names differ only in case (``Quartz``, ``quartz``) are two classes: on a case-insensitive
    file system (Windows, macOS) they were one folder, and merged by hand they rarely mean two minerals."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_name[name.casefold()].append(name)
    alike = [spelt for spelt in by_name.values() if len(spelt) > 1]
    if alike:
        log_event(log, "data.class_folders_differ_in_case", logging.WARNING, source=container.uri,
                  classes="; ".join(", ".join(spelt) for spelt in alike),
                  hint="each is a class of its own; rename the folders alike if they are one class, or list the "
                       "classes in data.classes to confirm they are several")


def _check_registry() -> None:
    # the enum is what configs validate against: a member without a reader would pass
    # validation and fail only when a job lists its sources
    missing = [m.value for m in DatasetLayout if m is not DatasetLayout.AUTO and m.value not in _REGISTRY]
    if missing:
        raise RuntimeError(f"DatasetLayout members without a registered reader: {', '.join(missing)}")


_check_registry()
