"""Mineralogy of label maps that exist already (``minseg measure``), as a Ray job: one task per label map,
spread over the cluster; each reads its map block by block and measures it exactly as ``segment`` measures
the blocks it predicts (``mineralogy.slide``), so the numbers match a segmentation run's.

Per map, under ``<output>/<id>/``: ``mineralogy.json`` (written last: the map is done when it exists),
``grains.parquet``, ``particles.parquet``, the figures; with a reference mask, ``reference_mineralogy.json``
and the errors of every number against it (``mineralogy.json`` → ``reference``). Per run: ``slides.csv``
(a headline row per map), ``failures.json`` (maps that could not be measured, with why: the others carry
on), the batch report under ``mineralogy/`` and ``measure_summary.json``, put in place together
(``outputs.publish_run_tables``). A map measured before is measured again in its redo folder
(``minseg.io.storage.redo_folder``), which takes the earlier folder's place once finished: a failed re-measure
leaves the earlier measurement as it was.
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from minseg.config.schema import MinsegConfig
from minseg.data.config import class_list_problem
from minseg.errors import InputError
from minseg.inference.config import MeasureSettings
from minseg.inference.labelmaps import LabelMap, class_names_difference, open_label_map
from minseg.inference.blocks import RECORDS
from minseg.inference.folders import (FolderOwners, FolderTaken, folder_ids, folder_stem, hashed_id,
                                      input_in_item_folders, item_folder, matched_in_output,
                                      outside_output)
from minseg.inference.outputs import (LABELS, RUN_FILES, ZARR, finish_run_tables, publish_run_tables,
                                      read_earlier_json, stage_batch_report, start_run_tables, write_slide_tables)
from minseg.inference.segment import same_files_once, thread_map
from minseg.io.slides import ANISOTROPY_TOLERANCE, SLIDE_SUFFIXES, SlideError, resolution_sizes_um
from minseg.io.storage import (COMMAND_MARKERS, Storage, absolute_uri, glob_folders, glob_uris, has_glob, is_s3,
                               join_uri, redo_folder, refuse_other_command_outputs)
from minseg.logs import get_logger, log_event
from minseg.mineralogy.compare import compare_mineralogy
from minseg.mineralogy.config import MineralogySettings
from minseg.mineralogy.plots import write_plots
from minseg.mineralogy.report import headline, headline_text
from minseg.mineralogy.slide import DOCUMENT, MeasureSpec, ObjectTables, SlideMineralogy, measure_block, staged_tables
from minseg.preflight import job_paths
from minseg.runtime import init_ray, task_options

log = get_logger("measure")

REFERENCE_DOCUMENT = "reference_mineralogy.json"
MEASURE_COLUMNS = ("slide", "uri", "reference", "height", "width", "seconds")  # slides.csv's first columns
BEGUN = f"{RECORDS}/measuring.json"  # a map's folder while it is measured: names its source (``own_folders``)
#: a map folder's records, (file, key naming the source): a finished measurement's, then a begun one's
MEASURE_RECORDS = ((DOCUMENT, "source"), (BEGUN, "source"))


class MeasureInputError(InputError):
    """No label maps, or references that do not pair with them; the message names the key."""


@dataclass
class MeasureResult:
    """What a measure run did: the output, the maps measured (their headline rows) and those that failed."""

    output: str
    seconds: float = 0.0
    done: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    headlines: dict[str, list[str]] = field(default_factory=dict)  # console lines per map measured
    maps: list[str] = field(default_factory=list)  # every map the tables list: this run's and earlier runs' kept
    report_error: str | None = None  # why the batch report could not be built (the tables are in place without it)


def resolve_label_maps(settings: MeasureSettings, storage: Storage, output: str,
                       owner: FolderOwners | None = None) -> list[tuple[str, str | None]]:
    """(label map, reference or None) in the order given, globs expanded (less what lies in ``output``:
    ``folders.outside_output``, with the run's ``owner`` of its folders when given).

    Raises:
        MeasureInputError: nothing to measure, a glob that matches nothing.
    """
    uris: list[str] = []
    for entry in settings.labels:
        if has_glob(entry) and entry.rstrip("/").lower().endswith(".zarr"):  # a folder: found with its root
            found = glob_folders(entry, storage)
            matches = [uri for uri in outside_output(found, output, entry, "measure.glob_output_left_out", log, storage,
                                                     MEASURE_RECORDS, COMMAND_MARKERS["measure"], owner)
                       if storage.exists(join_uri(uri, "zarr.json"))]  # a HEAD each: after the filter
            if not matches:
                raise MeasureInputError(f"measure.labels: {entry!r} matched no OME-Zarr (a folder holding zarr.json)"
                                        f"{matched_in_output(found, output)}; check the pattern or leave it out")
            uris += matches
        elif has_glob(entry):
            found = glob_uris(entry, storage, SLIDE_SUFFIXES)
            matches = outside_output(found, output, entry, "measure.glob_output_left_out", log, storage,
                                     MEASURE_RECORDS, COMMAND_MARKERS["measure"], owner)
            if not matches:  # a mistyped pattern, not a smaller batch: the rest would look complete
                raise MeasureInputError(f"measure.labels: {entry!r} matched no label maps (files ending in "
                                        f"{', '.join(SLIDE_SUFFIXES)}){matched_in_output(found, output)}; check the "
                                        "pattern or leave it out")
            uris += matches
        else:
            uris.append(entry if is_s3(entry) else absolute_uri(entry))
    if not uris:
        raise MeasureInputError("measure: no label maps given (measure.labels or the command's arguments; "
                                "globs matched nothing)")
    references = [r if is_s3(r) else absolute_uri(r) for r in settings.references] or [None] * len(uris)
    if not settings.references:  # a map under two names (a link) once: its totals counted twice in the report
        uris = same_files_once(list(dict.fromkeys(uris)), "measure")
        references = [None] * len(uris)
    pairs = list(dict.fromkeys(zip(uris, references)))
    twice = sorted({uri for uri, _ in pairs if sum(u == uri for u, _ in pairs) > 1})
    if twice:
        raise MeasureInputError(f"measure: {', '.join(twice)} listed twice with different references (one output "
                                "folder per label map)")
    return pairs


def _map_names(uris: list[str]) -> dict[str, tuple[str, str]]:
    """Per label map, ``(plain, stem)``: the path its folder is named after (segment's ``<slide>/labels.tif`` or
    ``<slide>/segmentation.ome.zarr``: its slide folder; any other map: its file, ``a.ome.zarr`` read as
    ``a.zarr``) and that folder name (a slide folder's name whole, ``Core.7``; a file's without its extension)."""
    names = {}
    for uri in uris:
        parent, _, leaf = uri.rstrip("/").rpartition("/")
        if leaf in (LABELS, ZARR):
            names[uri] = (parent, folder_stem(parent, strip_extension=False))  # segment named the folder (`Core.7`)
        else:
            # `a.ome.zarr` is named `a` before names are compared: beside `a.tif`, or named as the run's own folders
            # (`mineralogy.ome.zarr`), it gets the hashed name, never a folder another map or the run writes
            plain = re.sub(r"\.ome(\.[^./]+)$", r"\1", uri.rstrip("/"))
            names[uri] = (plain, folder_stem(plain))
    return names


def map_ids(uris: list[str]) -> dict[str, str]:
    """A folder name per label map (``folder_ids`` of the names in ``_map_names``), before ``own_folders``."""
    return folder_ids({uri: stem for uri, (_, stem) in _map_names(uris).items()})


def own_folders(ids: dict[str, str], output: str, storage: Storage, threads: int = 16,
                owner: FolderOwners | None = None) -> dict[str, str]:
    """One folder, one map, by segment's rule (``folders.item_folder``): a map keeps the folder an earlier run gave
    it (plain or hashed); a map whose folder holds another map's measurement (its ``mineralogy.json`` names another
    source), or files no record names, gets its name plus a hash of its URI (changing ``ids``, logged
    ``measure.renamed``), so it never replaces them. Returns the maps given no folder (URI -> why), which are
    failures: that one is taken too, or could not be read, or another map of this run has it. ``threads`` maps at
    a time (on S3 a GET or two each for folders that exist). ``owner``: the run's ``FolderOwners`` of ``output``
    (else one made here)."""
    owner = owner or FolderOwners(storage, output, MEASURE_RECORDS)

    def folder_of(item: tuple[str, tuple[str, str]]) -> tuple[str | None, str | None]:
        uri, (plain, stem) = item
        fallback = hashed_id(uri, stem)
        # earlier names too: the hash of its folder's path (runs before 2026-12-07), a slide folder's name cut at
        # its last dot
        earlier = (stem, fallback, hashed_id(plain, folder_stem(plain)), folder_stem(plain))
        try:
            return item_folder(uri, ids[uri], earlier, fallback, owner, "measure.renamed", log), None
        except FolderTaken as exc:
            return None, f"{uri}: {exc.where(output)}; measure it into another output (--out)"
        except SlideError as exc:
            return None, f"{uri}: {exc}"

    refused, taken = {}, {}
    items = list(_map_names(list(ids)).items())
    for (uri, _), (folder, reason) in zip(items, thread_map(folder_of, items, threads)):
        if folder is not None and taken.setdefault(folder, uri) != uri:  # two maps, one folder: never mixed
            reason = (f"{uri}: its output folder {join_uri(output, folder)}/ is that of {taken[folder]} in this "
                      "run; measure it into another output (--out)")
        if reason:
            refused[uri] = reason
        else:
            ids[uri] = folder
    return refused


def measure_map(labels: LabelMap, spec: MeasureSpec, block: int, tables: ObjectTables | None = None) -> dict:
    """The ``mineralogy.json`` document of an open label map, read and measured a block at a time.

    Raises:
        InputError: a pixel is not a class id of ``spec``, or the map is not one channel of class ids.
    """
    slide = SlideMineralogy(spec, labels.height, labels.width, tables)
    for top in range(0, labels.height, block):
        for left in range(0, labels.width, block):
            region = labels.read(top, left, min(block, labels.height - top), min(block, labels.width - left))
            try:
                measured = measure_block(region, top, left, spec)  # checks every id against the classes
            except ValueError:  # only then the block's largest id is looked for, to name it
                raise InputError(f"{labels.uri}: class id {int(region.max())} in rows {top}-{top + len(region)}, "
                                 f"columns {left}-{left + region.shape[1]}, but only {len(spec.names)} classes are "
                                 f"named ({', '.join(spec.names)})") from None
            slide.add(measured)
    return slide.finish()


@contextmanager
def _as_reference():
    """A reference mask's error says it is the reference's: its file alone read as the map's own fault (a break-it
    pass: "failed: good2: …/rgb.png: not a label map" of a map whose reference was rgb.png)."""
    try:
        yield
    except (InputError, OSError, ValueError) as exc:
        text = str(exc)
        if text.startswith("reference "):
            raise
        raise InputError(f"reference {text}") from None


def against_reference(document: dict, shape: tuple[int, int], reference: str, spec: MeasureSpec, storage: Storage,
                      reference_output: str, block: int = 4096) -> dict:
    """Measure the reference mask of a measured label map the same way, write its document to
    ``reference_output``, and return the ``reference`` entry of the map's document: its URI and the errors of
    every number (``mineralogy.compare``).

    Raises:
        InputError, SlideError: the reference is not a label map of the same size and classes.
    """
    with _as_reference(), open_label_map(reference, storage) as mask:
        if (mask.height, mask.width) != tuple(shape):
            raise InputError(f"reference {reference} is {mask.height}x{mask.width}, the label map "
                             f"{document.get('source', '')} is {shape[0]}x{shape[1]}")
        truth = measure_map(mask, spec, block)
    truth["colours"], truth["source"] = document.get("colours"), reference
    storage.write_json(reference_output, truth, indent=1)
    return {"uri": reference, "document": reference_output.rsplit("/", 1)[-1],
            "errors": compare_mineralogy(document, truth)}


def _names(labels: LabelMap, settings: MeasureSettings) -> list[str]:
    if settings.classes:
        return list(settings.classes)
    if labels.names:
        return labels.names
    raise InputError(f"{labels.uri}: the label map does not name its classes; set measure.classes "
                     "(--classes background,pyrite,...) in class-id order")


def measure_one(uri: str, reference: str | None, output_uri: str, map_id: str, settings: MeasureSettings,
                mineralogy: MineralogySettings, storage: Storage) -> tuple[dict, dict]:
    """Measure one label map (and its reference) into ``output_uri`` (module doc); returns its headline row
    (``slides.csv``) and its ``mineralogy.json`` document.

    Raises:
        InputError, SlideError: the map or its reference cannot be measured (the message says which and why).
    """
    started = time.monotonic()
    final = output_uri
    if storage.exists(join_uri(final, DOCUMENT)):  # measured before: redone beside it, in place once finished
        output_uri = redo_folder(final)
    # no mix with an earlier run's files; the record first: a run stopped while emptying the folder leaves it this
    # map's, never files no record names (``own_folders``)
    storage.write_json(join_uri(output_uri, BEGUN), {"source": uri})
    storage.delete_prefix(output_uri.rstrip("/") + "/", keep=(BEGUN,))
    refuse_missing_chunks(uri, storage)
    if reference:
        with _as_reference():
            refuse_missing_chunks(reference, storage)
    with open_label_map(uri, storage) as labels:
        names = _names(labels, settings)
        try:
            mineralogy.check_class_names(names, owner=uri)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        spec = MeasureSpec(tuple(names), mineralogy, settings.pixel_size_um or labels.pixel_size_um)
        with staged_tables(spec, labels.height, labels.width, storage, output_uri) as tables:
            document = measure_map(labels, spec, settings.block, tables)
        shape, colours = (labels.height, labels.width), labels.colours
    document["colours"] = colours
    document["source"] = uri
    if reference is not None:
        document["reference"] = against_reference(document, shape, reference, spec, storage,
                                                  join_uri(output_uri, REFERENCE_DOCUMENT), settings.block)
    files = {"mineralogy": DOCUMENT}
    if tables_written := document.get("tables"):
        files.update({name: f"{name}.parquet" for name in tables_written["rows"]})
    if reference is not None:
        files["reference"] = REFERENCE_DOCUMENT
    if mineralogy.plots:
        files.update({name.rsplit(".", 1)[0]: name for name in write_plots(document, storage, output_uri, map_id)})
    document["seconds"] = round(time.monotonic() - started, 2)
    document["files"] = files
    storage.write_json(join_uri(output_uri, DOCUMENT), document, indent=1)  # last: done
    storage.delete(join_uri(output_uri, BEGUN))  # the document names the map now (one request, no listing)
    storage.remove_empty_folder(join_uri(output_uri, RECORDS))
    if output_uri != final:
        storage.replace_folder(output_uri, final, (DOCUMENT,))
    log_event(log, "measure.map_done", map=map_id, seconds=document["seconds"], output=final)
    row = {"slide": map_id, "uri": uri, "reference": reference, "height": shape[0], "width": shape[1],
           "seconds": document["seconds"], **headline(document)}
    if reference is not None:
        errors = document["reference"]["errors"]
        row["modal_mae_pp"] = errors["modal"]["mae_pp"]
        row["liberation_mae_pp"] = (errors.get("liberation") or {}).get("mae_pp")
        row["association_misassigned_pp"] = errors["association"]["mean_misassigned_pp"]
    return row, document


def _measure_task(uri, reference, output_uri, map_id, settings, mineralogy, storage) -> dict:
    """Ray task: a map's row, or its failure (bad input is a failure entry, never a crashed job)."""
    try:
        row, document = measure_one(uri, reference, output_uri, map_id, settings, mineralogy, storage)
        return {"row": row, "headline": headline_text(document)}
    except (InputError, SlideError, OSError, ValueError) as exc:
        kept = discard_measurement(output_uri, storage)
        return {"failure": {"slide": map_id, "uri": uri, "reference": reference, "reason": str(exc) + kept}}


