"""Pretrained checkpoints in the public layouts load into our encoders and compute what the
layout's own network computes.

The layouts' tensor names and shapes (tests/fixtures/weight_layouts.json) were read off
torchvision 0.29 and timm 1.0 models and the original ConvNeXt release; the tensors are
generated here. Each reference forward below is written against the layout's own names,
independently of minseg's name rules, and must agree bit for bit (CPU, fp32).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minseg.enums import InitPart, WeightLayout
from minseg.models import InitWeightsError, build_model
from minseg.models.pretrained import ENCODER_RULES, adapt_input_conv, family_normalization, load_pretrained, plan_weights

LAYOUTS = json.loads((Path(__file__).parents[1] / "fixtures" / "weight_layouts.json").read_text())["layouts"]


def layout_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors of a layout's exact names and shapes, scaled so deep networks stay finite."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in LAYOUTS[name]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = torch.randn(shape, generator=generator) * 0.1
        elif len(shape) == 1:  # norm scales, layer scale
            state[key] = 1.0 + torch.randn(shape, generator=generator) * 0.1
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    return state


# ---------------------------------------------------------------- reference forwards


def bn(x, s, p):
    return F.batch_norm(x, s[p + "running_mean"], s[p + "running_var"], s[p + "weight"], s[p + "bias"], False, 0.0, 1e-5)


def ln2d(x, s, p, eps=1e-6):
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], s[p + "weight"], s[p + "bias"], eps).permute(0, 3, 1, 2)


def resnet_reference(s, x, blocks):
    """torchvision / timm ResNet: stem output and layers 1-4."""
    bottleneck = "layer1.0.conv3.weight" in s
    y = F.relu(bn(F.conv2d(x, s["conv1.weight"], stride=2, padding=3), s, "bn1."))
    outputs = [y]
    y = F.max_pool2d(y, 3, 2, 1)
    for layer, count in enumerate(blocks, start=1):
        for index in range(count):
            p = f"layer{layer}.{index}."
            stride = 2 if layer > 1 and index == 0 else 1
            identity = y
            if p + "downsample.0.weight" in s:
                identity = bn(F.conv2d(y, s[p + "downsample.0.weight"], stride=stride), s, p + "downsample.1.")
            if bottleneck:
                z = F.relu(bn(F.conv2d(y, s[p + "conv1.weight"]), s, p + "bn1."))
                z = F.relu(bn(F.conv2d(z, s[p + "conv2.weight"], stride=stride, padding=1), s, p + "bn2."))
                z = bn(F.conv2d(z, s[p + "conv3.weight"]), s, p + "bn3.")
            else:
                z = F.relu(bn(F.conv2d(y, s[p + "conv1.weight"], stride=stride, padding=1), s, p + "bn1."))
                z = bn(F.conv2d(z, s[p + "conv2.weight"], padding=1), s, p + "bn2.")
            y = F.relu(z + identity)
        outputs.append(y)
    return outputs


def vgg_reference(s, x, batch_norm):
    """VGG16 ``features``: the activation before each of the four pools, and the last one."""
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    index, outputs = 0, []
    for item in plan:
        if item == "M":
            outputs.append(x)
            x = F.max_pool2d(x, 2, 2)
            index += 1
            continue
        x = F.conv2d(x, s[f"features.{index}.weight"], s[f"features.{index}.bias"], padding=1)
        index += 1
        if batch_norm:
            x = bn(x, s, f"features.{index}.")
            index += 1
        x = F.relu(x)
        index += 1
    return outputs + [x]


def shufflenet_reference(s, x):
    """torchvision ShuffleNetV2 x1.0: outputs of stage2, stage3, stage4."""

    def shuffle(t):
        n, c, h, w = t.shape
        return t.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    y = F.relu(bn(F.conv2d(x, s["conv1.0.weight"], stride=2, padding=1), s, "conv1.1."))
    y = F.max_pool2d(y, 3, 2, 1)
    outputs = []
    for stage, repeats in (("stage2", 4), ("stage3", 8), ("stage4", 4)):
        for index in range(repeats):
            p = f"{stage}.{index}."
            stride = 2 if index == 0 else 1
            if stride == 2:
                c = y.shape[1]
                left = bn(F.conv2d(y, s[p + "branch1.0.weight"], stride=2, padding=1, groups=c), s, p + "branch1.1.")
                left = F.relu(bn(F.conv2d(left, s[p + "branch1.2.weight"]), s, p + "branch1.3."))
                right = y
            else:
                left, right = y.chunk(2, dim=1)
            right = F.relu(bn(F.conv2d(right, s[p + "branch2.0.weight"]), s, p + "branch2.1."))
            right = bn(F.conv2d(right, s[p + "branch2.3.weight"], stride=stride, padding=1, groups=right.shape[1]),
                       s, p + "branch2.4.")
            right = F.relu(bn(F.conv2d(right, s[p + "branch2.5.weight"]), s, p + "branch2.6."))
            y = shuffle(torch.cat([left, right], dim=1))
        outputs.append(y)
    return outputs


CONVNEXT_NAMES = {
    # layout -> (stem conv, stem norm, downsample norm i, downsample conv i, block prefix (stage, index), block parts)
    "torchvision": (lambda: ("features.0.0.", "features.0.1."), lambda i: (f"features.{2 * i}.0.", f"features.{2 * i}.1."),
                    lambda st, b: f"features.{2 * st + 1}.{b}.",
                    {"dw": "block.0.", "norm": "block.2.", "fc1": "block.3.", "fc2": "block.5.", "gamma": "layer_scale"}),
    "timm": (lambda: ("stem.0.", "stem.1."), lambda i: (f"stages.{i}.downsample.0.", f"stages.{i}.downsample.1."),
             lambda st, b: f"stages.{st}.blocks.{b}.",
             {"dw": "conv_dw.", "norm": "norm.", "fc1": "mlp.fc1.", "fc2": "mlp.fc2.", "gamma": "gamma"}),
    "convnext_original": (lambda: ("downsample_layers.0.0.", "downsample_layers.0.1."),
                          lambda i: (f"downsample_layers.{i}.0.", f"downsample_layers.{i}.1."),
                          lambda st, b: f"stages.{st}.{b}.",
                          {"dw": "dwconv.", "norm": "norm.", "fc1": "pwconv1.", "fc2": "pwconv2.", "gamma": "gamma"}),
}


def convnext_reference(s, x, layout):
    """ConvNeXt-T features (no head) in the layout's own names."""
    stem, down, block, parts = CONVNEXT_NAMES[layout]
    conv, norm = stem()
    x = ln2d(F.conv2d(x, s[conv + "weight"], s[conv + "bias"], stride=4), s, norm)
    for stage, depth in enumerate((3, 3, 9, 3)):
        if stage:
            norm, conv = down(stage)
            x = F.conv2d(ln2d(x, s, norm), s[conv + "weight"], s[conv + "bias"], stride=2)
        for index in range(depth):
            p = block(stage, index)
            y = F.conv2d(x, s[p + parts["dw"] + "weight"], s[p + parts["dw"] + "bias"], padding=3, groups=x.shape[1])
            y = y.permute(0, 2, 3, 1)
            y = F.layer_norm(y, y.shape[-1:], s[p + parts["norm"] + "weight"], s[p + parts["norm"] + "bias"], 1e-6)
            y = F.linear(F.gelu(F.linear(y, s[p + parts["fc1"] + "weight"], s[p + parts["fc1"] + "bias"])),
                         s[p + parts["fc2"] + "weight"], s[p + parts["fc2"] + "bias"])
            y = s[p + parts["gamma"]].reshape(-1) * y
            x = x + y.permute(0, 3, 1, 2)
    return x


