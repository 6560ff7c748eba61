"""One parametrised tester over the whole registry, plus architecture-specific checks."""

import pytest
import torch
from torch import nn

from minseg.enums import Task
from minseg.models import build_model, list_models

ALL = [entry.name for entry in list_models()]
TINY = dict(width=0.125, depth="tiny")


def tiny(name, num_classes=3, **options):
    entry = next(e for e in list_models() if e.name == name)
    kwargs = {k: v for k, v in TINY.items() if k in entry.options()}
    in_channels = entry.input_spec.channels
    return build_model(name, num_classes=num_classes, in_channels=in_channels, **{**kwargs, **options}), in_channels


def logits_of(output):
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [(37, 45), (64, 64)])
def test_forward_backward_any_size(name, size):
    torch.manual_seed(0)
    model, cin = tiny(name)
    x = torch.randn(2, cin, *size)
    logits = logits_of(model(x))
    expected = (2, 3, *size) if model.task is Task.SEGMENTATION else (2, 3)
    assert tuple(logits.shape) == expected
    assert torch.isfinite(logits).all()
    logits.float().square().mean().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    with_grad = [p for p in trainable if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) > 0.9 * len(trainable), f"{len(trainable) - len(with_grad)} parameters got no gradient"


@pytest.mark.parametrize("name", ALL)
def test_eval_output_channels_last_and_predict(name):
    model, cin = tiny(name)
    model.eval()
    x = torch.randn(1, cin, 40, 48)
    reference = model(x)
    channels_last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)
    probabilities = model.predict(x)
    torch.testing.assert_close(probabilities.sum(1), torch.ones_like(probabilities.sum(1)))
    assert not model.training


@pytest.mark.parametrize("name", ALL)
def test_fold_batch_norm_keeps_the_function(name):
    from minseg.models.base import fold_batch_norm

    torch.manual_seed(1)
    model, cin = tiny(name)
    with pytest.raises(ValueError, match="training mode"):
        fold_batch_norm(model)
    norms = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for norm in norms:  # statistics as after training, so a wrong fold shows
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 1.5), norm.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(2, cin, 40, 48)
    with torch.no_grad():
        reference = logits_of(model(x))
        folded = fold_batch_norm(model)
        torch.testing.assert_close(logits_of(model(x)), reference, rtol=1e-4, atol=1e-4)
    left = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    assert len(left) == len(norms) - folded
    assert folded > 0 or not norms, f"{name}: no BatchNorm folded"


@pytest.mark.parametrize("name", ALL)
def test_autocast_bf16(name):
    model, cin = tiny(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = logits_of(model(torch.randn(2, cin, 32, 32)))
    assert torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("name", ALL)
def test_input_errors_are_clear(name):
    model, cin = tiny(name)
    with pytest.raises(ValueError, match=f"built for {cin} input channels, got {cin + 1}"):
        model(torch.randn(1, cin + 1, 32, 32))
    with pytest.raises(ValueError, match=r"expects a \(N,"):
        model(torch.randn(cin, 32, 32))


def test_strict_pad_mode_names_the_multiple():
    model = build_model("res_unet", num_classes=2, pad_mode="strict", **TINY)
    with pytest.raises(ValueError, match="multiples of 32, got 40x64"):
        model(torch.randn(1, 3, 40, 64))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("name", [e.name for e in list_models() if e.name not in ("mfaf",)])
def test_freeze_encoder_keeps_batchnorm_statistics(name):
    model, cin = tiny(name)
    model.freeze_encoder()
    model.train()
    encoder_bns = [m for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [bn.running_mean.clone() for bn in encoder_bns]
    out = logits_of(model(torch.randn(2, cin, 64, 64) * 3 + 1))
    out.float().mean().backward()
    new = {id(p) for m in model.encoder.modules() if getattr(m, "trains_when_frozen", False) for p in m.parameters()}
    assert all(p.grad is None for p in model.encoder.parameters() if id(p) not in new)  # ECA (new) trains on
    for bn, old in zip(encoder_bns, before):
        assert not bn.training
        assert torch.equal(bn.running_mean, old)
    model.unfreeze_encoder()
    model.train()
    assert all(bn.training for bn in encoder_bns)
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_res_unet_full_size_counts():
    model = build_model("res_unet", num_classes=9)
    assert abs(model.parameter_count() - 43.9e6) < 0.05e6  # minseg's count (a regression guard, not the paper's)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta_model = build_model("res_unet", num_classes=9)
        with FlopCounterMode(display=False) as counter:
            meta_model(torch.empty(1, 3, 512, 512))
    assert abs(counter.get_total_flops() / 2e9 - 91.6) < 0.2  # minseg's count at 512x512, not the paper's


def test_res_unet_encoder_is_resnet50():
    encoder = build_model("res_unet", num_classes=9).encoder
    assert [len(layer) for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4)] == [3, 4, 6, 3]
    assert isinstance(encoder.act, nn.LeakyReLU) and encoder.act.negative_slope == 0.1


def test_stn_identity_at_init_and_learns():
    torch.manual_seed(0)
    model = build_model("res_unet", num_classes=3, stn=True, **TINY)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model.stn(x), x, atol=1e-5, rtol=1e-5)
    assert any(name.startswith("stn.") for name, _ in model.named_parameters())
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.stn.named_parameters()}
    target = torch.randint(0, 3, (2, 64, 64))
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    assert model.stn.regressor[-1].weight.grad.abs().sum() > 0
    optimiser.step()
    changed = [n for n, p in model.stn.named_parameters() if not torch.equal(p, before[n])]
    assert "regressor.3.weight" in changed and "regressor.3.bias" in changed


