"""The ensemble runtime's per-member normalisation: a member trained on other statistics
(pretrained encoders: ImageNet's) sees exactly what it saw in training."""

import numpy as np
import pytest
import torch

from minseg.ensemble.runtime import MemberRef, Renormalise, with_member_normalization
from minseg.ensemble.sliding import normalise
from minseg.models import build_model
from minseg.models.registry import list_models
from minseg.models.pretrained import family_normalization

DATA = {"mean": [120.0, 100.0, 90.0], "std": [40.0, 35.0, 30.0]}


def test_member_statistics_are_applied_on_top_of_the_ensemble_normalisation():
    torch.manual_seed(0)
    model = build_model("unet", num_classes=3, width=0.125).eval()
    image = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    imagenet = family_normalization(3)
    members = [MemberRef("pre", "unet", "x", {}, imagenet), MemberRef("plain", "unet", "y", {}, DATA),
               MemberRef("old", "unet", "z", {}, None)]
    wrapped = with_member_normalization([model, model, model], members, DATA["mean"], DATA["std"])
    assert isinstance(wrapped[0], Renormalise) and wrapped[1] is model and wrapped[2] is model
    with torch.no_grad():
        ours = wrapped[0](normalise(image, DATA["mean"], DATA["std"], torch.device("cpu")))
        direct = model(normalise(image, imagenet["mean"], imagenet["std"], torch.device("cpu")))
    assert torch.allclose(ours, direct, atol=1e-5)
    assert wrapped[0].task == model.task


def test_member_statistics_need_a_runtime_that_normalises():
    model = build_model("unet", num_classes=2, width=0.125)
    member = MemberRef("pre", "unet", "x", {}, family_normalization(3))
    with pytest.raises(ValueError, match="member 'pre' was trained with its own normalisation"):
        with_member_normalization([model], [member], None, None)
    with pytest.raises(ValueError, match="member 'pre' normalises 3 channels, the ensemble 1"):
        with_member_normalization([model], [member], [100.0], [50.0])


def test_members_that_do_not_fit_their_weights_are_found_on_s3_from_the_archive_s_pickle_alone(s3):
    """``check_members_fit`` on S3 reads the archive's directory and pickle by ranged reads, not the weights."""
    import io

    from minseg.ensemble.runtime import MemberLoadError, check_members_fit

    storage = s3.storage()
    buffer = io.BytesIO()
    torch.save(build_model("unet", num_classes=3, width=0.5).state_dict(), buffer)
    storage.write_bytes(s3.uri("run/m/model.pt"), buffer.getvalue())
    assert buffer.tell() > 4_000_000  # the weights dwarf what the check reads
    read = []
    real = storage.client.get_object

    def counted(**kwargs):
        response = real(**kwargs)
        read.append(int(response["ContentLength"]))
        return response

    storage.client.get_object = counted
    check_members_fit([MemberRef("m", "unet", s3.uri("run/m"), {"width": 0.5})], 3, storage)
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 10):  # meta loads skip the bytes since
        assert read and sum(read) < buffer.tell() / 2
    with pytest.raises(MemberLoadError, match=r"member 'm' \(unet, s3://.*model.pt\) cannot be loaded"):
        check_members_fit([MemberRef("m", "unet", s3.uri("run/m"), {"width": 0.25})], 3, storage)


@pytest.mark.parametrize("entry", list_models(), ids=lambda entry: entry.name)
def test_every_registered_model_builds_on_the_meta_device_and_takes_its_own_weights_there(entry):
    """``check_members_fit`` builds each member on the meta device: a learner that computes on its tensors while
    built (``.item()``) would refuse every manifest naming it."""
    spec = entry.input_spec
    with torch.device("meta"):
        model = build_model(entry.name, num_classes=spec.num_classes or 3, in_channels=spec.channels)
    model.load_state_dict({k: torch.empty_like(v) for k, v in model.state_dict().items()}, assign=True)


def test_a_member_that_cannot_be_loaded_is_one_line_naming_member_and_file(tmp_path):
    """Deleted, empty, truncated weights, or a model / model_options that do not fit them: a MemberLoadError
    naming the member and the file (the driver checks the cheap cases before starting actors)."""
    from minseg.ensemble.runtime import MemberLoadError, check_member_files, check_members_fit, load_members
    from minseg.io.storage import Storage

    torch.manual_seed(0)
    data = tmp_path / "m" / "model.pt"
    data.parent.mkdir()
    torch.save(build_model("unet", num_classes=3, width=0.125).state_dict(), data)
    good = MemberRef("m", "unet", str(data.parent), {"width": 0.125})
    storage = Storage()
    check_member_files([good], storage)
    assert len(load_members([good], 3, storage)) == 1
    wide = MemberRef("m", "unet", str(data.parent), {"width": 0.25})
    with pytest.raises(MemberLoadError, match=r"member 'm' \(unet, .*model.pt\) cannot be loaded: the checkpoint's "
                                              r"tensors do not fit the model built from its settings \(model / "
                                              r"model_options or the class count differ\): \d+ of another shape "
                                              r"\(first '[\w.]+': \[\d+(, \d+)*\] in the checkpoint, \[\d+(, \d+)*\] in "
                                              r"the model\)") as error:
        load_members([wide], 3, storage)
    assert "\n" not in str(error.value) and len(str(error.value)) < 700
    # the same found on the driver, on the meta device, before any actor starts (and a class count that differs)
    check_members_fit([good], 3, storage)
    for member, classes in ((wide, 3), (good, 4), (MemberRef("m", "res_unet", str(data.parent), {}), 3)):
        with pytest.raises(MemberLoadError, match=r"member 'm' \(\w+, .*model.pt\) cannot be loaded: the checkpoint's "
                                                  r"tensors do not fit .*: \d+ (tensor\(s\) missing|of another)"):
            check_members_fit([member], classes, storage)
    with pytest.raises(MemberLoadError, match="cannot be loaded: .*does not take option"):
        check_members_fit([MemberRef("m", "unet", str(data.parent), {"widht": 0.125})], 3, storage)
    original = data.read_bytes()
    data.write_bytes(original[: len(original) // 2])
    with pytest.raises(MemberLoadError, match="member 'm' .*model.pt.* not a readable weights file"):
        load_members([good], 3, storage)
    # bytes that are no archive of tensors: torch's advice to load them with weights_only=False (running whatever
    # code they hold) is not passed on
    data.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(MemberLoadError, match=r"not a file of tensors only \(.+\); minseg never loads one that could "
                                              r"run code") as error:
        load_members([good], 3, storage)
    assert "weights_only" not in str(error.value)
    data.write_bytes(original[: len(original) // 2])
    with pytest.raises(MemberLoadError, match=r"member 'm': .*model.pt: damaged \(.*a truncated or interrupted copy"):
        check_member_files([good], storage)  # found on the driver: no actor starts to fail on it
    data.write_bytes(b"")
    with pytest.raises(MemberLoadError, match="member 'm': .*model.pt: empty"):
        check_member_files([good], storage)
    data.unlink()
    with pytest.raises(MemberLoadError, match="member 'm': .*model.pt: no such file"):
        check_member_files([good], storage)
