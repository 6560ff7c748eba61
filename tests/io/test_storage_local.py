import os

import pytest

from minseg.io.storage import ObjectNotFoundError, Storage, StorageError, join_uri, parse_uri


def test_parse_uri_forms(tmp_path):
    assert parse_uri("s3://bucket/a/b.png").bucket == "bucket"
    assert parse_uri("s3://bucket/a/b.png").path == "a/b.png"
    assert parse_uri(f"file://{tmp_path}/x").path == f"{tmp_path}/x"
    assert parse_uri("rel/x").path == os.path.abspath("rel/x")
    assert join_uri("s3://b/run/", "/tiles/", "a.png") == "s3://b/run/tiles/a.png"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("gs://bucket/key", "unsupported scheme 'gs'"),
        ("s3://", "has no bucket"),
        ("s3:/bucket/key", "not an s3:// or file:// URI"),  # a local folder 's3:' is never meant
        ("S3:bucket", "not an s3:// or file:// URI"),
        ("file:/tmp/x", "not an s3:// or file:// URI"),
        ("s3://AKIA:secret@bucket/key", "must not carry credentials"),
        ("file://otherhost/x", "must be local"),
        ("", "empty"),
    ],
)
def test_parse_uri_rejects(uri, message):
    with pytest.raises(StorageError, match=message):
        parse_uri(uri)


def test_roundtrip_and_listing(tmp_path):
    storage = Storage()
    storage.write_bytes(str(tmp_path / "a" / "one.bin"), b"1")
    storage.write_text(str(tmp_path / "a" / "sub" / "two.txt"), "two")
    storage.write_bytes(str(tmp_path / "b.bin"), b"22")
    assert storage.read_text(str(tmp_path / "a" / "sub" / "two.txt")) == "two"
    listed = [info.uri for info in storage.list(str(tmp_path / "a"))]
    assert listed == [str(tmp_path / "a" / "one.bin"), str(tmp_path / "a" / "sub" / "two.txt")]
    # a name prefix, not a folder
    assert [i.uri for i in storage.list(str(tmp_path / "b"))] == [str(tmp_path / "b.bin")]
    assert storage.size(str(tmp_path / "b.bin")) == 2
    storage.copy(str(tmp_path / "b.bin"), str(tmp_path / "c" / "copy.bin"))
    assert storage.read_bytes(str(tmp_path / "c" / "copy.bin")) == b"22"
    storage.delete(str(tmp_path / "b.bin"))
    storage.delete(str(tmp_path / "b.bin"))  # idempotent
    assert not storage.exists(str(tmp_path / "b.bin"))
    assert storage.delete_prefix(str(tmp_path / "a")) == 2
    # ending in '/', a folder only, as on S3: `out/S1/` of a slide never written is not `out/S10/` (its files were
    # listed, and deleted by delete_prefix when a slide S1 failed before its folder existed)
    storage.write_text(str(tmp_path / "out" / "S10" / "summary.json"), "S10's")
    assert list(storage.list(str(tmp_path / "out" / "S1") + "/")) == []
    assert storage.delete_prefix(str(tmp_path / "out" / "S1") + "/") == 0
    assert storage.read_text(str(tmp_path / "out" / "S10" / "summary.json")) == "S10's"


def test_missing_file_error_names_path(tmp_path):
    missing = str(tmp_path / "nope.png")
    with pytest.raises(ObjectNotFoundError, match="nope.png: no such file"):
        Storage().read_bytes(missing)
    with pytest.raises(FileNotFoundError):  # usable with plain except FileNotFoundError too
        Storage().open_read(missing)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "result.bin"
    storage = Storage()
    storage.write_bytes(str(target), b"old")
    with pytest.raises(RuntimeError):
        with storage.open_write(str(target)) as stream:
            stream.write(b"half of the new")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"  # old content intact, never a partial file
    assert os.listdir(target.parent) == ["result.bin"]  # temp file removed


