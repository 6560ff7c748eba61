"""Streaming writer for tiled, pyramidal (Big)TIFF.

Level 0 is written from tiles as they are produced, in row-major order. Each finished
band of tile rows is reduced 2x and appended to a raw scratch file, which then feeds
the next level the same way. Memory is bounded by one band of tiles per level (never
the slide), whatever the slide's size.
"""

from __future__ import annotations

import json
import math
import os
import queue
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import tifffile

from minseg.enums import TiffCompression
from minseg.io.storage import scratch_suffix, sweep_scratch

_COMPRESSION = {
    TiffCompression.NONE: None,
    TiffCompression.DEFLATE: "zlib",
    TiffCompression.ZSTD: "zstd",
    TiffCompression.JPEG: "jpeg",
}


def max_pyramid_levels(height: int, width: int) -> int:
    """The most levels a (height, width) pyramid can have: each level halves both sides (rounding up), so the last
    one is 1 pixel on its short side. A level beyond would not be smaller on that side, and readers (tifffile,
    hence minseg's slide reader) take such a page for another image, not a level."""
    return 1 + math.ceil(math.log2(max(1, min(height, width))))


@dataclass
class PyramidSpec:
    """What to write: size, tile, pixel type, compression and how levels are reduced."""

    height: int
    width: int
    channels: int = 1  # 1 = greyscale / labels, 3 = RGB
    dtype: Any = np.uint8
    tile: int = 512
    levels: int | None = None  # default: halve until the top level fits in one tile (max_pyramid_levels at most)
    compression: TiffCompression = TiffCompression.ZSTD
    reduce: str = "mean"  # "mean" for images, "nearest" for label maps
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON in level 0's ImageDescription
    extratags: list[tuple] = field(default_factory=list)
    colormap: np.ndarray | None = None  # (3, 256) uint16: a palette image (class colours in any viewer)
    pixel_size_um: float | None = None  # level 0's: X/YResolution in pixels per cm on every level (viewers' scale)

    def __post_init__(self):
        if self.reduce not in ("mean", "nearest"):
            raise ValueError(f"reduce must be 'mean' or 'nearest', got {self.reduce!r}")
        if self.compression is TiffCompression.JPEG and self.reduce == "nearest":
            raise ValueError("JPEG is lossy: never use it for label maps")
        if self.tile % 16:
            raise ValueError(f"TIFF tiles must be a multiple of 16 pixels, got {self.tile}")
        most = max_pyramid_levels(self.height, self.width)
        if self.levels is None:
            self.levels = min(most, 1 + max(0, math.ceil(math.log2(max(self.height, self.width) / self.tile))))
        elif not 1 <= self.levels <= most:
            raise ValueError(f"a {self.height} x {self.width} pyramid has 1 to {most} levels, not {self.levels}")

    @property
    def tile_rows(self) -> int:
        return math.ceil(self.height / self.tile)

    @property
    def tile_cols(self) -> int:
        return math.ceil(self.width / self.tile)

    def level_shape(self, level: int) -> tuple[int, int]:
        height, width = self.height, self.width
        for _ in range(level):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        return height, width

    def pixel_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (height, width) if self.channels == 1 else (height, width, self.channels)


