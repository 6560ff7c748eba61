"""Where dataset files live: a folder / prefix, or a .tar, .tar.gz or .zip archive,
local or on S3. Listing happens once on the driver and yields small *refs*; tasks read
a member's bytes from its ref (range reads for tar, ZIP directory for zip).

Archive members are vetted while listing: absolute paths, ``..`` components,
symlinks, hard links and devices are rejected, and so are decompression bombs (a
member over the size limit, a suspicious compression ratio, or an archive that
inflates past the total limit). Rejected members are reported, never extracted.
Operating-system metadata is not data and is left out without a word: macOS's ``__MACOSX/``
folder and ``._*`` AppleDouble files (resource forks beside every file a Mac zips or copies to
a FAT/exFAT drive), ``.DS_Store`` and Windows' ``Thumbs.db`` / ``desktop.ini``. Other hidden files
(a name starting with ``.``) are not used either: pictures among them are reported, the rest
(``.gitkeep``) left out.

A name whose bytes are not UTF-8 (a tar or disk written in Latin-1) is reported with those bytes as ``\\xNN``
and not used: it could not be named in the reports, the tables or an S3 key.

Names are compared in Unicode NFC form (macOS writes decomposed NFD names: ``ñ`` as ``n`` + a
combining tilde), so an image and its mask named alike pair whichever form each was written in. A
name listed twice (a zip with a repeated entry, a tar with a file appended again, both forms of
one name in a folder) is used only when both copies hold the same bytes; otherwise neither is,
and the report says so (which one was meant is not known).

A member whose bytes turn out corrupt when read (a zip CRC mismatch, broken deflate data, a
truncated tar member) raises :class:`MemberError`, a ``StorageError`` naming the member: the
item it belongs to is quarantined and the job carries on.
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

from minseg.data.config import LimitSettings
from minseg.errors import RunError
from minseg.io.storage import (ObjectNotFoundError, Storage, StorageError, join_uri, parse_uri, shown_name,
                               undecodable)
from minseg.logs import get_logger, log_event

log = get_logger("data.containers")

MIB = 1024 * 1024
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class Rejected:
    """A file that was not used, and why (goes to the quarantine report)."""

    file: str
    reason: str

    def __post_init__(self):
        object.__setattr__(self, "file", shown_name(self.file))  # a report must be writable whatever its bytes
        # an error raised about the file names it first ("X.zip!a.png: corrupt archive member"): said once
        object.__setattr__(self, "reason", shown_name(self.reason).removeprefix(f"{self.file}: "))


@dataclass
class Container:
    """Listed contents: relative member path -> ref (a small dict a task can read)."""

    uri: str
    members: dict[str, dict] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    ambiguous: set[str] = field(default_factory=set)  # names listed twice with different bytes: none used
    # hidden images by member name (each also in ``rejected``): one a source's include / exclude leaves out is no
    # quarantined file of that source
    hidden_images: dict[str, Rejected] = field(default_factory=dict)

    def describe(self, member: str) -> str:
        """Human-readable location of a member, for reports."""
        return f"{self.uri}!{member}" if is_archive(self.uri) else join_uri(self.uri, member)

    def member_of(self, described: str) -> str:
        """The member path ``describe`` gave ``described`` (as given when it is not one of this container's)."""
        prefix = f"{self.uri}!" if is_archive(self.uri) else self.uri.rstrip("/") + "/"
        return described.removeprefix(prefix)

    def add(self, name: str, ref: dict, storage: Storage) -> None:
        """List ``ref`` under ``name`` (normalised, NFC) unless it is hidden, or a second copy of a listed name
        with other bytes (module doc); ``storage`` reads both copies of a name listed twice."""
        if undecodable(name):  # reported when it may be data (as hidden files are); a stray notes file is not
            if name.lower().endswith((*IMAGE_SUFFIXES, ".json", ".xml")):
                self.rejected.append(Rejected(self.describe(name), "its name is not valid UTF-8 (the bytes shown as "
                                                                   "\\x..; written in another encoding, e.g. "
                                                                   "Latin-1): not used; rename it"))
            return
        key = unicodedata.normalize("NFC", posixpath.normpath(name.replace("\\", "/")))
        if any(part.startswith(".") for part in key.split("/")):  # a hidden file, or one in a hidden folder
            if key.lower().endswith(IMAGE_SUFFIXES):
                self.rejected.append(Rejected(self.describe(name), "hidden file (its name or a folder's starts "
                                                                   "with '.'): not used; rename it to use it"))
                self.hidden_images[key] = self.rejected[-1]
            return
        if key in self.ambiguous:
            return
        earlier = self.members.get(key)
        if earlier is None:
            self.members[key] = ref
        elif not _same_bytes(earlier, ref, storage):
            del self.members[key]
            self.ambiguous.add(key)
            self.rejected.append(Rejected(self.describe(key), "listed twice with different contents (a repeated "
                                                              "archive entry, or one name in two Unicode forms): "
                                                              "neither copy is used; keep one"))


def _same_bytes(one: dict, other: dict, storage: Storage) -> bool:
    if one.get("size") is not None and other.get("size") is not None and one["size"] != other["size"]:
        return False
    if "crc" in one and "crc" in other:  # zip entries: their CRC-32s, no reading
        return one["crc"] == other["crc"]
    return read_ref(one, storage) == read_ref(other, storage)


class MemberError(StorageError):
    """An archive member (or listed file) whose bytes cannot be read as stored: corrupt, truncated, encrypted."""


_METADATA_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


def is_os_metadata(name: str) -> bool:
    """Whether a member is operating-system metadata rather than data (module doc): under ``__MACOSX/``, an
    AppleDouble ``._name``, ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``."""
    parts = name.replace("\\", "/").split("/")
    base = parts[-1]
    return "__MACOSX" in parts[:-1] or base.startswith("._") or base.lower() in _METADATA_NAMES


def is_archive(uri: str) -> bool:
    return uri.lower().endswith(ARCHIVE_SUFFIXES)


def unsafe_member_reason(name: str) -> str | None:
    """Why an archive member name is unsafe to use, or None."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path in archive (path traversal)"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "'..' in archive member path (path traversal)"
    return None


def tar_member_problem(member: tarfile.TarInfo, limits: LimitSettings) -> str | None:
    """Why a tar member must not be used (traversal, links, devices, size), or None."""
    reason = unsafe_member_reason(member.name)
    if reason is None and (member.issym() or member.islnk()):
        reason = f"{'symlink' if member.issym() else 'hard link'} in archive (-> {member.linkname})"
    if reason is None and not (member.isfile() or member.isdir()):
        reason = "device, FIFO or other special file in archive"
    if reason is None and member.isfile() and member.size > limits.max_member_mib * MIB:
        reason = f"member of {member.size / MIB:.0f} MiB exceeds data.limits.max_member_mib ({limits.max_member_mib:g})"
    return reason


def open_container(uri: str, limits: LimitSettings, storage: Storage, staging_uri: str | None = None) -> Container:
    """List a folder/prefix or archive. ``staging_uri`` receives the uncompressed copy of
    a .tar.gz (gzip allows no random access; a plain tar does)."""
    lower = uri.lower()
    if lower.endswith(".zip"):
        return _not_empty(_list_zip(uri, limits, storage))
    if lower.endswith((".tar.gz", ".tgz")):
        if staging_uri is None:
            raise ValueError(f"{uri}: a .tar.gz source needs a staging location")
        plain, rejected = _stage_gzip_tar(uri, limits, storage, staging_uri)
        container = _list_tar(plain, limits, storage, shown=uri)  # reports name the user's file, not the copy
        container.rejected[:0] = rejected
        return _not_empty(container)
    if lower.endswith(".tar"):
        return _not_empty(_list_tar(uri, limits, storage))
    return _list_folder(uri, limits, storage)


def _list_folder(uri: str, limits: LimitSettings, storage: Storage) -> Container:
    container = Container(uri)
    base = uri.rstrip("/")
    loc = parse_uri(base)
    if os.path.isfile(loc.path) if not loc.is_s3 else loc.path.strip("/") and storage.exists(base):  # an image
        raise StorageError(f"{uri}: a file, not a dataset: give the folder (or .zip / .tar / .tar.gz / .tgz archive) "
                           "that holds the images and their masks")
    if not loc.is_s3 and not os.path.isdir(loc.path):
        raise ObjectNotFoundError(f"{uri}: no such file or folder")
    prefix = (loc.uri if loc.is_s3 else loc.path).rstrip("/") + "/"
    limit = limits.max_member_mib * MIB
    listed = 0
    for info in storage.list(prefix):
        listed += 1
        relative = info.uri[len(prefix) :]
        if is_os_metadata(relative):
            continue
        if not loc.is_s3 and os.path.islink(info.uri):
            container.rejected.append(Rejected(info.uri, "symlink"))
        elif info.size > limit:
            container.rejected.append(Rejected(info.uri, f"file of {info.size / MIB:.0f} MiB exceeds "
                                                                f"data.limits.max_member_mib ({limits.max_member_mib:g})"))
        else:
            container.add(relative, {"kind": "file", "uri": info.uri, "size": info.size}, storage)
    if not container.members and not container.rejected:
        if loc.is_s3 and not listed:  # S3 has no folders: nothing under the prefix is a mistyped one
            raise ObjectNotFoundError(f"{uri}: no such folder (no object under this prefix)")
        raise StorageError(f"{uri}: folder is empty")
    return container


def safe_members(archive: tarfile.TarFile, limits: LimitSettings, rejected: list[Rejected],
                 describe: Callable[[str], str]) -> Iterator[tarfile.TarInfo]:
    """The members of ``archive`` (read in order, as a stream allows) that are not OS metadata and pass
    ``tar_member_problem``; each unsafe one is added to ``rejected`` under ``describe(name)``."""
    for member in archive:
        if is_os_metadata(member.name):
            continue
        if reason := tar_member_problem(member, limits):
            rejected.append(Rejected(describe(member.name), reason))
            continue
        yield member


def _list_tar(uri: str, limits: LimitSettings, storage: Storage, shown: str | None = None) -> Container:
    """The members of the tar at ``uri`` (their refs read it); ``shown``: the archive reports name (a .tar.gz
    staged as ``uri``)."""
    container = Container(shown or uri)
    total = 0
    with storage.open_read(uri) as stream:
        try:
            archive = tarfile.open(fileobj=stream, mode="r:")
        except tarfile.TarError as exc:
            raise StorageError(f"{uri}: not a readable tar archive ({exc})") from None
        with archive:
            try:
                for member in safe_members(archive, limits, container.rejected, container.describe):
                    if member.isfile():
                        total += member.size
                        if total > limits.max_archive_gib * 1024 * MIB:
                            raise StorageError(f"{uri}: archive contents exceed data.limits.max_archive_gib "
                                               f"({limits.max_archive_gib:g} GiB)")
                        container.add(member.name, {"kind": "range", "uri": uri, "offset": member.offset_data,
                                                    "size": member.size}, storage)
            except (tarfile.TarError, EOFError) as exc:  # cut inside a member's data
                raise StorageError(f"{uri}: corrupt or truncated tar archive ({exc})") from None
            # tarfile ends its listing quietly at a header cut short: a complete archive has its end-of-archive
            # zero blocks after the last member, a truncated one has not (its later members would be lost unsaid)
            if storage.size(uri) - archive.offset < tarfile.BLOCKSIZE:
                raise StorageError(f"{uri}: truncated tar archive (it ends without the end-of-archive blocks after "
                                   f"{len(container.members)} members): copy it again (or, if its writer left the "
                                   "end blocks out, write it again with tar)")
    return container


def _not_empty(container: Container) -> Container:
    """``container``, unless its archive holds nothing (not even a rejected member): said as such, not as a
    dataset layout that cannot be recognised."""
    if not container.members and not container.rejected and not container.ambiguous:
        raise StorageError(f"{container.uri}: the archive is empty")
    return container


class StagingError(RunError):
    """An archive could not be staged (a full or read-only staging disk, a failed upload): the run's storage, not
    the source, is at fault, so the run stops; skipping the source would train on the others alone, a run that
    looks complete."""


def _staging_error(source: str, staged: str, exc: OSError) -> StagingError:
    return StagingError(f"{source}: could not be staged (uncompressed) to {staged}: {exc}; the run's output folder "
                        "needs room for the archive uncompressed, and write access (a full or read-only disk): free "
                        "space there or give the run another output folder")


class _StagingSink:
    """The staging copy's writer, failing with ``StagingError`` (which the archive's read errors are not)."""

    def __init__(self, sink, source: str, staged: str):
        self.sink, self.source, self.staged = sink, source, staged

    def write(self, data) -> int:
        try:
            return self.sink.write(data)
        except OSError as exc:
            raise _staging_error(self.source, self.staged, exc) from None


def _stage_gzip_tar(uri: str, limits: LimitSettings, storage: Storage, staging_uri: str) -> tuple[str, list[Rejected]]:
    """Stream-decompress once into an uncompressed tar of the safe members.

    Raises:
        StorageError: the archive is unreadable, damaged or a decompression bomb (the source's fault).
        StagingError: the copy could not be written or published where it is staged (the run's)."""
    staged = join_uri(staging_uri, os.path.basename(parse_uri(uri).path).rsplit(".t", 1)[0] + ".tar")
    compressed = storage.size(uri)
    ceiling = min(limits.max_archive_gib * 1024 * MIB, compressed * limits.max_compression_ratio)
    rejected: list[Rejected] = []
    written = 0
    with storage.open_read(uri) as source:
        try:
            writing = storage.open_write(staged)
        except OSError as exc:  # a staging folder that cannot be made
            raise _staging_error(uri, staged, exc) from None
        read = False
        try:
            with writing as raw:
                sink = _StagingSink(raw, uri, staged)
                written = _copy_safe_members(uri, source, sink, limits, compressed, ceiling, rejected)
                read = True
        except OSError as exc:
            if read:  # the archive was read whole: publishing the copy failed
                raise _staging_error(uri, staged, exc) from None
            raise
    log_event(log, "data.archive.staged", source=uri, staged=staged, megabytes=round(written / MIB, 1))
    return staged, rejected


def _copy_safe_members(uri: str, source, sink, limits: LimitSettings, compressed: int, ceiling: float,
                       rejected: list[Rejected]) -> int:
    """The safe members of the tar.gz ``source`` into the uncompressed tar ``sink``; the bytes written."""
    written = 0
    # gzip's reader, not tarfile's: it checks the CRC and length at the end (tarfile's "r|gz" does not, so a
    # corrupt but decodable stream would be staged as good)
    unzipped = gzip.GzipFile(fileobj=source, mode="rb")
    try:
        reader = tarfile.open(fileobj=unzipped, mode="r|")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise StorageError(f"{uri}: not a readable tar.gz archive ({exc})") from None
    with reader, tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as writer:
        try:
            for member in safe_members(reader, limits, rejected, lambda name: f"{uri}!{name}"):
                written += member.size
                if written > ceiling:
                    raise StorageError(
                        f"{uri}: decompression bomb: inflates past {ceiling / MIB:.0f} MiB "
                        f"({compressed / MIB:.1f} MiB compressed, max ratio {limits.max_compression_ratio:g})"
                    )
                writer.addfile(member, reader.extractfile(member) if member.isfile() else None)
            unzipped.read()  # to the end of the stream, where gzip checks the CRC of everything staged
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"{uri}: corrupt tar.gz archive ({exc})") from None
    return written


def _list_zip(uri: str, limits: LimitSettings, storage: Storage) -> Container:
    container = Container(uri)
    limit = limits.max_member_mib * MIB
    total = 0
    with storage.open_read(uri) as stream:
        try:
            archive = zipfile.ZipFile(stream)
        except zipfile.BadZipFile as exc:
            raise StorageError(f"{uri}: not a readable zip archive ({exc})") from None
        except UnicodeDecodeError as exc:  # Python reads no entry of a zip whose names lie about their encoding
            raise StorageError(f"{uri}: a member's file name is marked as UTF-8 but is not ({exc.reason} at byte "
                               f"{exc.start} of {exc.object[:60]!r}): the tool that wrote the archive mislabelled "
                               "its names; rename the file and zip it again") from None
        with archive:
            for info in archive.infolist():
                if is_os_metadata(info.filename):
                    continue
                where = f"{uri}!{info.filename}"
                mode = info.external_attr >> 16
                reason = unsafe_member_reason(info.filename)
                if reason is None and stat.S_ISLNK(mode):
                    reason = "symlink in archive"
                if reason is None and info.file_size > limit:
                    reason = f"member of {info.file_size / MIB:.0f} MiB exceeds data.limits.max_member_mib ({limits.max_member_mib:g})"
                if reason is None and info.compress_size and info.file_size / info.compress_size > limits.max_compression_ratio:
                    reason = (
                        f"decompression bomb: compression ratio {info.file_size / info.compress_size:.0f} "
                        f"exceeds data.limits.max_compression_ratio ({limits.max_compression_ratio:g})"
                    )
                if reason:
                    container.rejected.append(Rejected(where, reason))
                    continue
                if info.is_dir():
                    continue
                total += info.file_size
                if total > limits.max_archive_gib * 1024 * MIB:
                    raise StorageError(f"{uri}: archive contents exceed data.limits.max_archive_gib "
                                           f"({limits.max_archive_gib:g} GiB)")
                # PowerShell's Compress-Archive writes '\\' separators (checked safe above)
                container.add(info.filename, {"kind": "zip", "uri": uri, "member": info.filename,
                                              "size": info.file_size, "crc": info.CRC}, storage)
    return container


def read_ref(ref: dict, storage: Storage) -> bytes:
    """The bytes of one listed member.

    Raises MemberError naming the member: a zip member failing its CRC, corrupt compressed data, an encrypted or
    unsupported member, a truncated tar member, more bytes than declared; StorageError: the file is unreadable.
    """
    kind = ref["kind"]
    if kind == "file":
        return storage.read_bytes(ref["uri"])
    if kind == "range":
        with storage.open_read(ref["uri"]) as stream:
            stream.seek(ref["offset"])
            data = stream.read(ref["size"])
        if len(data) != ref["size"]:
            raise MemberError(f"{ref['uri']}: archive member truncated ({len(data)} of {ref['size']} bytes)")
        return data
    if kind == "zip":
        where = f"{ref['uri']}!{ref['member']}"
        with storage.open_read(ref["uri"]) as stream:
            try:
                with zipfile.ZipFile(stream) as archive, archive.open(ref["member"]) as member:
                    data = member.read(ref["size"] + 1)  # never inflate more than declared; CRC checked at the end
            # Bad CRC-32 / a cut archive (BadZipFile), broken deflate / bzip2 / lzma data (zlib.error, OSError,
            # EOFError, LZMAError), encrypted (RuntimeError) or unsupported compression (NotImplementedError)
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, RuntimeError, NotImplementedError,
                    ValueError, OSError) as exc:
                if isinstance(exc, StorageError):
                    raise
                raise MemberError(f"{where}: corrupt archive member ({type(exc).__name__}: {exc})") from None
        if len(data) != ref["size"]:
            raise MemberError(f"{where}: inflates to more than its declared size")
        return data
    raise ValueError(f"unknown ref kind {kind!r}")


def iter_members(container: Container, prefix: str = "") -> Iterator[str]:
    for name in sorted(container.members):
        if name.startswith(prefix):
            yield name