class Holder(nn.Module):
    """Just an encoder, as the loader sees a member."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder


def _save(tmp_path, state, name="weights.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


# ------------------------------------------------------------------------- per layout

CASES = [
    # (fixture, model name, options, reference)
    ("torchvision/resnet50", "res_unet", {}, "resnet50"),
    ("timm/resnet50", "res_unet", {}, "resnet50"),
    ("torchvision/resnet18", "mfaf", {"in_channels": 80}, "resnet18"),  # tested on the encoder alone below
    ("timm/resnet18", "mfaf", {"in_channels": 80}, "resnet18"),
    ("torchvision/vgg16", "vgg16_unet", {}, "vgg16"),
    ("timm/vgg16", "vgg16_unet", {}, "vgg16"),
    ("torchvision/vgg16_bn", "vgg16_unet", {"batch_norm": True}, "vgg16_bn"),
    ("timm/vgg16_bn", "vgg16_unet", {"batch_norm": True}, "vgg16_bn"),
    ("torchvision/shufflenet_v2_x1_0", "mfaf", {"backbone": "shufflenetv2"}, "shufflenet"),
    ("torchvision/convnext_tiny", "convnext_eca", {"eca": False}, "convnext"),
    ("timm/convnext_tiny", "convnext_eca", {"eca": False}, "convnext"),
    ("convnext_original/convnext_tiny", "convnext_eca", {"eca": False}, "convnext"),
]


def _encoder_for(reference: str, options: dict):
    from minseg.models.resnet import ResNetEncoder
    from minseg.models.shufflenet import ShuffleNetV2Encoder
    from minseg.models.vgg_unet import VGGEncoder
    from minseg.enums import DepthPreset

    if reference.startswith("resnet"):
        return ResNetEncoder(reference, 3)
    if reference.startswith("vgg16"):
        return VGGEncoder(3, 1.0, DepthPreset.PAPER, batch_norm=reference == "vgg16_bn")
    if reference == "shufflenet":
        return ShuffleNetV2Encoder(3)
    return build_model("convnext_eca", num_classes=5, **options).encoder


@pytest.mark.parametrize("fixture,model_name,options,reference", CASES, ids=[c[0] for c in CASES])
def test_public_layout_loads_and_computes_as_its_network(tmp_path, fixture, model_name, options, reference):
    layout = WeightLayout(fixture.split("/")[0])
    state = layout_state(fixture)
    uri = _save(tmp_path, state)

    # 1. the member model that uses this backbone: every encoder tensor loads, layout found by itself
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=5, **options)
    report = load_pretrained(model, uri)
    rules = ENCODER_RULES[model.encoder.backbone]
    assert report.layout in {other.value for other in rules if rules[other] == rules[layout]}  # timm ResNet = torchvision's
    assert report.encoder_loaded == report.encoder_tensors and not [m for m in report.missing if m.startswith("encoder.")]
    if options.get("in_channels", 3) != 3 or model_name == "mfaf":
        assert report.adapted  # the MFAF backbone reads the stem's channels, not RGB

    # 2. the encoder alone, reading RGB: same numbers as the layout's own network
    holder = Holder(_encoder_for(reference, options)).eval()
    assert load_pretrained(holder, uri).encoder_share == 1.0
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = holder.encoder(x)
        if reference.startswith("resnet"):
            expected = resnet_reference(state, x, (3, 4, 6, 3) if reference == "resnet50" else (2, 2, 2, 2))
        elif reference.startswith("vgg16"):
            expected = vgg_reference(state, x, reference == "vgg16_bn")
        elif reference == "shufflenet":
            expected = shufflenet_reference(state, x)
        else:
            expected = [convnext_reference(state, x, layout.value)]
            ours = [ours]
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected):
        assert torch.equal(mine, theirs)


def test_whole_model_loads_the_head_where_it_fits_and_reports_the_rest(tmp_path):
    uri = _save(tmp_path, layout_state("timm/convnext_tiny"))
    model = build_model("convnext_eca", num_classes=4)  # ECA on: four ECA kernels the file cannot have
    report = load_pretrained(model, uri, part=InitPart.MODEL)
    assert "norm.weight" in report.loaded and "norm.bias" in report.loaded
    assert {k for k, _, _ in report.shape_mismatch} == {"head.weight", "head.bias"}  # 1000 classes vs 4: expected
    assert len(report.missing) == 4 and all(m.startswith("encoder.stages.") for m in report.missing)  # ECA kernels
    assert report.encoder_tensors - report.encoder_loaded == 4
    assert "shape mismatch: head.weight model (4, 768) vs file (1000, 768)" in report.summary()


def test_wrong_file_is_refused_naming_it(tmp_path):
    uri = _save(tmp_path, layout_state("torchvision/resnet50"), "resnet50-imagenet.pth")
    with pytest.raises(InitWeightsError, match=r"resnet50-imagenet\.pth: only 0 of .* encoder tensors of ConvNeXtECA"):
        load_pretrained(build_model("convnext_eca", num_classes=3, width=0.25, depth="tiny"), uri)
    vgg_bn = _save(tmp_path, layout_state("torchvision/vgg16_bn"), "vgg16_bn.pth")
    with pytest.raises(InitWeightsError, match="is this the right file"):
        load_pretrained(build_model("vgg16_unet", num_classes=3), vgg_bn)  # BN indices do not fit plain VGG16
    # the same architecture at another width: every name fits, no shape does; the message says which
    wider = tmp_path / "half_unet_w05.pt"
    torch.save(build_model("half_unet", num_classes=3, width=0.5).state_dict(), wider)
    with pytest.raises(InitWeightsError, match=r"20 named alike with other shapes \(another width or depth\?\), e\.g\. "
                                               r"encoder\.stages\.0\.0\.weight \[16, 3, 3, 3\] here, \[32, 3, 3, 3\]"):
        load_pretrained(build_model("half_unet", num_classes=3, width=0.25), str(wider))
    with pytest.raises(InitWeightsError, match="layout 'timm' has no rules for the shufflenetv2 backbone"):
        load_pretrained(build_model("mfaf", num_classes=2, backbone="shufflenetv2"), vgg_bn, layout=WeightLayout.TIMM)
    (tmp_path / "notes.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(InitWeightsError, match="notes.pt: not a readable weights file"):
        load_pretrained(build_model("res_unet", num_classes=2, width=0.25, depth="tiny"), str(tmp_path / "notes.pt"))
    with pytest.raises(InitWeightsError, match="no tensor name starts with prefix 'backbone.'"):
        load_pretrained(build_model("vgg16_unet", num_classes=3), vgg_bn, prefix="backbone.")


def test_six_channel_and_grey_inputs_adapt_the_first_convolution(tmp_path):
    state = layout_state("torchvision/resnet50")
    uri = _save(tmp_path, state)
    six = build_model("res_unet", num_classes=3, in_channels=6)
    report = load_pretrained(six, uri)
    assert report.adapted == ["encoder.conv1.weight: 3 -> 6 input channels (repeated, x0.5)"]
    rgb = state["conv1.weight"]
    assert torch.equal(six.encoder.conv1.weight, torch.cat([rgb, rgb], 1) * 0.5)
    with torch.no_grad():
        assert six.eval()(torch.randn(1, 6, 64, 64)).shape == (1, 3, 64, 64)
    # PPL + XPL as the same scene twice: the adapted network sees what RGB alone gave
    from minseg.models.resnet import ResNetEncoder

    holder_rgb, holder_six = Holder(ResNetEncoder("resnet50", 3)).eval(), Holder(ResNetEncoder("resnet50", 6)).eval()
    load_pretrained(holder_rgb, uri)
    load_pretrained(holder_six, uri)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(holder_six.encoder(torch.cat([x, x], 1))[-1], holder_rgb.encoder(x)[-1], atol=1e-4)
    grey = build_model("vgg16_unet", num_classes=2, in_channels=1)
    report = load_pretrained(grey, _save(tmp_path, layout_state("timm/vgg16"), "vgg.pt"))
    assert report.adapted == ["encoder.features.0.weight: 3 -> 1 input channels (summed)"]
    assert torch.allclose(adapt_input_conv(torch.ones(2, 3, 1, 1), 1), torch.full((2, 1, 1, 1), 3.0))
    assert family_normalization(6)["mean"][3:] == family_normalization(3)["mean"]


def test_safetensors_and_s3_and_minseg_layout(tmp_path, s3):
    from safetensors.torch import save as save_safetensors

    trained = build_model("res_unet", num_classes=2, width=0.25, depth="tiny")
    storage = s3.storage()
    storage.write_bytes(s3.uri("runs/a/model.safetensors"), save_safetensors(
        {k: v.contiguous() for k, v in trained.state_dict().items()}))
    fresh = build_model("res_unet", num_classes=2, width=0.25, depth="tiny")
    report = load_pretrained(fresh, s3.uri("runs/a/model.safetensors"), storage=storage)
    assert report.layout == "minseg" and report.encoder_share == 1.0
    assert all(k.startswith("encoder.") for k in report.loaded)
    assert any(k.startswith("up4.") for k in report.unexpected)  # the decoder is not part of the encoder
    for key, value in trained.encoder.state_dict().items():
        assert torch.equal(fresh.encoder.state_dict()[key], value)
    assert not torch.equal(fresh.classifier.weight, trained.classifier.weight)
    whole = build_model("res_unet", num_classes=2, width=0.25, depth="tiny")
    load_pretrained(whole, s3.uri("runs/a/model.safetensors"), part=InitPart.MODEL, storage=storage)
    assert torch.equal(whole.classifier.weight, trained.classifier.weight)


def test_matching_needs_no_tensors_on_the_model():
    """The driver checks files against members on the meta device before any worker starts."""
    with torch.device("meta"):
        model = build_model("res_unet", num_classes=9)
    plan = plan_weights(model, layout_state("torchvision/resnet50"), "r50.pth")
    assert plan.report.encoder_share == 1.0 and plan.report.unexpected == ["fc.weight", "fc.bias"]


def test_wrapped_training_checkpoint_is_unwrapped(tmp_path):
    state = layout_state("convnext_original/convnext_tiny")
    buffer = io.BytesIO()
    torch.save({"model": state, "epoch": torch.tensor(300)}, buffer)
    (tmp_path / "convnext_tiny_1k_224.pth").write_bytes(buffer.getvalue())
    model = build_model("convnext_eca", num_classes=7)
    report = load_pretrained(model, str(tmp_path / "convnext_tiny_1k_224.pth"))
    assert report.layout == "convnext_original" and report.encoder_tensors - report.encoder_loaded == 4


def test_eca_trains_while_the_pretrained_backbone_is_frozen():
    model = build_model("convnext_eca", num_classes=3, width=0.25, depth="tiny")
    model.freeze_encoder()
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    eca = {n for n, m in model.encoder.named_modules() if type(m).__name__ == "ECA"}
    assert trainable == {f"{name}.conv.weight" for name in eca} and len(eca) == 4
    model.unfreeze_encoder()
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_mfaf_normalises_with_the_data_whatever_its_channel_count():
    """Its backbone reads the stem's features: ImageNet statistics never apply to evidence windows."""
    from minseg.models.pretrained import choose_normalization

    data = {"mean": [0.0] * 12, "std": [1.0] * 12}
    model = build_model("mfaf", num_classes=2, in_channels=12, width=0.25, depth="tiny")
    stats, how = choose_normalization("auto", "torchvision", "r18.pth", 12, data, reads_image=model.encoder_reads_input)
    assert stats == data and how.startswith("data")
    with pytest.raises(InitWeightsError, match="its encoder does not read the input image"):
        choose_normalization("weights", "torchvision", "r18.pth", 12, data, reads_image=False)
    stats, how = choose_normalization("auto", "torchvision", "r50.pth", 6, data, reads_image=True)
    assert stats == family_normalization(6) and how == "weights (ImageNet)"


