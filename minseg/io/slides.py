"""Whole-slide images read region by region, never whole.

TIFF family (tiled or striped (Big)TIFF, pyramidal, NDPI, SVS): only the tiles or
strips a region touches are read (seek + read through the storage layer, so ranged
GETs on S3) and decoded by tifffile; decoded segments are kept in a small LRU cache
because neighbouring regions share them (NDPI strips span the whole width). JPEG and
PNG have no random access: opening reads the header; the first region read decodes the
whole picture (once per open slide), within a pixel limit.

Every region comes back as RGB uint8: grey is repeated, alpha dropped, 16 bit scaled.

Formats are readers in a registry: ``@register_slide_reader(name, suffixes=...)`` on a
class or function ``opener(uri, storage, options) -> SlideReader`` is all a new format
needs; :class:`Slide` picks the reader by file suffix (the longest registered suffix
that matches) and handles region checks, RGB conversion and errors for all of them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator, Protocol

import numpy as np

from minseg.errors import InputError
from minseg.enums import ChannelMode
from minseg.io.images import (BIT_DEPTH, JPEG_COMPRESSIONS, JPEG_SUFFIXES, PALETTE, DecodeError, SampleAboveBitDepth,
                              decode_samples, dtype_bits, luminance, picture_header, show_samples,
                              stored_bands, tiff_main_series, tiff_orientation, tiff_pixel_format, to_rgb8)
from minseg.io.storage import Storage, StorageError
from minseg.logs import get_logger, log_event

MAX_CALIBRATED_PIXEL_UM = 50.0
DPI_72_UM = 25400.0 / 72  # the coarsest resolution TIFF writers put by default
ANISOTROPY_TOLERANCE = 0.01  # X and Y pixel sizes further apart than this (relative) are not one pixel size

log = get_logger("io.slides")


class SlideError(InputError):
    """A slide that cannot be read; the message names the slide and the reason."""


@dataclass(frozen=True)
class SlideInfo:
    uri: str
    format: str
    levels: tuple[tuple[int, int], ...]  # (height, width) of every pyramid level, level 0 first
    tile: tuple[int, int] | None  # stored tile or strip shape at level 0
    pixel_size_um: float | None = None  # of level 0, from SVS MPP or the resolution tags
    lossy: bool = False  # level 0 stored with lossy (JPEG) compression: no exact class ids
    # bits per stored sample (the most of any level; a palette page's 8): a bit depth changes how the slide reads
    # only for 9-16 (``images.depth_applies``); a reader that does not say is taken as 16-bit
    stored_bits: int = 16

    @property
    def height(self) -> int:
        return self.levels[0][0]

    @property
    def width(self) -> int:
        return self.levels[0][1]


# ------------------------------------------------------------------ registry


class SegmentCache:
    """Decoded pieces of one slide (arrays by key), least recently used dropped first once
    they take more than ``limit_bytes`` (the newest is always kept). Thread-safe; iterating
    gives the keys, oldest first."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._segments: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            segment = self._segments.get(key)
            if segment is not None:
                self._segments.move_to_end(key)
            return segment

    def put(self, key: Hashable, segment: np.ndarray) -> None:
        with self._lock:
            old = self._segments.pop(key, None)
            self._bytes -= old.nbytes if old is not None else 0
            self._segments[key] = segment
            self._bytes += segment.nbytes
            while self._bytes > self.limit_bytes and len(self._segments) > 1:
                _, evicted = self._segments.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._segments.clear()
            self._bytes = 0

    def __iter__(self) -> Iterator[Hashable]:
        with self._lock:
            return iter(list(self._segments))

    def __len__(self) -> int:
        return len(self._segments)


