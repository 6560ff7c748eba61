"""A slide folder under an output holds one source's outputs, ever: slides of one file name (``Slide1.svs`` in every
case folder) never share one, within a run or across runs; "already done" means the same file, unchanged (URI,
size, modification time), with the same ensemble and level; a slide that has become unreadable is a failure in
every table at once."""

import json
import os

import numpy as np
import tifffile

from minseg.ensemble.manifest import load_manifest
from minseg.inference.config import SegmentSettings
from minseg.inference.blocks import record_uri
from minseg.inference.finish import prepare_slide
from minseg.inference.plan import plan_slide
from minseg.io.storage import Storage
from tests.inference.test_segment import run


def write_slide(path, height, width, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, photometric="rgb")
    return str(path)


def tables(out):
    rows = {}
    for line in (out / "slides.csv").read_text().splitlines()[1:]:
        slide, uri, status = line.split(",")[:3]
        rows[slide] = (uri, status)
    failures = [f["slide"] for f in json.loads((out / "failures.json").read_text())]
    summary = json.loads((out / "run_summary.json").read_text())
    assert [f["slide"] for f in summary["failed_slides"]] == failures
    assert {s["slide"]: (s["uri"], s["status"]) for s in summary["slides"]} == rows
    return rows, failures


def test_same_named_and_replaced_slides_are_never_mixed_up(ray_session, manifests, tmp_path):
    a = write_slide(tmp_path / "caseA" / "slide.tif", 20, 30, seed=1)
    b = write_slide(tmp_path / "caseB" / "slide.tif", 48, 60, seed=2)
    out = tmp_path / "out"
    first = run(manifests["soft"], [a], out)
    assert [s["slide"] for s in first.done] == ["slide"]

    # caseB/slide.tif in a later run, beside caseA's: its own folder, segmented, not skipped as caseA's
    second = run(manifests["soft"], [a, b], out)
    assert [s.uri for s in second.skipped] == [a] and [s["uri"] for s in second.done] == [b]
    (done_b,) = second.done
    assert done_b["slide"].startswith("slide-") and done_b["source_shape"] == [48, 60]
    assert json.loads((out / "slide" / "summary.json").read_text())["uri"] == a
    rows, failures = tables(out)
    assert rows == {"slide": (a, "skipped"), done_b["slide"]: (b, "done")} and failures == []
    alone = run(manifests["soft"], [b], out)  # alone, it finds its own folder again
    assert [(s.slide, s.uri) for s in alone.skipped] == [(done_b["slide"], b)] and not alone.done

    # caseA's file replaced in place by another picture: redone, reported with its new size
    write_slide(tmp_path / "caseA" / "slide.tif", 40, 50, seed=3)
    replaced = run(manifests["soft"], [a], out)
    assert [s["source_shape"] for s in replaced.done] == [[40, 50]] and not replaced.skipped
    # ... by one of the same size (only the file's size / modification time tell)
    write_slide(tmp_path / "caseA" / "slide.tif", 40, 50, seed=4)
    stat = os.stat(a)
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    same_size = run(manifests["soft"], [a], out)
    assert len(same_size.done) == 1 and not same_size.skipped
    assert run(manifests["soft"], [a], out).skipped  # unchanged now: skipped

    # caseA becomes unreadable: failed in the console's count, failures.json, run_summary.json and slides.csv alike
    (tmp_path / "caseA" / "slide.tif").write_bytes(b"not a tiff any more")
    broken = run(manifests["soft"], [a], out)
    assert [f.slide for f in broken.failed] == ["slide"]
    assert "no longer listed as complete" in broken.failed[0].reason
    rows, failures = tables(out)
    assert failures == ["slide"] and rows == {done_b["slide"]: (b, "skipped")}
    # and the batch mineralogy no longer counts it, though this run finished no slide
    assert json.loads((out / "mineralogy" / "mineralogy.json").read_text())["slides"] == [done_b["slide"]]


def test_a_slide_given_the_hashed_folder_keeps_it_in_a_later_run_alone(ray_session, manifests, tmp_path):
    """Names differing only in case collide (one folder on macOS and Windows): both get hashed folders; either
    segmented later without the other finds its hashed folder again instead of a second, plain one (the tables
    would list its source twice)."""
    c = write_slide(tmp_path / "caseC" / "core.tif", 20, 30, seed=5)
    d = write_slide(tmp_path / "caseD" / "Core.tif", 20, 30, seed=6)
    out = tmp_path / "out"
    both = run(manifests["soft"], [c, d], out)
    folders = {s["uri"]: s["slide"] for s in both.done}
    assert folders[c].startswith("core-") and folders[d].startswith("Core-")
    alone = run(manifests["soft"], [d], out)
    assert [(s.slide, s.uri) for s in alone.skipped] == [(folders[d], d)] and not alone.done
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(
        [folders[c], folders[d], "mineralogy"])
    rows, _ = tables(out)
    assert sorted(uri for uri, _ in rows.values()) == sorted([c, d])


