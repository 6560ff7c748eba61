"""The ensemble runtime: one place that turns trained members into predictions.

Evaluation (``ensemble.evaluate``), whole-slide segmentation (``inference.segment``) and
prospectivity mapping (``geo.predict``) all run an ensemble inside Ray actors. Each of
them builds an :class:`EnsembleRuntime`, which

1. loads the members from a manifest (hash-checked on the driver) or from checkpoint
   directories, in rank order, in eval mode;
2. chooses the device (a GPU when the actor was given a share of one) and the autocast
   precision (``minseg.device``), and puts convolutional members in channels_last on GPUs;
3. normalises uint8 images with the ensemble's per-channel statistics (a member trained
   with its own, e.g. ImageNet's for pretrained encoders, gets them by an affine change);
4. predicts a batch with every member (softmax probabilities, TTA averaged), returning
   one typed :class:`EnsemblePrediction`;
5. fuses it the way the manifest says (``ensemble.voting``).

What crosses a Ray Data boundary is a :class:`Columns` record: a dataclass whose fields
are the batch's columns, so producers and consumers share one definition instead of
string keys.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

import numpy as np
import torch

from minseg.device import autocast_dtype, select_device
from minseg.enums import TTA, FusionMode, Precision
from minseg.ensemble.manifest import EnsembleManifest, ManifestFusion, ManifestMember
from minseg.ensemble.config import Tiling
from minseg.ensemble.sliding import normalise, predict_image, tile_probabilities
from minseg.ensemble.voting import fuse, fusion_scores
from minseg.errors import InputError, MinsegError
from minseg.io.storage import Storage, join_uri

C = TypeVar("C", bound="Columns")


# ----------------------------------------------------------------------------- members


@dataclass(frozen=True)
class MemberRef:
    """A trained member: which learner, built how, with weights where.

    ``checkpoint`` is a checkpoint directory (local or ``s3://``) holding ``model.pt``
    (a state dict), ``member.json`` and ``classes.json``. ``normalization``: the member's own
    per-channel statistics ({"mean", "std"} in uint8 units) when they differ from the
    ensemble's (None: the ensemble's).
    """

    name: str
    model: str
    checkpoint: str
    model_options: Mapping[str, Any] = field(default_factory=dict)
    normalization: Mapping[str, Sequence[float]] | None = None

    @property
    def weights_uri(self) -> str:
        return join_uri(self.checkpoint, "model.pt")

    @classmethod
    def of(cls, member: ManifestMember) -> "MemberRef":
        return cls(member.name, member.model, member.checkpoint, dict(member.model_options), member.normalization)


class MemberLoadError(InputError):
    """A member that cannot be loaded (its weights file missing, empty or damaged, or its model and options not
    matching the checkpoint's tensors); the message names the member and the file. The driver finds these
    before actors start (:func:`check_member_files`, :func:`check_members_fit`); raised inside an actor (a format
    other than torch.save's), the driver gets it back through ``minseg.runtime.actor_errors``."""


# what building a member's model and loading its weights raise when they do not fit (load_state_dict: RuntimeError;
# torch.load of a damaged pickle: UnpicklingError, EOFError)
_LOAD_FAILURES = (MinsegError, ValueError, TypeError, RuntimeError, KeyError, OSError, EOFError,
                  pickle.UnpicklingError)
_ZIP = b"PK\x03\x04"  # torch.save's archive


def check_member_files(members: Sequence[MemberRef], storage: Storage) -> None:
    """Cheap, on the driver before any actor starts: every member's ``model.pt`` exists, is not empty and, saved
    as PyTorch's zip archive (``torch.save``), is whole: its central directory, at the end, is read (a few KiB,
    ranged reads on S3). A damaged file found only by the actors failed each of them with a traceback.

    Raises:
        MemberLoadError: naming the member and the file.
    """
    import zipfile

    from minseg.io.storage import ObjectNotFoundError

    for member in members:
        try:
            size = storage.size(member.weights_uri)
        except ObjectNotFoundError:
            raise MemberLoadError(f"member {member.name!r}: {member.weights_uri}: no such file (the checkpoint is "
                                  "incomplete: train the member again)") from None
        if size == 0:
            raise MemberLoadError(f"member {member.name!r}: {member.weights_uri}: empty (0 bytes; a damaged or "
                                  "interrupted copy: train the member again or restore the file)")
        with storage.open_read(member.weights_uri) as stream:
            if stream.read(4) == _ZIP:  # torch.save's zip (other formats are checked by the actors)
                try:
                    stream.seek(0)
                    zipfile.ZipFile(stream).close()
                except zipfile.BadZipFile as exc:
                    raise MemberLoadError(f"member {member.name!r}: {member.weights_uri}: damaged ({exc}; a "
                                          f"truncated or interrupted copy of {size:,} bytes: train the member "
                                          "again or restore the file)") from None


def check_members_fit(members: Sequence[MemberRef], num_classes: int, storage: Storage) -> None:
    """Cheap, on the driver before any actor starts: each member's model (its registry name and options, for
    ``num_classes``) is built on PyTorch's meta device (no memory) and given its checkpoint's tensors as
    ``torch.load(map_location="meta")`` reads them: names, shapes and dtypes from the archive's pickle, not the
    weights' bytes (ranged reads on S3; PyTorch before 2.10 reads the bytes too, and the check holds all the
    same). A model, options or class count that do not fit the weights were found
    only by the actors, each failing with Ray's tracebacks before the one-line error; now that line comes alone.
    Files that are not ``torch.save``'s zip archive are left to the actors.

    Raises:
        MemberLoadError: as :func:`load_members`, naming the member, the file and the cause.
    """
    from minseg.io.tensors import load_failure
    from minseg.models import InitWeightsError, build_model
    from minseg.models.pretrained import state_dict_of

    for member in members:
        try:
            with storage.open_read(member.weights_uri) as stream:
                if stream.read(4) != _ZIP:
                    continue
                stream.seek(0)
                try:
                    payload = torch.load(stream, map_location="meta", weights_only=True)
                except Exception as exc:  # noqa: BLE001 (a damaged pickle raises anything; io.tensors does the same)
                    raise InitWeightsError(f"not a readable weights file ({load_failure(exc)})") from None
            with torch.device("meta"):
                model = build_model(member.model, num_classes=num_classes, **dict(member.model_options))
            model.load_state_dict(state_dict_of(payload, member.weights_uri), assign=True)
        except _LOAD_FAILURES as exc:
            raise _cannot_load(member, exc) from None


def _cannot_load(member: MemberRef, exc: BaseException) -> MemberLoadError:
    """One line naming the member, the file and the cause (``models.load_mismatch``)."""
    from minseg.models import load_mismatch

    return MemberLoadError(f"member {member.name!r} ({member.model}, {member.weights_uri}) cannot be loaded: "
                           f"{load_mismatch(exc)}")


def load_members(members: Sequence[MemberRef], num_classes: int, storage: Storage,
                 device: torch.device | str = "cpu") -> list[torch.nn.Module]:
    """The members' models (rank order), weights loaded (tensors only), in eval mode on ``device``,
    BatchNorm folded into the convolutions before it (``models.base.fold_batch_norm``: inference only).

    Raises:
        MemberLoadError: a member's model name or options are unknown to the registry, its weights cannot be read
            (missing, empty, damaged), or they do not fit its model and options; one line naming the member, the
            file and the cause.
    """
    from minseg.models import build_model, read_state_dict
    from minseg.models.base import fold_batch_norm

    models = []
    for member in members:
        try:
            model = build_model(member.model, num_classes=num_classes, **dict(member.model_options))
            model.load_state_dict(read_state_dict(member.weights_uri, storage))
        except _LOAD_FAILURES as exc:
            raise _cannot_load(member, exc) from None
        model = model.to(device).eval()
        fold_batch_norm(model)
        models.append(model)
    return models


class Renormalise(torch.nn.Module):
    """A member trained on other statistics than the ensemble's: x_member = x * a + b per channel,
    with a = std_e / std_m and b = (mean_e - mean_m) / std_m, so (u - mean_e) / std_e becomes
    (u - mean_m) / std_m for every uint8 value u."""

    def __init__(self, model: torch.nn.Module, ensemble: Mapping[str, Sequence[float]],
                 member: Mapping[str, Sequence[float]], name: str = "member"):
        super().__init__()
        if len(member["mean"]) != len(ensemble["mean"]):
            raise ValueError(f"{name} normalises {len(member['mean'])} channels, the ensemble "
                             f"{len(ensemble['mean'])}")
        mean_e, std_e = torch.tensor(ensemble["mean"]), torch.tensor(ensemble["std"])
        mean_m, std_m = torch.tensor(member["mean"]), torch.tensor(member["std"])
        self.model = model
        self.task = getattr(model, "task", None)
        self.register_buffer("scale", (std_e / std_m).view(1, -1, 1, 1))
        self.register_buffer("shift", ((mean_e - mean_m) / std_m).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model(x * self.scale + self.shift)


def with_member_normalization(models: Sequence[torch.nn.Module], members: Sequence[MemberRef],
                              mean: Sequence[float] | None, std: Sequence[float] | None) -> list[torch.nn.Module]:
    """Each model, wrapped in ``Renormalise`` where its member's statistics differ from the ensemble's.

    Raises:
        ValueError: a member has its own statistics but the runtime has none to map from
            (inputs come normalised: they cannot be renormalised per member).
    """
    from minseg.models.pretrained import same_normalization

    own_stats = [m for m in members if m.normalization is not None]
    if mean is None or std is None:
        if own_stats:
            raise ValueError(f"member {own_stats[0].name!r} was trained with its own normalisation, but this "
                             "runtime gets normalised inputs and cannot apply it")
        return list(models)
    ensemble = {"mean": list(mean), "std": list(std)}
    wrapped = []
    for model, member in zip(models, members):
        own = member.normalization
        keep = own is None or same_normalization(own, ensemble)
        wrapped.append(model if keep else
                       Renormalise(model, ensemble, own, f"member {member.name!r}").to(next(model.parameters()).device))
    return wrapped


def load_member_models(manifest: EnsembleManifest, storage: Storage, device: torch.device | str = "cpu") -> list:
    """The models of a manifest's members in rank order (hashes are checked by ``load_manifest``)."""
    return load_members([MemberRef.of(m) for m in manifest.members], manifest.num_classes, storage, device)


# ------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class EnsemblePrediction:
    """What the runtime returns for a batch of N inputs.

    ``probabilities``: float32 (M, N, C, H, W) for segmentation members, (M, N, C) for
    classifiers; members in rank order (index 0 = best ranked). ``seconds``: wall time
    of each member on this batch; on a GPU, ``predict``'s are the time to queue each member's kernels (a
    synchronisation per member would stall the segment pipeline), ``predict_image``'s the whole work (its
    probabilities come back to the host member by member): the times reports and ``tpi_budget`` use.
    """

    probabilities: torch.Tensor
    seconds: tuple[float, ...]

    @property
    def members(self) -> int:
        return int(self.probabilities.shape[0])

    def fused_scores(self, fusion: "Fusion") -> torch.Tensor:
        """(N, C, ...) scores that blend across overlapping tiles; their argmax over C is the fused label
        (``voting.fusion_scores``: fused probabilities, or vote shares with the rank tie-break)."""
        moved = self.probabilities.transpose(1, 2)  # (M, C, N, ...): fusion works on the class axis 1
        return fusion_scores(moved, fusion.mode, fusion.learned_weights).transpose(0, 1)

    def fused_labels(self, fusion: "Fusion") -> torch.Tensor:
        """(N, ...) int64 fused class ids (``voting.fuse``)."""
        labels, _ = fuse(self.probabilities.transpose(1, 2), fusion.mode, fusion.learned_weights)
        return labels


@dataclass(frozen=True)
class Fusion:
    """How member probabilities become one answer: a fusion mode, its weights for ``learned``
    (per member, or per member and class) and the TTA views each member averages."""

    mode: FusionMode
    learned_weights: torch.Tensor | None = None
    tta: TTA = TTA.NONE

    @classmethod
    def of(cls, fusion: ManifestFusion) -> "Fusion":
        weights = torch.tensor(fusion.weights, dtype=torch.float32) if fusion.mode is FusionMode.LEARNED else None
        return cls(fusion.mode, weights, fusion.tta)

    @classmethod
    def candidate(cls, mode: FusionMode, weights: Sequence | None) -> "Fusion":
        """A candidate ensemble's fusion (weights matter only for ``learned``)."""
        mode = FusionMode(mode)
        learned = torch.tensor(weights, dtype=torch.float32) if mode is FusionMode.LEARNED else None
        return cls(mode, learned)


class EnsembleRuntime:
    """The members of an ensemble, loaded once per actor, on the actor's device.

    Args:
        members: in rank order.
        num_classes: C of every member.
        storage: where the checkpoints are.
        gpus: the GPU share the actor was given (0: CPU).
        precision: autocast policy (``auto``: bf16 on recent GPUs, fp32 on CPU).
        mean, std: per-channel normalisation in uint8 units (None: inputs come normalised).
        tta: test-time augmentation each member averages over.
        channels_last: on GPUs, convert the members to NHWC (worth it when inputs come channels_last too,
            as ``normalise`` makes them; tensor cores want NHWC).
        compile: ``torch.compile`` each member (first batches are slow while it compiles; pays off on long
            GPU runs with one batch shape, which the segmentation actors keep).
    """

    def __init__(self, members: Sequence[MemberRef], num_classes: int, storage: Storage, *, gpus: float = 0.0,
                 precision: Precision = Precision.AUTO, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, tta: TTA = TTA.NONE, channels_last: bool = False,
                 compile: bool = False):
        self.members = list(members)
        self.num_classes = num_classes
        self.device = select_device(gpus)
        self.autocast = autocast_dtype(precision, self.device)
        self.mean, self.std, self.tta = mean, std, TTA(tta)
        # on the device once: rebuilt from lists per batch, each is a blocking copy to a GPU
        self._statistics = None if mean is None or std is None else tuple(
            torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in (mean, std))
        self.models = with_member_normalization(load_members(self.members, num_classes, storage, self.device),
                                                self.members, mean, std)
        if channels_last and self.device.type == "cuda":
            self.models = [m.to(memory_format=torch.channels_last) for m in self.models]
        # batch_size_for measures these: compiled ones probed at batch 1 and 2 would recompile with a dynamic batch
        # dimension for the whole run, and count the compiler's workspace as the model's memory
        self._eager = self.models
        if compile:
            self.models = [torch.compile(m, dynamic=False) for m in self.models]
        self.index = {m.name: i for i, m in enumerate(self.members)}

    @classmethod
    def from_manifest(cls, manifest: EnsembleManifest, storage: Storage, *, gpus: float = 0.0,
                      precision: Precision = Precision.AUTO, compile: bool = False) -> "EnsembleRuntime":
        """The manifest's members with its normalisation and TTA (hashes were checked when it was loaded)."""
        return cls([MemberRef.of(m) for m in manifest.members], manifest.num_classes, storage, gpus=gpus,
                   precision=precision, mean=manifest.normalization["mean"], std=manifest.normalization["std"],
                   tta=manifest.fusion.tta, channels_last=True, compile=compile)

    def batch_size_for(self, budget_bytes: int, tile: int, fusion: "Fusion", cap: int) -> int:
        """The largest batch of (tile, tile) windows, at most ``cap``, whose fused prediction fits
        ``budget_bytes`` of GPU memory: peak memory is measured at batch 1 and 2 on the members uncompiled and
        extrapolated linearly (activations grow with the batch, weights do not), a tenth of the budget kept back
        for the allocator's fragmentation. On CPU: ``cap``.
        """
        if self.device.type != "cuda":
            return cap
        channels = len(self.mean) if self.mean is not None else 3
        peaks, compiled, self.models = [], self.models, self._eager
        try:
            for batch in (1, 2):
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
                images = np.zeros((batch, tile, tile, channels), np.uint8)
                self.predict_images(images).fused_scores(fusion)
                torch.cuda.synchronize(self.device)
                peaks.append(torch.cuda.max_memory_allocated(self.device))
        finally:
            self.models = compiled
        per_window = max(1, peaks[1] - peaks[0])
        fixed = peaks[0] - per_window
        return int(max(1, min(cap, (0.9 * budget_bytes - fixed) // per_window)))

    def normalise(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, K) -> normalised float32 (N, K, H, W) on the device, channels_last."""
        return normalise(images, *self._known_statistics(), self.device)

    def _known_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._statistics is None:
            raise ValueError("this runtime has no normalisation statistics; pass normalised tensors to predict()")
        return self._statistics

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, members: Sequence[int] | None = None) -> EnsemblePrediction:
        """Every member's softmax probabilities on a normalised batch (N, K, H, W) (segmentation)
        or (N, K, h, w) windows (classifiers, which give (N, C)).

        ``members``: indices of the members to run (default all), in the order wanted.
        """
        chosen = range(len(self.models)) if members is None else members
        outputs, seconds = [], []
        for index in chosen:
            started = time.perf_counter()
            model = self.models[index]
            if inputs.ndim == 4 and self._is_dense(model):
                probs = tile_probabilities(model, inputs, self.tta, self.autocast)
            else:
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    logits = model(inputs)
                logits = logits[0] if isinstance(logits, tuple) else logits
                probs = torch.softmax(logits.float(), dim=1)
            outputs.append(probs)
            seconds.append(time.perf_counter() - started)
        return EnsemblePrediction(torch.stack(outputs), tuple(seconds))

    def predict_images(self, images: np.ndarray) -> EnsemblePrediction:
        """``predict`` on uint8 (N, H, W, K) images."""
        return self.predict(self.normalise(images))

    def predict_image(self, image: np.ndarray, tiling: Tiling, batch_size: int = 8) -> EnsemblePrediction:
        """Every member on a whole (H, W, K) uint8 image, tiled and blended (``sliding.predict_image``):
        probabilities (M, 1, C, H, W) and each member's seconds for the whole image."""
        timings: list[float] = []
        self._known_statistics()  # the host lists below: predict_image also fills the image's margins with them
        probs = predict_image(self.models, image, self.num_classes, tiling.tile, tiling.overlap, self.mean, self.std,
                              self.device, batch_size, tiling.blend, self.tta, timings, self.autocast)
        return EnsemblePrediction(torch.from_numpy(probs)[:, None], tuple(timings))

    @staticmethod
    def _is_dense(model) -> bool:
        from minseg.enums import Task

        return getattr(model, "task", Task.SEGMENTATION) is Task.SEGMENTATION


# ------------------------------------------------------------------ Ray Data records


class Columns:
    """Mixin for dataclasses that travel through Ray Data as numpy batches.

    The dataclass fields are the batch's columns (equal length N); ``OBJECT_COLUMNS``
    names those held as 1-D object arrays (variable-size arrays, bytes, None).
    """

    OBJECT_COLUMNS: ClassVar[tuple[str, ...]] = ()

    def to_batch(self) -> dict[str, np.ndarray]:
        batch = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            batch[item.name] = object_column(value) if item.name in self.OBJECT_COLUMNS else np.asarray(value)
        return batch

    @classmethod
    def from_batch(cls: type[C], batch: Mapping[str, Any]) -> C:
        """From a numpy batch of the producer's own Ray Data stage (``map_batches`` input or ``iter_batches``
        of a stage whose object columns never hold None: Arrow turns an all-None column into NaNs)."""
        return cls(**{item.name: batch[item.name] for item in dataclasses.fields(cls)})  # type: ignore[arg-type]

    @classmethod
    def from_rows(cls: type[C], rows: Sequence[Mapping[str, Any]]) -> C:
        """From ``Dataset.take_all()`` rows, where a None in an object column stays None; array columns
        are stacked."""
        columns = {}
        for item in dataclasses.fields(cls):  # type: ignore[arg-type]
            values = [row[item.name] for row in rows]
            columns[item.name] = values if item.name in cls.OBJECT_COLUMNS else np.stack(values) if values else \
                np.empty(0)
        return cls(**columns)

    def subset(self: C, keep: Sequence[bool]) -> C:
        """The rows where ``keep`` is true, in order."""
        keep = np.asarray(keep, dtype=bool)
        columns = {}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            values = getattr(self, item.name)
            columns[item.name] = ([v for v, k in zip(values, keep) if k] if item.name in self.OBJECT_COLUMNS
                                  else np.asarray(values)[keep])
        return type(self)(**columns)

    def __len__(self) -> int:
        first = dataclasses.fields(self)[0].name  # type: ignore[arg-type]
        return len(getattr(self, first))


def object_column(values) -> np.ndarray:
    """A 1-D object array (``np.array`` would stack equal-length arrays into 2-D)."""
    column = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        column[index] = value
    return column
