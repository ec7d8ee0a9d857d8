"""The blob-store contract, on every backend: database chunks (PostgreSQL), local files (the embedded mode, SQLite)
and S3 (a real SeaweedFS server on loopback). `Backend.stored` looks at what each one physically holds, in-progress
uploads included, so "nothing is left" is checked where the bytes would be."""

import hashlib
import os
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from squeezer.store.artifacts import (
    QuotaExceeded,
    UploadTooLarge,
    delete_artifact,
    export_artifact_to,
    store_artifact,
    sweep_orphaned_results,
    sweep_stale_uploads,
)
from squeezer.store.blobs import BlobStore, DatabaseBlobStore, LocalBlobStore
from squeezer.store.models import Artifact, ArtifactKind, BlobChunk, utcnow
from squeezer.store.s3_blobs import S3BlobStore, s3_client
from squeezer.store.settings import Settings

CHUNK = 64 * 1024
PART = 5 * 1024 * 1024  # S3's smallest part: an upload past it is a multipart upload
BACKENDS = ["database", "local", "s3"]


@dataclass
class Backend:
    name: str
    sessions: sessionmaker[Session]
    blobs: BlobStore
    # The artifact ids whose bytes (or any part of them) the storage holds.
    stored: Callable[[], set[str]]

    def store(self, data: bytes, piece: int = 50_000, kind: str = "model", **options) -> Artifact:
        return store_artifact(
            self.sessions,
            self.blobs,
            tenant="default",
            kind=kind,
            filename="m.onnx",
            content_type="application/octet-stream",
            chunks=pieces(data, piece),
            **{"max_bytes": len(data), **options},
        )


def pieces(data: bytes, size: int):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def database_backend(sessions, chunk_bytes: int) -> Backend:
    def stored() -> set[str]:
        with sessions() as session:
            return set(session.scalars(select(BlobChunk.artifact_id).distinct()))

    return Backend("database", sessions, DatabaseBlobStore(sessions, chunk_bytes=chunk_bytes), stored)


def local_backend(sessions, root: Path, chunk_bytes: int) -> Backend:
    def stored() -> set[str]:
        return {path.name.removesuffix(".part") for path in root.iterdir()}

    return Backend("local", sessions, LocalBlobStore(root, chunk_bytes=chunk_bytes), stored)


def s3_backend(sessions, fields: dict[str, str], chunk_bytes: int) -> Backend:
    settings = Settings(**fields, storage_chunk_bytes=chunk_bytes, s3_part_bytes=PART)
    blobs = S3BlobStore.from_settings(settings)

    def stored() -> set[str]:
        objects = blobs.client.list_objects_v2(Bucket=blobs.bucket).get("Contents", [])
        uploads = blobs.client.list_multipart_uploads(Bucket=blobs.bucket).get("Uploads", [])
        return {entry["Key"].removeprefix("blobs/") for entry in objects + uploads}

    return Backend("s3", sessions, blobs, stored)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Backend:
    if request.param == "database":
        return database_backend(request.getfixturevalue("pg_sessions"), CHUNK)
    if request.param == "local":
        return local_backend(request.getfixturevalue("sqlite_sessions"), tmp_path / "blobs", CHUNK)
    return s3_backend(request.getfixturevalue("pg_sessions"), request.getfixturevalue("s3_settings"), CHUNK)


def rows(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Artifact))


