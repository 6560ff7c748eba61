"""Command-line input that would make a job silently wrong or crash after Ray started is refused up front
(exit 2, one message naming the flag or file and what is wrong): class lists with empty or repeated entries, class
names that disagree with a map's own, unfinished OME-Zarr label maps, infinite or non-square pixel sizes, output
folders that are files, globs that match nothing, flag values that do not validate."""

import json

import numpy as np
import pytest
from PIL import Image

from minseg.cli import main
from tests.inference.test_measure import NAMES, write_zarr
from tests.mineralogy.test_components import blob_labels


def set_scale(uri, x, y):
    """Rewrite the level-0 scale of ``labels/classes`` (as another writer, or a damaged file, would have it)."""
    import zarr

    group = zarr.open_group(uri, mode="r+")["labels/classes"]
    ome = dict(group.attrs["ome"])
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [y, x]
    group.attrs["ome"] = ome


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pydantic.dev" not in err
    return err


def test_classes_that_disagree_with_the_maps_own_are_refused(tmp_path, capsys):
    zarr = str(tmp_path / "a" / "segmentation.ome.zarr")
    write_zarr(zarr, blob_labels((64, 64), 4, seed=3))
    out = tmp_path / "out"
    assert main(["measure", zarr, "--classes", ",".join(reversed(NAMES)), "--out", str(out)]) == 2
    err = error_of(capsys)
    assert f"{zarr} names its classes and --classes disagrees: class id 0 is 'resin' in the map, 'gangue' in " \
           "--classes" in err
    assert main(["measure", zarr, "--classes", ",".join(NAMES[:3]), "--out", str(out)]) == 2
    assert "the map names 4 classes (resin, pyrite, chalcopyrite, gangue), --classes 3" in error_of(capsys)
    config = tmp_path / "c.yaml"
    config.write_text(f"measure: {{classes: [gangue, pyrite, chalcopyrite, resin], labels: ['{zarr}']}}\n")
    assert main(["measure", "-c", str(config), "--out", str(out)]) == 2
    assert f"{config}: measure.classes disagrees: class id 0" in error_of(capsys)
    assert not out.exists()


def test_a_reference_that_numbers_its_classes_otherwise_is_refused(tmp_path, capsys):
    """A reference is compared with its map id by id: one naming pyrite and chalcopyrite the other way round gave
    errors of 0 against the same pixels (found by a break-it pass)."""
    labels = blob_labels((64, 64), 4, seed=3)
    same, swapped = str(tmp_path / "a" / "segmentation.ome.zarr"), str(tmp_path / "b" / "segmentation.ome.zarr")
    write_zarr(same, labels)
    write_zarr(swapped, labels, names=["resin", "chalcopyrite", "pyrite", "gangue"])
    out = tmp_path / "out"
    assert main(["measure", same, "--reference", swapped, "--out", str(out)]) == 2
    assert (f"{swapped} (the reference of {same}) names its classes otherwise: class id 1 is 'chalcopyrite' in the "
            "reference, 'pyrite' in the map") in error_of(capsys)
    assert not out.exists()
    # with --classes for a map that names none (a PNG), the reference is held to them
    Image.fromarray(labels.astype(np.uint8)).save(tmp_path / "m.png")
    assert main(["measure", str(tmp_path / "m.png"), "--classes", "resin,pyrite,chalcopyrite,gangue", "--reference",
                 swapped, "--out", str(out)]) == 2
    assert "class id 1 is 'chalcopyrite' in the reference, 'pyrite' in the map" in error_of(capsys)
    assert main(["measure", same, "--reference", same, "--out", str(out)]) == 0


