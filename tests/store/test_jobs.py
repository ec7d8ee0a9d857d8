import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from squeezer.core.events import Event
from squeezer.store.artifacts import QuotaExceeded, store_artifact, stored_bytes
from squeezer.store.blobs import DatabaseBlobStore
from squeezer.store.job_spec import json_size
from squeezer.store.jobs import (
    claim_job,
    create_job,
    delete_final_job,
    finish_job,
    heartbeat,
    reap,
    record_event,
    request_cancel,
    set_checkpoint,
    update_progress,
)
from squeezer.store.models import Job, JobEvent, JobResult, utcnow

SPEC = {"model": {"artifact_id": "art_x"}, "dataset": {"sample": "digits"}, "method": "lwct"}


def new_job(sessions, max_attempts=3) -> str:
    with sessions() as session:
        job, created = create_job(
            session, tenant="default", spec=SPEC, idempotency_key=None, request_hash=None, max_attempts=max_attempts
        )
    assert created
    return job.id


def get(sessions, job_id) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


def test_concurrent_claims_have_exactly_one_winner(sessions):
    job_id = new_job(sessions)
    start = threading.Barrier(4)
    winners = []

    def claim(worker):
        start.wait()
        with sessions() as session:
            if claim_job(session, job_id, worker) is not None:
                winners.append(worker)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    job = get(sessions, job_id)
    assert len(winners) == 1
    assert (job.status, job.attempts, job.worker_id) == ("running", 1, winners[0])
    with sessions() as session:
        assert claim_job(session, job_id, "late") is None


def test_idempotency_key_returns_the_first_job(pg_sessions):
    with pg_sessions() as session:
        first, created = create_job(
            session, tenant="t1", spec=SPEC, idempotency_key="k", request_hash="h1", max_attempts=3
        )
        again, created_again = create_job(
            session, tenant="t1", spec={"other": 1}, idempotency_key="k", request_hash="h2", max_attempts=3
        )
        other_tenant, created_other = create_job(
            session, tenant="t2", spec=SPEC, idempotency_key="k", request_hash="h1", max_attempts=3
        )
    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id and again.request_hash == "h1"
    assert other_tenant.id != first.id


def test_cancel_of_a_queued_job_means_it_never_runs(sessions):
    job_id = new_job(sessions)
    with sessions() as session:
        version = session.get(Job, job_id).version
        job = request_cancel(session, job_id)
        assert (job.status, job.cancel_requested, job.version) == ("cancelled", True, version + 1)
        assert request_cancel(session, job_id).version == version + 1  # idempotent
        assert claim_job(session, job_id, "w") is None
        assert request_cancel(session, "job_missing") is None


def test_cancel_of_a_running_job_reaches_its_worker(sessions):
    job_id = new_job(sessions)
    with sessions() as session:
        claim_job(session, job_id, "w1")
        assert heartbeat(session, job_id, "w1") is True
        assert request_cancel(session, job_id).status == "cancelling"
        assert heartbeat(session, job_id, "w1") is False
        assert finish_job(session, job_id, "w1", "cancelled") is True
    job = get(sessions, job_id)
    assert job.status == "cancelled" and job.finished_at is not None and job.duration_s >= 0


def stored_result(sessions):
    """A two-byte result artifact of the default tenant, as a worker stores report.json."""
    return store_artifact(
        sessions,
        DatabaseBlobStore(sessions, 1024),
        tenant="default",
        kind="result",
        filename="report.json",
        content_type="application/json",
        chunks=[b"{}"],
        max_bytes=2,
    )