def test_round_trip_in_chunks(backend, tmp_path):
    data = os.urandom(3 * CHUNK + 500)
    artifact = backend.store(data, piece=333)
    assert (artifact.state, artifact.size_bytes, artifact.sha256) == (
        "ready",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    chunks = list(backend.blobs.iter_chunks(artifact.id))
    assert b"".join(chunks) == data and max(map(len, chunks)) <= CHUNK
    assert export_artifact_to(backend.sessions, backend.blobs, artifact.id, tmp_path / "out.bin").read_bytes() == data
    assert backend.stored() == {artifact.id}


def test_a_multipart_sized_upload_round_trips(backend):
    data = os.urandom(2 * PART + 1234)
    artifact = backend.store(data, piece=CHUNK)
    assert b"".join(backend.blobs.iter_chunks(artifact.id)) == data


@pytest.mark.parametrize(
    ("start", "stop"),
    [(0, 1), (0, None), (10, 20), (CHUNK - 1, CHUNK + 1), (CHUNK, 2 * CHUNK), (2 * CHUNK + 7, None), (5, 5)],
)
def test_a_byte_range_reads_exactly_those_bytes(backend, start, stop):
    data = os.urandom(2 * CHUNK + 100)
    artifact = backend.store(data)
    assert b"".join(backend.blobs.iter_chunks(artifact.id, start, stop)) == data[start:stop]


def test_a_missing_blob_reads_as_nothing(backend):
    assert b"".join(backend.blobs.iter_chunks("art_missing")) == b""
    assert b"".join(backend.blobs.iter_chunks("art_missing", 10, 20)) == b""


@pytest.mark.parametrize("failure", ["too_large", "client_gone"])
def test_a_failed_upload_leaves_nothing(backend, failure):
    """Past S3's part size, so parts are already up (and database chunks committed) when it fails."""

    def chunks():
        yield from pieces(os.urandom(PART + CHUNK), CHUNK)
        if failure == "client_gone":
            raise ConnectionResetError("client went away")
        yield b"x"

    with pytest.raises(UploadTooLarge if failure == "too_large" else ConnectionResetError):
        store_artifact(
            backend.sessions,
            backend.blobs,
            tenant="default",
            kind="dataset",
            filename="d.npz",
            content_type="application/octet-stream",
            chunks=chunks(),
            max_bytes=PART + CHUNK,
        )
    assert rows(backend.sessions) == 0
    assert backend.stored() == set()


def test_the_sweep_removes_uploads_abandoned_by_a_crashed_api(backend):
    kept = backend.store(b"a" * 250)
    with backend.sessions() as session:
        abandoned = Artifact(tenant="default", kind="model", filename="b", state="uploading")
        session.add(abandoned)
        session.commit()
    writer = backend.blobs.open_writer(abandoned.id)
    writer.write(os.urandom(PART + 100))  # parts up, then the process "dies": no commit, no abort
    assert backend.stored() == {kept.id, abandoned.id}
    assert sweep_stale_uploads(backend.sessions, backend.blobs, older_than_s=3600) == []
    assert sweep_stale_uploads(backend.sessions, backend.blobs, older_than_s=0) == [abandoned.id]
    assert backend.stored() == {kept.id}
    assert rows(backend.sessions) == 1
    assert b"".join(backend.blobs.iter_chunks(kept.id)) == b"a" * 250


def test_the_sweep_collects_results_no_job_points_at(backend):
    """A worker died between storing a result and finishing its job: the orphan sweep removes row and bytes."""
    upload = backend.store(b"u" * 100)
    lost = backend.store(b"r" * 100, kind=ArtifactKind.RESULT)
    assert sweep_orphaned_results(backend.sessions, backend.blobs, older_than_s=3600) == []  # a worker may be finishing
    with backend.sessions() as session:
        session.execute(update(Artifact).values(created_at=utcnow() - timedelta(hours=2)))
        session.commit()
    assert sweep_orphaned_results(backend.sessions, backend.blobs, older_than_s=3600) == [lost.id]
    assert backend.stored() == {upload.id}


def test_deleting_an_artifact_removes_its_bytes(backend):
    kept, deleted = backend.store(b"k" * 100), backend.store(b"d" * 100)
    delete_artifact(backend.sessions, backend.blobs, deleted.id)
    assert backend.stored() == {kept.id}
    assert b"".join(backend.blobs.iter_chunks(deleted.id)) == b""


def test_the_storage_quota_counts_the_same_on_every_backend(backend):
    backend.store(b"x" * 600, reserve_bytes=600, quota_bytes=1000)
    with pytest.raises(QuotaExceeded) as refused:
        backend.store(b"y" * 600, reserve_bytes=600, quota_bytes=1000)
    assert refused.value.left == 400
    assert rows(backend.sessions) == 1 and len(backend.stored()) == 1


def test_the_storage_answers_readiness(backend):
    assert backend.blobs.is_ready()


def test_an_s3_store_without_its_bucket_is_not_ready(s3_settings):
    assert not S3BlobStore.from_settings(Settings(**{**s3_settings, "s3_bucket": "no-such-bucket"})).is_ready()


def test_an_s3_store_with_a_wrong_secret_is_refused(s3_settings):
    """The test server checks signatures: a store with a wrong secret can neither write nor read."""
    wrong = S3BlobStore.from_settings(Settings(**{**s3_settings, "s3_secret_access_key": "wrong"}))
    assert not wrong.is_ready()
    writer = wrong.open_writer("art_x")
    writer.write(b"bytes")
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|403"):
        writer.commit()


@pytest.mark.parametrize("backend_name", ["local", "s3"])
def test_object_names_are_checked_artifact_ids(backend_name, tmp_path, request):
    if backend_name == "local":
        blobs: BlobStore = LocalBlobStore(tmp_path / "blobs")
    else:
        fields = request.getfixturevalue("s3_settings")
        blobs = S3BlobStore(s3_client(Settings(**fields), fields["s3_endpoint_url"]), fields["s3_bucket"])
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(ValueError):
            blobs.open_writer(bad)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_memory_stays_flat_while_a_large_file_streams_through(backend_name, request, tmp_path):
    if backend_name == "database":
        backend = database_backend(request.getfixturevalue("pg_sessions"), 1 << 20)
    elif backend_name == "local":
        backend = local_backend(request.getfixturevalue("sqlite_sessions"), tmp_path / "blobs", 1 << 20)
    else:
        backend = s3_backend(request.getfixturevalue("pg_sessions"), request.getfixturevalue("s3_settings"), 1 << 20)
    block = os.urandom(256 * 1024)
    total = 48 * 1024 * 1024
    tracemalloc.start()
    artifact = store_artifact(
        backend.sessions,
        backend.blobs,
        tenant="default",
        kind="dataset",
        filename="big.bin",
        content_type="x",
        chunks=(block for _ in range(total // len(block))),
        max_bytes=total,
    )
    export_artifact_to(backend.sessions, backend.blobs, artifact.id, tmp_path / "big.bin")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert artifact.size_bytes == total == (tmp_path / "big.bin").stat().st_size
    # A database chunk or a file read is 1 MiB, an S3 part 5 MiB (handed to boto3 without a copy).
    assert peak < 8 << 20, f"peak Python allocations {peak / 2**20:.1f} MiB for a {total / 2**20:.0f} MiB file"


def test_database_chunks_are_rows_of_the_written_size(pg_sessions):
    """A range read finds its first chunk from the size the blob was written with, not the current setting."""
    data = os.urandom(3500)
    written = database_backend(pg_sessions, 1000).store(data, piece=333)
    with pg_sessions() as session:
        sizes = list(
            session.scalars(
                select(func.length(BlobChunk.data)).where(BlobChunk.artifact_id == written.id).order_by(BlobChunk.seq)
            )
        )
    assert sizes == [1000, 1000, 1000, 500]
    assert (
        b"".join(DatabaseBlobStore(pg_sessions, chunk_bytes=64).iter_chunks(written.id, 1999, 2001)) == data[1999:2001]
    )
