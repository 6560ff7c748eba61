"""Item folders: one folder, one source, ever (``segment``'s slides and ``measure``'s label maps).

An output holds a folder per item (``<out>/<slide>/``). Its name is the source's file name; names that collide in
a run (also in case only: one folder on macOS and Windows) or that the run's own files use get a hash of the source's
URI. A folder belongs to the source its record names (segment: ``summary.json`` / ``.minseg/plan.json``; measure:
``mineralogy.json`` / ``.minseg/measuring.json``); a source keeps the folder a run gave it before, and a folder
holding another source's outputs, or files no record names, is never written over (``item_folder``).
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
import zlib
from collections import Counter
from typing import Callable

from minseg.config.base import not_portable
from minseg.inference.outputs import RESERVED_NAMES, RUN_FILES
from minseg.io.slides import SlideError
from minseg.io.storage import (REDO, ObjectNotFoundError, Storage, StorageError, dangling_link, is_s3, join_uri,
                               parse_uri, resolved_uri)
from minseg.logs import log_event

#: the owner of a folder holding files no readable record names (another program's, a record damaged by hand)
UNRECORDED = "an unknown source (files no readable minseg record names: kept as they are)"


def folder_ids(stems: dict[str, str]) -> dict[str, str]:
    """A folder name per source (URI -> its plain name, ``stems``): the plain name, or :func:`hashed_id` where
    plain names collide in the run, a name is one the run's own outputs use, or one Windows cannot take."""
    # names that differ only in case collide (one folder on macOS and Windows); a name the run's own files use
    # (its tables, the batch report's folder, a command's marker) is taken like a collision, and so is one Windows
    # cannot take (CON, aux.2, a trailing dot: outputs are copied to Windows laptops; a folder an earlier run gave
    # such a name stays its source's, ``item_folder``)
    counts = Counter(stem.casefold() for stem in stems.values())  # casefold: ΟΔΟΣ and οδος are one folder too
    return {uri: stem if counts[stem.casefold()] == 1 and not reserved(stem) and not not_portable(stem)
            else hashed_id(uri, stem)
            for uri, stem in stems.items()}


def reserved(stem: str) -> bool:
    """Whether an item folder of that name would be one of the run's own files (``RESERVED_NAMES``)."""
    return stem.lower() in RESERVED_NAMES


