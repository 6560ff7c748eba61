"""The base every learner shares: input checks, padding to the size a model needs,
``predict``, encoder freezing that also keeps BatchNorm statistics fixed, and
pretrained-encoder loading that reports every mismatched key."""

from __future__ import annotations

import abc
import io
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import PadMode, Task
from minseg.logs import get_logger, log_event

log = get_logger("models")


@dataclass
class WeightLoadReport:
    """What happened when loading pretrained weights into a module."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.shape_mismatch

    def summary(self, limit: int = 8) -> str:
        def head(items):
            items = [str(i) for i in items]
            return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")

        parts = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.missing:
            parts.append(f"missing from the file: {head(self.missing)}")
        if self.shape_mismatch:
            parts.append(
                "shape mismatch: " + head(f"{k} model {tuple(m)} vs file {tuple(f)}" for k, m, f in self.shape_mismatch)
            )
        if self.unexpected:
            parts.append(f"not used from the file: {head(self.unexpected)}")
        return "; ".join(parts)


def read_state_dict(uri: str, storage=None) -> dict[str, torch.Tensor]:
    """A state dict from a local path or s3:// URI, loaded safely (tensors only)."""
    from minseg.io.storage import Storage

    storage = storage or Storage()
    payload = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ValueError(f"{uri}: not a state dict of tensors")
    return payload


def _strip_prefixes(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    cleaned = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def load_weights_into(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True
) -> WeightLoadReport:
    """Copy matching tensors; report (and with ``strict`` refuse) anything that does not fit."""
    state = _strip_prefixes(state, ("module.", "_orig_mod."))
    own = module.state_dict()
    report = WeightLoadReport(source)
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.shape_mismatch.append((key, tuple(own[key].shape), tuple(value.shape)))
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    report.loaded = sorted(usable)
    if strict and not report.ok:
        raise ValueError("pretrained weights do not fit: " + report.summary())
    module.load_state_dict(usable, strict=False)
    log_event(
        log,
        "weights.loaded",
        source=source,
        loaded=len(report.loaded),
        missing=len(report.missing),
        unexpected=len(report.unexpected),
        shape_mismatch=len(report.shape_mismatch),
    )
    if report.unexpected or report.missing or report.shape_mismatch:
        log.warning(report.summary())
    return report


class MinsegModel(nn.Module, metaclass=abc.ABCMeta):
    """Base of every registered learner.

    Subclasses implement ``_forward`` on inputs whose size is already a multiple of
    ``size_multiple`` and set ``self.encoder`` (the part ``freeze_encoder`` freezes).
    ``min_size`` (inputs below it are refused) is declared once, in the registry
    entry's ``InputSpec``; ``register_model`` copies it onto the class.
    """

    task: ClassVar[Task] = Task.SEGMENTATION
    size_multiple: ClassVar[int] = 1
    min_size: ClassVar[int] = 1

    def __init__(self, num_classes: int, in_channels: int = 3, pad_mode: PadMode | str = PadMode.REPLICATE):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.pad_mode = PadMode(pad_mode)
        self.encoder: nn.Module | None = None
        self._encoder_frozen = False

    # -- input handling --------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects a (N, {self.in_channels}, H, W) tensor, got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        height, width = x.shape[-2:]
        if min(height, width) < self.min_size:
            raise ValueError(
                f"{type(self).__name__} needs inputs of at least {self.min_size}x{self.min_size}, got {height}x{width}"
            )
        multiple = self.size_multiple
        if self.pad_mode is PadMode.STRICT and (height % multiple or width % multiple):
            raise ValueError(
                f"{type(self).__name__} needs height and width that are multiples of {multiple}, "
                f"got {height}x{width} (use pad_mode='replicate' to pad and crop automatically)"
            )

    def forward(self, x: torch.Tensor):
        self.check_input(x)
        height, width = x.shape[-2:]
        multiple = self.size_multiple
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            mode = "replicate" if self.pad_mode is PadMode.REPLICATE else "constant"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        output = self._forward(x)
        if self.task is Task.SEGMENTATION and (pad_h or pad_w):
            output = _crop(output, height, width)
        return output

    @abc.abstractmethod
    def _forward(self, x: torch.Tensor):
        """The network on an input already padded to ``size_multiple``."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (softmax over dim 1) in eval mode; restores the mode after."""
        was_training = self.training
        self.eval()
        try:
            output = self(x)
            logits = output[0] if isinstance(output, tuple) else output
            return torch.softmax(logits.float(), dim=1)
        finally:
            self.train(was_training)

    # -- encoder freezing --------------------------------------------------------

    def freeze_encoder(self) -> None:
        """Stop encoder gradients and keep its BatchNorm running statistics fixed."""
        if self.encoder is None:
            raise ValueError(f"{type(self).__name__} has no encoder to freeze")
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self._encoder_frozen = True
        self._set_encoder_norm_mode()

    def unfreeze_encoder(self) -> None:
        if self.encoder is None:
            raise ValueError(f"{type(self).__name__} has no encoder to unfreeze")
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(True)
        self._encoder_frozen = False
        self._set_encoder_norm_mode()

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def train(self, mode: bool = True):
        super().train(mode)
        self._set_encoder_norm_mode()
        return self

    def _set_encoder_norm_mode(self) -> None:
        if self.encoder is None:
            return
        for module in self.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(self.training and not self._encoder_frozen)

    # -- pretrained weights ------------------------------------------------------

    def load_encoder_weights(self, uri: str, strict: bool = True, prefix: str = "", storage=None) -> WeightLoadReport:
        """Load encoder weights from a path or s3:// URI (``torch.load(weights_only=True)``).

        ``prefix`` is stripped from the file's keys (e.g. ``"backbone."``). With ``strict``,
        missing or mis-shaped tensors raise; keys the encoder has no use for (a
        classifier head, say) are reported in the returned report and the log.
        """
        if self.encoder is None:
            raise ValueError(f"{type(self).__name__} has no encoder")
        state = read_state_dict(uri, storage)
        if prefix:
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise ValueError(f"{uri}: no keys start with prefix {prefix!r}")
        return load_weights_into(self.encoder, state, uri, strict=strict)

    def parameter_count(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _crop(output, height: int, width: int):
    if isinstance(output, tuple):
        return tuple(_crop(o, height, width) for o in output)
    if isinstance(output, list):
        return [_crop(o, height, width) for o in output]
    return output[..., :height, :width]