def test_unclosed_writer_is_not_published(tmp_path):
    target = tmp_path / "dropped.bin"
    stream = Storage().open_write(str(target))
    stream.write(b"partial")
    del stream
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_staged_output_publishes_only_on_success(tmp_path):
    storage = Storage()
    with storage.staged_output(str(tmp_path / "ok.tif")) as path:
        with open(path, "wb") as f:
            f.write(b"tiff")
    assert (tmp_path / "ok.tif").read_bytes() == b"tiff"
    with pytest.raises(ValueError):
        with storage.staged_output(str(tmp_path / "bad.tif")) as path:
            with open(path, "wb") as f:
                f.write(b"half")
            raise ValueError("writer failed")
    assert sorted(os.listdir(tmp_path)) == ["ok.tif"]


def test_a_killed_writers_scratch_is_removed_and_a_live_ones_kept(tmp_path):
    """A run killed mid-write leaves its temp file (and a pyramid writer its scratch folder, GBs at survey
    scale) beside the outputs; the next write there removes them, but never a live process's scratch."""
    import signal
    import socket
    import subprocess
    import sys

    from minseg.io.storage import _pid_namespace

    writer = ("import sys, time\nfrom minseg.io.storage import Storage\n"
              "out = Storage().open_write(sys.argv[1]); out.write(b'x' * 1000)\n"
              "print('writing', flush=True); time.sleep(120)\n")

    def start(name):
        process = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path / name)], stdout=subprocess.PIPE,
                                   text=True)
        assert process.stdout.readline().strip() == "writing"
        return process

    killed, live = start("killed.bin"), start("live.bin")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        owner = f"{killed.pid}-{_pid_namespace()}@{socket.gethostname()}"
        dead_folder = tmp_path / f"minseg-pyramid-abc.{owner}.minseg-tmp"
        dead_folder.mkdir()
        (dead_folder / "level1.raw").write_bytes(b"\0" * 100)
        names = sorted(os.listdir(tmp_path))
        assert len(names) == 3 and all(".minseg-tmp" in name for name in names), names
        storage = Storage()
        assert [o.uri for o in storage.list(str(tmp_path))] == [], "scratch is never listed as output"
        storage.write_bytes(str(tmp_path / "next.bin"), b"y")
        left = sorted(os.listdir(tmp_path))
        assert len(left) == 2 and "next.bin" in left and any(n.startswith(".live.bin.") for n in left), left
    finally:
        live.kill()
        live.wait()


def test_a_folder_or_a_file_in_the_way_is_a_storage_error_naming_the_path(tmp_path):
    """Was IsADirectoryError naming a temp file, FileExistsError or NotADirectoryError: tracebacks."""
    storage = Storage()
    (tmp_path / "folder").mkdir()
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(StorageError, match=r"folder: is a folder, not a file"):
        storage.write_bytes(str(tmp_path / "folder"), b"x")
    with pytest.raises(StorageError, match=r"folder: is a folder, not a file"):
        with storage.staged_output(str(tmp_path / "folder")):
            pass
    for target in ("a.txt/x", "a.txt/deeper/x"):
        with pytest.raises(StorageError, match=rf"{target}: lies under .*a.txt, a file, not a folder"):
            storage.write_bytes(str(tmp_path / target), b"x")
    with pytest.raises(StorageError, match=r"folder: is a directory, not a file"):
        storage.open_read(str(tmp_path / "folder"))
    with pytest.raises(StorageError, match=r"folder: is a folder, not a file"):
        storage.copy(str(tmp_path / "a.txt"), str(tmp_path / "folder"))
    with pytest.raises(StorageError, match=r"folder: is a folder, not a file"):
        storage.delete(str(tmp_path / "folder"))
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "folder"]  # no scratch left behind
    assert os.listdir(tmp_path / "folder") == []