def earlier_rows(storage: Storage, output: str, touched: set[str],
                 threads: int = 16) -> list[tuple[dict, dict | None]]:
    """The rows of the earlier run's ``slides.parquet`` in ``output`` for the maps this run did not touch
    (``touched``: measured or failed now), kept as written while each map's folder still holds the measurement
    they describe (its ``mineralogy.json`` names the row's map as its source; ``threads`` reads at a time), each
    with that document (the batch report's: not read twice), None where it cannot be read now. A folder whose
    measurement is gone or another's drops its row (``measure.rows_dropped``); one that cannot be read now (a
    failed request) keeps it. No earlier table (or one that cannot be read: warned): none."""
    import io

    import pyarrow.parquet as pq

    from minseg.io.storage import ObjectNotFoundError, StorageError

    uri = join_uri(output, "slides.parquet")
    try:
        rows = pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()
    except ObjectNotFoundError:
        return []
    except Exception as exc:  # noqa: BLE001 (pyarrow raises many kinds for a damaged file: the earlier rows go)
        log_event(log, "measure.earlier_table_unreadable", logging.WARNING, table=uri, reason=str(exc)[:200],
                  hint="the tables list this run's maps only; measure the earlier ones again to list them")
        return []
    rows = [row for row in rows if isinstance(row.get("slide"), str) and row["slide"] not in touched]

    def still_there(row: dict) -> tuple[bool, dict | None]:
        try:
            document = json.loads(storage.read_text(join_uri(output, row["slide"], DOCUMENT)))
        except ObjectNotFoundError:
            return False, None
        except StorageError:  # not known to be gone: as the earlier run listed it
            return True, None
        except ValueError:
            return False, None
        mine = isinstance(document, dict) and document.get("source") == row.get("uri")
        return mine, document if mine else None

    present = thread_map(still_there, rows, threads)
    if dropped := [row["slide"] for row, (kept, _) in zip(rows, present) if not kept]:
        log_event(log, "measure.rows_dropped", logging.WARNING, maps=",".join(dropped),
                  reason="their folders no longer hold the measurement the earlier tables listed")
    return [(row, document) for row, (kept, document) in zip(rows, present) if kept]


