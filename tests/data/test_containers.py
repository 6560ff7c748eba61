import io
import json
import os
import tarfile
import zipfile

import pytest

from minseg.data.config import LimitSettings
from minseg.data.containers import open_container, read_ref, unsafe_member_reason
from minseg.io.storage import ObjectNotFoundError, Storage, StorageError
from tests.data.helpers import write_paired


def make_tar(path, files: dict, mode="w", extra=None):
    with tarfile.open(path, mode) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info)
    return path


def test_folder_tar_targz_zip_list_the_same_members(tmp_path):
    root = write_paired(tmp_path / "ds", count=2)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    make_tar(tmp_path / "ds.tar", files)
    make_tar(tmp_path / "ds.tar.gz", files, "w:gz")
    with zipfile.ZipFile(tmp_path / "ds.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    storage, limits = Storage(), LimitSettings()
    for uri in (root, tmp_path / "ds.tar", tmp_path / "ds.tar.gz", tmp_path / "ds.zip"):
        container = open_container(str(uri), limits, storage, staging_uri=str(tmp_path / "staging"))
        assert sorted(container.members) == sorted(files), uri
        assert not container.rejected
        for name, data in files.items():
            assert read_ref(container.members[name], storage) == data


@pytest.mark.parametrize("name, reason", [("../evil.png", "'..'"), ("/etc/passwd", "absolute path"),
                                          ("a/../../b.png", "'..'"), ("C:/x.png", "absolute path")])
def test_unsafe_names(name, reason):
    assert reason in unsafe_member_reason(name)


def test_tar_rejects_traversal_symlinks_and_devices(tmp_path):
    link = tarfile.TarInfo("images/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("images/hard.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "images/ok.png"
    device = tarfile.TarInfo("images/dev")
    device.type = tarfile.CHRTYPE
    path = make_tar(tmp_path / "bad.tar", {"images/ok.png": b"x", "../escape.png": b"y", "/abs.png": b"z"},
                    extra=[link, hard, device])
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        target = tmp_path / f"bad{suffix}"
        if suffix != ".tar":
            make_tar(target, {"images/ok.png": b"x", "../escape.png": b"y", "/abs.png": b"z"}, mode, [link, hard, device])
        container = open_container(str(target if suffix != ".tar" else path), LimitSettings(), Storage(),
                                   staging_uri=str(tmp_path / "staging"))
        assert list(container.members) == ["images/ok.png"]
        reasons = {r.file.split("!")[1]: r.reason for r in container.rejected}
        assert "path traversal" in reasons["../escape.png"] and "path traversal" in reasons["/abs.png"]
        assert reasons["images/link.png"].startswith("symlink") and reasons["images/hard.png"].startswith("hard link")
        assert "special file" in reasons["images/dev"]
    assert not any("escape" in p.name for p in tmp_path.rglob("*"))  # nothing was extracted anywhere


def test_zip_bomb_and_oversized_members(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images/zeros.png", b"\0" * (20 * 1024 * 1024))
        archive.writestr("images/fine.png", os.urandom(1000))
        archive.writestr("../up.png", b"x")
        info = zipfile.ZipInfo("images/link.png")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    container = open_container(str(tmp_path / "bomb.zip"), LimitSettings(), Storage())
    assert list(container.members) == ["images/fine.png"]
    reasons = {r.file.split("!")[1]: r.reason for r in container.rejected}
    assert reasons["images/zeros.png"].startswith("decompression bomb: compression ratio")
    assert "path traversal" in reasons["../up.png"] and reasons["images/link.png"] == "symlink in archive"
    small = open_container(str(tmp_path / "bomb.zip"), LimitSettings(max_member_mib=0.5, max_compression_ratio=10**6),
                           Storage())
    assert "exceeds data.limits.max_member_mib" in {r.file.split("!")[1]: r.reason for r in small.rejected}["images/zeros.png"]


def test_gzip_tar_bomb_is_stopped_while_inflating(tmp_path):
    make_tar(tmp_path / "bomb.tar.gz", {"images/a.png": b"\0" * (8 * 1024 * 1024)}, "w:gz")
    with pytest.raises(StorageError, match="decompression bomb: inflates past"):
        open_container(str(tmp_path / "bomb.tar.gz"), LimitSettings(max_compression_ratio=50), Storage(),
                       staging_uri=str(tmp_path / "staging"))


def test_corrupt_archives_and_missing_folder(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    (tmp_path / "junk.tar").write_bytes(os.urandom(1000))
    with pytest.raises(StorageError, match="junk.zip: not a readable zip archive"):
        open_container(str(tmp_path / "junk.zip"), LimitSettings(), Storage())
    with pytest.raises(StorageError, match="junk.tar: not a readable tar archive"):
        open_container(str(tmp_path / "junk.tar"), LimitSettings(), Storage())
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    make_tar(tmp_path / "empty.tar", {})
    make_tar(tmp_path / "empty.tar.gz", {}, "w:gz")
    for name in ("empty.zip", "empty.tar", "empty.tar.gz"):  # was "cannot recognise the dataset layout"
        with pytest.raises(StorageError, match=f"{name}: the archive is empty"):
            open_container(str(tmp_path / name), LimitSettings(), Storage(), staging_uri=str(tmp_path / "staging"))
    with pytest.raises(ObjectNotFoundError, match="nowhere: no such file or folder"):
        open_container(str(tmp_path / "nowhere"), LimitSettings(), Storage())
    (tmp_path / "one.png").write_bytes(b"")  # an image given as the dataset: it exists, it is no folder
    with pytest.raises(StorageError, match="one.png: a file, not a dataset: give the folder"):
        open_container(str(tmp_path / "one.png"), LimitSettings(), Storage())


def test_s3_prefix_and_archive(s3, tmp_path):
    storage = s3.storage()
    root = write_paired(tmp_path / "ds", count=2)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    for name, data in files.items():
        storage.write_bytes(s3.uri(f"ds/{name}"), data)
    make_tar(tmp_path / "ds.tar", files)
    storage.upload_file(str(tmp_path / "ds.tar"), s3.uri("ds.tar"))
    make_tar(tmp_path / "ds.tgz", files, "w:gz")
    storage.upload_file(str(tmp_path / "ds.tgz"), s3.uri("ds.tgz"))
    for uri in (s3.uri("ds"), s3.uri("ds.tar"), s3.uri("ds.tgz")):
        container = open_container(uri, LimitSettings(), storage, staging_uri=s3.uri("staging"))
        assert sorted(container.members) == sorted(files)
        assert read_ref(container.members["masks/s1.png"], storage) == files["masks/s1.png"]
    # as on disk: a prefix with nothing under it is no folder (was "folder is empty"), an image is no dataset
    with pytest.raises(ObjectNotFoundError, match=r"ds2: no such folder \(no object under this prefix\)"):
        open_container(s3.uri("ds2"), LimitSettings(), storage)
    with pytest.raises(StorageError, match=r"s0.jpg: a file, not a dataset: give the folder"):
        open_container(s3.uri("ds/images/s0.jpg"), LimitSettings(), storage)


def test_zip_written_with_backslash_separators(tmp_path):
    """PowerShell 5's Compress-Archive writes 'images\\a.png': the same layout as 'images/a.png'."""
    import zipfile

    from minseg.data.containers import open_container

    path = tmp_path / "windows.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images\\a.png", b"x")
        archive.writestr("masks\\a.png", b"y")
    container = open_container(str(path), LimitSettings(), Storage(), str(tmp_path / "staging"))
    assert sorted(container.members) == ["images/a.png", "masks/a.png"]


@pytest.mark.filterwarnings("ignore:Duplicate name")  # what the test writes, on purpose
def test_a_name_listed_twice_is_used_only_when_both_copies_agree(tmp_path):
    """A zip with a repeated entry or a tar with a file appended again (``tar rf``) silently gave one copy (a mask
    read as another section's); an NFC and an NFD spelling of one name in a folder are one name. Same bytes: used
    once; other bytes: neither, each reported."""
    storage, limits = Storage(), LimitSettings()
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as archive:
        for name, data in (("masks/a.png", b"first"), ("masks/a.png", b"other"), ("masks/b.png", b"same"),
                           ("masks/b.png", b"same"), ("masks/a.png", b"third"), ("images/a.png", b"img")):
            archive.writestr(name, data)
    make_tar(tmp_path / "dup.tar", {"images/a.png": b"img", "masks/a.png": b"first"})
    with tarfile.open(tmp_path / "dup.tar", "a") as archive:  # tar rf: appended, same name
        for name, data in (("masks/a.png", b"other"), ("masks/b.png", b"same")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    for source, kept in (("dup.zip", ["images/a.png", "masks/b.png"]), ("dup.tar", ["images/a.png", "masks/b.png"])):
        container = open_container(str(tmp_path / source), limits, storage)
        assert sorted(container.members) == kept, source
        (twice,) = container.rejected
        assert twice.file == f"{tmp_path / source}!masks/a.png" and "listed twice with different contents" in \
            twice.reason and "neither copy is used" in twice.reason
    make_tar(tmp_path / "hidden.tar.gz", {"images/a.png": b"img", "images/.a.png": b"img"}, "w:gz")
    container = open_container(str(tmp_path / "hidden.tar.gz"), limits, storage, staging_uri=str(tmp_path / "stage"))
    assert [r.file for r in container.rejected] == [f"{tmp_path}/hidden.tar.gz!images/.a.png"]  # not the staged copy
    folder = tmp_path / "forms"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "Pe\u00f1asco.png").write_bytes(b"nfc")
    (folder / "images" / "Pen\u0303asco.png").write_bytes(b"nfd")
    container = open_container(str(folder), limits, storage)
    assert not container.members and "Unicode forms" in container.rejected[0].reason


def test_names_pair_in_either_unicode_form_and_hidden_pictures_are_reported(tmp_path):
    """macOS writes names decomposed (NFD): an image typed on Linux (NFC) and its mask saved on a Mac were
    quarantined as an image without a mask and a mask without an image. A hidden picture was skipped silently on
    the images side and reported as a mask without an image on the other."""
    from minseg.data.config import DataSettings
    from minseg.data.pipeline import _list_items
    from minseg.config import validate_config
    from minseg.enums import Task

    root = write_paired(tmp_path / "ds", count=2)
    (root / "images" / "s0.jpg").rename(root / "images" / "calcopirita_Pe\u00f1asco.jpg")
    (root / "masks" / "s0.png").rename(root / "masks" / "calcopirita_Pen\u0303asco.png")
    (root / "images" / ".s1.jpg").write_bytes((root / "images" / "s1.jpg").read_bytes())
    (root / "masks" / ".s1.png").write_bytes((root / "masks" / "s1.png").read_bytes())
    (root / "masks" / ".gitkeep").write_text("")
    (root / "images" / ".cache").mkdir()  # a viewer's thumbnails: once "no mask masks/.cache/s1.*"
    (root / "images" / ".cache" / "s1.png").write_bytes((root / "masks" / "s1.png").read_bytes())
    data = validate_config({"sources": [{"uri": str(root)}], "classes": {"classes": [
        {"name": "background", "codes": [0]}, *({"name": f"c{code}", "codes": [code]} for code in range(1, 9))]}},
        DataSettings)
    items, rejected, _ = _list_items(data, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)
    assert sorted(i["item_id"] for i in items) == ["ds/calcopirita_Pe\u00f1asco", "ds/s1"]
    hidden = "hidden file (its name or a folder's starts with '.')"
    assert sorted((r.file[len(str(root)) + 1:], r.reason.split(":")[0]) for r in rejected) == [
        ("images/.cache/s1.png", hidden), ("images/.s1.jpg", hidden), ("masks/.s1.png", hidden)]


def _paired_items(tmp_path, sources: list[dict]):
    from minseg.config import validate_config
    from minseg.data.config import DataSettings
    from minseg.data.pipeline import _list_items
    from minseg.enums import Task

    data = validate_config({"sources": sources, "classes": {"classes": [
        {"name": "background", "codes": [0]}, *({"name": f"c{code}", "codes": [code]} for code in range(1, 9))]}},
        DataSettings)
    return _list_items(data, Storage(), str(tmp_path / "staging"), Task.SEGMENTATION)


def test_archives_of_one_name_in_two_folders_are_staged_apart(tmp_path):
    """Two `data.tar.gz` (two labs' folders) were staged to one file: the first source's items read the second's
    bytes (its own pictures quarantined as damaged, or, of equal sizes, silently the other lab's). A given name
    with a dot (`lab.2024`) was cut at it, which made two distinct names one."""
    payloads = {}
    for lab, seed in (("a", 0), ("b", 7)):  # of one size: the other lab's bytes read as pictures
        root = write_paired(tmp_path / f"ds-{lab}", count=2, seed=seed)
        files = {str(p.relative_to(root)).replace("/s", f"/{lab}"): p.read_bytes()
                 for p in sorted(root.rglob("*")) if p.is_file()}
        (tmp_path / lab).mkdir()
        make_tar(tmp_path / lab / "data.tar.gz", files, "w:gz")
        payloads.update(files)
    storage = Storage()
    for names, prefixes in (((None, None), ("data", "data")), (("lab.2024", "lab.2025"), ("lab.2024", "lab.2025"))):
        sources = [{"uri": str(tmp_path / lab / "data.tar.gz"), **({"name": name} if name else {})}
                   for lab, name in zip("ab", names)]
        items, rejected, _ = _paired_items(tmp_path, sources)
        assert not rejected and sorted(i["item_id"] for i in items) == [
            f"{prefixes[0]}/a0", f"{prefixes[0]}/a1", f"{prefixes[1]}/b0", f"{prefixes[1]}/b1"]
        for item in items:
            name = item["item_id"].split("/")[1]
            assert read_ref(item["image"], storage) == payloads[f"images/{name}.jpg"], item["item_id"]
            assert read_ref(item["mask"], storage) == payloads[f"masks/{name}.png"], item["item_id"]
    with pytest.raises(Exception, match=r"sources\[0\]\.name: a name of ASCII letters"):  # it names ids' folders
        _paired_items(tmp_path, [{"uri": str(tmp_path / "a" / "data.tar.gz"), "name": "lab/2024"}])


def test_names_that_are_not_utf8_are_reported_and_the_rest_used(tmp_path):
    """A Latin-1 name (`peña` as the byte 0xF1) in a tar, a tar.gz or a folder: the run stopped with a Python
    traceback (UnicodeEncodeError) after the whole scan; such a file is now reported with its bytes shown and the
    others used. A zip whose names are marked UTF-8 but are not is refused with one line saying so."""
    root = write_paired(tmp_path / "ds", count=2)
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    latin = {name.replace("s0", "pe\udcf1a"): data for name, data in files.items()}  # how Python reads 0xF1
    for mode, name in (("w", "latin.tar"), ("w:gz", "latin.tar.gz")):
        with tarfile.open(tmp_path / name, mode, format=tarfile.GNU_FORMAT, encoding="latin-1") as archive:
            for member, data in files.items():
                info = tarfile.TarInfo(member.replace("s0", "pe\u00f1a"))
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    folder = tmp_path / "folder"
    for member, data in latin.items():
        path = os.fsencode(folder / member)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").write(data)
    for uri in (tmp_path / "latin.tar", tmp_path / "latin.tar.gz", folder):
        items, rejected, _ = _paired_items(tmp_path, [{"uri": str(uri)}])
        assert [i["item_id"].split("/")[1] for i in items] == ["s1"], uri
        shown = sorted(r.file.replace(str(uri), "") for r in rejected)
        assert shown == ["!images/pe\\xf1a.jpg", "!masks/pe\\xf1a.png"] if uri != folder else \
            ["/images/pe\\xf1a.jpg", "/masks/pe\\xf1a.png"], shown
        assert all("its name is not valid UTF-8" in r.reason for r in rejected)
        json.dumps([r.file for r in rejected]).encode("utf-8")  # writable in the quarantine report
    mislabelled = tmp_path / "mislabelled.zip"
    with zipfile.ZipFile(mislabelled, "w") as archive:
        archive.writestr("images/s1.jpg", files["images/s1.jpg"])
    blob = mislabelled.read_bytes()
    cut = blob.replace(b"images/s1.jpg", b"images/\xf1\x31.jpg")  # same length; the UTF-8 flag set below
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.infolist()[0].flag_bits & 0x800 == 0
    cut = cut.replace(b"PK\x03\x04\x14\x00\x00\x00", b"PK\x03\x04\x14\x00\x00\x08").replace(
        b"PK\x01\x02\x14\x03\x14\x00\x00\x00", b"PK\x01\x02\x14\x03\x14\x00\x00\x08")
    mislabelled.write_bytes(cut)
    with pytest.raises(StorageError, match=r"mislabelled.zip: a member's file name is marked as UTF-8 but is not "
                                           r"\(invalid continuation byte"):
        open_container(str(mislabelled), LimitSettings(), Storage())


def test_a_staging_copy_that_cannot_be_written_stops_the_run_naming_the_staging_folder(tmp_path):
    """A tar.gz source staged to a full disk was reported as the source's fault ("corrupt tar.gz archive (No space
    left on device)") and the run trained on the other sources alone. Writing the copy (a file size limit here,
    as a full disk fails a write) and making its folder (under a file) are the run's failures: StagingError,
    naming the staged path; the archive's own damage stays the source's."""
    import subprocess
    import sys

    from minseg.data.containers import StagingError

    rng = __import__("numpy").random.default_rng(0)
    files = {f"images/s{i}.png": rng.bytes(200_000) for i in range(3)}  # incompressible: 600 kB staged
    make_tar(tmp_path / "data.tar.gz", files, "w:gz")
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from minseg.data.config import LimitSettings\n"
        "from minseg.data.containers import open_container\n"
        "from minseg.io.storage import Storage\n"
        "try:\n"
        f"    open_container({str(tmp_path / 'data.tar.gz')!r}, LimitSettings(), Storage(),\n"
        f"                   {str(tmp_path / 'stage')!r})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n")
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert said.stdout.startswith(f"StagingError {tmp_path / 'data.tar.gz'}: could not be staged (uncompressed) to "
                                  f"{tmp_path / 'stage' / 'data.tar'}: "), said.stdout + said.stderr
    assert "File too large" in said.stdout and not list((tmp_path / "stage").glob("data.tar")), said.stdout
    (tmp_path / "file").write_text("x")
    with pytest.raises(StagingError, match=r"could not be staged \(uncompressed\) to .*file/stage/data.tar: "):
        open_container(str(tmp_path / "data.tar.gz"), LimitSettings(), Storage(), str(tmp_path / "file" / "stage"))
    whole = (tmp_path / "data.tar.gz").read_bytes()
    (tmp_path / "bad.tar.gz").write_bytes(whole[: len(whole) // 2])  # cut short: the source's damage
    with pytest.raises(StorageError, match=r"bad.tar.gz: corrupt tar.gz archive"):
        open_container(str(tmp_path / "bad.tar.gz"), LimitSettings(), Storage(), str(tmp_path / "stage"))