def test_delete_of_nothing_is_an_error_only_when_asked(tmp_path):
    storage = Storage()
    storage.delete(str(tmp_path / "gone.txt"))  # the library's default: already gone is fine
    with pytest.raises(ObjectNotFoundError, match="gone.txt: no such file or folder"):
        storage.delete(str(tmp_path / "gone.txt"), missing_ok=False)
    assert not storage.is_folder(str(tmp_path / "gone.txt"))
    assert storage.is_folder(str(tmp_path))


def replaced_folder(storage: Storage, root: str) -> dict[str, str]:
    """An earlier run's folder ``root/s1`` replaced by its redo folder: what ``root/s1`` holds after (name -> text).
    Then the three ways a replacement is found cut short, each completed by ``finish_replacements``. Shared with the
    S3 test."""
    from minseg.io.storage import redo_folder

    final = join_uri(root, "s1")
    staged = redo_folder(final)
    assert staged == join_uri(root, ".minseg-redo", "s1")

    def contents(folder: str) -> dict[str, str]:
        return {info.uri[len(folder) + 1:]: storage.read_text(info.uri) for info in storage.list(folder + "/")}

    def write(folder: str, files: dict[str, str]) -> None:
        for name, text in files.items():
            storage.write_text(join_uri(folder, name), text)

    new = {"summary.json": "new", "z/zarr.json": "new", "z/0": "new", "z/1/c": "new"}
    write(final, {"summary.json": "old", "z/zarr.json": "old", "old_only.txt": "old", "z/0": "old"})
    write(staged, new)
    write(join_uri(root, "s2"), {"summary.json": "another slide's"})
    storage.replace_folder(staged, final, ("z/zarr.json", "summary.json"))
    assert not list(storage.list(join_uri(root, ".minseg-redo") + "/"))
    assert contents(join_uri(root, "s2")) == {"summary.json": "another slide's"}
    replaced = contents(final)
    # cut short: before it began (the earlier marker still there), half-way (no marker; on S3 a mix of files),
    # and after the last copy (the very same marker in both): each completed by the next run
    for name, earlier in {"s3": {"summary.json": "old", "old_only.txt": "old"},
                          "s4": {"z/0": "new", "old_only.txt": "old"}, "s5": dict(new)}.items():
        write(join_uri(root, name), earlier)
        write(redo_folder(join_uri(root, name)), new)
    assert storage.finish_replacements(root, "summary.json", ("z/zarr.json", "summary.json")) == ["s3", "s4"]
    assert all(contents(join_uri(root, name)) == new for name in ("s3", "s4", "s5"))
    assert not list(storage.list(join_uri(root, ".minseg-redo") + "/"))
    assert storage.finish_replacements(root, "summary.json", ("summary.json",)) == []
    return replaced


def replaced_files(storage: Storage, root: str) -> dict[str, str]:
    """A folder holding an earlier run and someone's own files (``root``), its run replaced by the complete one
    staged inside it (``replace_files`` with ``owned``): what ``root`` holds after (name -> text). First cut short
    half-way (the marker gone, one file already new, an earlier-only file already deleted), then completed. Shared
    with the S3 test."""
    staged = join_uri(root, ".minseg-redo", "prospect")
    for name, text in {"summary.json": "old", "map.tif": "old", "notes.txt": "mine", "inputs/a.csv": "old",
                       "inputs/old_only.csv": "old", "cv/fold3/map.tif": "old", "models/m.pt": "old",
                       "elsewhere/b.txt": "mine", "table.csv": "old", "cv-0a1b/x.tif": "mine",
                       "table.csv.bak": "mine"}.items():
        storage.write_text(join_uri(root, name), text)
    for name in ("summary.json", "map.tif", "inputs/a.csv", "cv/fold1/map.tif", "models/m.pt"):
        storage.write_text(join_uri(staged, name), "new")
    storage.delete(join_uri(root, "summary.json"))  # cut short: the marker left first, ...
    storage.write_text(join_uri(root, "map.tif"), "new")  # ... one file was in place, ...
    storage.delete(join_uri(root, "cv/fold3/map.tif"))  # ... and an earlier-only file deleted
    # owned: folders, and a file the new run does not write (looked up as a file, not as a name prefix)
    storage.replace_files(staged, root, ("summary.json",), ("inputs", "cv", "models", "table.csv"))
    return {info.uri[len(root) + 1:]: storage.read_text(info.uri) for info in storage.list(root + "/")}