def test_multiresunet_block_split():
    from minseg.models.multiresunet import MultiResBlock

    block = MultiResBlock(3, 32)  # W = 1.67 * 32 = 53.44 -> 8 + 17 + 26
    assert (block.conv3[0].out_channels, block.conv5[0].out_channels, block.conv7[0].out_channels) == (8, 17, 26)
    assert block.out_channels == 51
    half = build_model("half_multiresunet", num_classes=2)
    quarter = build_model("quarter_multiresunet", num_classes=2)
    assert [len(r) for r in half.respaths] == [4, 3] and [len(r) for r in quarter.respaths] == [4]


def test_convnext_paper_layout():
    model = build_model("convnext_eca", num_classes=5)
    assert [len([b for b in s if type(b).__name__ == "ConvNeXtBlock"]) for s in model.encoder.stages] == [3, 3, 9, 3]
    assert model.encoder.out_channels == [96, 192, 384, 768]
    assert all(type(s[-1]).__name__ == "ECA" for s in model.encoder.stages)


@pytest.mark.parametrize("backbone", ["resnet18", "shufflenetv2"])
def test_mfaf_vote_and_aux_outputs(backbone):
    model = build_model("mfaf", num_classes=2, in_channels=10, backbone=backbone, width=0.25, depth="tiny")
    assert [m[0].dilation[0] for m in model.stem.branches] == [1, 6, 12, 18, 24]
    x = torch.randn(3, 10, 64, 64)
    vote, stages = model.train()(x)
    assert len(stages) == 4 if backbone == "resnet18" else len(stages) == 3
    expected = torch.stack([s.softmax(1) for s in stages]).mean(0)
    torch.testing.assert_close(vote.softmax(1), expected, rtol=1e-4, atol=1e-5)
    assert model.eval()(x).shape == (3, 2)
    assert model.attention_weights(x).shape == (3, model.stem.out_channels)
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_model("mfaf", num_classes=2, backbone="vgg")


def test_mfaf_vote_stays_fp32_under_bf16_autocast():
    """Prospectivity probabilities near 0.01 rank cells: in bf16 they move in steps of ~3 % (ties in the AUC, the
    ranked targets); the vote is a log of fp32 probabilities whatever the stages ran in."""
    model = build_model("mfaf", num_classes=2, in_channels=10, width=0.25, depth="tiny").eval()
    x = torch.randn(3, 10, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.float32


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'resunet'; registered models: .*res_unet"):
        build_model("resunet", num_classes=2)
    with pytest.raises(ValueError, match="does not take option\\(s\\) stn_enabled; its options are"):
        build_model("res_unet", num_classes=2, stn_enabled=True)


def test_mfaf_wiring_follows_the_paper_and_ablations_switch_parts_off():
    """§3.2: SE after the dilated convolutions, spatial attention at the last convolution."""
    seen = {}

    def build(**options):
        model = build_model("mfaf", num_classes=2, in_channels=10, width=0.25, depth="tiny", **options).eval()
        for name in ("channel_attention", "spatial_attention"):
            module = getattr(model, name)
            if module is not None:
                module.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0].shape[1]))
        return model

    x = torch.randn(2, 10, 32, 32)
    model = build()
    seen.clear()
    model(x)
    assert seen == {"channel_attention": model.stem.out_channels, "spatial_attention": model.encoder.out_channels[-1]}
    stem = build(attention_placement="stem")
    seen.clear()
    stem(x)
    assert seen["spatial_attention"] == stem.stem.out_channels
    assert build(channel_attention=False).channel_attention is None
    assert build(spatial_attention=False).spatial_attention is None
    plain = build(dilated=False)
    assert [b[0].dilation for b in plain.stem.branches] == [(1, 1)] and plain.stem.out_channels == model.stem.out_channels
    with pytest.raises(ValueError, match="no channel attention"):
        build(channel_attention=False).attention_weights(x)


@pytest.mark.parametrize("name", ["unet", "half_unet"])
def test_context_bins_let_far_pixels_change_a_label(name):
    """Without pyramid pooling a pixel's logits depend only on its receptive field; with ``context_bins`` they
    also depend on the far corner of the window (PSPNet / ParseNet global context): the gradient of the
    bottom-right pixels' logits reaches the top-left corner (280 px away on each axis, beyond the U-Net's
    ~190-px field) only through the pooled branches."""
    for bins, reaches in (((), False), ((1,), True), ((1, 2, 3, 6), True)):
        torch.manual_seed(0)
        model = build_model(name, num_classes=3, width=0.125, context_bins=bins).double().eval()
        x = torch.randn(1, 3, 320, 320, dtype=torch.float64, requires_grad=True)
        model(x)[..., -8:, -8:].sum().backward()
        corner = x.grad[..., :32, :32].abs().sum().item()
        assert (corner > 0) == reaches, (bins, corner)
    assert build_model(name, num_classes=3, context_bins=[1, 2]).context_bins == (1, 2)  # a YAML list
    # off by default, with the state dict of the models trained before the option existed
    assert not any(key.startswith("context.") for key in build_model(name, num_classes=3).state_dict())
    for bad in ([0], [2, 2]):
        with pytest.raises(ValueError, match="context_bins must be a list of distinct positive integers"):
            build_model(name, num_classes=3, context_bins=bad)
    for bad in ([1.5], 6):  # not a list of integers at all: refused by the option's annotation, naming it
        with pytest.raises(ValueError, match=rf"model '{name}' option context_bins: "):
            build_model(name, num_classes=3, context_bins=bad)
    assert build_model(name, num_classes=3, context_bins=["1"]).context_bins == (1,)  # text read as its type