def halve(block: np.ndarray, mode: str) -> np.ndarray:
    """Halve a block (rows, cols[, channels]); odd edges repeat their last row/column.

    Blocks of even size tile the same result as halving the whole band at once, so a band
    is reduced tile by tile: no band-sized temporaries, integer sums in the smallest type
    that cannot overflow.
    """
    if block.shape[0] % 2:
        block = np.concatenate([block, block[-1:]], axis=0)
    if block.shape[1] % 2:
        block = np.concatenate([block, block[:, -1:]], axis=1)
    if mode == "nearest":
        return block[::2, ::2]
    if block.dtype.kind in "ui" and block.dtype.itemsize <= 2:
        accumulator = np.uint16 if block.dtype.itemsize == 1 else np.uint32  # 4 x max fits
        total = block[0::2, 0::2].astype(accumulator) + block[1::2, 0::2] + block[0::2, 1::2] + block[1::2, 1::2]
        return ((total + 2) // 4).astype(block.dtype)
    total = block[0::2, 0::2].astype(np.float64) + block[1::2, 0::2] + block[0::2, 1::2] + block[1::2, 1::2]
    return (total / 4).astype(block.dtype)


class _HalfBand:
    """The next level's rows of one band, filled tile by tile (a quarter of the band's size)."""

    def __init__(self, spec: PyramidSpec, rows: int, width: int):
        self.spec = spec
        self.array = np.empty(spec.pixel_shape(-(-rows // 2), -(-width // 2)), dtype=spec.dtype)

    def add(self, left: int, block: np.ndarray) -> None:
        half = halve(block, self.spec.reduce)
        self.array[:, left // 2 : left // 2 + half.shape[1]] = half

    def write_to(self, sink) -> None:
        sink.write(self.array.tobytes())


class PyramidWriter:
    """Writes one pyramidal TIFF at ``path`` from level-0 tiles (row-major)."""

    def __init__(self, path: str, spec: PyramidSpec):
        self.path = path
        self.spec = spec

    def write(self, tiles: Iterable[np.ndarray]) -> None:
        spec = self.spec
        photometric = "rgb" if spec.channels == 3 else "palette" if spec.colormap is not None else "minisblack"
        options = dict(
            tile=(spec.tile, spec.tile),
            compression=_COMPRESSION[TiffCompression(spec.compression)],
            photometric=photometric,
            dtype=spec.dtype,
        )
        if spec.compression is TiffCompression.JPEG:
            options["compressionargs"] = {"level": 90}
        if spec.colormap is not None:
            options["colormap"] = spec.colormap

        def resolution(level: int) -> dict:
            if not spec.pixel_size_um:
                return {}
            per_cm = 1e4 / (spec.pixel_size_um * 2**level)  # pixels per centimetre, the TIFF unit closest to µm
            return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
        folder = os.path.dirname(os.path.abspath(self.path))
        sweep_scratch(folder)  # a killed run's scratch levels can be GBs
        scratch_dir = tempfile.mkdtemp(prefix="minseg-pyramid-", suffix=scratch_suffix(), dir=folder)
        try:
            scratch = [os.path.join(scratch_dir, f"level{n}.raw") for n in range(spec.levels)]
            with tifffile.TiffWriter(self.path, bigtiff=True) as tiff:
                tiff.write(
                    self._level0_tiles(tiles, scratch[1] if spec.levels > 1 else None),
                    shape=spec.pixel_shape(spec.height, spec.width),
                    subifds=spec.levels - 1,
                    description=json.dumps(spec.metadata) if spec.metadata else None,
                    metadata=None,
                    extratags=spec.extratags,
                    **options,
                    **resolution(0),
                )
                for level in range(1, spec.levels):
                    height, width = spec.level_shape(level)
                    feed = scratch[level + 1] if level + 1 < spec.levels else None
                    tiff.write(
                        self._scratch_tiles(scratch[level], height, width, feed),
                        shape=spec.pixel_shape(height, width),
                        subfiletype=1,
                        metadata=None,
                        **options,
                        **resolution(level),
                    )
                    os.unlink(scratch[level])
        finally:
            for name in os.listdir(scratch_dir):
                os.unlink(os.path.join(scratch_dir, name))
            os.rmdir(scratch_dir)

    def _level0_tiles(self, tiles: Iterable[np.ndarray], feed: str | None) -> Iterator[np.ndarray]:
        spec = self.spec
        iterator = iter(tiles)
        with open(feed, "wb") if feed else _NullFile() as sink:
            for row in range(spec.tile_rows):
                rows = min(spec.tile, spec.height - row * spec.tile)
                half = _HalfBand(spec, rows, spec.width) if feed else None
                for col in range(spec.tile_cols):
                    tile = next(iterator, None)
                    if tile is None:
                        raise ValueError(f"tile source ended early at tile row {row}, column {col}")
                    cols = min(spec.tile, spec.width - col * spec.tile)
                    expected = spec.pixel_shape(rows, cols)
                    if tile.shape[:2] != expected[:2] and tile.shape[:2] != (spec.tile, spec.tile):
                        raise ValueError(f"tile ({row}, {col}) has shape {tile.shape}, expected {expected}")
                    if half is not None:
                        half.add(col * spec.tile, tile[:rows, :cols])
                        if col == spec.tile_cols - 1:
                            half.write_to(sink)  # before the band's last tile: tifffile stops pulling after the final one
                    yield _full_tile(tile, spec)

    def _scratch_tiles(self, source: str, height: int, width: int, feed: str | None) -> Iterator[np.ndarray]:
        spec = self.spec
        row_bytes = int(np.prod(spec.pixel_shape(1, width))) * np.dtype(spec.dtype).itemsize
        with open(source, "rb") as reader, open(feed, "wb") if feed else _NullFile() as sink:
            for top in range(0, height, spec.tile):
                rows = min(spec.tile, height - top)
                band = np.frombuffer(reader.read(rows * row_bytes), dtype=spec.dtype).reshape(
                    spec.pixel_shape(rows, width)
                )
                half = _HalfBand(spec, rows, width) if feed else None
                for left in range(0, width, spec.tile):
                    block = band[:, left : left + spec.tile]
                    if half is not None:
                        half.add(left, block)
                        if left + spec.tile >= width:
                            half.write_to(sink)  # before the last tile, as for level 0
                    yield _full_tile(block, spec)


def _full_tile(tile: np.ndarray, spec: PyramidSpec) -> np.ndarray:
    """tifffile wants whole tiles; pad edge tiles by repeating their last row/column."""
    if tile.shape[0] == spec.tile and tile.shape[1] == spec.tile:
        return np.ascontiguousarray(tile, dtype=spec.dtype)
    pad = [(0, spec.tile - tile.shape[0]), (0, spec.tile - tile.shape[1])] + [(0, 0)] * (tile.ndim - 2)
    return np.pad(tile, pad, mode="edge").astype(spec.dtype, copy=False)


class _NullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, data) -> int:
        return len(data)


_END = object()


class PyramidSink:
    """Writers for several pyramids fed tile by tile (row-major).

    Each output is written by its own thread fed through a bounded queue, which keeps
    memory bounded and lets compression overlap whatever produces the bands.
    """

    def __init__(self, outputs: list[tuple[str, PyramidSpec]], prefetch: int = 8):
        self.specs = [spec for _, spec in outputs]
        grid = (self.specs[0].tile_rows, self.specs[0].tile_cols, self.specs[0].tile)
        if any((s.tile_rows, s.tile_cols, s.tile) != grid for s in self.specs):
            raise ValueError("all outputs must share one tile grid")
        self.queues: list[queue.Queue] = [queue.Queue(maxsize=prefetch) for _ in outputs]
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._closed = False
        self.threads = [threading.Thread(target=self._run, args=(path, spec, q), daemon=True)
                        for (path, spec), q in zip(outputs, self.queues)]
        for thread in self.threads:
            thread.start()

    def _run(self, path: str, spec: PyramidSpec, q: queue.Queue) -> None:
        ended: list[bool] = []

        def drain() -> Iterator[np.ndarray]:
            while True:
                item = q.get()
                if item is _END:
                    ended.append(True)
                    return
                yield item

        try:
            PyramidWriter(path, spec).write(drain())
        except BaseException as exc:  # reported to the caller by close()
            self.errors.append(exc)
            self._stop.set()
            while not ended and q.get() is not _END:  # unblock the producer
                pass

    @property
    def failed(self) -> bool:
        return self._stop.is_set()

    def put_tile(self, arrays) -> None:
        """One level-0 tile per output, in row-major order."""
        for q, array in zip(self.queues, arrays):
            q.put(array)

    def abort(self) -> None:
        """Stop the writers after a producer error (their files are incomplete: discard them)."""
        self._stop.set()
        try:
            self.close()
        except BaseException:  # the producer's error is the one worth reporting
            pass

    def close(self) -> None:
        """Finish every output; raises the first writer error."""
        if not self._closed:
            self._closed = True
            for q in self.queues:
                q.put(_END)
            for thread in self.threads:
                thread.join()
        if self.errors:
            raise self.errors[0]


def write_pyramids(
    outputs: list[tuple[str, PyramidSpec]],
    tile_source: Callable[[int, int], tuple[np.ndarray, ...]],
    on_tile: Callable[[], None] | None = None,
    prefetch: int = 8,
) -> None:
    """Write several pyramids whose level-0 tiles come from one source call per tile.

    ``tile_source(row, col)`` returns one array per output (e.g. image and mask), so
    each tile is produced once.
    """
    sink = PyramidSink(outputs, prefetch)
    try:
        for row in range(sink.specs[0].tile_rows):
            for col in range(sink.specs[0].tile_cols):
                if sink.failed:
                    break
                sink.put_tile(tile_source(row, col))
                if on_tile:
                    on_tile()
    except BaseException:
        sink.abort()
        raise
    sink.close()


def read_metadata(path_or_stream) -> dict[str, Any]:
    """The JSON metadata minseg stored in a TIFF's first ImageDescription ({} if none)."""
    with tifffile.TiffFile(path_or_stream) as tiff:
        text = tiff.pages[0].description
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