REPLACED_FILES = {"summary.json": "new", "map.tif": "new", "notes.txt": "mine", "inputs/a.csv": "new",
                  "cv/fold1/map.tif": "new", "models/m.pt": "new", "elsewhere/b.txt": "mine", "cv-0a1b/x.tif": "mine",
                  "table.csv.bak": "mine"}


def test_a_staged_run_replaces_only_the_earlier_runs_files(tmp_path):
    """Someone's own files in the folder are kept; an owned folder's files the new run did not write go (a fold no
    longer configured), with the folders left empty; the staging folder goes last."""
    storage = Storage()
    assert replaced_files(storage, str(tmp_path / "out")) == REPLACED_FILES
    assert not (tmp_path / "out" / "cv" / "fold3").exists()
    assert not (tmp_path / "out" / ".minseg-redo" / "prospect").exists()
    # copy_files (a --resume that replaces a finished run starts from its members): hard links locally, and a write
    # to either copy (always a new file renamed into place) leaves the other as it was
    assert storage.copy_files(str(tmp_path / "out" / "cv"), str(tmp_path / "copy")) == 1
    storage.write_text(str(tmp_path / "copy" / "fold1" / "map.tif"), "changed")
    assert (tmp_path / "out" / "cv" / "fold1" / "map.tif").read_text() == "new"


def test_a_staged_run_linked_from_the_final_folder_and_named_relatively_is_put_in_place(tmp_path, monkeypatch):
    """Files the staged run holds as links of the final folder's own (a --resume copies the finished members in):
    a rename onto the same file does nothing, and left its scratch link behind, unlisted, for ever. Relative
    paths: listings name files by absolute paths, so a relative folder's names were cut at the wrong place."""
    monkeypatch.chdir(tmp_path)
    storage = Storage()
    for name in ("summary.json", "models/m.pt", "models/fold1/m.pt", "models/ray/x/.marker"):
        storage.write_text(f"out/{name}", "finished")
    assert storage.copy_files("out/models", "out/.minseg-redo/prospect/models", skip=("ray",)) == 2
    storage.write_text("out/.minseg-redo/prospect/models/fold1/m.pt", "retrained")
    storage.write_text("out/.minseg-redo/prospect/summary.json", "new")
    storage.replace_files("out/.minseg-redo/prospect", "out/", ("summary.json",), ("models",))
    assert {str(p.relative_to(tmp_path / "out")): p.read_text() for p in (tmp_path / "out").rglob("*")
            if p.is_file()} == {"summary.json": "new", "models/m.pt": "finished", "models/fold1/m.pt": "retrained"}


def test_a_staging_folder_deleted_half_way_is_not_taken_for_a_run(tmp_path):
    """The staging folder of a replacement that is done goes with its marker last: until the marker goes the final
    folder holds the same one (``replacement_done``), and what is left after is no complete run."""
    storage, out = Storage(), str(tmp_path / "out")
    for name in ("summary.json", "a.csv", "inputs/b.csv"):
        storage.write_text(f"{out}/.minseg-redo/p/{name}", name)
    storage.replace_files(f"{out}/.minseg-redo/p", out, ("summary.json",), ("inputs",))
    for name in ("summary.json", "a.csv", "inputs/b.csv"):  # as it was, now halfway through the deletion
        storage.write_text(f"{out}/.minseg-redo/p/{name}", name)
    storage.delete(f"{out}/.minseg-redo/p/inputs/b.csv")
    assert storage.replacement_done(f"{out}/.minseg-redo/p", out, "summary.json")
    storage.delete_staged(f"{out}/.minseg-redo/p", ("summary.json",))
    assert not (tmp_path / "out" / ".minseg-redo" / "p").exists()
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "a.csv", "inputs/b.csv", "summary.json"]