def discard_measurement(output_uri: str, storage: Storage) -> str:
    """What a failed map leaves: nothing partial looks measured, and a measurement an earlier run finished in
    ``output_uri`` stays as it was (its redo folder goes); a new measurement finished but not moved into place (its
    replacement failed half-way) is kept for the next run to move (``Storage.finish_replacements``). Returns what
    the failure adds to say so ('' or a note)."""
    staged, name = redo_folder(output_uri), output_uri.rstrip("/").rsplit("/", 1)[-1]
    if storage.exists(join_uri(output_uri, DOCUMENT)):
        storage.delete_prefix(staged + "/")
        return f" (the measurement an earlier run finished in {name}/ is kept)"
    if storage.exists(join_uri(staged, DOCUMENT)):
        return f" (measured, but not moved into {name}/: the next run into this output moves it)"
    storage.delete_prefix(staged + "/")
    storage.delete_prefix(output_uri.rstrip("/") + "/", last=(BEGUN,))  # the record last: still the map's if cut
    return ""


def check_label_maps(settings: MeasureSettings, pairs: list[tuple[str, str | None]], storage: Storage,
                     classes_source: str = "measure.classes", size_source: str = "measure.pixel_size_um") -> None:
    """What ``measure`` would otherwise measure silently wrong, refused before Ray starts (InputError naming each
    map and why): class names (``settings.classes``) that are empty or repeated, or that disagree with the names
    a map carries; a segmentation OME-Zarr whose segment run has not completed (its ``minseg.status``), a
    map's or reference's; a pixel size read from a map (when ``settings.pixel_size_um`` is not set) that is not
    finite or not square. Maps that cannot be opened are left to the job, which lists them with the reader's
    reason."""
    from concurrent.futures import ThreadPoolExecutor

    if settings.classes and (problem := class_list_problem(settings.classes, any_case=True)):
        raise MeasureInputError(f"{classes_source}: {problem}")
    maps = {uri for uri, _ in pairs}
    files = list(dict.fromkeys(uri for pair in pairs for uri in pair
                               if uri and uri.rstrip("/").lower().endswith((".zarr", ".tif", ".tiff"))))
    with ThreadPoolExecutor(max_workers=16) as pool:  # headers only; I/O-bound on S3
        read = dict(zip(files, pool.map(
            lambda uri: _label_map_problem(uri, uri in maps, settings, storage, classes_source, size_source), files)))
    problems = [problem for problem, _ in read.values() if problem]
    for uri, reference in pairs:  # a reference is compared id by id: its names must be the map's
        map_names = list(settings.classes or read.get(uri, (None, None))[1] or [])
        reference_names = read.get(reference, (None, None))[1] if reference else None
        if map_names and reference_names and (
                difference := class_names_difference(list(reference_names), map_names, "the reference", "the map")):
            problems.append(f"{reference} (the reference of {uri}) names its classes otherwise: {difference} "
                            "(ids are compared as they are: the reference must number its classes as the map does)")
    if len(problems) == 1:
        raise MeasureInputError(f"measure: {problems[0]}")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise MeasureInputError(f"measure: {len(problems)} label maps refused (nothing measured):\n  "
                                + "\n  ".join(shown))


