"""Member checkpoints in the run's storage (local or s3://).

Layout under ``<run>/members/<member>/checkpoints/``::

    epoch-0003/model.pt        weights (state dict, fp32)
    epoch-0003/optimizer.pt    optimizer state (to resume mid-stage)
    epoch-0003/state.json      stage, epoch, step, history, best so far
    epoch-0003/member.json     the member's resolved config
    epoch-0003/classes.json    the class map
    epoch-0003/metrics.json    metrics at this epoch (+ normalisation)
    last.json                  {"dir": "epoch-0003", ...}  written last: the switch
    best.json                  {"dir": "epoch-0002", "metric": ..., "value": ...}

A checkpoint directory is complete before a pointer names it, and each pointer is
one atomic write, so a crash never leaves a half-written checkpoint in use.
Directories no pointer names are removed after each switch.
"""

from __future__ import annotations

import copy
import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from minseg.errors import InputError
from minseg.io.runs import checkpoints_uri, read_pointer
from minseg.io.storage import ObjectNotFoundError, Storage, join_uri
from minseg.io.tensors import load_tensor_file


def _save_tensor_dict(storage: Storage, uri: str, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(uri, buffer.getvalue())


def load_tensor_dict(storage: Storage, uri: str) -> dict:
    """A checkpoint's tensors (``model.pt``, ``optimizer.pt``).

    Raises:
        ObjectNotFoundError, StorageError: as ``Storage.read_bytes``.
        InputError: the file is damaged (empty, cut short: a full disk, a killed copy), naming it."""
    return load_tensor_file(storage.read_bytes(uri), uri, "checkpoint file", InputError,
                            "a damaged or half-written file: restore it, or delete the member's folder and train it "
                            "again")


def write_checkpoint(
    storage: Storage,
    run_uri: str,
    member: str,
    epoch_tag: str,
    model_state: dict,
    optimizer_state: dict | None,
    state: dict,
    member_config: dict,
    classes: dict,
    metrics: dict,
    is_best: bool,
) -> str:
    """Write a complete checkpoint directory, then switch ``last`` (and ``best``) to it."""
    root = checkpoints_uri(run_uri, member)
    directory = join_uri(root, epoch_tag)
    _save_tensor_dict(storage, join_uri(directory, "model.pt"), model_state)
    if optimizer_state is not None:
        _save_tensor_dict(storage, join_uri(directory, "optimizer.pt"), optimizer_state)
    for name, document in (("state.json", state), ("member.json", member_config), ("classes.json", classes),
                           ("metrics.json", metrics)):
        storage.write_json(join_uri(directory, name), document)
    pointer = {"dir": epoch_tag, "uri": directory, "epoch": state.get("epochs_done"), "metrics": metrics}
    if is_best:
        storage.write_json(join_uri(root, "best.json"), pointer)
    storage.write_json(join_uri(root, "last.json"), pointer)
    _remove_unreferenced(storage, root)
    return directory


def host_copy(value):
    """``value`` (dicts, lists and tuples of tensors and plain values: a state dict, an optimizer's) copied into host
    memory, out of reach of later in-place updates of the originals (on CPU ``.cpu()`` would return them as they are)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: host_copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(host_copy(item) for item in value)
    return copy.deepcopy(value)


class CheckpointWriter:
    """Rank 0's checkpoint writes, in one background thread, so that its workers' next epoch does not wait on storage
    (with DDP, every worker waits for rank 0 at the first gradient all-reduce).

    ``submit`` copies the epoch's weights, optimizer state and documents into host memory at once (training goes on
    changing them in place), then serialises and writes them (``write_checkpoint``) while the next epoch trains.
    Writes keep their order: a new one waits for the last. A write that failed is raised by the next ``submit`` or by
    ``wait``, which a member calls before it reads a checkpoint back and before it ends."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, storage: Storage, run_uri: str, member: str, epoch_tag: str, model_state: dict,
               optimizer_state: dict | None, state: dict, member_config: dict, classes: dict, metrics: dict,
               is_best: bool) -> None:
        """``write_checkpoint`` of host copies of these, in the background. Raises what the previous write raised."""
        self.wait()
        snapshot = host_copy((model_state, optimizer_state, state, member_config, classes, metrics))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minseg-checkpoint")
        self._pending = self._pool.submit(write_checkpoint, storage, run_uri, member, epoch_tag, *snapshot, is_best)

    def wait(self) -> None:
        """Until the last write is done. Raises what it raised (a StorageError, ...)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


def write_state(storage: Storage, run_uri: str, member: str, state: dict) -> None:
    """Rewrite ``state.json`` of the member's last checkpoint (results added after training, e.g. test metrics)."""
    pointer = read_pointer(storage, run_uri, member, "last")
    if pointer is None:
        raise ObjectNotFoundError(f"member {member!r} has no checkpoint in {run_uri}")
    storage.write_json(join_uri(pointer["uri"], "state.json"), state)


@dataclass
class Checkpoint:
    """A checkpoint read back: weights, optimizer state (None at a stage's end), the loop's state
    (stage, epoch, step, history, best so far) and the directory it came from."""

    model: dict
    optimizer: dict | None
    state: dict
    uri: str


def load_checkpoint(storage: Storage, run_uri: str, member: str, which: str = "last") -> Checkpoint | None:
    """The latest (or best) checkpoint of a member, or None when it has none."""
    pointer = read_pointer(storage, run_uri, member, which)
    if pointer is None:
        return None
    directory = pointer["uri"]
    optimizer_uri = join_uri(directory, "optimizer.pt")
    return Checkpoint(
        model=load_tensor_dict(storage, join_uri(directory, "model.pt")),
        optimizer=load_tensor_dict(storage, optimizer_uri) if storage.exists(optimizer_uri) else None,
        state=storage.read_json(join_uri(directory, "state.json")),
        uri=directory,
    )


def _remove_unreferenced(storage: Storage, root: str) -> None:
    keep = set()
    for which in ("last", "best"):
        try:
            keep.add(storage.read_json(join_uri(root, f"{which}.json"))["dir"])
        except ObjectNotFoundError:
            pass
    prefix = root.rstrip("/") + "/"
    stale = {info.uri[len(prefix):].split("/", 1)[0] for info in storage.list(prefix) if "/" in info.uri[len(prefix):]}
    for directory in sorted(stale - keep):
        storage.delete_prefix(join_uri(root, directory) + "/")