def test_publishing_looks_only_at_the_names_a_run_owns_and_a_failed_cleanup_is_no_failure(tmp_path, caplog):
    """``publish_staged`` lists the owned names of the output, not the whole folder (a segmentation output holds
    every slide's chunks: on S3 thousands of listing pages to find four tables); once every output is in place, a
    staging folder that cannot be deleted is a warning, not an error saying the folder is unfinished."""
    import logging

    from minseg.io.storage import staging_folder

    class Watched(Storage):
        listed: list[str] = []
        refuse_staged_deletes = False

        def list(self, prefix):
            self.listed.append(str(prefix))
            return super().list(prefix)

        def delete(self, uri, missing_ok=True):
            if self.refuse_staged_deletes and "/.minseg-redo/" in str(uri):
                raise StorageError(f"{uri}: cannot delete it: Operation not permitted")
            super().delete(uri, missing_ok)

    storage, out = Watched(), str(tmp_path / "out")
    for name in ("slides.csv", "mineralogy/mineralogy.json", "mineralogy/old.png", "run_summary.json",
                 "s1/summary.json", "slides.csv-0a1b2c3d/summary.json", "notes.txt"):
        storage.write_text(f"{out}/{name}", "earlier")
    staged = staging_folder(out, "segment")
    for name in ("slides.csv", "mineralogy/mineralogy.json", "run_summary.json"):
        storage.write_text(f"{staged}/{name}", "new")
    storage.listed.clear()
    storage.publish_staged(out, "segment", ("run_summary.json",), ("slides.csv", "mineralogy", "failures.json"))
    assert all(prefix.rstrip("/") != out for prefix in storage.listed), storage.listed
    assert {str(p.relative_to(tmp_path / "out")): p.read_text() for p in (tmp_path / "out").rglob("*")
            if p.is_file()} == {"slides.csv": "new", "mineralogy/mineralogy.json": "new", "run_summary.json": "new",
                                "s1/summary.json": "earlier", "slides.csv-0a1b2c3d/summary.json": "earlier",
                                "notes.txt": "earlier"}

    for name in ("slides.csv", "run_summary.json"):
        storage.write_text(f"{staged}/{name}", "newer")
    storage.refuse_staged_deletes = True
    with caplog.at_level(logging.WARNING, logger="minseg"):
        storage.publish_staged(out, "segment", ("run_summary.json",), ("slides.csv",))
    assert "segment.staging_not_removed" in caplog.text
    assert (tmp_path / "out" / "run_summary.json").read_text() == "newer"
    storage.refuse_staged_deletes = False
    assert not storage.finish_staged(out, "segment", ("run_summary.json",), lambda: ("slides.csv",))
    assert not (tmp_path / "out" / ".minseg-redo").exists()

    class MarkerStays(Storage):  # the very first step, taking the earlier marker away, fails: nothing changed
        def delete(self, uri, missing_ok=True):
            raise StorageError(f"{uri}: cannot delete it: Operation not permitted")

    storage.write_text(f"{staged}/run_summary.json", "newest")
    with pytest.raises(StorageError, match=r"Operation not permitted; .*/out still holds the earlier outputs whole: "
                                           r"the new ones are complete in .*/out/.minseg-redo/.segment-tables"):
        MarkerStays().publish_staged(out, "segment", ("run_summary.json",), ())
    assert (tmp_path / "out" / "run_summary.json").read_text() == "newer"


