"""Whole-slide images read region by region, never whole.

TIFF family (tiled or striped (Big)TIFF, pyramidal, NDPI, SVS): only the tiles or
strips a region touches are read (seek + read through the storage layer, so ranged
GETs on S3) and decoded by tifffile; decoded segments are kept in a small LRU cache
because neighbouring regions share them (NDPI strips span the whole width). JPEG and
PNG have no random access: they are decoded once per process, within a pixel limit.

Every region comes back as RGB uint8: grey is repeated, alpha dropped, 16 bit scaled.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from minseg.data.decode import DecodeError, decode_image, to_rgb8
from minseg.io.storage import Storage, StorageError

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ndpi", ".svs", ".scn", ".qptiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
SLIDE_SUFFIXES = TIFF_SUFFIXES + RASTER_SUFFIXES
_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}
MAX_CALIBRATED_PIXEL_UM = 50.0


class SlideError(ValueError):
    """A slide that cannot be read; the message names the slide and the reason."""


@dataclass(frozen=True)
class SlideInfo:
    uri: str
    format: str
    levels: tuple[tuple[int, int], ...]  # (height, width) of every pyramid level, level 0 first
    tile: tuple[int, int] | None  # stored tile or strip shape at level 0
    pixel_size_um: float | None = None  # of level 0, from SVS MPP or the resolution tags

    @property
    def height(self) -> int:
        return self.levels[0][0]

    @property
    def width(self) -> int:
        return self.levels[0][1]


class Slide:
    """An open slide; ``read_region`` returns RGB uint8 pixels of one pyramid level."""

    def __init__(self, uri: str, storage: Storage | None = None, max_raster_pixels: int = 400_000_000,
                 cache_bytes: int = 96 << 20):
        self.uri = uri
        self.storage = storage or Storage()
        self._lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_bytes
        self._stream = self._tiff = self._raster = None
        name = uri.lower().rsplit("/", 1)[-1]
        try:
            if name.endswith(RASTER_SUFFIXES):
                self._raster = decode_image(self.storage.read_bytes(uri), name, max_raster_pixels)
                height, width = self._raster.shape[:2]
                self.info = SlideInfo(uri, name.rsplit(".", 1)[-1], ((height, width),), None)
            elif name.endswith(TIFF_SUFFIXES):
                self._open_tiff(name)
            else:
                raise SlideError(f"{uri}: not a slide format minseg reads ({', '.join(SLIDE_SUFFIXES)})")
        except SlideError:
            self.close()
            raise
        except (DecodeError, StorageError) as exc:
            self.close()
            raise SlideError(f"{uri}: {exc}") from None
        except Exception as exc:  # tifffile raises many types on corrupt files
            self.close()
            raise SlideError(f"{uri}: unreadable slide ({type(exc).__name__}: {exc})") from None

    def _open_tiff(self, name: str) -> None:
        import tifffile

        self._stream = self.storage.open_read(self.uri)
        self._tiff = tifffile.TiffFile(self._stream)
        series = self._tiff.series[0]
        self._levels = [level.keyframe for level in series.levels]
        self._pages = [level.pages[0] for level in series.levels]
        for page in self._levels:
            if page.planarconfig != 1 and page.samplesperpixel > 1:
                raise SlideError(f"{self.uri}: planar (separate-plane) TIFFs are not supported")
            if page.imagedepth != 1:
                raise SlideError(f"{self.uri}: volumetric TIFF (depth {page.imagedepth}) is not a slide")
        base = self._levels[0]
        kind = "ndpi" if self._tiff.is_ndpi else "svs" if self._tiff.is_svs else "tiff"
        self.info = SlideInfo(self.uri, kind, tuple((p.imagelength, p.imagewidth) for p in self._levels),
                              base.chunks[:2],
                              _pixel_size_um(self._tiff, self._pages[0]))

    # -- reading ---------------------------------------------------------------

    def level_shape(self, level: int) -> tuple[int, int]:
        if not 0 <= level < len(self.info.levels):
            raise SlideError(f"{self.uri}: no pyramid level {level} (it has {len(self.info.levels)})")
        return self.info.levels[level]

    def read_region(self, y: int, x: int, height: int, width: int, level: int = 0, rgb: bool = True) -> np.ndarray:
        """RGB uint8 (height, width, 3) at ``level`` (``rgb=False``: the stored samples, e.g. class ids of a
        label map); the region must lie inside the level."""
        level_h, level_w = self.level_shape(level)
        if y < 0 or x < 0 or height <= 0 or width <= 0 or y + height > level_h or x + width > level_w:
            raise SlideError(f"{self.uri}: region y={y} x={x} {height}x{width} is outside level {level} "
                             f"({level_h}x{level_w})")
        if self._raster is not None:
            return np.ascontiguousarray(self._raster[y : y + height, x : x + width])
        try:
            region = self._read_tiff_region(level, y, x, height, width)
            return to_rgb8(region) if rgb else region
        except DecodeError as exc:
            raise SlideError(f"{self.uri}: {exc}") from None
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(f"{self.uri}: corrupt data in region y={y} x={x} {height}x{width} "
                             f"({type(exc).__name__}: {exc})") from None

    def _read_tiff_region(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
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

    def _segment(self, level: int, page, keyframe, index: int) -> np.ndarray:
        key = (level, index)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if count == 0:  # a sparse TIFF: segments never written are empty
                data = None
            else:
                self._stream.seek(offset)
                data = self._stream.read(count)
                if len(data) != count:
                    raise SlideError(f"{self.uri}: truncated file (segment {index} of level {level} "
                                     f"wants {count} bytes at offset {offset}, got {len(data)})")
        arguments = {"_fullsize": keyframe.is_tiled}
        if keyframe.compression in _JPEG_COMPRESSIONS:
            arguments.update(jpegtables=page.jpegtables, jpegheader=keyframe.jpegheader)
        decoded, _, shape = keyframe.decode(data, index, **arguments)
        if decoded is None:
            decoded = np.zeros(shape, keyframe.dtype)
        segment = decoded[0]  # drop the depth axis
        if segment.shape[-1] == 1:
            segment = segment[..., 0]
        with self._lock:
            self._cache[key] = segment
            self._cache_bytes += segment.nbytes
            while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                self._cache_bytes -= evicted.nbytes
        return segment

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
        if self._stream is not None:
            self._stream.close()
        self._tiff = self._stream = None
        self._cache.clear()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pixel_size_um(tiff, page) -> float | None:
    if tiff.is_svs:
        for part in (page.description or "").split("|"):
            name, _, value = part.partition("=")
            if name.strip() == "MPP":
                try:
                    return float(value)
                except ValueError:
                    return None
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not numerator or not denominator or unit not in (2, 3):
        return None
    size = (25400.0 if unit == 2 else 10000.0) / (numerator / denominator)
    # 72/96/300 dpi are writers' defaults, not calibrations: no microscope has 85-350 µm pixels
    return size if size <= MAX_CALIBRATED_PIXEL_UM else None


class SlideCache:
    """Open slides kept per process (parsing an NDPI or SVS header is not free)."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._slides: OrderedDict[str, Slide] = OrderedDict()

    def get(self, uri: str, storage: Storage) -> Slide:
        slide = self._slides.pop(uri, None) or Slide(uri, storage)
        self._slides[uri] = slide
        while len(self._slides) > self.capacity:
            _, old = self._slides.popitem(last=False)
            old.close()
        return slide
