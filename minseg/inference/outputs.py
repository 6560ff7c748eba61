"""What one segmented slide leaves behind: file names, class palette, the preview, the summary.

A slide's folder holds ``segmentation.ome.zarr`` (``io.ngff``), ``preview.png``, optionally
``labels.tif`` / ``uncertainty.tif`` (pyramidal BigTIFF exports), and ``summary.json``, written
last: a slide counts as done exactly when its summary exists (``finish.finish_slide``).
"""

from __future__ import annotations

import io
import json
import logging
import math
from typing import Callable

import numpy as np

from minseg.data.classmap import default_color
from minseg.io.storage import COMMAND_MARKERS, ObjectNotFoundError, Storage, join_uri, staging_folder
from minseg.logs import get_logger, log_event
from minseg.mineralogy.report import FOLDER, write_batch_report

log = get_logger("inference.outputs")

ZARR, LABELS, UNCERTAINTY, SUMMARY = "segmentation.ome.zarr", "labels.tif", "uncertainty.tif", "summary.json"


def class_colours(classes: list[dict]) -> np.ndarray:
    """(C, 3) uint8: the class map's colours, the class maps' default palette where it has none."""
    colours = [entry.get("color") or default_color(index) for index, entry in enumerate(classes)]
    return np.asarray(colours, np.uint8).reshape(-1, 3)


def palette_colormap(colours: np.ndarray) -> np.ndarray:
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, : len(colours)] = colours.T.astype(np.uint16) * 257
    return colormap


def preview_stride(height: int, width: int, max_side: int) -> int:
    """Every how many pixels the preview samples the slide, so that it fits ``max_side``."""
    return max(1, math.ceil(max(height, width) / max_side))


def preview_sample(tile: np.ndarray, y: int, x: int, stride: int) -> np.ndarray:
    """The pixels of a tile at (y, x) that fall on the preview's grid (global multiples of ``stride``)."""
    return np.ascontiguousarray(tile[(-y) % stride :: stride, (-x) % stride :: stride])