def test_an_output_in_a_staging_folder_or_a_staging_folder_that_is_a_file_is_refused(tmp_path):
    from minseg.errors import InputError
    from minseg.io.storage import refuse_other_command_outputs, refuse_redo_file

    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"^segment.output_uri: .*/out/.minseg-redo/.segment-tables lies in a "
                                         r"\.minseg-redo folder"):
        refuse_other_command_outputs(str(out / ".minseg-redo" / ".segment-tables"), "segment", "segment.output_uri",
                                     Storage())
    (out / ".minseg-redo").mkdir(parents=True)
    (tmp_path / "link").symlink_to(out / ".minseg-redo")  # through a link too
    with pytest.raises(InputError, match=r"^--out: .*/link/x lies in a \.minseg-redo folder"):
        refuse_other_command_outputs(str(tmp_path / "link" / "x"), "measure", "--out", Storage())
    (out / ".minseg-redo" / ".measure-tables").write_text("someone's")
    refuse_redo_file(str(out), "segment", Storage())  # not segment's
    with pytest.raises(InputError, match=r"/out/.minseg-redo/.measure-tables is a file; minseg measure stages"):
        refuse_redo_file(str(out), "measure", Storage())


def test_a_finished_redo_folder_takes_the_earlier_folders_place_whole(tmp_path):
    """Nothing of the earlier run is left beside the redo's files (a file it no longer writes goes too)."""
    storage = Storage()
    assert replaced_folder(storage, str(tmp_path / "out")) == {
        "summary.json": "new", "z/zarr.json": "new", "z/0": "new", "z/1/c": "new"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".minseg-tmp")]  # nothing set aside left
    storage.remove_empty_folder(str(tmp_path / "out" / ".minseg-redo"))
    assert not (tmp_path / "out" / ".minseg-redo").exists()
    # with no redo folder, a folder whose name merely starts like it is no redo (a local listing takes a missing
    # folder's path as a name prefix)
    storage.write_text(str(tmp_path / "out" / ".minseg-redoX" / "summary.json"), "someone's")
    storage.write_text(str(tmp_path / "out" / ".minseg-redo-b" / "s" / "summary.json"), "someone's")
    assert storage.redo_folders(str(tmp_path / "out")) == {}
    assert storage.finish_replacements(str(tmp_path / "out"), "summary.json", ("summary.json",)) == []
    assert (tmp_path / "out" / ".minseg-redoX" / "summary.json").read_text() == "someone's"


def test_the_file_system_refusing_a_write_is_a_storage_error_naming_the_path(tmp_path):
    """A read-only folder, a full disk or a name the file system refuses was a Python traceback (exit 1) in
    whichever command hit it; it is a StorageError naming the path and the reason (exit 2)."""
    from minseg.io.storage import AccessDeniedError, StorageError

    storage = Storage()
    long_name = str(tmp_path / ("x" * 300 + ".json"))
    def staged():
        with storage.staged_output(long_name) as path:  # the scratch file's own name is cut to fit
            with open(path, "w") as stream:
                stream.write("x")

    for write in (lambda: storage.write_text(long_name, "x"), staged,
                  lambda: storage.write_text(str(tmp_path / ("d" * 300) / "a.json"), "x")):
        with pytest.raises(StorageError, match=r"xxxx.*: cannot write it: File name too long|dddd.*: cannot write "
                                               r"it: File name too long") as info:
            write()
        assert info.value.exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == []  # no scratch left
    # a name the file system takes is written (the hidden scratch beside it, longer, went past 255 bytes)
    storage.write_text(str(tmp_path / ("q" * 230 + ".txt")), "x")
    assert [p.name for p in tmp_path.iterdir()] == ["q" * 230 + ".txt"]
    (tmp_path / ("q" * 230 + ".txt")).unlink()
    if os.geteuid() == 0:  # root writes into read-only folders, not into sysfs (Linux: no file is made there)
        with pytest.raises(AccessDeniedError, match=r"/sys/minseg-test.json: cannot write it: Permission denied"):
            storage.write_text("/sys/minseg-test.json", "x")
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "old.json").write_text("{}")
    locked.chmod(0o500)
    try:
        with pytest.raises(AccessDeniedError, match=r"locked/new.json: cannot write it: Permission denied"):
            storage.write_text(str(locked / "new.json"), "x")
        with pytest.raises(AccessDeniedError, match=r"locked/old.json: cannot delete it: Permission denied"):
            storage.delete(str(locked / "old.json"))
    finally:
        locked.chmod(0o700)
    unreadable = tmp_path / "unreadable.json"
    unreadable.write_text("{}")
    unreadable.chmod(0)
    with pytest.raises(AccessDeniedError, match=r"unreadable.json: cannot read it: Permission denied \(check the "
                                                r"file's permissions\)"):
        storage.read_bytes(str(unreadable))


