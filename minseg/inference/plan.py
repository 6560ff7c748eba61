"""Planning a slide for segmentation, and reading its pixels at the processed scale.

A ``SlidePlan`` is what every stage needs to know about one slide: where it is, which pyramid
level is read, the processed size (the manifest's scale applied), its tile grid (the manifest's
tiling, unchanged), where its outputs go, and the limits its reader is held to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from minseg.data.geometry import resize_image
from minseg.data.tiling import extract_tile
from minseg.enums import FusionMode, Uncertainty
from minseg.ensemble.config import Tiling
from minseg.ensemble.manifest import EnsembleManifest
from minseg.ensemble.sliding import TileGrid
from minseg.errors import InputError
from minseg.inference.config import SegmentSettings
from minseg.inference.outputs import preview_stride
from minseg.io.images import BIT_DEPTH, depth_applies, depth_record, describe_depth
from minseg.io.slides import ChannelSource, SceneSlide, Slide, SlideCache, SlideError, SlideLimits
from minseg.io.storage import Storage, StorageError, join_uri
from minseg.logs import get_logger, log_event
from minseg.mineralogy.config import MineralogySettings
from minseg.mineralogy.slide import MeasureSpec

log = get_logger("segment")

class ImageReading(NamedTuple):
    """One image of a slide's scene as it is read (``SlidePlan.readings``)."""

    name: str  # its channel name ('' for a plain slide's one image)
    channels: int
    uri: str  # the file it is read from (one file may hold every image's channels)
    stored_bits: int  # bits per stored sample
    bit_depth: int  # significant bits its samples of more than 8 bits are read with

    @property
    def read_bits(self) -> int:
        """The bit depth it is recorded as read with: the default for 8-bit samples, which read alike at any."""
        return self.bit_depth if depth_applies(self.stored_bits) else BIT_DEPTH


@dataclass
class SlidePlan:
    """One slide as every stage sees it (module doc); sizes in pixels, ``pixel_size_um`` in µm per
    processed pixel (None when neither the slide nor the config says)."""

    slide_id: str
    uri: str
    output_uri: str
    format: str
    level: int  # the level the user asked for
    read_level: int  # the level pixels are read from (coarser when the manifest's scale allows)
    source_height: int
    source_width: int
    height: int  # processed (= output) size
    width: int
    factor_y: float  # read-level pixels per processed pixel
    factor_x: float
    tiling: Tiling  # the manifest's, unchanged
    preview_stride: int
    pixel_size_um: float | None
    uncertainty: Uncertainty
    num_classes: int
    limits: SlideLimits = SlideLimits()
    measure: MeasureSpec | None = None  # how its blocks are measured (classes, mineralogy settings, pixel size)
    channels: tuple[ChannelSource, ...] = ()  # the scene's images as the ensemble reads them; (): ``uri`` as RGB
    in_channels: int = 3
    # each source file's version (``Storage.version``): outputs of a file since replaced are
    # never taken as done, nor resumed
    identity: tuple[dict, ...] = ()
    # significant bits of 16-bit samples of a file holding every channel (a plain slide, a one-file multi-band
    # scene); a file per image carries its own (``ChannelSource.bit_depth``)
    bit_depth: int = BIT_DEPTH
    stored_bits: int = 16  # bits per stored sample of the slide (its scene's most): the bit depth may not apply
    image_bits: tuple[int, ...] = ()  # bits per stored sample of each of ``channels``
    images: tuple[tuple[str, int], ...] = ()  # the ensemble's scene images (name, channels); (): one RGB image
    # the slide folder holding an earlier run's finished outputs, which this slide's redo replaces once finished;
    # ``output_uri`` is then its redo folder (``minseg.io.storage.redo_folder``): a redo that fails loses nothing
    replaces: str | None = None

    def __post_init__(self) -> None:
        if self.measure is not None and len(self.measure.names) != self.num_classes:
            raise ValueError(f"the mineralogy has {len(self.measure.names)} classes, the slide {self.num_classes}")
        if self.channels and len(self.image_bits) != len(self.channels):
            raise ValueError(f"{len(self.image_bits)} stored bit counts for {len(self.channels)} scene files")
        if self.channels and not self.images:
            raise ValueError("a plan reading declared channels names the ensemble's scene images")

    @property
    def one_file(self) -> bool:
        """Whether one file holds every image's channels (a multi-band slide for a scene of several images)."""
        return len(self.images) > 1 and len(self.channels) == 1

    def readings(self) -> list[ImageReading]:
        """How each image of the scene is read: one for a plain slide (named ''); a one-file multi-band scene's
        images share the file's bits."""
        if not self.images:
            return [ImageReading("", self.in_channels, self.uri, self.stored_bits, self.bit_depth)]
        if self.one_file:
            return [ImageReading(name, count, self.uri, self.stored_bits, self.bit_depth)
                    for name, count in self.images]
        return [ImageReading(name, count, source.uri, bits, source.bit_depth or self.bit_depth)
                for (name, count), source, bits in zip(self.images, self.channels, self.image_bits)]

    @property
    def read_bit_depth(self) -> int | dict[str, int]:
        """The bit depth its outputs are recorded as read with (``depth_record``): only images whose samples have
        more than 8 bits count, as 8-bit ones read alike at any: changing it does not redo them."""
        return depth_record({image.name: image.bit_depth for image in self.readings()
                             if depth_applies(image.stored_bits)})

    @property
    def tile(self) -> int:
        return self.tiling.tile

    @property
    def first_channels(self) -> int:
        """Channels of the scene's first image (what previews and the stored image show; also when one file holds
        every image's channels)."""
        return self.images[0][1] if self.images else 3

    @property
    def overlap(self) -> int:
        return self.tiling.overlap

    @cached_property
    def grid(self) -> TileGrid:
        return self.tiling.grid(self.height, self.width)


