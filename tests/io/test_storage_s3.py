"""Storage against a real S3-compatible server on 127.0.0.1 (see tests/support/s3server.py)."""

import logging
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from minseg.io.storage import (
    AccessDeniedError,
    BucketNotFoundError,
    ObjectNotFoundError,
    Storage,
    StorageError,
    glob_folders,
)
from tests.io.test_storage_local import REPLACED_FILES, replaced_files, replaced_folder
from tests.support.s3server import FlakyProxy

MIB = 1024 * 1024


def test_small_object_roundtrip(s3):
    storage = s3.storage()
    storage.write_bytes(s3.uri("dir/a.bin"), b"hello")
    assert storage.read_bytes(s3.uri("dir/a.bin")) == b"hello"
    assert storage.exists(s3.uri("dir/a.bin"))
    assert not storage.exists(s3.uri("dir/missing.bin"))
    assert storage.size(s3.uri("dir/a.bin")) == 5
    with storage.open_read(s3.uri("dir/a.bin")) as stream:
        stream.seek(1)
        assert stream.read(3) == b"ell"
    storage.copy(s3.uri("dir/a.bin"), s3.uri("dir/b.bin"))
    assert storage.read_bytes(s3.uri("dir/b.bin")) == b"hello"
    storage.delete(s3.uri("dir/a.bin"))
    assert [i.uri for i in storage.list(s3.uri("dir/"))] == [s3.uri("dir/b.bin")]
    with pytest.raises(ObjectNotFoundError, match=r"dir/a.bin .*no such object"):
        storage.read_bytes(s3.uri("dir/a.bin"))


def test_an_object_replaced_while_it_is_read_fails_the_read(s3):
    """A stream reads by ranges (a slide's tiles, ``storage cat``): an object replaced between two ranges gave bytes
    of two versions; each range asks for the version first seen, and a replacement fails the read, saying so."""
    storage = s3.storage()
    uri = s3.uri("slides/a.tif")
    storage.write_bytes(uri, b"A" * (3 << 20))
    with storage.open_read(uri) as stream:
        assert stream.read(1 << 20) == b"A" * (1 << 20)  # one buffered range
        storage.write_bytes(uri, b"B" * (3 << 20))
        with pytest.raises(StorageError, match=r"slides/a.tif: replaced while it was being read \(its ETag changed "
                                               r"after \d+ of 3145728 bytes\)"):
            stream.read()
    with storage.open_read(uri) as stream:  # read again: the new version, whole
        assert stream.read() == b"B" * (3 << 20)


def test_multipart_roundtrip_over_5_mib(s3, tmp_path):
    storage = s3.storage()
    payload = os.urandom(12 * MIB + 123)
    with storage.open_write(s3.uri("big/object.bin")) as stream:
        for start in range(0, len(payload), MIB):  # written in pieces, like a streaming encoder
            stream.write(payload[start : start + MIB])
    head = storage.client.head_object(Bucket=s3.bucket, Key="big/object.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB parts: really multipart
    assert storage.read_bytes(s3.uri("big/object.bin")) == payload
    # local <-> s3 copies of a large object
    local = tmp_path / "copy.bin"
    storage.copy(s3.uri("big/object.bin"), str(local))
    assert local.read_bytes() == payload
    storage.copy(str(local), s3.uri("big/again.bin"))
    storage.copy(s3.uri("big/again.bin"), s3.uri("big/server-side.bin"))
    assert storage.read_bytes(s3.uri("big/server-side.bin")) == payload


def test_listing_beyond_1000_keys(s3):
    storage = s3.storage()
    keys = [f"many/{i:05d}.txt" for i in range(1105)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: storage.client.put_object(Bucket=s3.bucket, Key=k, Body=b"x"), keys))
    storage.client.put_object(Bucket=s3.bucket, Key="other/z.txt", Body=b"x")
    listed = [info.uri for info in storage.list(s3.uri("many/"))]
    assert listed == [s3.uri(k) for k in keys]


