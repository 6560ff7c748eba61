"""PPL + XPL scenes end to end: training reads 6 channels, checkpoints and the manifest record them, evaluation,
scoring and whole-slide segmentation (a scene as two aligned files, or one 6-band TIFF) read them the same way."""

import json

import numpy as np
import pytest
import tifffile

from minseg.cli import main
from minseg.config import MinsegConfig, validate_config
from minseg.synth.sections import render_section
from tests.data.test_channels import NINE, PPL_XPL, crossed, write_thin_sections

TINY = {"width": 0.125, "depth": "tiny"}


@pytest.fixture(scope="module")
def thin_run(ray_session, tmp_path_factory):
    """Two tiny members trained (one epoch) on PPL + XPL thin sections, evaluated; the manifest they give."""
    from minseg.ensemble.evaluate import evaluate_ensemble
    from minseg.train.ensemble import train_ensemble

    root = tmp_path_factory.mktemp("thin-run")
    write_thin_sections(root / "thin", count=8, size=48)
    source = {"uri": str(root / "thin"), "masks_dir": "masks", "mask_pattern": "{scene}_mask", "channels": PPL_XPL}
    config = validate_config({
        "run": {"name": "thin", "output_uri": str(root / "out"), "seed": 0},
        "ray": {"task_cpus": 0.25},
        "data": {"sources": [source], "classes": NINE, "tiling": {"size": 32}, "cache": True,
                 "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "training": {"defaults": {"stages": [{"epochs": 1, "batch_size": 4}], "scaling": {"cpus_per_worker": 0.25},
                                  "max_failures": 0},
                     "members": [{"name": "resunet", "model": "res_unet", "model_options": TINY},
                                 {"name": "halfunet", "model": "half_unet", "model_options": {"width": 0.25}}]},
        "evaluation": {"k_min": 2, "modes": ["soft"], "cpus_per_actor": 0.25, "overlays": 1,
                       "selection": {"rule": "best"}},
    }, MinsegConfig)
    results = train_ensemble(config)
    assert all(r.status == "done" for r in results), [r.error for r in results]
    evaluation = evaluate_ensemble(config)
    folder = evaluation.manifest_uri.rsplit("/", 1)[0]
    assert main(["select", folder, "--candidate", "RUEL-2-SOFT", "--name", "both"]) == 0
    return root, config, evaluation, f"{folder}/manifest-both.json"


def test_members_checkpoints_and_manifest_carry_six_channels(thin_run):
    from minseg.ensemble.manifest import load_manifest
    from minseg.ensemble.runtime import load_member_models
    from minseg.io.storage import Storage

    root, config, evaluation, manifest_uri = thin_run
    member = json.loads(open(f"{evaluation.document['members']['resunet']['checkpoint']}/member.json").read())
    assert member["model_options"]["in_channels"] == 6
    manifest = load_manifest(manifest_uri)
    assert [g.name for g in manifest.channel_groups] == ["ppl", "xpl"] and manifest.in_channels == 6
    assert len(manifest.normalization["mean"]) == 6
    model = load_member_models(manifest, Storage())[0]
    first = next(m for m in model.modules() if hasattr(m, "in_channels"))
    assert first.in_channels == 6  # the first convolution reads both images
    overlays = list((root / "out").glob("thin/evaluation/ensemble/overlay_*.png"))
    assert overlays and overlays[0].stat().st_size > 5000  # drawn from the PPL image


def test_score_reads_the_scenes_and_refuses_other_channels(thin_run, tmp_path, capsys):
    """A new set of thin sections given with --data is read like the config's source (its mask names) and its
    scenes as the manifest records them (the images' folders and name patterns); a data section declaring other
    channels is refused, naming both."""
    import yaml

    root, config, evaluation, manifest_uri = thin_run
    write_thin_sections(tmp_path / "new", count=3, size=40)
    masks = {"uri": "replaced-by---data", "masks_dir": "masks", "mask_pattern": "{scene}_mask"}
    (tmp_path / "masks.yaml").write_text(yaml.safe_dump({"data": {"sources": [masks]}}))
    common = ["--set", "ray.task_cpus=0.25", "--set", "score.cpus_per_actor=0.25"]
    assert main(["score", "-c", str(tmp_path / "masks.yaml"), "--manifest", manifest_uri, "--data",
                 str(tmp_path / "new"), "--out", str(tmp_path / "score"), *common]) == 0
    document = json.loads((tmp_path / "score" / "score.json").read_text())
    assert document["images"] == 3 and document["selected"] == "RUEL-2-SOFT" and document["quarantined"] == 0
    assert [c["name"] for c in document["channels"]] == ["ppl", "xpl"]
    source = {"uri": str(tmp_path / "new"), "masks_dir": "masks", "mask_pattern": "{scene}_mask",
              "channels": PPL_XPL[:1]}
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump({"data": {"sources": [source]}, "score": {"manifest": manifest_uri}}))
    capsys.readouterr()
    assert main(["score", "-c", str(path), "--out", str(tmp_path / "s2")]) == 2
    assert "the data gives ppl (rgb, 3) per scene but the ensemble reads ppl (rgb, 3) + xpl (rgb, 3)" in \
        capsys.readouterr().err


