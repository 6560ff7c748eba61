"""One storage layer for every URI minseg reads or writes.

URIs are plain paths, ``file://`` URLs or ``s3://bucket/key``. Writes are atomic: a local
file appears under its name only after a temp file is complete and renamed; an S3 object
is a single PUT, or a multipart upload completed only when the writer closes cleanly
(any failure aborts the upload), so a partial object is never visible.

Errors name the URI and what went wrong, never a credential.
"""

from __future__ import annotations

import abc
import contextlib
import glob
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator
from urllib.parse import unquote, urlparse

from minseg.errors import MinsegError
from minseg.jsontext import json_text
from minseg.io.config import StorageSettings
from minseg.logs import get_logger, log_event, redact

log = get_logger("io.storage")

_TMP_MARK = ".minseg-tmp"


def _pid_namespace() -> str:
    """This process's PID namespace (containers on one host share the hostname with --net=host, not PIDs)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def undecodable(name: str) -> bool:
    """Whether a file name holds bytes that are not UTF-8 (Python reads them as lone surrogates: a Latin-1 disk or
    tar, a zip written by an old tool): such a name cannot go into a report, a Parquet table or an S3 key."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown_name(name: str) -> str:
    """``name`` as it can be written in reports: its bytes that are not UTF-8 as ``\\xNN`` (``pe\\xf1a.png``)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if undecodable(name) else name


def file_stem(text: str, limit: int = 100) -> str:
    """``text`` (an item id, a member name read from a document) as one part of a file name: ``/``, ``\\`` and
    characters that are not printable become ``_``, as does a leading ``.`` (no hidden file, no ``..``), and the
    name is then ended with a digest of ``text`` (``a/b`` and ``a_b`` stay two files); longer than ``limit`` bytes
    (a file system takes 255), cut before the digest."""
    import hashlib

    stem = "".join("_" if c in "/\\" or not c.isprintable() else c for c in text)
    stem = "_" + stem[1:] if stem.startswith(".") or not stem else stem
    if stem == text and len(stem.encode()) <= limit:
        return stem
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return stem.encode()[: limit - 13].decode(errors="ignore") + "-" + digest


def scratch_name(name: str) -> str:
    """The start of a hidden scratch name beside the file ``name``: ``.<name>``, its name cut to 100 bytes (with
    ``scratch_suffix`` it must still be a name the file system takes, 255 bytes, where ``name`` itself is)."""
    return "." + name.encode()[:100].decode(errors="ignore")


def scratch_suffix() -> str:
    """The end of every scratch name minseg makes (temp files beside outputs, pyramid scratch folders,
    downloads, preflight markers): ``.<pid>-<pid namespace>@<host>.minseg-tmp``, so a later run can tell a
    killed run's leftovers from a live one's (:func:`sweep_scratch`). Hostnames hold dots and dashes, never '@'."""
    return f".{os.getpid()}-{_pid_namespace()}@{socket.gethostname()}{_TMP_MARK}"


def _owner_gone(name: str) -> bool:
    """True when ``name`` is scratch of a process of this host and PID namespace that no longer runs."""
    if not name.endswith(_TMP_MARK) or "@" not in name:
        return False  # not ours, or from a version that did not name its owner: keep
    head, host = name[: -len(_TMP_MARK)].rsplit("@", 1)
    pid, _, namespace = head.rsplit(".", 1)[-1].partition("-")
    if host != socket.gethostname() or namespace != _pid_namespace() or not pid.isdigit():
        return False  # another machine's or container's (a shared mount): it may still be writing
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


_SWEPT: set[str] = set()
_SWEPT_LOCK = threading.Lock()


def sweep_scratch(directory: str) -> int:
    """Remove the scratch files and folders a killed run of this host left in ``directory`` (not below it),
    once per directory per process; returns how many. A live process's scratch is never touched."""
    directory = os.path.abspath(directory)
    with _SWEPT_LOCK:
        if directory in _SWEPT:
            return 0
        _SWEPT.add(directory)
    try:
        names = [name for name in os.listdir(directory) if _owner_gone(name)]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if names:
        log_event(log, "storage.scratch_removed", folder=directory, entries=len(names))
    return len(names)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_MISTYPED_URI = re.compile(r"^(s3|file):(?!//)", re.IGNORECASE)


class StorageError(MinsegError, OSError):
    """A storage operation failed; the message names the URI and the reason (CLI exit 2)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(redact(message))


class ObjectNotFoundError(StorageError, FileNotFoundError):
    pass


class BucketNotFoundError(StorageError):
    pass


class AccessDeniedError(StorageError, PermissionError):
    pass


# ---------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is 'file' (``path`` absolute) or 's3' (``bucket`` + ``path`` key)."""

    scheme: str
    path: str
    bucket: str = ""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.scheme == "s3" else self.path

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"


def parse_uri(uri: str | os.PathLike[str]) -> Location:
    text = os.fspath(uri)
    if not text:
        raise StorageError("empty path or URI")
    if text.startswith("s3://"):
        parsed = urlparse(text)
        if parsed.username or parsed.password:
            raise StorageError("s3 URIs must not carry credentials; use AWS_* environment variables")
        if not parsed.netloc:
            raise StorageError(f"{text!r} has no bucket (expected s3://bucket/key)")
        return Location("s3", text[len("s3://") + len(parsed.netloc) :].lstrip("/"), parsed.netloc)
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{text!r}: file:// URIs must be local (file:///abs/path)")
        return Location("file", os.path.abspath(unquote(parsed.path)))
    if scheme := _SCHEME.match(text):
        scheme = scheme.group(1)
        raise StorageError(f"{text!r}: unsupported scheme {scheme!r} (use a path, file:// or s3://)")
    if _MISTYPED_URI.match(text):  # 's3:/b/k', 's3:b': a local folder named 's3:' is never what was meant
        raise StorageError(f"{text!r}: not an s3:// or file:// URI (expected s3://bucket/key or file:///path); "
                           "a local name beginning so would be ./" + text)
    return Location("file", os.path.abspath(os.path.expanduser(text)))


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a path or URI with '/' (the separator S3 keys use)."""
    text = os.fspath(base).rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            text = f"{text}/{part}"
    return text


def absolute_uri(uri: str | os.PathLike[str]) -> str:
    """Local paths made absolute (remote Ray processes run in other working directories)."""
    return parse_uri(uri).uri


def resolved_uri(uri: str) -> str:
    """A local path with its links resolved (a link to a folder is that folder); an s3:// URI as it is."""
    return uri if is_s3(uri) else os.path.realpath(parse_uri(uri).path)


def output_folder(output_uri: str | None, run_uri: str, *default: str) -> str:
    """A command's output folder: ``output_uri`` when given (absolute), else ``default``'s parts under the run
    (``output_folder(None, run, "segment", "slides")`` is ``<run>/segment/slides``)."""
    return absolute_uri(output_uri) if output_uri else join_uri(run_uri, *default)


#: the hidden folder beside a batch job's item folders where an item with finished outputs is redone
#: (``redo_folder``): the finished outputs stay until the redo is complete (``Storage.replace_folder``)
REDO = ".minseg-redo"


def redo_folder(folder: str) -> str:
    """Where the outputs replacing a finished item folder ``<parent>/<name>`` are written: ``<parent>/.minseg-redo/
    <name>``. Hidden, so listings and globs of the parent pass it by; on the same file system or bucket, so the
    finished redo is a rename (locally) or server-side copies (S3)."""
    parent, _, name = folder.rstrip("/").rpartition("/")
    return join_uri(parent, REDO, name)


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return os.fspath(uri).startswith("s3://")


GLOB_CHARS = re.compile(r"[*?\[]")


def has_glob(uri: str) -> bool:
    return bool(GLOB_CHARS.search(uri))


