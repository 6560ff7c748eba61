"""A manifest is checked when it is loaded, for what can be checked without loading a model: fusion weights that
their mode would ignore (an edited manifest would score as before) or that ``learned`` cannot use, statistics and
per-class weights of the wrong length."""

import hashlib
import json
import logging

import pytest

from minseg.ensemble.manifest import ManifestError, load_manifest
from tests.inference.conftest import write_manifest


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifests")
    return {mode: json.loads(open(write_manifest(root, mode)).read()) for mode in ("wv", "soft", "pv")}


def loads(tmp_path, document):
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(document))
    return load_manifest(str(path), verify=False)


def edited(document, mode=None, weights=None, **keys):
    document = json.loads(json.dumps(document))
    if mode:
        document["fusion"]["mode"] = mode
    if weights is not None:
        document["fusion"]["weights"] = weights
    document.update(keys)
    return document


def test_weights_must_be_the_ones_the_mode_uses(manifests, tmp_path):
    for mode in ("wv", "soft", "pv"):
        loads(tmp_path, manifests[mode])  # as written
    assert loads(tmp_path, edited(manifests["wv"], weights=[2, 1])).fusion.weights == [2, 1]  # integer rank weights
    loads(tmp_path, edited(manifests["wv"], mode="weighted_soft"))
    cases = [("wv", [1, 1], "mode 'wv' uses (the rank weights 2, 1"), ("soft", [3, 1], "mode 'soft' uses (all 1"),
             ("pv", [0.5, 0.5], "mode 'pv' uses"),
             ("weighted_soft", [1, 2], "mode 'weighted_soft' uses (the rank weights 2, 1"),
             ("soft", [[1, 1, 1], [1, 1, 1]], "mode 'soft' uses (all 1")]
    for mode, weights, message in cases:
        with pytest.raises(ManifestError, match="are not the weights " + message.replace("(", r"\(")) as error:
            loads(tmp_path, edited(manifests["soft"], mode=mode, weights=weights))
        assert "other weights need fusion.mode 'learned'" in str(error.value)


def test_learned_weights_are_finite_non_negative_and_not_all_zero(manifests, tmp_path, caplog):
    loads(tmp_path, edited(manifests["soft"], mode="learned", weights=[0.0, 2.5]))
    loads(tmp_path, edited(manifests["soft"], mode="learned", weights=[[1, 0, 2], [0, 1, 1]]))
    # a class every member weighs 0 is never predicted: a fit before 2026-12-05 could end so; loads, with a warning
    loads(tmp_path, edited(manifests["soft"], mode="learned", weights=[[1, 0, 1], [1, 0, 1]]))
    (record,) = [r for r in caplog.records if r.getMessage() == "manifest.class_never_predicted"]
    assert record.fields["classes"] == "pyrite"
    cases = [([0, 0], "are all 0: at least one member"), ([1, -1], "finite and 0 or more; got -1.0"),
             ([1, float("nan")], "finite number"), ([[0, 0, 0], [0, 0, 0]], "are all 0: at least one member"),
             ([[1, 1], [1, 1]], r"hold \[2\] weights per member for 3 classes")]
    for weights, message in cases:
        with pytest.raises(ManifestError, match=message):
            loads(tmp_path, edited(manifests["soft"], mode="learned", weights=weights))


def test_statistics_need_one_value_per_input_channel(manifests, tmp_path):
    with pytest.raises(ManifestError, match=r"normalization.mean has 2 values for 3 input channel"):
        loads(tmp_path, edited(manifests["soft"], normalization={"mean": [1.0, 2.0], "std": [1.0, 1.0, 1.0]}))
    document = edited(manifests["soft"])
    document["members"][1]["normalization"] = {"mean": [1.0] * 4, "std": [1.0] * 4}
    with pytest.raises(ManifestError, match=r"members\[1\] \('unet'\).normalization.mean has 4 values for 3"):
        loads(tmp_path, document)


def test_fitted_learned_weights_keep_every_class():
    """Coordinate ascent may not zero a class's every weight (the manifest would be refused)."""
    import numpy as np

    from minseg.ensemble.selection import fit_learned_weights

    rng = np.random.default_rng(0)
    probs = rng.random((2, 3, 500)).astype(np.float16)
    truth = np.zeros(500, np.uint8)  # only class 0: suppressing classes 1 and 2 would maximise accuracy
    weights = np.asarray(fit_learned_weights([{"probs": probs, "truth": truth}], 2, 3, "accuracy", ["a", "b", "c"],
                                             True, 255))
    assert (weights.sum(axis=0) > 0).all()


