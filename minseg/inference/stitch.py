"""Stitching blended tile scores into label and uncertainty output tiles, in any arrival order.

The plane is cut into cells at every tile start and end, so each cell is covered by
a fixed set of tiles. A cell keeps its tiles' scores (fp16, as sent) only between its first
and last contribution; when all its tiles have arrived they are summed, finalised
into uint8 labels and uncertainty, and freed (cells inside a single tile finish at
once). Finished pixels go into output tiles (the output TIFF's tiles), which leave in
row-major order as soon as they are complete. With input tiles arriving roughly row
by row, live memory is about half an overlap of fp16 scores and one row of output
tiles (uint8) wide, never the slide.

A cell's contributions are summed in tile order, not arrival order: the result is
bit-identical whatever order tiles finish in and however many actors produced them.
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


class Stitcher:
    """Accumulates (C, tile, tile) score tiles; calls ``on_tile(top, left, labels, uncertainty)`` per
    ``output_tile`` square of the image in row-major order (edge tiles cut to the image), and
    ``on_scores(top, left, scores)`` per finished cell, if given."""

    def __init__(self, grid: TileGrid, num_classes: int, uncertainty: Uncertainty,
                 output_tile: int, on_tile: TileCallback,
                 on_scores: Callable[[int, int, np.ndarray], None] | None = None):
        if uncertainty is Uncertainty.AUTO:
            raise ValueError("resolve Uncertainty.AUTO from the fusion mode first")
        self.grid, self.num_classes, self.uncertainty = grid, num_classes, uncertainty
        self.output_tile, self.on_tile, self.on_scores = output_tile, on_tile, on_scores
        self.output_cols = -(-grid.width // output_tile)
        self.output_count = -(-grid.height // output_tile) * self.output_cols
        self.y_edges, self.y_cover, self.y_touched = _cells(
            grid.ys, [grid.weighted_span(j, grid.rows) for j in range(grid.rows)], grid.padded_height)
        self.x_edges, self.x_cover, self.x_touched = _cells(
            grid.xs, [grid.weighted_span(j, grid.cols) for j in range(grid.cols)], grid.padded_width)
        self.needed = np.outer([len(c) for c in self.y_cover], [len(c) for c in self.x_cover])
        self.seen = np.zeros((grid.rows, grid.cols), bool)
        self.cells: dict[tuple[int, int], list] = {}  # cell -> [(tile row, tile col, scores as sent)]
        self.outputs: dict[int, list] = {}  # output tile index -> [labels, uncertainty, pixels still missing]
        self.next_output = 0
        self.tiles_done = 0
        self.live_bytes = 0  # pending cell scores + unfinished output tiles, kept as they change (not re-summed)
        self.peak_bytes = 0

    @property
    def complete(self) -> bool:
        return self.tiles_done == len(self.grid)

    def add(self, row: int, col: int, scores: np.ndarray) -> None:
        if self.seen[row, col]:  # a retried task may deliver a tile twice: count it once
            return
        self.seen[row, col] = True
        ty, tx = self.grid.ys[row], self.grid.xs[col]
        for i in self.y_touched[row]:
            y0, y1 = self.y_edges[i] - ty, self.y_edges[i + 1] - ty
            for k in self.x_touched[col]:
                x0, x1 = self.x_edges[k] - tx, self.x_edges[k + 1] - tx
                part = scores[:, y0:y1, x0:x1]
                if self.needed[i, k] == 1:
                    self._finalise(i, k, [(row, col, part)])
                    continue
                parts = self.cells.setdefault((i, k), [])
                parts.append((row, col, part.copy()))  # a copy (as sent: fp16), so the whole tile can be freed
                self.live_bytes += part.nbytes
                if len(parts) == self.needed[i, k]:
                    self.cells.pop((i, k))
                    self.live_bytes -= sum(p[2].nbytes for p in parts)
                    self._finalise(i, k, parts)
        self.tiles_done += 1
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._emit_ready_outputs()

    def _finalise(self, i: int, k: int, parts: list) -> None:
        top, bottom = self.y_edges[i], min(self.y_edges[i + 1], self.grid.height)
        left, right = self.x_edges[k], min(self.x_edges[k + 1], self.grid.width)
        if bottom <= top or right <= left:  # padding below/right of a slide smaller than a tile
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
        index = out_row * self.output_cols + out_col
        entry = self.outputs.get(index)
        if entry is None:
            size = self.output_tile
            rows = min(size, self.grid.height - out_row * size)
            cols = min(size, self.grid.width - out_col * size)
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
            self.on_tile(out_row * self.output_tile, out_col * self.output_tile, labels, uncertainty)
            self.next_output += 1