def _label_map_problem(uri: str, is_map: bool, settings, storage, classes_source: str,
                       size_source: str) -> tuple[str | None, tuple[str, ...] | None]:
    """``check_label_maps`` for one file: (what is wrong with it or None, the class names it carries or None).
    None for both when its header cannot be read: the job then lists the map as a failure with the reader's own
    reason."""
    try:
        labels = open_label_map(uri, storage)
    except (SlideError, InputError, OSError, ValueError):
        return None, None
    with labels:
        names = tuple(labels.names) if labels.names else None
        return _opened_map_problem(uri, labels, is_map, settings, storage, classes_source, size_source), names


def _opened_map_problem(uri: str, labels, is_map: bool, settings, storage, classes_source: str,
                        size_source: str) -> str | None:
    """What is wrong with an opened label map or reference (``_label_map_problem``), or None."""
    from minseg.io.ngff import SegmentationArrays

    try:
        zarr = uri.rstrip("/").lower().endswith(".zarr")
        root = SegmentationArrays(uri.rstrip("/"), storage, read_only=True).root if zarr else None  # opened once
        if zarr and (status := _zarr_status(root)) != "complete":
            return (f"{uri}: its segment run has not completed (status {status!r} in zarr.json, not 'complete'): "
                    "an unfinished or failed segmentation; segment the slide again")
        if not is_map:
            return None
        if settings.classes and labels.names and (
                difference := class_names_difference(labels.names, settings.classes, "the map", classes_source)):
            return (f"{uri} names its classes and {classes_source} disagrees: {difference} ({classes_source} is "
                    "for maps that do not name their classes: leave it out)")
        if settings.pixel_size_um is not None:  # given: the file's resolution is not used
            return None
        sizes = _zarr_pixel_sizes(root) if zarr else _tiff_pixel_sizes(uri, storage)
        if sizes and len(sizes) == 2 and abs(sizes[0] - sizes[1]) > ANISOTROPY_TOLERANCE * max(sizes):
            return (f"{uri}: its pixels are not square ({sizes[0]:.6g} µm wide, {sizes[1]:.6g} µm high): "
                    "areas and sizes need square pixels; resample the map to square pixels, or set "
                    f"{size_source} if its resolution is wrong")
    except (InputError, OSError, ValueError, KeyError):  # the reader's own reason comes from the job
        return None
    return None