class SegmentInputError(InputError):
    """No slides, or a slide list that cannot be used; the message names the key or file."""


def scene_bit_depths(manifest: EnsembleManifest, override: int | dict[str, int] | None) -> dict[str, int]:
    """The significant bits each image of the ensemble's scene (by channel name; ``image`` for one RGB image) is
    read with: ``segment.bit_depth`` when it is one number; else the images it names at their value, the others
    as the ensemble's training images were (``channels[].bit_depth``, else the manifest's ``bit_depth``).

    Raises:
        SegmentInputError: ``segment.bit_depth`` names an image the ensemble does not read.
    """
    groups = manifest.channel_groups
    if isinstance(override, int):
        return {group.name: override for group in groups}
    given = override or {}
    unknown = sorted(set(given) - {group.name for group in groups})
    if unknown and manifest.channels is None:
        raise SegmentInputError(f"segment.bit_depth names {', '.join(unknown)} but this ensemble reads one RGB image "
                                "per slide: give one number (e.g. --bit-depth 12)")
    if unknown:
        raise SegmentInputError(f"segment.bit_depth names {', '.join(unknown)} but the ensemble reads "
                                f"{', '.join(g.name for g in groups)} per scene")
    return {group.name: given.get(group.name, group.bits(manifest.bit_depth)) for group in groups}


def open_scene(uri: str, channels: tuple[ChannelSource, ...], storage: Storage, limits: SlideLimits,
               cache: SlideCache | None = None, identity: tuple[dict, ...] = (),
               bit_depth: int = BIT_DEPTH) -> Slide | SceneSlide:
    """The slide at ``uri`` (RGB), or the scene its ``channels`` read (several aligned images, a grey or a
    multi-band image); through ``cache`` by each file's ``identity`` (``Storage.version``; a file replaced since
    is opened afresh); samples of more than 8 bits read as ``bit_depth``-bit (``Slide``), or as a channel
    source's own. Raises SlideError."""
    versions = {entry["uri"]: json.dumps(entry, sort_keys=True) for entry in identity}
    if not channels:
        return cache.get(uri, storage, limits, versions.get(uri), bit_depth) if cache \
            else Slide(uri, storage, limits=limits, bit_depth=bit_depth)
    return SceneSlide(channels, storage, limits, cache, versions, bit_depth)


