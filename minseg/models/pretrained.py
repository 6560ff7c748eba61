"""Pretrained weights for members: public checkpoint layouts mapped onto our encoders.

A member's ``init`` (``training.members[].init``) names a checkpoint (a path or
``s3://`` URI; ``.pt``/``.pth``/``.bin``/``.ckpt`` read with ``torch.load(weights_only=True)``,
``.safetensors`` with the ``safetensors`` package). Its tensor names follow one of the
public layouts below; each layout is a table of name rules (regular expressions applied
in order) from the file's names to ours, kept as data:

=================  ===================================================================
layout             backbones
=================  ===================================================================
torchvision        ResNet18/50, VGG16, VGG16-BN, ShuffleNetV2 x1.0, ConvNeXt-T
timm               ResNet18/50, VGG16, VGG16-BN, ConvNeXt-T (timm has no ShuffleNetV2)
convnext_original  ConvNeXt-T as released by facebookresearch/ConvNeXt
minseg             a minseg checkpoint (``model.pt`` of a trained member)
=================  ===================================================================

``layout: auto`` tries every layout of the member's backbone and keeps the one that
loads the most encoder tensors. Loading never fails on a tensor that does not fit (a
classifier head for another class count is expected): it is reported. It fails, naming
the file, when less than ``min_encoder_share`` of the encoder's tensors load, so a wrong
file cannot start a long run from noise.

Input channels other than the checkpoint's three are adapted on the encoder's first
convolution as timm's ``adapt_input_conv`` does: summed over RGB for one channel,
repeated and scaled by 3/k for k channels. A (d, 1, 1) tensor loads into a (d,) one
(torchvision's ConvNeXt layer scale).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from minseg.enums import InitNormalization, InitPart, WeightLayout
from minseg.errors import InputError
from minseg.io.tensors import load_tensor_file

#: ImageNet per-channel statistics in uint8 units (torchvision / timm / ConvNeXt training recipes).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

Rules = tuple[tuple[str, str], ...]

_CONVNEXT_TORCHVISION: Rules = (
    # features.{0,2,4,6} are the stem and the three downsampling layers; {1,3,5,7} the stages
    (r"^features\.0\.", "downsample.0."), (r"^features\.2\.", "downsample.1."),
    (r"^features\.4\.", "downsample.2."), (r"^features\.6\.", "downsample.3."),
    (r"^features\.1\.", "stages.0."), (r"^features\.3\.", "stages.1."),
    (r"^features\.5\.", "stages.2."), (r"^features\.7\.", "stages.3."),
    (r"\.block\.0\.", ".dwconv."), (r"\.block\.2\.", ".norm."),
    (r"\.block\.3\.", ".pwconv1."), (r"\.block\.5\.", ".pwconv2."),
    (r"\.layer_scale$", ".gamma"),
)
_CONVNEXT_TIMM: Rules = (
    (r"^stem\.", "downsample.0."),
    (r"^stages\.(\d)\.downsample\.", r"downsample.\1."),
    (r"^stages\.(\d)\.blocks\.", r"stages.\1."),
    (r"\.conv_dw\.", ".dwconv."), (r"\.mlp\.fc1\.", ".pwconv1."), (r"\.mlp\.fc2\.", ".pwconv2."),
)
_CONVNEXT_ORIGINAL: Rules = ((r"^downsample_layers\.", "downsample."),)
_SHUFFLENET_TORCHVISION: Rules = (
    (r"^conv1\.", "stem."), (r"^stage2\.", "stages.0."), (r"^stage3\.", "stages.1."), (r"^stage4\.", "stages.2."),
)
_IDENTITY: Rules = ()

#: backbone -> layout -> rules from the file's names to the encoder's (``encoder.backbone``)
ENCODER_RULES: dict[str, dict[WeightLayout, Rules]] = {
    "resnet": {WeightLayout.TORCHVISION: _IDENTITY, WeightLayout.TIMM: _IDENTITY},
    "vgg16": {WeightLayout.TORCHVISION: _IDENTITY, WeightLayout.TIMM: _IDENTITY},
    "vgg16_bn": {WeightLayout.TORCHVISION: _IDENTITY, WeightLayout.TIMM: _IDENTITY},
    "shufflenetv2": {WeightLayout.TORCHVISION: _SHUFFLENET_TORCHVISION},
    "convnext": {WeightLayout.TORCHVISION: _CONVNEXT_TORCHVISION, WeightLayout.TIMM: _CONVNEXT_TIMM,
                 WeightLayout.CONVNEXT_ORIGINAL: _CONVNEXT_ORIGINAL},
}
#: backbone -> layout -> rules for the parts outside the encoder (``part: model``), to the model's names
HEAD_RULES: dict[str, dict[WeightLayout, Rules]] = {
    "convnext": {WeightLayout.TORCHVISION: ((r"^classifier\.0\.", "norm."), (r"^classifier\.2\.", "head.")),
                 WeightLayout.TIMM: ((r"^head\.norm\.", "norm."), (r"^head\.fc\.", "head."))},
}


class InitWeightsError(InputError):
    """Pretrained weights that cannot initialise a member (wrong file, unreadable, too little fits)."""


@dataclass
class WeightLoadReport:
    """What loading pretrained weights into a model did.

    Counts are tensors (``num_batches_tracked`` counters excluded). ``encoder_share`` is
    the fraction of the encoder's tensors that loaded (adapted ones included).
    """

    source: str
    layout: str = ""
    part: str = InitPart.ENCODER.value
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model part, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, no use for it
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, model, file)
    adapted: list[str] = field(default_factory=list)
    encoder_tensors: int = 0
    encoder_loaded: int = 0
    normalization: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.shape_mismatch

    @property
    def encoder_share(self) -> float:
        return self.encoder_loaded / self.encoder_tensors if self.encoder_tensors else 0.0

    def summary(self, limit: int = 6) -> str:
        """One line: counts first, then the first few names of each kind."""

        def head(items):
            items = [str(i) for i in items]
            return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")

        parts = [f"{self.source}" + (f" ({self.layout} layout)" if self.layout else "")
                 + f": loaded {len(self.loaded)} tensors"
                 + (f", encoder {self.encoder_loaded}/{self.encoder_tensors}" if self.encoder_tensors else "")]
        if self.adapted:
            parts.append("adapted: " + head(self.adapted))
        if self.missing:
            parts.append(f"missing from the file: {head(self.missing)}")
        if self.shape_mismatch:
            parts.append("shape mismatch: " + head(f"{k} model {tuple(m)} vs file {tuple(f)}"
                                                   for k, m, f in self.shape_mismatch))
        if self.unexpected:
            parts.append(f"not used from the file: {head(self.unexpected)}")
        return "; ".join(parts)

    def short(self) -> str:
        """For the members table: ``file [torchvision names]: encoder 320/320, 1 adapted``."""
        name = self.source.rstrip("/").rsplit("/", 1)[-1]
        extra = f", {len(self.adapted)} adapted" if self.adapted else ""
        return f"{name} [{self.layout} names]: encoder {self.encoder_loaded}/{self.encoder_tensors}{extra}"

    def to_document(self) -> dict:
        document = asdict(self)
        document["shape_mismatch"] = [[k, list(m), list(f)] for k, m, f in self.shape_mismatch]
        document["encoder_share"] = round(self.encoder_share, 4)
        return document

    @classmethod
    def from_document(cls, document: dict) -> "WeightLoadReport":
        values = {k: v for k, v in document.items() if k in cls.__dataclass_fields__}
        values["shape_mismatch"] = [(k, tuple(m), tuple(f)) for k, m, f in values.get("shape_mismatch", [])]
        return cls(**values)


# ---------------------------------------------------------------------------- reading


def same_normalization(a: dict | None, b: dict | None) -> bool:
    """Whether two {"mean", "std"} documents hold the same statistics (None = unknown: never the same)."""
    if not a or not b:
        return False
    return [float(v) for v in a["mean"]] == [float(v) for v in b["mean"]] and \
        [float(v) for v in a["std"]] == [float(v) for v in b["std"]]


def load_mismatch(exc: BaseException) -> str:
    """Why ``load_state_dict`` refused a checkpoint, in one line: torch lists every missing, unexpected and
    mis-shaped tensor over many lines (an error message cut at its first line said only "Error(s) in loading
    state_dict for HalfUNet:"); counted here, with the first of each and both shapes of a mis-shaped one."""
    text = str(exc).strip()
    if not (isinstance(exc, RuntimeError) and text.startswith("Error(s) in loading state_dict")):
        joined = " ".join(line.strip() for line in text.splitlines() if line.strip())
        return f"{type(exc).__name__}: {joined if len(joined) <= 400 else joined[:400] + ' ...'}"
    parts = []
    for label, found in (("missing", re.search(r"Missing key\(s\) in state_dict: (.*)", text)),
                         ("unexpected", re.search(r"Unexpected key\(s\) in state_dict: (.*)", text))):
        keys = re.findall(r'"([^"]+)"', found.group(1)) if found else []
        if keys:
            parts.append(f"{len(keys)} tensor(s) {label} (first {keys[0]!r})")
    shapes = re.findall(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                        r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)", text)
    if shapes:
        key, theirs, ours = shapes[0]
        parts.append(f"{len(shapes)} of another shape (first {key!r}: {theirs} in the checkpoint, {ours} in the model)")
    return ("the checkpoint's tensors do not fit the model built from its settings (model / model_options or the "
            f"class count differ): {'; '.join(parts) or text.splitlines()[0]}")


def read_state_dict(uri: str, storage=None) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a local path or s3:// URI.

    ``.safetensors`` files are read with ``safetensors``; anything else with
    ``torch.load(weights_only=True)`` (no code runs). A payload wrapping the tensors in
    ``state_dict`` / ``model`` / ``model_state_dict`` (training checkpoints, the ConvNeXt
    release) is unwrapped.

    Raises:
        StorageError / ObjectNotFoundError: the file cannot be read.
        InitWeightsError: the file holds no state dict of tensors.
    """
    from minseg.io.storage import Storage

    storage = storage or Storage()
    return state_dict_of(load_tensor_file(storage.read_bytes(uri), uri, "weights file", InitWeightsError), uri)


def state_dict_of(payload: Any, uri: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded weights file's ``payload`` (:func:`read_state_dict`'s unwrapping).

    Raises:
        InitWeightsError: ``payload`` holds no state dict of tensors."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise InitWeightsError(f"{uri}: not a state dict of tensors")
    return payload


def _strip(state: dict[str, torch.Tensor], prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    cleaned = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def _rename(key: str, rules: Rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


# ---------------------------------------------------------------------------- adapting


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-layer kernel (O, 3, kh, kw) for ``in_channels`` inputs: summed over RGB for 1,
    repeated cyclically and scaled by 3/k for k (so activations keep their scale; timm's rule)."""
    source = weight.shape[1]
    if in_channels == source:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / source)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (source / in_channels)


