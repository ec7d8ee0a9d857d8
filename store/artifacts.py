"""Artifact rows and their bytes, kept consistent: a row is "ready" only once every byte is stored, and a failed or
abandoned upload leaves nothing behind."""

import contextlib
import hashlib
import threading
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from squeezer.store.blobs import BlobStore
from squeezer.store.models import Artifact, ArtifactKind, Job, JobResult, utcnow
from squeezer.store.settings import CHUNK_BYTES
from squeezer.store.statuses import FINAL_STATUSES

READ_CHUNK_BYTES = CHUNK_BYTES


class UploadTooLarge(Exception):
    """The upload passed `max_bytes`; nothing of it was kept."""

    def __init__(self, max_bytes: int):
        super().__init__(f"upload exceeds the limit of {max_bytes} bytes")
        self.max_bytes = max_bytes


class QuotaExceeded(Exception):
    """Reserving the upload's bytes would pass the tenant's storage quota; nothing was stored."""

    def __init__(self, left: int):
        super().__init__(f"the storage quota leaves {left} bytes")
        self.left = left


class ArtifactCorrupt(Exception):
    """Stored bytes do not match the artifact's recorded size or sha256."""


def store_artifact(
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    *,
    tenant: str,
    kind: str,
    filename: str,
    content_type: str,
    chunks: Iterable[bytes],
    max_bytes: int,
    reserve_bytes: int = 0,
    quota_bytes: int | None = None,
) -> Artifact:
    """Streams `chunks` into storage, counting and hashing as it goes. Raises UploadTooLarge past `max_bytes`;
    on that or any other failure the row and every stored byte are removed before the error propagates.
    `reserve_bytes` are counted against `quota_bytes` (QuotaExceeded, nothing stored) in the same transaction that
    inserts the row, under a per-tenant lock: concurrent uploads cannot all pass a quota that fits only one. The
    reservation is the row's size until the bytes are stored, and goes with the row on failure."""
    with session_factory() as session, quota_lock(session, tenant, quota_bytes):
        if quota_bytes is not None:
            left = quota_bytes - stored_bytes(session, tenant)
            if reserve_bytes > left:
                raise QuotaExceeded(left)
        artifact = Artifact(
            tenant=tenant,
            kind=kind,
            filename=filename,
            content_type=content_type,
            state="uploading",
            size_bytes=reserve_bytes,
        )
        session.add(artifact)
        session.commit()
    writer = blobs.open_writer(artifact.id)
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(max_bytes)
            digest.update(chunk)
            writer.write(chunk)
        writer.commit()
    except BaseException:
        writer.abort()
        _delete_row(session_factory, artifact.id)
        raise
    with session_factory() as session:
        session.execute(
            update(Artifact)
            .where(Artifact.id == artifact.id)
            .values(state="ready", size_bytes=size, sha256=digest.hexdigest())
        )
        session.commit()
        return session.get_one(Artifact, artifact.id)


def store_file(
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    path: Path,
    *,
    tenant: str,
    kind: str,
    filename: str | None = None,
    content_type: str = "application/octet-stream",
) -> Artifact:
    """Stores a local file (worker results, checkpoints) without reading it whole."""
    return store_artifact(
        session_factory,
        blobs,
        tenant=tenant,
        kind=kind,
        filename=filename or path.name,
        content_type=content_type,
        chunks=read_file_chunks(path),
        max_bytes=path.stat().st_size,
    )


def read_file_chunks(path: Path, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            yield chunk


def get_ready_artifact(session: Session, artifact_id: str, tenant: str | None = None) -> Artifact | None:
    """The artifact when it exists, is fully stored and (if given) belongs to `tenant`."""
    query = select(Artifact).where(Artifact.id == artifact_id, Artifact.state == "ready")
    if tenant is not None:
        query = query.where(Artifact.tenant == tenant)
    return session.scalar(query)


def set_artifact_kind(session_factory: sessionmaker[Session], artifact_id: str, kind: str) -> None:
    """Relabels an upload whose `kind` form field arrived after its bytes."""
    with session_factory() as session:
        session.execute(update(Artifact).where(Artifact.id == artifact_id).values(kind=kind))
        session.commit()


_EMBEDDED_QUOTA_LOCK = threading.Lock()


@contextlib.contextmanager
def quota_lock(session: Session, tenant: str, quota_bytes: int | None) -> Iterator[None]:
    """Serialises one tenant's quota reservations until the session's transaction commits: a PostgreSQL
    transaction-level advisory lock across API processes; a process lock for SQLite (the embedded mode)."""
    if quota_bytes is None:
        yield
    elif session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"quota:{tenant}"})
        yield
    else:
        with _EMBEDDED_QUOTA_LOCK:
            yield


