"""The block pipeline's units of work: blocks of a slide, their reads, their segmentation, their records.

A slide's processed image is cut into output blocks (``segment.block`` pixels square, a multiple
of the output chunk). A block is finished by one worker from start to end:

1. ``read_blocks`` (a CPU task) reads every tile window that weighs on the block (the block plus
   the halo its overlapping windows need: the same windows, at the same grid positions, as a
   whole-slide pass) and the block's own pixels;
2. ``BlockSegmenter`` (an actor holding the ensemble) predicts the windows in fixed-shape batches,
   blends them with a region ``Stitcher`` (bit-identical to stitching the whole slide), writes the
   block's labels, uncertainty and image into the slide's OME-Zarr on every level the block can
   write alone, measures its grains and particles (``mineralogy.slide``), and writes a block record
   (``<slide>/.minseg/blocks/<row>-<col>.npz``: objects, class pixels, preview samples);
3. the driver gets back a row of a few numbers. When every block of a slide is recorded, a
   finishing task (``outputs.finish_slide``) merges the records, builds the coarse pyramid
   levels, the preview and the TIFF export, and writes ``summary.json`` last.

Per-tile scores never leave the worker that made them; halos are recomputed by each block that
needs them (the ``recompute`` factor in each summary says how much).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import numpy as np

from minseg.ensemble.runtime import Columns
from minseg.inference.outputs import preview_sample
from minseg.inference.plan import SLIDES, open_scene, read_tile
from minseg.inference.stitch import Stitcher
from minseg.io.images import display_rgb, image_maxima
from minseg.io.ngff import PyramidLayout
from minseg.io.storage import Storage, join_uri
from minseg.mineralogy.slide import BlockMineralogy, measure_block

RECORDS = ".minseg"  # per-slide working folder: plan.json and block records (removed once the slide is done)


@dataclass(frozen=True)
class Block:
    """One output block: its position in the slide's block grid and its pixel bounds (processed scale)."""

    row: int
    col: int
    top: int
    bottom: int
    left: int
    right: int

    @property
    def name(self) -> str:
        return f"{self.row}-{self.col}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left


def slide_blocks(height: int, width: int, size: int) -> list[Block]:
    """The blocks of a (height, width) image, row-major; edge blocks cut to the image."""
    return [Block(r, c, top, min(height, top + size), left, min(width, left + size))
            for r, top in enumerate(range(0, height, size)) for c, left in enumerate(range(0, width, size))]


def block_levels(size: int, chunk: int, levels: int) -> int:
    """How many pyramid levels a block writes alone: while the block stays a whole number of chunks."""
    count = 1
    while count < levels and size % (chunk << count) == 0:
        count += 1
    return count


def block_stitcher(plan, block: Block, output_tile: int, on_tile) -> Stitcher:
    return Stitcher(plan.grid, plan.num_classes, plan.uncertainty, output_tile, on_tile,
                    region=(block.top, block.bottom, block.left, block.right))


def record_uri(slide_output: str, block: Block) -> str:
    return join_uri(slide_output, RECORDS, "blocks", f"{block.name}.npz")