def test_interrupted_multipart_upload_leaves_no_object(s3):
    storage = s3.storage()
    with pytest.raises(RuntimeError, match="encoder crashed"):
        with storage.open_write(s3.uri("partial/slide.tif")) as stream:
            stream.write(os.urandom(11 * MIB))  # two parts already uploaded
            raise RuntimeError("encoder crashed")
    assert not storage.exists(s3.uri("partial/slide.tif"))
    uploads = storage.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert uploads == []  # aborted, not left dangling


def test_killed_writer_process_leaves_no_object(s3):
    """A process killed mid-upload never completes the multipart upload: no object."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from minseg.io.config import StorageSettings
        from minseg.io.storage import Storage
        storage = Storage(StorageSettings(endpoint_url={s3.server.endpoint!r},
                          multipart_threshold_mib=5, multipart_part_size_mib=5))
        stream = storage.open_write({s3.uri('killed/out.bin')!r})
        stream.write(os.urandom(11 * 1024 * 1024))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), timeout=120)
    assert result.returncode == -9
    storage = s3.storage()
    assert not storage.exists(s3.uri("killed/out.bin"))
    assert list(storage.list(s3.uri("killed/"))) == []


def test_wrong_secret_is_a_clear_error_without_the_secret(s3, monkeypatch, caplog):
    wrong_secret = "wrong-secret-value-1234567890"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    storage = s3.storage()
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(AccessDeniedError) as info:
            storage.read_bytes(s3.uri("a.bin"))
    message = str(info.value)
    assert "access denied" in message and "secret key does not match" in message
    assert s3.uri("a.bin") in message
    assert wrong_secret not in message and wrong_secret not in caplog.text
    assert s3.server.access_key not in message


def test_unknown_access_key(s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    with pytest.raises(AccessDeniedError, match="access denied"):
        s3.storage().write_bytes(s3.uri("x.bin"), b"1")


def test_missing_bucket(s3):
    with pytest.raises(BucketNotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
        s3.storage().read_bytes("s3://no-such-bucket-here/key.bin")
    with pytest.raises(BucketNotFoundError):
        list(s3.storage().list("s3://no-such-bucket-here/prefix/"))
    # a HEAD's 404 has no body to say which is missing: the size and version an archive source is opened with
    # said "no such object" for a mistyped bucket
    for read in (s3.storage().size, s3.storage().version):
        with pytest.raises(BucketNotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
            read("s3://no-such-bucket-here/data/sections.zip")
        with pytest.raises(ObjectNotFoundError, match="no such object"):
            read(s3.uri("data/not-there.zip"))
    assert not s3.storage().exists("s3://no-such-bucket-here/key.bin")  # one request, no error


def test_retries_throttling_with_backoff(s3):
    with FlakyProxy(s3.server.endpoint, failures=3) as proxy:
        storage = s3.storage(endpoint_url=proxy.endpoint, max_attempts=5)
        storage.write_bytes(s3.uri("retry.bin"), b"eventually")
        assert storage.read_bytes(s3.uri("retry.bin")) == b"eventually"
        assert proxy.requests_seen >= 5  # 3 refused + the PUT + the GET


def test_gives_up_after_max_attempts(s3):
    with FlakyProxy(s3.server.endpoint, failures=100) as proxy:
        storage = s3.storage(endpoint_url=proxy.endpoint, max_attempts=2)
        with pytest.raises(StorageError, match="SlowDown"):
            storage.write_bytes(s3.uri("never.bin"), b"x")
        assert proxy.requests_seen == 2


def test_endpoint_from_aws_endpoint_url(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint)
    storage = s3.storage(endpoint_url=None)
    storage.write_bytes(s3.uri("env.bin"), b"env")
    assert storage.read_bytes(s3.uri("env.bin")) == b"env"


def test_endpoint_from_minseg_env_override(s3, monkeypatch):
    from minseg.io.config import StorageSettings

    monkeypatch.setenv("MINSEG__STORAGE__ENDPOINT_URL", s3.server.endpoint)
    assert StorageSettings.from_environment().endpoint_url == s3.server.endpoint
    Storage().write_bytes(s3.uri("minseg-env.bin"), b"ok")


def test_ray_data_reads_and_writes_through_same_settings(s3, ray_session):
    import ray

    storage = s3.storage()
    filesystem, path = storage.pyarrow_filesystem(s3.uri("tables/"))
    ray.data.range(100).map(lambda row: {"id": row["id"], "sq": row["id"] ** 2}).write_parquet(
        path, filesystem=filesystem
    )
    written = [info.uri for info in storage.list(s3.uri("tables/"))]
    assert written and all(uri.endswith(".parquet") for uri in written)
    rows = ray.data.read_parquet(path, filesystem=filesystem).take_all()
    assert sorted(r["sq"] for r in rows) == [i * i for i in range(100)]


def test_globs_keep_to_one_folder_as_on_disk(s3, tmp_path):
    """``slides/*.svs`` on S3 is the folder's slides, not those of slides/old/ too; ``**`` goes down."""
    from minseg.io.storage import glob_uris

    storage = s3.storage()
    for key in ("slides/a.svs", "slides/old/b.svs", "slides/old/deeper/c.svs", "slides/a.txt", "slides/._a.svs"):
        storage.write_bytes(s3.uri(key), b"x")
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
    for root in (s3.uri(""), str(tmp_path) + "/"):
        found = [uri[len(root):] for uri in glob_uris(f"{root}slides/*.svs", storage)]
        assert found == ["slides/a.svs"], root
        deep = [uri[len(root):] for uri in glob_uris(f"{root}slides/**/*.svs", storage)]
        assert deep == ["slides/a.svs", "slides/old/b.svs", "slides/old/deeper/c.svs"], root
        assert [uri[len(root):] for uri in glob_uris(f"{root}slides/**.svs", storage)] == ["slides/a.svs"], root
        assert [uri[len(root):] for uri in glob_uris(f"{root}slides/._*.svs", storage)] == ["slides/._a.svs"], root