def _zarr_status(root) -> str | None:
    """segment's ``minseg.status`` of an OME-Zarr (its root group); "complete" for a zarr segment did not write (no
    ``minseg`` attributes: nothing says it is unfinished)."""
    attributes = root.attrs.get("minseg")
    return attributes.get("status") if isinstance(attributes, dict) else "complete"


def refuse_missing_chunks(uri: str, storage: Storage) -> None:
    """Raise MeasureInputError when a segmentation OME-Zarr written with every chunk stored lacks label chunks
    (a partial copy, a deleted file): zarr would read them as class 0 without a word. Run in the map's own task:
    it lists the map's chunks (one listing per thousand on S3)."""
    from minseg.io.ngff import SegmentationArrays

    if not uri.rstrip("/").lower().endswith(".zarr"):
        return
    counts = SegmentationArrays(uri.rstrip("/"), storage, read_only=True).missing_chunks()
    if counts and counts[0]:
        raise MeasureInputError(f"{uri}: {counts[0]} of its {counts[1]} label chunks are missing (zarr would read "
                                "them as class 0): a damaged or partly copied map; copy it again or segment the "
                                "slide again")


def _zarr_pixel_sizes(root) -> tuple[float, float] | None:
    """(x, y) scale of level 0 of ``labels/classes`` of an OME-Zarr (its root group), or None."""
    try:
        scale = root["labels/classes"].attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0][
            "scale"]
        return float(scale[-1]), float(scale[-2])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _tiff_pixel_sizes(uri: str, storage) -> tuple[float, float] | None:
    """(x, y) µm of a TIFF's first page from its resolution tags (``io.slides.resolution_sizes_um``), or None."""
    import tifffile

    with storage.open_read(uri) as stream, tifffile.TiffFile(stream) as tiff:
        return None if tiff.is_svs else resolution_sizes_um(tiff.pages[0])