def test_the_bit_depth_travels_with_the_ensemble(manifests, tmp_path):
    """The training images' bit depth (data.bit_depth) is the manifest's: outputs of manifests written before it
    existed keep their digest at the default, another bit depth is another ensemble's outputs, and score reads its
    images with it unless its data section says theirs."""
    from minseg.config.base import validate_config
    from minseg.data.config import DataSettings
    from minseg.ensemble.score import scoring_data

    plain = loads(tmp_path, manifests["soft"])
    sixteen = loads(tmp_path, edited(manifests["soft"], bit_depth=16))
    twelve = loads(tmp_path, edited(manifests["soft"], bit_depth=12))
    assert plain.bit_depth == 16 and twelve.bit_depth == 12
    assert sixteen.digest() == plain.digest() != twelve.digest()
    with pytest.raises(ManifestError, match="bit_depth"):
        loads(tmp_path, edited(manifests["soft"], bit_depth=20))
    data = validate_config({"sources": [{"uri": str(tmp_path)}]}, DataSettings)
    assert scoring_data(data, twelve, "m.json").bit_depth == 12
    own = validate_config({"sources": [{"uri": str(tmp_path)}], "bit_depth": 14}, DataSettings)
    assert scoring_data(own, twelve, "m.json").bit_depth == 14


def test_each_image_of_a_scene_keeps_its_bit_depth_in_the_manifest(manifests, tmp_path, caplog):
    """channels[].bit_depth (a 12-bit camera's PPL beside a 16-bit BSE detector) is recorded per image: manifests
    whose images have none hash as they did before the key existed, one that has one is another ensemble, and
    score reads a folder's scenes as the manifest says, unless its data section gives one bit depth for all."""
    from minseg.config.base import validate_config
    from minseg.data.config import DataSettings, ImageChannels
    from minseg.ensemble.score import scoring_data

    channels = [ImageChannels(name="ppl").model_dump(mode="json"),
                ImageChannels(name="bse", mode="grey").model_dump(mode="json")]
    assert all("bit_depth" not in c for c in channels)
    normalization = {"mean": [120.0] * 4, "std": [60.0] * 4}
    scene = loads(tmp_path, edited(manifests["soft"], channels=channels, normalization=normalization))
    before = scene.model_dump(mode="json", exclude={"created", "metrics", "selection", "bit_depth"})
    before["channels"] = [{"name": name, "images_dir": None, "image_pattern": "{scene}", "mode": mode, "bands": None}
                          for name, mode in (("ppl", "rgb"), ("bse", "grey"))]
    before = json.dumps(before, sort_keys=True)
    assert scene.digest() == hashlib.sha256(before.encode()).hexdigest()[:16]  # the formula before the key
    camera = loads(tmp_path, edited(manifests["soft"], channels=[{**channels[0], "bit_depth": 12}, channels[1]],
                                    normalization=normalization))
    assert [g.bits(camera.bit_depth) for g in camera.channel_groups] == [12, 16]
    assert camera.digest() != scene.digest()
    with pytest.raises(ManifestError, match="bit_depth"):
        loads(tmp_path, edited(manifests["soft"], channels=[{**channels[0], "bit_depth": 7}, channels[1]],
                               normalization=normalization))
    data = validate_config({"sources": [{"uri": str(tmp_path)}]}, DataSettings)
    with caplog.at_level(logging.WARNING, logger="minseg"):
        read = scoring_data(data, camera, "m.json")
        scoring_data(data, loads(tmp_path, manifests["soft"]), "m.json")  # an RGB ensemble, a default section
    assert "score.bit_depth_differs" not in {r.getMessage() for r in caplog.records}
    assert [g.bits(read.bit_depth) for g in read.channel_groups] == [12, 16]
    assert read.image_bit_depths == ((0, "ppl", 12), (0, "bse", 16))
    own = validate_config({"sources": [{"uri": str(tmp_path)}], "bit_depth": 14}, DataSettings)
    with caplog.at_level(logging.WARNING, logger="minseg"):
        assert [g.bits(14) for g in scoring_data(own, camera, "m.json").channel_groups] == [14, 14]
    (said,) = [r.fields for r in caplog.records if r.getMessage() == "score.bit_depth_differs"]
    assert said["read"] == "14-bit" and said["ensemble"] == "bse 16-bit, ppl 12-bit"
    # images declared by the data section: each without its own reads as the ensemble's image of that name
    declared = validate_config({"sources": [{"uri": str(tmp_path), "channels": [
        {"name": "ppl", "images_dir": "p"}, {"name": "bse", "mode": "grey", "bit_depth": 14}]}]}, DataSettings)
    read = scoring_data(declared, camera, "m.json")
    assert [g.bits(read.bit_depth) for g in read.channel_groups] == [12, 14]
    assert read.channel_groups[0].images_dir == "p"