@dataclass(frozen=True)
class SlideLimits:
    """What any reader may allocate for one slide, checked before it allocates (a 19 KB file can claim
    200000² pixels). ``key`` names where users set them, for the refusal's message."""

    max_pixels: int = 25_000_000_000  # level 0 height x width: ~158 000² (the largest scanners write ~150 000²)
    max_segment_bytes: int = 256 << 20  # one decoded tile or strip (a single-strip 20000² RGB TIFF is 1.2 GB)
    key: str = "segment.limits"

    def check_pixels(self, uri: str, height: int, width: int) -> None:
        if height * width > self.max_pixels:
            raise SlideError(f"{uri}: {height}x{width} = {height * width:,} pixels exceeds {self.key}.max_pixels "
                             f"({self.max_pixels:,})")

    def check_segment(self, uri: str, shape: tuple[int, ...], itemsize: int, level: int) -> None:
        size = int(np.prod(shape)) * itemsize
        if size > self.max_segment_bytes:
            raise SlideError(f"{uri}: a stored tile/strip of level {level} decodes to {size / 2**20:,.0f} MiB "
                             f"({'x'.join(map(str, shape))}), over {self.key}.max_segment_mib "
                             f"({self.max_segment_bytes / 2**20:g}); re-save it tiled (e.g. 512² tiles)")


@dataclass(frozen=True)
class ReaderOptions:
    """What :class:`Slide` hands every reader: limits, the slide's segment cache, and the significant bits of
    samples stored with more than 8 (``images.significant_bits``; the ensemble's ``bit_depth``)."""

    max_raster_pixels: int  # formats decoded whole refuse larger images (DecodeError)
    cache: SegmentCache  # for formats decoded in pieces; key pieces by (level, index)
    limits: SlideLimits = SlideLimits()
    bit_depth: int = BIT_DEPTH