def measure_label_maps(config: MinsegConfig, sources: dict[str, str] | None = None) -> MeasureResult:
    """The measure job (module doc). ``sources``: where ``classes`` and ``pixel_size_um`` came from, for messages
    (the CLI's flags; default: the config keys).

    Raises:
        MeasureInputError: nothing to measure; a map ``check_label_maps`` refuses.
    """
    import ray

    settings = config.measure or MeasureSettings()
    storage = Storage(config.storage)
    output = settings.output(config.run.uri)
    refuse_other_command_outputs(output, "measure", "measure.output_uri", storage)  # Python callers too
    if finish_run_tables(storage, output, "measure"):  # an earlier run's, cut short while put in place
        log_event(log, "measure.earlier_tables_put_in_place", output=output)
    # new measurements an earlier run finished but did not finish moving into place: moved now
    for moved in storage.finish_replacements(output, DOCUMENT, (DOCUMENT,)):
        log_event(log, "measure.redo_moved", map=moved, output=join_uri(output, moved))
    owner = FolderOwners(storage, output, MEASURE_RECORDS)  # the output's folders: listed and read once a run
    pairs = resolve_label_maps(settings, storage, output, owner)
    sources = sources or {}
    check_label_maps(settings, pairs, storage, sources.get("classes", "measure.classes"),
                     sources.get("pixel_size_um", "measure.pixel_size_um"))
    started = time.monotonic()
    result = MeasureResult(output)
    ids = map_ids([uri for uri, _ in pairs])
    for uri, reason in own_folders(ids, output, storage, owner=owner).items():
        result.failed.append({"slide": ids[uri], "uri": uri, "reference": dict(pairs)[uri], "reason": reason})
        log_event(log, "measure.map_failed", logging.WARNING, map=ids[uri], reason=reason)
    pairs = [(uri, reference) for uri, reference in pairs if uri not in {f["uri"] for f in result.failed}]
    # each map's folder is emptied first: it must not hold what this run measures (any map's, any reference)
    inside = input_in_item_folders([u for pair in pairs for u in pair if u], output, [ids[uri] for uri, _ in pairs],
                                   "a map this run measures", owner)
    if inside:
        raise MeasureInputError(f"measure: {inside}")
    if pairs:  # not for a run whose every map was refused before any work
        init_ray(config.ray, job_paths([u for pair in pairs for u in pair if u], [output]))
    task = ray.remote(_measure_task).options(num_cpus=settings.cpus_per_task, max_retries=1,
                                             **task_options(config.storage))
    pending = {task.remote(uri, reference, join_uri(output, ids[uri]), ids[uri], settings, config.mineralogy,
                           storage): (uri, reference) for uri, reference in pairs}
    while pending:  # one at a time: a map whose task dies (out of memory, a bug) is a failure entry too
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        uri, reference = pending.pop(ready)
        try:
            outcome = ray.get(ready)
        except ray.exceptions.RayError as exc:
            kept = discard_measurement(join_uri(output, ids[uri]), storage)
            reason = str(getattr(exc, "cause", None) or exc).strip().splitlines()[-1]
            outcome = {"failure": {"slide": ids[uri], "uri": uri, "reference": reference,
                                   "reason": f"the task failed: {type(exc).__name__}: {reason}{kept}"}}
        if "row" in outcome:
            result.done.append(outcome["row"])
            result.headlines[outcome["row"]["slide"]] = outcome["headline"]
        else:
            result.failed.append(outcome["failure"])
            log_event(log, "measure.map_failed", logging.WARNING, map=outcome["failure"]["slide"],
                      reason=outcome["failure"]["reason"])
    result.seconds = round(time.monotonic() - started, 2)
    result.done.sort(key=lambda row: row["slide"])
    # the tables of every map measured under the output, as segment's list every complete slide: this run's rows,
    # and an earlier run's of maps this run did not touch while their folders hold those measurements (a second
    # batch, or a run whose every map failed, no longer leaves the first batch out of the tables and report);
    # staged whole and put in place together, the summary last (it also marks the folder as measure's)
    touched = {row["slide"] for row in result.done} | {failure["slide"] for failure in result.failed}
    kept = earlier_rows(storage, output, touched)
    read = {row["slide"]: document for row, document in kept if document is not None}
    merged = sorted([row for row, _ in kept] + result.done, key=lambda row: row["slide"])
    result.maps = [row["slide"] for row in merged]
    staged = start_run_tables(storage, output, "measure")
    listed = touched | set(result.maps)
    earlier_failures = [failure for failure in (read_earlier_json(storage, join_uri(output, "failures.json")) or [])
                        if isinstance(failure, dict) and failure.get("slide") not in listed]
    storage.write_json(join_uri(staged, "failures.json"), earlier_failures + result.failed)
    write_slide_tables(merged, storage, staged, MEASURE_COLUMNS)  # empty only when no map is measured there
    if merged:
        result.report_error = stage_batch_report(storage, staged, lambda: {
            row["slide"]: read.get(row["slide"]) or json.loads(storage.read_text(join_uri(output, row["slide"],
                                                                                          DOCUMENT)))
            for row in merged}, settings.name, "measure")
    publish_run_tables(storage, output, "measure", {
        "command": "measure", "output": output, "seconds": result.seconds,
        "done": [row["slide"] for row in result.done], "failed": [failure["slide"] for failure in result.failed],
        "maps": result.maps, **({"report_error": result.report_error} if result.report_error else {})},
        list(RUN_FILES))  # last: it removes the emptied redo folder too
    log_event(log, "measure.done", output=output, done=len(result.done), failed=len(result.failed),
              seconds=result.seconds)
    return result
