import hashlib
import os
import tracemalloc

import pytest
from sqlalchemy import func, select

from store.artifacts import UploadTooLarge, export_artifact_to, store_artifact, sweep_stale_uploads
from store.blobs import DatabaseBlobStore, LocalBlobStore
from store.models import Artifact, BlobChunk


def pieces(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def counts(sessions) -> tuple[int, int]:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Artifact)), session.scalar(
            select(func.count()).select_from(BlobChunk)
        )


def test_database_blob_round_trip_in_chunks(pg_sessions, tmp_path):
    blobs = DatabaseBlobStore(pg_sessions, chunk_bytes=1000)
    data = os.urandom(3500)
    artifact = store_artifact(
        pg_sessions,
        blobs,
        tenant="default",
        kind="model",
        filename="m.onnx",
        content_type="application/octet-stream",
        chunks=pieces(data, 333),
        max_bytes=10_000,
    )
    assert (artifact.state, artifact.size_bytes, artifact.sha256) == ("ready", 3500, hashlib.sha256(data).hexdigest())
    assert [len(chunk) for chunk in blobs.iter_chunks(artifact.id)] == [1000, 1000, 1000, 500]
    assert export_artifact_to(pg_sessions, blobs, artifact.id, tmp_path / "out.bin").read_bytes() == data
    assert counts(pg_sessions) == (1, 4)


@pytest.mark.parametrize("failure", ["too_large", "client_gone"])
def test_a_failed_upload_leaves_nothing(pg_sessions, failure):
    blobs = DatabaseBlobStore(pg_sessions, chunk_bytes=100)

    def chunks():
        yield from pieces(os.urandom(2500), 100)  # 25 chunks: several commit batches already in the table
        if failure == "client_gone":
            raise ConnectionResetError("client went away")
        yield b"x"

    with pytest.raises(UploadTooLarge if failure == "too_large" else ConnectionResetError):
        store_artifact(
            pg_sessions,
            blobs,
            tenant="default",
            kind="dataset",
            filename="d.npz",
            content_type="application/octet-stream",
            chunks=chunks(),
            max_bytes=2500,
        )
    assert counts(pg_sessions) == (0, 0)


def test_sweeper_removes_uploads_abandoned_by_a_crashed_api(pg_sessions):
    blobs = DatabaseBlobStore(pg_sessions, chunk_bytes=100)
    kept = store_artifact(
        pg_sessions,
        blobs,
        tenant="default",
        kind="model",
        filename="a",
        content_type="x",
        chunks=[b"a" * 250],
        max_bytes=1000,
    )
    with pg_sessions() as session:
        abandoned = Artifact(tenant="default", kind="model", filename="b", state="uploading")
        session.add(abandoned)
        session.commit()
    writer = blobs.open_writer(abandoned.id)
    writer.write(b"b" * 1600)  # two committed batches, then the process "dies": no commit, no abort
    assert counts(pg_sessions)[1] == 3 + 16
    assert sweep_stale_uploads(pg_sessions, blobs, older_than_s=3600) == []
    assert sweep_stale_uploads(pg_sessions, blobs, older_than_s=0) == [abandoned.id]
    assert counts(pg_sessions) == (1, 3)
    assert b"".join(blobs.iter_chunks(kept.id)) == b"a" * 250


def test_memory_stays_flat_while_a_large_file_streams_through(pg_sessions, tmp_path):
    blobs = DatabaseBlobStore(pg_sessions, chunk_bytes=1024 * 1024)
    block = os.urandom(256 * 1024)
    total = 48 * 1024 * 1024
    tracemalloc.start()
    artifact = store_artifact(
        pg_sessions,
        blobs,
        tenant="default",
        kind="dataset",
        filename="big.bin",
        content_type="x",
        chunks=(block for _ in range(total // len(block))),
        max_bytes=total,
    )
    export_artifact_to(pg_sessions, blobs, artifact.id, tmp_path / "big.bin")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert artifact.size_bytes == total == (tmp_path / "big.bin").stat().st_size
    assert peak < 8 * 1024 * 1024, f"peak Python allocations {peak / 2**20:.1f} MiB for a {total / 2**20:.0f} MiB file"


def test_local_blob_store_round_trip_and_abort(sqlite_sessions, tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs", chunk_bytes=1000)
    data = os.urandom(2500)
    artifact = store_artifact(
        sqlite_sessions,
        blobs,
        tenant="default",
        kind="model",
        filename="m",
        content_type="x",
        chunks=pieces(data, 700),
        max_bytes=10_000,
    )
    assert [len(chunk) for chunk in blobs.iter_chunks(artifact.id)] == [1000, 1000, 500]
    with pytest.raises(UploadTooLarge):
        store_artifact(
            sqlite_sessions,
            blobs,
            tenant="default",
            kind="model",
            filename="m",
            content_type="x",
            chunks=pieces(data, 700),
            max_bytes=2000,
        )
    assert sorted(path.name for path in (tmp_path / "blobs").iterdir()) == [artifact.id]
    assert counts(sqlite_sessions) == (1, 0)
    with pytest.raises(ValueError):
        blobs.open_writer("../escape")