def family_normalization(in_channels: int) -> dict[str, list[float]]:
    """ImageNet statistics for ``in_channels``: the RGB mean for grey, RGB repeated for k channels."""
    if in_channels == 1:
        return {"mean": [sum(IMAGENET_MEAN) / 3], "std": [sum(IMAGENET_STD) / 3]}
    return {"mean": [IMAGENET_MEAN[i % 3] for i in range(in_channels)],
            "std": [IMAGENET_STD[i % 3] for i in range(in_channels)]}


# ---------------------------------------------------------------------------- matching


@dataclass
class _Plan:
    report: WeightLoadReport
    tensors: dict[str, torch.Tensor]  # model name -> tensor ready to copy


def _first_conv(encoder_state: dict[str, torch.Tensor]) -> str | None:
    return next((k for k, v in encoder_state.items() if v.ndim == 4 and k.endswith("weight")), None)


def _plan(model: nn.Module, state: dict[str, torch.Tensor], source: str, part: InitPart,
          layout: WeightLayout) -> _Plan:
    encoder = model.encoder
    own = model.state_dict()
    encoder_state = encoder.state_dict()
    backbone = getattr(encoder, "backbone", "")
    encoder_rules = ENCODER_RULES.get(backbone, {}).get(layout, ())
    head_rules = HEAD_RULES.get(backbone, {}).get(layout, ())
    first_conv = _first_conv(encoder_state)
    report = WeightLoadReport(source, layout.value, part.value)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if layout is WeightLayout.MINSEG:  # a minseg model.pt: our own names, encoder under "encoder."
            target = key if key in own and (part is InitPart.MODEL or key.startswith("encoder.")) else None
        else:
            mapped = _rename(key, encoder_rules)
            target = f"encoder.{mapped}" if mapped in encoder_state else None
            if target is None and part is InitPart.MODEL:
                mapped = _rename(key, head_rules)
                target = mapped if mapped in own and not mapped.startswith("encoder.") else None
        if target is None or target.endswith("num_batches_tracked"):
            if not key.endswith("num_batches_tracked"):
                report.unexpected.append(key)
            continue
        wanted = own[target].shape
        if value.shape != wanted:
            if target == f"encoder.{first_conv}" and value.ndim == 4 and value.shape[0] == wanted[0] \
                    and value.shape[2:] == wanted[2:]:
                value = adapt_input_conv(value, wanted[1])
                rule = "summed" if wanted[1] == 1 else f"repeated, x{state[key].shape[1] / wanted[1]:.3g}"
                report.adapted.append(f"{target}: {state[key].shape[1]} -> {wanted[1]} input channels ({rule})")
            elif value.numel() == math.prod(wanted) and [d for d in value.shape if d != 1] == \
                    [d for d in wanted if d != 1]:
                value = value.reshape(wanted)  # (d, 1, 1) layer scale into (d,)
            else:
                report.shape_mismatch.append((target, tuple(wanted), tuple(value.shape)))
                continue
        tensors[target] = value
    scope = {f"encoder.{k}" for k in encoder_state} if part is InitPart.ENCODER else set(own)
    report.loaded = sorted(tensors)
    report.missing = [k for k in own if k in scope and k not in tensors and not k.endswith("num_batches_tracked")
                      and k not in {m for m, _, _ in report.shape_mismatch}]
    encoder_names = [f"encoder.{k}" for k in encoder_state if not k.endswith("num_batches_tracked")]
    report.encoder_tensors = len(encoder_names)
    report.encoder_loaded = sum(1 for k in encoder_names if k in tensors)
    return _Plan(report, tensors)