def glob_uris(pattern: str, storage: "Storage", suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Files matching a glob (``**`` included) locally or under an s3:// prefix, sorted; only names
    ending in ``suffixes`` (lower-case) when given. On S3 as on disk, ``*`` and ``?`` stay within one folder
    (wcmatch's path globs: ``fnmatch`` on the whole key let ``slides/*.svs`` take ``slides/old/x.svs`` too), and
    names starting with "." match only a pattern part starting with "." (``glob_objects``).

    Raises:
        StorageError: a local match whose name is not UTF-8 (``refuse_undecodable``)."""
    return refuse_undecodable([info.uri for info in glob_objects(pattern, storage, suffixes)], pattern)


def refuse_undecodable(uris: list[str], pattern: str) -> list[str]:
    """``uris``, unless a name among them is not UTF-8 (``undecodable``): it could not be named in an output's
    tables or reports, nor copied to S3; refused, the bytes shown as ``\\xNN``, before any work.

    Raises:
        StorageError: naming those files and the pattern that matched them."""
    bad = [shown_name(uri) for uri in uris if undecodable(uri)]
    if bad:
        raise StorageError(f"{pattern}: matches {len(bad)} name(s) that are not UTF-8 (written in another "
                           f"encoding, e.g. Latin-1; its bytes shown as \\xNN): {', '.join(bad[:5])}; rename them")
    return uris


def glob_folders(pattern: str, storage: "Storage") -> list[str]:
    """Folders (S3: prefixes holding objects) matching a glob, sorted: an OME-Zarr is one. On S3 each wildcard part
    is matched against one delimiter listing of the folders above it, never a listing of every chunk under them;
    ``**`` (any depth) lists every key under its fixed prefix. A name starting with "." matches only a pattern
    part that starts with "." too, as for ``glob_uris``."""
    import fnmatch

    if not is_s3(pattern):
        return refuse_undecodable(sorted(absolute_uri(p) for p in glob.glob(os.path.expanduser(pattern.rstrip("/")),
                                                                            recursive=True) if os.path.isdir(p)),
                                  pattern)
    parts = pattern.rstrip("/").split("/")
    first = next(i for i, part in enumerate(parts) if has_glob(part))
    if "**" in parts[first:]:  # any depth: folders are what lies between the keys' slashes
        matches = _s3_glob(pattern.rstrip("/"))
        folders = {prefix for info in storage.list(GLOB_CHARS.split(pattern, 1)[0]) for prefix in _parents(info.uri)}
        return sorted(folder for folder in folders if matches(folder))
    current = ["/".join(parts[:first])]
    for part in parts[first:]:
        if not has_glob(part):
            current = [join_uri(folder, part) for folder in current]
            continue
        current = [join_uri(folder, name) for folder in current for name in storage.folder_names(folder)
                   if fnmatch.fnmatchcase(name, part) and (part.startswith(".") or not name.startswith("."))]
    if not has_glob(parts[-1]):  # a literal last part is not known to exist; a listed prefix is
        current = [folder for folder in current if storage.is_folder(folder)]
    return sorted(current)


def _parents(uri: str) -> list[str]:
    """The folders an S3 key lies in (``s3://b/a/c/k`` -> ``s3://b/a``, ``s3://b/a/c``)."""
    head, _, path = uri.partition("://")
    bucket, *names = path.split("/")
    return [f"{head}://{bucket}/" + "/".join(names[:i]) for i in range(1, len(names))]


def _s3_glob(pattern: str, include_hidden: bool = False):
    """A matcher of S3 URIs by ``pattern`` with the path semantics of local globs (``glob.glob``), compiled once
    (a listing under an OME-Zarr is millions of keys): ``**`` alone is any depth (none too), inside a name ``*``;
    names starting with "." (macOS's ._ copies, minseg's hidden folders) match only a pattern part starting with
    "." (``include_hidden``: any); ``\\`` is a character of a name, as on disk, not an escape (wcmatch)."""
    from wcmatch import glob as wc

    flags = wc.GLOBSTAR | wc.FORCEUNIX | (wc.DOTGLOB if include_hidden else 0)
    return wc.compile(pattern.replace("\\", "\\\\"), flags=flags).match


def glob_objects(pattern: str, storage: "Storage", suffixes: tuple[str, ...] | None = None,
                 include_hidden: bool = False) -> list["ObjectInfo"]:
    """``glob_uris`` with each file's size (``storage ls`` of a glob). ``include_hidden``: names starting with "."
    match ``*`` / ``**`` too (as ``glob.glob(include_hidden=True)``), not only a pattern part that starts with "."."""
    if is_s3(pattern):
        prefix = GLOB_CHARS.split(pattern, 1)[0]
        matches = _s3_glob(pattern, include_hidden)
        found = [info for info in storage.list(prefix) if matches(info.uri)]
    else:
        found = [ObjectInfo(absolute_uri(p), os.path.getsize(p))
                 for p in glob.glob(os.path.expanduser(pattern), recursive=True, include_hidden=include_hidden)
                 if os.path.isfile(p)]
    return sorted((info for info in found if suffixes is None or info.uri.lower().endswith(suffixes)),
                  key=lambda info: info.uri)


def glob_objects_and_hidden(pattern: str, storage: "Storage") -> tuple[list["ObjectInfo"], list["ObjectInfo"]]:
    """``glob_objects`` (hidden names left out), and the files only a hidden name kept out (``storage ls`` / ``rm``
    say so): one listing on S3."""
    everything = glob_objects(pattern, storage, include_hidden=True)
    visible = (_s3_glob(pattern) if is_s3(pattern)
               else {info.uri for info in glob_objects(pattern, storage)}.__contains__)  # local listings are cheap
    return [info for info in everything if visible(info.uri)], [info for info in everything if not visible(info.uri)]


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    # what tells this version of the object from another without reading it, as listed: a local file's
    # modification time (ns), an S3 object's ETag; "" where the listing gives none
    version: str = ""


# ------------------------------------------------------------------ atomic writers


class _AtomicWriter(io.RawIOBase):
    """Common commit/abort protocol: ``close()`` commits; leaving a ``with`` block through
    an exception, or being garbage-collected unclosed, aborts."""

    def __init__(self, uri: str):
        super().__init__()
        self.uri = uri
        self._finished = False

    def writable(self) -> bool:
        return True

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()
        return False

    def close(self) -> None:
        if not self._finished and not self.closed:
            try:
                self._commit()
            except BaseException:
                self.abort()
                raise
            self._finished = True
        super().close()

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            with contextlib.suppress(Exception):
                self._abort()
        if not self.closed:
            super().close()

    def __del__(self):
        # A writer dropped without close() must not publish a partial object.
        if not self._finished:
            self.abort()

    @abc.abstractmethod
    def _commit(self) -> None:
        """Publish what was written."""

    @abc.abstractmethod
    def _abort(self) -> None:
        """Discard what was written."""


@contextlib.contextmanager
def _local_failures(path: str, doing: str = "write") -> Iterator[None]:
    """The file system refusing to ``doing`` the local ``path`` (a read-only or full disk, a folder without write
    permission, a name too long) as a StorageError naming the path and the reason: it was a Python traceback."""
    try:
        yield
    except StorageError:
        raise
    except PermissionError as exc:
        advice = ("check the file's permissions" if doing == "read" else
                  "check the folder's permissions, or give another output folder")
        raise AccessDeniedError(f"{path}: cannot {doing} it: {exc.strerror or exc} ({advice})") from None
    except OSError as exc:
        raise StorageError(f"{path}: cannot {doing} it: {exc.strerror or exc}") from None


def _make_parent(path: str) -> None:
    """Create the folder a local file ``path`` goes in.

    Raises:
        StorageError: ``path`` is a folder, or lies under a file (naming both), so no file can be written there."""
    if os.path.isdir(path):
        raise StorageError(f"{path}: is a folder, not a file: give the file's name (or a path in the folder)")
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where a folder of the path should be: name it
        folder = os.path.dirname(path)
        while folder and not os.path.isfile(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        raise StorageError(f"{path}: lies under {folder}, a file, not a folder: give a path outside it") from None
    except OSError:
        with _local_failures(path):
            raise


class _LocalAtomicWriter(_AtomicWriter):
    def __init__(self, path: str):
        super().__init__(path)
        directory = os.path.dirname(path) or "."
        _make_parent(path)
        sweep_scratch(directory)
        with _local_failures(path):
            fd, self._tmp = tempfile.mkstemp(
                dir=directory, prefix=f"{scratch_name(os.path.basename(path))}.", suffix=scratch_suffix()
            )
            os.chmod(self._tmp, default_file_mode())  # mkstemp makes 0600; published files follow the umask
        self._file = os.fdopen(fd, "wb")

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError:  # a disk filling up (no context manager per write: torch.save writes in small pieces)
            with _local_failures(self.uri):
                raise

    def _commit(self) -> None:
        with _local_failures(self.uri):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.uri)

    def _abort(self) -> None:
        self._file.close()
        os.unlink(self._tmp)


class _S3AtomicWriter(_AtomicWriter):
    """Buffers up to the multipart threshold; beyond it streams fixed-size parts.

    Memory stays bounded by threshold + one part whatever the object size.
    """

    def __init__(self, storage: "Storage", location: Location):
        super().__init__(location.uri)
        self._storage = storage
        self._loc = location
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._threshold = storage.settings.multipart_threshold
        self._part_size = storage.settings.part_size

    def write(self, data) -> int:
        self._buffer += data
        if self._upload_id is None and len(self._buffer) > self._threshold:
            self._start_multipart()
        while self._upload_id is not None and len(self._buffer) >= self._part_size:
            self._upload_part(bytes(self._buffer[: self._part_size]))
            del self._buffer[: self._part_size]
        return len(data)

    def _start_multipart(self) -> None:
        response = self._storage._call(
            "create_multipart_upload", self._loc, Bucket=self._loc.bucket, Key=self._loc.path
        )
        self._upload_id = response["UploadId"]

    def _upload_part(self, body: bytes) -> None:
        number = len(self._parts) + 1
        response = self._storage._call(
            "upload_part",
            self._loc,
            Bucket=self._loc.bucket,
            Key=self._loc.path,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        self._parts.append({"ETag": response["ETag"], "PartNumber": number})

    def _commit(self) -> None:
        if self._upload_id is None:
            self._storage._call(
                "put_object", self._loc, Bucket=self._loc.bucket, Key=self._loc.path, Body=bytes(self._buffer)
            )
        else:
            if self._buffer or not self._parts:
                self._upload_part(bytes(self._buffer))
            self._storage._call(
                "complete_multipart_upload",
                self._loc,
                Bucket=self._loc.bucket,
                Key=self._loc.path,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            log_event(log, "storage.multipart.done", uri=self.uri, parts=len(self._parts))
        self._buffer = bytearray()

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is not None:
            self._storage._call(
                "abort_multipart_upload",
                self._loc,
                Bucket=self._loc.bucket,
                Key=self._loc.path,
                UploadId=self._upload_id,
            )
            log_event(log, "storage.multipart.aborted", uri=self.uri, parts=len(self._parts))


class _S3RangeReader(io.RawIOBase):
    """Seekable reads of an S3 object by HTTP range requests (tifffile reads tiles this way), each asking for the
    version first seen (``If-Match`` its ETag): an object replaced while it is read fails the read (a
    ``StorageError`` saying so) instead of giving bytes of two versions (a slide's tiles from two scans)."""

    def __init__(self, storage: "Storage", location: Location, size: int, etag: str | None = None):
        super().__init__()
        self._storage = storage
        self._loc = location
        self._size = size
        self._pos = 0
        self._match = {"IfMatch": etag} if etag else {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._size or len(buffer) == 0:
            return 0
        end = min(self._size, self._pos + len(buffer)) - 1
        from botocore.exceptions import ClientError

        with self._storage._translated("get_object", self._loc):
            try:
                response = self._storage.client.get_object(Bucket=self._loc.bucket, Key=self._loc.path,
                                                           Range=f"bytes={self._pos}-{end}", **self._match)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 412:
                    raise
                raise StorageError(f"{self._loc.uri}: replaced while it was being read (its ETag changed after "
                                   f"{self._pos} of {self._size} bytes); read it again once it is written") from None
        data = response["Body"].read()
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


# ----------------------------------------------------------------------- storage


class Storage:
    """Reads and writes paths and ``s3://`` URIs with one set of settings.

    Cheap to create; the S3 client is made on first use and shared by threads.
    Instances pickle (without their client) so Ray tasks can carry them.
    """

    def __init__(self, settings: StorageSettings | None = None):
        self.settings = settings or StorageSettings.from_environment()
        self._client = None
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"settings": self.settings}

    def __setstate__(self, state):
        self.__init__(state["settings"])

    # -- S3 plumbing ---------------------------------------------------------

    @property
    def endpoint_url(self) -> str | None:
        return (
            self.settings.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

    def _session(self):
        import boto3

        return boto3.Session(profile_name=self.settings.profile, region_name=self.settings.region)

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                from botocore.config import Config

                config = Config(
                    retries={"total_max_attempts": self.settings.max_attempts, "mode": "standard"},
                    connect_timeout=self.settings.connect_timeout_s,
                    read_timeout=self.settings.read_timeout_s,
                    s3={"addressing_style": self.settings.addressing_style.value},
                    signature_version="s3v4",
                    # botocore keeps 10 by default; the driver plans slides on up to segment.plan_threads threads
                    max_pool_connections=64,
                )
                self._client = self._session().client(
                    "s3", endpoint_url=self.endpoint_url, config=config, verify=self.settings.verify_tls
                )
            return self._client

    def _call(self, operation: str, location: Location, **kwargs):
        with self._translated(operation, location):
            return getattr(self.client, operation)(**kwargs)

    @contextlib.contextmanager
    def _translated(self, operation: str, location: Location):
        """botocore's errors inside as minseg's StorageError kinds, naming the URI and the endpoint (a paginated
        listing or a managed copy raises them as it goes, outside ``_call``)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except ClientError as exc:
            raise self._translate(exc, operation, location) from None
        except NoCredentialsError:
            raise AccessDeniedError(
                f"{location.uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except BotoCoreError as exc:
            raise StorageError(
                f"{location.uri}: {operation} failed against endpoint {self.endpoint_url or 'AWS'}: {exc}"
            ) from None

    def _head(self, location: Location) -> dict:
        """An object's HEAD. A HEAD answers 404 with no error body whether the key or its whole bucket is
        missing; a miss asks the bucket, so the error says which (``exists`` keeps to one request).

        Raises:
            ObjectNotFoundError, BucketNotFoundError, StorageError."""
        try:
            return self._call("head_object", location, Bucket=location.bucket, Key=location.path)
        except ObjectNotFoundError:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                self.client.head_bucket(Bucket=location.bucket)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise BucketNotFoundError(f"{location.uri}: bucket {location.bucket!r} does not exist") from None
            except BotoCoreError:
                pass  # the object's own 404 stands
            raise

    def _translate(self, exc, operation: str, location: Location) -> StorageError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        where = f"{location.uri} ({operation}"
        where += f", endpoint {self.endpoint_url})" if self.endpoint_url else ")"
        if code in ("NoSuchBucket",):
            return BucketNotFoundError(f"{where}: bucket {location.bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return ObjectNotFoundError(f"{where}: no such object")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden") or status == 403:
            hint = {
                "InvalidAccessKeyId": "the access key id is not known to this endpoint",
                "SignatureDoesNotMatch": "the secret key does not match the access key id",
            }.get(code, "the credentials are not allowed to do this")
            return AccessDeniedError(
                f"{where}: access denied ({code or status}): {hint}; check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        return StorageError(f"{where}: {code or status}: {error.get('Message', 'request failed')}")

    # -- public API ----------------------------------------------------------

    def read_bytes(self, uri: str) -> bytes:
        loc = parse_uri(uri)
        if loc.is_s3:
            return self._call("get_object", loc, Bucket=loc.bucket, Key=loc.path)["Body"].read()
        try:
            return Path(loc.path).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{loc.uri}: no such file") from None
        except IsADirectoryError:
            raise StorageError(f"{loc.uri}: is a directory, not a file") from None
        except OSError:  # no permission to read it, an I/O error
            with _local_failures(loc.path, "read"):
                raise

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.open_write(uri) as stream:
            stream.write(data)

    def read_text(self, uri: str, encoding: str = "utf-8-sig") -> str:
        """A text file (manifests, lists, records), UTF-8 with or without the byte-order mark spreadsheets write
        (Excel's "CSV UTF-8": it became part of the first name or key).

        Raises:
            ObjectNotFoundError, StorageError: as ``read_bytes``.
            InputError: not text in ``encoding`` (a picture or weights given for a manifest, a Latin-1 list),
                naming the file and the first byte that is not; an InputError is a ValueError, which callers reading
                records take as damaged."""
        from minseg.errors import InputError

        data = self.read_bytes(uri)
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise InputError(f"{uri}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}): a picture, "
                             "weights or a file saved in another encoding where a text file belongs") from None

    def read_json(self, uri: str):
        """A JSON document (a run's record: members.json, member.json, evaluation.json, ...).

        Raises:
            ObjectNotFoundError, StorageError: as ``read_bytes``.
            InputError: not valid UTF-8 JSON (a damaged or half-copied record), naming the file and where."""
        from minseg.errors import InputError

        try:
            return json.loads(self.read_text(uri))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise InputError(f"{uri}: not valid JSON ({exc}); a damaged or half-copied file: restore or recreate "
                             "it") from None

    def write_json(self, uri: str, document, indent: int | None = 2) -> None:
        """``document`` written as standard JSON (``json_text``): a number JSON cannot hold is written null."""
        self.write_text(uri, json_text(document, indent))

    def write_text(self, uri: str, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(uri, text.encode(encoding))

    def open_read(self, uri: str) -> IO[bytes]:
        """A seekable binary stream (S3: range requests, buffered).

        Raises:
            ObjectNotFoundError: nothing there; StorageError: a local folder, or S3 failed."""
        loc = parse_uri(uri)
        if loc.is_s3:
            head = self._head(loc)
            return io.BufferedReader(_S3RangeReader(self, loc, int(head["ContentLength"]), head.get("ETag")),
                                     buffer_size=1024 * 1024)
        try:
            return open(loc.path, "rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{loc.uri}: no such file") from None
        except IsADirectoryError:
            raise StorageError(f"{loc.uri}: is a directory, not a file") from None
        except OSError:  # no permission to read it, an I/O error
            with _local_failures(loc.path, "read"):
                raise

    def open_write(self, uri: str) -> _AtomicWriter:
        """An atomic binary writer; use it as a context manager so errors abort it.

        Raises:
            StorageError: a local ``uri`` that is a folder or lies under a file."""
        loc = parse_uri(uri)
        if loc.is_s3:
            return _S3AtomicWriter(self, loc)
        return _LocalAtomicWriter(loc.path)

    @contextlib.contextmanager
    def staged_output(self, uri: str, suffix: str = "") -> Iterator[str]:
        """A local path to write with libraries that need a real, seekable file.

        The file is published to ``uri`` (renamed locally, uploaded to S3) only if the
        block succeeds; otherwise it is removed.

        Raises:
            StorageError: a local ``uri`` that is a folder or lies under a file.
        """
        loc = parse_uri(uri)
        directory = os.path.dirname(loc.path) if not loc.is_s3 else None
        if directory:
            _make_parent(loc.path)
        sweep_scratch(directory or tempfile.gettempdir())
        with _local_failures(loc.path if directory else tempfile.gettempdir()):
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix=f"{scratch_name(os.path.basename(loc.path))}.", suffix=suffix + scratch_suffix()
            )
            os.close(fd)
            os.chmod(tmp, default_file_mode())
        try:
            with _local_failures(tmp if loc.is_s3 else loc.path):  # the library writing the file: a full disk
                yield tmp
            if loc.is_s3:
                self.upload_file(tmp, uri)
            else:
                with _local_failures(loc.path):
                    os.replace(tmp, loc.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def local_copy(self, uri: str, suffix: str = "", sidecars: tuple[str, ...] = (),
                   companions: tuple[str, ...] = ()) -> Iterator[str]:
        """A local path holding the object's bytes (the file itself when already local).

        ``sidecars``: extensions of companion objects fetched beside it when they exist, in any case (a
        shapefile's .shx, .dbf, .prj: ``a.shp`` -> ``a.dbf`` or ``a.DBF``); ``companions``: suffixes appended
        to the whole name (GDAL's ``a.tif.msk``, ``a.tif.aux.xml``). An s3:// URI naming a prefix
        rather than an object (an ESRI grid folder) is downloaded as a folder.
        """
        loc = parse_uri(uri)
        if not loc.is_s3:
            if not os.path.exists(loc.path):
                raise ObjectNotFoundError(f"{loc.uri}: no such file")
            yield loc.path
            return
        sweep_scratch(tempfile.gettempdir())
        with tempfile.TemporaryDirectory(prefix="minseg-", suffix=scratch_suffix()) as tmp:
            name = os.path.basename(loc.path.rstrip("/")) or "object"
            if self.exists(uri):
                target = os.path.join(tmp, name) + suffix
                self._download(uri, target)
                stem, own = uri.rsplit(".", 1) if "." in os.path.basename(loc.path) else (uri, "")
                # one listing of the stem's siblings, matched in any case (old Windows tools write X.shp beside
                # X.DBF) and saved in the case of the object's own extension, the only other one GDAL tries
                found, wanted = {}, {extension.lower() for extension in sidecars}
                for info in (self.list(stem + ".") if sidecars else ()):
                    extension = info.uri[len(stem):]
                    if extension.lower() in wanted and extension.lower() != f".{own.lower()}":  # never over itself
                        exact = extension in sidecars  # X.dbf is preferred to X.DBF when both exist
                        if exact or extension.lower() not in found:
                            found[extension.lower()] = info.uri
                for extension, source in found.items():
                    name = os.path.basename(stem) + (extension.upper() if own.isupper() else extension)
                    self._download(source, os.path.join(tmp, name))
                for companion in companions:
                    if self.exists(uri + companion):
                        self._download(uri + companion, target + companion)
            else:
                prefix = uri.rstrip("/") + "/"
                target = os.path.join(tmp, name)
                objects = list(self.list(prefix))
                if not objects:
                    raise ObjectNotFoundError(f"{uri}: no such object or prefix")
                for info in objects:
                    self._download(info.uri, os.path.join(target, info.uri[len(prefix):]))
            yield target

    def _download(self, uri: str, path: str) -> None:
        with self.open_read(uri) as source, _local_failures(path):  # a full scratch disk
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as sink:
                shutil.copyfileobj(source, sink, length=self.settings.part_size)

    def upload_file(self, path: str, uri: str) -> None:
        with open(path, "rb") as source, self.open_write(uri) as sink:
            shutil.copyfileobj(source, sink, length=self.settings.part_size)

    def exists(self, uri: str) -> bool:
        loc = parse_uri(uri)
        if not loc.is_s3:
            return os.path.exists(loc.path)
        try:
            self._call("head_object", loc, Bucket=loc.bucket, Key=loc.path)
            return True
        except ObjectNotFoundError:
            return False

    def size(self, uri: str) -> int:
        loc = parse_uri(uri)
        if loc.is_s3:
            return int(self._head(loc)["ContentLength"])
        try:
            return os.path.getsize(loc.path)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{loc.uri}: no such file") from None

    def version(self, uri: str) -> dict:
        """What tells one version of an object from another without reading it: size and modification time (local
        files, ns), or size, ETag and LastModified (S3). Raises ObjectNotFoundError, StorageError."""
        loc = parse_uri(uri)
        if loc.is_s3:
            head = self._head(loc)
            modified = head.get("LastModified")
            return {"uri": uri, "size": int(head["ContentLength"]), "etag": str(head.get("ETag", "")),
                    "modified": modified.isoformat() if modified is not None else None}
        try:
            stat = os.stat(loc.path)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{loc.uri}: no such file") from None
        except OSError as exc:
            raise StorageError(f"{loc.uri}: {exc.strerror or exc}") from None
        return {"uri": uri, "size": stat.st_size, "modified_ns": stat.st_mtime_ns}

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under a prefix, in key order. A local prefix is a folder (walked
        recursively) or a file-name prefix inside a folder; one ending in ``/`` is a folder only, as on S3
        (``out/a/`` lists nothing when there is no folder ``a``, never ``out/ab/``'s files). Temp files are
        skipped."""
        loc = parse_uri(prefix)
        if not loc.is_s3 and os.fspath(prefix).endswith("/") and not os.path.isdir(loc.path):
            return
        if loc.is_s3:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=loc.bucket, Prefix=loc.path)
            with self._translated("list_objects_v2", loc):
                for page in pages:
                    for item in page.get("Contents", []):
                        if item["Key"].endswith("/"):
                            continue  # directory marker written by pyarrow / consoles
                        yield ObjectInfo(f"s3://{loc.bucket}/{item['Key']}", int(item["Size"]),
                                         str(item.get("ETag", "")))
            return
        yield from _list_local(loc.path)

    def is_folder(self, uri: str) -> bool:
        """A local folder, or an s3:// prefix that holds objects (``uri/...``) and is no object itself."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            return os.path.isdir(loc.path)
        key = loc.path.rstrip("/")
        if key and not loc.path.endswith("/") and self.exists(uri):
            return False
        listed = self._call("list_objects_v2", loc, Bucket=loc.bucket, Prefix=f"{key}/" if key else "", MaxKeys=1)
        return bool(listed.get("Contents"))

    def holds_files(self, uri: str) -> bool:
        """Whether the folder ``uri`` holds any file (at any depth; scratch files aside): one listing of at most a
        few keys on S3, a walk stopped at the first file locally (a slide folder holds thousands of chunks)."""
        loc = parse_uri(uri)
        if loc.is_s3:
            key = loc.path.rstrip("/")
            # one request whatever MaxKeys: room for the directory markers consoles write before a file
            listed = self._call("list_objects_v2", loc, Bucket=loc.bucket, Prefix=f"{key}/" if key else "",
                                MaxKeys=1000)
            return any(not item["Key"].endswith("/") for item in listed.get("Contents", []))

        def unreadable(error: OSError):  # a folder that cannot be listed is not an empty one (a missing one is)
            if not isinstance(error, (FileNotFoundError, NotADirectoryError)):
                raise StorageError(f"{error.filename}: cannot list it: {error.strerror}")

        for folder, _, files in os.walk(loc.path, onerror=unreadable):
            if any(_TMP_MARK not in os.path.join(folder, name) for name in files):
                return True
        return False

    def file_names(self, uri: str) -> set[str]:
        """The names of the files (S3: objects) directly in ``uri``, not in its subfolders; none when it is not
        there. One delimiter listing on S3 (a slide folder's thousands of chunks lie in subfolders)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                return {entry.name for entry in os.scandir(loc.path) if entry.is_file()}
            return set()
        key = loc.path.rstrip("/")
        prefix = f"{key}/" if key else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix, Delimiter="/")
        with self._translated("list_objects_v2", loc):
            return {item["Key"][len(prefix):] for page in pages for item in page.get("Contents", [])
                    if not item["Key"].endswith("/")}

    def folder_names(self, uri: str) -> list[str]:
        """The names of the folders (S3: common prefixes) directly in ``uri``, sorted; none when it is not there."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                return sorted(entry.name for entry in os.scandir(loc.path) if entry.is_dir())
            return []
        key = loc.path.rstrip("/")
        prefix = f"{key}/" if key else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix, Delimiter="/")
        with self._translated("list_objects_v2", loc):
            return sorted(common["Prefix"][len(prefix):].rstrip("/") for page in pages
                          for common in page.get("CommonPrefixes", []))

    def delete(self, uri: str, missing_ok: bool = True) -> None:
        """Delete one object/file; deleting what does not exist is not an error unless ``missing_ok`` is False.

        Raises:
            ObjectNotFoundError: nothing there and not ``missing_ok``.
            StorageError: a local folder (``delete_prefix`` removes a folder's files), or S3 failed."""
        loc = parse_uri(uri)
        if loc.is_s3:
            if not missing_ok and not self.exists(uri):
                raise ObjectNotFoundError(f"{loc.uri}: no such object")
            self._call("delete_object", loc, Bucket=loc.bucket, Key=loc.path)
            return
        try:
            os.unlink(loc.path)
        except FileNotFoundError:
            if not missing_ok:
                raise ObjectNotFoundError(f"{loc.uri}: no such file or folder") from None
        except IsADirectoryError:
            raise StorageError(f"{loc.uri}: is a folder, not a file") from None
        except PermissionError:
            if os.path.isdir(loc.path):  # macOS: unlink of a folder is EPERM
                raise StorageError(f"{loc.uri}: is a folder, not a file") from None
            with _local_failures(loc.path, "delete"):
                raise
        except OSError:
            with _local_failures(loc.path, "delete"):
                raise

    def delete_prefix(self, prefix: str, keep: tuple[str, ...] = (), last: tuple[str, ...] = ()) -> int:
        """Delete every object under a prefix (locally, also the folders left empty), but those named in ``keep``
        (relative to a folder ``prefix``), and those in ``last`` after the rest: an item folder's record, so that a
        run stopped half-way leaves the folder still named as its source's (``folders.FolderOwners``)."""
        base = (prefix if is_s3(prefix) else absolute_uri(prefix)).rstrip("/") + "/"
        infos = [info for info in self.list(prefix) if info.uri[len(base):] not in keep]
        ordered = [i for i in infos if i.uri[len(base):] not in last] + [i for i in infos if i.uri[len(base):] in last]
        for info in ordered:
            self.delete(info.uri)
        self._remove_empty_folders(prefix)
        return len(ordered)

    @staticmethod
    def _remove_empty_folders(uri: str) -> None:
        """Locally, the folders under ``uri`` (and itself) that hold no file."""
        loc = parse_uri(uri)
        if not loc.is_s3 and os.path.isdir(loc.path):
            for folder, _, _ in sorted(os.walk(loc.path), key=lambda entry: -len(entry[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)

    def copy(self, source: str, destination: str) -> None:
        """Copy one file between any two locations; S3 to S3 is server-side (multipart when large).

        Raises:
            ObjectNotFoundError: no ``source``; StorageError: a local ``source`` or ``destination`` that is a folder,
            a local ``destination`` under a file, or S3 failed."""
        src, dst = parse_uri(source), parse_uri(destination)
        if src.is_s3 and dst.is_s3:
            from boto3.s3.transfer import TransferConfig

            config = TransferConfig(
                multipart_threshold=self.settings.multipart_threshold,
                multipart_chunksize=self.settings.part_size,
            )
            with self._translated("copy", src):
                self.client.copy({"Bucket": src.bucket, "Key": src.path}, dst.bucket, dst.path, Config=config)
            return
        with self.open_read(source) as reader, self.open_write(destination) as writer:
            shutil.copyfileobj(reader, writer, length=self.settings.part_size)

    def replace_folder(self, staged: str, final: str, last: tuple[str, ...]) -> None:
        """Put the complete folder ``staged`` in the place of ``final`` (an earlier run's outputs): ``final`` ends up
        holding exactly ``staged``'s files, and ``staged`` is gone. ``last``: names of files (relative) that leave
        ``final`` first and enter it last, in order, the final one the marker that says a folder is complete
        (``summary.json``); so no reader takes a mix of the two runs for complete.

        Locally: the earlier folder is renamed aside (a scratch name), ``staged`` renamed into its place, the
        earlier one deleted. On S3 (no renames): ``staged``'s objects copied over ``final``'s server-side (8 at a
        time), the earlier run's other objects deleted, ``last`` copied, then ``staged`` deleted. Resumable: until
        the very end ``staged`` is whole, so a replacement cut short (a killed process, a failed request) is
        completed by calling this again (``finish_replacements``); meanwhile ``final`` reads as unfinished.

        Raises:
            StorageError: a listing, copy, delete or rename failed."""
        src, dst = parse_uri(staged), parse_uri(final)
        if src.is_s3 or dst.is_s3:
            self.replace_files(staged, final, last)
            return
        for name in reversed(last):
            self.delete(join_uri(final, name))
        head, name = os.path.split(dst.path.rstrip("/"))
        aside = os.path.join(head, f"{scratch_name(name)}{scratch_suffix()}")  # a killed run's is swept (sweep_scratch)
        try:
            if os.path.isdir(dst.path):
                os.replace(dst.path, aside)
            _make_parent(dst.path)
            os.replace(src.path, dst.path)
        except OSError as exc:
            raise StorageError(f"{dst.uri}: cannot replace it with {src.uri}: {exc.strerror or exc}") from None
        shutil.rmtree(aside, ignore_errors=True)

    def replace_files(self, staged: str, final: str, last: tuple[str, ...],
                      owned: tuple[str, ...] | None = None) -> None:
        """Put the files of the complete folder ``staged`` in their places under ``final``, replacing an earlier
        run's, then delete ``staged``. Of ``final``'s other files, those ``owned`` names (relative: a file a run
        writes, or a folder it writes whole, with everything under it) are the earlier run's and deleted; the rest
        are kept (someone's own files in the folder; with ``owned`` None, ``final`` holds only a run's outputs and
        ends up holding exactly ``staged``'s files). ``last`` as in ``replace_folder``; ``staged`` may lie inside
        ``final``.

        Every file is copied, not moved (locally a hard link, so no bytes are copied; on S3 server-side, 8 at a
        time): ``staged`` stays whole until every file is in place, so a replacement cut short is completed by
        calling this again, and meanwhile ``final`` reads as unfinished (``last`` absent). ``staged`` is then
        deleted, its ``last`` files after the rest (``delete_staged``).

        Raises:
            StorageError: a listing, copy or delete failed."""
        staged, final = absolute_uri(staged), absolute_uri(final)  # listings name files by absolute URIs
        base, folder = staged.rstrip("/") + "/", final.rstrip("/") + "/"
        for name in reversed(last):
            self.delete(join_uri(final, name))
        names = [info.uri[len(base):] for info in self.list(base)]
        keep = set(names)

        self._place_all(staged, final, [name for name in names if name not in last])
        # the earlier run's files: every file of final, or those under the owned names only (not a listing of
        # a whole output folder, every slide's chunks, to find four tables)
        found = ([info.uri for info in self.list(folder)] if owned is None else  # a staged file replaced its own
                 [uri for name in owned if name not in keep for uri in self._files_named(join_uri(final, name))])
        self._in_parallel(self.delete, [uri for uri in found
                                        if uri[len(folder):] not in keep and not uri.startswith(base)])
        for name in owned or ():  # locally, the folders left empty (an earlier run's fold no longer configured)
            self._remove_empty_folders(join_uri(final, name))
        for name in last:
            if name in keep:
                self._place(join_uri(staged, name), join_uri(final, name))
        self.delete_staged(staged, last, names)

    def _files_named(self, uri: str) -> list[str]:
        """The file ``uri``, or the files under the folder ``uri`` (S3: the object, or the objects under
        ``uri/``); [] when there is neither."""
        under = [info.uri for info in self.list(uri.rstrip("/") + "/")]
        if under:
            return under
        loc = parse_uri(uri)
        return [uri] if (os.path.isfile(loc.path) if not loc.is_s3 else self.exists(uri)) else []

    def publish_staged(self, final: str, command: str, last: tuple[str, ...], owned: tuple[str, ...]) -> None:
        """``replace_files`` of ``command``'s complete staging folder (``staging_folder(final, command)``), then the
        redo folders' parent ``<final>/.minseg-redo`` removed when that left it empty (a whole run's publication:
        no other task of it is staging meanwhile).

        Raises:
            StorageError: a listing, copy or delete failed before every output was in place; the message adds that
                ``final`` reads as unfinished and that the next run of ``command`` into it puts the staged outputs in
                place first. Failing to delete the staging folder afterwards is a warning
                (``<command>.staging_not_removed``): the outputs are complete."""
        staged = staging_folder(final, command)
        try:
            self.replace_files(staged, final, last, owned)
        except StorageError as exc:
            placed = self._placed(staged, final, last[-1])
            if not placed:  # None: failed before anything changed, the earlier run's marker still there
                state = ("still holds the earlier outputs whole: the new ones are" if placed is None
                         else f"is left without {last[-1]} (unfinished): its new outputs are")
                raise StorageError(f"{exc}; {final} {state} complete in {staged}, and the next minseg {command} into "
                                   "it puts them in place first") from exc
            # every output is in place: only removing the staging folder failed (the next run removes it)
            log_event(log, f"{command}.staging_not_removed", logging.WARNING, output=final, staging=staged,
                      reason=str(exc), hint=f"the outputs are complete; the next minseg {command} into the folder "
                                            "removes it")
            return
        self.remove_empty_folder(join_uri(final, REDO))

    def _placed(self, staged: str, final: str, marker: str) -> bool | None:
        """After a replacement failed: True when its ``marker`` was put in place (the failure came while deleting
        the staging folder), None when the earlier run's marker is still there (it failed before any change),
        False when there is none (files were being put in place)."""
        try:
            if not self.exists(join_uri(staged, marker)):
                return self.exists(join_uri(final, marker))  # deleted from staging last: everything was in place
            if self.replacement_done(staged, final, marker):
                return True
            return None if self.exists(join_uri(final, marker)) else False
        except StorageError:
            return False

    def finish_staged(self, output: str, command: str, last: tuple[str, ...],
                      owned: Callable[[], tuple[str, ...]], optional: tuple[str, ...] = ()) -> bool:
        """Before a run of ``command`` into ``output``: complete outputs it staged (``staging_folder``) whose
        publication (``publish_staged``) was cut short, a killed process or a failed request (``output`` then
        lacks ``last``), are put in place, so that ``output`` holds a finished run whatever this one does; the
        remains of a run that failed before its outputs were complete (no marker, ``last[-1]``, staged) are
        deleted. ``owned()``: the earlier run's files to delete, as in ``replace_files`` (called only when needed);
        ``optional``: documents of ``last`` this run's complete outputs lack (an evaluation that selected no
        candidate has no manifest). Returns whether outputs were put in place.

        Raises:
            InputError: ``<output>/.minseg-redo`` is a file (``refuse_redo_file``).
            StorageError: a listing, copy or delete failed."""
        refuse_redo_file(output, command, self)
        staged = staging_folder(output, command)
        moved = False
        if not self.exists(join_uri(staged, last[-1])):  # a run that failed before its outputs were complete
            self.delete_prefix(staged + "/")
        elif not all(self.exists(join_uri(staged, name)) for name in last[:-1] if name not in optional):
            # its documents leave the staging folder last, the marker the very last: put in place (the same marker
            # there), then half deleted; else a folder someone changed by hand, left as it is for them
            if self.replacement_done(staged, output, last[-1]):
                self.delete_staged(staged, last)
            else:
                log_event(log, f"{command}.staged_outputs_incomplete", logging.WARNING, staging=staged,
                          hint="a staging folder lacking some of its documents and not in place: left as it is")
        else:
            moved = self.finish_replacement(staged, output, last[-1], last, owned())
        self.remove_empty_folder(join_uri(output, REDO))
        return moved

    def delete_staged(self, staged: str, last: tuple[str, ...], names: list[str] | None = None) -> None:
        """Delete the folder ``staged`` of a replacement that is done, its ``last`` files after the rest: while
        they are there, the final folder holds the same ones (``replacement_done``), and a partly deleted ``staged``
        is never taken for a complete run, nor for an unfinished one to resume. ``names``: its files (relative),
        when the caller has just listed them."""
        if names is None:
            base = absolute_uri(staged).rstrip("/") + "/"
            names = [info.uri[len(base):] for info in self.list(base)]
        self._in_parallel(self.delete, [join_uri(staged, name) for name in names if name not in last])
        for name in last:
            self.delete(join_uri(staged, name))
        self._remove_empty_folders(staged)

    def finish_replacement(self, staged: str, final: str, marker: str, last: tuple[str, ...],
                           owned: tuple[str, ...] | None = None) -> bool:
        """Complete a replacement cut short, ``staged`` holding its ``marker`` (finished work): ``replace_folder``
        (``owned`` None) or ``replace_files`` again, unless it was done but for deleting ``staged``
        (``replacement_done``: then only that). Returns whether files were put in place."""
        if self.replacement_done(staged, final, marker):
            self.delete_staged(staged, last)
            return False
        if owned is None:
            self.replace_folder(staged, final, last)
        else:
            self.replace_files(staged, final, last, owned)
        return True

    def replacement_done(self, staged: str, final: str, marker: str) -> bool:
        """Whether ``final`` holds the very ``marker`` file of ``staged`` (a replacement that was complete but for
        deleting ``staged``)."""
        try:
            return self.read_bytes(join_uri(final, marker)) == self.read_bytes(join_uri(staged, marker))
        except ObjectNotFoundError:
            return False

    def copy_files(self, source: str, destination: str, skip: tuple[str, ...] = ()) -> int:
        """Copy every file under the folder ``source`` to the same relative path under ``destination`` (locally hard
        links, as ``replace_files``; S3 server-side, 8 at a time), but those under the top-level names ``skip``.
        Returns the number of files.

        Raises:
            StorageError: a listing or copy failed."""
        base = absolute_uri(source).rstrip("/") + "/"
        names = [name for name in (info.uri[len(base):] for info in self.list(base))
                 if name.partition("/")[0] not in skip]
        self._place_all(source, destination, names)
        return len(names)

    def _place_all(self, source: str, destination: str, names: list[str]) -> None:
        """``_place`` of each relative name from ``source`` to ``destination``, 8 at a time."""
        self._in_parallel(lambda name: self._place(join_uri(source, name), join_uri(destination, name)), names)

    @staticmethod
    def _in_parallel(call, items: list) -> None:
        """``call`` of every item on 8 threads (requests to S3 wait on the network); raises the first failure."""
        from concurrent.futures import ThreadPoolExecutor

        if items:
            with ThreadPoolExecutor(max_workers=8, thread_name_prefix="minseg-files") as pool:
                list(pool.map(call, items))

    def _place(self, source: str, destination: str) -> None:
        """``copy``, but a local file is hard-linked into place (no bytes copied; minseg's writers replace files by
        renaming, never in place, so neither copy sees the other's later writes); where links fail (another file
        system), copied. A destination that is the source's very file already (a link made before) is left."""
        src, dst = parse_uri(source), parse_uri(destination)
        if not src.is_s3 and not dst.is_s3:
            with contextlib.suppress(OSError):
                if os.path.samefile(src.path, dst.path):  # a rename onto the same file would do nothing
                    return
            _make_parent(dst.path)
            sweep_scratch(os.path.dirname(dst.path))  # a link left by a run killed here, as the writers do
            head, name = os.path.split(dst.path)
            link = os.path.join(head, f"{scratch_name(name)}{scratch_suffix()}")
            try:
                os.link(src.path, link)
                os.replace(link, dst.path)
                return
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(link)
        self.copy(source, destination)

    def finish_replacements(self, output: str, marker: str, last: tuple[str, ...]) -> list[str]:
        """Complete the replacements (``replace_folder``) a run left cut short under ``output``: each redo folder
        (``<output>/.minseg-redo/<name>``) holding its ``marker`` is finished work; it replaces ``<output>/<name>``
        (unless that holds the very same marker: then the replacement was done but for deleting the redo folder).
        One listing of the redo folders. Returns the names whose outputs were moved into place."""
        finished = sorted(name for name, files in self.redo_folders(output).items() if marker in files)
        moved = []
        for name in finished:
            if self.finish_replacement(join_uri(output, REDO, name), join_uri(output, name), marker, last):
                moved.append(name)
        return moved

    def redo_folders(self, output: str) -> dict[str, set[str]]:
        """The redo folders under ``output`` (``<output>/.minseg-redo/<name>/``): name -> the files in it (paths
        relative to it). One listing, of that folder only (``list`` of a prefix ending in ``/``)."""
        root = join_uri(output, REDO)
        found: dict[str, set[str]] = {}
        for info in self.list(root + "/"):
            name, _, rest = info.uri[len(root) + 1:].partition("/")
            if name and rest:
                found.setdefault(name, set()).add(rest)
        return found

    def remove_empty_folder(self, uri: str) -> None:
        """Locally, remove the folder ``uri`` if it is empty (S3 has no folders): at the end of a run, the redo
        folders' parent (not during it: another task may be creating a folder in it)."""
        loc = parse_uri(uri)
        if not loc.is_s3:
            with contextlib.suppress(OSError):
                os.rmdir(loc.path)

    def pyarrow_filesystem(self, uri: str):
        """``(filesystem, path)`` for pyarrow / Ray Data, built from these same settings.

        pyarrow's own S3FileSystem ignores AWS_ENDPOINT_URL, so the endpoint and the
        resolved credentials are passed explicitly.
        """
        import pyarrow.fs as pafs

        loc = parse_uri(uri)
        if not loc.is_s3:
            return pafs.LocalFileSystem(), loc.path
        credentials = self._session().get_credentials()
        kwargs = {"region": self.settings.region}
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
            if frozen.token:
                kwargs["session_token"] = frozen.token
        endpoint = self.endpoint_url
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
        if self.settings.addressing_style.value == "virtual":
            kwargs["force_virtual_addressing"] = True
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=self.settings.max_attempts)
        kwargs["connect_timeout"] = self.settings.connect_timeout_s
        kwargs["request_timeout"] = self.settings.read_timeout_s
        return pafs.S3FileSystem(**kwargs), f"{loc.bucket}/{loc.path}".rstrip("/")


def _list_local(path: str) -> Iterator[ObjectInfo]:
    if os.path.isdir(path):
        roots, directory = [path], path
    else:
        directory, stem = os.path.split(path)
        if not os.path.isdir(directory):
            return
        roots = [os.path.join(directory, name) for name in os.listdir(directory) if name.startswith(stem)]
    found = []
    for root in roots:
        if os.path.isfile(root):
            found.append(root)
        for folder, dirs, files in os.walk(root):
            found.extend(os.path.join(folder, name) for name in files)
    for full in sorted(found):
        if _TMP_MARK not in os.path.relpath(full, directory):  # scratch files, and the files of scratch folders
            stat = os.stat(full)
            yield ObjectInfo(full, stat.st_size, str(stat.st_mtime_ns))


def process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """0o666 less the process umask, what ``open()`` would have given."""
    return 0o666 & ~process_umask()


def dangling_link(path: str) -> str | None:
    """The nearest of a local ``path`` (absolute) and its parents that is a symbolic link to nothing (a folder moved
    away, a disk not mounted), or None: writing there fails although its parent folder is writable."""
    folder = path
    while not os.path.exists(folder):
        if os.path.islink(folder):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return None


def nearest_existing(path: str) -> str:
    """A local ``path`` (absolute) if it exists, else its nearest parent that does: where a folder not made yet
    would be made."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def refuse_file_as_folder(uri: str | None, source: str) -> None:
    """Before a job starts: a local output folder that is a file, or lies under one, or is (or lies under) a link to
    nothing, would fail at the job's first write, after Ray started and inputs were read. s3:// prefixes cannot
    collide with a file that way.

    Raises:
        InputError: naming ``source`` (the flag or config key) and the file, link or folder."""
    from minseg.errors import InputError

    if not uri or is_s3(uri):
        return
    path = os.path.abspath(os.path.expanduser(parse_uri(uri).path))
    link = dangling_link(path)
    if link:
        where = "is" if link == path else f"lies under {link},"
        raise InputError(f"{source}: {uri} {where} a link to {os.readlink(link)}, which does not exist: create "
                         "the folder it points to, or give another folder for the outputs")
    folder = nearest_existing(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        where = "is a file" if folder == path else f"lies under {folder}, a file"
        raise InputError(f"{source}: {uri} {where}, not a folder: give a folder for the outputs")


# the file each command writes at the top of its output folder: another command's outputs given there would overwrite
# its reports (score's tables over evaluate's) or mix into its run tables (measure's slides.csv over segment's)
COMMAND_MARKERS = {"train": "members.json", "evaluate": "evaluation.json", "score": "score.json",
                   "segment": "run_summary.json", "measure": "measure_summary.json", "prospect": ".minseg-prospect",
                   "synth": "synth_manifest.json"}  # synth's and the demo's (which synthesises first)
#: the commands whose marker is staged with their outputs (``staging_folder``) and put in place last (prospect's
#: marker stays in the output folder: only its summary is staged)
STAGED_MARKERS = ("evaluate", "score", "segment", "measure")
#: the staging folder's name under ``.minseg-redo`` where it is not the command's: segment and measure redo each
#: slide in ``.minseg-redo/<slide>`` (``redo_folder``), and no slide's folder is hidden
_STAGING_NAMES = {"segment": ".segment-tables", "measure": ".measure-tables"}


def staging_folder(output: str, command: str) -> str:
    """Where ``command`` writes a rerun's outputs before they replace the finished ones in ``output``:
    ``<output>/.minseg-redo/<command>`` (hidden; on the same file system or bucket, so they are linked or copied
    server-side into place); segment and measure stage their run tables in ``.minseg-redo/.<command>-tables``."""
    return join_uri(output, REDO, _STAGING_NAMES.get(command, command))


def refuse_staging_output(uri: str | None, source: str) -> None:
    """Before a job starts: the output ``uri`` must not lie in a ``.minseg-redo`` folder (locally also through a
    link), where minseg stages a run's outputs until they are put in place, then deletes them.

    Raises:
        InputError: naming ``source`` and the folder."""
    from minseg.errors import InputError

    if not uri:
        return
    loc = parse_uri(uri)
    path = loc.path if loc.is_s3 else os.path.realpath(os.path.expanduser(loc.path))
    if REDO in path.replace(os.sep, "/").split("/"):
        raise InputError(f"{source}: {uri} lies in a {REDO} folder, where minseg stages a run's outputs until they "
                         "are put in place (then it is deleted): give another folder")


def refuse_redo_file(output: str, command: str, storage: Storage) -> None:
    """Before a job stages anything in ``output``: neither ``<output>/.minseg-redo`` nor ``command``'s staging
    folder in it may be a file (no staging folder could be made there, which a job would find out only after all
    its work).

    Raises:
        InputError: naming the file and the command."""
    from minseg.errors import InputError

    for folder in (join_uri(output, REDO), staging_folder(output, command)):
        if storage.exists(folder) and not storage.is_folder(folder):
            raise InputError(f"{folder} is a file; minseg {command} stages its outputs in a folder of that name: "
                             "move the file away")


def refuse_output_among_inputs(uri: str, inputs: list[tuple[str, str]], source: str) -> None:
    """Before a job starts: the local output folder ``uri`` must not be, or lie inside, a local input folder
    (``inputs``: (where it is configured, URI)): the job's folders would be written among the inputs, and read
    as inputs by the next run (a data folder given as run.output_uri).

    Raises:
        InputError: naming ``source``, the folder and the input it lies in."""
    from minseg.errors import InputError

    if is_s3(uri):
        return
    out = os.path.realpath(os.path.expanduser(parse_uri(uri).path))
    for where, input_uri in inputs:
        if is_s3(input_uri) or has_glob(input_uri):
            continue
        folder = os.path.realpath(os.path.expanduser(parse_uri(input_uri).path))
        if out == folder or out.startswith(folder.rstrip(os.sep) + os.sep):
            raise InputError(f"{source}: {uri} lies in {where} ({input_uri}): the run's folders would be written "
                             "among its files, and read as data by the next run; write the run elsewhere")


#: the records naming an item folder's source, of the commands that replace their items' folders whole (segment's
#: slides, measure's maps): the files of ``inference.segment.SEGMENT_RECORDS`` and ``inference.measure.
#: MEASURE_RECORDS`` (the storage layer imports no inference module; a test keeps them equal)
ITEM_RECORDS = {"segment": ("summary.json", ".minseg/plan.json", "segmentation.ome.zarr/zarr.json"),
                "measure": ("mineralogy.json", ".minseg/measuring.json")}


def _refuse_inside_item_folder(uri: str, command: str, source: str, storage: Storage) -> None:
    """``uri`` must not lie inside an item folder of a segment or measure output (``out/<slide>/...``): a later
    run there redoing that item (``--force``, a changed input) replaces its folder whole, this output with it (a
    break-it pass lost a nested run so). One existence check per ancestor and command (a HEAD each on S3), and
    one per record where the command's marker is there (a slide folder whose summary is gone is one still).

    Raises:
        InputError: naming ``source``, the output, the item folder and the command that owns it."""
    from minseg.errors import InputError

    path = absolute_uri(uri).rstrip("/")
    root = "s3://" + parse_uri(path).bucket if is_s3(path) else ""
    child, parent = path, path.rpartition("/")[0]
    while parent and len(parent) > len(root):
        for other, records in ITEM_RECORDS.items():
            if storage.exists(join_uri(parent, COMMAND_MARKERS[other])) and \
                    any(storage.exists(join_uri(child, record)) for record in records):
                raise InputError(f"{source}: {uri} lies inside {child}/, an item folder of the minseg {other} output "
                                 f"{parent}: redoing that item replaces its folder whole, and minseg {command}'s "
                                 "outputs with it; give a folder outside it")
        child, parent = parent, parent.rpartition("/")[0]


#: commands that write another's outputs, under their own name (the demo synthesises first: synth's marker)
_WRITES_AS = {"demo": "synth"}


def refuse_other_command_outputs(uri: str | None, command: str, source: str, storage: Storage) -> None:
    """Before a job starts: ``uri`` must not hold another command's outputs (:data:`COMMAND_MARKERS`, at its top or
    in that command's staging folder: outputs not yet put in place), nor lie in a staging folder; its own earlier
    outputs are fine (a rerun, a resume).

    Raises:
        InputError: naming ``source`` (the flag or config key), the folder and the command whose outputs it holds.
        StorageError: the folder cannot be read (no credentials, no endpoint), naming ``source`` and the folder."""
    from minseg.errors import InputError

    if not uri:
        return
    refuse_staging_output(uri, source)
    _refuse_inside_item_folder(uri, command, source, storage)
    for other, marker in COMMAND_MARKERS.items():
        if other == _WRITES_AS.get(command, command):  # its own earlier outputs: a rerun
            continue
        # or its complete outputs staged there, their marker not yet in place (a publication cut short)
        staged = [join_uri(staging_folder(uri, other), marker)] if other in STAGED_MARKERS else []
        for path in (join_uri(uri, marker), *staged):
            found = path[len(uri.rstrip("/")) + 1:]
            # a marker is a file: a folder of its name is an item's (a slide `members.json.tif` segmented before
            # such names were hashed), no other command's outputs
            try:
                there = storage.exists(path) and not storage.is_folder(path)
            except StorageError as exc:  # no credentials, no endpoint: the folder's, not a marker file's to name
                raise StorageError(f"{source}: {uri}: cannot be read ({str(exc).removeprefix(path + ': ')}); the "
                                   f"output is checked for other commands' outputs before minseg {command} "
                                   "starts") from None
            if there:
                raise InputError(f"{source}: {uri} holds the outputs of minseg {other} ({found}); minseg {command} "
                                 "would write over them there: give another folder")