def test_evaluate_refuses_data_without_the_members_channels(thin_run):
    """The run's own data read without its channels (or in another order) is refused before any prediction."""
    from minseg.ensemble.evaluate import evaluate_ensemble
    from minseg.errors import InputError

    root, config, evaluation, manifest_uri = thin_run
    swapped = config.model_copy(deep=True)
    source = swapped.data.sources[0]
    swapped.data = swapped.data.model_copy(update={"sources": [source.model_copy(
        update={"channels": list(reversed(source.channels))})]})
    with pytest.raises(InputError, match=r"member 'resunet' was trained on ppl \(rgb, 3\) \+ xpl \(rgb, 3\) per "
                                         r"scene, the data gives xpl \(rgb, 3\) \+ ppl \(rgb, 3\)"):
        evaluate_ensemble(swapped)


def test_segment_a_scene_of_two_files_and_a_six_band_tiff(thin_run, tmp_path, capsys):
    """The same scene given as two aligned files (--scene) and as one 6-sample TIFF: identical labels; a scene of
    images of different sizes fails alone, naming them; RGB slides are refused for this ensemble."""
    root, config, evaluation, manifest_uri = thin_run
    image, _ = render_section(5, 200, 200)
    tifffile.imwrite(tmp_path / "s_ppl.tif", image, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "s_xpl.tif", crossed(image), tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "s_both.tif", np.dstack([image, crossed(image)]), tile=(64, 64),
                     photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "small_xpl.tif", crossed(image)[:150], photometric="rgb")
    common = ["--manifest", manifest_uri, "--set", "ray.task_cpus=0.25", "--set", "segment.cpus_per_actor=0.25",
              "--set", "segment.block=128", "--set", "segment.output_tile=64", "--set", "segment.batch_size=4"]
    scene = f"ppl={tmp_path / 's_ppl.tif'},xpl={tmp_path / 's_xpl.tif'}"
    bad = f"ppl={tmp_path / 's_ppl.tif'},xpl={tmp_path / 'small_xpl.tif'}"
    assert main(["segment", "--scene", scene, "--out", str(tmp_path / "two"), *common]) == 0
    assert main(["segment", str(tmp_path / "s_both.tif"), "--out", str(tmp_path / "one"), *common]) == 0
    import zarr

    def labels(folder):
        group = zarr.open_group(str(folder / "segmentation.ome.zarr"), mode="r")
        return np.asarray(group["labels/classes"]["0"][...])

    first, second = labels(tmp_path / "two" / "s_ppl"), labels(tmp_path / "one" / "s_both")
    assert first.shape[-2:] == (200, 200)
    np.testing.assert_array_equal(first, second)
    capsys.readouterr()
    assert main(["segment", "--scene", bad, "--out", str(tmp_path / "bad"), *common]) == 1
    assert "small_xpl.tif is 200x150 but" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "s_ppl.tif"), "--out", str(tmp_path / "rgb"), *common]) == 1
    assert "has 3 sample(s) per pixel; the ensemble reads 6 channels from it" in capsys.readouterr().err
    assert main(["segment", "--scene", f"ppl={tmp_path / 's_ppl.tif'}", "--out", str(tmp_path / "x"), *common]) == 2
    assert "the ensemble reads ppl, xpl per scene; missing xpl" in capsys.readouterr().err