class SlideReader(Protocol):
    """One open slide of one format, as :class:`Slide` drives it.

    ``info`` describes the levels; ``read_region`` returns the stored samples of a region
    that :class:`Slide` has already checked lies inside ``level`` (any integer dtype,
    (h, w) or (h, w, samples)); ``close`` releases files and may be called twice. A reader
    whose samples are not plain grey / RGB also has ``displayed(level, samples) -> RGB uint8``
    (what a viewer shows: photometric interpretation, bit depth); without it ``to_rgb8`` is used. Samples of
    9-16 bits are scaled from ``options.bit_depth`` bits when fewer (``images.significant_bits``): a reader's own
    ``displayed`` must do so too. One that knows its samples' significant bits better than their dtype (a 12-bit
    TIFF) has ``bits(level) -> int | None`` (None: the dtype's).
    Opening and reading raise :class:`SlideError`, ``DecodeError`` or ``StorageError`` for
    bad input; anything else is reported as an unreadable slide / corrupt region.
    """

    info: SlideInfo

    def read_region(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray: ...

    def close(self) -> None: ...


SlideOpener = Callable[[str, Storage, ReaderOptions], SlideReader]


@dataclass(frozen=True)
class SlideReaderEntry:
    name: str
    suffixes: tuple[str, ...]  # lower case, with the dot
    opener: SlideOpener


_READERS: dict[str, SlideReaderEntry] = {}


def register_slide_reader(name: str, *, suffixes: tuple[str, ...]):
    """Decorator registering ``opener(uri, storage, options) -> SlideReader`` (a reader class
    or a function) for files ending in one of ``suffixes``. Raises ValueError when ``name``
    or a suffix is registered already (a suffix belongs to exactly one reader)."""
    suffixes = tuple(suffix.lower() for suffix in suffixes)

    def decorate(opener: SlideOpener) -> SlideOpener:
        if name in _READERS:
            raise ValueError(f"slide reader {name!r} is registered twice")
        taken = {suffix: entry.name for entry in _READERS.values() for suffix in entry.suffixes}
        clashes = [f"{suffix} ({taken[suffix]})" for suffix in suffixes if suffix in taken]
        if clashes or not suffixes:
            raise ValueError(f"slide reader {name!r}: " + (f"suffixes already registered: {', '.join(clashes)}"
                                                          if clashes else "no suffixes"))
        _READERS[name] = SlideReaderEntry(name, suffixes, opener)
        return opener

    return decorate


def unregister_slide_reader(name: str) -> None:
    """Remove a registered reader (tests and plug-ins that register one temporarily)."""
    _READERS.pop(name, None)


def list_slide_readers() -> list[SlideReaderEntry]:
    """Registered readers, in registration order."""
    return list(_READERS.values())


def slide_suffixes() -> tuple[str, ...]:
    """Every suffix a registered reader takes, in registration order."""
    return tuple(suffix for entry in _READERS.values() for suffix in entry.suffixes)


def slide_reader_for(uri: str) -> SlideReaderEntry:
    """The reader for ``uri`` by its longest matching suffix (case-insensitive).

    Raises SlideError naming the suffixes minseg reads when none matches.
    """
    name = uri.lower().rsplit("/", 1)[-1]
    matches = [(len(suffix), entry) for entry in _READERS.values() for suffix in entry.suffixes
               if name.endswith(suffix)]
    if not matches:
        raise SlideError(f"{uri}: not a slide format minseg reads ({', '.join(slide_suffixes())})")
    return max(matches, key=lambda match: match[0])[1]


# ------------------------------------------------------------------- readers


@register_slide_reader("tiff", suffixes=(".tif", ".tiff", ".btf", ".tf8", ".ndpi", ".svs", ".scn", ".qptiff"))
class TiffReader:
    """TIFF family through tifffile: only the tiles or strips a region touches are read."""

    def __init__(self, uri: str, storage: Storage, options: ReaderOptions):
        import tifffile

        self.uri, self._cache = uri, options.cache
        self._lock = threading.Lock()  # one stream: seek + read must not interleave
        self._stream = self._tiff = None
        try:
            self._stream = storage.open_read(uri)
            self._tiff = tifffile.TiffFile(self._stream)
            try:  # one image and its levels; a stack of pages or several images is refused, never read in part
                series = tiff_main_series(self._tiff)
            except DecodeError as exc:
                raise SlideError(f"{uri}: {exc}") from None
            self._levels = [level.keyframe for level in series.levels]
            self._pages = [level.pages[0] for level in series.levels]
            for page in self._levels:
                if page.planarconfig != 1 and page.samplesperpixel > 1:
                    raise SlideError(f"{uri}: planar (separate-plane) TIFFs are not supported; rewrite it with "
                                     "interleaved samples (e.g. gdal_translate -co INTERLEAVE=PIXEL)")
                if page.imagedepth != 1:
                    raise SlideError(f"{uri}: volumetric TIFF (depth {page.imagedepth}) is not a slide")
                orientation = tiff_orientation(page)
                if orientation != 1:  # regions are addressed in displayed coordinates; refuse rather than misplace
                    raise SlideError(f"{uri}: TIFF Orientation {orientation} (stored rotated or mirrored) is not "
                                     "supported for slides; re-save it top-left (Orientation 1)")
            try:  # how each level's samples are displayed, checked before any pixel is read
                self._formats = [tiff_pixel_format(page, bit_depth=options.bit_depth) for page in self._levels]
            except DecodeError as exc:
                raise SlideError(f"{uri}: {exc}") from None
            base = self._levels[0]
            options.limits.check_pixels(uri, base.imagelength, base.imagewidth)
            for level, page in enumerate(self._levels):  # before any segment is decoded
                options.limits.check_segment(uri, (*page.chunks[:2], page.samplesperpixel), page.dtype.itemsize,
                                             level)
            kind = "ndpi" if self._tiff.is_ndpi else "svs" if self._tiff.is_svs else "tiff"
            # a palette page is shown through its colour map: 8 bits as far as a bit depth goes
            bits = max(8 if f.photometric == PALETTE else int(p.bitspersample) for f, p in zip(self._formats,
                                                                                            self._levels))
            self.info = SlideInfo(uri, kind, tuple((p.imagelength, p.imagewidth) for p in self._levels),
                                  base.chunks[:2], _pixel_size_um(uri, self._tiff, self._pages[0]),
                                  lossy=int(base.compression) in JPEG_COMPRESSIONS, stored_bits=bits)
        except BaseException:
            self.close()
            raise

    def read_region(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        keyframe, page = self._levels[level], self._pages[level]
        chunk_h, chunk_w = keyframe.chunks[:2]
        rows, cols = math.ceil(keyframe.imagelength / chunk_h), math.ceil(keyframe.imagewidth / chunk_w)
        samples = keyframe.samplesperpixel
        out = np.zeros((height, width, samples) if samples > 1 else (height, width), keyframe.dtype)
        for row in range(y // chunk_h, min(rows, (y + height - 1) // chunk_h + 1)):
            for col in range(x // chunk_w, min(cols, (x + width - 1) // chunk_w + 1)):
                segment = self._segment(level, page, keyframe, row * cols + col)
                top, left = row * chunk_h, col * chunk_w
                y0, x0 = max(y, top), max(x, left)
                y1 = min(y + height, top + segment.shape[0])
                x1 = min(x + width, left + segment.shape[1])
                if y1 > y0 and x1 > x0:
                    out[y0 - y : y1 - y, x0 - x : x1 - x] = segment[y0 - top : y1 - top, x0 - left : x1 - left]
        return out

    def displayed(self, level: int, region: np.ndarray) -> np.ndarray:
        """Stored samples of ``level`` -> RGB uint8 as a viewer shows them (photometric, bit depth)."""
        return self._formats[level].displayed(region)

    def bits(self, level: int) -> int | None:
        """The significant bits of ``level``'s samples read as bands (``PixelFormat.band_bits``; a palette page's
        indices as stored, as training reads them)."""
        bits = self._formats[level].band_bits
        return bits if bits is not None else self._levels[level].dtype.itemsize * 8

    def _segment(self, level: int, page, keyframe, index: int) -> np.ndarray:
        key = (level, index)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:  # a sparse TIFF: segments never written are empty
            data = None
        else:
            with self._lock:
                self._stream.seek(offset)
                data = self._stream.read(count)
            if len(data) != count:
                raise SlideError(f"{self.uri}: truncated file (segment {index} of level {level} "
                                 f"wants {count} bytes at offset {offset}, got {len(data)})")
        arguments = {"_fullsize": keyframe.is_tiled}
        if keyframe.compression in JPEG_COMPRESSIONS:
            arguments.update(jpegtables=page.jpegtables, jpegheader=keyframe.jpegheader)
        decoded, _, shape = keyframe.decode(data, index, **arguments)
        if decoded is None:
            decoded = np.zeros(shape, keyframe.dtype)
        segment = decoded[0]  # drop the depth axis
        if segment.shape[-1] == 1:
            segment = segment[..., 0]
        self._cache.put(key, segment)
        return segment

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        if self._stream is not None:
            self._stream.close()
        self._tiff = self._stream = None


@register_slide_reader("raster", suffixes=(".png", ".jpg", ".jpeg"))
class RasterReader:
    """PNG / JPEG: no random access, so decoded whole (its stored samples, ``images.decode_samples``) within
    ``max_raster_pixels``, on the first region read. Opening reads the header only: planning thousands of
    slides on the driver's thread pool (``segment.plan_threads``) must not hold thousands of decoded images."""

    def __init__(self, uri: str, storage: Storage, options: ReaderOptions):
        name = uri.lower().rsplit("/", 1)[-1]
        self._uri, self._storage, self._name = uri, storage, name
        self._max_pixels = options.max_raster_pixels
        self._bit_depth = options.bit_depth
        self._limit_key = f"{options.limits.key}.max_pixels" if options.max_raster_pixels == options.limits.max_pixels \
            else "the 400 M-pixel cap on PNG/JPEG slides, which are decoded whole (re-save as a tiled TIFF)"
        with storage.open_read(uri) as stream:
            height, width, bits = picture_header(stream, self._max_pixels, self._limit_key)
        self._pixels: np.ndarray | None = None
        self._palette: np.ndarray | None = None
        self._lock = threading.Lock()
        self.info = SlideInfo(uri, name.rsplit(".", 1)[-1], ((height, width),), None,
                              lossy=name.endswith(JPEG_SUFFIXES), stored_bits=bits)

    def read_region(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """The stored samples (a grey or palette PNG of class ids keeps its ids); ``displayed`` shows them."""
        with self._lock:  # one decode, even when threads read regions at once
            if self._pixels is None:
                pixels, self._palette = decode_samples(self._storage.read_bytes(self._uri), self._name,
                                                       self._max_pixels, self._limit_key)
                if pixels.shape[:2] != self.info.levels[0]:  # e.g. an EXIF Orientation after a PNG's pixels
                    raise DecodeError(f"decodes to {pixels.shape[1]}x{pixels.shape[0]} pixels as displayed, not the "
                                      f"{self.info.width}x{self.info.height} its header gives; re-save it")
                self._pixels = pixels
        return self._pixels[y : y + height, x : x + width]

    def displayed(self, level: int, region: np.ndarray) -> np.ndarray:
        return show_samples(region, self._palette, self._bit_depth)

    def close(self) -> None:
        self._pixels = None


TIFF_SUFFIXES = _READERS["tiff"].suffixes
RASTER_SUFFIXES = _READERS["raster"].suffixes
# The built-in formats, fixed at import (globs use it); slide_suffixes() sees later registrations too.
SLIDE_SUFFIXES = slide_suffixes()


# --------------------------------------------------------------------- slide


class Slide:
    """An open slide; ``read_region`` returns RGB uint8 pixels of one pyramid level.

    The reader is chosen by file suffix (see :func:`slide_reader_for`). Raises SlideError
    naming the slide and the reason when it is not a format minseg reads, is missing or
    cannot be parsed. ``bit_depth``: the significant bits of samples stored with more than 8
    (12 for a 12-bit camera's frames in 16-bit TIFFs; ``images.significant_bits``); reading a
    region with a sample above it raises SlideError.
    """

    def __init__(self, uri: str, storage: Storage | None = None, max_raster_pixels: int = 400_000_000,
                 cache_bytes: int = 96 << 20, limits: SlideLimits | None = None, bit_depth: int = BIT_DEPTH):
        self.uri = uri
        self.bit_depth = bit_depth  # significant bits of samples stored with more than 8 (the ensemble's)
        self.storage = storage or Storage()
        self._cache = SegmentCache(cache_bytes)
        limits = limits or SlideLimits()
        try:
            entry = slide_reader_for(uri)
            options = ReaderOptions(min(max_raster_pixels, limits.max_pixels), self._cache, limits, bit_depth)
            self._reader: SlideReader = entry.opener(uri, self.storage, options)
        except SlideError:
            raise
        except (DecodeError, StorageError) as exc:
            raise SlideError(_naming(uri, exc)) from None
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise SlideError(f"{uri}: unreadable slide ({type(exc).__name__}: {exc})") from None
        self.info: SlideInfo = self._reader.info

    # -- reading ---------------------------------------------------------------

    def level_shape(self, level: int) -> tuple[int, int]:
        """(height, width) of ``level``; SlideError when the slide has no such level."""
        if not 0 <= level < len(self.info.levels):
            raise SlideError(f"{self.uri}: no pyramid level {level} (it has {len(self.info.levels)})")
        return self.info.levels[level]

    def read_region(self, y: int, x: int, height: int, width: int, level: int = 0, rgb: bool = True) -> np.ndarray:
        """RGB uint8 (height, width, 3) at ``level`` (``rgb=False``: the stored samples, e.g. class ids of a
        label map); the region must lie inside the level. Raises SlideError (outside the level, truncated
        file, corrupt data), naming the slide and the region."""
        level_h, level_w = self.level_shape(level)
        if y < 0 or x < 0 or height <= 0 or width <= 0 or y + height > level_h or x + width > level_w:
            raise SlideError(f"{self.uri}: region y={y} x={x} {height}x{width} is outside level {level} "
                             f"({level_h}x{level_w})")
        try:
            region = self._reader.read_region(level, y, x, height, width)
            if not rgb:
                return np.ascontiguousarray(region)
            displayed = getattr(self._reader, "displayed", None)  # readers of RGB formats need none
            return displayed(level, region) if displayed else to_rgb8(region, dtype_bits(region, self.bit_depth))
        except (DecodeError, StorageError) as exc:  # a PNG/JPEG is fetched and decoded on its first read
            raise SlideError(self._refusal(exc, y, x, level)) from None
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(f"{self.uri}: corrupt data in region y={y} x={x} {height}x{width} "
                             f"({type(exc).__name__}: {exc})") from None

    def read_bands(self, y: int, x: int, height: int, width: int, level: int, bands: int,
                   expected: str | None = None) -> np.ndarray:
        """(height, width, ``bands``) uint8 of the stored samples at ``level``, every one a channel, scaled from
        their significant bits (``band_bits``), as training reads them (``images.decode_channels``). Raises
        SlideError as ``read_region``, and for another number of samples (the message ends with ``expected``),
        samples that are no unsigned integers, or a sample above the bit depth (with its place in the slide)."""
        region = self.read_region(y, x, height, width, level, rgb=False)
        try:
            return stored_bands(region, bands, expected, self.band_bits(level, region))
        except DecodeError as exc:
            raise SlideError(self._refusal(exc, y, x, level)) from None

    def _refusal(self, exc: Exception, y: int, x: int, level: int) -> str:
        """A reader's or decoder's refusal of the region at (``y``, ``x``) of ``level``, led by the slide's URI; a
        sample above the bit depth is placed in the slide."""
        return _naming(self.uri, exc.at(y, x, level) if isinstance(exc, SampleAboveBitDepth) else exc)

    def band_bits(self, level: int, region: np.ndarray) -> int:
        """The significant bits of ``region``, stored samples of ``level`` (``read_region(rgb=False)``): what
        the reader knows (a 12-bit TIFF), else its dtype's, at most ``bit_depth`` (``images.significant_bits``)."""
        bits = getattr(self._reader, "bits", None)
        known = bits(level) if bits else None
        return known if known is not None else dtype_bits(region, self.bit_depth)

    def close(self) -> None:
        self._reader.close()
        self._cache.clear()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def usable_pixel_size(value) -> float | None:
    """``value`` as a pixel size in µm when it is one (a finite number > 0, not a JSON true), else None."""
    if isinstance(value, bool):  # float(True) is 1.0: a label map's "pixel_size_um": true is no size
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        return None
    return size if math.isfinite(size) and size > 0 else None


def _pixel_size_um(uri: str, tiff, page) -> float | None:
    """µm per pixel of level 0: SVS ``MPP``, else the resolution tags; None when the file does not say or says
    something no pixel size is (a non-finite or non-positive MPP, X and Y resolutions that differ: one number
    would put areas off by their ratio), logged as ``slide.pixel_size_ignored`` naming the slide."""
    if tiff.is_svs:
        for part in (page.description or "").split("|"):
            name, _, value = part.partition("=")
            if name.strip() == "MPP":
                size = usable_pixel_size(value)
                if size is None:
                    _ignored(uri, f"SVS MPP = {value.strip()!r} is not a pixel size")
                return size
    sizes = resolution_sizes_um(page)
    if sizes is None:
        unit = page.tags.get("ResolutionUnit")
        if unit is not None and int(unit.value) in (2, 3) and any(  # inch, cm: 0 is meant as a size, and none
                isinstance(value := page.tags[name].value if name in page.tags else None, tuple) and 0 in value
                for name in ("XResolution", "YResolution")):
            _ignored(uri, "a resolution tag is 0 (XResolution / YResolution): no pixel size")
        return None
    size = sizes[0]
    # 72/96/300 dpi are writers' defaults, not calibrations: no microscope has 85-350 µm pixels; coarser than
    # 72 dpi is no default either: said
    if size > MAX_CALIBRATED_PIXEL_UM:
        if size > DPI_72_UM * 1.03:  # 72 dpi stored as 28 px/cm is 357 µm: still the default
            _ignored(uri, f"the resolution tags make pixels {size:.6g} µm wide: no microscope's")
        return None
    if len(sizes) == 2 and abs(sizes[1] - size) > ANISOTROPY_TOLERANCE * max(sizes[1], size):
        # what follows is the caller's: segment reports sizes in pixels, measure refuses the map
        _ignored(uri, f"pixels are {size:.6g} µm wide but {sizes[1]:.6g} µm high (XResolution != YResolution): "
                      "no one pixel size (resample it to square pixels)")
        return None
    return size


def resolution_sizes_um(page) -> tuple[float, ...] | None:
    """(x,) or (x, y) µm per pixel of a TIFF page from its resolution tags (inch or cm units), or None (no
    XResolution, another unit, a zero term)."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags or int(tags["ResolutionUnit"].value) not in (2, 3):
        return None
    per_unit = 25400.0 if int(tags["ResolutionUnit"].value) == 2 else 10000.0
    sizes = []
    for name in ("XResolution", "YResolution"):
        if name in tags:
            numerator, denominator = tags[name].value
            if not numerator or not denominator:
                return None
            sizes.append(per_unit * denominator / numerator)
    return tuple(sizes)


def _ignored(uri: str, reason: str) -> None:
    log_event(log, "slide.pixel_size_ignored", logging.WARNING, slide=uri, reason=reason)


class SlideCache:
    """Open slides kept per process (parsing an NDPI or SVS header is not free), by URI and version: a file replaced
    under the same URI (``version``: e.g. its size and modification time) is opened afresh, never read through the
    old file's parsed header and cached tiles."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._slides: OrderedDict[tuple[str, Hashable, int], Slide] = OrderedDict()

    def reserve(self, count: int) -> None:
        """Keep at least ``count`` slides open: the images of one scene are read together (none may be closed
        while another of them opens), and the scene before it stays warm."""
        self.capacity = max(self.capacity, count)

    def get(self, uri: str, storage: Storage, limits: SlideLimits | None = None, version: Hashable = None,
            bit_depth: int = BIT_DEPTH) -> Slide:
        key = (uri, version, bit_depth)  # read with another bit depth, the same file shows other pixels
        # another version of that file is gone: so is its slide (the file read with another bit depth is not: one
        # file may be two images of a scene, each read its way)
        for stale in [k for k in self._slides if k[0] == uri and k[1] != version]:
            self._slides.pop(stale).close()
        slide = self._slides.pop(key, None) or Slide(uri, storage, limits=limits, bit_depth=bit_depth)
        self._slides[key] = slide
        while len(self._slides) > self.capacity:
            _, old = self._slides.popitem(last=False)
            old.close()
        return slide


@dataclass(frozen=True)
class ChannelSource:
    """One image of a scene and how its pixels become input channels (``data.sources[].channels[].mode``)."""

    uri: str
    mode: str = "rgb"  # rgb: 3 channels as displayed; grey: 1 (luminance); bands: every stored sample
    bands: int | None = None
    bit_depth: int | None = None  # significant bits of its 16-bit samples; None: the scene's (``SceneSlide``)

    @property
    def count(self) -> int:
        return ChannelMode(self.mode).count(self.bands)

    def channels(self, slide: "Slide", y: int, x: int, height: int, width: int, level: int) -> np.ndarray:
        """(height, width, k) uint8 of this image's region, read as training read it (``decode_channels``).
        Raises SlideError: another number of samples, or samples that are no unsigned integers."""
        if self.mode == "rgb":
            return slide.read_region(y, x, height, width, level)
        if self.mode == "grey":
            return luminance(slide.read_region(y, x, height, width, level))
        return slide.read_bands(y, x, height, width, level, self.bands,
                                f"; the ensemble reads {self.bands} channels from it")


class SceneSlide:
    """The aligned images of one scene (PPL and XPL photographs, or one multi-band TIFF) read as one slide whose
    regions are their channels stacked in order; the levels are those every image has at the same size.

    ``bit_depth``: the significant bits of 16-bit samples of the images that do not give their own
    (``ChannelSource.bit_depth``).

    Raises SlideError (on opening): the images differ in size at level 0.
    """

    def __init__(self, sources: tuple[ChannelSource, ...], storage: Storage, limits: SlideLimits | None = None,
                 cache: "SlideCache | None" = None, versions: dict[str, Hashable] | None = None,
                 bit_depth: int = BIT_DEPTH):
        self.sources = sources
        self.slides: list[Slide] = []
        if cache is not None:
            cache.reserve(2 * len(sources))
        try:
            for source in sources:
                bits = source.bit_depth or bit_depth
                self.slides.append(cache.get(source.uri, storage, limits, (versions or {}).get(source.uri), bits)
                                   if cache else Slide(source.uri, storage, limits=limits, bit_depth=bits))
            first = self.slides[0]
            for source, slide in zip(sources[1:], self.slides[1:]):
                if slide.info.levels[0] != first.info.levels[0]:
                    (h, w), (h0, w0) = slide.info.levels[0], first.info.levels[0]
                    raise SlideError(f"{source.uri} is {w}x{h} but {sources[0].uri} is {w0}x{h0}: the images of a "
                                     "scene must be aligned")
        except BaseException:
            if cache is None:  # opened here, for planning: not left open
                for slide in self.slides:
                    slide.close()
            raise
        levels = []
        for index, shape in enumerate(first.info.levels):
            if all(index < len(s.info.levels) and s.info.levels[index] == shape for s in self.slides):
                levels.append(shape)
            else:
                break
        self.info = SlideInfo(first.info.uri, first.info.format, tuple(levels), first.info.tile,
                              first.info.pixel_size_um, stored_bits=max(s.info.stored_bits for s in self.slides))
        self.channels = sum(source.count for source in sources)

    @property
    def image_bits(self) -> tuple[int, ...]:
        """Bits per stored sample of each image, in order (``SlideInfo.stored_bits``)."""
        return tuple(slide.info.stored_bits for slide in self.slides)

    def level_shape(self, level: int) -> tuple[int, int]:
        if not 0 <= level < len(self.info.levels):
            raise SlideError(f"{self.info.uri}: no pyramid level {level} shared by the scene's images "
                             f"(they share {len(self.info.levels)})")
        return self.info.levels[level]

    def read_region(self, y: int, x: int, height: int, width: int, level: int = 0) -> np.ndarray:
        """(height, width, channels) uint8: each image's channels, stacked in the declared order."""
        parts = [source.channels(slide, y, x, height, width, level) for source, slide in zip(self.sources, self.slides)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    def close(self) -> None:
        for slide in self.slides:
            slide.close()

    def __enter__(self) -> "SceneSlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _naming(uri: str, exc: Exception) -> str:
    """The error's text led by the slide's URI, once (storage errors already start with it)."""
    text = str(exc)
    return text if text.startswith(uri) else f"{uri}: {text}"