def test_select_writes_into_an_s3_prefix_that_holds_objects_as_into_a_folder(s3):
    """On S3 a folder is a prefix holding objects (or a bucket): ``--out s3://bucket/runs`` is one, as storage cp
    reads it; a new name not .json is refused; an object that is not a manifest is never replaced."""
    from minseg.ensemble.manifest import manifest_destination
    from minseg.errors import InputError

    storage = s3.storage()
    storage.write_bytes(s3.uri("runs/r1/members.json"), b'{"members": []}')
    evaluation = s3.uri("runs/r1/evaluation/ensemble")
    assert manifest_destination(s3.uri("runs"), evaluation, "fast", storage) == s3.uri("runs/manifest-fast.json")
    assert manifest_destination(f"s3://{s3.bucket}", evaluation, "fast", storage) == s3.uri("manifest-fast.json")
    assert manifest_destination(s3.uri("new/"), evaluation, "fast", storage) == s3.uri("new/manifest-fast.json")
    assert manifest_destination(None, evaluation, "fast", storage) == f"{evaluation}/manifest-fast.json"
    with pytest.raises(InputError, match="is not a .json file name"):
        manifest_destination(s3.uri("nothing-here"), evaluation, "fast", storage)
    with pytest.raises(InputError, match="exists and is not an ensemble manifest"):
        manifest_destination(s3.uri("runs/r1/members.json"), evaluation, "fast", storage)
    # another evaluation's folder (a break-it pass replaced its manifest.json, which segment and score read there,
    # with this evaluation's choice): refused, by file or by folder; this evaluation's own folder takes it
    other = s3.uri("runs/r2/evaluation/ensemble")
    storage.write_bytes(f"{other}/evaluation.json", b"{}")
    for out in (f"{other}/manifest.json", f"{other}/"):
        with pytest.raises(InputError, match=r"--out: \S+/r2/evaluation/ensemble is the folder of another evaluation"):
            manifest_destination(out, evaluation, "fast", storage)
    storage.write_bytes(f"{evaluation}/evaluation.json", b"{}")
    assert manifest_destination(f"{evaluation}/manifest.json", evaluation + "/", "fast", storage) == \
        f"{evaluation}/manifest.json"


def test_select_never_writes_into_another_evaluation_folder_on_disk(tmp_path):
    """The same on local folders; the evaluation's own folder reached through a link is its own."""
    from minseg.ensemble.manifest import manifest_destination
    from minseg.errors import InputError
    from minseg.io.storage import Storage

    mine, other = tmp_path / "run" / "evaluation" / "a", tmp_path / "run" / "evaluation" / "b"
    for folder in (mine, other):
        folder.mkdir(parents=True)
        (folder / "evaluation.json").write_text("{}")
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(InputError, match="is the folder of another evaluation"):
        manifest_destination(str(other / "manifest-x.json"), str(mine), "x", Storage())
    assert manifest_destination(str(tmp_path / "link" / "m.json"), str(mine), "x", Storage()) == \
        str(tmp_path / "link" / "m.json")
    assert manifest_destination(str(tmp_path / "elsewhere.json"), str(mine), "x", Storage()) == \
        str(tmp_path / "elsewhere.json")


def test_class_ids_are_their_places_and_names_are_distinct(manifests, tmp_path):
    """A manifest edited to give two classes id 0 (or to swap two ids, expecting the labels remapped) loaded: the id
    is the class's place in the list and nothing read it. Now refused, as a class named twice."""
    for change, message in [({1: {"id": 0}}, r"classes\[1\] \('[a-z]+'\) has id 0: a class's id is its place in "
                                             r"the list \(1\)"),
                            ({0: {"id": True}}, r"classes\[0\] .* has id True"),
                            ({2: {"name": "pyrite"}},
                             r"'pyrite' names class ids 1 and 2 \(entries 2 and 3\); every class"),
                            ({}, r"ignore_index 1 is the id of class 'pyrite'")]:
        document = edited(manifests["soft"])
        for index, keys in change.items():
            document["classes"]["classes"][index].update(keys)
        if not change:
            document["classes"]["ignore_index"] = 1
        with pytest.raises(ManifestError, match=message):
            loads(tmp_path, document)
    document = edited(manifests["soft"])
    for entry in document["classes"]["classes"]:
        entry.pop("id")  # ids are optional: the place says it
    assert loads(tmp_path, document).num_classes == 3
