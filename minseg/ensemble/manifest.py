"""The ensemble manifest: everything an inference job needs to apply a selected ensemble.

A versioned JSON (schema in docs/ensembles.md): members in rank order with checkpoint
URIs and SHA-256 hashes of their weights, fusion mode and weights, TTA, the class
map, tiling, normalisation, and the metrics that justified the choice. Loading
validates it: a missing checkpoint, a hash mismatch or members whose class maps
differ are clear errors, never a silently different ensemble.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from pydantic import Field, ValidationError, field_validator

from minseg.config.base import Name, StrictModel, describe_errors, name_problem
from minseg.data.config import DEFAULT_CHANNELS, BitDepth, ImageChannels, Normalization, class_list_problem
from minseg.enums import TTA, FusionMode
from minseg.ensemble.config import Tiling
from minseg.errors import InputError
from minseg.io.images import BIT_DEPTH
from minseg.io.storage import (REDO, ObjectNotFoundError, Storage, StorageError, absolute_uri, is_s3, join_uri,
                               resolved_uri, staging_folder)
from minseg.logs import get_logger, log_event

log = get_logger("ensemble.manifest")

MANIFEST_VERSION = 1


class ManifestError(InputError):
    """A manifest that cannot be used; the message says which member or key and why."""


class ManifestMember(StrictModel):
    name: Name  # names files (analyze kernels' figures), as a training run's member names do
    model: str
    model_options: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str = Field(description="checkpoint directory (holds model.pt, member.json, classes.json)")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of model.pt")
    rank: int = Field(ge=0)
    metrics: dict[str, Any] = Field(default_factory=dict)
    normalization: Normalization | None = Field(
        None, description="the member's own per-channel statistics when they differ from the ensemble's "
                          "(pretrained members: their weights' family)")


class ManifestFusion(StrictModel):
    mode: FusionMode
    weights: list[float] | list[list[float]] = Field(description="per member (rank order), or per member and class")
    tta: TTA = TTA.NONE


class EnsembleManifest(StrictModel):
    version: int = MANIFEST_VERSION
    name: str
    created: str
    source_run: str
    members: list[ManifestMember] = Field(min_length=1)
    fusion: ManifestFusion
    classes: dict[str, Any]
    tiling: Tiling
    normalization: Normalization
    channels: list[ImageChannels] | None = Field(
        None, description="the images of a scene in input-channel order (data.sources[].channels the members were "
                          "trained on); absent: one RGB image")
    bit_depth: BitDepth = Field(BIT_DEPTH, description="significant bits of the members' 16-bit input "
                           "samples (data.bit_depth they were trained with); segment reads slides the same way")
    selection: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("classes")
    @classmethod
    def _class_map(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The class map's form (``ClassMap.to_document``): what segment, score and measure read names from."""
        entries = value.get("classes")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"'classes' must list the classes (objects with a name), got {entries!r}")
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise ValueError(f"classes[{index}] must be an object with a name, got {entry!r}")
            # a class's id is its place in the list (the value label maps hold): an edited id would remap nothing
            if "id" in entry and (entry["id"] != index or isinstance(entry["id"], bool)):
                raise ValueError(f"classes[{index}] ({entry['name']!r}) has id {entry['id']!r}: a class's id is its "
                                 f"place in the list ({index}); list the classes in id order")
        if problem := class_list_problem([entry["name"] for entry in entries]):
            raise ValueError(problem)
        if not isinstance(value.get("ignore_index", 255), int) or isinstance(value.get("ignore_index"), bool):
            raise ValueError(f"ignore_index must be an integer, got {value.get('ignore_index')!r}")
        if 0 <= value.get("ignore_index", 255) < len(entries):  # as data.classes refuses it (``ClassMapSettings``)
            index = value["ignore_index"]
            raise ValueError(f"ignore_index {index} is the id of class {entries[index]['name']!r}: "
                             "its pixels would be left out of every score")
        return value

    @field_validator("members")
    @classmethod
    def _distinct_members(cls, value: list[ManifestMember]) -> list[ManifestMember]:
        names = [member.name for member in value]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"names {', '.join(twice)} more than once: one member would vote twice")
        return value

    @property
    def num_classes(self) -> int:
        return len(self.classes["classes"])

    @property
    def channel_groups(self) -> tuple[ImageChannels, ...]:
        return tuple(self.channels) if self.channels else DEFAULT_CHANNELS

    @property
    def in_channels(self) -> int:
        return sum(group.count for group in self.channel_groups)

    def digest(self) -> str:
        """Identifies this ensemble (members' weights, fusion, tiling): outputs record it."""
        # a manifest without declared channels (RGB) or bit depth hashes as before they existed: finished slides
        # stay finished
        exclude = {"created", "metrics", "selection"} | ({"channels"} if self.channels is None else set()) \
            | ({"bit_depth"} if self.bit_depth == BIT_DEPTH else set())
        canonical = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_sha256(storage: Storage, uri: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(uri) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(manifest: EnsembleManifest, uri: str, storage: Storage) -> None:
    """Write ``manifest`` at ``uri``, checked first as loading checks it (its schema was, when it was built;
    :func:`check_manifest`, each member's class map): ``select`` refuses what ``segment`` would, rather than write
    it (an ``evaluation.json`` edited by hand). Raises ManifestError."""
    where = f"{uri} (not written)"
    check_manifest(manifest, where)
    check_member_classes(manifest, storage, where)
    storage.write_json(uri, manifest.model_dump(mode="json"))


def manifest_destination(out: str | None, evaluation: str, name: str, storage: Storage, flag: str = "--out") -> str:
    """Where ``minseg select`` writes its manifest: ``out`` as a ``.json`` file, or ``manifest-NAME.json`` inside
    ``out`` when it is a folder (one that exists: an S3 prefix holding objects, a bucket; or any path written with a
    trailing ``/``); by default beside
    ``evaluation.json`` in the ``evaluation`` folder. ``flag``: what chose the file, named in errors (``--name``
    when ``out`` is None).

    Raises:
        InputError: ``out`` names another kind of file, an existing file that is not an ensemble manifest
            (a training run's members.json, an evaluation.json): select replaces only manifests; or a file in the
            folder of another evaluation (one holding an evaluation.json): a manifest there would sit beside
            another evaluation's record, and be read as its choice.
    """
    file_name = f"manifest-{name}.json"
    if not out:
        target = join_uri(evaluation, file_name)
    elif out.endswith("/") or (os.path.isdir(os.path.expanduser(out)) if not is_s3(out)
                               else not out.lower().endswith(".json") and storage.is_folder(out)):
        target = join_uri(out.rstrip("/"), file_name)
    elif not out.lower().endswith(".json"):
        raise InputError(f"--out: {out} is not a .json file name: give the manifest's file (e.g. {file_name}) or a "
                         "folder ending in /")
    else:
        target = out
    folder, own = absolute_uri(target).rsplit("/", 1)[0], absolute_uri(evaluation).rstrip("/")
    if resolved_uri(folder) != resolved_uri(own) and storage.exists(join_uri(folder, "evaluation.json")):
        # its manifest.json is what segment and score read there, beside that evaluation's own record and tables
        raise InputError(f"--out: {folder} is the folder of another evaluation (it holds its evaluation.json): its "
                         "manifests are chosen from its own candidates; write this one elsewhere")
    if storage.exists(target):
        try:
            document = json.loads(storage.read_text(target))
        except (json.JSONDecodeError, UnicodeDecodeError):
            document = None
        if not (isinstance(document, dict) and "version" in document and "members" in document
                and "fusion" in document):
            raise InputError(f"{flag}: {target} exists and is not an ensemble manifest (another command's output?): "
                             f"select replaces only manifests; choose another {'name' if flag == '--name' else 'path'}")
    return target


def unselected_reason(storage: Storage, uri: str) -> str | None:
    """Why the evaluation record ``uri`` selected no candidate (its ``unselected``: no candidate fits the TPI
    budget), or None (selected, no record, not readable: a staging folder in the way, a damaged file)."""
    try:
        document = json.loads(storage.read_text(uri))
    except (StorageError, ValueError):
        return None
    return document.get("unselected") if isinstance(document, dict) else None


def load_manifest(uri: str, storage: Storage | None = None, verify: bool = True) -> EnsembleManifest:
    """A manifest, validated (:func:`check_manifest`) and, with ``verify``, its members' files checked
    (:func:`verify_members`).

    Raises:
        ManifestError: no such file, not JSON, an evaluation record, another version, a key that does not
            validate, weights or statistics that do not fit (:func:`check_manifest`), a member's checkpoint missing,
            empty, changed or trained on other classes.
    """
    storage = storage or Storage()
    try:
        document = json.loads(storage.read_text(uri))
    except ObjectNotFoundError:
        folder = uri.rsplit("/", 1)[0] if "/" in uri else "."
        if storage.exists(join_uri(staging_folder(folder, "evaluate"), "evaluation.json")):  # publish_outputs
            raise ManifestError(f"{uri}: not in place yet: the evaluation's outputs are staged in {folder}/{REDO} "
                                f"(its run was cut short while putting them in place, or is doing so): run minseg "
                                f"select {folder}, which puts them in place first") from None
        if unselected := unselected_reason(storage, join_uri(folder, "evaluation.json")):
            chosen = sorted(info.uri.rsplit("/", 1)[-1] for info in storage.list(join_uri(folder, "manifest-"))
                            if info.uri.endswith(".json"))
            beside = f", or give one select wrote beside it ({', '.join(chosen)})" if chosen else ""
            raise ManifestError(f"{uri}: no such ensemble manifest: the evaluation in {folder} selected none "
                                f"({unselected}); choose one with minseg select {folder} --out {uri}{beside}") from None
        raise ManifestError(f"{uri}: no such ensemble manifest") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{uri}: not valid JSON ({exc})") from None
    if isinstance(document, dict) and "version" not in document and {"candidates", "rank_key"} & document.keys():
        beside = join_uri(uri.rsplit("/", 1)[0], "manifest.json") if "/" in uri else "manifest.json"
        raise ManifestError(f"{uri}: an evaluation record (evaluation.json), not an ensemble manifest: give the "
                            f"manifest beside it ({beside}), or choose another candidate with minseg select")
    if not isinstance(document, dict) or "version" not in document:  # a prospect summary has members too
        raise ManifestError(f"{uri}: not an ensemble manifest (no version): give the manifest.json that minseg "
                            "evaluate or minseg select wrote")
    if document.get("version") != MANIFEST_VERSION:
        found = document.get("version")
        raise ManifestError(f"{uri}: manifest version {found!r} is not supported (expected {MANIFEST_VERSION})")
    try:
        manifest = EnsembleManifest.model_validate(document)
    except ValidationError as exc:
        raise ManifestError(f"{uri}: invalid manifest: {describe_errors(exc)}") from None
    check_manifest(manifest, uri)
    if verify:
        verify_members(manifest, storage, uri)
    return manifest


def check_manifest(manifest: EnsembleManifest, where: str = "manifest") -> None:
    """What can be checked without loading a model: the fusion weights are the ones their mode uses, the
    normalisation has one mean and std per input channel (the ensemble's and each member's own).

    Fusion weights, per member in rank order: ``pv`` and ``soft`` use equal weights (all 1); ``wv`` and
    ``weighted_soft`` the rank weights k, k-1, ..., 1 (``voting.rank_weights``; normalised, as
    ``write_ensemble`` writes them, they are the same weights); only ``learned`` uses the weights as written:
    finite, 0 or more, not all 0 (per member and class: a list of one weight per class for each member; a class
    whose every weight is 0 is never predicted: allowed, as fits before 2026-12-05 could end so, with a warning).
    Any other weights would be ignored: an edited manifest would score as before.

    Raises:
        ManifestError: naming the key, what it holds and what it should.
    """
    import math

    from minseg.ensemble.voting import normalised_rank_weights

    fusion, k, classes = manifest.fusion, len(manifest.members), manifest.num_classes
    weights, mode = fusion.weights, fusion.mode
    if len(weights) != k:
        raise ManifestError(f"{where}: fusion.weights has {len(weights)} entries for {k} members")
    nested = any(isinstance(w, list) for w in weights)
    if mode is not FusionMode.LEARNED:
        uses = {FusionMode.PV: [1.0] * k, FusionMode.SOFT: [1.0] * k}.get(mode)
        forms = [uses] if uses else [[float(k - i) for i in range(k)], normalised_rank_weights(k)]
        if nested or not any(all(math.isclose(float(w), f, rel_tol=1e-6, abs_tol=1e-9) for w, f in zip(weights, form))
                             for form in forms):
            said = "all 1" if uses else f"the rank weights {', '.join(f'{w:g}' for w in forms[0])} (or them normalised)"
            raise ManifestError(f"{where}: fusion.weights {weights} are not the weights mode {mode.value!r} uses "
                                f"({said} for {k} members); other weights need fusion.mode 'learned'")
    else:
        rows = weights if nested else [[w] for w in weights]
        if nested and any(len(row) != classes for row in rows):
            lengths = sorted({len(row) for row in rows})
            raise ManifestError(f"{where}: fusion.weights per member and class hold {lengths} weights per member for "
                                f"{classes} classes")
        values = [float(w) for row in rows for w in row]
        if not all(math.isfinite(w) and w >= 0 for w in values):
            raise ManifestError(f"{where}: fusion.weights (learned) must be finite and 0 or more; got "
                                f"{next(w for w in values if not (math.isfinite(w) and w >= 0))!r}")
        if not any(w > 0 for w in values):
            raise ManifestError(f"{where}: fusion.weights (learned) are all 0: at least one member needs a weight "
                                "above 0")
        never = [manifest.classes["classes"][c].get("name", str(c))
                 for c in range(len(rows[0])) if nested and not any(row[c] > 0 for row in rows)]
        if never:  # a fit may give a class up (it raised the key): the ensemble then never predicts it
            log_event(log, "manifest.class_never_predicted", logging.WARNING, manifest=where, classes=",".join(never),
                      hint="every member's learned weight for these classes is 0")
    channels = manifest.in_channels
    statistics = [("normalization", manifest.normalization)] + [
        (f"members[{i}] ({m.name!r}).normalization", m.normalization) for i, m in enumerate(manifest.members)
        if m.normalization is not None]
    for key, stats in statistics:
        for part in ("mean", "std"):
            if len(stats[part]) != channels:
                raise ManifestError(f"{where}: {key}.{part} has {len(stats[part])} values for {channels} input "
                                    "channel(s) (" + ("channels" if manifest.channels else "RGB: channels absent")
                                    + ")")


def verify_members(manifest: EnsembleManifest, storage: Storage, where: str = "manifest") -> None:
    """Each member's weights are those selected (sha256), trained on the manifest's classes
    (:func:`check_member_classes`) and fit its model and options (``runtime.check_members_fit``, on the meta
    device: no weights read twice). Raises ManifestError naming ``where`` and the member."""
    from minseg.ensemble.runtime import MemberLoadError, MemberRef, check_members_fit  # runtime builds on this

    for member in manifest.members:
        weights_uri = join_uri(member.checkpoint, "model.pt")
        try:
            actual = file_sha256(storage, weights_uri)
        except ObjectNotFoundError:
            raise ManifestError(f"{where}: member {member.name!r}: checkpoint missing ({weights_uri})") from None
        if actual != member.sha256:
            raise ManifestError(
                f"{where}: member {member.name!r}: weights changed since selection "
                f"(sha256 {actual[:12]}... != {member.sha256[:12]}... in the manifest) at {weights_uri}"
            )
    check_member_classes(manifest, storage, where)
    try:
        check_members_fit([MemberRef.of(m) for m in manifest.members], manifest.num_classes, storage)
    except MemberLoadError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def check_member_classes(manifest: EnsembleManifest, storage: Storage, where: str = "manifest") -> None:
    """Each member's ``classes.json`` names the manifest's classes (and ignore index). Raises ManifestError."""
    for member in manifest.members:
        try:
            classes = storage.read_json(join_uri(member.checkpoint, "classes.json"))
        except ObjectNotFoundError:
            raise ManifestError(f"{where}: member {member.name!r}: classes.json missing in {member.checkpoint}") from None
        if _class_names(classes) != _class_names(manifest.classes) or \
                classes.get("ignore_index") != manifest.classes.get("ignore_index"):
            raise ManifestError(
                f"{where}: member {member.name!r} was trained on classes {_class_names(classes)}, the manifest "
                f"declares {_class_names(manifest.classes)}"
            )


def _class_names(document: dict) -> list:
    """The class names of a class-map document; what is not one (a member's ``classes.json`` edited) as it is."""
    entries = document.get("classes") if isinstance(document, dict) else None
    return [c.get("name") if isinstance(c, dict) else c for c in entries] if isinstance(entries, list) else [entries]


def write_ensemble(root: str, members: list[tuple[str, str, dict, Any]], classes: dict, *, mode: str = "wv",
                   tile: int = 256, overlap: int = 64, scale: float = 1.0, mean=(128.0, 128.0, 128.0),
                   std=(64.0, 64.0, 64.0), name: str = "imported", storage: Storage | None = None,
                   bit_depth: int = BIT_DEPTH) -> str:
    """Checkpoints + a manifest for models trained elsewhere (or untrained, for benchmarks); returns its URI.

    ``members``: (name, registered model name, model options, torch module) in rank order; ``bit_depth``: the
    significant bits of the 16-bit images they were trained on (``data.bit_depth``).

    Raises:
        InputError: a member name that is no :data:`~minseg.config.base.Name` (before anything is written).
    """
    import io
    from datetime import datetime, timezone

    import torch

    from minseg.ensemble.voting import normalised_rank_weights

    storage = storage or Storage()
    for member, *_ in members:  # each names a folder under root: refused before anything is written
        if problem := name_problem(member):
            raise InputError(f"member name {member!r}: {problem}")
    entries = []
    for rank, (member, model_name, options, module) in enumerate(members):
        checkpoint = join_uri(root, "members", member)
        buffer = io.BytesIO()
        torch.save(module.state_dict(), buffer)
        storage.write_bytes(join_uri(checkpoint, "model.pt"), buffer.getvalue())
        storage.write_json(join_uri(checkpoint, "classes.json"), classes, indent=None)
        storage.write_json(join_uri(checkpoint, "member.json"), {"model": model_name, "model_options": options},
                           indent=None)
        entries.append(ManifestMember(name=member, model=model_name, model_options=options, checkpoint=checkpoint,
                                      sha256=hashlib.sha256(buffer.getvalue()).hexdigest(), rank=rank))
    mode = FusionMode(mode)
    weights = normalised_rank_weights(len(entries)) if mode in (FusionMode.WV, FusionMode.WEIGHTED_SOFT) \
        else [1.0] * len(entries)
    manifest = EnsembleManifest(
        name=name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), source_run=root,
        members=entries, fusion=ManifestFusion(mode=mode, weights=weights), classes=classes,
        tiling=Tiling(tile=tile, overlap=overlap, scale=scale),
        normalization={"mean": list(mean), "std": list(std)}, bit_depth=bit_depth,
    )
    uri = join_uri(root, f"manifest-{mode.value}.json")
    write_manifest(manifest, uri, storage)
    return uri
