"""The ``data`` config section: sources, class map, splits, tiling, augmentation, limits."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_serializer, model_validator

from minseg.config.base import Name, Seed, StrictModel
from minseg.enums import Augmentation, ChannelMode, DatasetLayout, MaskEncoding, SplitGroup, SplitStratify
from minseg.io.config import Uri
from minseg.io.images import BIT_DEPTH


def _normalization(value: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per-channel ``mean`` and ``std`` (uint8 units): both given; every std a finite number above 0 (inputs are
    divided by it: 0 gives infinities, a negative one flips the channel)."""
    missing = {"mean", "std"} - set(value)
    if missing:
        raise ValueError(f"needs {' and '.join(sorted(missing))} (per-channel lists)")
    bad = [v for v in value["std"] if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"std must be finite numbers above 0 (inputs are divided by them); got {bad[0]!r}")
    return value


#: per-channel normalisation statistics, validated (``data.normalization``, manifests)
Normalization = Annotated[dict[str, list[float]], AfterValidator(_normalization)]
#: significant bits of images stored with 16 bits per sample (``data.bit_depth``, manifests, ``segment.bit_depth``)
BitDepth = Annotated[int, Field(ge=8, le=16)]
#: one bit depth for every image of a scene, or {image name: bits} for some (``segment.bit_depth``)
SceneBitDepth = Annotated[Annotated[BitDepth, Tag("all")] | Annotated[dict[str, BitDepth], Tag("each")],
                          Discriminator(lambda value: "each" if isinstance(value, dict) else "all")]


class ClassSpec(StrictModel):
    name: str = Field(min_length=1)
    codes: list[int] = Field(default_factory=list, description="mask values (or COCO category ids) of this class")
    color: tuple[int, int, int] | None = Field(None, description="display colour; the mask colour when masks are RGB")

    @field_validator("color")
    @classmethod
    def _rgb(cls, value):
        if value is not None and any(not 0 <= c <= 255 for c in value):
            raise ValueError("colour components must be 0..255")
        return value


def class_list_problem(names: list[str], any_case: bool = False) -> str | None:
    """What is wrong with class names by id (id = position from 0), or None: an empty name would leave its id
    unnamed, a repeated one would merge two classes' numbers. ``any_case``: names that differ only in case repeat
    too (a class map to train, a list given now such as ``measure --classes``: mineralogy's densities and
    background classes match names in any case); an ensemble manifest's names, from a class map that refuses such
    names since 2026-12-07, are taken as they are. Every class list is checked here: the training class map, the
    manifest, ``--classes`` and mineralogy's."""
    seen: dict[str, int] = {}
    for class_id, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            return f"class id {class_id} (entry {class_id + 1} of {len(names)}) has an empty name"
        key = name.strip().casefold() if any_case else name.strip()
        if key in seen:
            first = names[seen[key]].strip()
            named = f"{first!r} names" if first == name.strip() else f"{first!r} and {name.strip()!r} (in any case) name"
            why = ("" if first == name.strip()
                   else " (mineralogy's densities and background classes match names in any case)")
            return (f"{named} class ids {seen[key]} and {class_id} (entries {seen[key] + 1} and {class_id + 1}); every "
                    f"class needs its own name{why}")
        seen[key] = class_id
    return None