def test_segment_reads_each_image_of_a_scene_with_its_own_bit_depth(thin_run, tmp_path, capsys):
    """An ensemble whose XPL images came from a 12-bit camera (its manifest's channels[].bit_depth) segments a scene
    of a 16-bit PPL TIFF and a 12-bit camera's XPL frame as the same scene in 8 bits: identical labels, each image's
    reading recorded; --bit-depth xpl=16 reads the XPL frame another way (redone; that image is said to read
    nearly black though the slide is bright); a one-file 6-band slide, whose samples have one bit depth, fails for
    these images when its samples are 16-bit (8-bit ones read alike at any); an image the ensemble does not read
    is refused by name."""
    import zarr

    root, config, evaluation, manifest_uri = thin_run
    document = json.loads(open(manifest_uri).read())
    document["channels"][1]["bit_depth"] = 12
    camera = tmp_path / "manifest-camera.json"
    camera.write_text(json.dumps(document))
    image, _ = render_section(6, 160, 160)
    tifffile.imwrite(tmp_path / "s_ppl.tif", image, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "s_xpl.tif", crossed(image), tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "d_ppl.tif", image.astype(np.uint16) * 257, tile=(64, 64), photometric="rgb")
    frame = (crossed(image).astype(np.uint32) * 4095 // 255).astype(np.uint16)  # 0..4095 in 16-bit samples
    tifffile.imwrite(tmp_path / "d_xpl.tif", frame, tile=(64, 64), photometric="rgb")
    tifffile.imwrite(tmp_path / "d_both.tif", np.dstack([image.astype(np.uint16) * 257, frame]), tile=(64, 64),
                     photometric="minisblack", planarconfig="contig")
    common = ["--set", "ray.task_cpus=0.25", "--set", "segment.cpus_per_actor=0.25", "--set", "segment.block=128",
              "--set", "segment.output_tile=64", "--set", "segment.batch_size=4"]
    eight = f"ppl={tmp_path / 's_ppl.tif'},xpl={tmp_path / 's_xpl.tif'}"
    deep = f"ppl={tmp_path / 'd_ppl.tif'},xpl={tmp_path / 'd_xpl.tif'}"
    assert main(["segment", "--scene", eight, "--manifest", manifest_uri, "--out", str(tmp_path / "8"), *common]) == 0
    assert main(["segment", "--scene", deep, "--manifest", str(camera), "--out", str(tmp_path / "d"), *common]) == 0

    def labels(folder):
        group = zarr.open_group(str(folder / "segmentation.ome.zarr"), mode="r")
        return np.asarray(group["labels/classes"]["0"][...])

    np.testing.assert_array_equal(labels(tmp_path / "8" / "s_ppl"), labels(tmp_path / "d" / "d_ppl"))
    summary = json.loads((tmp_path / "d" / "d_ppl" / "summary.json").read_text())
    assert summary["bit_depth"] == {"ppl": 16, "xpl": 12} and summary["stored_bits"] == 16
    assert {name: (image["stored_bits"], image["bit_depth"]) for name, image in summary["images"].items()} == \
        {"ppl": (16, 16), "xpl": (16, 12)}
    assert summary["images"]["xpl"]["brightest"] > 200 and summary["brightest"] > 200
    # XPL read as 16-bit: another reading of the same files, so the slide is redone, not skipped
    capsys.readouterr()
    assert main(["segment", "--scene", deep, "--manifest", str(camera), "--out", str(tmp_path / "d"),
                 "--bit-depth", "xpl=16", *common]) == 0
    redone = json.loads((tmp_path / "d" / "d_ppl" / "summary.json").read_text())
    assert redone["bit_depth"] == 16 and redone["images"]["xpl"]["brightest"] <= 16 < redone["brightest"]
    said = capsys.readouterr()
    assert "segmented 1, skipped 0" in said.out
    assert "segment.slide_dark" in said.err and "the brightest pixel of its xpl image" in said.err
    # one file of both images' channels has one bit depth: refused (that slide fails) when it matters, 16-bit
    # samples; 8-bit ones read alike at any, and give the scene's labels
    tifffile.imwrite(tmp_path / "s_both.tif", np.dstack([image, crossed(image)]), tile=(64, 64),
                     photometric="minisblack", planarconfig="contig")
    assert main(["segment", str(tmp_path / "d_both.tif"), str(tmp_path / "s_both.tif"), "--manifest", str(camera),
                 "--out", str(tmp_path / "b"), *common]) == 1
    assert "d_both.tif is one multi-band file of 16-bit samples for images the ensemble reads as ppl 16-bit, xpl " \
        "12-bit" in capsys.readouterr().err
    np.testing.assert_array_equal(labels(tmp_path / "8" / "s_ppl"), labels(tmp_path / "b" / "s_both"))
    one_file = json.loads((tmp_path / "b" / "s_both" / "summary.json").read_text())
    assert one_file["bit_depth"] == 16 and set(one_file["images"]) == {"ppl", "xpl"}
    assert main(["segment", "--scene", deep, "--manifest", str(camera), "--out", str(tmp_path / "n"),
                 "--bit-depth", "bse=12", *common]) == 2
    assert "segment.bit_depth names bse but the ensemble reads ppl, xpl per scene" in capsys.readouterr().err


def test_evaluate_says_when_a_source_reads_an_image_with_other_bits(thin_run, tmp_path, caplog):
    """Two cameras: the manifest records how the first source reads each image, which evaluate says (slides of the
    other camera need segment.bit_depth)."""
    import logging

    from minseg.ensemble.evaluate import evaluate_ensemble
    from minseg.errors import InputError

    root, config, evaluation, manifest_uri = thin_run
    first = config.data.sources[0]
    other = first.model_copy(update={"uri": str(tmp_path / "other"), "channels": [
        first.channels[0].model_copy(update={"bit_depth": 12}), first.channels[1]]})
    changed = config.model_copy(deep=True)
    changed.data = changed.data.model_copy(update={"sources": [first, other]})
    changed.run = changed.run.model_copy(update={"output_uri": str(tmp_path / "nothing-trained")})
    with caplog.at_level(logging.WARNING, logger="minseg.ensemble"), pytest.raises(InputError):
        evaluate_ensemble(changed)
    (warned,) = [r.fields for r in caplog.records if r.getMessage() == "evaluate.bit_depths_differ"]
    assert warned["images"] == "sources[1].channels.ppl: 12-bit (sources[0]: 16-bit)"
    assert "segment.bit_depth" in warned["hint"]
