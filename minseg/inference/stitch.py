"""Stitching blended tile scores into label and uncertainty output tiles, in any arrival order.

The plane is cut into cells at every tile start and end, so each cell is covered by
a fixed set of tiles. A cell keeps its tiles' scores (as sent: fp16 probabilities, float32 votes) only between its first
and last contribution; when all its tiles have arrived they are summed, finalised
into uint8 labels and uncertainty, and freed (cells inside a single tile finish at
once). Finished pixels go into output tiles (the output TIFF's tiles), which leave in
row-major order as soon as they are complete. With input tiles arriving roughly row
by row, live memory is about half an overlap of scores and one row of output
tiles (uint8) wide, never the slide.

A cell's contributions are summed in tile order, not arrival order: the result is
bit-identical whatever order tiles finish in and however many actors produced them.

A stitcher can also cover only a ``region`` of the image (a block of the block pipeline,
``inference.blocks``): it is fed the tiles weighing on the region and emits the region's
output tiles; a pixel gets exactly the arithmetic it gets when the whole image is stitched,
so blocks of any size tile the whole-image result bit for bit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from minseg.enums import Uncertainty
from minseg.ensemble.sliding import TileGrid


def _cells(starts: list[int], spans: list[tuple[int, int]], length: int):
    """Cell edges along one axis, the tiles weighing on each cell, the cells each tile weighs on.

    ``spans``: per tile, the offsets where its weight is not zero. Cells are cut at every
    span edge, so a tile weighs on a cell entirely or not at all.
    """
    intervals = [(s + lo, min(length, s + hi)) for s, (lo, hi) in zip(starts, spans)]
    edges = sorted({0, length, *(e for interval in intervals for e in interval)})
    cover = [[j for j, (a, b) in enumerate(intervals) if a <= lo and b >= hi] for lo, hi in zip(edges, edges[1:])]
    touched = [[i for i, tiles in enumerate(cover) if j in tiles] for j in range(len(starts))]
    return edges, cover, touched


TileCallback = Callable[[int, int, np.ndarray, np.ndarray], None]


def _overlapping(edges: list[int], touched: list[list[int]], lo: int, hi: int) -> tuple[list[int], list[list[int]]]:
    """Of the cells along one axis, those overlapping [lo, hi): the tiles that weigh on them, and per tile the
    cells it touches there."""
    inside = {i for i in range(len(edges) - 1) if edges[i] < hi and edges[i + 1] > lo}
    tiles = sorted({j for j, cells in enumerate(touched) if any(i in inside for i in cells)})
    return tiles, [[i for i in cells if i in inside] for cells in touched]


class Stitcher:
    """Accumulates (C, tile, tile) score tiles; calls ``on_tile(top, left, labels, uncertainty)`` per
    ``output_tile`` square of the image (or of ``region``) in row-major order (edge tiles cut to the
    image), and ``on_scores(top, left, scores)`` per finished cell, if given.

    Args:
        grid: the whole image's tile grid (tiles are addressed by its rows and columns).
        num_classes: C.
        uncertainty: how finished pixels' uncertainty is computed (resolved, not ``auto``).
        output_tile: side of the emitted squares, aligned to the image origin.
        on_tile, on_scores: the callbacks above.
        region: (top, bottom, left, right) in image pixels, multiples of ``output_tile`` except at the image's
            edge; only its pixels are finished and only the tiles in ``region_tiles`` are expected.
    """

    def __init__(self, grid: TileGrid, num_classes: int, uncertainty: Uncertainty,
                 output_tile: int, on_tile: TileCallback,
                 on_scores: Callable[[int, int, np.ndarray], None] | None = None,
                 region: tuple[int, int, int, int] | None = None):
        if uncertainty is Uncertainty.AUTO:
            raise ValueError("resolve Uncertainty.AUTO from the fusion mode first")
        self.grid, self.num_classes, self.uncertainty = grid, num_classes, uncertainty
        self.output_tile, self.on_tile, self.on_scores = output_tile, on_tile, on_scores
        top, bottom, left, right = region if region is not None else (0, grid.height, 0, grid.width)
        if top % output_tile or left % output_tile or not (0 <= top < bottom <= grid.height) \
                or not (0 <= left < right <= grid.width):
            raise ValueError(f"region {region} must lie in the {grid.height}x{grid.width} image and start on "
                             f"the {output_tile}-pixel output grid")
        self.region = (top, bottom, left, right)
        self.first_output_row, self.first_output_col = top // output_tile, left // output_tile
        self.output_cols = -(-right // output_tile) - self.first_output_col
        self.output_count = (-(-bottom // output_tile) - self.first_output_row) * self.output_cols
        self.y_edges, self.y_cover, y_touched = _cells(
            grid.ys, [grid.weighted_span(j, grid.rows) for j in range(grid.rows)], grid.padded_height)
        self.x_edges, self.x_cover, x_touched = _cells(
            grid.xs, [grid.weighted_span(j, grid.cols) for j in range(grid.cols)], grid.padded_width)
        # below/right of the image, padding cells belong to the last region along that axis
        rows, self.y_touched = _overlapping(self.y_edges, y_touched, top,
                                            grid.padded_height if bottom == grid.height else bottom)
        cols, self.x_touched = _overlapping(self.x_edges, x_touched, left,
                                            grid.padded_width if right == grid.width else right)
        self.region_rows, self.region_cols = rows, cols
        self.needed = np.outer([len(c) for c in self.y_cover], [len(c) for c in self.x_cover])
        self.seen = np.zeros((grid.rows, grid.cols), bool)
        self.cells: dict[tuple[int, int], list] = {}  # cell -> [(tile row, tile col, scores as sent)]
        self.outputs: dict[int, list] = {}  # output tile index -> [labels, uncertainty, pixels still missing]
        self.next_output = 0
        self.tiles_done = 0
        self.live_bytes = 0  # pending cell scores + unfinished output tiles, kept as they change (not re-summed)
        self.peak_bytes = 0

    @property
    def region_tiles(self) -> list[tuple[int, int]]:
        """(row, col) of every tile weighing on the region, in tile order."""
        return [(row, col) for row in self.region_rows for col in self.region_cols]

    @property
    def complete(self) -> bool:
        return self.tiles_done == len(self.region_rows) * len(self.region_cols)

    def add(self, row: int, col: int, scores: np.ndarray) -> None:
        if row not in self.region_rows or col not in self.region_cols:
            raise ValueError(f"tile ({row}, {col}) does not weigh on the region {self.region}")
        if self.seen[row, col]:  # a retried task may deliver a tile twice: count it once
            return
        self.seen[row, col] = True
        ty, tx = self.grid.ys[row], self.grid.xs[col]
        top, bottom, left, right = self.region
        for i in self.y_touched[row]:  # cells cut to the region (``_finalise`` cuts them the same way)
            y0, y1 = max(self.y_edges[i], top) - ty, max(min(self.y_edges[i + 1], bottom) - ty, 0)
            for k in self.x_touched[col]:
                x0, x1 = max(self.x_edges[k], left) - tx, max(min(self.x_edges[k + 1], right) - tx, 0)
                part = scores[:, y0:y1, x0:x1]
                if self.needed[i, k] == 1:
                    self._finalise(i, k, [(row, col, part)])
                    continue
                parts = self.cells.setdefault((i, k), [])
                parts.append((row, col, part.copy()))  # a copy (as sent), so the whole tile can be freed
                self.live_bytes += part.nbytes
                if len(parts) == self.needed[i, k]:
                    self.cells.pop((i, k))
                    self.live_bytes -= sum(p[2].nbytes for p in parts)
                    self._finalise(i, k, parts)
        self.tiles_done += 1
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._emit_ready_outputs()

    def _finalise(self, i: int, k: int, parts: list) -> None:
        region_top, region_bottom, region_left, region_right = self.region
        top, bottom = max(self.y_edges[i], region_top), min(self.y_edges[i + 1], region_bottom)
        left, right = max(self.x_edges[k], region_left), min(self.x_edges[k + 1], region_right)
        if bottom <= top or right <= left:  # padding below/right of the image, or outside the region
            return
        height, width = bottom - top, right - left
        if len(parts) == 1:  # one tile weighs here: its own scores, whatever its weight
            scores = parts[0][2][:, :height, :width].astype(np.float32)
        else:
            parts.sort(key=lambda part: part[:2])  # tile order: the same float sum whatever the arrival order
            accumulated = np.zeros((self.num_classes, height, width), np.float32)
            norm = np.zeros((height, width), np.float32)
            for row, col, part in parts:
                ty, tx = self.grid.ys[row], self.grid.xs[col]
                weights = self.grid.weights(row, col)[top - ty : bottom - ty, left - tx : right - tx]
                accumulated += part[:, :height, :width].astype(np.float32) * weights
                norm += weights
            scores = accumulated / norm
        labels = np.argmax(scores, axis=0).astype(np.uint8)  # first class on ties
        uncertainty = self._uncertainty(scores)
        if self.on_scores is not None:  # blended (C, h, w) scores of a finished cell, e.g. to keep probabilities
            self.on_scores(top, left, scores)
        size = self.output_tile
        for out_row in range(top // size, (bottom - 1) // size + 1):
            out_top = out_row * size
            lo, hi = max(top, out_top), min(bottom, out_top + size)
            for out_col in range(left // size, (right - 1) // size + 1):
                out_left = out_col * size
                a, b = max(left, out_left), min(right, out_left + size)
                entry = self._output(out_row, out_col)
                target = np.s_[lo - out_top : hi - out_top, a - out_left : b - out_left]
                source = np.s_[lo - top : hi - top, a - left : b - left]
                entry[0][target], entry[1][target] = labels[source], uncertainty[source]
                entry[2] -= (hi - lo) * (b - a)

    def _output(self, out_row: int, out_col: int) -> list:
        index = (out_row - self.first_output_row) * self.output_cols + out_col - self.first_output_col
        entry = self.outputs.get(index)
        if entry is None:
            size = self.output_tile
            rows = min(size, self.region[1] - out_row * size)
            cols = min(size, self.region[3] - out_col * size)
            entry = self.outputs[index] = [np.zeros((rows, cols), np.uint8), np.zeros((rows, cols), np.uint8),
                                           rows * cols]
            self.live_bytes += 2 * rows * cols
        return entry

    def _uncertainty(self, scores: np.ndarray) -> np.ndarray:
        if self.uncertainty is Uncertainty.ENTROPY:
            p = np.clip(scores, 1e-12, 1.0)
            p = p / p.sum(axis=0, keepdims=True)
            value = -(p * np.log(p)).sum(axis=0) / np.log(max(2, self.num_classes))
        else:
            value = 1.0 - scores.max(axis=0)
        return np.clip(np.rint(value * 255.0), 0, 255).astype(np.uint8)

    def _emit_ready_outputs(self) -> None:
        while self.next_output in self.outputs and self.outputs[self.next_output][2] == 0:
            labels, uncertainty, _ = self.outputs.pop(self.next_output)
            self.live_bytes -= labels.nbytes + uncertainty.nbytes
            out_row, out_col = divmod(self.next_output, self.output_cols)
            self.on_tile((out_row + self.first_output_row) * self.output_tile,
                         (out_col + self.first_output_col) * self.output_tile, labels, uncertainty)
            self.next_output += 1
