"""``minseg measure``: label maps as segment writes them (labels.tif, OME-Zarr) and as users have them (class-id
PNGs, the real LumenStone masks), measured as a Ray job; bad maps are failure entries, the others carry on."""

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from minseg.cli import main
from tests.mineralogy.test_components import blob_labels

LUMENSTONE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lumenstone" / "masks"
LUMENSTONE_CLASSES = ("background,chalcopyrite,galena,magnetite,bornite,pyrrhotite,pyrite,pentlandite,sphalerite,"
                      "unused9,unused10,tennantite")
NAMES = ["resin", "pyrite", "chalcopyrite", "gangue"]


def write_labels_tif(path, labels, pixel_size_um=0.8):
    """A labels.tif as segment exports it: tiled pyramid, palette, class names and pixel size in its metadata."""
    from minseg.io.tiff import PyramidSpec, write_pyramids

    colours = [[0, 0, 0], [255, 215, 0], [200, 120, 30], [128, 128, 128]]
    metadata = {"classes": [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(NAMES, colours))],
                "pixel_size_um": pixel_size_um}
    spec = PyramidSpec(*labels.shape, tile=64, reduce="nearest", metadata=metadata)
    write_pyramids([(str(path), spec)], lambda r, c: (labels[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64],))


def write_zarr(uri, labels, pixel_size_um=0.8, status="complete", names=NAMES):
    """A segmentation OME-Zarr as segment leaves it: every block written, then marked ``status`` (None: segment
    died before its last write); ``names``: its classes in id order."""
    from minseg.enums import TiffCompression
    from minseg.io.ngff import PyramidLayout, SegmentationArrays, create_segmentation
    from minseg.io.storage import Storage

    colours = np.array([[0, 0, 0], [255, 215, 0], [200, 120, 30], [128, 128, 128]], np.uint8)
    create_segmentation(uri, Storage(), PyramidLayout(*labels.shape, 64), names, colours, pixel_size_um, False,
                        TiffCompression.ZSTD, {"generator": "minseg segment"})
    arrays = SegmentationArrays(uri, Storage())
    arrays.write(SegmentationArrays.LABELS, 0, 0, 0, labels)
    if status:
        arrays.mark(status)


def measured(folder):
    return json.loads((folder / "mineralogy.json").read_text())