class ClassMapSettings(StrictModel):
    """Names, colours and mask codes -> contiguous ids 0..n-1 in the listed order."""

    classes: list[ClassSpec] = Field(min_length=1)
    ignore_index: int = Field(255, ge=0, le=255)
    ignore_codes: list[int] = Field(default_factory=list, description="mask codes mapped to the ignore index")
    ignore_colors: list[tuple[int, int, int]] = Field(
        default_factory=list, description="mask colours mapped to the ignore index (mask_encoding: colors), e.g. the "
        "white of unlabelled pixels")
    mask_encoding: MaskEncoding = MaskEncoding.CODES

    @model_validator(mode="after")
    def _consistent(self) -> "ClassMapSettings":
        # in any case: mineralogy matches names so (densities, background classes): segment would refuse the manifest
        if problem := class_list_problem([c.name for c in self.classes], any_case=True):
            raise ValueError(problem)
        if self.ignore_index < len(self.classes):
            raise ValueError(f"ignore_index {self.ignore_index} collides with class id (there are {len(self.classes)} classes)")
        seen: dict[int, str] = {}
        for index, spec in enumerate(self.classes):
            # a class without codes has code = its position; it must not be another class's explicit code
            name = spec.name if spec.codes else f"{spec.name} (by default: its position, as it lists no codes)"
            for code in spec.codes or [index]:
                if code in seen:
                    raise ValueError(f"mask code {code} is given to both {seen[code]!r} and {name!r}")
                seen[code] = name
        clash = sorted(set(seen) & set(self.ignore_codes))
        if clash:
            raise ValueError(f"codes {clash} are both class codes and ignore_codes")
        if self.mask_encoding is MaskEncoding.COLORS:
            self._consistent_colours()
        elif self.ignore_colors:
            raise ValueError("ignore_colors are read from colour masks (mask_encoding: colors); with class codes, "
                             "use ignore_codes")
        return self

    def _consistent_colours(self) -> None:
        """Colour masks: every class has a colour of its own (a colour given twice would read one class's pixels
        as the other's), none an ignore colour; ignore_codes would never match (the masks hold colours)."""
        if any(c.color is None for c in self.classes):
            raise ValueError("mask_encoding 'colors' needs a color for every class")
        owner: dict[tuple[int, int, int], str] = {}
        for spec in self.classes:
            if tuple(spec.color) in owner:
                raise ValueError(f"colour {list(spec.color)} is given to both {owner[tuple(spec.color)]!r} and "
                                 f"{spec.name!r}: with mask_encoding colors each class needs its own colour")
            owner[tuple(spec.color)] = spec.name
        if any(not 0 <= v <= 255 for c in self.ignore_colors for v in c):
            raise ValueError("ignore_colors: colour components must be 0..255")
        clash = [list(c) for c in self.ignore_colors if tuple(c) in owner]
        if clash:
            raise ValueError(f"colours {clash} are both class colours and ignore_colors")
        if self.ignore_codes:
            raise ValueError("ignore_codes are mask values, and colour masks hold colours: list the colours of "
                             "unlabelled pixels as ignore_colors (e.g. [[255, 255, 255]])")


def scene_in(name: str, pattern: str) -> str | None:
    """The ``{scene}`` part of a file name (without its extension) under a name pattern, None when it does not
    match: ``scene_in('s01_ppl', '{scene}_ppl') == 's01'``."""
    import re

    before, after = pattern.split("{scene}")
    found = re.fullmatch(re.escape(before) + "(.+)" + re.escape(after), name)
    return found.group(1) if found else None


def _one_scene_field(value: str) -> str:
    if value.count("{scene}") != 1 or value.replace("{scene}", "").count("{") or "/" in value:
        raise ValueError(f"a name pattern holds '{{scene}}' once and no other field or '/' (got {value!r}), "
                         "e.g. '{scene}_mascara'")
    return value