def test_a_partial_slide_of_another_version_of_the_file_is_not_resumed(manifests, tmp_path):
    """Blocks recorded for the file before it was replaced are never mixed into the new one's outputs."""
    manifest = load_manifest(manifests["soft"])
    settings, storage = SegmentSettings(block=64, output_tile=64), Storage()
    path = tmp_path / "slide.tif"
    write_slide(path, 100, 120, seed=1)
    plan = plan_slide(str(path), "slide", manifest, settings, storage, str(tmp_path / "out"))
    classes = manifest.classes["classes"]
    todo, resumed = prepare_slide(plan, settings, storage, classes, manifest.digest(), {})
    (tmp_path / "out" / "slide" / ".minseg" / "blocks").mkdir(parents=True, exist_ok=True)
    open(record_uri(plan.output_uri, todo[0]), "wb").close()  # one block recorded, then the run was stopped
    again = plan_slide(str(path), "slide", manifest, settings, storage, str(tmp_path / "out"))
    assert prepare_slide(again, settings, storage, classes, manifest.digest(), {})[1] == 1  # same file: resumed
    write_slide(path, 100, 120, seed=2)  # replaced (same size)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    replaced = plan_slide(str(path), "slide", manifest, settings, storage, str(tmp_path / "out"))
    todo, resumed = prepare_slide(replaced, settings, storage, classes, manifest.digest(), {})
    assert resumed == 0 and len(todo) == 4  # 100x120 in 64-px blocks: every block redone
    assert not list((tmp_path / "out" / "slide" / ".minseg" / "blocks").glob("*"))


def test_a_folder_no_record_names_or_of_another_case_is_never_taken_over(ray_session, manifests, tmp_path):
    """A slide folder whose ``summary.json`` is damaged, one holding another program's files, and one differing only
    in case from the slide's name (one folder on macOS and Windows) are never written over: the slide gets the
    hashed folder. A slide lying in the folder of a slide this run segments is refused before any work (that folder
    is emptied first)."""
    import pytest

    from minseg.errors import InputError

    a = write_slide(tmp_path / "A" / "S1.tif", 20, 30, seed=1)
    b = write_slide(tmp_path / "B" / "S1.tif", 20, 30, seed=2)
    c = write_slide(tmp_path / "C" / "s1.tif", 20, 30, seed=3)
    t = write_slide(tmp_path / "T.tif", 20, 30, seed=4)
    out = tmp_path / "out"
    assert [s["slide"] for s in run(manifests["soft"], [a], out).done] == ["S1"]
    (out / "S1" / "summary.json").write_text('{"ur')  # damaged by hand (or a copy cut short)
    (out / "T").mkdir()
    (out / "T" / "notes.txt").write_text("the geologist's own notes")
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.parts[len(out.parts)] in ("S1", "T")}
    later = run(manifests["soft"], [b, t], out)
    folders = {s["uri"]: s["slide"] for s in later.done}
    assert folders[b].startswith("S1-") and folders[t].startswith("T-") and not later.failed
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.parts[len(out.parts)] in ("S1", "T")} \
        == kept
    # s1.tif, alone: `s1/` would be `S1/` on macOS and Windows
    (done,) = run(manifests["soft"], [c], out).done
    assert done["slide"].startswith("s1-") and not (out / "s1").exists()

    inside = write_slide(out / folders[b] / "copy.tif", 20, 30, seed=5)  # in B's folder, which --force redoes
    with pytest.raises(InputError, match=rf"^segment: {inside} lies in {out / folders[b]}/, the output folder of a "
                                         "slide this run segments"):
        run(manifests["soft"], [b, inside], out, force=True)
    assert (out / folders[b] / "copy.tif").exists() and (out / folders[b] / "summary.json").exists()
    (tmp_path / "link").symlink_to(out)  # the same folder through a link
    with pytest.raises(InputError, match=r"the output folder of a slide this run segments"):
        run(manifests["soft"], [b, str(tmp_path / "link" / folders[b] / "copy.tif")], out, force=True)
    report = write_slide(out / "mineralogy" / "extra.tif", 20, 30, seed=6)  # the report folder every run replaces
    with pytest.raises(InputError, match=rf"^segment: {report} lies in {out / 'mineralogy'}/, which every run into "
                                         "it replaces"):
        run(manifests["soft"], [report], out)
    assert (out / folders[b] / "copy.tif").exists() and os.path.exists(report)