def layouts_for(model: nn.Module) -> list[WeightLayout]:
    """The layouts ``auto`` tries for this model's encoder (table order), then minseg's own."""
    backbone = getattr(model.encoder, "backbone", "")
    return list(ENCODER_RULES.get(backbone, {})) + [WeightLayout.MINSEG]


def plan_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, *,
                 part: InitPart = InitPart.ENCODER, layout: WeightLayout = WeightLayout.AUTO,
                 prefix: str = "", min_encoder_share: float = 0.9) -> _Plan:
    """Match a state dict to ``model`` (which may live on the meta device): no tensor is copied.

    Raises:
        InitWeightsError: the model has no encoder; ``prefix`` matches no key; the layout does
            not apply to this backbone; less than ``min_encoder_share`` of the encoder matched.
    """
    if getattr(model, "encoder", None) is None:
        raise InitWeightsError(f"{source}: {type(model).__name__} has no encoder to initialise")
    state = _strip(state, ("module.", "_orig_mod."))
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise InitWeightsError(f"{source}: no tensor name starts with prefix {prefix!r}")
    candidates = layouts_for(model)
    if layout is not WeightLayout.AUTO:
        if layout not in candidates:
            backbone = getattr(model.encoder, "backbone", "?")
            raise InitWeightsError(f"{source}: layout {layout.value!r} has no rules for the {backbone} backbone of "
                                   f"{type(model).__name__}; choose from {', '.join(c.value for c in candidates)}")
        candidates = [layout]
    plans = [_plan(model, state, source, part, candidate) for candidate in candidates]
    best = max(plans, key=lambda p: p.report.encoder_loaded)  # first of equals: table order
    report = best.report
    if report.encoder_share < min_encoder_share:
        missing = [m for m in report.missing if m.startswith("encoder.")]
        # names that match with other shapes: another width or depth of the same architecture, most often
        shapes = [f"{name} {list(mine)} here, {list(theirs)} in the file"
                  for name, mine, theirs in report.shape_mismatch]
        raise InitWeightsError(
            f"{source}: only {report.encoder_loaded} of {report.encoder_tensors} encoder tensors of "
            f"{type(model).__name__} fit ({report.encoder_share:.0%} < min_encoder_share {min_encoder_share:.0%}); "
            f"is this the right file? Best layout tried: {report.layout}; e.g. missing "
            f"{', '.join(missing[:4]) or '-'}; not used from the file: {', '.join(report.unexpected[:4]) or '-'}"
            + (f"; {len(shapes)} named alike with other shapes (another width or depth?), e.g. "
               f"{'; '.join(shapes[:2])}" if shapes else "")
        )
    return best