class ImageChannels(StrictModel):
    """One image of a scene (e.g. the PPL photograph) and the input channels it gives, in order."""

    name: Name = Field(description="e.g. ppl, xpl, xpl45, bse")
    images_dir: str | None = Field(None, description="folder of these images (default: the source's images_dir)")
    image_pattern: str = Field("{scene}", description="how its file names hold the scene, e.g. '{scene}_ppl'")
    mode: ChannelMode = Field(ChannelMode.RGB, description="rgb: 3 channels; grey: 1 (luminance); bands: every "
                              "stored sample (a multi-band TIFF), 'bands' of them")
    bands: int | None = Field(None, ge=1, le=64, description="mode bands: how many samples each file has")
    bit_depth: BitDepth | None = Field(
        None, description="significant bits of this image's 16-bit samples when they differ from the other images' "
        "(a 12-bit camera beside a 16-bit BSE detector); default: data.bit_depth")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # without its own bit depth an image dumps as before the key existed: manifests and run digests keep theirs
        dumped = handler(self)
        if isinstance(dumped, dict) and self.bit_depth is None:
            dumped.pop("bit_depth", None)
        return dumped

    @field_validator("image_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return _one_scene_field(value)

    @model_validator(mode="after")
    def _bands(self) -> "ImageChannels":
        if (self.mode is ChannelMode.BANDS) != (self.bands is not None):
            raise ValueError("bands: give it exactly when mode is 'bands' (the number of samples per file)")
        return self

    @property
    def count(self) -> int:
        return self.mode.count(self.bands)

    def entry(self, ref, name: str) -> dict:
        """This image of one scene as an item records it (``ref``: where it is read; ``name``: its file name)."""
        return {"ref": ref, "name": name, "mode": str(self.mode), "bands": self.bands,
                **({"bit_depth": self.bit_depth} if self.bit_depth else {})}

    def bits(self, default: int) -> int:
        """The significant bits its 16-bit samples are read with: its own ``bit_depth``, else ``default``
        (``data.bit_depth``, a manifest's)."""
        return self.bit_depth or default

    def labels(self) -> list[str]:
        """One label per channel: ``ppl:R``, ``bse``, ``ms:1`` ..."""
        if self.mode is ChannelMode.RGB:
            return [f"{self.name}:{c}" for c in "RGB"]
        if self.mode is ChannelMode.GREY:
            return [self.name]
        return [f"{self.name}:{b + 1}" for b in range(self.count)]


DEFAULT_CHANNELS = (ImageChannels(name="image"),)


class SourceSettings(StrictModel):
    uri: Uri = Field(description="folder, .tar / .tar.gz / .tgz / .zip archive; local or s3://")
    layout: DatasetLayout = DatasetLayout.AUTO
    name: Name | None = Field(None, description="prefix for item ids (default: the source's base name up to its "
                              "first '.')")
    images_dir: str = "images"
    masks_dir: str = "masks"
    image_pattern: str = Field("{scene}", description="paired layout: how an image's name (below images_dir, "
                               "without its extension) holds the scene it pairs by, e.g. '{scene}_paralelos'")
    mask_pattern: str = Field("{scene}", description="paired layout: the same for masks, e.g. '{scene}_mascara'")
    instance_class: str | None = Field(None, description="instance_folders layout: the class (a data.classes name) "
                                       "of every instance mask not in a masks/<class>/ subfolder")
    include: list[str] | None = Field(
        None, min_length=1, description="keep only the images one of these globs matches, e.g. ['a*.jpg'] for one "
        "subset of a collection (see selects: a glob matches the last parts of the image's path); the others are "
        "left out, not quarantined")
    exclude: list[str] = Field(default_factory=list, description="leave out the images one of these globs matches "
                               "(after include)")
    channels: list[ImageChannels] | None = Field(
        None, min_length=1, description="the images that form one scene, in channel order (e.g. ppl then xpl: 6 "
        "channels), or one entry to read single images another way (mode grey: 1 channel). Default: one RGB image")

    @field_validator("image_pattern", "mask_pattern")
    @classmethod
    def _one_scene_field(cls, value: str) -> str:
        return _one_scene_field(value)

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        value = [pattern.replace("\\", "/").strip("/") for pattern in value]
        if any(not pattern.strip() for pattern in value):
            raise ValueError("a glob must not be empty, e.g. 'a*.jpg' or 'site1/*'")
        return value

    def selects(self, image_name: str) -> bool:
        """Whether ``include`` / ``exclude`` keep the image at ``image_name`` (its path inside the source; for a
        scene of several images, its first image's).

        A glob matches as many trailing parts of the path as it has ('/'-separated), each part on its own
        (``fnmatch.fnmatchcase``: case-sensitive, and a ``*`` never crosses a '/'): ``a*.jpg`` matches the file
        name ``images/a01.jpg`` whatever folder (or archive top folder) holds it, ``siteA/*`` the images directly
        in a folder ``siteA``. Backslashes count as '/'.
        """
        from fnmatch import fnmatchcase

        parts = image_name.replace("\\", "/").strip("/").split("/")

        def matches(patterns) -> bool:
            for pattern in patterns:
                wanted = pattern.split("/")
                if len(wanted) <= len(parts) and all(fnmatchcase(part, glob) for part, glob in
                                                     zip(parts[len(parts) - len(wanted):], wanted)):
                    return True
            return False

        return (self.include is None or matches(self.include)) and not matches(self.exclude)

    @model_validator(mode="after")
    def _channels(self) -> "SourceSettings":
        if self.channels is None:
            return self
        names = [c.name for c in self.channels]
        twins = sorted({n for n in names if names.count(n) > 1})
        if twins:
            raise ValueError(f"channels: names must be unique, repeated: {', '.join(twins)}")
        if len(self.channels) > 1:
            if self.layout not in (DatasetLayout.AUTO, DatasetLayout.PAIRED):
                raise ValueError(f"channels: several images per scene are read from the paired layout (one folder "
                                 f"or pattern per image), not {self.layout}")
            if self.image_pattern != "{scene}":
                raise ValueError("channels: give each image's image_pattern in its channels entry, not the source's")
        return self

    @property
    def channel_groups(self) -> tuple[ImageChannels, ...]:
        return tuple(self.channels) if self.channels else DEFAULT_CHANNELS

    def scene_of(self, name: str, role: str) -> str | None:
        """The scene of a file name without its extension (role: 'image' or 'mask'), None when it does not match
        the role's pattern."""
        return scene_in(name, self.image_pattern if role == "image" else self.mask_pattern)


class SplitSettings(StrictModel):
    """By source image, deterministic by seed; or explicit lists; or k folds."""

    train: float = Field(0.7, ge=0, le=1)
    val: float = Field(0.15, ge=0, le=1)
    test: float = Field(0.15, ge=0, le=1)
    seed: Seed | None = Field(None, description="default: run.seed")
    lists: dict[str, str] | None = Field(
        None, description="split name -> file (path/URI) listing item stems, one per line (VOC ImageSets style)"
    )
    use_layout_lists: bool = Field(True, description="use the splits a layout names: VOC ImageSets lists, an "
                                   "export's train / valid / test folders")
    group_by: SplitGroup = Field(SplitGroup.IMAGE, description="image: each source image is split alone; scene: "
                                 "images of one scene (one name below their sources: PPL and XPL given as two "
                                 "sources) share a split, in lists and folds too")
    stratify: SplitStratify = Field(
        SplitStratify.NONE, description="none: a seeded shuffle; classes: every split (and fold) gets about its "
        "share of the images showing each class, and of those showing much of it (iterative stratification, Sechidis "
        "et al. 2011), so a rare mineral is not left out of validation or test by chance (training keeps two images "
        "of a class; see docs/training.md)")
    folds: int | None = Field(None, ge=2, description="k-fold cross-validation over train+val (test held out)")
    fold_val: float = Field(0.1, gt=0, lt=1, description="k folds: share of each fold's training part held out by "
                                                         "source image to choose checkpoints (the paper: 8 of 80)")

    @model_validator(mode="after")
    def _ratios(self) -> "SplitSettings":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        if self.train == 0:
            raise ValueError("train ratio must be > 0")
        if self.lists is not None:
            unknown = sorted(set(self.lists) - {"train", "val", "test"})
            if unknown:
                raise ValueError(f"split lists may name train, val and test only, got {unknown}")
            if self.stratify is not SplitStratify.NONE:
                raise ValueError("stratify spreads images by the ratios; lists already fix each image's split: "
                                 "give one or the other")
        return self


class TilingSettings(StrictModel):
    size: int = Field(512, ge=16, description="tile (crop) size; classification: images are resized to it")
    stride: int | None = Field(None, ge=1, description="default: size - overlap")
    overlap: int = Field(0, ge=0)
    scale: float = Field(1.0, gt=0, le=4, description="rescale images before tiling (0.25 = quarter size)")
    drop_all_ignore: bool = True

    @model_validator(mode="after")
    def _stride(self) -> "TilingSettings":
        if self.overlap >= self.size:
            raise ValueError(f"overlap {self.overlap} must be smaller than the tile size {self.size}")
        if self.stride is not None and self.overlap:
            raise ValueError("give stride or overlap, not both")
        return self

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.size - self.overlap


class AugmentSettings(StrictModel):
    """Training-time augmentation (``data/augment.py``): geometric views by ``mode``, then photometric
    jitter when ``exposure`` / ``colour`` are above 0 (reflected-light photographs of one collection differ in
    exposure and white balance by as much as some minerals differ from each other)."""

    mode: Augmentation = Augmentation.DIHEDRAL
    shift: float = Field(0.2, ge=0, le=0.5, description="max shift as a fraction of the tile")
    rotate_degrees: float = Field(45.0, ge=0, le=180)
    exposure: float = Field(0.0, ge=0, lt=1, description="max relative change of a tile's brightness: its raw "
                            "intensities times one gain drawn from [1 - exposure, 1 + exposure]")
    colour: float = Field(0.0, ge=0, lt=1, description="max relative change of each channel on top of exposure "
                          "(white balance): a gain per channel drawn from [1 - colour, 1 + colour]")


class OversamplingSettings(StrictModel):
    """Rare-class oversampling of training tiles by repeat factors (``data/sampling.py``; LVIS, Gupta et al. 2019).

    A class found in fewer than ``threshold`` of the training tiles has its tiles repeated
    ``sqrt(threshold / share)`` times an epoch (at most ``max_repeat``); validation and test are never repeated.
    """

    threshold: float = Field(0.1, gt=0, le=1, description="tile share below which a class's tiles are repeated")
    max_repeat: int = Field(8, ge=1, le=16, description="cap on the copies of one tile per epoch")


class LimitSettings(StrictModel):
    """Guards against decompression bombs and oversized inputs."""

    max_image_pixels: int = Field(400_000_000, gt=0)
    max_member_mib: float = Field(1024.0, gt=0)
    max_archive_gib: float = Field(256.0, gt=0, description="total uncompressed bytes of one archive")
    max_compression_ratio: float = Field(250.0, gt=1)


class DataSettings(StrictModel):
    sources: list[SourceSettings] = Field(min_length=1)
    classes: ClassMapSettings | None = Field(None, description="required for segmentation; class folders name themselves")
    split: SplitSettings = SplitSettings()
    tiling: TilingSettings = TilingSettings()
    augmentation: AugmentSettings = AugmentSettings()
    oversampling: OversamplingSettings | None = Field(
        None, description="repeat the training tiles of rare classes (default: every tile once an epoch)")
    limits: LimitSettings = LimitSettings()
    bit_depth: BitDepth = Field(
        BIT_DEPTH,
        description="significant bits of images stored with 16 bits per sample: 12 for a 12-bit camera's frames "
        "saved as 16-bit TIFF / PNG (0..4095 become 0..255, not 0..16); a sample above it is refused. 8-bit "
        "images are read as they are; a TIFF's own BitsPerSample (e.g. 12) is used when it is lower",
    )
    normalization: Normalization | None = Field(
        None, description="{'mean': [...], 'std': [...]} in 0..255 units; default: measured on the training split"
    )
    shuffle_buffer: int = Field(64, ge=0, description="tiles held for local shuffling in the training stream")
    cache: bool | Literal["auto"] = Field(
        "auto",
        description="keep decoded tiles in Ray's object store instead of decoding every epoch; "
        "'auto' caches a split when its tiles take under a quarter of the object store",
    )

    @model_validator(mode="after")
    def _same_channels(self) -> "DataSettings":
        """Every source gives the same channels (one model reads them all); normalisation has one value each."""
        first = self.sources[0].channel_groups
        for index, source in enumerate(self.sources[1:], start=1):
            if channel_signature(source.channel_groups) != channel_signature(first):
                raise ValueError(f"sources[{index}].channels give {describe_channels(source.channel_groups)} but "
                                 f"sources[0] gives {describe_channels(first)}: every source must give the same "
                                 "channels")
        if self.normalization is not None:
            count = sum(group.count for group in first)
            for key in ("mean", "std"):
                if len(self.normalization.get(key, [])) != count:
                    raise ValueError(f"normalization.{key} needs {count} values (one per input channel: "
                                     f"{', '.join(self.channel_labels)})")
        return self

    @property
    def channel_groups(self) -> tuple[ImageChannels, ...]:
        """The images of a scene, in channel order (one RGB image unless the sources declare ``channels``)."""
        return self.sources[0].channel_groups

    @property
    def in_channels(self) -> int:
        return sum(group.count for group in self.channel_groups)

    def bit_depths_unlike_first(self) -> list[str]:
        """``sources[i].channels.<name>: 12-bit (sources[0]: 16-bit)`` for each image a later source reads with other
        bits than the first: manifests record the first source's (two cameras; slides of the other need
        ``segment.bit_depth``)."""
        first = {name: bits for index, name, bits in self.image_bit_depths if index == 0}
        return [f"sources[{index}].channels.{name}: {bits}-bit (sources[0]: {first[name]}-bit)"
                for index, name, bits in self.image_bit_depths if index and bits != first.get(name)]

    @property
    def image_bit_depths(self) -> tuple[tuple[int, str, int], ...]:
        """(source index, image name, bits) of every image each source reads (its ``channels``; ``image`` for a
        source without), with the bits its 16-bit samples are read with (``channels[].bit_depth``, else
        ``bit_depth``): the data signature's reading, whichever way the config spells it."""
        return tuple((index, group.name, group.bits(self.bit_depth)) for index, source in enumerate(self.sources)
                     for group in source.channel_groups)

    @property
    def channel_labels(self) -> list[str]:
        return [label for group in self.channel_groups for label in group.labels()]


def channel_signature(groups) -> list[tuple]:
    """What must match for one model to read two sources (or a source and a manifest)."""
    return [(g.name, g.mode, g.count) for g in groups]


def describe_channels(groups) -> str:
    """``ppl (rgb, 3) + xpl (rgb, 3)``: a scene's images, for messages."""
    return " + ".join(f"{g.name} ({g.mode}, {g.count})" for g in groups)