def test_folders_and_missing_objects(s3):
    """A prefix holding objects is a folder (unless it is an object too); deleting nothing is an error when asked."""
    storage = s3.storage()
    storage.write_bytes(s3.uri("dir/a.txt"), b"a")
    assert storage.is_folder(s3.uri("dir")) and storage.is_folder(s3.uri("dir/")) and storage.is_folder(s3.uri(""))
    assert not storage.is_folder(s3.uri("dir/a.txt")) and not storage.is_folder(s3.uri("di"))
    storage.delete(s3.uri("dir/gone.txt"))
    with pytest.raises(ObjectNotFoundError, match=r"dir/gone.txt: no such object"):
        storage.delete(s3.uri("dir/gone.txt"), missing_ok=False)
    storage.delete(s3.uri("dir/a.txt"), missing_ok=False)
    assert not storage.exists(s3.uri("dir/a.txt"))


def test_folders_holding_files_and_folder_names_alike_on_s3_and_locally(s3, tmp_path):
    """``holds_files`` (any file at any depth: a slide folder taken or free) and ``folder_names`` (the folders
    directly in one: common prefixes on S3) answer alike on both stores; a directory marker is no file."""
    storage = s3.storage()
    for root in (s3.uri("out"), str(tmp_path / "out")):
        for key in ("S1/deep/chunk", "S2/summary.json", "top.csv", "S3/.x/y"):
            storage.write_bytes(f"{root}/{key}", b"x")
        assert storage.folder_names(root) == ["S1", "S2", "S3"] == storage.folder_names(root + "/"), root
        assert storage.holds_files(f"{root}/S1") and storage.holds_files(f"{root}/S3/"), root
        assert not storage.holds_files(f"{root}/S") and not storage.holds_files(f"{root}/none"), root
        assert storage.folder_names(f"{root}/none") == [], root
    for root in (s3.uri("seg"), str(tmp_path / "seg")):  # OME-Zarr maps by glob: folders, not files
        for key in ("s1/segmentation.ome.zarr/zarr.json", "s1/segmentation.ome.zarr/labels/c/0/0",
                    "s2/segmentation.ome.zarr/zarr.json", ".hidden/segmentation.ome.zarr/zarr.json", "s3/labels.tif"):
            storage.write_bytes(f"{root}/{key}", b"x")
        expected = [f"{root}/s1/segmentation.ome.zarr", f"{root}/s2/segmentation.ome.zarr"]
        assert glob_folders(f"{root}/*/segmentation.ome.zarr", storage) == expected, root
        assert glob_folders(f"{root}/s[12]/*.zarr/", storage) == expected, root
        # `**` skips hidden folders on S3 as on disk (S3 took `.hidden/` in before wcmatch)
        assert glob_folders(f"{root}/**/segmentation.ome.zarr", storage) == expected, root
        assert glob_folders(f"{root}/.*/segmentation.ome.zarr", storage) == [f"{root}/.hidden/segmentation.ome.zarr"]
        assert glob_folders(f"{root}/*/none.zarr", storage) == [], root
    storage.client.put_object(Bucket=s3.bucket, Key="out/empty/", Body=b"")  # a console's "create folder"
    assert not storage.holds_files(s3.uri("out/empty"))
    (tmp_path / "out" / "empty").mkdir()
    assert not storage.holds_files(str(tmp_path / "out" / "empty"))


