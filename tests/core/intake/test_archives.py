import io
import tarfile
import zipfile

import pytest

from squeezer.core.errors import ArchiveError
from squeezer.core.intake.archives import ArchiveLimits, safe_extract


def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_regular_archive_extracts(tmp_path):
    out = safe_extract(_zip(tmp_path / "a.zip", {"d/a.txt": b"x", "b.txt": b"y"}), tmp_path / "out")
    assert (out / "d" / "a.txt").read_bytes() == b"x"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "a/../../escape.txt", "C:/win.txt"])
def test_traversal_is_refused(tmp_path, name):
    with pytest.raises(ArchiveError, match="outside"):
        safe_extract(_zip(tmp_path / "a.zip", {name: b"x"}), tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_zip_bomb_is_refused_by_ratio(tmp_path):
    with pytest.raises(ArchiveError, match="bomb"):
        safe_extract(_zip(tmp_path / "bomb.zip", {"zeros": b"\0" * (50 << 20)}), tmp_path / "out")


def test_member_count_limit(tmp_path):
    archive = _zip(tmp_path / "many.zip", {f"{i}.txt": b"" for i in range(20)})
    with pytest.raises(ArchiveError, match="members"):
        safe_extract(archive, tmp_path / "out", ArchiveLimits(max_members=10))


def test_tar_links_are_refused(tmp_path):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(ArchiveError, match="link"):
        safe_extract(archive, tmp_path / "out")


def test_tar_that_lies_about_sizes_is_damaged_not_a_crash(tmp_path):
    archive = tmp_path / "short.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("file")
        info.size = 10
        tf.addfile(info, io.BytesIO(b"0123456789"))
    archive.write_bytes(archive.read_bytes()[:600])
    with pytest.raises(ArchiveError):
        safe_extract(archive, tmp_path / "out")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"plain text")
    with pytest.raises(ArchiveError, match="neither"):
        safe_extract(tmp_path / "x.zip", tmp_path / "out")
