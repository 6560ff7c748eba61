"""Kernel-weight histograms of trained members: the microplastic paper's way of choosing a
network (§4.5-4.6).

The paper trains U-Net, Half U-Net and the MultiResUNet family, then compares per-layer
histograms of the trained convolution kernels: layers whose weights pile up around zero
contribute little and can be thinned or dropped. ``analyze_kernels`` does that for any
trained members:

- per convolution layer (``Conv1d/2d/3d`` and transposed ones, in forward-definition
  order): parameter count, mean, standard deviation, mean |w|, max |w|, the share of
  weights with |w| below ``near_zero`` (absolute) and below ``relative`` x the layer's
  max |w|, excess kurtosis (a spike at zero with long tails is strongly positive);
- ``kernels.csv`` with one row per member and layer;
- ``<member>_kernels.png``: one histogram per layer (shared bin edges per layer);
- ``kernels_overview.png``: mean |w| and near-zero share per layer depth, members overlaid.

Sources: a training run (its finished members' best checkpoints, from ``members.json``), an
ensemble manifest (its members), or checkpoint directories (``model.pt`` + ``member.json``
+ ``classes.json``, as training writes them). Local paths or ``s3://``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from minseg.enums import MemberCheckpoint
from minseg.errors import InputError
from minseg.io.runs import read_members_table, recorded_checkpoint
from minseg.io.storage import (ObjectNotFoundError, Storage, absolute_uri, file_stem, join_uri,
                               refuse_other_command_outputs)
from minseg.io.tables import csv_text
from minseg.logs import get_logger, log_event

log = get_logger("analysis")

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
COLUMNS = ["member", "model", "depth", "layer", "kind", "shape", "parameters", "mean", "std", "mean_abs", "max_abs",
           "share_near_zero", "share_relative_small", "excess_kurtosis"]


MAX_BINS = 1000  # a histogram panel is ~200 pixels wide; NumPy refuses far more bins than a layer's range holds


class KernelSourceError(InputError):
    """A source that holds no trained member; the message names it."""


@dataclass(frozen=True)
class TrainedMember:
    """A member to analyse: its name, learner, options and checkpoint directory."""

    name: str
    model: str
    model_options: dict
    checkpoint: str


def discover(sources: list[str], storage: Storage) -> list[TrainedMember]:
    """The members behind each source (a run, a manifest, or a checkpoint directory), in order.

    Raises:
        KernelSourceError: a source is none of these, or a run has no finished member.
    """
    members: list[TrainedMember] = []
    for source in sources:
        if source.endswith(".json"):
            members += _from_manifest(source, storage)
        elif storage.exists(join_uri(source, "members.json")):
            members += _from_run(source, storage)
        elif storage.exists(join_uri(source, "model.pt")):
            members.append(_from_checkpoint(source, storage))
        elif source.rstrip("/").rsplit("/", 1)[-1] == "model.pt" and storage.exists(source):
            raise KernelSourceError(f"{source}: give the checkpoint directory that holds it "
                                    f"({absolute_uri(source).rstrip('/').rsplit('/', 1)[0]}), with its member.json")
        elif not storage.exists(source) and not storage.is_folder(source):
            raise KernelSourceError(f"{source}: no such file or folder")
        else:
            raise KernelSourceError(f"{source}: not a training run (members.json), an ensemble manifest (.json) or a "
                                    "checkpoint directory (model.pt + member.json)")
    once: dict[str, TrainedMember] = {}
    for m in members:  # a checkpoint reached twice (a run and one of its members, a source given twice): once
        key = absolute_uri(m.checkpoint).rstrip("/")
        if key in once:
            log_event(log, "kernels.member_given_twice", member=m.name, checkpoint=m.checkpoint,
                      hint=f"analysed once, as {once[key].name}")
        once.setdefault(key, m)
    members = list(once.values())
    names = [m.name for m in members]
    repeated = {n for n in names if names.count(n) > 1}
    seen: dict[str, int] = {}
    unique = []
    for m in members:  # two sources may share member names: number them in order
        if m.name in repeated:
            seen[m.name] = seen.get(m.name, 0) + 1
            m = TrainedMember(f"{m.name}-{seen[m.name]}", m.model, m.model_options, m.checkpoint)
        unique.append(m)
    return unique


def _from_checkpoint(directory: str, storage: Storage, name: str | None = None) -> TrainedMember:
    uri = join_uri(directory, "member.json")
    try:
        member = json.loads(storage.read_text(uri))
        name = name or member.get("name") or directory.rstrip("/").split("/")[-1]
        if not (isinstance(name, str) and name.isprintable()):  # it titles a figure and names its file
            raise ValueError(f"name {name!r} is not printable text")
        return TrainedMember(name, member["model"], dict(member.get("model_options") or {}), directory)
    except ObjectNotFoundError:
        raise KernelSourceError(f"{directory}: a checkpoint needs member.json beside model.pt") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KernelSourceError(f"{uri}: not a member description ({type(exc).__name__}: {exc})") from None


def _from_run(run: str, storage: Storage) -> list[TrainedMember]:
    """Finished members of a run, k-fold trials (``member@foldK``) and prospect trials included; a member
    trained without validation has no best checkpoint: its last one is analysed."""
    try:
        rows = read_members_table(storage, run) or []
    except InputError as exc:
        raise KernelSourceError(str(exc)) from None
    members, without = [], []
    for row in rows:
        if row.get("status") != "done":
            continue
        name = row["member"] if row.get("fold") is None else f"{row['member']}@fold{row['fold'] + 1}"
        checkpoint = recorded_checkpoint(storage, run, row, MemberCheckpoint.BEST)  # under run: a copied run's own
        if not checkpoint:
            without.append(name)
            continue
        members.append(_from_checkpoint(checkpoint, storage, name))
    if without:  # finished, yet no checkpoint recorded (deleted, a copy without them): not analysed, and said so
        log_event(log, "kernels.members_without_checkpoint", logging.WARNING, run=run, members=",".join(without),
                  hint="members.json marks them done but their checkpoints are gone: the others are analysed")
    if not members:
        raise KernelSourceError(f"{run}: no finished member to analyse (members.json)")
    return members


def _from_manifest(uri: str, storage: Storage) -> list[TrainedMember]:
    from minseg.ensemble.manifest import load_manifest

    manifest = load_manifest(uri, storage, verify=False)  # ManifestError names the file and what is wrong
    return [TrainedMember(m.name, m.model, dict(m.model_options), m.checkpoint) for m in manifest.members]


def load_member(member: TrainedMember, storage: Storage) -> nn.Module:
    """The member's model with its trained weights (CPU, eval mode)."""
    from minseg.models import build_model, load_mismatch, read_state_dict

    uri = join_uri(member.checkpoint, "classes.json")
    try:
        classes = json.loads(storage.read_text(uri))
    except ObjectNotFoundError:
        raise KernelSourceError(f"{member.checkpoint}: no classes.json beside model.pt") from None
    except ValueError as exc:
        raise KernelSourceError(f"{uri}: not JSON ({exc})") from None
    entries = classes.get("classes") if isinstance(classes, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KernelSourceError(f"{uri}: not a class map (an object whose 'classes' lists the classes), got "
                                f"{str(classes)[:80]}")
    num_classes = len(entries)
    weights = join_uri(member.checkpoint, "model.pt")
    state = read_state_dict(weights, storage)
    options = dict(member.model_options)
    in_channels = options.pop("in_channels", None) or _input_channels(state)
    try:
        model = build_model(member.model, num_classes=num_classes, in_channels=in_channels, **options)
        model.load_state_dict(state)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise KernelSourceError(f"{weights}: does not fit member {member.name!r} ({member.model}): "
                                f"{load_mismatch(exc)}") from None
    return model.eval()


def _input_channels(state: dict[str, torch.Tensor]) -> int:
    """The input channel count the weights were trained for: the first 4-D kernel's second dimension."""
    first = next((v for v in state.values() if v.ndim == 4), None)
    return int(first.shape[1]) if first is not None else 3


def kernel_statistics(model: nn.Module, near_zero: float = 0.01, relative: float = 0.05) -> list[dict]:
    """One row per convolution layer of ``model`` (see the module docstring for the columns).

    Args:
        near_zero: |w| below this (absolute) counts as near zero.
        relative: |w| below ``relative`` x the layer's max |w| counts as relatively small.
    """
    from scipy.stats import kurtosis

    rows = []
    depth = 0
    for name, module in model.named_modules():
        if not isinstance(module, CONVOLUTIONS):
            continue
        weights = module.weight.detach().double().flatten().cpu().numpy()
        magnitude = np.abs(weights)
        peak = float(magnitude.max()) if weights.size else 0.0
        depth += 1
        rows.append({
            "depth": depth, "layer": name, "kind": type(module).__name__, "shape": "x".join(map(str, module.weight.shape)),
            "parameters": int(weights.size), "mean": float(weights.mean()), "std": float(weights.std()),
            "mean_abs": float(magnitude.mean()), "max_abs": peak,
            "share_near_zero": float((magnitude < near_zero).mean()),
            "share_relative_small": float((magnitude < relative * peak).mean()) if peak > 0 else 1.0,
            "excess_kurtosis": float(kurtosis(weights)) if weights.size > 3 and weights.std() > 0 else float("nan"),
        })
    return rows


@dataclass
class KernelReport:
    """What ``analyze_kernels`` wrote: the rows of ``kernels.csv`` and the figures' URIs."""

    rows: list[dict]
    csv_uri: str
    figures: list[str]


def analyze_kernels(sources: list[str], output_uri: str, storage: Storage | None = None, *, bins: int = 60,
                    near_zero: float = 0.01, relative: float = 0.05) -> KernelReport:
    """Histograms and statistics of every member's convolution kernels (module docstring).

    Raises:
        KernelSourceError: a source holds no trained member; a member's weights or class map cannot be read or
            do not fit its model. Nothing in ``output_uri`` has changed then: every member is loaded and drawn first.
        InputError: ``bins`` not 1 to ``MAX_BINS``, ``near_zero`` not a finite number above 0, ``relative`` not in
            (0, 1]; ``output_uri`` holds another command's outputs.
        StorageError: a checkpoint cannot be read.
    """
    wrong = [what for what, ok in ((f"--bins {bins} (1 to {MAX_BINS})", 1 <= bins <= MAX_BINS),
                                   (f"--near-zero {near_zero} (a finite number above 0)",
                                    math.isfinite(near_zero) and near_zero > 0),
                                   (f"--relative {relative} (in (0, 1])", 0 < relative <= 1)) if not ok]
    if wrong:
        raise InputError(f"analyze kernels: {'; '.join(wrong)}: out of range")
    storage = storage or Storage()
    output_uri = absolute_uri(output_uri)  # listings name files by absolute URIs: a relative one matched none
    refuse_other_command_outputs(output_uri, "analyze", "--out", storage)
    members = discover(sources, storage)
    for member in members:  # its figures would lie among the weights, and read as part of the checkpoint
        folder = absolute_uri(member.checkpoint).rstrip("/")
        if output_uri.rstrip("/") == folder or output_uri.startswith(folder + "/"):
            raise InputError(f"--out: {output_uri} lies in the checkpoint directory of member {member.name!r} "
                             f"({folder}); give a folder outside it")
    # every member loaded and drawn before the folder is touched: a member that fails leaves the earlier analysis
    # whole, not its figures beside this one's
    rows, pictures, per_member = [], {}, {}
    for member in members:
        model = load_member(member, storage)
        stats = kernel_statistics(model, near_zero, relative)
        if not stats:
            log_event(log, "kernels.no_convolutions", member=member.name)
        per_member[member.name] = stats
        rows += [{"member": member.name, "model": member.model, **row} for row in stats]
        figure = join_uri(output_uri, f"{file_stem(member.name)}_kernels.png")  # a name from a hand-edited file
        pictures[figure] = _histograms_png(model, member.name, bins)
    overview = join_uri(output_uri, "kernels_overview.png")
    pictures[overview] = _overview_png(per_member, near_zero)
    csv_uri = join_uri(output_uri, "kernels.csv")
    # the earlier analysis's figures of members not analysed now (those its kernels.csv names) would look like
    # this one's; other files ending in _kernels.png are not minseg's to delete
    for stale in sorted(set(_earlier_figures(csv_uri, storage)) - set(pictures)):
        storage.delete(stale, missing_ok=True)
    for uri, picture in pictures.items():
        storage.write_bytes(uri, picture)
    storage.write_text(csv_uri, csv_text(rows, COLUMNS))  # last: it lists what the figures show
    figures = list(pictures)
    log_event(log, "kernels.done", members=len(members), layers=len(rows), output=output_uri)
    return KernelReport(rows, csv_uri, figures)


def _earlier_figures(csv_uri: str, storage: Storage) -> list[str]:
    """The member figures of the analysis whose ``kernels.csv`` is ``csv_uri`` (none: no such file, not a table
    of ours)."""
    import csv
    import io

    try:
        reader = csv.DictReader(io.StringIO(storage.read_text(csv_uri)))
        names = {row.get("member") for row in reader}
    except (ObjectNotFoundError, ValueError, csv.Error):
        return []
    folder = csv_uri.rsplit("/", 1)[0]
    return [join_uri(folder, f"{file_stem(name)}_kernels.png") for name in names if isinstance(name, str) and name]


def _figure_bytes(figure) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _histograms_png(model: nn.Module, title: str, bins: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, CONVOLUTIONS)]
    columns = 6
    rows = max(1, -(-len(layers) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 1.9 * rows), squeeze=False)
    for axis in axes.flat[len(layers):]:
        axis.axis("off")
    for axis, (name, module) in zip(axes.flat, layers):
        weights = module.weight.detach().float().flatten().cpu().numpy()
        axis.hist(weights, bins=bins, color="#35618f")
        axis.set_title(name or "(model)", fontsize=6)
        axis.tick_params(labelsize=5)
    figure.suptitle(f"{title}: convolution kernel weights per layer", fontsize=9)
    figure.tight_layout()
    return _figure_bytes(figure)


def _overview_png(per_member: dict[str, list[dict]], near_zero: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, stats in per_member.items():
        depth = [s["depth"] for s in stats]
        left.plot(depth, [s["mean_abs"] for s in stats], marker=".", label=name)
        right.plot(depth, [s["share_near_zero"] for s in stats], marker=".", label=name)
    left.set(xlabel="convolution layer (forward order)", ylabel="mean |w|", yscale="log")
    right.set(xlabel="convolution layer (forward order)", ylabel=f"share of |w| < {near_zero:g}", ylim=(0, 1))
    left.legend(fontsize=7)
    figure.tight_layout()
    return _figure_bytes(figure)