def test_segment_outputs_and_bad_maps(ray_session, tmp_path, capsys):
    """labels.tif and an OME-Zarr of the same labels give the same numbers (names and pixel size from the files);
    an RGB mask, an id beyond the classes, a missing file and a reference of another size are failure entries
    naming the file and what is wrong; the good maps are complete."""
    labels = blob_labels((150, 170), 4, seed=7)
    (tmp_path / "a").mkdir()
    write_labels_tif(tmp_path / "a" / "labels.tif", labels)
    write_zarr(str(tmp_path / "b" / "segmentation.ome.zarr"), labels)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(tmp_path / "nine.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    # lossy compression changes ids along every edge (a break-it pass: 13.5 % of a JPEG's pixels, measured silently)
    Image.fromarray(labels.astype(np.uint8)).save(tmp_path / "lossy.jpg", quality=90)
    tifffile.imwrite(tmp_path / "lossy.tif", labels.astype(np.uint8), compression="jpeg", tile=(64, 64))
    # a complete map whose label chunk was lost (a partial copy): zarr would read it as class 0, "no mineral found"
    write_zarr(str(tmp_path / "damaged" / "segmentation.ome.zarr"), labels)
    shutil.rmtree(tmp_path / "damaged" / "segmentation.ome.zarr" / "labels" / "classes" / "0" / "c" / "0")
    maps = [tmp_path / "a" / "labels.tif", tmp_path / "b" / "segmentation.ome.zarr", tmp_path / "rgb.png",
            tmp_path / "nine.png", tmp_path / "missing.png", tmp_path / "damaged" / "segmentation.ome.zarr",
            tmp_path / "lossy.jpg", tmp_path / "lossy.tif"]
    references = [tmp_path / "a" / "labels.tif", tmp_path / "a" / "labels.tif", tmp_path / "rgb.png",
                  tmp_path / "nine.png", tmp_path / "missing.png", tmp_path / "a" / "labels.tif",
                  tmp_path / "a" / "labels.tif", tmp_path / "a" / "labels.tif"]
    out = tmp_path / "out"
    args = ["measure", *map(str, maps), "--out", str(out), "--set", "measure.block=64",
            "--classes", ",".join(NAMES)]
    for reference in references:
        args += ["--reference", str(reference)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "measured 2, failed 6" in captured.out and "modal mineralogy" in captured.out
    failures = {f["slide"]: f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert "rgb.png: not a label map of class ids (one channel)" in failures["rgb"]
    assert "nine.png: class id 9" in failures["nine"] and "only 4 classes are named" in failures["nine"]
    assert "missing.png" in failures["missing"]
    assert "label chunks are missing (zarr would read them as class 0)" in failures["damaged"]
    lossy = [reason for slide, reason in failures.items() if slide.startswith("lossy")]  # one stem: ids differ
    assert len(lossy) == 2 and all("a label map stored with lossy compression" in reason for reason in lossy)
    assert len(failures) == 6 and not (out / "rgb").exists() and not (out / "nine").exists()

    a, b = measured(out / "a"), measured(out / "b")
    same = ("modal_mineralogy", "association", "particles", "liberation", "liberation_by_size", "grains", "tally")
    assert {k: a[k] for k in same} == {k: b[k] for k in same}
    assert a["unit"] == "um" and a["pixel_size_um"] == pytest.approx(0.8) and b["pixel_size_um"] == pytest.approx(0.8)
    assert a["modal_mineralogy"]["pyrite"]["pixels"] == int((labels == 1).sum())
    assert a["reference"]["errors"]["modal"]["mae_pp"] == 0.0  # measured against itself
    particles = pq.read_table(out / "a" / "particles.parquet").to_pandas()
    ids, _ = ndimage.label(labels != 0, structure=np.ones((3, 3)))
    sizes = np.bincount(ids.ravel())[1:]
    assert len(particles) == (sizes >= 4).sum() and particles["area_um2"].notna().all()
    assert (out / "mineralogy" / "mineralogy.md").exists() and "| pyrite |" in (out / "mineralogy" /
                                                                               "mineralogy.md").read_text()
    rows = (out / "slides.csv").read_text().splitlines()
    assert len(rows) == 3 and "modal_mae_pp" in rows[0]
    header = rows[0].split(",")
    assert {"association_misassigned_pp", "sample_area_pct:pyrite", "area_pct:pyrite"} <= set(header)
    assert "association_mae_pp" not in header and "sample_area_pct:resin" not in header
    assert a["reference"]["errors"]["association"]["mean_misassigned_pp"] == 0.0
    summary = json.loads((out / "measure_summary.json").read_text())  # written last; marks the folder as measure's
    assert summary["done"] == ["a", "b"] and len(summary["failed"]) == 6 and summary["command"] == "measure"
    assert summary["run_files"] == ["failures.json", "mineralogy", "slides.csv", "slides.parquet"]
    assert (out / "mineralogy" / "mineralogy.md").exists() and not (out / ".minseg-redo").exists()  # put in place
    assert pq.read_table(out / "slides.parquet").num_rows == 2

    # a reference of another size fails that map; a map listed twice with two references, or a map or reference
    # in the folder of a map the run measures, are refused before any work
    assert main(["measure", str(maps[0]), "--out", str(tmp_path / "o2"), "--reference", str(tmp_path / "small.png"),
                 "--classes", ",".join(NAMES)]) == 1
    assert "reference" in capsys.readouterr().err and "is 10x10" in json.loads(
        (tmp_path / "o2" / "failures.json").read_text())[0]["reason"]
    # a reference that is not there, or no label map: said to be the reference's, not the map's
    Image.fromarray(np.zeros((*labels.shape, 3), np.uint8)).save(tmp_path / "colour.png")
    for reference, said in ((tmp_path / "gone.png", f"reference {tmp_path / 'gone.png'}: no such file"),
                            (tmp_path / "colour.png", f"reference {tmp_path / 'colour.png'}: ")):
        assert main(["measure", str(maps[0]), "--out", str(tmp_path / "o3"), "--reference", str(reference),
                     "--classes", ",".join(NAMES)]) == 1
        capsys.readouterr()
        reason = json.loads((tmp_path / "o3" / "failures.json").read_text())[0]["reason"]
        assert reason.startswith(said), reason
    inner = out / "a" / "inner.png"  # in a/, which holds a's measurement and would be measured again
    shutil.copy(tmp_path / "small.png", inner)
    assert main(["measure", str(maps[0]), str(tmp_path / "small.png"), "--reference", str(maps[0]), "--reference",
                 str(inner), "--out", str(out)]) == 2
    assert f"measure: {inner} lies in {out / 'a'}/, the output folder of a map this run measures" in (
        capsys.readouterr().err)
    assert inner.exists() and (out / "a" / "mineralogy.json").exists()
    (tmp_path / "link").symlink_to(out)  # the same folder through a link, either way round
    for reference, target in ((tmp_path / "link" / "a" / "inner.png", out), (inner, tmp_path / "link")):
        assert main(["measure", str(maps[0]), str(tmp_path / "small.png"), "--reference", str(maps[0]),
                     "--reference", str(reference), "--out", str(target)]) == 2
        assert "the output folder of a map this run measures" in capsys.readouterr().err
    assert inner.exists()
    inner.unlink()
    report = out / "mineralogy" / "ref.png"  # in the run's report folder, which every run replaces
    shutil.copy(tmp_path / "small.png", report)
    assert main(["measure", str(maps[0]), "--reference", str(report), "--out", str(out)]) == 2
    assert f"{report} lies in {out / 'mineralogy'}/, which every run into it replaces" in capsys.readouterr().err
    assert report.exists()
    report.unlink()
    # an output folder whose `a/` holds files no record names (here segment's labels.tif itself): never emptied,
    # the map is measured into `a-<hash>/`
    assert main(["measure", str(maps[0]), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "a" / "labels.tif").exists() and not (tmp_path / "a" / "mineralogy.json").exists()
    (moved,) = [p for p in tmp_path.iterdir() if p.name.startswith("a-")]
    assert measured(moved)["source"] == str(maps[0])
    assert "a/ holds the outputs of an unknown source" in capsys.readouterr().err
    assert main(["measure", str(maps[0]), str(maps[0]), "--out", str(tmp_path / "o3"), "--reference", str(maps[0]),
                 "--reference", str(tmp_path / "small.png")]) == 2
    assert "listed twice" in capsys.readouterr().err


def test_a_map_measured_again_keeps_its_earlier_measurement_should_the_new_one_fail(ray_session, tmp_path, capsys):
    """Measured once, then again against a reference of another size (a failure): the earlier folder stays byte for
    byte and the failure says so; measured again successfully, the new measurement replaces it whole."""
    labels = blob_labels((90, 110), 4, seed=3)
    (tmp_path / "a").mkdir()
    write_labels_tif(tmp_path / "a" / "labels.tif", labels)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "out"
    base = ["measure", str(tmp_path / "a" / "labels.tif"), "--out", str(out), "--classes", ",".join(NAMES)]
    assert main(base) == 0
    earlier = {p.relative_to(out / "a"): p.read_bytes() for p in (out / "a").rglob("*") if p.is_file()}
    assert Path("mineralogy.json") in earlier and "reference" not in measured(out / "a")

    assert main(base + ["--reference", str(tmp_path / "small.png")]) == 1
    (failure,) = json.loads((out / "failures.json").read_text())
    assert "is 10x10" in failure["reason"]
    assert "the measurement an earlier run finished in a/ is kept" in failure["reason"]
    assert {p.relative_to(out / "a"): p.read_bytes() for p in (out / "a").rglob("*") if p.is_file()} == earlier
    assert not (out / ".minseg-redo").exists()

    assert main(base + ["--reference", str(tmp_path / "a" / "labels.tif")]) == 0
    assert measured(out / "a")["reference"]["errors"]["modal"]["mae_pp"] == 0.0
    assert (out / "a" / "reference_mineralogy.json").exists() and not (out / ".minseg-redo").exists()
    # another map of the same name later (another run's a/labels.tif): its own folder, never a/'s taken over
    (tmp_path / "run2" / "a").mkdir(parents=True)
    write_labels_tif(tmp_path / "run2" / "a" / "labels.tif", blob_labels((60, 70), 4, seed=5))
    again = {p.relative_to(out / "a"): p.read_bytes() for p in (out / "a").rglob("*") if p.is_file()}
    assert main(["measure", str(tmp_path / "run2" / "a" / "labels.tif"), "--out", str(out), "--classes",
                 ",".join(NAMES)]) == 0
    assert {p.relative_to(out / "a"): p.read_bytes() for p in (out / "a").rglob("*") if p.is_file()} == again
    (other,) = [p for p in out.iterdir() if p.name.startswith("a-")]
    assert measured(other)["source"] == str(tmp_path / "run2" / "a" / "labels.tif")
    # a map whose name begins another's (`a` and `ab`): measuring `a` afresh never empties `ab/`
    shutil.move(out / "a", out / "ab")
    kept = {p.relative_to(out / "ab"): p.read_bytes() for p in (out / "ab").rglob("*") if p.is_file()}
    assert main(base) == 0 and (out / "a" / "mineralogy.json").exists()
    assert {p.relative_to(out / "ab"): p.read_bytes() for p in (out / "ab").rglob("*") if p.is_file()} == kept
    capsys.readouterr()


def test_a_map_without_class_names_needs_them(ray_session, tmp_path, capsys):
    Image.fromarray(blob_labels((40, 40), 3, seed=1)).save(tmp_path / "mask.png")
    assert main(["measure", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out")]) == 1
    reason = json.loads((tmp_path / "out" / "failures.json").read_text())[0]["reason"]
    assert "does not name its classes; set measure.classes (--classes" in reason
    assert main(["measure", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out"),
                 "--classes", "resin,pyrite,gangue", "--set", 'mineralogy.densities={"pyrit": 5}']) == 1
    assert "mineralogy.densities names 'pyrit'" in json.loads((tmp_path / "out" / "failures.json").read_text())[0][
        "reason"]
    # a bilevel PNG keeps its ids (0/1); a float TIFF is refused by the reader, naming it
    Image.fromarray(blob_labels((40, 40), 2, seed=2).astype(bool)).save(tmp_path / "bilevel.png")
    import tifffile

    tifffile.imwrite(tmp_path / "float.tif", np.zeros((20, 20), np.float32))
    assert main(["measure", str(tmp_path / "bilevel.png"), str(tmp_path / "float.tif"), "--out",
                 str(tmp_path / "out2"), "--classes", "resin,pyrite"]) == 1
    assert (tmp_path / "out2" / "bilevel" / "mineralogy.json").exists()
    (failure,) = json.loads((tmp_path / "out2" / "failures.json").read_text())
    assert "float.tif: SampleFormat 3 (floating point)" in failure["reason"]
    capsys.readouterr()


@pytest.mark.skipif(not LUMENSTONE.exists(), reason="the LumenStone masks (../shared/data) are not here")
def test_real_lumenstone_masks(ray_session, tmp_path, capsys):
    """Two real polished-section masks (8-bit PNG class codes, 3396x2547): every pixel, particle and boundary
    against a whole-image computation; a mask against itself as reference has no error."""
    from minseg.mineralogy import boundary_counts

    first, second = LUMENSTONE / "01.png", LUMENSTONE / "a01.png"
    out = tmp_path / "out"
    assert main(["measure", str(first), str(second), "--classes", LUMENSTONE_CLASSES, "--out", str(out),
                 "--reference", str(first), "--reference", str(second), "--set", "measure.block=1024"]) == 0
    printed = capsys.readouterr().out
    assert "liberation of pyrrhotite" in printed  # 01: a pyrrhotite-pentlandite-chalcopyrite ore
    assert "liberation of pyrite" in printed  # a01: pyrite, sphalerite, galena, tennantite
    for path in (first, second):
        labels = np.asarray(Image.open(path))
        document = measured(out / path.stem)
        counts = np.bincount(labels.ravel(), minlength=12)
        names = LUMENSTONE_CLASSES.split(",")
        assert [document["modal_mineralogy"][n]["pixels"] for n in names] == counts.tolist()
        ids, _ = ndimage.label(labels != 0, structure=np.ones((3, 3)))
        sizes = np.bincount(ids.ravel())[1:]
        assert document["particles"]["count"] == (sizes >= 4).sum() == \
            pq.read_table(out / path.stem / "particles.parquet").num_rows
        assert document["tally"]["boundary"] == boundary_counts(labels, 12).tolist()
        errors = document["reference"]["errors"]
        assert errors["modal"]["mae_pp"] == 0.0 and errors["association"]["mean_misassigned_pp"] == 0.0


def test_the_demo_slide_reports_its_mineralogy_against_its_true_mask(ray_session, tmp_path):
    """The demo's last step: the slide segmented, scored, and its mineralogy measured against the true mask's,
    the headline lines (modal %, P80, liberation of the main sulphide, errors) ready to print."""
    from minseg.config import MinsegConfig
    from minseg.demo import SynthResult, segment_synthetic_slide
    from minseg.inference.config import SegmentSettings
    from minseg.synth.config import SlideSynth
    from minseg.synth.minerals import class_map_document
    from minseg.synth.slide import write_synthetic_slide
    from tests.inference.conftest import write_manifest

    document = class_map_document()
    classes = {"classes": [{"id": i, "name": c["name"], "codes": c["codes"], "color": c["color"]}
                           for i, c in enumerate(document["classes"])],
               "ignore_index": 255, "ignore_codes": [], "mask_encoding": "codes"}
    manifest = write_manifest(tmp_path / "manifest", "soft", members=[("halfunet", "half_unet", {"width": 0.125})],
                              classes=classes)
    slide = write_synthetic_slide(str(tmp_path / "slide.tif"), str(tmp_path / "slide_mask.tif"),
                                  SlideSynth(height=160, width=200, tile=64), seed=5)
    config = MinsegConfig.model_validate({"run": {"output_uri": str(tmp_path / "out")}})
    config.segment = SegmentSettings(manifest_uri=manifest, output_tile=64, block=128, actors=1)
    score = segment_synthetic_slide(config, SynthResult(str(tmp_path), 0.0, {"slide": slide}, {}))
    folder = Path(score.output) / "slide"
    predicted = json.loads((folder / "mineralogy.json").read_text())
    truth = json.loads((folder / "reference_mineralogy.json").read_text())
    mask = np.asarray(Image.open(tmp_path / "slide_mask.tif"))
    names = [c["name"] for c in document["classes"]]
    assert [truth["modal_mineralogy"][n]["pixels"] for n in names] == np.bincount(mask.ravel(), minlength=9).tolist()
    errors = predicted["reference"]["errors"]
    minerals = errors["modal"]["minerals"]
    for name, entry in minerals.items():  # each error is the prediction's number minus the mask's
        expected = predicted["modal_mineralogy"][name]["sample_area_percent"] - \
            truth["modal_mineralogy"][name]["sample_area_percent"]
        assert entry["sample_area_pct"]["error"] == pytest.approx(expected, abs=1e-3)
    assert any(line.startswith("modal mineralogy") for line in score.mineralogy)
    assert any(line.startswith("against the reference mask") for line in score.mineralogy)


def test_the_library_refuses_another_commands_output_folder(tmp_path):
    """The CLI's output check (naming --out) is not the only guard: a Python caller of ``measure_label_maps`` giving a
    segment run's folder is refused before anything is written there, naming the config key."""
    from minseg.config.schema import MinsegConfig
    from minseg.errors import InputError
    from minseg.inference.config import MeasureSettings
    from minseg.inference.measure import measure_label_maps

    Image.fromarray(blob_labels((32, 32), 4, seed=1).astype(np.uint8)).save(tmp_path / "m.png")
    segmented = tmp_path / "segment"
    segmented.mkdir()
    (segmented / "run_summary.json").write_text("{}")
    config = MinsegConfig()
    config.measure = MeasureSettings(labels=[str(tmp_path / "m.png")], classes=list(NAMES),
                                     output_uri=str(segmented))
    with pytest.raises(InputError, match=r"^measure.output_uri: .*segment holds the outputs of minseg segment"):
        measure_label_maps(config)
    assert sorted(p.name for p in segmented.iterdir()) == ["run_summary.json"]


def test_a_map_named_like_another_in_case_only_keeps_the_folder_an_earlier_run_gave_it(tmp_path):
    """Names differing only in case are hashed (one folder on macOS and Windows), but a map an earlier run measured
    into its plain folder keeps it, as segment's slides do; a name the run's own files use never gets its plain
    folder."""
    from minseg.inference.measure import map_ids, own_folders
    from minseg.io.storage import Storage

    out = tmp_path / "out"
    first, second, table = "/maps/Core7.tif", "/other/core7.tif", "/maps/slides.csv.tif"
    for folder, source in (("Core7", first), ("slides.csv", table)):
        (out / folder).mkdir(parents=True)
        (out / folder / "mineralogy.json").write_text(json.dumps({"source": source}))
    ids = map_ids([first, second, table])
    assert all(ids[uri] != name for uri, name in ((first, "Core7"), (second, "core7"), (table, "slides.csv")))
    assert own_folders(ids, str(out), Storage()) == {}
    assert ids[first] == "Core7" and ids[second].startswith("core7-") and ids[table].startswith("slides.csv-")


def test_a_map_given_a_hashed_folder_keeps_it_when_measured_later_alone(ray_session, tmp_path, capsys):
    """Two segment runs' ``S1/labels.tif`` collide (both hashed); either measured later alone finds its hashed
    folder again instead of a second, plain one (the tables would list its source twice): segment's rule. A map
    moved aside (its plain folder held another map's measurement) keeps that folder too."""
    from minseg.inference.measure import map_ids, own_folders
    from minseg.io.storage import Storage

    maps = []
    for run, seed in (("run1", 1), ("run2", 2)):
        (tmp_path / run / "S1").mkdir(parents=True)
        write_labels_tif(tmp_path / run / "S1" / "labels.tif", blob_labels((40, 50), 4, seed=seed))
        maps.append(str(tmp_path / run / "S1" / "labels.tif"))
    out = tmp_path / "out"
    base = ["--out", str(out), "--classes", ",".join(NAMES)]
    assert main(["measure", *maps, *base]) == 0
    def folders_now():  # map folders (not the batch report's `mineralogy/`) by the map they measured
        return {measured(p)["source"]: p.name for p in out.iterdir() if p.name != "mineralogy" and p.is_dir()
                and not p.name.startswith(".")}

    folders = folders_now()
    assert sorted(folders) == sorted(maps) and all(name.startswith("S1-") for name in folders.values())
    assert main(["measure", maps[1], *base]) == 0
    assert folders_now() == folders
    rows = list(csv.DictReader((out / "slides.csv").open()))
    # each map once, in its own folder: the one measured again and the other, measured before and still there
    assert sorted((row["slide"], row["uri"]) for row in rows) == sorted((folders[m], m) for m in maps)
    capsys.readouterr()

    # moved aside: `x/` holds another map's measurement, so x.tif went to x-<hash>/; later it keeps that one
    (out / "x").mkdir()
    (out / "x" / "mineralogy.json").write_text(json.dumps({"source": "/elsewhere/x.tif"}))
    ids = map_ids(["/maps/x.tif"])
    assert own_folders(ids, str(out), Storage()) == {} and ids["/maps/x.tif"].startswith("x-")
    (out / ids["/maps/x.tif"]).mkdir()
    (out / ids["/maps/x.tif"] / "mineralogy.json").write_text(json.dumps({"source": "/maps/x.tif"}))
    again = map_ids(["/maps/x.tif"])
    assert own_folders(again, str(out), Storage()) == {} and again == ids
    # both taken: refused, naming the folder and whose measurement it holds
    (out / ids["/maps/x.tif"] / "mineralogy.json").write_text(json.dumps({"source": "/third/x.tif"}))
    refused = own_folders(map_ids(["/maps/x.tif"]), str(out), Storage())
    assert refused == {"/maps/x.tif": f"/maps/x.tif: its output folder {out / 'x'}/ holds the outputs of "
                       f"/elsewhere/x.tif, and {out / ids['/maps/x.tif']}/ those of /third/x.tif; measure it into "
                       "another output (--out)"}



def test_maps_of_one_name_twins_in_case_and_foreign_folders(ray_session, tmp_path, capsys, caplog):
    """Maps of one name in one run (``a.tif`` and ``a.ome.tif``; one slide's ``labels.tif`` and its
    ``segmentation.ome.zarr``) are each measured into a hashed folder (one was refused); a folder differing only in
    case, or holding files no record names, is never written over; a slide folder's name keeps its dots."""
    from minseg.inference.measure import map_ids, own_folders
    from minseg.io.storage import Storage

    labels = blob_labels((40, 50), 4, seed=4)
    (tmp_path / "t").mkdir()
    write_labels_tif(tmp_path / "t" / "a.tif", labels)
    write_labels_tif(tmp_path / "t" / "a.ome.tif", labels)
    (tmp_path / "Core.7").mkdir()
    write_labels_tif(tmp_path / "Core.7" / "labels.tif", labels)
    write_zarr(str(tmp_path / "Core.7" / "segmentation.ome.zarr"), labels)
    maps = [str(tmp_path / "t" / "a.tif"), str(tmp_path / "t" / "a.ome.tif"), str(tmp_path / "Core.7" / "labels.tif"),
            str(tmp_path / "Core.7" / "segmentation.ome.zarr")]
    out = tmp_path / "out"
    assert main(["measure", *maps, "--out", str(out), "--classes", ",".join(NAMES)]) == 0
    folders = sorted(row["slide"] for row in csv.DictReader((out / "slides.csv").open()))
    assert len(folders) == 4 and [f.rsplit("-", 1)[0] for f in folders] == ["Core.7", "Core.7", "a", "a"]
    capsys.readouterr()

    # a later map `A.tif`, alone: `a/`-like folders exist only hashed here, so it takes its plain name; `b.tif`
    # alone, beside a `B/` of another map, and `c.tif` beside a `c/` holding someone's notes: hashed, nothing touched
    for folder, source in (("B", "/elsewhere/B.tif"),):
        (out / folder).mkdir()
        (out / folder / "mineralogy.json").write_text(json.dumps({"source": source}))
    (out / "c").mkdir()
    (out / "c" / "notes.txt").write_text("mine")
    (out / "g").symlink_to(tmp_path / "unmounted")  # a link to nothing: no folder to write in
    ids = map_ids(["/maps/A.tif", "/maps/b.tif", "/maps/c.tif", "/maps/g.tif"])
    logging.getLogger("minseg").addHandler(caplog.handler)  # the CLI's logging (main above) stops propagation
    try:
        assert own_folders(ids, str(out), Storage()) == {}
    finally:
        logging.getLogger("minseg").removeHandler(caplog.handler)
    assert ids["/maps/A.tif"] == "A" and ids["/maps/b.tif"].startswith("b-") and ids["/maps/c.tif"].startswith("c-")
    assert ids["/maps/g.tif"].startswith("g-") and (out / "g").is_symlink()
    reasons = {r.fields["source"]: r.fields["reason"] for r in caplog.records if r.getMessage() == "measure.renamed"}
    assert reasons["/maps/b.tif"] == ("b/ holds the outputs of /elsewhere/B.tif (as B/: one folder with it on macOS "
                                      "and Windows)")
    assert reasons["/maps/g.tif"] == f"g/ holds the outputs of nothing: a link to {tmp_path / 'unmounted'}, which " \
        "does not exist (kept as it is)"
    # a map whose measurement was cut short (its begun record names it) keeps its folder; a damaged document
    # without that record makes the folder another's
    (out / "d" / ".minseg").mkdir(parents=True)
    (out / "d" / ".minseg" / "measuring.json").write_text(json.dumps({"source": "/maps/d.tif"}))
    (out / "d" / "grains.parquet").write_bytes(b"partial")
    (out / "e").mkdir()
    (out / "e" / "mineralogy.json").write_text('{"sour')
    ids = map_ids(["/maps/d.tif", "/maps/e.tif"])
    assert own_folders(ids, str(out), Storage()) == {}
    assert ids["/maps/d.tif"] == "d" and ids["/maps/e.tif"].startswith("e-")


def test_a_glob_of_ome_zarr_maps_and_a_run_where_every_map_fails(ray_session, tmp_path, capsys):
    """``'seg/*/segmentation.ome.zarr'`` finds segment's OME-Zarr maps (folders: a glob of files found none); a later
    run into the same output in which every map fails (a break-it pass: a mistyped path emptied the tables and
    deleted the batch report) keeps listing the maps measured there before, with their report, beside its
    failures; a map whose measurement is deleted since leaves the tables; with none left they are empty, with
    their columns."""
    labels = blob_labels((40, 50), 4, seed=6)
    for slide in ("s1", "s2"):
        write_zarr(str(tmp_path / "seg" / slide / "segmentation.ome.zarr"), labels)
    out = tmp_path / "out"
    assert main(["measure", str(tmp_path / "seg" / "*" / "segmentation.ome.zarr"), "--out", str(out)]) == 0
    assert sorted(row["slide"] for row in csv.DictReader((out / "slides.csv").open())) == ["s1", "s2"]
    assert main(["measure", str(tmp_path / "seg" / "*" / "none.ome.zarr"), "--out", str(out)]) == 2
    assert "matched no OME-Zarr (a folder holding zarr.json)" in capsys.readouterr().err

    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(tmp_path / "nine.png")
    first = (out / "slides.csv").read_text()
    assert main(["measure", str(tmp_path / "nine.png"), "--classes", ",".join(NAMES), "--out", str(out)]) == 1
    assert "(its tables list 2: 2 measured there before)" in capsys.readouterr().out
    assert (out / "slides.csv").read_text() == first and pq.read_table(out / "slides.parquet").num_rows == 2
    assert "| s1 |" in (out / "mineralogy" / "mineralogy.md").read_text()
    assert [f["slide"] for f in json.loads((out / "failures.json").read_text())] == ["nine"]
    summary = json.loads((out / "measure_summary.json").read_text())
    assert summary["done"] == [] and summary["failed"] == ["nine"] and summary["maps"] == ["s1", "s2"]
    assert (out / "s1" / "mineralogy.json").exists() and (out / "s2" / "mineralogy.json").exists()

    shutil.rmtree(out / "s1")  # its measurement gone: no longer listed
    assert main(["measure", str(tmp_path / "nine.png"), "--classes", ",".join(NAMES), "--out", str(out)]) == 1
    assert [row["slide"] for row in csv.DictReader((out / "slides.csv").open())] == ["s2"]
    shutil.rmtree(out / "s2")
    assert main(["measure", str(tmp_path / "nine.png"), "--classes", ",".join(NAMES), "--out", str(out)]) == 1
    assert (out / "slides.csv").read_text().splitlines() == ["slide,uri,reference,height,width,seconds"]
    assert pq.read_table(out / "slides.parquet").num_rows == 0 and not (out / "mineralogy").exists()
    capsys.readouterr()