def test_a_file_stem_is_one_safe_distinct_part_of_a_file_name():
    """Item ids and member names read from documents name files: never a path, a hidden file or a name the file
    system refuses (a 300-character item id failed the overlay at the end of an evaluation), and two of them never
    one file (``a/b`` and ``a_b`` wrote one overlay twice)."""
    from minseg.io.storage import file_stem

    names = ("a/b", "a_b", "..", ".x", "", "a\nb", "a\\b", "\ud800x", "x" * 300, "x" * 299 + "y", "é" * 80)
    stems = [file_stem(name) for name in names]
    assert len(set(stems)) == len(names) and file_stem("ok-name_1.2") == "ok-name_1.2" and stems[1] == "a_b"
    assert all("/" not in s and "\\" not in s and not s.startswith(".") and s.isprintable() for s in stems)
    assert all(len(s.encode()) <= 100 for s in stems)
    assert stems[0].startswith("a_b-") and stems[2].startswith("_.-")


def test_a_glob_matching_a_name_that_is_not_utf8_is_refused_naming_it(tmp_path, capsys):
    """A Latin-1 file name (`peña.tif` as the byte 0xF1) matched by a slide, map, sample or raster glob: the name
    cannot go into a Parquet table, a report or an S3 key (segment wrote its tables with a UnicodeEncodeError
    traceback); refused before any work, its bytes shown. `storage ls` / `rm` print it the same way."""
    from minseg.cli import main
    from minseg.inference.config import SegmentSettings
    from minseg.inference.segment import resolve_slides
    from minseg.io.storage import glob_folders, glob_uris

    (tmp_path / "ok.tif").write_bytes(b"y")
    with open(os.fsencode(tmp_path) + b"/pe\xf1a.tif", "wb") as file:
        file.write(b"x" * 10)
    os.makedirs(os.fsencode(tmp_path) + b"/maps/pe\xf1a.ome.zarr")
    storage = Storage()
    assert glob_uris(str(tmp_path / "ok*.tif"), storage) == [str(tmp_path / "ok.tif")]
    for resolve in (lambda: glob_uris(str(tmp_path / "*.tif"), storage),
                    lambda: glob_folders(str(tmp_path / "maps" / "*.zarr"), storage),
                    lambda: resolve_slides(SegmentSettings(slides=[str(tmp_path / "*.tif")]), storage,
                                           str(tmp_path / "out"))):
        with pytest.raises(StorageError, match=r"matches 1 name\(s\) that are not UTF-8 .*: \S+/pe\\xf1a\."
                                               r"(tif|ome\.zarr); rename them"):
            resolve()
    assert main(["storage", "ls", str(tmp_path / "*.tif")]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(f"{tmp_path}/pe\\xf1a.tif")
    assert main(["storage", "rm", str(tmp_path / "pe*.tif")]) == 0
    assert capsys.readouterr().out == f"deleted {tmp_path}/pe\\xf1a.tif\n"
    assert not glob_uris(str(tmp_path / "p*"), storage)


def test_an_output_that_cannot_be_read_is_named_not_the_marker_looked_for(monkeypatch):
    """S3 unreachable (no server, no credentials): the error began with ``…/members.json``, a file the user never
    gave, as if it were the problem."""
    from minseg.io.config import StorageSettings
    from minseg.io.storage import refuse_other_command_outputs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = Storage(StorageSettings(endpoint_url="http://127.0.0.1:9", max_attempts=1))
    with pytest.raises(StorageError) as error:
        refuse_other_command_outputs("s3://bucket/out", "measure", "--out", storage)
    message = str(error.value)
    assert message.startswith("--out: s3://bucket/out: cannot be read (") and "before minseg measure starts" in message


def test_an_output_inside_a_slide_folder_of_another_run_is_refused(tmp_path):
    """A break-it pass: ``segment … --out out1/rgb`` (rgb: a slide of out1) ran, and a later ``segment rgb.png
    --out out1 --force`` replaced out1/rgb/ whole, the nested run with it, without a word."""
    from minseg.errors import InputError
    from minseg.io.storage import refuse_other_command_outputs

    storage = Storage()
    (tmp_path / "out1" / "rgb").mkdir(parents=True)
    (tmp_path / "out1" / "run_summary.json").write_text("{}")
    (tmp_path / "out1" / "rgb" / "summary.json").write_text("{}")
    (tmp_path / "maps" / "a").mkdir(parents=True)
    (tmp_path / "maps" / "measure_summary.json").write_text("{}")
    (tmp_path / "maps" / "a" / "mineralogy.json").write_text("{}")
    for nested, owner in ((tmp_path / "out1" / "rgb", "segment"), (tmp_path / "out1" / "rgb" / "deeper", "segment"),
                          (tmp_path / "maps" / "a" / "k", "measure")):
        with pytest.raises(InputError, match=f"--out: .* lies inside .*, an item folder of the minseg {owner} output"):
            refuse_other_command_outputs(str(nested), "segment", "--out", storage)
    # a slide folder whose summary was deleted, or one still being segmented: its zarr's or plan's record names it
    (tmp_path / "out1" / "rgb" / "summary.json").unlink()
    (tmp_path / "out1" / "rgb" / "segmentation.ome.zarr").mkdir()
    (tmp_path / "out1" / "rgb" / "segmentation.ome.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "out1" / "cut" / ".minseg").mkdir(parents=True)
    (tmp_path / "out1" / "cut" / ".minseg" / "plan.json").write_text("{}")
    for nested in (tmp_path / "out1" / "rgb" / "x", tmp_path / "out1" / "cut" / "x"):
        with pytest.raises(InputError, match="an item folder of the minseg segment output"):
            refuse_other_command_outputs(str(nested), "measure", "--out", storage)
    # beside the items, not in one: a measure of segment's maps into seg/measure is fine
    refuse_other_command_outputs(str(tmp_path / "out1" / "measure"), "measure", "--out", storage)
    refuse_other_command_outputs(str(tmp_path / "out1"), "segment", "--out", storage)  # the run itself, again


def test_the_item_records_the_storage_layer_knows_are_those_of_segment_and_measure():
    """``io.storage`` may not import the inference package: its copy of the records naming an item folder's source
    must stay those segment and measure read."""
    from minseg.inference.measure import MEASURE_RECORDS
    from minseg.inference.segment import SEGMENT_RECORDS
    from minseg.io.storage import ITEM_RECORDS

    assert ITEM_RECORDS == {"segment": tuple(f for f, _ in SEGMENT_RECORDS),
                            "measure": tuple(f for f, _ in MEASURE_RECORDS)}


@pytest.mark.parametrize("key, value, message", [
    ("max_attempts", 99999999999999, "less than or equal to 50"),
    ("connect_timeout_s", 1e300, "less than or equal to 600"),
    ("read_timeout_s", 86400.0, "less than or equal to 3600"),
])
def test_retries_and_timeouts_are_bounded(key, value, message):
    """A break-it pass: an endpoint that accepts and never answers held a request read_timeout_s per try, silently,
    max_attempts times (defaults: 8 minutes); any number was taken (99999999999999 tries, 1e300 s)."""
    from pydantic import ValidationError

    from minseg.io.config import StorageSettings

    with pytest.raises(ValidationError, match=message):
        StorageSettings.model_validate({key: value})