def pack(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        return dict(loaded)


UNKNOWN = ()  # a block record's brightest input values when it was written before they were kept


def brightest_values(array: np.ndarray) -> tuple[int, ...]:
    """Packed brightest values (``read_block``'s, a record's) as a tuple: one per image, or one over every image in
    records of a run before images were told apart (a 0-d array)."""
    return tuple(np.atleast_1d(array).tolist())


@dataclass
class BlockRecord:
    """What a finished block leaves for its slide's finishing step: its grains and particles (whole ones as
    table rows, the ones crossing its edges for the merge), uncertainty sum, preview samples (slide and labels,
    on the preview's global grid), windows predicted, seconds."""

    block: Block
    mineralogy: BlockMineralogy
    uncertainty_sum: int
    preview_image: np.ndarray
    preview_labels: np.ndarray
    windows: int
    seconds: float
    # the brightest input value of the block's pixels (0..255) in each image of its scene (one for a plain slide;
    # one over every channel in records of a run before images were told apart)
    brightest: tuple[int, ...] = UNKNOWN

    def to_bytes(self) -> bytes:
        b = self.block
        return pack(block=np.asarray([b.row, b.col, b.top, b.bottom, b.left, b.right], np.int64),
                    uncertainty_sum=np.asarray(self.uncertainty_sum, np.int64), preview_image=self.preview_image,
                    preview_labels=self.preview_labels, windows=np.asarray(self.windows),
                    seconds=np.asarray(self.seconds), brightest=np.asarray(self.brightest, np.int16),
                    **self.mineralogy.to_arrays())

    @classmethod
    def from_bytes(cls, data: bytes) -> "BlockRecord":
        arrays = unpack(data)
        return cls(Block(*(int(v) for v in arrays["block"])), BlockMineralogy.from_arrays(arrays),
                   int(arrays["uncertainty_sum"]), arrays["preview_image"],
                   arrays["preview_labels"], int(arrays["windows"]), float(arrays["seconds"]),
                   brightest_values(arrays["brightest"]) if "brightest" in arrays
                   else UNKNOWN)  # records of an older run


# -- stage 1: reads (CPU tasks) -------------------------------------------------


@dataclass
class BlockInput(Columns):
    """Read tasks → actors: per block, its slide, block (JSON), and an ``npz`` payload with the windows
    ((n, tile, tile, C) uint8, tile order), their grid rows/cols and the block's pixels (h, w, 3); or the
    read error ('' when none)."""

    OBJECT_COLUMNS = ("payload",)

    slide: list
    block: list
    payload: list
    error: list


def block_to_json(block: Block) -> str:
    return json.dumps([block.row, block.col, block.top, block.bottom, block.left, block.right])


def block_from_json(text: str) -> Block:
    return Block(*json.loads(text))


def read_block(plan, block: Block, storage: Storage, fill: np.ndarray, output_tile: int) -> bytes:
    """The windows weighing on ``block`` and the block's pixels, packed (``BlockInput.payload``)."""
    slide = open_scene(plan.uri, plan.channels, storage, plan.limits, SLIDES, plan.identity, plan.bit_depth)
    tiles = block_stitcher(plan, block, output_tile, lambda *_: None).region_tiles
    grid, tile = plan.grid, plan.tile
    windows = np.empty((len(tiles), tile, tile, plan.in_channels), np.uint8)
    image = np.empty(block.shape + (plan.in_channels,), np.uint8)
    for index, (row, col) in enumerate(tiles):  # tile order: a later window's pixels win where they overlap
        y, x = grid.ys[row], grid.xs[col]
        windows[index] = read_tile(slide, plan, y, x, fill)
        top, bottom = max(y, block.top), min(y + tile, block.bottom)
        left, right = max(x, block.left), min(x + tile, block.right)
        if bottom > top and right > left:
            image[top - block.top : bottom - block.top, left - block.left : right - block.left] = \
                windows[index, top - y : bottom - y, left - x : right - x]
    # the block's picture (stored beside the labels, previewed) is shown in RGB: a scene's first image; the
    # brightest value of each image says whether the slide, or one image of its scene, reads nearly black (a bit
    # depth not set)
    return pack(windows=windows, rows=np.asarray([r for r, _ in tiles], np.int32),
                cols=np.asarray([c for _, c in tiles], np.int32), image=display_rgb(image, plan.first_channels),
                brightest=np.asarray(image_maxima(image, [count for _, count in plan.images]), np.int16))


def read_blocks(batch: dict, plans: dict, storage: Storage, fill: list[int], output_tile: int) -> dict:
    """Ray Data task: ``BlockInput`` rows for the blocks of a batch; a failed read becomes an error row."""
    from minseg.io.slides import SlideError

    fill_value = np.asarray(fill, np.uint8)
    out = BlockInput([], [], [], [])
    for slide_id, text in zip(batch["slide"], batch["block"]):
        plan, block = plans[str(slide_id)], block_from_json(str(text))
        payload, error = b"", ""
        try:
            payload = read_block(plan, block, storage, fill_value, output_tile)
        except (SlideError, OSError) as exc:
            error = str(exc)
        out.slide.append(str(slide_id))
        out.block.append(str(text))
        out.payload.append(payload)
        out.error.append(error)
    return out.to_batch()


# -- stage 2: the ensemble actors ---------------------------------------------------


@dataclass
class BlockDone(Columns):
    """Actors → driver, a few numbers per block: slide, block (JSON), windows predicted, bytes of fused
    scores those windows made (they stayed on the worker), seconds, error ('' when none), and the Ray node
    that segmented it."""

    slide: list
    block: list
    windows: list
    score_bytes: list
    seconds: list
    error: list
    node: list


def segment_block(predict, plan, block: Block, windows: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  image: np.ndarray, arrays, storage: Storage, settings, batch_size: int,
                  brightest: np.ndarray | tuple[int, ...] = UNKNOWN) -> BlockRecord:
    """Predict, blend, write and record one block (module doc, step 2).

    Args:
        predict: (n, tile, tile, channels) uint8 windows -> (n, C, tile, tile) fused scores (float16, or float32
            for votes: ``voting.blend_dtype``).
        arrays: the slide's ``ngff.SegmentationArrays``.
        batch_size: windows per ``predict`` call: the predictor's own batch size (``BlockSegmenter.batch_size``,
            which GPU memory may set below ``settings.batch_size``), so no call pads a second batch.
        brightest: the block's brightest input value in each image (``read_block``'s), recorded for the slide's
            summary.
    """
    from minseg.io.tiff import halve

    started = time.perf_counter()
    levels = block_levels(settings.block, settings.output_tile,
                          PyramidLayout(plan.height, plan.width, settings.output_tile).levels)
    labels = np.empty(block.shape, np.uint8)
    uncertainty = np.empty(block.shape, np.uint8)

    def on_tile(top, left, tile_labels, tile_uncertainty):
        target = np.s_[top - block.top : top - block.top + tile_labels.shape[0],
                       left - block.left : left - block.left + tile_labels.shape[1]]
        labels[target], uncertainty[target] = tile_labels, tile_uncertainty

    stitcher = block_stitcher(plan, block, settings.output_tile, on_tile)
    # a batch at a time: the block's scores are never all in memory (the stitcher frees finished tiles)
    for start in range(0, len(windows), batch_size):
        scores = predict(windows[start : start + batch_size])
        for offset, window_scores in enumerate(scores):
            stitcher.add(int(rows[start + offset]), int(cols[start + offset]), window_scores)
    if not stitcher.complete:
        raise RuntimeError(f"block {block.name}: {stitcher.tiles_done} of {len(stitcher.region_tiles)} windows")
    level_labels, level_uncertainty, level_image = labels, uncertainty, image
    for level in range(levels):
        top, left = block.top >> level, block.left >> level
        arrays.write(arrays.LABELS, level, top, left, level_labels)
        arrays.write(arrays.UNCERTAINTY, level, top, left, level_uncertainty)
        if arrays.has_image:
            arrays.write("", level, top, left, level_image)
        if level + 1 < levels:
            level_labels, level_uncertainty = halve(level_labels, "nearest"), halve(level_uncertainty, "mean")
            level_image = halve(level_image, "mean")
    record = BlockRecord(
        block=block,
        mineralogy=measure_block(labels, block.top, block.left, plan.measure),
        uncertainty_sum=int(uncertainty.sum(dtype=np.int64)),
        preview_image=preview_sample(image, block.top, block.left, plan.preview_stride),
        preview_labels=preview_sample(labels, block.top, block.left, plan.preview_stride),
        windows=len(windows), seconds=time.perf_counter() - started, brightest=brightest_values(brightest),
    )
    storage.write_bytes(record_uri(plan.output_uri, block), record.to_bytes())  # after the chunks: "block done"
    return record