def load_pretrained(model: nn.Module, uri: str, *, part: InitPart = InitPart.ENCODER,
                    layout: WeightLayout = WeightLayout.AUTO, prefix: str = "", min_encoder_share: float = 0.9,
                    storage=None) -> WeightLoadReport:
    """Initialise ``model`` (its encoder, or the whole model) from a checkpoint file.

    Args:
        model: a ``MinsegModel`` with an ``encoder``.
        uri: local path or ``s3://`` URI of the checkpoint (``.pt``/``.pth``/``.bin``/``.ckpt``/``.safetensors``).
        part: ``encoder`` loads only the encoder; ``model`` also the rest where names and shapes fit.
        layout: the file's naming (``auto``: the layout that fits best).
        prefix: stripped from the file's names first (e.g. ``"backbone."``); names without it are ignored.
        min_encoder_share: refuse below this fraction of encoder tensors loaded.

    Returns:
        the report (also what the member's history and members table show).

    Raises:
        InitWeightsError: unreadable file, or too little of the encoder fits (names the file).
    """
    state = read_state_dict(uri, storage)
    plan = plan_weights(model, state, uri, part=part, layout=layout, prefix=prefix,
                        min_encoder_share=min_encoder_share)
    with torch.no_grad():
        own = model.state_dict()
        for name, value in plan.tensors.items():
            own[name].copy_(value.to(own[name].dtype))
    return plan.report


