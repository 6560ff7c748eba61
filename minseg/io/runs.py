"""Where a training run keeps its members' checkpoints: the layout ``minseg.train.checkpoint`` writes and
evaluation, analysis and prospectivity read.

::

    <run>/members/<member>/checkpoints/epoch-0003/    one checkpoint (weights, state, member and class records)
    <run>/members/<member>/checkpoints/last.json      {"dir": "epoch-0003", ...}: the latest, switched atomically
    <run>/members/<member>/checkpoints/best.json      the epoch the member's checkpoint_metric kept
    <run>/fold<k>/members/...                          a k-fold trial's members (``data.split.folds``)

Records hold absolute URIs of where a run was written (``last.json``'s ``uri``, ``members.json``'s checkpoints);
readers find a checkpoint by its directory name under the run they are given, so a run folder that was copied or
moved (cluster storage to a laptop, one name to another) reads its own weights, not those left at the old place.
A job that writes a run in one place to publish it in another (the prospectivity job's staging folder) makes the
records name the published place (``relocate_records``).
"""

from __future__ import annotations

import csv
import io

from minseg.enums import MemberCheckpoint, MemberStatus
from minseg.errors import InputError
from minseg.io.storage import ObjectNotFoundError, Storage, join_uri
from minseg.io.tables import csv_text

#: the documents of a run that record checkpoint URIs: the members tables, each member's result, the pointers
RECORDS = ("members.json", "members.csv", "result.json", "last.json", "best.json")


def trial_uri(run_uri: str, fold: int | None) -> str:
    """Where a trial writes: the run itself, or its fold's folder (``fold1``, ...)."""
    return run_uri if fold is None else join_uri(run_uri, f"fold{fold + 1}")


def member_uri(run_uri: str, member: str) -> str:
    return join_uri(run_uri, "members", member)


def checkpoints_uri(run_uri: str, member: str) -> str:
    return join_uri(member_uri(run_uri, member), "checkpoints")


def read_members_table(storage: Storage, run_uri: str) -> list[dict] | None:
    """The rows of a run's ``members.json`` (each a dict with ``member`` and ``status``), or None when the run has
    none. ``fold`` is counted from 0 here, as ``MemberResult.fold`` and ``trial_uri`` count it (the file numbers
    folds from 1, as the console table and the ``fold<k>`` folders do).

    Raises:
        InputError: the file is not JSON or not a members table (e.g. another command's record written over it),
            naming it."""
    uri = join_uri(run_uri, "members.json")
    try:
        document = storage.read_json(uri)
    except ObjectNotFoundError:
        return None
    rows = document.get("members") if isinstance(document, dict) else None
    statuses = {str(status) for status in MemberStatus}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("member"), str)
                                             and isinstance(r.get("model"), str) and r.get("status") in statuses
                                             for r in rows):
        raise InputError(f"{uri}: not a members table (a 'members' list of rows with member, model and status): a "
                         "damaged or replaced file; 'minseg train --resume' with the run's config writes it again")
    return [{**row, "fold": row["fold"] - 1} if isinstance(row.get("fold"), int) else row for row in rows]


def read_pointer(storage: Storage, run_uri: str, member: str, which: str = "last") -> dict | None:
    """A member's ``last`` or ``best`` pointer, its ``uri`` the checkpoint directory under ``run_uri`` (wherever
    the run was written); None when the member has none.

    Raises:
        InputError: the pointer is damaged (not JSON, or no ``dir``), naming the file."""
    uri = join_uri(checkpoints_uri(run_uri, member), f"{which}.json")
    try:
        pointer = storage.read_json(uri)
    except ObjectNotFoundError:
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("dir"), str) or "/" in pointer["dir"]:
        raise InputError(f"{uri}: not a checkpoint pointer (no 'dir' naming a checkpoint folder); a damaged file: "
                         "delete the member's folder and train it again")
    return {**pointer, "uri": join_uri(checkpoints_uri(run_uri, member), pointer["dir"])}


def recorded_checkpoint(storage: Storage, run_uri: str, row: dict, which: MemberCheckpoint) -> str | None:
    """The checkpoint directory a ``members.json`` row stands for, found under ``run_uri``: ``best`` (the last for
    a member trained without validation) or ``last``; None when the member has none."""
    trial = trial_uri(run_uri, row.get("fold"))
    if which is MemberCheckpoint.LAST:
        pointer = read_pointer(storage, trial, row["member"], "last")
    else:
        pointer = read_pointer(storage, trial, row["member"], "best") or read_pointer(storage, trial, row["member"])
    return pointer["uri"] if pointer else None


def relocated(value, old: str, new: str):
    """``value`` (a URI, or dicts and lists holding URIs) with every string that lies under ``old`` moved under
    ``new``; other values as they are."""
    old, new = old.rstrip("/"), new.rstrip("/")
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    if isinstance(value, dict):
        return {key: relocated(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [relocated(item, old, new) for item in value]
    return value


def relocate_records(storage: Storage, run_uri: str, old: str, new: str) -> int:
    """Rewrite the URIs the run at ``run_uri`` records (``RECORDS``, under any trial and member) that lie under
    ``old`` to the same paths under ``new``: before the run is moved from ``old`` to ``new``. Other values are kept
    as they are (CSV cells as text). Returns the number of documents rewritten.

    Raises:
        StorageError: a listing, read or write failed."""
    rewritten = 0
    for info in list(storage.list(run_uri.rstrip("/") + "/")):
        name = info.uri.rsplit("/", 1)[-1]
        if name not in RECORDS:
            continue
        if name.endswith(".csv"):
            reader = csv.DictReader(io.StringIO(storage.read_text(info.uri)))
            rows = list(reader)
            after = [relocated(row, old, new) for row in rows]
            if after != rows:
                storage.write_text(info.uri, csv_text(after, list(reader.fieldnames or [])))
                rewritten += 1
        elif (document := storage.read_json(info.uri)) != (after := relocated(document, old, new)):
            storage.write_json(info.uri, after)
            rewritten += 1
    return rewritten