def test_an_output_folder_of_another_command_is_refused(tmp_path, capsys):
    """``score --out`` into an evaluation folder rewrote its tables and figures (evaluation.json kept: the folder
    contradicted itself); ``measure --out`` into a segment run replaced its slides.csv and failures.json. A folder
    holding another command's outputs is refused before anything runs; the command's own earlier outputs are not."""
    Image.fromarray(blob_labels((32, 32), 4, seed=1).astype(np.uint8)).save(tmp_path / "m.png")
    segmented = tmp_path / "segment"
    segmented.mkdir()
    (segmented / "run_summary.json").write_text("{}")
    (segmented / "slides.csv").write_text("slide\n")
    assert main(["measure", str(tmp_path / "m.png"), "--classes", ",".join(NAMES), "--out", str(segmented)]) == 2
    assert (f"--out: {segmented} holds the outputs of minseg segment (run_summary.json); minseg measure would write "
            "over them there: give another folder") in error_of(capsys)
    assert (segmented / "slides.csv").read_text() == "slide\n"
    evaluation = tmp_path / "evaluation"
    evaluation.mkdir()
    (evaluation / "evaluation.json").write_text("{}")
    assert main(["score", "--manifest", str(tmp_path / "manifest.json"), "--data", str(tmp_path),
                 "--out", str(evaluation)]) == 2
    assert "holds the outputs of minseg evaluate (evaluation.json); minseg score would write" in error_of(capsys)
    assert main(["segment", str(tmp_path / "m.png"), "--manifest", str(tmp_path / "manifest.json"),
                 "--out", str(evaluation)]) == 2
    assert "holds the outputs of minseg evaluate (evaluation.json); minseg segment would write" in error_of(capsys)
    measured = tmp_path / "measured"  # and the other way round: segment over a measure run
    measured.mkdir()
    (measured / "measure_summary.json").write_text("{}")
    assert main(["segment", str(tmp_path / "m.png"), "--manifest", str(tmp_path / "manifest.json"),
                 "--out", str(measured)]) == 2
    assert "holds the outputs of minseg measure (measure_summary.json); minseg segment would" in error_of(capsys)
    from minseg.io.storage import Storage, refuse_other_command_outputs

    refuse_other_command_outputs(str(segmented), "segment", "--out", Storage())  # its own: a rerun
    # a slide folder named like a marker (`members.json.tif` segmented before such names were hashed) is no marker
    older = tmp_path / "older-segment"
    (older / "members.json").mkdir(parents=True)
    (older / "members.json" / "summary.json").write_text("{}")
    (older / "run_summary.json").write_text("{}")
    refuse_other_command_outputs(str(older), "segment", "--out", Storage())
    # an evaluation cut short while its outputs were put in place: its documents are still staged, not in place
    # (score wrote its tables beside the evaluation's others there, the folder then refused to evaluate)
    cut = tmp_path / "cut"
    (cut / ".minseg-redo" / "evaluate").mkdir(parents=True)
    (cut / ".minseg-redo" / "evaluate" / "evaluation.json").write_text("{}")
    assert main(["score", "--manifest", str(tmp_path / "manifest.json"), "--data", str(tmp_path),
                 "--out", str(cut)]) == 2
    assert "holds the outputs of minseg evaluate (.minseg-redo/evaluate/evaluation.json)" in error_of(capsys)