class PreviewCanvas:
    """The slide and its labels every ``stride`` pixels, for an overlay of at most ``max_side``."""

    def __init__(self, height: int, width: int, max_side: int):
        self.stride = preview_stride(height, width, max_side)
        self.height, self.width = height, width
        shape = (math.ceil(height / self.stride), math.ceil(width / self.stride))
        self.image = np.zeros(shape + (3,), np.uint8)
        self.labels = np.zeros(shape, np.uint8)

    def add(self, y: int, x: int, thumbnail: np.ndarray, labels: np.ndarray) -> None:
        """Place a block's ``preview_sample``s (of its image and of its labels, block at (y, x)): both are on the
        preview's grid already."""
        row, col = -(-y // self.stride), -(-x // self.stride)  # the first grid point at or after (y, x)
        for canvas, sample in ((self.image, thumbnail), (self.labels, labels)):
            rows = min(sample.shape[0], canvas.shape[0] - row)
            cols = min(sample.shape[1], canvas.shape[1] - col)
            if rows > 0 and cols > 0:
                canvas[row : row + rows, col : col + cols] = sample[:rows, :cols]

    def render(self, colours: np.ndarray, names: list[str], area_percent: list[float], alpha: float):
        """An RGB PIL image: the overlay with a legend (class colour, name, area %) on the right."""
        from PIL import Image, ImageDraw, ImageFont

        opacity = np.uint16(round(alpha * 255))  # integer blending: a 2048^2 preview in float64 would take 100 MB
        overlay = (self.image * (255 - opacity) + colours[self.labels] * opacity + 127) // 255
        overlay = overlay.astype(np.uint8)
        size = max(12, min(40, overlay.shape[0] // 45))
        font = ImageFont.load_default(size=size)
        line = int(size * 1.5)
        legend_width = 3 * size + max(int(font.getlength(f"{n}  {p:5.1f} %")) for n, p in zip(names, area_percent)) + 10
        height = max(overlay.shape[0], line * (len(names) + 2))
        canvas = Image.new("RGB", (overlay.shape[1] + legend_width, height), (255, 255, 255))
        canvas.paste(Image.fromarray(overlay), (0, 0))
        draw = ImageDraw.Draw(canvas)
        left = overlay.shape[1] + 10
        draw.text((left, 6), "class  area", fill=(0, 0, 0), font=font)
        for index, (name, percent) in enumerate(zip(names, area_percent)):
            top = 6 + line * (index + 1)
            draw.rectangle([left, top + 2, left + size, top + size + 2], fill=tuple(int(v) for v in colours[index]),
                           outline=(0, 0, 0))
            draw.text((left + 2 * size, top), f"{name}  {percent:5.1f} %", fill=(0, 0, 0), font=font)
        return canvas


#: the columns every row of ``slides.csv`` starts with (``segment._table_row``); the mineralogy's follow
SLIDE_COLUMNS = ("slide", "uri", "status", "height", "width", "tiles", "active_seconds", "wall_seconds",
                 "ensemble_digest", "mean_uncertainty", "brightest")


def read_earlier_json(storage: Storage, uri: str):
    """A JSON document an earlier run wrote (its summary, ``failures.json``, a slide's record), or None (absent or
    unreadable: rebuilt from this run)."""
    try:
        return json.loads(storage.read_text(uri))
    except (ObjectNotFoundError, ValueError):
        return None


def write_slide_tables(rows: list[dict], storage: Storage, out_uri: str,
                       first_columns: tuple[str, ...] = SLIDE_COLUMNS) -> None:
    """``slides.csv`` and ``slides.parquet`` under ``out_uri``: a row per slide, every row's columns (slides
    differ in their classes; pyarrow's ``from_pylist`` alone would keep only the first row's); with no row, the
    command's ``first_columns`` alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from minseg.io.tables import csv_text

    # no slide left (each failed now): the tables keep their first columns, empty, rather than no header at all
    columns = list(dict.fromkeys(key for row in rows for key in row)) or list(first_columns)
    complete = [{key: row.get(key) for key in columns} for row in rows]
    storage.write_text(join_uri(out_uri, "slides.csv"), csv_text(complete, columns))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(complete) if complete else
                   pa.table({key: pa.array([], pa.null()) for key in columns}), buffer)
    storage.write_bytes(join_uri(out_uri, "slides.parquet"), buffer.getvalue())


#: the batch tables and report segment and measure write at the top of their output folder, each run whole
#: (``publish_run_tables``), beside their summary (``COMMAND_MARKERS``)
RUN_FILES = ("slides.csv", "slides.parquet", "failures.json", FOLDER)
#: names no slide or map folder takes (``segment.slide_ids``: the hashed name instead), compared in lower case:
#: the run's own files at the top of the output, and every command's marker (a folder of that name would make the
#: output read as that command's)
RESERVED_NAMES = frozenset(name.lower() for name in (*RUN_FILES, *COMMAND_MARKERS.values()))


def start_run_tables(storage: Storage, output: str, command: str) -> str:
    """The empty staging folder (``staging_folder``) where ``command`` (segment, measure) writes its run tables and
    batch report before ``publish_run_tables``; what a failed attempt left there is deleted."""
    staged = staging_folder(output, command)
    storage.delete_prefix(staged + "/")
    return staged


def stage_batch_report(storage: Storage, staged: str, documents: Callable[[], dict[str, dict]], title: str,
                       command: str) -> str | None:
    """The batch report (``write_batch_report`` of ``documents()``, the slides' ``mineralogy.json`` by slide) written
    into the staging folder ``staged``. Returns None, or why it could not be built (logged
    ``<command>.report_failed``): the run's tables and failure list are then put in place without a report (the
    earlier one deleted), the summary saying why (``report_error``), rather than the run failing and losing them."""
    try:
        write_batch_report(documents(), storage, join_uri(staged, FOLDER), title)
    except Exception as exc:  # noqa: BLE001 (whatever broke the report, the tables and failures still count)
        storage.delete_prefix(join_uri(staged, FOLDER) + "/")  # a report half written is none
        reason = f"{type(exc).__name__}: {exc}"
        log_event(log, f"{command}.report_failed", logging.WARNING, reason=reason,
                  hint="the run's tables and failures are in place without a batch report")
        return reason
    return None


def publish_run_tables(storage: Storage, output: str, command: str, summary: dict, owned: list[str]) -> None:
    """Write ``command``'s summary (``run_summary.json``, ``measure_summary.json``: the marker, with ``run_files``
    = ``owned``) last into the staging folder, then put the run tables staged there in place in ``output``
    together (``Storage.replace_files``): the summary leaves first and comes back last, so a reader (and the next
    run, which merges with it) never takes one run's summary with another's tables. Of the earlier run's files,
    those ``owned`` (names of :data:`RUN_FILES`) that this run did not write are deleted (a batch report with no
    complete slide left); the slides' folders and anything else in ``output`` are untouched.

    Raises:
        StorageError: a write, copy or delete failed (``output`` then lacks its summary; the next run of
            ``command`` completes the publication first, ``finish_run_tables``)."""
    marker = COMMAND_MARKERS[command]
    staged = staging_folder(output, command)
    storage.write_json(join_uri(staged, marker), {**summary, "run_files": sorted(owned)})
    storage.publish_staged(output, command, (marker,), tuple(owned))


def finish_run_tables(storage: Storage, output: str, command: str) -> bool:
    """Before a run of ``command`` into ``output``: run tables whose publication was cut short (complete in the
    staging folder, their summary there) are put in place; the remains of a run stopped before its tables were
    complete are deleted (``Storage.finish_staged``). Returns whether tables were put in place.

    Raises:
        InputError: ``<output>/.minseg-redo`` is a file."""
    marker = COMMAND_MARKERS[command]

    def owned() -> tuple[str, ...]:
        try:
            listed = json.loads(storage.read_text(join_uri(staging_folder(output, command), marker))).get("run_files")
        except (ObjectNotFoundError, ValueError, AttributeError):  # damaged or not a mapping: delete nothing
            return ()
        # a hand-edited list deletes nothing but run tables
        return tuple(name for name in listed if name in RUN_FILES) if isinstance(listed, list) else ()

    return storage.finish_staged(output, command, (marker,), owned)


def missing_outputs(storage: Storage, slide_uri: str, summary: dict, tiff: bool) -> list[str]:
    """The outputs a finished slide's ``summary.json`` lists (``files``) and a run with these settings writes that
    are no longer in its folder, as paths relative to it (removed by hand, a partial copy): the preview, the
    mineralogy document, the TIFF exports when ``tiff`` (the run asks for them), and the OME-Zarr's root and
    level-0 label and uncertainty metadata (not every chunk: ``measure`` lists those). Plots and tables a user
    deleted do not make a slide redone. One listing of the folder and three existence checks (four requests on
    S3).

    Raises:
        StorageError: the folder could not be listed or checked."""
    from minseg.io.ngff import SegmentationArrays

    files = summary.get("files")
    files = files if isinstance(files, dict) else {}
    wanted = ("preview", "mineralogy", *(("labels", "uncertainty") if tiff else ()))
    present = storage.file_names(slide_uri)
    missing = [name for key, name in files.items() if key in wanted and isinstance(name, str) and name not in present]
    if files.get("zarr") == ZARR:
        missing += [name for name in (f"{ZARR}/zarr.json", *(f"{ZARR}/{group}/0/zarr.json" for group in
                                                            (SegmentationArrays.LABELS, SegmentationArrays.UNCERTAINTY)))
                    if not storage.exists(join_uri(slide_uri, name))]
    return missing


def read_summary(storage: Storage, slide_uri: str) -> dict | None:
    try:
        return json.loads(storage.read_text(join_uri(slide_uri, SUMMARY)))
    except (OSError, ValueError):  # missing, unreadable or not JSON: not a finished slide
        return None

