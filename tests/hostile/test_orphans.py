"""Nothing is orphaned: worker outputs no job points at are collected by the reaper's sweep, a job's checkpoint is
deleted whatever final status it reaches, and local blobs are on disk before they are marked ready."""

import os
from datetime import timedelta

from sqlalchemy import func, select, update

from squeezer.store.artifacts import store_artifact, sweep_orphaned_results
from squeezer.store.blobs import DatabaseBlobStore, LocalBlobStore
from squeezer.store.jobs import create_job
from squeezer.store.models import Artifact, ArtifactKind, BlobChunk, Job, JobResult, utcnow
from squeezer.store.statuses import JobStatus
from tests.api.conftest import TINY_OPTIONS, upload
from tests.hostile.test_corpus import run_queued_jobs


def stored(sessions, blobs, kind: str, tenant: str = "acme") -> str:
    artifact = store_artifact(
        sessions, blobs, tenant=tenant, kind=kind, filename="f", content_type="x", chunks=[b"x" * 100], max_bytes=100
    )
    return artifact.id


def job_with(sessions, status: JobStatus, checkpoint: str | None = None, results: dict | None = None) -> str:
    with sessions() as session:
        job, _ = create_job(session, tenant="acme", spec={}, idempotency_key=None, request_hash="h", max_attempts=1)
        session.execute(update(Job).where(Job.id == job.id).values(status=status, checkpoint_artifact_id=checkpoint))
        for name, artifact_id in (results or {}).items():
            session.add(JobResult(job_id=job.id, name=name, artifact_id=artifact_id))
        session.commit()
        return job.id


def test_the_sweep_collects_outputs_no_job_points_at(pg_sessions):
    blobs = DatabaseBlobStore(pg_sessions, chunk_bytes=64)
    lost_result = stored(pg_sessions, blobs, ArtifactKind.RESULT)  # its worker died before finishing the job
    kept_result = stored(pg_sessions, blobs, ArtifactKind.RESULT)
    job_with(pg_sessions, JobStatus.SUCCEEDED, results={"model.sqz": kept_result})
    ended_checkpoint = stored(pg_sessions, blobs, ArtifactKind.CHECKPOINT)
    job_with(pg_sessions, JobStatus.FAILED, checkpoint=ended_checkpoint)
    requeued_checkpoint = stored(pg_sessions, blobs, ArtifactKind.CHECKPOINT)  # the next attempt resumes from it
    job_with(pg_sessions, JobStatus.QUEUED, checkpoint=requeued_checkpoint)
    replaced_checkpoint = stored(pg_sessions, blobs, ArtifactKind.CHECKPOINT)
    upload_id = stored(pg_sessions, blobs, ArtifactKind.MODEL)
    assert sweep_orphaned_results(pg_sessions, blobs, older_than_s=3600) == []  # fresh: a worker may be finishing
    with pg_sessions() as session:
        session.execute(update(Artifact).values(created_at=utcnow() - timedelta(hours=2)))
        session.commit()
    removed = sweep_orphaned_results(pg_sessions, blobs, older_than_s=3600)
    assert sorted(removed) == sorted([lost_result, ended_checkpoint, replaced_checkpoint])
    with pg_sessions() as session:
        left = set(session.scalars(select(Artifact.id)))
        chunks = set(session.scalars(select(BlobChunk.artifact_id).distinct()))
    assert left == chunks == {kept_result, requeued_checkpoint, upload_id}


def test_a_failed_job_drops_its_checkpoint(queued_client, sample_model_zip, tmp_path):
    """A job resuming from a checkpoint fails (its model was deleted): the checkpoint goes with the final status."""
    client = queued_client
    model = upload(client, sample_model_zip)["id"]
    job = client.post(
        "/v1/jobs", json={"model": {"artifact_id": model}, "dataset": {"sample": "digits"}, "options": TINY_OPTIONS}
    )
    assert job.status_code == 202, job.text
    app = client.app
    checkpoint = stored(app.state.session_factory, app.state.blobs, ArtifactKind.CHECKPOINT, tenant="default")
    with app.state.session_factory() as session:
        session.execute(update(Job).where(Job.id == job.json()["id"]).values(checkpoint_artifact_id=checkpoint))
        session.commit()
    assert client.delete(f"/v1/artifacts/{model}").status_code == 204
    final = run_queued_jobs(client, job.json()["id"])
    assert (final["status"], final["error"]["code"]) == ("failed", "artifact_not_found")
    with app.state.session_factory() as session:
        assert session.get(Artifact, checkpoint) is None
        assert (
            session.scalar(select(func.count()).select_from(BlobChunk).where(BlobChunk.artifact_id == checkpoint)) == 0
        )


def test_a_local_blob_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    blobs = LocalBlobStore(tmp_path / "blobs")
    synced: list[tuple[bool, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(((tmp_path / "blobs" / "art_1.part").exists(), (tmp_path / "blobs" / "art_1").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    writer = blobs.open_writer("art_1")
    writer.write(b"bytes")
    writer.commit()
    assert synced == [(True, False), (False, True)]  # the file before the rename, its directory after
    assert (tmp_path / "blobs" / "art_1").read_bytes() == b"bytes"