def test_a_finished_redo_folder_takes_the_earlier_folders_place_on_s3(s3):
    """As locally: server-side copies over the earlier objects, those the redo has not deleted, the marker last, then
    the redo folder deleted; completed when cut short."""
    assert replaced_folder(s3.storage(), s3.uri("out")) == {
        "summary.json": "new", "z/zarr.json": "new", "z/0": "new", "z/1/c": "new"}


def test_a_staged_run_replaces_only_the_earlier_runs_files_on_s3(s3):
    assert replaced_files(s3.storage(), s3.uri("out")) == REPLACED_FILES


def test_an_ome_zarr_and_listings_under_a_name_in_another_script(s3):
    """Slide folders keep Cyrillic, Chinese and accented names (``folder_stem``): the OME-Zarr is written and read
    through obstore under such a prefix, and the folder listings segment plans with name it as written."""
    import numpy as np

    from minseg.enums import TiffCompression
    from minseg.io.ngff import PyramidLayout, SegmentationArrays, create_segmentation

    storage = s3.storage()
    for name in ("Шлиф-12", "薄片7", "Hématite_3"):
        folder = s3.uri(f"out/{name}")
        uri = f"{folder}/segmentation.ome.zarr"
        labels = np.arange(64 * 80, dtype=np.uint8).reshape(64, 80) % 3
        create_segmentation(uri, storage, PyramidLayout(64, 80, 32), ["a", "b", "c"],
                            np.zeros((3, 3), np.uint8), None, False, TiffCompression.ZSTD, {"source": name})
        arrays = SegmentationArrays(uri, storage)
        arrays.write(SegmentationArrays.LABELS, 0, 0, 0, labels)
        storage.write_json(f"{folder}/summary.json", {"uri": name})
        again = SegmentationArrays(uri, storage, read_only=True)
        assert np.array_equal(again.read(SegmentationArrays.LABELS, 0, 0, 64, 0, 80), labels)
        assert storage.exists(f"{uri}/labels/classes/0/zarr.json") and storage.file_names(folder) == {"summary.json"}
    assert storage.folder_names(s3.uri("out")) == sorted(["Шлиф-12", "薄片7", "Hématite_3"])
