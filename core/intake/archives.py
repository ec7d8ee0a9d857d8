"""Unpacking untrusted .zip and .tar archives without letting them escape, explode or link elsewhere.

Limits are checked against the archive's own directory first and against the bytes actually written second, so a
header that lies about sizes cannot get past them. Nothing an archive declares is allocated before it is bounded: a
zip's entry count is read from its end record before its central directory is parsed, a tar's members are counted
and summed as they are read, and pax and GNU long-name headers (which tarfile reads whole) are capped.
"""

import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from squeezer.core import limits as intake_limits
from squeezer.core.errors import ArchiveError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_COPY_CHUNK = 1 << 20
MAX_NAME_BYTES = 255  # per path component, as file systems allow: longer names are refused by name, not by errno


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 200_000
    max_total_bytes: int = 16 << 30
    max_ratio: float = 200.0  # uncompressed / compressed, over the whole archive
    max_header_bytes: int = 64 << 10  # one tar pax or GNU long-name header
    # Bytes of a zip's central directory per entry: a fixed 46-byte record plus a name, extra field and comment.
    max_directory_bytes_per_member: int = 46 + 3 * 1024

    @classmethod
    def from_intake(cls) -> "ArchiveLimits":
        """The service's configured budgets (core.limits), the ratio as default."""
        current = intake_limits.current()
        return cls(
            current.max_archive_members, current.max_archive_bytes, max_header_bytes=current.max_archive_header_bytes
        )


def is_archive(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in ARCHIVE_SUFFIXES)


def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"archive member {name!r} points outside the archive")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in path.parts):
        raise ArchiveError(f"archive member {name[:80]!r}... has a name longer than {MAX_NAME_BYTES} bytes")
    return path


class _Budget:
    def __init__(self, limits: ArchiveLimits, archive_bytes: int):
        self.limits = limits
        self.allowed = min(limits.max_total_bytes, max(archive_bytes, 1) * limits.max_ratio + (1 << 20))
        self.written = 0

    def check_declared(self, members: int, declared: int) -> None:
        if members > self.limits.max_members:
            raise ArchiveError(
                f"archive holds {members} members; the limit is {self.limits.max_members} "
                f"(raise {intake_limits.SETTING_NAMES['max_archive_members']})"
            )
        if declared > self.allowed:
            raise ArchiveError(
                f"archive would unpack to {declared} bytes; the limit is {int(self.allowed)} (zip bomb?)"
            )

    def copy(self, source, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as out:
            while chunk := source.read(_COPY_CHUNK):
                self.written += len(chunk)
                if self.written > self.allowed:
                    raise ArchiveError(f"archive unpacks to more than {int(self.allowed)} bytes (zip bomb?)")
                out.write(chunk)


def safe_extract(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> Path:
    """Extracts regular files and directories only; links, devices, traversal and bombs raise ArchiveError."""
    archive, dest = Path(archive), Path(dest)
    limits = limits or ArchiveLimits.from_intake()
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(limits, archive.stat().st_size)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, budget)
        elif _is_tar(archive, budget):
            _extract_tar(archive, dest, budget)
        else:
            raise ArchiveError(f"{archive.name} is neither a zip nor a tar archive")
    except ArchiveError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        EOFError,
        OSError,
        NotImplementedError,
        RuntimeError,
        ValueError,
    ) as error:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"{archive.name} is damaged or unreadable: {error}") from None
    return dest


def _check_zip_directory(archive: Path, budget: _Budget) -> None:
    """The end record's entry count and directory size, before zipfile builds one object per entry."""
    with archive.open("rb") as file:
        end = zipfile._EndRecData(file)  # type: ignore[attr-defined]  # zipfile's own parser; None: no end record
    if end is None:
        raise ArchiveError(f"{archive.name} is damaged or unreadable: no zip end record")
    entries, directory_bytes = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    budget.check_declared(entries, 0)
    if directory_bytes > max(entries, 1) * budget.limits.max_directory_bytes_per_member:
        raise ArchiveError(f"{archive.name}: a central directory of {directory_bytes} bytes for {entries} entries")


def read_zip_directory(archive: Path, limits: ArchiveLimits | None = None) -> list[zipfile.ZipInfo]:
    """A zip's entries, its entry count bounded before zipfile parses them and their declared sizes after."""
    budget = _Budget(limits or ArchiveLimits.from_intake(), Path(archive).stat().st_size)
    _check_zip_directory(Path(archive), budget)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
    budget.check_declared(len(infos), sum(info.file_size for info in infos))
    return infos


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    _check_zip_directory(archive, budget)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        budget.check_declared(len(infos), sum(info.file_size for info in infos))
        for info in infos:
            relative = _safe_relative(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"archive member {info.filename!r} is a symbolic link")
            if info.is_dir():
                (dest / relative).mkdir(parents=True, exist_ok=True)
                continue
            if info.flag_bits & 0x1:
                raise ArchiveError(f"archive member {info.filename!r} is encrypted")
            with zf.open(info) as source:
                budget.copy(source, dest / relative)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses a pax or GNU long-name header past the cap before tarfile reads its whole body into memory."""

    max_header_bytes = ArchiveLimits.max_header_bytes

    def _proc_member(self, tarfile_):
        if self.type in _METADATA_TYPES and self.size > self.max_header_bytes:
            raise ArchiveError(
                f"archive has a {self.size}-byte extended header; the limit is {self.max_header_bytes} "
                f"(raise {intake_limits.SETTING_NAMES['max_archive_header_bytes']})"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc]  # tarfile's private per-member hook


_METADATA_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


def _open_tar(archive: Path, budget: _Budget) -> tarfile.TarFile:
    bounded = type("TarInfo", (_BoundedTarInfo,), {"max_header_bytes": budget.limits.max_header_bytes})
    return tarfile.open(archive, tarinfo=bounded)


def _is_tar(archive: Path, budget: _Budget) -> bool:
    """tarfile.is_tarfile, but reading the first header with the caps (is_tarfile would read any pax body whole)."""
    try:
        _open_tar(archive, budget).close()
    except tarfile.TarError:
        return False
    return True


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    with _open_tar(archive, budget) as tf:
        members, declared = [], 0
        for member in tf:
            members.append(member)
            declared += member.size
            budget.check_declared(len(members), declared)
        for member in members:
            relative = _safe_relative(member.name)
            if member.isdir():
                (dest / relative).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                with tf.extractfile(member) as source:  # type: ignore[union-attr]  # None only for non-files
                    budget.copy(source, dest / relative)
            else:
                raise ArchiveError(f"archive member {member.name!r} is a link or special file")