def plan_slide(uri: str, slide_id: str, manifest: EnsembleManifest, settings: SegmentSettings, storage: Storage,
               output_uri: str, mineralogy: MineralogySettings | None = None,
               channels: tuple[ChannelSource, ...] = ()) -> SlidePlan:
    """Open the slide (or scene) once and plan it (module doc). A pixel size the slide gives that is not a finite
    positive number is taken as absent (logged). Raises SlideError: unreadable, no such level, the file vanished,
    one multi-band file of more than 8 bits per sample for images read with different bit depths."""
    # a file holding every channel (a plain slide, a one-file multi-band scene) is read with one bit depth: the
    # images' when they agree; a file per image carries its own (``resolve_scenes``)
    depths = scene_bit_depths(manifest, settings.bit_depth)
    one_depth = len(set(depths.values())) == 1
    bit_depth = next(iter(depths.values())) if one_depth else BIT_DEPTH
    with open_scene(uri, channels, storage, settings.limits.limits(), bit_depth=bit_depth) as slide:
        stored_bits = slide.info.stored_bits
        image_bits = slide.image_bits if channels else ()
        source_h, source_w = slide.level_shape(settings.level)
        scale = manifest.tiling.scale
        height, width = max(1, round(source_h * scale)), max(1, round(source_w * scale))
        read_level = settings.level
        for level in range(settings.level, len(slide.info.levels)):  # the coarsest level still fine enough
            level_h, level_w = slide.info.levels[level]
            if level_h >= height and level_w >= width:
                read_level = level
        read_h, read_w = slide.info.levels[read_level]
        base_size = slide.info.pixel_size_um
        level0_h = slide.info.levels[0][0]
    if settings.pixel_size_um:
        pixel_size = settings.pixel_size_um
    elif base_size is not None and math.isfinite(base_size) and base_size > 0:
        pixel_size = base_size * level0_h / source_h / scale
    else:  # readers give None for what they cannot trust; anything else unusable is absent too, never a size
        if base_size is not None:
            log_event(log, "segment.pixel_size_ignored", slide=uri, pixel_size_um=repr(base_size))
        pixel_size = None
    try:
        files = dict.fromkeys([uri, *(channel.uri for channel in channels)])
        identity = tuple(storage.version(source) for source in files)
    except StorageError as exc:
        raise SlideError(str(exc) if str(exc).startswith(uri) else f"{uri}: {exc}") from None
    plan = SlidePlan(
        slide_id=slide_id, uri=uri, output_uri=join_uri(output_uri, slide_id), format=slide.info.format,
        level=settings.level, read_level=read_level, source_height=source_h, source_width=source_w,
        height=height, width=width, factor_y=read_h / height, factor_x=read_w / width,
        tiling=manifest.tiling, preview_stride=preview_stride(height, width, settings.preview_max_side),
        pixel_size_um=pixel_size, uncertainty=resolve_uncertainty(settings.uncertainty, manifest.fusion.mode),
        num_classes=manifest.num_classes,
        measure=MeasureSpec(tuple(c["name"] for c in manifest.classes["classes"]), mineralogy or MineralogySettings(),
                            pixel_size),
        limits=settings.limits.limits(), channels=channels, in_channels=manifest.in_channels, identity=identity,
        bit_depth=bit_depth, stored_bits=stored_bits, image_bits=image_bits,
        images=tuple((group.name, group.count) for group in manifest.channel_groups) if manifest.channels else (),
    )
    if plan.one_file and not one_depth and depth_applies(stored_bits):
        raise SlideError(f"{uri} is one multi-band file of {stored_bits}-bit samples for images the ensemble reads as "
                         f"{describe_depth(depths)}; its samples have one bit depth: give each image's file as a "
                         "scene (segment.scenes, --scene), or one segment.bit_depth (--bit-depth) for them all")
    return plan


def resolve_uncertainty(kind: Uncertainty, mode: FusionMode) -> Uncertainty:
    if kind is not Uncertainty.AUTO:
        return kind
    return Uncertainty.DISAGREEMENT if FusionMode(mode) in (FusionMode.PV, FusionMode.WV) else Uncertainty.ENTROPY


SLIDES = SlideCache()  # open slides, per worker process


def read_tile(slide: Slide | SceneSlide, plan: SlidePlan, y: int, x: int, fill: np.ndarray) -> np.ndarray:
    """The (tile, tile, C) uint8 tile at processed (y, x) (C: the ensemble's input channels, 3 for RGB); beyond
    the slide's edge, ``fill``."""
    tile = plan.tile
    height, width = min(tile, plan.height - y), min(tile, plan.width - x)
    if plan.factor_y == 1.0 and plan.factor_x == 1.0:
        region = slide.read_region(y, x, height, width, plan.read_level)
    else:
        from PIL import Image

        read_h, read_w = slide.level_shape(plan.read_level)
        fy, fx = plan.factor_y, plan.factor_x
        top, bottom, left, right = y * fy, (y + height) * fy, x * fx, (x + width) * fx
        iy0, ix0 = max(0, math.floor(top) - 2), max(0, math.floor(left) - 2)
        iy1, ix1 = min(read_h, math.ceil(bottom) + 2), min(read_w, math.ceil(right) + 2)
        crop = slide.read_region(iy0, ix0, iy1 - iy0, ix1 - ix0, plan.read_level)
        resample = Image.Resampling.BOX if min(fy, fx) > 1 else Image.Resampling.BILINEAR
        region = resize_image(crop, (width, height), resample, box=(left - ix0, top - iy0, right - ix0, bottom - iy0))
    return extract_tile(region, 0, 0, tile, fill)