def test_only_the_owner_finishes_and_results_come_with_success(pg_sessions):
    job_id = new_job(pg_sessions)
    artifact = stored_result(pg_sessions)
    with pg_sessions() as session:
        claim_job(session, job_id, "w1")
        assert set_checkpoint(session, job_id, "w1", artifact.id) is None
        update_progress(session, job_id, {"stage": "train", "fraction": 0.5, "best_accuracy": float("nan")})
        record_event(session, job_id, Event(stage="train", fraction=0.5, data={"loss": float("inf"), "epoch": 1}))
        assert finish_job(session, job_id, "intruder", "succeeded", results={"report.json": artifact.id}) is False
        assert (
            finish_job(session, job_id, "w1", "succeeded", target_met=True, results={"report.json": artifact.id})
            is True
        )
        assert finish_job(session, job_id, "w1", "failed") is False
        results = session.scalars(select(JobResult).where(JobResult.job_id == job_id)).all()
        event = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).one()
    job = get(pg_sessions, job_id)
    assert (job.status, job.target_met, job.progress["best_accuracy"]) == ("succeeded", True, None)
    assert job.checkpoint_artifact_id is None  # cleared with the final status, not after it
    assert [(r.name, r.artifact_id) for r in results] == [("report.json", artifact.id)]
    assert event.data == {"loss": None, "epoch": 1}


def age_heartbeat(sessions, job_id, seconds):
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def test_reaper_requeues_dead_jobs_until_attempts_run_out(sessions):
    job_id = new_job(sessions, max_attempts=2)
    for attempt in (1, 2):
        with sessions() as session:
            assert claim_job(session, job_id, f"w{attempt}").attempts == attempt
            assert reap(session, heartbeat_timeout_s=60, stale_queued_s=3600) == []  # alive
        age_heartbeat(sessions, job_id, 120)
        with sessions() as session:
            reaped = reap(session, heartbeat_timeout_s=60, stale_queued_s=3600)
            assert reap(session, heartbeat_timeout_s=60, stale_queued_s=3600) == []  # acted on once
        if attempt == 1:
            assert reaped == [job_id] and get(sessions, job_id).status == "queued"
            with sessions() as session:
                assert heartbeat(session, job_id, "w1") is False  # the lost worker learns it is out
    job = get(sessions, job_id)
    assert reaped == []
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2)


def test_reaper_resends_jobs_whose_message_was_lost(sessions):
    job_id = new_job(sessions)
    with sessions() as session:
        assert reap(session, heartbeat_timeout_s=60, stale_queued_s=3600) == []
        session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=utcnow() - timedelta(hours=2)))
        session.commit()
        assert reap(session, heartbeat_timeout_s=60, stale_queued_s=3600) == [job_id]
        assert reap(session, heartbeat_timeout_s=60, stale_queued_s=3600) == []  # not again before the next period


def test_a_final_job_is_deleted_with_its_events_and_results_and_its_spec_counts_until_then(sessions):
    """On both backends: spec bytes count toward stored bytes; an unfinished job is not deleted; a final one goes with
    its events and result links and hands back the artifacts to delete; another tenant cannot delete it."""
    job_id = new_job(sessions)
    result = stored_result(sessions)
    with sessions() as session:
        assert stored_bytes(session, "default") == json_size(SPEC) + 2
        assert delete_final_job(session, job_id, "default") is None  # queued
        claim_job(session, job_id, "w1")
        record_event(session, job_id, Event(stage="train", fraction=0.5))
        assert delete_final_job(session, job_id, "default") is None  # running
        assert finish_job(session, job_id, "w1", "succeeded", results={"r.json": result.id})
        assert delete_final_job(session, job_id, "other") is None
        assert delete_final_job(session, job_id, "default") == [result.id]
        assert session.get(Job, job_id) is None
        assert session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).all() == []
        assert session.scalars(select(JobResult).where(JobResult.job_id == job_id)).all() == []
        assert stored_bytes(session, "default") == 2  # the caller deletes the artifact itself


def test_a_spec_past_the_storage_quota_is_not_inserted(sessions):
    with sessions() as session:
        with pytest.raises(QuotaExceeded):
            create_job(
                session,
                tenant="default",
                spec=SPEC,
                idempotency_key=None,
                request_hash=None,
                max_attempts=1,
                quota_bytes=json_size(SPEC) - 1,
            )
        job, _ = create_job(
            session,
            tenant="default",
            spec=SPEC,
            idempotency_key=None,
            request_hash=None,
            max_attempts=1,
            quota_bytes=json_size(SPEC),
        )
        assert job.spec_bytes == json_size(SPEC) == stored_bytes(session, "default")