def folder_stem(uri: str, strip_extension: bool = True) -> str:
    """An item's plain folder name: its file name (without the extension, unless ``strip_extension`` is False: a
    folder's name), in Unicode NFC (one form on Linux, macOS and S3), letters, digits and combining marks of any
    script kept (``Шлиф-12``, ``薄片7``, ``कि12``), any other character but ``.``, ``_`` and ``-`` replaced by ``_``
    (spaces, ``:``, format marks a folder name cannot safely hold). Runs before 2026-12-08 kept ASCII letters and
    digits only: ``ascii_form``."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name and strip_extension else name
    # no hidden folder: listings and globs of the output would pass it by (and `.minseg-redo` is the run's own)
    # letters (L), marks (M: the vowel signs of Devanagari, accents NFC could not compose) and digits (N) of any
    # script; `\w` would drop the marks
    kept = "".join(c if c in "._-" or unicodedata.category(c)[0] in "LMN" else "_"
                   for c in unicodedata.normalize("NFC", stem))
    return kept.lstrip(".") or "slide"


def ascii_form(name: str) -> str:
    """The name runs before 2026-12-08 gave an item whose folder is now ``name`` (``folder_stem`` or its hashed
    form): every character but ASCII letters, digits, ``.``, ``_`` and ``-`` as ``_`` (``Шлиф-12`` was ``____-12``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def earlier_forms(name: str) -> tuple[str, ...]:
    """``name`` and the names runs before 2026-12-08 gave its item (``ascii_form``): of its NFC form, and of its
    decomposed form (they did not normalize: a macOS file name ``Hématite`` came as ``He`` + accent, ``He_matite``)."""
    return (name, ascii_form(name), ascii_form(unicodedata.normalize("NFD", name)))


def hashed_id(uri: str, name: str | None = None) -> str:
    """The folder name of an item whose name another has too (scanners name every case's file ``Slide1.svs``):
    the stem (or ``name``) and a hash of the whole URI; ``_`` before a stem Windows would still read as a device
    (``aux.2-1a2b3c4d`` is ``aux``: ``_aux.2-1a2b3c4d``)."""
    hashed = f"{name or folder_stem(uri)}-{zlib.crc32(uri.encode()):08x}"
    return f"_{hashed}" if not_portable(hashed) else hashed


class FolderTaken(SlideError):
    """A source's folder, and its fallback, hold other sources' outputs: ``taken`` is ``[(folder, owner)]``, the
    folder first, then its fallback."""

    def __init__(self, taken: list[tuple[str, str]]):
        self.taken = taken
        super().__init__(self.where(None))

    def where(self, output: str | None) -> str:
        """``its output folder <output>/<folder>/ holds the outputs of <owner>[, and <fallback>/ those of ...]``."""
        def path(folder: str) -> str:
            return join_uri(output, folder) if output else folder

        (folder, owner), *rest = self.taken
        return (f"its output folder {path(folder)}/ holds the outputs of {owner}"
                + "".join(f", and {path(other)}/ those of {whose}" for other, whose in rest))


def item_folder(source: str, name: str, earlier: tuple[str, ...], fallback: str,
                owner: Callable[[str], str | None], event: str, logger: logging.Logger) -> str:
    """The output folder of one source (a slide, segment's; a label map, measure's): a folder holds one source's
    outputs, ever, and a source keeps the folder a run gave it before.

    Args:
        source: the source's URI, as ``owner`` returns it for a folder holding its outputs.
        name: this run's name for it (``folder_ids``: plain, or hashed where names collide in this run).
        earlier: the other names a run may have given it (its plain name, its hashed names); a reserved plain name
            (``RESERVED_NAMES``) is never one. Each of these and ``name`` is also looked for in its ``ascii_form``.
        fallback: its name when ``name`` holds another source's outputs (an earlier run's).
        owner: the source whose outputs a folder (by name) holds (``FolderOwners``); None when it holds no file;
            ``UNRECORDED`` for files no record names: taken, never written over. Called once a name.
        event: the event ``logger`` logs on a move to ``fallback`` (``segment.renamed``).

    Returns:
        The first of ``name``, ``earlier`` holding this source's outputs; else ``name`` when it holds none; else
        ``fallback`` when it holds none.

    Raises:
        FolderTaken: ``name`` and ``fallback`` both hold other sources' outputs.
        SlideError: a record could not be read (``FolderOwners``).
    """
    owners: dict[str, str | None] = {}

    def owner_of(folder: str) -> str | None:
        if folder not in owners:
            owners[folder] = owner(folder)
        return owners[folder]

    # each name also as a run before 2026-12-08 gave it (``ascii_form``): those folders stay their sources'
    for candidate in dict.fromkeys(n for known in (name, *earlier) for n in earlier_forms(known)):
        if candidate and not reserved(candidate) and owner_of(candidate) == source:
            return candidate
    if owner_of(name) is None:
        return name
    if fallback == name or owner_of(fallback) is not None:
        raise FolderTaken([(folder, str(owner_of(folder))) for folder in dict.fromkeys((name, fallback))])
    log_event(logger, event, logging.WARNING, source=source, folder=fallback,
              reason=f"{name}/ holds the outputs of {owner_of(name)}",
              hint="the outputs go to the folder named; the other is left as it is")
    return fallback


class FolderOwners:
    """``owner`` for ``item_folder``: the source an item folder (by name) in ``output`` holds the outputs of, read
    from the first of its ``records`` (file, key: dotted into nested objects) naming one (a finished item's, then a
    begun one's); None when it holds no file; ``UNRECORDED`` when it holds files no readable record names. The
    records read are kept (``document``): the run reads each once.

    One listing of ``output``'s folders first: a name absent from it (in any case) costs no request, a present one a
    GET per record read until one names a source (up to three; a LIST where none does). A name absent from the
    output but differing only in case from a folder there reads as that folder: on macOS and Windows the two are
    one, and copied there from a case-sensitive store (Linux, S3) they would merge (the owner then says so). A local
    name that is a link to nothing is taken too (writing there would fail).

    Raises (from a call):
        SlideError: a record or listing could not be read (a failed request): neither free nor another's."""

    def __init__(self, storage: Storage, output: str, records: tuple[tuple[str, str], ...]):
        self.storage, self.output, self.records = storage, output, records
        present = storage.folder_names(output)
        self._exact, self._by_case = set(present), {name.casefold(): name for name in present}
        self._read: dict[str, object] = {}  # record URI -> its document (None: missing or damaged)

    def __call__(self, name: str) -> str | None:
        actual = name if name in self._exact else self._by_case.get(name.casefold())
        if actual is None:
            path = parse_uri(join_uri(self.output, name)).path
            if not is_s3(self.output) and dangling_link(path) == path:  # not a folder to write in
                return f"nothing: a link to {os.readlink(path)}, which does not exist (kept as it is)"
            return None
        found = self._recorded(join_uri(self.output, actual))
        if actual == name or found is None:
            return found
        return f"{found} (as {actual}/: one folder with it on macOS and Windows)"  # never the source's own name

    def document(self, uri: str):
        """The JSON document at ``uri``, a record file in an item folder (``<output>/<name>/summary.json``): None
        when it is missing or not JSON. As read when its folder's owner was looked up, else read now; none is read
        in a folder the listing did not find.

        Raises:
            StorageError: it could not be read (a failed request)."""
        if uri not in self._read:
            folder = uri[len(self.output.rstrip("/")) + 1:].split("/", 1)[0] if uri.startswith(self.output) else None
            self._read[uri] = None if folder is not None and folder not in self._exact else self._load(uri)
        return self._read[uri]

    def _load(self, uri: str):
        try:
            return self.storage.read_json(uri)
        except (ObjectNotFoundError, ValueError):  # none, or damaged (InputError is a ValueError)
            return None

    def _recorded(self, folder: str) -> str | None:
        try:
            for record, key in self.records:
                value = self.document(join_uri(folder, record))
                for part in key.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                if value:
                    return str(value)
            return UNRECORDED if self.storage.holds_files(folder) else None
        except StorageError as exc:
            raise SlideError(f"{folder}: could not be read to tell whose outputs it holds ({exc}); run again") from exc


def outside_output(matches: list[str], output: str, pattern: str, event: str, log, storage: Storage,
                   records: tuple[tuple[str, str], ...], marker: str,
                   owner: FolderOwners | None = None) -> list[str]:
    """A glob's ``matches`` less the run's own outputs under ``output`` (previews, plots, label maps an earlier
    run wrote there are never inputs of a pattern over a tree holding it: ``'in/**/*.png'`` with ``--out in/seg``):
    those in an item folder one of ``records`` names a source for (``FolderOwners``), in the batch report folder
    and tables when ``output`` holds the command's ``marker``, or in ``.minseg-redo``. An output that is a parent
    of the inputs keeps them (``--out proj`` over ``proj/slides/*.tif``); a literal path is never passed here.
    Said once (``event``) with how many and where. ``owner``: the run's ``FolderOwners`` of ``output`` (its
    listing and records read once a run), else one made here when a match lies under the output."""
    base = resolved_uri(output).rstrip("/") + "/"
    resolved = {uri: resolved_uri(uri) for uri in matches}  # a realpath each (links followed): once
    under = {uri: path[len(base):].split("/", 1) for uri, path in resolved.items() if path.startswith(base)}
    if not under:
        return matches
    owner = owner or FolderOwners(storage, output, records)
    marked = storage.exists(join_uri(output, marker))
    ours: dict[str, bool] = {}

    def run_s(folder: str) -> bool:
        if folder not in ours:
            ours[folder] = folder == REDO or (marked and folder in RUN_FILES) or \
                owner(folder) not in (None, UNRECORDED)
        return ours[folder]

    left_out = [uri for uri, parts in under.items() if len(parts) == 2 and run_s(parts[0])]
    if left_out:
        log_event(log, event, pattern=pattern, left_out=len(left_out), output=output, example=left_out[0],
                  reason="they lie in folders of an earlier run into the output (--out: a slide's, the report's), "
                         "never inputs of a glob; a file of yours belongs outside them")
    dropped = set(left_out)
    return [uri for uri in matches if uri not in dropped]


def matched_in_output(found: list[str], output: str) -> str:
    """What a glob's "matched none" message adds when every match lay among the run's outputs (``outside_output``
    left them all out)."""
    return f" outside the output folder {output} (all {len(found)} lie in it)" if found else ""


def input_in_item_folders(inputs: list[str], output: str, folders: list[str], item: str,
                          owner: Callable[[str], str | None] | None = None) -> str | None:
    """Why the run must not start, or None: one of ``inputs`` (slides, label maps, references) lies in one of the
    item folders ``folders`` (names) the run writes in ``output`` (of ``item``: "a slide this run segments"), or in
    what every run replaces there (its report folder, its staging folder), or (``owner``: ``FolderOwners``) in any
    item folder of an earlier run there (an output of it: ``b/preview.png``, rewritten when ``b`` is redone). An
    item folder is emptied before it is written and a redo replaces it whole, which would delete the input before
    it is read. Local paths are compared resolved: a link to the output (or from it) is the same folder."""
    base = resolved_uri(output).rstrip("/") + "/"
    names, replaced = set(folders), {*RUN_FILES, REDO}
    for uri in inputs:
        path = resolved_uri(uri)
        parts = path[len(base):].split("/", 1) if path.startswith(base) else None
        folder = parts[0] if parts else None
        if folder in names or folder in replaced:
            what = f"the output folder of {item}" if folder in names else "which every run into it replaces"
            return (f"{uri} lies in {join_uri(output, folder)}/, {what} (emptied before it is written): write to "
                    "another folder (--out)")
        if owner is not None and parts and len(parts) == 2 and (source := owner(folder)) not in (None, UNRECORDED):
            return (f"{uri} lies in {join_uri(output, folder)}/, the output folder of {source} (replaced whole when "
                    "that is redone): an earlier run's output is no input; give a file outside it")
    return None