def stored_bytes(session: Session, tenant: str) -> int:
    """The sizes of all the tenant's artifacts (uploads, results and checkpoints) and job specs, as storage quotas
    count them."""
    artifacts = select(func.coalesce(func.sum(Artifact.size_bytes), 0)).where(Artifact.tenant == tenant)
    specs = select(func.coalesce(func.sum(Job.spec_bytes), 0)).where(Job.tenant == tenant)
    return session.execute(artifacts).scalar_one() + session.execute(specs).scalar_one()


def export_artifact_to(session_factory: sessionmaker[Session], blobs: BlobStore, artifact_id: str, path: Path) -> Path:
    """Writes a ready artifact's bytes to `path`, verifying size and sha256 (a worker must never run on a short
    file)."""
    with session_factory() as session:
        artifact = get_ready_artifact(session, artifact_id)
    if artifact is None:
        raise LookupError(f"artifact {artifact_id} does not exist or is not ready")
    digest = hashlib.sha256()
    size = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        for chunk in blobs.iter_chunks(artifact_id):
            digest.update(chunk)
            size += len(chunk)
            file.write(chunk)
    if size != artifact.size_bytes or digest.hexdigest() != artifact.sha256:
        path.unlink(missing_ok=True)
        raise ArtifactCorrupt(f"artifact {artifact_id}: stored bytes do not match its size and sha256")
    return path


def delete_artifact(session_factory: sessionmaker[Session], blobs: BlobStore, artifact_id: str) -> None:
    """Bytes first, then the row: a crash in between leaves a row without bytes, never bytes without a row."""
    blobs.delete(artifact_id)
    _delete_row(session_factory, artifact_id)


def _delete_row(session_factory: sessionmaker[Session], artifact_id: str) -> None:
    with session_factory() as session:
        session.execute(delete(Artifact).where(Artifact.id == artifact_id))
        session.commit()


def sweep_stale_uploads(session_factory: sessionmaker[Session], blobs: BlobStore, *, older_than_s: float) -> list[str]:
    """Removes uploads still "uploading" after `older_than_s` (their API process died mid-upload). Returns their ids."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with session_factory() as session:
        stale = list(
            session.scalars(select(Artifact.id).where(Artifact.state == "uploading", Artifact.created_at < cutoff))
        )
    for artifact_id in stale:
        delete_artifact(session_factory, blobs, artifact_id)
    return stale


def sweep_orphaned_results(
    session_factory: sessionmaker[Session], blobs: BlobStore, *, older_than_s: float
) -> list[str]:
    """Removes worker outputs nothing points at any more, older than `older_than_s`: results no job lists (a worker
    died between storing them and finishing the job, or lost the job) and checkpoints of no unfinished job (the job
    ended, or a newer checkpoint replaced it). Returns their ids."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    referenced_results = select(JobResult.artifact_id)
    live_checkpoints = select(Job.checkpoint_artifact_id).where(
        Job.checkpoint_artifact_id.is_not(None), Job.status.not_in(FINAL_STATUSES)
    )
    with session_factory() as session:
        orphans = list(
            session.scalars(
                select(Artifact.id).where(
                    Artifact.created_at < cutoff,
                    Artifact.state == "ready",
                    or_(
                        (Artifact.kind == ArtifactKind.RESULT) & Artifact.id.not_in(referenced_results),
                        (Artifact.kind == ArtifactKind.CHECKPOINT) & Artifact.id.not_in(live_checkpoints),
                    ),
                )
            )
        )
    for artifact_id in orphans:
        delete_artifact(session_factory, blobs, artifact_id)
    return orphans