def test_mfaf_checkpoints_from_before_torchvision_names_still_load():
    model = build_model("mfaf", num_classes=2, in_channels=10, width=0.25, depth="tiny")
    old = {}
    for key, value in model.state_dict().items():
        old_key = key.replace("encoder.conv1.", "encoder.stem.0.").replace("encoder.bn1.", "encoder.stem.1.")
        for i in range(4):
            old_key = old_key.replace(f"encoder.layer{i + 1}.", f"encoder.layers.{i}.")
        old[old_key] = value.clone() + 1
    assert "encoder.layers.0.0.conv1.weight" in old
    fresh = build_model("mfaf", num_classes=2, in_channels=10, width=0.25, depth="tiny")
    fresh.load_state_dict(old)
    assert torch.equal(fresh.encoder.layer1[0].conv1.weight, old["encoder.layers.0.0.conv1.weight"])
    assert fresh.attention_placement == "stem"  # the wiring those weights were trained with


def test_eca_after_every_block_keeps_the_pretrained_names(tmp_path):
    """The ConvNeXt paper's text allows ECA after each stage (default) or after each block."""
    uri = _save(tmp_path, layout_state("torchvision/convnext_tiny"))
    per_block = build_model("convnext_eca", num_classes=3, eca_placement="block")
    eca = [n for n, m in per_block.named_modules() if type(m).__name__ == "ECA"]
    assert len(eca) == 3 + 3 + 9 + 3 and all(n.endswith(".eca") for n in eca)
    report = load_pretrained(per_block, uri)
    assert report.encoder_tensors - report.encoder_loaded == 18  # the ECA kernels only: block names unchanged
    per_block.freeze_encoder()
    assert {n for n, p in per_block.encoder.named_parameters() if p.requires_grad} == {f"{n[8:]}.conv.weight" for n in eca}
    with torch.no_grad():
        assert per_block.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