def test_a_pixel_size_no_microscope_has_is_refused(tmp_path, capsys):
    """1e200 µm overflowed in the worker (``RayTaskError(OverflowError)``, not naming the flag)."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    assert main(["measure", str(tmp_path / "m.png"), "--classes", "resin,pyrite", "--pixel-size-um", "1e200",
                 "--out", str(tmp_path / "out")]) == 2
    assert "--pixel-size-um: measure.pixel_size_um: Input should be less than 1000000" in error_of(capsys)


@pytest.mark.parametrize("flag, value, message", [
    ("--classes", "background,pyrite,galena,,magnetite", "class id 3 (entry 4 of 5) has an empty name"),
    ("--classes", "background,pyrite,galena,", "class id 3 (entry 4 of 4) has an empty name"),
    ("--classes", "resin,pyrite,resin", "'resin' names class ids 0 and 2 (entries 1 and 3)"),
    ("--classes", "resin,Pyrite,pyrite", "'Pyrite' and 'pyrite' (in any case) name class ids 1 and 2"),
    ("--out", "", "argument --out: empty"),
    ("--reference", " ", "argument --reference: empty"),
])
def test_measure_comma_lists_and_paths_refuse_empty_or_repeated_entries(tmp_path, capsys, flag, value, message):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(SystemExit) as exit_:
        main(["measure", str(tmp_path / "m.png"), "--out", str(tmp_path / "out"), flag, value])
    assert exit_.value.code == 2 and message in error_of(capsys)


def test_other_comma_lists_refuse_empty_or_repeated_entries(tmp_path, capsys):
    for args, message in [(["train", "-c", "x.yaml", "--members", "a,,b"], "entry 2 of 'a,,b' is empty"),
                          (["train", "-c", "x.yaml", "--members", "a,b,a"], "'a' is given twice"),
                          (["segment", "--scene", "ppl=a.tif,ppl=b.tif"], "'ppl' is given twice"),
                          (["segment", "--scene", "ppl=a.tif,,xpl=b.tif"], "'' is not NAME=URI"),
                          (["segment", "--bit-depth", "ppl=12,ppl=14"], "'ppl' is given twice"),
                          (["segment", "--bit-depth", "ppl=twelve"], "'ppl=twelve' is not a number of bits"),
                          (["segment", "--bit-depth", "12bit"], "'12bit' is not a number of bits"),
                          (["segment", "--bit-depth", "ppl=12,"], "'' is not NAME=BITS"),
                          (["score", "--data", ""], "argument --data: empty"),
                          (["segment", "--manifest", ""], "argument --manifest: empty"),
                          # an unset variable in a script (`--candidate "$CAND"`) let the evaluation's rule choose
                          (["select", "e", "--candidate", ""], "argument --candidate: empty"),
                          (["select", " "], "argument evaluation: empty")]:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        assert exit_.value.code == 2 and message in error_of(capsys), args


def test_class_names_in_a_config_refuse_empty_or_repeated_entries(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    config = tmp_path / "c.yaml"
    config.write_text("measure: {classes: [resin, '', pyrite]}\n")
    assert main(["measure", str(tmp_path / "m.png"), "-c", str(config), "--out", str(tmp_path / "o")]) == 2
    assert f"{config}: measure.classes: class id 1 (entry 2 of 3) has an empty name" in error_of(capsys)


def test_unfinished_or_non_square_label_maps_are_refused(tmp_path, capsys):
    labels = blob_labels((64, 64), 4, seed=4)
    unfinished, failed, anisotropic = (str(tmp_path / name / "segmentation.ome.zarr") for name in ("u", "f", "an"))
    write_zarr(unfinished, labels, status=None)  # segment died before its last write
    write_zarr(failed, labels, status="failed")
    write_zarr(anisotropic, labels)
    set_scale(anisotropic, 0.5, 1.0)
    out = tmp_path / "out"
    assert main(["measure", unfinished, failed, anisotropic, "--out", str(out)]) == 2
    err = error_of(capsys)
    assert "3 label maps refused (nothing measured)" in err
    assert f"{unfinished}: its segment run has not completed (status 'incomplete'" in err
    assert f"{failed}: its segment run has not completed (status 'failed'" in err
    assert f"{anisotropic}: its pixels are not square (0.5 µm wide, 1 µm high)" in err
    # an unfinished reference is refused too; a pixel size given replaces the map's (its squareness is not read)
    finished = str(tmp_path / "ok" / "segmentation.ome.zarr")
    write_zarr(finished, labels)
    assert main(["measure", finished, "--reference", unfinished, "--out", str(out)]) == 2
    assert f"measure: {unfinished}: its segment run has not completed" in error_of(capsys)
    assert not out.exists()


def test_a_tiff_with_non_square_pixels_is_refused(tmp_path, capsys):
    """segment's labels.tif carries its pixel size in its metadata; resolution tags that disagree in X and Y
    would have its areas measured with the X size alone."""
    import tifffile

    path = tmp_path / "labels.tif"
    description = json.dumps({"classes": [{"id": i, "name": n} for i, n in enumerate(NAMES)], "pixel_size_um": 0.5})
    tifffile.imwrite(path, blob_labels((64, 64), 4, seed=5), description=description,
                     resolution=(20000.0, 10000.0), resolutionunit="CENTIMETER")
    assert main(["measure", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"{path}: its pixels are not square (0.5 µm wide, 1 µm high)" in error_of(capsys)


@pytest.mark.parametrize("args, message", [
    (["segment", "s.png", "--level", "-1", "--actors", "0"],
     ["--level: segment.level: Input should be greater than or equal to 0 (got -1)",
      "--actors: segment.actors: Input should be greater than or equal to 1 (got 0)"]),
    (["segment", "s.png", "--block", "100"], ["--block: segment.block: 100 is not a multiple of output_tile (512)"]),
    (["segment", "s.png", "--bit-depth", "20"],
     ["--bit-depth: segment.bit_depth: Input should be less than or equal to 16 (got 20)"]),
    (["segment", "s.png", "--bit-depth", "ppl=12,bse=17"],
     ["--bit-depth: segment.bit_depth.bse: Input should be less than or equal to 16 (got 17)"]),
    (["measure", "m.png", "--pixel-size-um", "0"], ["--pixel-size-um: measure.pixel_size_um: Input should be greater "
                                                     "than 0"]),
    (["measure", "m.png", "--pixel-size-um", "inf"], ["--pixel-size-um: measure.pixel_size_um: Input should be a "
                                                       "finite number"]),
    (["measure", "m.png", "--pixel-size-um", "nan"], ["--pixel-size-um: measure.pixel_size_um: Input should be a "
                                                       "finite number"]),
    (["measure", "m.png", "n.png", "--reference", "m.png"],
     ["--reference: measure.references: 1 given for 2 label maps"]),
    (["measure", "maps/*.png", "--reference", "a.png", "--reference", "b.png"],  # the glob, not "2 for 1" maps
     ["references pair with label maps one by one: list the label maps, no globs"]),
])
def test_flag_errors_name_the_flag_and_key(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = error_of(capsys)
    for line in message:
        assert line in err


@pytest.mark.parametrize("args", [
    ["segment", "s.png"], ["measure", "m.png", "--classes", "a,b"], ["score"], ["synth", "survey"],
    ["demo"], ["analyze", "kernels", "x"]])
def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    (tmp_path / "afile").write_text("hi\n")
    for out in ("afile", "afile/sub"):  # demo writes under <out>/<run.name>: under a file either way
        assert main([*args, "--out", out]) == 2, (args, out)
        err = error_of(capsys)
        assert "--out: " in err and "afile" in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")  # a link to a folder moved away (an unmounted disk)
    for out in ("dangling", "dangling/sub"):
        assert main([*args, "--out", out]) == 2, (args, out)
        err = error_of(capsys)
        assert "--out: " in err and "dangling" in err and f"a link to {tmp_path / 'gone'}, which does not exist" in err
        assert len(err.strip().splitlines()) == 1
    # a run folder under a file, from the config rather than --out
    config = tmp_path / "c.yaml"
    config.write_text("run: {output_uri: afile}\n")
    assert main(["evaluate", "-c", str(config)]) == 2
    assert "run.output_uri: " in error_of(capsys)


def test_a_glob_that_matches_nothing_is_refused(tmp_path, capsys, monkeypatch):
    """Alone or beside inputs that exist: a mistyped pattern, not a smaller batch (the rest would look complete)."""
    from tests.inference.conftest import write_manifest

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.png")
    manifest = write_manifest(tmp_path)
    assert main(["segment", "m.png", "s*.tif", "--manifest", manifest, "--out", "o"]) == 2
    assert "segment.slides: 's*.tif' matched no slides" in error_of(capsys)
    (tmp_path / "c.yaml").write_text("segment: {slides: ['s*.tif'], scenes: [{ppl: m.png}]}\n")
    assert main(["segment", "-c", "c.yaml", "--manifest", manifest, "--out", "o"]) == 2
    assert "segment.slides: 's*.tif' matched no slides" in error_of(capsys)
    assert main(["measure", "x*.png", "--classes", "a,b", "--out", "o"]) == 2
    assert "measure.labels: 'x*.png' matched no label maps" in error_of(capsys)
    assert main(["measure", "m.png", "x*.png", "--classes", "a,b", "--out", "o"]) == 2
    assert "measure.labels: 'x*.png' matched no label maps" in error_of(capsys)
    assert not (tmp_path / "o").exists()


def test_classes_that_agree_with_the_map_are_measured(ray_session, tmp_path, capsys):
    """The refusals above leave the ordinary run alone: a finished zarr with --classes equal to its own names,
    next to a PNG that needs them, measured; the JSON holds finite numbers only."""
    labels = blob_labels((64, 64), 4, seed=6)
    zarr = str(tmp_path / "a" / "segmentation.ome.zarr")
    write_zarr(zarr, labels)
    Image.fromarray(labels).save(tmp_path / "b.png")
    out = tmp_path / "out"
    assert main(["measure", zarr, str(tmp_path / "b.png"), "--classes", ",".join(NAMES), "--out", str(out)]) == 0
    capsys.readouterr()
    a = json.loads((out / "a" / "mineralogy.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    b = json.loads((out / "b" / "mineralogy.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert a["modal_mineralogy"] == b["modal_mineralogy"] and a["pixel_size_um"] == pytest.approx(0.8)


def test_a_damaged_record_is_an_input_error_naming_it(tmp_path, capsys):
    """A half-copied evaluation.json (or members.json, member.json, classes.json): one line naming the file."""
    (tmp_path / "evaluation.json").write_text('{"candidates": [')
    assert main(["select", str(tmp_path)]) == 2
    assert f"{tmp_path}/evaluation.json: not valid JSON" in error_of(capsys)


def test_select_refuses_a_file_a_record_missing_keys_and_a_name_that_is_a_path(tmp_path, capsys):
    """``select`` on the manifest file (not its folder), on an evaluation.json without candidates or classes, or with
    ``--name a/b`` / ``../x`` (which would write beside or over evaluation.json) or too long exits 2 naming what is
    wrong;
    ``score --manifest evaluation.json`` says it is an evaluation record and points to the manifest beside it."""
    folder = tmp_path / "evaluation" / "ensemble"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"version": 1}))
    record = {"run": "r", "rank_key": "miou", "members": {}, "rank_metrics": {}, "tiling": {}, "tta": "none",
              "normalization": {}}
    (folder / "evaluation.json").write_text(json.dumps(record))
    assert main(["select", str(folder / "manifest.json")]) == 2
    err = error_of(capsys)
    assert f"{folder / 'manifest.json'} is a file; give the evaluation folder" in err and str(folder) in err
    assert main(["select", str(folder)]) == 2
    assert "evaluation.json: not a complete evaluation record, missing candidates, classes" in error_of(capsys)
    assert main(["select", str(tmp_path)]) == 2
    assert "evaluation.json: no such file" in error_of(capsys)
    (tmp_path / "members.json").write_text('{"members": []}')  # the training run given: its evaluations named
    assert main(["select", str(tmp_path)]) == 2
    assert (f"({tmp_path} is a training run: its evaluations are in {tmp_path}/evaluation/<name>; here: ensemble)"
            in error_of(capsys))
    # an evaluation cut short while put in place: its outputs complete in the staging folder, not in place (segment
    # and score are told so); select puts them in place first, without predicting again
    staged = tmp_path / ".minseg-redo" / "evaluate"
    staged.mkdir(parents=True)
    (staged / "manifest.json").write_text(json.dumps({"version": 1}))
    (staged / "evaluation.json").write_text(json.dumps(record))
    from minseg.ensemble.manifest import ManifestError, load_manifest
    from minseg.io.storage import Storage

    with pytest.raises(ManifestError, match=r"manifest.json: not in place yet: .* run minseg select .*, which puts"):
        load_manifest(str(tmp_path / "manifest.json"), Storage())
    assert main(["select", str(tmp_path)]) == 2
    err = error_of(capsys)
    assert "outputs were not all in place (its run was cut short while putting them there): put in place now" in err
    assert "evaluation.json: not a complete evaluation record" in err  # what select then read: the staged record
    assert (tmp_path / "manifest.json").exists() and not staged.exists()
    for name in ("a/b", "../../evaluation", ".hidden", "a\\b", " "):
        with pytest.raises(SystemExit) as stop:
            main(["select", str(folder), "--name", name])
        assert stop.value.code == 2
        assert "is not a plain name" in error_of(capsys)
    with pytest.raises(SystemExit) as stop:  # 60 two-byte letters: manifest-<name>.json near a file name's limit
        main(["select", str(folder), "--name", "é" * 60])
    assert stop.value.code == 2 and "a name of at most 100 bytes, got 120" in error_of(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["evaluation.json", "manifest.json"]
    config = tmp_path / "c.yaml"
    config.write_text("run: {name: x, output_uri: " + str(tmp_path / "out") + "}\n")
    assert main(["score", "--config", str(config), "--manifest", str(folder / "evaluation.json"),
                 "--data", str(tmp_path)]) == 2
    err = error_of(capsys)
    assert "an evaluation record (evaluation.json), not an ensemble manifest" in err
    assert str(folder / "manifest.json") in err
    # another JSON file (a data set's classes.json) was "manifest version None is not supported"
    (tmp_path / "classes.json").write_text(json.dumps({"classes": [{"name": "resin", "codes": [0]}]}))
    assert main(["score", "--config", str(config), "--manifest", str(tmp_path / "classes.json"),
                 "--data", str(tmp_path)]) == 2
    assert "classes.json: not an ensemble manifest (no version): give the manifest.json" in error_of(capsys)
    # nor a document that lists members (a prospect run's summary.json: it was "manifest version None")
    (tmp_path / "summary.json").write_text(json.dumps({"members": [], "targets": 3}))
    assert main(["score", "--config", str(config), "--manifest", str(tmp_path / "summary.json"),
                 "--data", str(tmp_path)]) == 2
    assert "summary.json: not an ensemble manifest (no version): give the manifest.json" in error_of(capsys)


def test_no_command_writes_into_a_staging_folder(tmp_path, capsys):
    """Every command, not only those that check for other commands' outputs: a folder in ``.minseg-redo`` is where
    a run stages its outputs, deleted once they are put in place."""
    out = tmp_path / "runs" / ".minseg-redo" / "x"
    assert main(["synth", "sections", "--out", str(out)]) == 2
    assert "lies in a .minseg-redo folder" in capsys.readouterr().err and not out.exists()