def test_a_slide_stopped_while_its_folder_is_emptied_keeps_that_folder(manifests, tmp_path):
    """Prepared again (another ensemble), a slide's folder is emptied: a run stopped after the first delete (Ctrl-C,
    a killed driver; on S3 an earlier run's thousands of chunks) left files and no record, which a later run took
    for another program's and moved the slide to a hashed folder for good. The record naming the slide is written
    first and kept."""
    import pytest

    from minseg.inference.folders import FolderOwners
    from minseg.inference.segment import SEGMENT_RECORDS

    manifest = load_manifest(manifests["soft"])
    settings, out = SegmentSettings(block=64, output_tile=64), str(tmp_path / "out")
    path = write_slide(tmp_path / "slide.tif", 100, 120, seed=1)
    plan = plan_slide(path, "slide", manifest, settings, Storage(), out)
    classes = manifest.classes["classes"]
    prepare_slide(plan, settings, Storage(), classes, manifest.digest(), {})

    class StoppedAfterOneDelete(Storage):
        deleted = 0

        def delete(self, uri, missing_ok=True):
            if self.deleted:
                raise KeyboardInterrupt
            self.deleted += 1
            super().delete(uri, missing_ok)

    with pytest.raises(KeyboardInterrupt):
        prepare_slide(plan, settings, StoppedAfterOneDelete(), classes, "another ensemble", {})
    assert FolderOwners(Storage(), out, SEGMENT_RECORDS)("slide") == path


def test_each_record_is_read_once_and_absent_folders_cost_no_request(tmp_path):
    """Planning a rerun over thousands of slides on S3: the owner lookup reads a finished slide's summary.json, and
    the plan then asks for the same document (is it finished?): one GET, not two; a slide with no folder yet costs
    none (the one listing says it is absent)."""
    from minseg.inference.folders import FolderOwners
    from minseg.inference.segment import SEGMENT_RECORDS

    out = tmp_path / "out"
    (out / "done").mkdir(parents=True)
    (out / "done" / "summary.json").write_text(json.dumps({"uri": "s3://b/done.tif", "slide": "done"}))
    (out / "damaged").mkdir()
    (out / "damaged" / "summary.json").write_text("{not json")

    class Counting(Storage):
        reads: list = []

        def read_json(self, uri):
            self.reads.append(uri.removeprefix(str(out) + "/"))
            return super().read_json(uri)

    owners = FolderOwners(Counting(), str(out), SEGMENT_RECORDS)
    assert owners("done") == "s3://b/done.tif" and owners("new") is None
    assert owners.document(f"{out}/done/summary.json") == {"uri": "s3://b/done.tif", "slide": "done"}
    assert owners.document(f"{out}/new/summary.json") is None and owners.document(f"{out}/damaged/summary.json") is None
    assert Counting.reads == ["done/summary.json", "damaged/summary.json"]


def test_slides_named_in_any_script_keep_their_names_and_earlier_folders(ray_session, manifests, tmp_path):
    """``Шлиф-12.tif`` was segmented into ``____-12/`` (only ASCII letters and digits were kept): two sections named
    in Cyrillic or Chinese collided into hashed folders, and a geologist could not tell the folders apart. Names of
    any script are kept now (NFC: a name typed on macOS is one folder); a slide an earlier run gave the ASCII name
    keeps that folder (skipped there, not redone beside it)."""
    import shutil
    import unicodedata

    from minseg.inference.segment import slide_ids

    decomposed = unicodedata.normalize("NFD", "Hématite 3.tif")  # as macOS file names come
    ids = slide_ids(["/s/Шлиф-12.tif", "/s/Срез-12.tif", "/s/薄片7.png", f"/s/{decomposed}", "/s/a:b\u200f.tif",
                     "/s/कि12.tif"])
    assert list(ids.values()) == ["Шлиф-12", "Срез-12", "薄片7", "Hématite_3", "a_b_", "कि12"]  # marks kept too
    # one folder on NTFS and APFS, though lower() tells them apart (the final sigma): hashed apart
    assert all(name.startswith(("ΟΔΟΣ-", "οδος-")) for name in slide_ids(["/s/ΟΔΟΣ.tif", "/s/οδος.tif"]).values())
    assert ids[f"/s/{decomposed}"] == unicodedata.normalize("NFC", "Hématite_3")

    slide = write_slide(tmp_path / "in" / "Шлиф-12.tif", 20, 30, seed=1)
    out = tmp_path / "out"
    assert [s["slide"] for s in run(manifests["soft"], [slide], out).done] == ["Шлиф-12"]
    assert json.loads((out / "Шлиф-12" / "summary.json").read_text())["uri"] == slide
    shutil.move(out / "Шлиф-12", out / "____-12")  # as a run before the change named it
    again = run(manifests["soft"], [slide], out)
    assert [s.slide for s in again.skipped] == ["____-12"] and not again.done
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["____-12", "mineralogy"]
    from minseg.inference.folders import earlier_forms  # a decomposed (macOS) name came out with its accent as `_`

    assert earlier_forms("Hématite_3") == ("Hématite_3", "H_matite_3", "He_matite_3")