def weights_normalization(uri: str, layout: str, in_channels: int, storage=None) -> dict[str, list[float]] | None:
    """The per-channel statistics a member initialised from ``uri`` should normalise with:
    ImageNet's for the public layouts; for a minseg checkpoint, the statistics recorded beside it
    (``metrics.json``), or None when there are none."""
    if WeightLayout(layout) is not WeightLayout.MINSEG:
        return family_normalization(in_channels)
    from minseg.io.storage import ObjectNotFoundError, Storage, join_uri

    storage = storage or Storage()
    directory = uri.rstrip("/").rsplit("/", 1)[0]
    try:
        recorded = json.loads(storage.read_text(join_uri(directory, "metrics.json"))).get("normalization")
    except (ObjectNotFoundError, ValueError):
        return None
    if recorded and len(recorded.get("mean", [])) == in_channels:
        return {"mean": list(recorded["mean"]), "std": list(recorded["std"])}
    return None


def choose_normalization(mode: InitNormalization, report_layout: str, uri: str, in_channels: int,
                         data_normalization: dict[str, list[float]], storage=None,
                         reads_image: bool = True) -> tuple[dict, str]:
    """(statistics, how they were chosen) for a member initialised from weights.

    ``auto`` follows the weights when their statistics are known and the pretrained encoder
    reads the member's input (``reads_image``; not MFAF, whose backbone reads its stem) as
    image channels (1, 3 or a multiple of 3); otherwise the data's. ``weights`` insists.

    Raises:
        InitWeightsError: ``weights`` where the weights' statistics do not apply or are unknown.
    """
    mode = InitNormalization(mode)
    if mode is InitNormalization.DATA:
        return data_normalization, "data (measured on the training split)"
    image_like = reads_image and (in_channels in (1, 3) or in_channels % 3 == 0)
    stats = weights_normalization(uri, report_layout, in_channels, storage) if image_like else None
    if stats is None:
        if mode is InitNormalization.WEIGHTS:
            why = "its encoder does not read the input image" if not image_like else \
                f"the weights' statistics are unknown for {in_channels} channels"
            raise InitWeightsError(f"{uri}: normalization 'weights' asked for, but {why}")
        return data_normalization, "data (the weights' statistics do not apply)"
    family = "recorded with the checkpoint" if WeightLayout(report_layout) is WeightLayout.MINSEG else "ImageNet"
    return stats, f"weights ({family})"
