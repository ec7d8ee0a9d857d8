"""Archives whose headers declare more than the budget are refused while their headers are read, before anything
they declare is allocated: the peak memory of the attempt (measured in a sandbox child) stays small."""

import gzip
import struct
import tarfile
import zipfile

import pytest

from squeezer.core.errors import ArchiveError
from squeezer.core.intake.archives import ArchiveLimits, safe_extract
from squeezer.core.sandbox import Sandbox, SandboxLimits

TARGETS = "tests.core.sandbox_targets"
PEAK_BOUND = 200 << 20  # the child imports little; a parsed bomb would take hundreds of MiB more


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(
        SandboxLimits(memory_bytes=4 << 30, cpu_s=60, wall_s=60), preload=("squeezer.core.intake.archives", TARGETS)
    )
    yield box
    box.close()


def tar_header(name: bytes, size: int, kind: bytes) -> bytes:
    """One ustar header block, its checksum filled in."""
    header = bytearray(512)
    header[0 : len(name)] = name
    header[100:108] = b"0000644\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[156:157] = kind
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def tar_gz_with_header(path, kind: bytes, body_bytes: int):
    """A .tar.gz whose first member is a `kind` header (pax "x", GNU long name "L") of body_bytes: tiny on disk."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(tar_header(b"././@header", body_bytes, kind))
        chunk = b"a" * (1 << 20)
        for _ in range(body_bytes // len(chunk)):
            out.write(chunk)
        out.write(tar_header(b"member", 0, b"0") + b"\0" * 1024)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", [b"x", b"g", b"L", b"K"])
def test_a_huge_extended_header_is_refused_before_it_is_read(kind, tmp_path, sandbox):
    archive = tar_gz_with_header(tmp_path / "header.tar.gz", kind, 256 << 20)
    assert archive.stat().st_size < 2 << 20
    outcome = sandbox.run_outcome(f"{TARGETS}:extract", {"archive": str(archive), "dest": str(tmp_path / "out")})
    assert outcome.error["code"] == "invalid_archive", outcome
    assert (
        "extended header" in outcome.error["message"]
        and "SQUEEZER_MAX_ARCHIVE_HEADER_BYTES" in outcome.error["message"]
    )
    assert outcome.peak_rss_bytes < PEAK_BOUND


def test_a_normal_long_name_passes(tmp_path):
    archive = tmp_path / "long.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("d/" + "n" * 200)
        info.pax_headers = {"comment": "c" * 1000}
        tf.addfile(info, fileobj=None)
    assert (safe_extract(archive, tmp_path / "out") / "d" / ("n" * 200)).exists()


def test_tar_member_count_is_checked_while_iterating(tmp_path):
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as tf:
        for index in range(50):
            tf.addfile(tarfile.TarInfo(f"f{index}"))
    with pytest.raises(ArchiveError, match="50 members|11 members"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_members=10))


def test_tar_declared_sizes_are_summed_before_any_byte_is_written(tmp_path):
    archive = tmp_path / "lies.tar"
    archive.write_bytes(tar_header(b"a", 8 << 40, b"0") + b"\0" * 1024)  # declares 8 TiB, holds nothing
    with pytest.raises(ArchiveError, match="would unpack"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def zip_with_entries(path, entries: int):
    """A central directory of `entries` records (no file data): what ZipFile would turn into one object each."""
    record = struct.pack("<4s6H3L5H2L", b"PK\1\2", 20, 20, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0) + b"name"
    directory = record * entries
    end = struct.pack("<4s4H2LH", b"PK\5\6", 0, 0, entries & 0xFFFF, entries & 0xFFFF, len(directory), 0, 0)
    if entries > 0xFFFF:  # zip64 end record and locator for the real count
        zip64_end = struct.pack("<4sQ2H2L4Q", b"PK\6\6", 44, 45, 45, 0, 0, entries, entries, len(directory), 0)
        locator = struct.pack("<4sLQL", b"PK\6\7", 0, len(directory), 1)
        end = zip64_end + locator + struct.pack("<4s4H2LH", b"PK\5\6", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(directory + end)
    return path


@pytest.mark.slow
def test_zip_entry_count_is_read_before_the_directory_is_parsed(tmp_path, sandbox):
    archive = zip_with_entries(tmp_path / "entries.zip", 1_000_000)
    assert len(zipfile.ZipFile(archive).infolist()) == 1_000_000  # a real directory zipfile would parse
    outcome = sandbox.run_outcome(f"{TARGETS}:extract", {"archive": str(archive), "dest": str(tmp_path / "out")})
    assert outcome.error["code"] == "invalid_archive", outcome
    assert "1000000 members" in outcome.error["message"] and "SQUEEZER_MAX_ARCHIVE_MEMBERS" in outcome.error["message"]
    assert outcome.peak_rss_bytes < PEAK_BOUND


def test_zip_directory_larger_than_its_entries_is_refused(tmp_path):
    archive = tmp_path / "padded.zip"
    directory = b"\0" * (1 << 20)
    archive.write_bytes(directory + struct.pack("<4s4H2LH", b"PK\5\6", 0, 0, 1, 1, len(directory), 0, 0))
    with pytest.raises(ArchiveError, match="central directory"):
        safe_extract(archive, tmp_path / "out")
