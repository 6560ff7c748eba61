"""Tests over the registry: every entry's input spec holds for the model it builds."""

import pytest
import torch

from minseg.enums import Task
from minseg.models import InputSpec, MinsegModel, build_model, get_entry, list_models, register_model
from minseg.models.registry import _REGISTRY

ENTRIES = list_models()
NAMES = [entry.name for entry in ENTRIES]
LIMITED = [entry.name for entry in ENTRIES if entry.input_spec.min_size > 1]
TINY = dict(width=0.125, depth="tiny")


def tiny_model(name):
    entry = get_entry(name)
    spec = entry.input_spec
    options = {k: v for k, v in TINY.items() if k in entry.options()}
    return build_model(name, num_classes=spec.num_classes or 3, in_channels=spec.channels, **options), spec


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_has_an_input_spec(name):
    entry = get_entry(name)
    assert isinstance(entry.input_spec, InputSpec)
    if isinstance(entry.builder, type) and issubclass(entry.builder, MinsegModel):
        assert entry.builder.min_size == entry.input_spec.min_size  # the model enforces what the spec says


@pytest.mark.parametrize("name", NAMES)
def test_builds_from_its_spec_on_meta(name):
    spec = get_entry(name).input_spec
    with torch.device("meta"):
        model = build_model(name, num_classes=spec.num_classes or 3, in_channels=spec.channels)
    assert (model.in_channels, model.num_classes) == (spec.channels, spec.num_classes or 3)
    assert model.parameter_count() > 0
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_option_values_are_checked_against_the_builder(name):
    """``width: 0`` (or -1) built the smallest model as if all were well; ``width: x`` failed inside the builder
    naming neither option nor model. Every entry takes a width: above 0, a number."""
    spec = get_entry(name).input_spec
    build = dict(num_classes=spec.num_classes or 3, in_channels=spec.channels)
    for width in (0, -1):
        with pytest.raises(ValueError, match=f"width must be a number above 0 .*got {float(width)}"), \
                torch.device("meta"):
            build_model(name, **build, width=width)
    with pytest.raises(ValueError, match=rf"model '{name}' option width: Input should be a valid number.*\(got 'x'\)"):
        build_model(name, **build, width="x")


def test_option_text_is_read_as_its_type():
    """YAML or --set text for a boolean: ``"false"`` is False (it switched the STN on, a non-empty string)."""
    with torch.device("meta"):
        assert build_model("res_unet", num_classes=3, stn="false").stn is None
        assert build_model("res_unet", num_classes=3, stn="true").stn is not None
    with pytest.raises(ValueError, match="model 'res_unet' option stn: Input should be a valid boolean"):
        build_model("res_unet", num_classes=3, stn="maybe")


@pytest.mark.parametrize("name", NAMES)
def test_runs_on_an_input_of_min_size(name):
    torch.manual_seed(0)
    model, spec = tiny_model(name)
    side = spec.min_size
    for batch, training in ((1, False), (2, True)):  # BatchNorm needs 2 values per channel in training
        model.train(training)
        output = model(torch.randn(batch, spec.channels, side, side))
        logits = output[0] if isinstance(output, tuple) else output
        shape = (batch, model.num_classes) + ((side, side) if model.task is Task.SEGMENTATION else ())
        assert tuple(logits.shape) == shape
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", LIMITED)
def test_refuses_an_input_below_min_size(name):
    model, spec = tiny_model(name)
    side = spec.min_size - 1
    with pytest.raises(ValueError, match=f"needs inputs of at least {spec.min_size}x{spec.min_size}, got {side}x{side}"):
        model.eval()(torch.randn(1, spec.channels, side, side))
    with pytest.raises(ValueError, match=f"got {spec.min_size}x{side}"):  # either side counts
        model.eval()(torch.randn(1, spec.channels, spec.min_size, side))


def test_declared_specs():
    assert get_entry("mfaf").input_spec == InputSpec(channels=10, num_classes=2, min_size=16)
    assert get_entry("convnext_eca").input_spec == InputSpec(min_size=32)  # 4x4 stem, then three 2x2 downsamplings
    # segmentation learners pad to their size multiple, so any size runs
    assert all(e.input_spec == InputSpec() for e in list_models(Task.SEGMENTATION))
    assert set(LIMITED) == {"mfaf", "convnext_eca"}


def test_register_model_takes_an_input_spec():
    class Probe(MinsegModel):
        def _forward(self, x):
            return x

    try:
        register_model("_probe", task=Task.SEGMENTATION, paper="-", description="-",
                       input_spec=InputSpec(channels=4, min_size=8))(Probe)
        assert get_entry("_probe").input_spec == InputSpec(channels=4, num_classes=None, min_size=8)
        assert Probe.min_size == 8 and MinsegModel.min_size == 1
        with pytest.raises(ValueError, match="at least 8x8, got 7x9"):
            Probe(1, 4)(torch.zeros(1, 4, 7, 9))
    finally:
        _REGISTRY.pop("_probe", None)
    try:
        register_model("_plain", task=Task.SEGMENTATION, paper="-", description="-")(lambda **kw: None)
        assert get_entry("_plain").input_spec == InputSpec()
    finally:
        _REGISTRY.pop("_plain", None)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(channels=0), "channels must be >= 1"),
        (dict(num_classes=0), "num_classes must be >= 1 or None"),
        (dict(min_size=0), "min_size must be >= 1"),
    ],
)
def test_input_spec_validates(fields, message):
    with pytest.raises(ValueError, match=message):
        InputSpec(**fields)
    with pytest.raises(AttributeError):
        InputSpec().channels = 4  # frozen
